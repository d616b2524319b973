//! `graftnet inspect`: what is inside a backbone or a patch.

use std::path::Path;

use anyhow::{Context, Result};
use graftnet::format::backbone::OpInfo;
use graftnet::format::{EntryClass, EntryKind, OpKind, BACKBONE_MAGIC, NONE, PATCH_MAGIC};
use graftnet::{Backbone, Patch};
use serde_json::json;

/// The most bytes simultaneously live under the backbone's op order
/// (the arena plan's lower bound).
pub fn live_lower_bound(bb: &Backbone<'_>) -> usize {
    let n = bb.n_tensors();
    let root = |t: usize| {
        let a = bb.tensor(t).alias_of;
        if a == NONE {
            t
        } else {
            a as usize
        }
    };
    let mut start = vec![usize::MAX; n];
    let mut end = vec![0usize; n];
    let input = bb.header().input as usize;
    start[root(input)] = 0;
    for i in 0..bb.n_ops() {
        let op = bb.op(i);
        for t in [op.in0, op.in1, op.out] {
            if t != NONE {
                let r = root(t as usize);
                start[r] = start[r].min(i);
                end[r] = end[r].max(i);
            }
        }
    }
    let out = root(bb.header().output as usize);
    end[out] = bb.n_ops();
    (0..bb.n_ops())
        .map(|i| {
            (0..n)
                .filter(|&t| root(t) == t && start[t] <= i && i <= end[t])
                .map(|t| bb.tensor(t).capacity as usize)
                .sum()
        })
        .max()
        .unwrap_or(0)
}

fn op_desc(bb: &Backbone<'_>, op: &OpInfo) -> String {
    match op.kind {
        OpKind::Conv | OpKind::DwConv => {
            let mut s = format!("k{}x{} s{}", op.kh, op.kw, op.sh);
            if op.pads.iter().any(|&p| p > 0) {
                s += &format!(" p{:?}", op.pads);
            }
            if op.groups > 1 && op.kind == OpKind::Conv {
                s += &format!(" g{}", op.groups);
            }
            if op.act == graftnet::format::Act::Clamp {
                s += &format!(" clamp[{}, {}]", op.act_lo, op.act_hi);
            }
            let _ = bb;
            s
        }
        OpKind::AvgPool | OpKind::MaxPool => format!("k{}x{} s{}", op.kh, op.kw, op.sh),
        _ => String::new(),
    }
}

/// A patch's own head network, described.
struct HeadInfo {
    cut_op: u16,
    cut_tensor: u16,
    /// the backbone op at the cut (when the backbone is at hand)
    replaced: Option<String>,
    ops: Vec<String>,
    arena: usize,
    params: usize,
    bytes: usize,
    /// engine sizes with this patch (when the backbone is at hand)
    engine: Option<(usize, usize)>,
}

impl HeadInfo {
    fn json(&self) -> serde_json::Value {
        json!({"cut_op": self.cut_op, "cut_tensor": self.cut_tensor, "replaces_from": self.replaced,
               "ops": self.ops, "arena_bytes": self.arena, "params": self.params, "bytes": self.bytes,
               "engine_arena_bytes": self.engine.map(|e| e.0), "engine_params": self.engine.map(|e| e.1)})
    }
    fn lines(&self) -> String {
        let mut s = format!(
            "  brings its own head: the backbone runs ops 0..{} and stops before {}; the head reads tensor {}\n    head network ({} bytes, arena {} B, {} parameter entries): {}",
            self.cut_op,
            self.replaced.as_deref().unwrap_or("its cut"),
            self.cut_tensor,
            self.bytes,
            self.arena,
            self.params,
            self.ops.join(" -> ")
        );
        if let Some((a, p)) = self.engine {
            s += &format!(
                "\n    an engine running it needs an arena of {a} bytes and {p} parameter entries"
            );
        }
        s
    }
}

