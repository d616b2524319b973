//! Gradient checks of every backward pass against central finite
//! differences (kernels one by one, then whole networks with every layer
//! kind), a loss that falls, and determinism under a seed.

use super::kernels::{self as k, ConvSpec, Dims};
use super::net::{BnInit, Mode, Net, PatchKind};
use super::norm;
use super::train::{self, Augment, TaskRun, TrainConfig};
use crate::data::Dataset;
use crate::ir::{self, Act, Expr, Graph, Node, Op, Shape, TensorInfo, Unary};
use crate::rng::Rng;

fn rand_vec(r: &mut Rng, n: usize) -> Vec<f32> {
    (0..n).map(|_| r.uniform(-1.0, 1.0)).collect()
}

fn dot(a: &[f32], b: &[f32]) -> f64 {
    a.iter()
        .zip(b)
        .map(|(x, y)| f64::from(*x) * f64::from(*y))
        .sum()
}

/// Central difference of `f` at every coordinate of `x` (or a sample of
/// at most 40), compared with `grad`. ReLU-like clamps have kinks: a step
/// that crosses one spoils the difference, so a coordinate passes when the
/// difference at one of two step sizes (1e-3, 2.5e-4) matches; a wrong
/// gradient matches at neither.
fn check_grad(what: &str, x: &mut [f32], grad: &[f32], f: &mut dyn FnMut(&[f32]) -> f64) {
    let step = (x.len() / 40).max(1);
    for i in (0..x.len()).step_by(step) {
        let ana = f64::from(grad[i]);
        let mut nums = vec![];
        let ok = [1e-3f32, 2.5e-4].into_iter().any(|h| {
            let v = x[i];
            x[i] = v + h;
            let up = f(x);
            x[i] = v - h;
            let down = f(x);
            x[i] = v;
            let num = (up - down) / (2.0 * f64::from(h));
            nums.push(num);
            (num - ana).abs() / (1e-2 + num.abs().max(ana.abs())) < 3e-2
        });
        assert!(
            ok,
            "{what}: coordinate {i}: finite differences {nums:?}, backward {ana}"
        );
    }
}

fn conv_case(s: ConvSpec, d: Dims, seed: u64) {
    let mut r = Rng::new(seed);
    let mut x = rand_vec(&mut r, d.len());
    let mut w = rand_vec(&mut r, s.cout * s.row_len());
    let (oh, ow) = s.out_hw(d.h, d.w);
    let od = Dims {
        n: d.n,
        h: oh,
        w: ow,
        c: s.cout,
    };
    let probe = rand_vec(&mut r, od.len());
    let loss = |x: &[f32], w: &[f32]| {
        let mut y = vec![0f32; od.len()];
        k::conv_forward(&s, x, d, w, None, &mut y, None, 2);
        dot(&y, &probe)
    };
    let mut dx = vec![0f32; d.len()];
    let mut dw = vec![0f32; w.len()];
    k::conv_backward(&s, &x, d, &w, &probe, Some(&mut dx), Some(&mut dw), None, 2);
    let w0 = w.clone();
    check_grad(&format!("{s:?} dx"), &mut x, &dx, &mut |x| loss(x, &w0));
    let x0 = x.clone();
    check_grad(&format!("{s:?} dw"), &mut w, &dw, &mut |w| loss(&x0, w));
    // One thread gives the same values (up to summation order).
    let mut dx1 = vec![0f32; d.len()];
    k::conv_backward(&s, &x, d, &w, &probe, Some(&mut dx1), None, None, 1);
    for (a, b) in dx.iter().zip(&dx1) {
        assert!((a - b).abs() <= 1e-5 * (1.0 + a.abs()));
    }
}

#[test]
fn conv_gradients_match_finite_differences() {
    let d = Dims {
        n: 3,
        h: 7,
        w: 6,
        c: 4,
    };
    let base = ConvSpec {
        cin: 4,
        cout: 6,
        kh: 3,
        kw: 3,
        sh: 1,
        sw: 1,
        pads: [1, 1, 1, 1],
        groups: 1,
    };
    conv_case(base, d, 1);
    conv_case(
        ConvSpec {
            sh: 2,
            sw: 2,
            pads: [0, 1, 1, 0],
            ..base
        },
        d,
        2,
    );
    conv_case(
        ConvSpec {
            kh: 1,
            kw: 1,
            pads: [0; 4],
            ..base
        },
        d,
        3,
    );
    conv_case(ConvSpec { groups: 2, ..base }, d, 4);
    // depthwise, stride 1 and 2
    let dw = ConvSpec {
        cout: 4,
        groups: 4,
        ..base
    };
    conv_case(dw, d, 5);
    conv_case(ConvSpec { sh: 2, sw: 2, ..dw }, d, 6);
    // fully connected over a whole map
    conv_case(
        ConvSpec {
            kh: 7,
            kw: 6,
            pads: [0; 4],
            ..base
        },
        d,
        7,
    );
}

