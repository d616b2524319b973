#!/usr/bin/env python3
"""Peak RSS of graftnet-device under many concurrent maximal-size requests.

    python3 scripts/device_rss.py BINARY EXPORT_DIR --clients 64 --line-bytes N [--mode zeros|valid] [--device-args '--max-connections 64']

Starts BINARY --dir EXPORT_DIR --socket (a temporary Unix socket), opens
--clients connections at once, each sending one request line of
--line-bytes bytes (mode zeros: an "input" array of as many 0 values as fit,
the most expensive line to parse; valid: the model's C*H*W values padded
with spaces), reads one response line per client, then reads the server's
VmHWM (peak RSS) from /proc and stops it. Prints one JSON line. Loopback
only; every loop is bounded.
"""
import argparse, json, os, socket, subprocess, sys, tempfile, threading, time

ap = argparse.ArgumentParser()
ap.add_argument("binary")
ap.add_argument("export")
ap.add_argument("--clients", type=int, default=64)
ap.add_argument("--line-bytes", type=int, required=True)
ap.add_argument("--mode", choices=["zeros", "valid"], default="zeros")
ap.add_argument("--device-args", default="", help="extra graftnet-device flags, one string")
a = ap.parse_args()
a.device_args = a.device_args.split()

m = json.load(open(os.path.join(a.export, "manifest.json")))
c, h, w = m["input_shape"]
n = c * h * w
head = '{"id": %d, "task": "base", "input": ['
if a.mode == "zeros":
    k = max(1, (a.line_bytes - len(head % 99) - 2) // 2)
    body = ",".join(["0"] * k) + "]}"
else:
    body = ",".join(["0.5"] * n) + "]}"

def line(i):
    s = head % i + body
    if len(s) < a.line_bytes:
        s = s[:-1] + " " * (a.line_bytes - len(s)) + "}"
    return (s + "\n").encode()

d = tempfile.mkdtemp()
sock = os.path.join(d, "s.sock")
srv = subprocess.Popen([a.binary, "--dir", a.export, "--socket", sock] + a.device_args,
                       stdin=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
for _ in range(300):
    if os.path.exists(sock):
        break
    time.sleep(0.05)

def hwm():
    for l in open(f"/proc/{srv.pid}/status"):
        if l.startswith(("VmHWM", "Threads")):
            yield l.split()[1]

base = dict(zip(["rss_kb_idle", "threads_idle"], hwm()))
results = [None] * a.clients
start = threading.Barrier(a.clients)
def client(i):
    try:
        s = socket.socket(socket.AF_UNIX)
        s.settimeout(120)
        s.connect(sock)
        start.wait(30)
        try:
            s.sendall(line(i))
        except OSError:
            pass
        buf = b""
        while not buf.endswith(b"\n") and len(buf) < 1 << 20:
            chunk = s.recv(65536)
            if not chunk:
                break
            buf += chunk
        r = json.loads(buf) if buf else {}
        results[i] = "served" if "scores" in r else ("refused: connections" if "too many" in r.get("error", "") else ("error: " + r.get("error", "closed")[:40]))
        s.close()
    except Exception as e:
        results[i] = f"client error: {type(e).__name__}"
t0 = time.time()
ts = [threading.Thread(target=client, args=(i,)) for i in range(a.clients)]
for t in ts: t.start()
for t in ts: t.join(180)
secs = time.time() - t0
peak = list(hwm())
srv.terminate(); srv.wait(10)
tally = {}
for r in results:
    tally[r] = tally.get(r, 0) + 1
print(json.dumps({"binary": a.binary, "clients": a.clients, "line_bytes": len(line(0)) - 1, "mode": a.mode,
                  "device_args": a.device_args, "peak_rss_kb": int(peak[0]), "rss_kb_idle": int(base["rss_kb_idle"]),
                  "seconds": round(secs, 2), "outcomes": tally}))
