#!/usr/bin/env python3
"""Print LEARN.md's tables from the JSON files scripts/learn_paper.sh wrote.

    python3 scripts/learn_tables.py out/learn
"""
import json
import os
import sys


def load(path):
    with open(path) as f:
        return json.loads(f.read().strip().splitlines()[-1])


def pct(v):
    return "–" if v is None else f"{100 * v:.2f}"


def main(out):
    base = load(os.path.join(out, "base.json"))
    ex = load(os.path.join(out, "export.json"))
    patch_bytes = {t["name"]: t["patch_bytes"] for t in ex["tasks"]}
    ev = lambda d, t: load(os.path.join(out, f"{d}-{t}.eval.json"))
    b = ev("export", "base")
    print(f"Base: MobileNetV2-0.35 from scratch, {base['train_images']} images, "
          f"{base['epochs']} epochs, {base['trainable_params']} parameters, "
          f"{base['images_per_s']:.0f} images/s: float {pct(base['val_top1'])} %, "
          f"int8 {pct(b['top1'])} % (float reference {pct(b['reference_top1'])} %), "
          f"backbone {ex['backbone_bytes']} bytes\n")
    tasks = ["mnist", "fashion-updown"]
    print("| task | patch | trainable params | float top-1 % | int8 top-1 % | int8 − float | patch bytes | train images/s |")
    print("|---|---|---:|---:|---:|---:|---:|---:|")
    summary = {}
    for t in tasks:
        acc = {}
        for p in ["logits", "sb-logits", "dw-logits", "full"]:
            j = load(os.path.join(out, f"{t}-{p}.json"))
            acc[p] = j["val_top1"]
            name = f"{t}-{p}"
            if p == "full":
                q, qs, d, pb = None, "–", "–", "all weights"
            else:
                e = ev("export", name)
                q = e["top1"]
                qs, d = pct(q), f"{100 * (q - e['reference_top1']):+.2f}"
                pb = str(patch_bytes[name])
            print(f"| {t} | {p.replace('-', '+')} | {j['trainable_params']} | {pct(j['val_top1'])} | "
                  f"{qs} | {d} | {pb} | {j['images_per_s']:.0f} |")
        summary[t] = acc
    print()
    print("| task | logits | S/B+logits | full | gap logits→full recovered by S/B |")
    print("|---|---:|---:|---:|---:|")
    for t, a in summary.items():
        gap = a["full"] - a["logits"]
        rec = (a["sb-logits"] - a["logits"]) / gap if gap > 0 else float("nan")
        print(f"| {t} | {pct(a['logits'])} | {pct(a['sb-logits'])} | {pct(a['full'])} | {100 * rec:.0f} % |")
    print()
    print("| task | S/B+logits alone (float) | together, shared frozen (float / int8) | together, shared trained (float / int8) |")
    print("|---|---:|---:|---:|")
    mf = load(os.path.join(out, "multi-frozen.json"))
    mt = load(os.path.join(out, "multi-train.json"))
    val = lambda m, t: next(x["val_top1"] for x in m["tasks"] if x["task"] == t)
    for t in tasks:
        f, s = ev("export", f"{t}-multi"), ev("export-shared", t)
        print(f"| {t} | {pct(summary[t]['sb-logits'])} | {pct(val(mf, t))} / {pct(f['top1'])} | "
              f"{pct(val(mt, t))} / {pct(s['top1'])} |")
    print(f"\nmulti-task throughput: frozen {mf['images_per_s']:.0f}, trained {mt['images_per_s']:.0f} images/s")


if __name__ == "__main__":
    sys.exit(main(sys.argv[1] if len(sys.argv) > 1 else "out/learn"))