#[test]
fn batch_norm_gradients_match_finite_differences() {
    let (rows, c) = (24, 5);
    let mut r = Rng::new(9);
    let mut z = rand_vec(&mut r, rows * c);
    let mut gamma = rand_vec(&mut r, c);
    let beta = rand_vec(&mut r, c);
    let probe = rand_vec(&mut r, rows * c);
    let act = Act::Clip(-2.0, 2.5);
    let fwd = |z: &[f32], gamma: &[f32]| -> (Vec<f32>, Vec<f32>, Vec<f32>) {
        let (m, v) = norm::channel_moments(z, c, 2);
        let mean: Vec<f32> = m.iter().map(|&x| x as f32).collect();
        let inv: Vec<f32> = v.iter().map(|&x| 1.0 / (x as f32 + 1e-5).sqrt()).collect();
        let mut y = vec![0f32; z.len()];
        norm::bn_forward(z, c, &mean, &inv, gamma, &beta, act, &mut y, 2);
        (y, mean, inv)
    };
    let (y, mean, inv) = fwd(&z, &gamma);
    let mut dz = probe.clone();
    let (dg, _db) = norm::bn_backward_train(&z, c, &mean, &inv, &gamma, &beta, act, &mut dz, 2);
    // The mask recomputed inside equals the one read off the output.
    let mut du = probe.clone();
    norm::act_mask(act, &y, &mut du, 2);
    let mut dz2 = du.clone();
    let (dg2, _) =
        norm::bn_backward_train(&z, c, &mean, &inv, &gamma, &beta, Act::None, &mut dz2, 2);
    assert_eq!((&dz, &dg), (&dz2, &dg2));
    let g0 = gamma.clone();
    check_grad("bn dz", &mut z, &dz, &mut |z| dot(&fwd(z, &g0).0, &probe));
    let z0 = z.clone();
    check_grad("bn dgamma", &mut gamma, &dg, &mut |g| {
        dot(&fwd(&z0, g).0, &probe)
    });
}

#[test]
fn elementwise_derivatives_match_finite_differences() {
    let hswish = Expr::Div(
        Box::new(Expr::Mul(
            Box::new(Expr::X),
            Box::new(Expr::Min(
                Box::new(Expr::Max(
                    Box::new(Expr::Add(Box::new(Expr::X), Box::new(Expr::Const(3.0)))),
                    Box::new(Expr::Const(0.0)),
                )),
                Box::new(Expr::Const(6.0)),
            )),
        )),
        Box::new(Expr::Const(6.0)),
    );
    let us = [
        Unary::Relu,
        Unary::Clip(-1.0, 2.0),
        Unary::HardSigmoid {
            alpha: 0.2,
            beta: 0.5,
        },
        Unary::HardSwish {
            alpha: 1.0 / 6.0,
            beta: 0.5,
        },
        Unary::Sigmoid,
        Unary::Swish,
        Unary::Tanh,
        Unary::LeakyRelu { alpha: 0.1 },
        Unary::Expr(hswish),
        Unary::Expr(Expr::Sub(
            Box::new(Expr::Exp(Box::new(Expr::Neg(Box::new(Expr::X))))),
            Box::new(Expr::Sigmoid(Box::new(Expr::Tanh(Box::new(Expr::X))))),
        )),
    ];
    for u in &us {
        for i in 0..41 {
            // avoid the kinks themselves
            let x = -4.03 + 0.2 * i as f32;
            let (v, d) = k::unary_grad(u, x);
            assert!((v - u.apply(x)).abs() < 1e-5, "{u:?} value at {x}");
            let h = 1e-3;
            let num = (u.apply(x + h) - u.apply(x - h)) / (2.0 * h);
            assert!(
                (num - d).abs() < 2e-2 * (1.0 + d.abs()),
                "{u:?} at {x}: finite difference {num}, derivative {d}"
            );
        }
    }
}

