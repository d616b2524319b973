//! `graftnet-device`: graftnet on a Linux board (Raspberry Pi 4/5, Jetson Orin, any host).
//!
//! ```text
//! graftnet-device --dir EXPORT_DIR [--protocol json|postcard] [--socket PATH]
//!                 [--tcp ADDR] [--max-connections N] [--timeout SECS]
//!                 [--max-request-bytes N] [--max-patch-bytes N] [--verify-key KEY.pub]
//! ```
//!
//! Loads `EXPORT_DIR/backbone.gnb` and the `EXPORT_DIR/*.gnp` its
//! `manifest.json` lists (see [`export`]), then serves
//! task-tagged inference requests on stdin/stdout and, with `--socket`, on
//! a Unix stream socket, with `--tcp`, on a TCP address (one thread per
//! connection, one engine shared by all). Without a socket the program
//! ends at the end of stdin; with one it serves until it is stopped, so it
//! runs as a service with stdin closed (`graftnet-device.service`).
//!
//! Two protocols, one per process (`--protocol`): JSON lines, one object
//! per line (the default, for people and scripts; see [`protocol`]), or
//! the binary device protocol shared with the MCU firmware (`postcard`:
//! postcard messages in COBS frames, `targets/protocol/PROTOCOL.md`; see
//! [`binary`]), which also uploads, commits and deletes patches: they are
//! validated and stored atomically in the export directory ([`store`]).
//!
//! With `--verify-key KEY.pub` the device runs signed blobs only: the
//! backbone and every patch must carry that key's Ed25519 signature
//! (`graftnet export --sign`, `graftnet sign`); see [`export`].
//!
//! Memory: one arena and one parameter table, sized by the backbone, for the
//! process lifetime; the blobs are read once. Requests switch tasks with
//! `Engine::apply` (kilobytes of patch, no reload).
//!
//! Bounds, so that no client (or number of clients) can exhaust the device
//! ([`Limits`]): at most `--max-connections` socket connections are served
//! at once (default 16; one more gets an error line and is closed, so
//! threads stay at that number plus two); each connection has `--timeout`
//! seconds (default 30) to deliver each request line, counted from its
//! start or its previous response, and is closed with an error line after
//! it (an idle client and one trickling a line byte by byte alike); a
//! request line may hold at most [`max_request_bytes`] of the model's input
//! size (32 bytes per input value plus 64 KiB), and parsing it costs that
//! line plus `4·C·H·W` bytes ([`protocol::parse_request`]). So the memory a
//! socket can make the device use is bounded by
//! `max_connections · (2 · max_request_bytes + 4·C·H·W)` plus the fixed
//! buffers. Requests are parsed before the engine lock is taken
//! ([`server::respond`]).
//!
//! The board packages (`targets/rpi4`, `targets/rpi5`, `targets/jetson-orin`)
//! are this library compiled for their CPU; [`Board`] says which.

// `graftnet_protocol::Failure` (a code and a 128-byte detail, inline so the
// MCU needs no heap) is the error of the request paths; it is moved, not boxed.
#![allow(clippy::result_large_err)]

pub mod binary;
pub mod conn;
pub mod export;
pub mod protocol;
pub mod server;
pub mod store;

use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::fs::FileTypeExt;
use std::net::TcpListener;
use std::os::unix::net::UnixListener;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use graftnet::VerifyKey;

use crate::conn::Conn;
use crate::export::{ExportBytes, LoadError};
use crate::protocol::{error_response, Refusal};
use crate::server::{respond, Server, DEFAULT_MAX_PATCH};
use crate::store::{PatchMeta, PatchStore, StoredTask};

/// The board a binary was built for (what its `.cargo/config.toml` chose).
#[derive(Clone, Copy, Debug)]
pub struct Board {
    /// package name, e.g. "rpi4"
    pub name: &'static str,
    /// the `-C target-cpu` it was compiled with
    pub cpu: &'static str,
}

/// The build host (`cargo run` in `targets/device`).
pub const HOST: Board = Board { name: "host", cpu: "native target default" };

/// Bytes of request JSON allowed per input value: a float as printed by any
/// JSON writer (`-1.2345678901234567e-308` is 24 bytes) plus its separator
/// and some whitespace.
pub const BYTES_PER_INPUT_VALUE: usize = 32;

/// Bytes of request JSON allowed besides the input values (braces, keys,
/// `id` up to [`protocol::MAX_ID_BYTES`], the task name, whitespace).
pub const REQUEST_OVERHEAD_BYTES: usize = 64 << 10;

/// The longest request line for a model taking `n_input` (C·H·W) values:
/// `32 · n_input + 65536` bytes (4.9 MB for a 3x224x224 input, 164 KB for
/// 3x32x32). Longer lines are refused without being parsed.
pub fn max_request_bytes(n_input: usize) -> usize {
    n_input.saturating_mul(BYTES_PER_INPUT_VALUE).saturating_add(REQUEST_OVERHEAD_BYTES)
}

/// Connections served at once by default.
pub const DEFAULT_MAX_CONNECTIONS: usize = 16;

/// Seconds a connection has for each request line by default.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(30);

/// What one client, or many, may use of the device (module doc, "Bounds").
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Limits {
    /// socket connections served at once
    pub max_connections: usize,
    /// time a socket connection has for each request line (and to take
    /// each response)
    pub timeout: Duration,
    /// longest request line, in bytes (without the newline)
    pub max_request: usize,
}