fn head_info(p: &Patch<'_>, backbone: Option<&[u8]>) -> Option<HeadInfo> {
    let e = p.entries().find(|e| e.kind == EntryKind::Head)?;
    let h = graftnet::format::head::Head::parse(e.payload).ok()?;
    let net = &h.net;
    let ops = (0..net.n_ops())
        .map(|i| {
            let op = net.op(i);
            let o = net.tensor(op.out as usize);
            format!(
                "{} {} -> {}x{}x{}",
                op.kind.name(),
                op_desc(net, &op),
                o.c,
                o.h,
                o.w
            )
            .replace("  ", " ")
        })
        .collect();
    let bb = backbone.and_then(|b| Backbone::parse(b).ok());
    Some(HeadInfo {
        cut_op: h.cut_op,
        cut_tensor: h.cut_tensor,
        replaced: bb.as_ref().map(|bb| {
            let op = bb.op(h.cut_op as usize);
            format!("op {} ({})", h.cut_op, op.kind.name())
        }),
        ops,
        arena: net.arena_len(),
        params: net.params_len(),
        bytes: net.bytes().len(),
        engine: bb.map(|bb| {
            let s = bb.engine_sizes(&[*p]);
            (s.arena, s.params)
        }),
    })
}

/// What `inspect` found about a blob's signature.
#[derive(Clone, Debug, Default)]
struct SigInfo {
    /// the key id the trailer names (None: unsigned)
    key_id: Option<String>,
    /// checked against `--verify-key`: median µs of the signature check
    /// alone (SHA-512 of the content + one Ed25519 verification)
    verify_us: Option<f64>,
}

impl SigInfo {
    fn json(&self) -> serde_json::Value {
        json!({"signed": self.key_id.is_some(), "key_id": self.key_id, "verified": self.verify_us.is_some(),
               "verify_us": self.verify_us})
    }
    fn line(&self) -> String {
        match (&self.key_id, self.verify_us) {
            (None, _) => "  signature: none (unsigned)".into(),
            (Some(id), None) => format!(
                "  signature: ed25519, key id {id} (not checked; give --verify-key KEY.pub)"
            ),
            (Some(id), Some(us)) => {
                format!("  signature: ed25519, key id {id}, verified ({us:.1} us: SHA-512 + Ed25519, median of 5)")
            }
        }
    }
}

/// The signature of `bytes` (a backbone or patch that parses), checked
/// against `key` if given: an error says why it is refused.
fn signature_info(file: &Path, bytes: &[u8], key: Option<&graftnet::VerifyKey>) -> Result<SigInfo> {
    let err = |e: graftnet::FormatError| anyhow::anyhow!("{}: {e}", file.display());
    if let Some(k) = key {
        // The signature first, as a device checks it.
        crate::signing::verify_blob(bytes, k).map_err(err)?;
    }
    let (content, trailer) = if bytes.get(..4) == Some(&BACKBONE_MAGIC[..]) {
        let b = Backbone::parse(bytes).map_err(err)?;
        (b.bytes(), b.signature())
    } else {
        let p = Patch::parse(bytes).map_err(err)?;
        (p.bytes(), p.signature())
    };
    let mut info = SigInfo {
        key_id: trailer.map(|t| t.key_id().to_string()),
        verify_us: None,
    };
    if let Some(k) = key {
        let mut t = Vec::new();
        for _ in 0..5 {
            let t0 = std::time::Instant::now();
            k.verify(std::hint::black_box(content), trailer)
                .map_err(err)?;
            t.push(t0.elapsed().as_secs_f64() * 1e6);
        }
        t.sort_by(f64::total_cmp);
        info.verify_us = Some(t[2]);
    }
    Ok(info)
}

/// Prints a description of `file` (backbone or patch).
pub fn inspect(file: &Path, backbone: Option<&Path>, json_out: bool) -> Result<()> {
    inspect_verified(file, backbone, None, json_out)
}

/// [`inspect`], checking the blob's signature against the public key in
/// file `verify_key` (an error if it does not verify).
pub fn inspect_verified(
    file: &Path,
    backbone: Option<&Path>,
    verify_key: Option<&Path>,
    json_out: bool,
) -> Result<()> {
    let key = verify_key
        .map(crate::signing::read_verify_key)
        .transpose()?;
    let bytes = std::fs::read(file).with_context(|| format!("reading {}", file.display()))?;
    if bytes.len() >= 4 && bytes[..4] == BACKBONE_MAGIC {
        let sig = signature_info(file, &bytes, key.as_ref())?;
        inspect_backbone(file, &bytes, &sig, json_out)
    } else if bytes.len() >= 4 && bytes[..4] == PATCH_MAGIC {
        let sig = signature_info(file, &bytes, key.as_ref())?;
        let bbp = backbone
            .map(Path::to_path_buf)
            .unwrap_or_else(|| file.with_file_name("backbone.gnb"));
        let bbb = std::fs::read(&bbp).ok();
        inspect_patch(file, &bytes, bbb.as_deref(), &sig, json_out)
    } else {
        anyhow::bail!(
            "{} is neither a graftnet backbone (.gnb) nor a patch (.gnp)",
            file.display()
        )
    }
}