#[test]
fn softmax_cross_entropy_gradient() {
    let mut r = Rng::new(4);
    let (n, kk) = (3, 5);
    let mut logits = rand_vec(&mut r, n * kk);
    let labels = [0, 3, 4];
    let mut d = vec![0f32; n * kk];
    k::softmax_xent(&logits, kk, &labels, &mut d);
    let mut scratch = vec![0f32; n * kk];
    check_grad("softmax_xent", &mut logits, &d, &mut |l| {
        k::softmax_xent(l, kk, &labels, &mut scratch).0
    });
}

/// A small graph with every layer kind the trainer maps: conv+clamp,
/// depthwise, pointwise, residual add, squeeze-excite (global pool, convs,
/// hard-sigmoid, broadcast mul), stand-alone affine, hard-swish, concat,
/// reshape, classifier.
pub(crate) fn tiny_graph(seed: u64, classes: usize) -> Graph {
    let mut r = Rng::new(seed);
    let mut tensors = vec![];
    let mut nodes = vec![];
    let t = |tensors: &mut Vec<TensorInfo>, c, h, w| {
        tensors.push(TensorInfo {
            name: format!("t{}", tensors.len()),
            shape: Shape::new(c, h, w),
        });
        tensors.len() - 1
    };
    let input = t(&mut tensors, 2, 6, 6);
    let conv = |r: &mut Rng, cin, cout, k, s, p, groups, act| {
        Op::Conv(ir::Conv {
            cout,
            cin,
            kh: k,
            kw: k,
            stride: (s, s),
            pads: [p; 4],
            dilation: (1, 1),
            groups,
            weight: (0..cout * cin / groups * k * k)
                .map(|_| r.uniform(-0.6, 0.6))
                .collect(),
            bias: (0..cout).map(|_| r.uniform(-0.2, 0.2)).collect(),
            act,
        })
    };
    let push = |nodes: &mut Vec<Node>, op, inputs: Vec<usize>, output| {
        nodes.push(Node {
            name: format!("node{}", nodes.len()),
            op,
            inputs,
            output,
        })
    };
    let a = t(&mut tensors, 4, 3, 3);
    push(
        &mut nodes,
        conv(&mut r, 2, 4, 3, 2, 1, 1, Act::Clip(0.0, 6.0)),
        vec![input],
        a,
    );
    let b = t(&mut tensors, 4, 3, 3);
    push(
        &mut nodes,
        conv(&mut r, 4, 4, 3, 1, 1, 4, Act::Relu),
        vec![a],
        b,
    );
    let c = t(&mut tensors, 4, 3, 3);
    push(
        &mut nodes,
        conv(&mut r, 4, 4, 1, 1, 0, 1, Act::None),
        vec![b],
        c,
    );
    let d = t(&mut tensors, 4, 3, 3);
    push(&mut nodes, Op::Add, vec![c, a], d);
    let p = t(&mut tensors, 4, 1, 1);
    push(&mut nodes, Op::GlobalAvgPool, vec![d], p);
    let s1 = t(&mut tensors, 3, 1, 1);
    push(
        &mut nodes,
        conv(&mut r, 4, 3, 1, 1, 0, 1, Act::Relu),
        vec![p],
        s1,
    );
    let s2 = t(&mut tensors, 4, 1, 1);
    push(
        &mut nodes,
        conv(&mut r, 3, 4, 1, 1, 0, 1, Act::None),
        vec![s1],
        s2,
    );
    let g = t(&mut tensors, 4, 1, 1);
    push(
        &mut nodes,
        Op::Unary(Unary::HardSigmoid {
            alpha: 1.0 / 6.0,
            beta: 0.5,
        }),
        vec![s2],
        g,
    );
    // An inverted-residual chain: expand, depthwise, project; each output
    // has one reader, so batch-norms are applied inside the next conv
    // (`Net::fused_inputs`).
    let e = t(&mut tensors, 8, 3, 3);
    push(
        &mut nodes,
        conv(&mut r, 4, 8, 1, 1, 0, 1, Act::Clip(0.0, 6.0)),
        vec![d],
        e,
    );
    let f = t(&mut tensors, 8, 3, 3);
    push(
        &mut nodes,
        conv(&mut r, 8, 8, 3, 1, 1, 8, Act::Clip(0.0, 6.0)),
        vec![e],
        f,
    );
    let h = t(&mut tensors, 4, 3, 3);
    push(
        &mut nodes,
        conv(&mut r, 8, 4, 1, 1, 0, 1, Act::None),
        vec![f],
        h,
    );
    let m = t(&mut tensors, 4, 3, 3);
    push(&mut nodes, Op::Mul, vec![h, g], m);
    let af = t(&mut tensors, 4, 3, 3);
    push(
        &mut nodes,
        Op::ChannelAffine {
            scale: (0..4).map(|_| r.uniform(0.5, 1.5)).collect(),
            bias: (0..4).map(|_| r.uniform(-0.2, 0.2)).collect(),
            act: Act::None,
        },
        vec![m],
        af,
    );
    let hs = t(&mut tensors, 4, 3, 3);
    push(
        &mut nodes,
        Op::Unary(Unary::HardSwish {
            alpha: 1.0 / 6.0,
            beta: 0.5,
        }),
        vec![af],
        hs,
    );
    let cat = t(&mut tensors, 8, 3, 3);
    push(&mut nodes, Op::Concat, vec![hs, b], cat);
    let gp = t(&mut tensors, 8, 1, 1);
    push(&mut nodes, Op::GlobalAvgPool, vec![cat], gp);
    let rs = t(&mut tensors, 8, 1, 1);
    push(&mut nodes, Op::Reshape, vec![gp], rs);
    let out = t(&mut tensors, classes, 1, 1);
    push(
        &mut nodes,
        conv(&mut r, 8, classes, 1, 1, 0, 1, Act::None),
        vec![rs],
        out,
    );
    Graph {
        tensors,
        nodes,
        input,
        output: out,
        output_softmax: false,
    }
}