impl Limits {
    /// The defaults for a model taking `n_input` values.
    pub fn for_input(n_input: usize) -> Self {
        Limits { max_connections: DEFAULT_MAX_CONNECTIONS, timeout: DEFAULT_TIMEOUT, max_request: max_request_bytes(n_input) }
    }
}

const USAGE: &str = "usage: graftnet-device --dir EXPORT_DIR [--protocol json|postcard] [--socket PATH] [--tcp ADDR]
                       [--max-connections N] [--timeout SECS] [--max-request-bytes N]
                       [--max-patch-bytes N] [--verify-key KEY.pub]

Serves graftnet inference requests on stdin (and on a Unix socket with
--socket, on TCP with --tcp), as JSON lines or, with --protocol postcard, as
the binary device protocol (targets/protocol/PROTOCOL.md: postcard messages in
COBS frames; info, tasks, switch, infer, and patch upload/commit/delete, as
`graftnet device` speaks it). JSON lines:
  request  {\"id\": 1, \"task\": \"mnist-sb\", \"input\": [f32; C*H*W, NCHW]}
           (or \"input_i8\": [i8; H*W*C, NHWC]; task \"base\" = the backbone's own task)
  response {\"id\":1,\"task\":\"mnist-sb\",\"top1\":3,\"scores\":[...],\"us\":812}
  error    {\"id\":1,\"error\":\"...\"}

  --protocol P           json (default) or postcard, on stdin and every socket
  --socket PATH          serve on a Unix stream socket
  --tcp ADDR             serve on TCP, e.g. 127.0.0.1:7878 (no authentication: bind to a trusted network)
  --max-connections N    socket connections served at once (default 16); more get an error and are closed
  --timeout SECS         time a socket connection has for each request line (default 30)
  --max-request-bytes N  longest request line (default 32 * C*H*W + 65536, from the model's input)
  --max-patch-bytes N    largest patch an upload may send (postcard; default 16 MiB)
  --verify-key KEY.pub   run signed blobs only: the backbone and every patch must carry this key's
                         Ed25519 signature (graftnet export --sign); others are refused";

/// The wire protocol of a process (`--protocol`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Wire {
    /// JSON lines ([`protocol`])
    Json,
    /// the binary device protocol ([`binary`])
    Postcard,
}

struct Args {
    dir: PathBuf,
    wire: Wire,
    socket: Option<PathBuf>,
    tcp: Option<String>,
    max_patch: u32,
    max_connections: usize,
    timeout: Duration,
    max_request: Option<usize>,
    verify_key: Option<PathBuf>,
}

/// Reads a public-key file (`KEY.pub` from `graftnet keygen`).
pub fn read_verify_key(path: &Path) -> Result<VerifyKey, String> {
    let text = std::fs::read_to_string(path).map_err(|e| format!("reading the verification key {}: {e}", path.display()))?;
    if text.contains("secret key") {
        return Err(format!("{} is a secret key; --verify-key takes the public key (KEY.pub)", path.display()));
    }
    let bytes = graftnet::format::signature::key_from_text(&text).map_err(|e| format!("{}: {e}", path.display()))?;
    VerifyKey::from_bytes(&bytes).map_err(|e| format!("{}: {e}", path.display()))
}

fn parse_args(mut it: impl Iterator<Item = String>) -> Result<Option<Args>, String> {
    let (mut dir, mut socket, mut max_request, mut verify_key, mut tcp) = (None, None, None, None, None);
    let (mut wire, mut max_patch) = (Wire::Json, DEFAULT_MAX_PATCH);
    let (mut max_connections, mut timeout) = (DEFAULT_MAX_CONNECTIONS, DEFAULT_TIMEOUT);
    let positive = |flag: &str, v: Option<String>| -> Result<usize, String> {
        let v = v.ok_or(format!("{flag} needs a number"))?;
        v.parse::<usize>().ok().filter(|&n| n > 0).ok_or(format!("{flag}: '{v}' is not a positive integer"))
    };
    while let Some(a) = it.next() {
        match a.as_str() {
            "--dir" => dir = Some(PathBuf::from(it.next().ok_or("--dir needs a directory")?)),
            "--socket" => socket = Some(PathBuf::from(it.next().ok_or("--socket needs a path")?)),
            "--tcp" => tcp = Some(it.next().ok_or("--tcp needs an address (HOST:PORT)")?),
            "--protocol" => {
                wire = match it.next().as_deref() {
                    Some("json") => Wire::Json,
                    Some("postcard") => Wire::Postcard,
                    other => return Err(format!("--protocol takes json or postcard, not {other:?}")),
                }
            }
            "--max-patch-bytes" => {
                let n = positive("--max-patch-bytes", it.next())?;
                max_patch = u32::try_from(n).map_err(|_| format!("--max-patch-bytes: {n} is above {}", u32::MAX))?;
            }
            "--max-connections" => max_connections = positive("--max-connections", it.next())?,
            "--timeout" => timeout = Duration::from_secs(positive("--timeout", it.next())? as u64),
            "--max-request-bytes" => max_request = Some(positive("--max-request-bytes", it.next())?),
            "--verify-key" => verify_key = Some(PathBuf::from(it.next().ok_or("--verify-key needs a public-key file")?)),
            "-h" | "--help" => return Ok(None),
            "-V" | "--version" => {
                println!("graftnet-device {}", env!("CARGO_PKG_VERSION"));
                std::process::exit(0);
            }
            _ => return Err(format!("unexpected argument '{a}'")),
        }
    }
    let dir = dir.ok_or("--dir EXPORT_DIR is required")?;
    Ok(Some(Args { dir, wire, socket, tcp, max_patch, max_connections, timeout, max_request, verify_key }))
}

/// The program; `board` names the build.
pub fn main(board: Board) -> ExitCode {
    let args = match parse_args(std::env::args().skip(1)) {
        Ok(Some(a)) => a,
        Ok(None) => {
            println!("{USAGE}");
            return ExitCode::SUCCESS;
        }
        Err(e) => {
            eprintln!("graftnet-device: {e}\n\n{USAGE}");
            return ExitCode::from(2);
        }
    };
    match run(board, &args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("graftnet-device: {e}");
            ExitCode::FAILURE
        }
    }
}

fn cpu_features() -> String {
    #[cfg(target_arch = "aarch64")]
    {
        let f = [
            ("neon", std::arch::is_aarch64_feature_detected!("neon")),
            ("dotprod", std::arch::is_aarch64_feature_detected!("dotprod")),
            ("i8mm", std::arch::is_aarch64_feature_detected!("i8mm")),
        ];
        let on: Vec<&str> = f.iter().filter(|x| x.1).map(|x| x.0).collect();
        format!("aarch64 [{}]", on.join(" "))
    }
    #[cfg(target_arch = "x86_64")]
    {
        let f = [("avx2", std::arch::is_x86_feature_detected!("avx2")), ("avx512vnni", std::arch::is_x86_feature_detected!("avx512vnni"))];
        let on: Vec<&str> = f.iter().filter(|x| x.1).map(|x| x.0).collect();
        format!("x86_64 [{}]", on.join(" "))
    }
    #[cfg(not(any(target_arch = "aarch64", target_arch = "x86_64")))]
    {
        std::env::consts::ARCH.to_string()
    }
}

/// Loads export directory `dir` as the program does — the backbone mapped
/// (and verified with `key`), the patches the manifest lists validated,
/// warnings on stderr — and calls `f` with the server over it. The server
/// borrows the mapping, so it lives only inside `f`. (The program runs in
/// `f`; tests serve a socket from it in-process.)
pub fn with_export<R>(
    dir: &Path,
    key: Option<VerifyKey>,
    board: Board,
    max_patch: u32,
    f: impl FnOnce(&Mutex<Server<'_>>) -> R,
) -> Result<R, LoadError> {
    let bytes = ExportBytes::read(dir)?;
    for w in bytes.warnings() {
        eprintln!("graftnet-device: warning: {w}");
    }
    let bb = bytes.backbone(key.as_ref())?;
    let (patches, warnings) = bytes.patches(&bb, key.as_ref());
    for w in &warnings {
        eprintln!("graftnet-device: warning: {w}");
    }
    let mut tasks = Vec::new();
    for (_, path, p) in patches {
        if tasks.len() + 1 >= graftnet_protocol::MAX_TASKS {
            eprintln!("graftnet-device: warning: {}: more than {} tasks; skipped", path.display(), graftnet_protocol::MAX_TASKS - 1);
            continue;
        }
        let file_bytes = bytes.patches.iter().find(|(f, _)| f == path).map(|(_, b)| b.clone()).unwrap_or_default();
        tasks.push(StoredTask::new(PatchMeta::of(&p), path.to_path_buf(), file_bytes));
    }
    if let Some(k) = &key {
        eprintln!("graftnet-device: signatures required: key {} (backbone verified)", k.id());
    }
    let device = format!("graftnet-device {} ({})", env!("CARGO_PKG_VERSION"), board.name);
    let mut server = Server::new(bb, PatchStore::new(dir, tasks), key, device, max_patch);
    for w in server.check_patches() {
        eprintln!("graftnet-device: warning: {w}");
    }
    Ok(f(&Mutex::new(server)))
}

fn run(board: Board, args: &Args) -> Result<(), Box<dyn std::error::Error>> {
    let key = args.verify_key.as_deref().map(read_verify_key).transpose()?;
    let listener = match &args.socket {
        Some(p) => Some(bind(p)?),
        None => None,
    };
    let tcp = match &args.tcp {
        Some(a) => Some(TcpListener::bind(a).map_err(|e| format!("binding TCP {a}: {e}"))?),
        None => None,
    };
    with_export(&args.dir, key, board, args.max_patch, |server| serve_all(board, args, server, listener, tcp))?;
    Ok(())
}

/// Reports the start-up and serves stdin and the sockets.
fn serve_all(board: Board, args: &Args, server: &Mutex<Server<'_>>, listener: Option<UnixListener>, tcp: Option<TcpListener>) {
    let (t, n_input, max_classes) = {
        let server = server.lock().unwrap_or_else(|p| p.into_inner());
        let bb = *server.backbone();
        let t = bb.input();
        eprintln!(
            "graftnet-device {} ({}, -C target-cpu={}; running on {}), kernels {}: backbone {:016x} {} bytes (mapped), arena {} bytes, \
             input {}x{}x{} (c,h,w), tasks: {}",
            env!("CARGO_PKG_VERSION"),
            board.name,
            board.cpu,
            cpu_features(),
            server.kernels(),
            bb.fingerprint(),
            bb.bytes().len(),
            bb.arena_len(),
            t.c,
            t.h,
            t.w,
            server.task_names().join(", ")
        );
        (t, server.n_input(), bb.max_classes() as usize)
    };
    let limits = Limits {
        max_connections: args.max_connections,
        timeout: args.timeout,
        max_request: args.max_request.unwrap_or_else(|| max_request_bytes(t.len())),
    };
    let wire = args.wire;
    let frames = (binary::max_frame(n_input), binary::tx_len(max_classes));
    match wire {
        Wire::Json => eprintln!(
            "graftnet-device: JSON lines; limits: {} connections at once, {} s per request line, request lines up to {} bytes",
            limits.max_connections,
            limits.timeout.as_secs(),
            limits.max_request
        ),
        Wire::Postcard => eprintln!(
            "graftnet-device: binary protocol {} (postcard, COBS); limits: {} connections at once, {} s per frame, frames up to {} bytes, patches up to {} bytes",
            graftnet_protocol::PROTOCOL_VERSION,
            limits.max_connections,
            limits.timeout.as_secs(),
            frames.0,
            args.max_patch
        ),
    }
    let socket_mode = Mode { wire, limits, n_input, frames };
    std::thread::scope(|s| {
        let srv = server;
        s.spawn(move || {
            let stdin = std::io::stdin();
            let stdout = std::io::stdout();
            match wire {
                Wire::Json => {
                    serve_stream(srv, n_input, limits.max_request, &mut stdin.lock(), |_| {}, || stdout.lock());
                }
                Wire::Postcard => {
                    binary::serve_frames(srv, frames.0, frames.1, &mut stdin.lock(), |_| {}, || stdout.lock());
                }
            }
        });
        if let Some(l) = tcp {
            if let Ok(a) = l.local_addr() {
                eprintln!("graftnet-device: listening on tcp:{a}");
            }
            s.spawn(move || serve_socket(srv, l.incoming(), socket_mode, &AtomicBool::new(false)));
        }
        if let Some(l) = listener {
            eprintln!("graftnet-device: listening on {}", args.socket.as_ref().unwrap().display());
            serve_socket(srv, l.incoming(), socket_mode, &AtomicBool::new(false));
        }
    });
}

/// Binds the socket, replacing a stale socket file (never another kind of file).
fn bind(p: &Path) -> Result<UnixListener, Box<dyn std::error::Error>> {
    if let Ok(m) = std::fs::symlink_metadata(p) {
        if m.file_type().is_socket() {
            std::fs::remove_file(p)?;
        } else {
            return Err(format!("{} exists and is not a socket", p.display()).into());
        }
    }
    UnixListener::bind(p).map_err(|e| format!("binding {}: {e}", p.display()).into())
}

/// How sockets are served: the protocol, the bounds, and the buffer sizes.
#[derive(Clone, Copy, Debug)]
pub struct Mode {
    /// JSON lines or the binary protocol
    pub wire: Wire,
    /// connections, timeout, request size
    pub limits: Limits,
    /// the model's input size (C·H·W)
    pub n_input: usize,
    /// binary protocol: receive and transmit buffer bytes ([`binary::max_frame`], [`binary::tx_len`])
    pub frames: (usize, usize),
}

impl Mode {
    /// JSON lines with `limits` for a model taking `n_input` values.
    pub fn json(limits: Limits, n_input: usize) -> Self {
        Mode { wire: Wire::Json, limits, n_input, frames: (0, 0) }
    }
}

/// Accepts connections from `incoming` (a Unix or TCP listener's) and
/// serves each on its own thread, at most `mode.limits.max_connections`
/// at once; returns once `stop` is set (checked after each accept) and
/// every connection has ended.
pub fn serve_socket<C: Conn>(srv: &Mutex<Server<'_>>, incoming: impl Iterator<Item = std::io::Result<C>>, mode: Mode, stop: &AtomicBool)
where
    for<'x> &'x C: Write,
{
    // Only this thread adds to the count, so checking then adding is exact.
    let active = AtomicUsize::new(0);
    std::thread::scope(|s| {
        for conn in incoming {
            if stop.load(Ordering::Relaxed) {
                break;
            }
            let c = match conn {
                Ok(c) => c,
                Err(e) => {
                    eprintln!("graftnet-device: accept: {e}");
                    continue;
                }
            };
            c.accepted();
            if active.load(Ordering::Acquire) >= mode.limits.max_connections {
                refuse(c, mode);
                continue;
            }
            active.fetch_add(1, Ordering::AcqRel);
            let active = &active;
            s.spawn(move || {
                serve_connection(srv, c, mode);
                active.fetch_sub(1, Ordering::AcqRel);
            });
        }
    });
}

/// Tells a connection beyond the limit why it is closed, then closes it
/// (the message fits the socket buffer; a peer that never reads cannot hold
/// up the accept loop).
fn refuse<C: Conn>(mut c: C, mode: Mode)
where
    for<'x> &'x C: Write,
{
    let _ = c.set_nonblocking(true);
    let max = mode.limits.max_connections;
    let msg = format!("too many connections (this device serves {max} at once); try again later");
    let _ = match mode.wire {
        Wire::Json => writeln!(c, "{}", error_response(&Refusal { id: serde_json::Value::Null, message: msg })),
        Wire::Postcard => c.write_all(&binary::closing_frame(&msg)),
    };
    let _ = c.shutdown();
}

/// A socket read against a deadline: each read waits at most until
/// `deadline`, then fails with `TimedOut`.
struct Deadline<C> {
    stream: C,
    deadline: Instant,
}

impl<C: Conn> Read for Deadline<C>
where
    for<'x> &'x C: Write,
{
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let left = self.deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(std::io::ErrorKind::TimedOut.into());
        }
        self.stream.set_read_timeout(Some(left))?;
        self.stream.read(buf)
    }
}

fn serve_connection<C: Conn>(srv: &Mutex<Server<'_>>, c: C, mode: Mode)
where
    for<'x> &'x C: Write,
{
    let Ok(w) = c.try_clone() else { return };
    let limits = mode.limits;
    // A client that does not read its responses gets `timeout` per request too.
    let _ = w.set_write_timeout(Some(limits.timeout));
    let mut dl = Deadline { stream: c, deadline: Instant::now() + limits.timeout };
    let timed_out = match mode.wire {
        Wire::Json => {
            let mut r = BufReader::new(dl);
            let restart = |r: &mut BufReader<Deadline<C>>| r.get_mut().deadline = Instant::now() + limits.timeout;
            serve_stream(srv, mode.n_input, limits.max_request, &mut r, restart, || &w) == End::TimedOut
        }
        Wire::Postcard => {
            let restart = |d: &mut Deadline<C>| d.deadline = Instant::now() + limits.timeout;
            binary::serve_frames(srv, mode.frames.0, mode.frames.1, &mut dl, restart, || &w) == End::TimedOut
        }
    };
    if timed_out {
        let msg = format!("no complete request within {} s; closing the connection", limits.timeout.as_secs());
        let _ = match mode.wire {
            Wire::Json => writeln!(&w, "{}", error_response(&Refusal { id: serde_json::Value::Null, message: msg.replace("request", "request line") })),
            Wire::Postcard => (&w).write_all(&binary::closing_frame(&msg)),
        };
    }
}

/// Why a connection's loop returned.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum End {
    /// end of input, or the other side stopped reading
    Closed,
    /// a request did not arrive in time
    TimedOut,
}

/// Serves lines from `input` until its end (or until the other side stops
/// reading, or a read times out), writing each response through `out()`
/// and flushing it. `new_line` is called before each request line is read
/// (the socket's deadline starts there). Lines longer than `max_line` are
/// refused unparsed; lines are parsed outside the engine lock.
fn serve_stream<R: BufRead, W: Write>(
    srv: &Mutex<Server<'_>>,
    n_input: usize,
    max_line: usize,
    input: &mut R,
    mut new_line: impl FnMut(&mut R),
    mut out: impl FnMut() -> W,
) -> End {
    let mut buf = Vec::new();
    loop {
        new_line(input);
        let resp = match read_line(input, &mut buf, max_line) {
            Ok(Line::Eof) => return End::Closed,
            Ok(Line::TooLong) => Some(error_response(&Refusal {
                id: serde_json::Value::Null,
                message: format!("request line longer than {max_line} bytes (the limit for this model's input)"),
            })),
            Ok(Line::Data) => match std::str::from_utf8(&buf) {
                Ok(s) => respond(srv, n_input, s),
                Err(_) => Some(error_response(&Refusal { id: serde_json::Value::Null, message: "request is not UTF-8".into() })),
            },
            Err(e) if matches!(e.kind(), std::io::ErrorKind::TimedOut | std::io::ErrorKind::WouldBlock) => return End::TimedOut,
            Err(_) => return End::Closed,
        };
        if let Some(r) = resp {
            let mut w = out();
            if writeln!(w, "{r}").and_then(|_| w.flush()).is_err() {
                return End::Closed;
            }
        }
    }
}

enum Line {
    Data,
    TooLong,
    Eof,
}

/// Reads one line into `buf` (without the newline), at most `max` bytes;
/// the rest of a longer line is skipped.
fn read_line<R: BufRead>(r: &mut R, buf: &mut Vec<u8>, max: usize) -> std::io::Result<Line> {
    buf.clear();
    let n = r.by_ref().take(max as u64 + 1).read_until(b'\n', buf)?;
    if n == 0 {
        return Ok(Line::Eof);
    }
    if buf.last() == Some(&b'\n') {
        buf.pop();
        if buf.last() == Some(&b'\r') {
            buf.pop();
        }
        return Ok(Line::Data);
    }
    if buf.len() <= max {
        return Ok(Line::Data); // last line without a newline
    }
    // Skip to the end of the over-long line.
    loop {
        buf.clear();
        let n = r.by_ref().take(1 << 16).read_until(b'\n', buf)?;
        if n == 0 || buf.last() == Some(&b'\n') {
            buf.clear();
            return Ok(Line::TooLong);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use graftnet::format::backbone::{seal, HeaderRepr, Layout, OpInfo, TensorInfo};
    use graftnet::format::entry::{emit_entry, entry_len};
    use graftnet::format::{Act, EntryClass, EntryKind, OpKind, NONE};
    use graftnet::quant::{encode_bias, encode_scale_ceil};
    use graftnet::Backbone;
    use std::io::BufRead;
    use std::os::unix::net::UnixStream;

    #[test]
    fn lines_are_bounded() {
        let max = 100;
        let mut long = vec![b'x'; max + 10];
        long.extend_from_slice(b"\n{\"a\":1}\r\nlast");
        let mut r = std::io::Cursor::new(long);
        let mut buf = Vec::new();
        assert!(matches!(read_line(&mut r, &mut buf, max).unwrap(), Line::TooLong));
        assert!(matches!(read_line(&mut r, &mut buf, max).unwrap(), Line::Data));
        assert_eq!(buf, b"{\"a\":1}");
        assert!(matches!(read_line(&mut r, &mut buf, max).unwrap(), Line::Data));
        assert_eq!(buf, b"last");
        assert!(matches!(read_line(&mut r, &mut buf, max).unwrap(), Line::Eof));
    }

    /// A one-op backbone (a fully connected classifier over a `c x h x w`
    /// input, `classes` outputs), written with the runtime's own emitters.
    fn tiny_backbone(c: u16, h: u16, w: u16, classes: u16) -> Vec<u8> {
        let n = c as usize * h as usize * w as usize;
        let k = classes as usize;
        let weights: Vec<u8> = (0..k * n).map(|i| ((i * 37 % 255) as i32 - 127) as i8 as u8).collect();
        let sums_off = weights.len().next_multiple_of(4);
        let mut wsec = weights.clone();
        wsec.resize(sums_off, 0);
        for ch in 0..k {
            let sum: i32 = weights[ch * n..(ch + 1) * n].iter().map(|&x| x as i8 as i32).sum();
            wsec.extend_from_slice(&sum.to_le_bytes());
        }
        let scale = encode_scale_ceil(1.0 / 127.0, false).to_le_bytes();
        let scales: Vec<u8> = (0..k).flat_map(|_| scale).collect();
        let biases: Vec<u8> = (0..k).flat_map(|_| encode_bias(0.0).to_le_bytes()).collect();
        let mut tq = Vec::new();
        for s in [1.0f32 / 64.0, 0.1] {
            tq.extend_from_slice(&s.to_le_bytes());
            tq.extend_from_slice(&[0; 4]);
        }
        let entries = [
            (EntryKind::ScaleCodes, EntryClass::Head, 0u16, scales),
            (EntryKind::BiasCodes, EntryClass::Head, 0, biases),
            (EntryKind::TensorQuant, EntryClass::Meta, NONE, tq),
        ];
        let task_len: usize = entries.iter().map(|e| entry_len(e.3.len())).sum();
        let lay = Layout::new(2, 1, task_len, wsec.len());
        let mut b = vec![0u8; lay.total_len];
        let out_off = n.next_multiple_of(16);
        HeaderRepr {
            total_len: lay.total_len as u32,
            fingerprint: 0,
            n_tensors: 2,
            n_ops: 1,
            input: 0,
            output: 1,
            head_op: 0,
            max_classes: classes,
            flags: 0,
            tensors_off: lay.tensors_off as u32,
            ops_off: lay.ops_off as u32,
            task_off: lay.task_off as u32,
            task_len: task_len as u32,
            weights_off: lay.weights_off as u32,
            weights_len: wsec.len() as u32,
            arena_len: (out_off + k) as u32,
            params_len: 1 + classes as u32,
            n_task_entries: entries.len() as u32,
        }
        .emit(&mut b);
        let t = |c, h, w, arena_off, capacity| TensorInfo { c, h, w, alias_of: NONE, arena_off, capacity };
        t(c, h, w, 0, n as u32).emit(&mut b[lay.tensors_off..]);
        t(classes, 1, 1, out_off as u32, k as u32).emit(&mut b[lay.tensors_off + 16..]);
        OpInfo {
            kind: OpKind::Conv,
            act: Act::None,
            in0: 0,
            in1: NONE,
            out: 1,
            kh: h as u8,
            kw: w as u8,
            sh: 1,
            sw: 1,
            pads: [0; 4],
            groups: 1,
            flags: 0,
            weight_off: 0,
            sums_off: sums_off as u32,
            act_lo: f32::NEG_INFINITY,
            act_hi: f32::INFINITY,
        }
        .emit(&mut b[lay.ops_off..]);
        let mut at = lay.task_off;
        for (kind, class, op, payload) in &entries {
            at += emit_entry(&mut b[at..], *kind, *class, *op, payload);
        }
        b[lay.weights_off..].copy_from_slice(&wsec);
        seal(&mut b);
        b
    }

    /// Runs `f(socket path)` against a device serving `backbone` with
    /// `limits` on a Unix socket; the server is stopped afterwards.
    fn with_device(backbone: &[u8], limits: Limits, f: impl FnOnce(&Path, &Mutex<Server<'_>>)) {
        let bb = Backbone::parse(backbone).unwrap();
        let dir = std::env::temp_dir().join(format!("graftnet-device-sock-{}-{:?}", std::process::id(), std::thread::current().id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let srv = Mutex::new(Server::new(bb, PatchStore::new(&dir, vec![]), None, "test".into(), DEFAULT_MAX_PATCH));
        let path = dir.join("s.sock");
        let listener = bind(&path).unwrap();
        let stop = AtomicBool::new(false);
        std::thread::scope(|s| {
            let (srv, stop) = (&srv, &stop);
            s.spawn(move || serve_socket(srv, listener.incoming(), Mode::json(limits, 16), stop));
            // Stops the server even when `f` panics (else the scope would wait forever).
            struct Stop<'x>(&'x AtomicBool, &'x Path);
            impl Drop for Stop<'_> {
                fn drop(&mut self) {
                    self.0.store(true, Ordering::Relaxed);
                    let _ = UnixStream::connect(self.1); // wakes the accept loop
                }
            }
            let _stop = Stop(stop, &path);
            f(&path, srv);
        });
        let _ = std::fs::remove_dir_all(dir);
    }

    fn client(p: &Path) -> (UnixStream, BufReader<UnixStream>) {
        let c = UnixStream::connect(p).unwrap();
        c.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
        let r = BufReader::new(c.try_clone().unwrap());
        (c, r)
    }

    fn ask(c: &mut (UnixStream, BufReader<UnixStream>), line: &str) -> serde_json::Value {
        writeln!(c.0, "{line}").unwrap();
        read_json(&mut c.1)
    }

    fn read_json(r: &mut BufReader<UnixStream>) -> serde_json::Value {
        let mut s = String::new();
        r.read_line(&mut s).unwrap();
        serde_json::from_str(&s).unwrap_or_else(|e| panic!("{s:?}: {e}"))
    }

    fn request(id: u32, n: usize) -> String {
        let x: Vec<f32> = (0..n).map(|i| (i % 7) as f32 * 0.25 - 0.75).collect();
        serde_json::json!({"id": id, "task": "base", "input": x}).to_string()
    }

    fn limits(max_connections: usize, timeout_ms: u64) -> Limits {
        Limits { max_connections, timeout: Duration::from_millis(timeout_ms), ..Limits::for_input(16) }
    }

    #[test]
    fn request_size_limit_follows_the_model_input() {
        assert_eq!(max_request_bytes(16), 32 * 16 + 65536);
        assert_eq!(max_request_bytes(3 * 224 * 224), 4_882_432);
        for (c, h, w) in [(1, 4, 4), (3, 8, 8)] {
            let b = tiny_backbone(c, h, w, 3);
            let n = Backbone::parse(&b).unwrap().input().len();
            assert_eq!(n, c as usize * h as usize * w as usize);
            assert_eq!(Limits::for_input(n).max_request, 32 * n + 65536);
        }
        // A valid request padded to the limit is served; one byte more is
        // refused unparsed, and the connection carries on.
        let b = tiny_backbone(1, 4, 4, 3);
        let lim = Limits::for_input(16);
        with_device(&b, lim, |p, _| {
            let mut c = client(p);
            let base = request(1, 16);
            let pad = |len: usize| format!("{}{}}}", &base[..base.len() - 1], " ".repeat(len - base.len()));
            let v = ask(&mut c, &pad(lim.max_request));
            assert_eq!(v["id"], 1, "{v}");
            assert!(v["scores"].is_array(), "{v}");
            let v = ask(&mut c, &pad(lim.max_request + 1));
            assert!(v["error"].as_str().unwrap().contains(&format!("longer than {} bytes", lim.max_request)), "{v}");
            assert_eq!(ask(&mut c, &request(3, 16))["id"], 3);
        });
    }

    #[test]
    fn connections_beyond_the_limit_are_refused() {
        let b = tiny_backbone(1, 4, 4, 3);
        with_device(&b, limits(2, 10_000), |p, _| {
            let mut a = client(p);
            let mut c = client(p);
            assert_eq!(ask(&mut a, &request(1, 16))["id"], 1);
            assert_eq!(ask(&mut c, &request(2, 16))["id"], 2);
            let mut third = client(p);
            let v = read_json(&mut third.1);
            assert!(v["error"].as_str().unwrap().contains("too many connections"), "{v}");
            let mut rest = String::new();
            assert_eq!(third.1.read_line(&mut rest).unwrap_or(0), 0, "closed after the error: {rest:?}");
            // The two served ones still are; once one leaves, a new one is served.
            assert_eq!(ask(&mut a, &request(3, 16))["id"], 3);
            drop(c);
            let t0 = Instant::now();
            loop {
                // (Refused: the write may fail, or the line read is the error.)
                let mut d = client(p);
                let _ = writeln!(d.0, "{}", request(4, 16));
                let mut s = String::new();
                let _ = d.1.read_line(&mut s);
                if s.contains("\"id\":4") {
                    break;
                }
                assert!(t0.elapsed() < Duration::from_secs(10), "no slot freed: {s}");
                std::thread::sleep(Duration::from_millis(20));
            }
        });
    }

    #[test]
    fn idle_and_slow_connections_time_out() {
        let b = tiny_backbone(1, 4, 4, 3);
        with_device(&b, limits(4, 300), |p, _| {
            // Idle from the start.
            let t0 = Instant::now();
            let mut idle = client(p);
            let v = read_json(&mut idle.1);
            assert!(v["error"].as_str().unwrap().contains("no complete request line within"), "{v}");
            let mut rest = String::new();
            assert_eq!(idle.1.read_line(&mut rest).unwrap_or(0), 0);
            assert!(t0.elapsed() < Duration::from_secs(5));
            // Served, then idle.
            let mut c = client(p);
            assert_eq!(ask(&mut c, &request(1, 16))["id"], 1);
            assert!(read_json(&mut c.1)["error"].is_string());
            // Trickling a line: the deadline is per line, not per read.
            let mut slow = client(p);
            let line = request(2, 16);
            let mut timed_out = false;
            for chunk in line.as_bytes().chunks(4) {
                if slow.0.write_all(chunk).is_err() {
                    timed_out = true;
                    break;
                }
                std::thread::sleep(Duration::from_millis(50));
            }
            let mut s = String::new();
            let _ = slow.1.read_line(&mut s);
            assert!(timed_out || s.contains("no complete request line"), "{s}");
        });
    }

    #[test]
    fn a_slow_client_does_not_hold_up_another() {
        let b = tiny_backbone(1, 4, 4, 3);
        with_device(&b, limits(4, 10_000), |p, srv| {
            // A partial line, never finished.
            let mut slow = client(p);
            let line = request(1, 16);
            slow.0.write_all(&line.as_bytes()[..line.len() / 2]).unwrap();
            let mut fast = client(p);
            let t0 = Instant::now();
            assert_eq!(ask(&mut fast, &request(2, 16))["id"], 2);
            assert!(t0.elapsed() < Duration::from_secs(5));
            // Parsing happens outside the engine lock: while it is held, a
            // malformed request is still answered.
            let guard = srv.lock().unwrap();
            let v = ask(&mut fast, r#"{"id": 3, "task": "base", "input": [1, 2]}"#);
            assert_eq!(v["id"], 3);
            assert!(v["error"].as_str().unwrap().contains("has 2 values"), "{v}");
            drop(guard);
            slow.0.write_all(&line.as_bytes()[line.len() / 2..]).unwrap();
            slow.0.write_all(b"\n").unwrap();
            assert_eq!(read_json(&mut slow.1)["id"], 1);
        });
    }

    /// A patch with no entries (the base task under another name) for the
    /// backbone with fingerprint `fp`.
    fn empty_patch(name: &str, fp: u64) -> Vec<u8> {
        use graftnet::format::patch::{seal, HeaderRepr};
        let off = HeaderRepr::entries_off(name.len());
        let mut b = vec![0u8; off];
        HeaderRepr { total_len: off as u32, backbone: fp, n_entries: 0, classes: 3, name_len: name.len() as u16, entries_off: off as u32, task_version: 0 }.emit(&mut b);
        b[48..48 + name.len()].copy_from_slice(name.as_bytes());
        seal(&mut b);
        b
    }

    fn signed(blob: &[u8], key: &graftnet::SigningKey) -> Vec<u8> {
        let mut v = blob.to_vec();
        v.extend_from_slice(&key.sign(blob));
        v
    }

    /// `--verify-key`: an unsigned, foreign or modified patch is left out
    /// with a warning that says why; such a backbone stops the start.
    /// Without the key everything is served as before.
    #[test]
    fn verify_key_refuses_unsigned_foreign_and_modified_blobs() {
        let d = std::env::temp_dir().join(format!("graftnet-device-verify-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).unwrap();
        let key = graftnet::SigningKey::from_seed(&[9; 32]);
        let other = graftnet::SigningKey::from_seed(&[10; 32]);
        let bb = tiny_backbone(1, 4, 4, 3);
        let fp = Backbone::parse(&bb).unwrap().fingerprint();
        std::fs::write(d.join("backbone.gnb"), signed(&bb, &key)).unwrap();
        std::fs::write(d.join("good.gnp"), signed(&empty_patch("good", fp), &key)).unwrap();
        std::fs::write(d.join("plain.gnp"), empty_patch("plain", fp)).unwrap();
        std::fs::write(d.join("foreign.gnp"), signed(&empty_patch("foreign", fp), &other)).unwrap();
        let mut modified = signed(&empty_patch("modified", fp), &key);
        modified[48] ^= b'm' ^ b'n'; // the name: "nodified"
        let n = modified.len() - graftnet::format::signature::TRAILER_LEN;
        graftnet::format::patch::seal(&mut modified[..n]);
        std::fs::write(d.join("modified.gnp"), &modified).unwrap();
        let hex: String = key.verify_key().to_bytes().iter().map(|b| format!("{b:02x}")).collect();
        std::fs::write(d.join("key.pub"), format!("# graftnet ed25519 public key\n{hex}\n")).unwrap();
        std::fs::write(d.join("key"), "# graftnet ed25519 secret key\n00\n").unwrap();

        let vk = read_verify_key(&d.join("key.pub")).unwrap();
        assert!(read_verify_key(&d.join("key")).unwrap_err().contains("is a secret key"));
        let x = ExportBytes::read(&d).unwrap();
        let back = x.backbone(Some(&vk)).unwrap();
        let (ok, warnings) = x.patches(&back, Some(&vk));
        assert_eq!(ok.iter().map(|p| p.0.as_str()).collect::<Vec<_>>(), ["good"]);
        assert_eq!(ok[0].1, d.join("good.gnp"));
        let says = |file: &str, what: &str| {
            assert!(warnings.iter().any(|w| w.contains(file) && w.contains(what)), "{file}: {what}: {warnings:?}");
        };
        says("plain.gnp", "is not signed");
        says("foreign.gnp", "is signed with key");
        says("modified.gnp", "bad signature");
        // The server refuses the tasks left out; the good one runs.
        let tasks = ok.iter().map(|(_, f, p)| StoredTask::new(PatchMeta::of(p), f.to_path_buf(), p.bytes().to_vec())).collect();
        let srv = Mutex::new(Server::new(back, PatchStore::new(&d, tasks), Some(vk), "test".into(), DEFAULT_MAX_PATCH));
        let x16: Vec<f32> = vec![0.5; 16];
        let ask = |task: &str| respond(&srv, 16, &serde_json::json!({"id": 1, "task": task, "input": x16}).to_string()).unwrap();
        assert!(ask("good").contains("\"top1\""), "{}", ask("good"));
        assert!(ask("plain").contains("unknown task 'plain'"), "{}", ask("plain"));
        // Without a key: every patch (the modified one's CRC was resealed).
        let back2 = x.backbone(None).unwrap();
        let (all, w2) = x.patches(&back2, None);
        assert_eq!(all.len(), 4, "{w2:?}");
        // An unsigned or modified backbone stops the start.
        std::fs::write(d.join("backbone.gnb"), &bb).unwrap();
        let x = ExportBytes::read(&d).unwrap();
        let e = x.backbone(Some(&vk)).err().unwrap().to_string();
        assert!(e.contains("backbone.gnb") && e.contains("is not signed"), "{e}");
        let mut bad = signed(&bb, &key);
        let last = bad.len() - 1;
        bad[last] ^= 1;
        std::fs::write(d.join("backbone.gnb"), &bad).unwrap();
        let x = ExportBytes::read(&d).unwrap();
        assert!(x.backbone(Some(&vk)).err().unwrap().to_string().contains("bad signature"));
        assert!(x.backbone(None).is_ok());
        // The flag.
        let args = parse_args(["--dir", "x", "--verify-key", "k.pub"].into_iter().map(String::from)).unwrap().unwrap();
        assert_eq!(args.verify_key.as_deref(), Some(Path::new("k.pub")));
        assert!(parse_args(["--dir", "x", "--verify-key"].into_iter().map(String::from)).is_err());
        let _ = std::fs::remove_dir_all(d);
    }
}