fn inspect_backbone(file: &Path, bytes: &[u8], sig: &SigInfo, json_out: bool) -> Result<()> {
    let bb = Backbone::parse(bytes).map_err(|e| anyhow::anyhow!("{}: {e}", file.display()))?;
    let mut arena = vec![0i8; bb.arena_len()];
    let mut params = vec![graftnet::ChannelRequant::default(); bb.params_len()];
    let engine =
        graftnet::Engine::new(&bb, &mut arena, &mut params).map_err(|e| anyhow::anyhow!("{e}"))?;
    let e: Vec<(f32, i32)> = (0..bb.n_tensors())
        .map(|t| engine.tensor_quant(t))
        .collect();
    let lb = live_lower_bound(&bb);
    let h = bb.header();
    let mut layers = Vec::new();
    for i in 0..bb.n_ops() {
        let op = bb.op(i);
        let a = bb.tensor(op.in0 as usize);
        let o = bb.tensor(op.out as usize);
        let wbytes = bb.op_weights(&op).len();
        let (s, z) = e[op.out as usize];
        layers.push((i, op, a, o, wbytes, s, z));
    }
    if json_out {
        let ls: Vec<_> = layers
            .iter()
            .map(|(i, op, a, o, w, s, z)| {
                json!({"index": i, "kind": op.kind.name(), "input": [a.c, a.h, a.w], "output": [o.c, o.h, o.w],
                       "kernel": [op.kh, op.kw], "stride": [op.sh, op.sw], "pads": op.pads, "groups": op.groups,
                       "weight_bytes": w, "out_scale": s, "out_zero_point": z})
            })
            .collect();
        println!(
            "{}",
            json!({"kind": "backbone", "bytes": bytes.len(), "fingerprint": format!("{:016x}", bb.fingerprint()),
                   "ops": bb.n_ops(), "tensors": bb.n_tensors(), "weights_bytes": h.weights_len, "task_bytes": h.task_len,
                   "arena_bytes": h.arena_len, "arena_lower_bound": lb, "params_len": h.params_len,
                   "max_classes": h.max_classes, "base_classes": bb.base_classes(), "softmax": bb.softmax(),
                   "signature": sig.json(), "layers": ls})
        );
        return Ok(());
    }
    let inp = bb.input();
    println!(
        "backbone {} ({} bytes), fingerprint {:016x}",
        file.display(),
        bytes.len(),
        bb.fingerprint()
    );
    println!(
        "  input {}x{}x{} (c,h,w), {} ops, {} tensors, {} classes (patches up to {}){}",
        inp.c,
        inp.h,
        inp.w,
        bb.n_ops(),
        bb.n_tensors(),
        bb.base_classes(),
        h.max_classes,
        if bb.softmax() { ", softmax" } else { "" }
    );
    println!(
        "  weights {} bytes, base task {} bytes, arena {} bytes (live-tensor lower bound {}, +{:.1} %), parameter table {} entries ({} bytes)",
        h.weights_len,
        h.task_len,
        h.arena_len,
        lb,
        100.0 * (h.arena_len as f64 / lb.max(1) as f64 - 1.0),
        h.params_len,
        h.params_len as usize * core::mem::size_of::<graftnet::ChannelRequant>()
    );
    println!("{}", sig.line());
    println!(
        "  {:>4} {:<7} {:>14} {:>14} {:>9}  {:<28} out quant (scale, zp)",
        "#", "op", "input", "output", "weights", "geometry"
    );
    for (i, op, a, o, w, s, z) in layers {
        println!(
            "  {:>4} {:<7} {:>14} {:>14} {:>9}  {:<28} {:.6}, {}",
            i,
            op.kind.name(),
            format!("{}x{}x{}", a.c, a.h, a.w),
            format!("{}x{}x{}", o.c, o.h, o.w),
            w,
            op_desc(&bb, &op),
            s,
            z
        );
    }
    Ok(())
}