fn batch(seed: u64, n: usize) -> (Vec<f32>, Vec<usize>) {
    let mut r = Rng::new(seed);
    (
        rand_vec(&mut r, n * 2 * 6 * 6),
        (0..n).map(|i| i % 3).collect(),
    )
}

fn loss_of(net: &mut Net, x: &[f32], labels: &[usize]) -> f64 {
    let logits = net.forward(x.to_vec(), labels.len(), Mode::Train).to_vec();
    let mut d = vec![0f32; logits.len()];
    k::softmax_xent(&logits, net.classes(), labels, &mut d).0
}

/// Every trainable parameter of every patch kind, through the whole graph.
#[test]
fn network_gradients_match_finite_differences() {
    let g = tiny_graph(3, 3);
    let (x, labels) = batch(5, 4);
    for kind in PatchKind::ALL {
        let mut net = Net::from_graph(&g, kind, BnInit::PreserveFunction, 2).unwrap();
        if net.has_bn() {
            net.init_bn_from_data(&[(x.clone(), 4)]);
        }
        let logits = net.forward(x.clone(), 4, Mode::Train).to_vec();
        let mut d = vec![0f32; logits.len()];
        k::softmax_xent(&logits, 3, &labels, &mut d);
        net.backward(d);
        let n_params = net.params_mut().len();
        assert!(n_params > 0, "{kind:?}");
        for pi in 0..n_params {
            let grad = net.params_mut()[pi].g.clone();
            let mut v = net.params_mut()[pi].v.clone();
            let mut probe = net.clone();
            check_grad(&format!("{kind:?} param {pi}"), &mut v, &grad, &mut |v| {
                probe.params_mut()[pi].v.copy_from_slice(v);
                loss_of(&mut probe, &x, &labels)
            });
        }
    }
}

/// A batch-norm applied inside its only reader gives the same bits as one
/// written out: outputs in every mode, every gradient, for every patch kind
/// (the tiny graph has an expand/depthwise/project chain that fuses).
#[test]
fn fused_batch_norm_inputs_give_the_same_bits() {
    let g = tiny_graph(3, 3);
    // 64 images: 576 rows of 3x3 pixels, more than one block of rows per
    // thread in the pointwise convs.
    const N: usize = 64;
    let (x, labels) = batch(6, N);
    let mut fused_somewhere = false;
    for kind in PatchKind::ALL {
        let run = |fuse: bool| {
            let mut net = Net::from_graph(&g, kind, BnInit::PreserveFunction, 2).unwrap();
            net.fuse = fuse;
            if net.has_bn() {
                net.init_bn_from_data(&[(x.clone(), N)]);
            }
            let fused = net.fused_inputs().iter().filter(|&&f| f).count();
            let eval = net.forward(x.clone(), N, Mode::Eval).to_vec();
            let logits = net.forward(x.clone(), N, Mode::Train).to_vec();
            let mut d = vec![0f32; logits.len()];
            k::softmax_xent(&logits, 3, &labels, &mut d);
            net.backward(d);
            let grads: Vec<Vec<f32>> = net.params_mut().iter().map(|p| p.g.clone()).collect();
            (fused, eval, logits, grads)
        };
        let (n_fused, e1, l1, g1) = run(true);
        let (n_plain, e0, l0, g0) = run(false);
        assert_eq!(n_plain, 0);
        fused_somewhere |= n_fused > 0;
        let bits = |v: &[f32]| v.iter().map(|f| f.to_bits()).collect::<Vec<_>>();
        assert_eq!(bits(&e1), bits(&e0), "{kind:?}: eval outputs");
        assert_eq!(bits(&l1), bits(&l0), "{kind:?}: train outputs");
        assert_eq!(g1.len(), g0.len());
        for (i, (a, b)) in g1.iter().zip(&g0).enumerate() {
            assert_eq!(bits(a), bits(b), "{kind:?}: gradient of parameter {i}");
        }
    }
    assert!(
        fused_somewhere,
        "no patch kind fused a batch-norm: the test tests nothing"
    );
}

#[test]
fn function_preserving_batch_norm_init_keeps_the_base_outputs() {
    let g = tiny_graph(7, 3);
    let (x, _) = batch(8, 6);
    let mut frozen = Net::from_graph(&g, PatchKind::Logits, BnInit::PreserveFunction, 1).unwrap();
    let want = frozen.forward(x.clone(), 6, Mode::Eval).to_vec();
    let mut sb = Net::from_graph(&g, PatchKind::SbLogits, BnInit::PreserveFunction, 1).unwrap();
    sb.init_bn_from_data(&[(x.clone(), 6)]);
    for mode in [Mode::Eval, Mode::Train] {
        let got = sb.forward(x.clone(), 6, mode).to_vec();
        for (a, b) in want.iter().zip(&got) {
            assert!(
                (a - b).abs() < 1e-3 * (1.0 + a.abs()),
                "{mode:?}: {a} vs {b}"
            );
        }
    }
}

fn toy_data(seed: u64, n: usize) -> Dataset {
    // Three classes told apart by which input channel / half is bright.
    let mut r = Rng::new(seed);
    let mut samples = Vec::new();
    let mut labels = Vec::new();
    for i in 0..n {
        let l = i % 3;
        for c in 0..2 {
            for y in 0..6 {
                for _x in 0..6 {
                    let on = (l == 0 && c == 0) || (l == 1 && c == 1) || (l == 2 && y < 3);
                    samples.push(if on { 0.8 } else { -0.2 } + r.uniform(-0.3, 0.3));
                }
            }
        }
        labels.push(l);
    }
    Dataset {
        shape: (2, 6, 6),
        samples,
        labels: Some(labels),
        class_names: None,
    }
}

fn train_toy(kind: PatchKind, seed: u64, threads: usize) -> (Vec<f64>, Vec<u8>) {
    let g = tiny_graph(11, 3);
    let data = toy_data(1, 96);
    let mut net = Net::from_graph(&g, kind, BnInit::PreserveFunction, threads).unwrap();
    if net.has_bn() {
        net.init_bn_from_data(&[(
            train::gather(
                &data,
                &(0..96).collect::<Vec<_>>(),
                Augment::default(),
                None,
            ),
            96,
        )]);
    }
    net.new_head(3, seed);
    let mut runs = vec![TaskRun::new("toy".into(), net, &data, Some(&data))];
    // Conv weights take steps relative to their RMS: a larger rate.
    let lr = if kind.dw() { 1e-1 } else { 2e-2 };
    let cfg = TrainConfig {
        epochs: 8,
        lr,
        batch: 16,
        seed,
        augment: Augment {
            crop: 1,
            flip: true,
        },
        bn_estimate: 64,
        ..TrainConfig::default()
    };
    train::train(&mut runs, &cfg, false).unwrap();
    let losses = runs[0].history.iter().map(|e| e.loss).collect();
    (losses, super::onnx_out::to_onnx(&runs[0].net, "test"))
}

#[test]
fn loss_falls_for_every_patch_kind() {
    for kind in PatchKind::ALL {
        let (losses, _) = train_toy(kind, 1, 1);
        let (first, last) = (losses[0], *losses.last().unwrap());
        // The classifier alone over a random tiny network learns slowest.
        let want = if kind == PatchKind::Logits { 0.85 } else { 0.7 };
        assert!(
            last < want * first,
            "{kind:?}: loss {first} -> {last} ({losses:?})"
        );
    }
}