fn inspect_patch(
    file: &Path,
    bytes: &[u8],
    backbone: Option<&[u8]>,
    sig: &SigInfo,
    json_out: bool,
) -> Result<()> {
    let p = Patch::parse(bytes).map_err(|e| anyhow::anyhow!("{}: {e}", file.display()))?;
    let classes = EntryClass::ALL;
    let entries: Vec<_> = p.entries().collect();
    let elen = |n: usize| graftnet::format::entry::entry_len(n);
    let by: Vec<(EntryClass, usize, usize)> = classes
        .iter()
        .map(|&c| {
            let es: Vec<_> = entries.iter().filter(|e| e.class == c).collect();
            (c, es.len(), es.iter().map(|e| elen(e.payload.len())).sum())
        })
        .collect();
    let header_bytes = p.header().entries_off as usize;
    let head = head_info(&p, backbone);
    let check = backbone.map(|b| -> Result<(), String> {
        let bb = Backbone::parse(b).map_err(|e| format!("backbone: {e}"))?;
        if bb.fingerprint() != p.backbone_fingerprint() {
            return Err(format!(
                "made for backbone {:016x}, not {:016x}",
                p.backbone_fingerprint(),
                bb.fingerprint()
            ));
        }
        bb.validate_task(p.entry_bytes(), p.n_entries(), false)
            .map(|_| ())
            .map_err(|e| e.to_string())
    });
    if json_out {
        let byj: serde_json::Map<String, serde_json::Value> = by
            .iter()
            .map(|(c, n, b)| (c.name().to_string(), json!({"entries": n, "bytes": b})))
            .collect();
        let ents: Vec<_> = entries
            .iter()
            .map(|e| json!({"kind": e.kind.name(), "class": e.class.name(), "op": if e.op == NONE { None } else { Some(e.op) }, "bytes": e.payload.len()}))
            .collect();
        println!(
            "{}",
            json!({"kind": "patch", "task": p.name(), "task_version": p.task_version(), "bytes": bytes.len(), "classes": p.classes(),
                   "backbone": format!("{:016x}", p.backbone_fingerprint()), "header_bytes": header_bytes,
                   "by_kind": byj, "entries": ents, "signature": sig.json(), "head": head.as_ref().map(|h| h.json()),
                   "valid_for_backbone": check.as_ref().map(|c| c.is_ok()), "error": check.and_then(|c| c.err())})
        );
        return Ok(());
    }
    println!(
        "patch {} ({} bytes): task '{}'{}, {} classes, for backbone {:016x}",
        file.display(),
        bytes.len(),
        p.name(),
        match p.task_version() {
            0 => String::new(),
            v => format!(" version {v}"),
        },
        p.classes(),
        p.backbone_fingerprint()
    );
    match &check {
        Some(Ok(())) => println!("  fits the backbone beside it"),
        Some(Err(e)) => println!("  DOES NOT fit the backbone: {e}"),
        None => println!("  (no backbone.gnb beside it to check against)"),
    }
    println!("{}", sig.line());
    if let Some(h) = &head {
        println!("{}", h.lines());
    }
    println!("  header + name: {header_bytes} bytes");
    for (c, n, b) in &by {
        if *n > 0 {
            println!("  {:<18} {:>4} entries {:>9} bytes", c.name(), n, b);
        }
    }
    let mut per_kind: Vec<(EntryKind, usize, usize)> = Vec::new();
    for e in &entries {
        match per_kind.iter_mut().find(|(k, _, _)| *k == e.kind) {
            Some(x) => {
                x.1 += 1;
                x.2 += e.payload.len();
            }
            None => per_kind.push((e.kind, 1, e.payload.len())),
        }
    }
    println!("  by entry kind:");
    for (k, n, b) in per_kind {
        println!(
            "    {:<14} {:>4} entries {:>9} payload bytes",
            k.name(),
            n,
            b
        );
    }
    Ok(())
}