#[test]
fn training_is_deterministic_for_a_seed_and_thread_count() {
    let a = train_toy(PatchKind::SbDwLogits, 3, 2);
    let b = train_toy(PatchKind::SbDwLogits, 3, 2);
    assert_eq!(a.1, b.1, "same seed, same threads: same bytes");
    let c = train_toy(PatchKind::SbDwLogits, 4, 2);
    assert_ne!(a.1, c.1, "another seed changes the model");
}

#[test]
fn learned_onnx_imports_to_the_trained_function() {
    let g = tiny_graph(2, 3);
    let data = toy_data(2, 48);
    for kind in [PatchKind::SbLogits, PatchKind::Full, PatchKind::DwLogits] {
        let mut net = Net::from_graph(&g, kind, BnInit::PreserveFunction, 1).unwrap();
        let idx: Vec<usize> = (0..48).collect();
        if net.has_bn() {
            net.init_bn_from_data(&[(train::gather(&data, &idx, Augment::default(), None), 48)]);
        }
        let mut runs = vec![TaskRun::new("t".into(), net, &data, None)];
        let cfg = TrainConfig {
            epochs: 2,
            batch: 16,
            lr: 1e-2,
            bn_estimate: 48,
            ..TrainConfig::default()
        };
        train::train(&mut runs, &cfg, false).unwrap();
        let net = &mut runs[0].net;
        let bytes = super::onnx_out::to_onnx(net, "test");
        let imported = crate::import::import_onnx(&bytes, &Default::default()).unwrap();
        let convs = |g: &Graph| {
            g.nodes
                .iter()
                .filter(|n| matches!(n.op, Op::Conv(_)))
                .count()
        };
        assert_eq!(convs(&imported), convs(&g), "{kind:?}: same convs");
        for i in 0..4 {
            let x = data.sample(i);
            let want = crate::float_eval::run_output(&imported, x);
            let nhwc = train::gather(&data, &[i], Augment::default(), None);
            let got = net.forward(nhwc, 1, Mode::Eval).to_vec();
            for (a, b) in want.iter().zip(&got) {
                assert!(
                    (a - b).abs() < 1e-3 * (1.0 + a.abs()),
                    "{kind:?}: {a} vs {b}"
                );
            }
        }
    }
}

#[test]
fn multi_task_shares_the_network_and_keeps_patches_apart() {
    let g = tiny_graph(13, 3);
    let a = toy_data(5, 64);
    let mut b = toy_data(6, 64);
    // Task b: the same images, labels rotated.
    if let Some(l) = &mut b.labels {
        for v in l.iter_mut() {
            *v = (*v + 1) % 3;
        }
    }
    let cfg = TrainConfig {
        epochs: 3,
        lr: 2e-2,
        batch: 16,
        bn_estimate: 32,
        ..TrainConfig::default()
    };
    let conv_weights = |n: &Net| -> Vec<Vec<f32>> {
        n.nodes
            .iter()
            .enumerate()
            .filter(|(i, _)| *i != n.head)
            .filter_map(|(_, node)| match &node.layer {
                super::net::Layer::Conv { w, .. } => Some(w.v.clone()),
                _ => None,
            })
            .collect()
    };
    for shared in [false, true] {
        let mut runs = vec![];
        for (name, d) in [("a", &a), ("b", &b)] {
            let mut net =
                Net::from_graph(&g, PatchKind::SbLogits, BnInit::PreserveFunction, 1).unwrap();
            let idx: Vec<usize> = (0..64).collect();
            net.init_bn_from_data(&[(train::gather(d, &idx, Augment::default(), None), 64)]);
            if shared {
                net.train_shared(0.1);
            }
            runs.push(TaskRun::new(name.into(), net, d, None));
        }
        let before = conv_weights(&runs[0].net);
        train::train(&mut runs, &cfg, shared).unwrap();
        let (wa, wb) = (conv_weights(&runs[0].net), conv_weights(&runs[1].net));
        assert_eq!(wa, wb, "shared={shared}: one network under both tasks");
        assert_eq!(
            wa != before,
            shared,
            "shared={shared}: trained only when asked"
        );
        let bn = |n: &Net| {
            n.nodes
                .iter()
                .find_map(|node| match &node.layer {
                    super::net::Layer::Conv { bn: Some(bn), .. } => Some(bn.gamma.v.clone()),
                    _ => None,
                })
                .unwrap()
        };
        assert_ne!(
            bn(&runs[0].net),
            bn(&runs[1].net),
            "each task has its own S/B"
        );
    }
}
