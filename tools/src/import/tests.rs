use tract_onnx::pb;

use crate::ir::{Act, Op, Shape, Unary};

use super::decode::f16_to_f32;
use super::error::ImportError;
use super::testutil::*;
use super::{import_onnx, ImportOptions};

#[test]
fn f16_conversion() {
    assert_eq!(f16_to_f32(0x3c00), 1.0);
    assert_eq!(f16_to_f32(0xc000), -2.0);
    assert_eq!(f16_to_f32(0x3555), 0.333_251_95);
    assert_eq!(f16_to_f32(0x0001), 5.960_464_5e-8);
    assert!(f16_to_f32(0x7c00).is_infinite());
}

#[test]
fn unsupported_op_names_node_and_op() {
    let mut b = ModelBuilder::new("x", &[1, 3, 8, 8]);
    b.node("Relu", &["x"], &["r"], vec![]);
    b.graph.node.push(pb::NodeProto {
        name: "LSTM_3".into(),
        op_type: "LSTM".into(),
        input: vec!["r".into()],
        output: vec!["y".into()],
        ..Default::default()
    });
    let err = import_onnx(&b.bytes("y", 13), &ImportOptions::default()).unwrap_err();
    assert!(
        matches!(&err, ImportError::UnsupportedOp { node, op_type, .. } if node == "LSTM_3" && op_type == "LSTM")
    );
    let msg = err.to_string();
    assert!(
        msg.contains("node 'LSTM_3' (op LSTM) is not supported"),
        "{msg}"
    );

    // Einsum on an activation, with an empty node name.
    let mut b = ModelBuilder::new("x", &[1, 3, 8, 8]);
    b.graph.node.push(pb::NodeProto {
        op_type: "Einsum".into(),
        input: vec!["x".into()],
        output: vec!["y".into()],
        attribute: vec![attr_s("equation", "nchw->nhwc")],
        ..Default::default()
    });
    let err = import_onnx(&b.bytes("y", 13), &ImportOptions::default()).unwrap_err();
    assert!(
        err.to_string().contains("node 'Einsum#0' (op Einsum)"),
        "{err}"
    );
}

#[test]
fn dynamic_shape_needs_input_shape() {
    let mut b = ModelBuilder::new("x", &[-1, 3, -1, -1]);
    b.node("Relu", &["x"], &["y"], vec![]);
    let err = import_onnx(&b.bytes("y", 13), &ImportOptions::default()).unwrap_err();
    assert_eq!(err, ImportError::DynamicShape { input: "x".into() });
    assert!(err.to_string().contains("--input-shape"));
    let g = import_onnx(
        &b.bytes("y", 13),
        &ImportOptions {
            input_shape: Some((3, 5, 7)),
        },
    )
    .unwrap();
    assert_eq!(g.shape(g.input), Shape::new(3, 5, 7));
    assert_eq!(g.nodes.len(), 1);
    assert_eq!(g.nodes[0].op, Op::Unary(Unary::Relu));
}

#[test]
fn dilation_and_trans_a_are_rejected() {
    let mut b = ModelBuilder::new("x", &[1, 2, 8, 8]);
    b.rinit("w", &[2, 2, 3, 3], 0.5);
    b.node(
        "Conv",
        &["x", "w"],
        &["y"],
        vec![attr_ints("dilations", &[2, 2])],
    );
    let err = import_onnx(&b.bytes("y", 13), &ImportOptions::default()).unwrap_err();
    assert!(matches!(err, ImportError::Unsupported { .. }), "{err}");
    assert!(err.to_string().contains("dilations"));

    let mut b = ModelBuilder::new("x", &[1, 4]);
    b.rinit("w", &[4, 3], 0.5);
    b.node("Gemm", &["x", "w"], &["y"], vec![attr_i("transA", 1)]);
    let err = import_onnx(&b.bytes("y", 13), &ImportOptions::default()).unwrap_err();
    assert!(matches!(err, ImportError::Unsupported { .. }), "{err}");

    let mut b = ModelBuilder::new("x", &[1, 2, 4, 4]);
    b.node("Concat", &["x", "x"], &["y"], vec![attr_i("axis", 2)]);
    let err = import_onnx(&b.bytes("y", 13), &ImportOptions::default()).unwrap_err();
    assert!(matches!(err, ImportError::Unsupported { .. }), "{err}");
}

#[test]
fn decode_error() {
    let err = import_onnx(&[0xff, 0xff, 0xff], &ImportOptions::default()).unwrap_err();
    assert!(matches!(err, ImportError::Decode(_)));
}

#[test]
fn conv_bn_clip_gap_flatten_gemm_structure() {
    let b = super::testutil::conv_bn_relu6_head();
    let g = import_onnx(&b.bytes("y", 13), &ImportOptions::default()).unwrap();
    // Conv(+BN+Clip) , GAP, FC conv.
    assert_eq!(
        g.nodes.len(),
        3,
        "{:#?}",
        g.nodes
            .iter()
            .map(|n| (&n.name, n.op.name()))
            .collect::<Vec<_>>()
    );
    match &g.nodes[0].op {
        Op::Conv(c) => assert_eq!(c.act, Act::Clip(0.0, 6.0)),
        o => panic!("{o:?}"),
    }
    assert_eq!(g.nodes[1].op, Op::GlobalAvgPool);
    match &g.nodes[2].op {
        Op::Conv(c) => {
            assert_eq!((c.cout, c.cin, c.kh, c.kw), (5, 8, 1, 1));
        }
        o => panic!("{o:?}"),
    }
    assert_eq!(g.shape(g.output), Shape::new(5, 1, 1));
    assert!(!g.output_softmax);
}

#[test]
fn bn_fold_formula_is_exact() {
    let mut b = ModelBuilder::new("x", &[1, 2, 3, 3]);
    b.init("w", &[2, 2, 1, 1], &[0.5, -1.0, 2.0, 0.25]);
    b.init("cb", &[2], &[0.1, -0.2]);
    b.init("g", &[2], &[1.5, 0.7]);
    b.init("be", &[2], &[0.3, -0.4]);
    b.init("m", &[2], &[0.05, 0.6]);
    b.init("v", &[2], &[0.9, 2.5]);
    b.node("Conv", &["x", "w", "cb"], &["c"], vec![]);
    b.node(
        "BatchNormalization",
        &["c", "g", "be", "m", "v"],
        &["y"],
        vec![attr_f("epsilon", 1e-3)],
    );
    let g = import_onnx(&b.bytes("y", 13), &ImportOptions::default()).unwrap();
    assert_eq!(g.nodes.len(), 1);
    let Op::Conv(c) = &g.nodes[0].op else {
        panic!()
    };
    let s0 = 1.5f32 / (0.9f32 + 1e-3).sqrt();
    let s1 = 0.7f32 / (2.5f32 + 1e-3).sqrt();
    assert_eq!(c.weight, vec![0.5 * s0, -s0, 2.0 * s1, 0.25 * s1]);
    assert_eq!(
        c.bias,
        vec![(0.1 - 0.05) * s0 + 0.3, (-0.2 - 0.6) * s1 - 0.4]
    );
    assert_eq!(g.tensors[g.output].name, "y");
}

#[test]
fn standalone_bn_and_mul_gate() {
    // BN after an Add (no conv) -> ChannelAffine with Relu fused; SE-style gate.
    let mut b = ModelBuilder::new("x", &[1, 3, 4, 4]);
    b.rinit("g", &[3], 1.0);
    b.rinit("be", &[3], 1.0);
    b.rinit("m", &[3], 1.0);
    b.init("v", &[3], &[1.0, 2.0, 0.5]);
    b.node("Add", &["x", "x"], &["a"], vec![]);
    b.node(
        "BatchNormalization",
        &["a", "g", "be", "m", "v"],
        &["bn"],
        vec![],
    );
    b.node("Relu", &["bn"], &["r"], vec![]);
    b.node("GlobalAveragePool", &["r"], &["p"], vec![]);
    b.node("Sigmoid", &["p"], &["s"], vec![]);
    b.node("Mul", &["s", "r"], &["y"], vec![]);
    let g = import_onnx(&b.bytes("y", 13), &ImportOptions::default()).unwrap();
    let names: Vec<&str> = g.nodes.iter().map(|n| n.op.name()).collect();
    // x + x is an elementwise expression of one tensor: Unary(Expr).
    assert_eq!(
        names,
        ["Unary", "ChannelAffine", "GlobalAvgPool", "Unary", "Mul"]
    );
    assert!(matches!(
        g.nodes[1].op,
        Op::ChannelAffine { act: Act::Relu, .. }
    ));
    assert_eq!(g.nodes[3].op, Op::Unary(Unary::Sigmoid));
    // Gate swapped to second position.
    let mul = &g.nodes[4];
    assert_eq!(g.shape(mul.inputs[0]), Shape::new(3, 4, 4));
    assert_eq!(g.shape(mul.inputs[1]), Shape::new(3, 1, 1));
}

#[test]
fn hardswish_patterns() {
    // Mul(x, HardSigmoid(x)) -> HardSwish; Mul(Sigmoid(x), x) -> Swish.
    let mut b = ModelBuilder::new("x", &[1, 2, 4, 4]);
    b.node(
        "HardSigmoid",
        &["x"],
        &["h"],
        vec![attr_f("alpha", 1.0 / 6.0)],
    );
    b.node("Mul", &["x", "h"], &["y"], vec![]);
    let g = import_onnx(&b.bytes("y", 13), &ImportOptions::default()).unwrap();
    assert_eq!(g.nodes.len(), 1);
    assert_eq!(
        g.nodes[0].op,
        Op::Unary(Unary::HardSwish {
            alpha: 1.0 / 6.0,
            beta: 0.5
        })
    );

    let mut b = ModelBuilder::new("x", &[1, 2, 4, 4]);
    b.node("Sigmoid", &["x"], &["s"], vec![]);
    b.node("Mul", &["s", "x"], &["y"], vec![]);
    let g = import_onnx(&b.bytes("y", 13), &ImportOptions::default()).unwrap();
    assert_eq!(g.nodes.len(), 1);
    assert_eq!(g.nodes[0].op, Op::Unary(Unary::Swish));

    // Both in a row over one tensor: a single expression.
    let mut b = ModelBuilder::new("x", &[1, 2, 4, 4]);
    b.node(
        "HardSigmoid",
        &["x"],
        &["h"],
        vec![attr_f("alpha", 1.0 / 6.0)],
    );
    b.node("Mul", &["x", "h"], &["a"], vec![]);
    b.node("Sigmoid", &["a"], &["s"], vec![]);
    b.node("Mul", &["s", "a"], &["y"], vec![]);
    let g = import_onnx(&b.bytes("y", 13), &ImportOptions::default()).unwrap();
    assert_eq!(g.nodes.len(), 1);
    let Op::Unary(Unary::Expr(e)) = &g.nodes[0].op else {
        panic!("{:?}", g.nodes[0].op)
    };
    for x in [-4.0f32, -1.0, 0.0, 0.7, 2.5, 5.0] {
        let a = x * (x / 6.0 + 0.5).clamp(0.0, 1.0);
        let want = a / (1.0 + (-a).exp());
        assert!((e.eval(x) - want).abs() < 1e-6);
    }

    // A value used outside the group is materialized.
    let mut b = ModelBuilder::new("x", &[1, 2, 4, 4]);
    b.node(
        "HardSigmoid",
        &["x"],
        &["h"],
        vec![attr_f("alpha", 1.0 / 6.0)],
    );
    b.node("Mul", &["x", "h"], &["a"], vec![]);
    b.node("GlobalAveragePool", &["a"], &["p"], vec![]);
    b.node("Sigmoid", &["p"], &["s"], vec![]);
    b.node("Mul", &["a", "s"], &["y"], vec![]);
    let g = import_onnx(&b.bytes("y", 13), &ImportOptions::default()).unwrap();
    let names: Vec<&str> = g.nodes.iter().map(|n| n.op.name()).collect();
    assert_eq!(names, ["Unary", "GlobalAvgPool", "Unary", "Mul"]);
}

#[test]
fn paddle_hardswish_is_one_expr() {
    let b = super::testutil::paddle_hardswish();
    let g = import_onnx(&b.bytes("y", 11), &ImportOptions::default()).unwrap();
    let names: Vec<&str> = g.nodes.iter().map(|n| n.op.name()).collect();
    assert_eq!(names, ["Conv", "Unary", "Conv"], "{:#?}", g.nodes);
    let Op::Unary(Unary::Expr(e)) = &g.nodes[1].op else {
        panic!("{:?}", g.nodes[1].op)
    };
    for x in [-5.0f32, -3.0, -1.0, 0.0, 0.5, 2.0, 3.0, 7.0] {
        let want = x * (x + 3.0).clamp(0.0, 6.0) / 6.0;
        assert!((e.eval(x) - want).abs() < 1e-6);
    }
}

#[test]
fn shape_slice_concat_reshape_flatten_folds() {
    let b = super::testutil::shape_flatten_matmul();
    let g = import_onnx(&b.bytes("y", 13), &ImportOptions::default()).unwrap();
    let names: Vec<&str> = g.nodes.iter().map(|n| n.op.name()).collect();
    assert_eq!(names, ["Conv", "Conv"], "{:#?}", g.nodes);
    let Op::Conv(fc) = &g.nodes[1].op else {
        panic!()
    };
    assert_eq!((fc.cout, fc.cin, fc.kh, fc.kw), (3, 4, 2, 2));
    assert!(g.output_softmax);
}

#[test]
fn nhwc_input_with_transpose() {
    let mut b = ModelBuilder::new("x", &[1, 6, 5, 3]);
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
        &["y"],
        vec![
            attr_s("auto_pad", "SAME_UPPER"),
            attr_ints("strides", &[2, 2]),
        ],
    );
    let g = import_onnx(&b.bytes("y", 13), &ImportOptions::default()).unwrap();
    assert_eq!(g.shape(g.input), Shape::new(3, 6, 5));
    assert_eq!(g.nodes.len(), 1);
    let Op::Conv(c) = &g.nodes[0].op else {
        panic!()
    };
    // in 6x5, k3, s2: out 3x3; total pad h = 2*2+3-6 = 1 -> (0,1); w = 2*2+3-5 = 2 -> (1,1)
    assert_eq!(c.pads, [0, 1, 1, 1]);
    assert_eq!(g.shape(g.output), Shape::new(4, 3, 3));
}

#[test]
fn pad_fuses_into_conv_and_constant_node_forms() {
    let mut b = ModelBuilder::new("x", &[1, 2, 6, 6]);
    b.node(
        "Constant",
        &[],
        &["pads"],
        vec![pb::AttributeProto {
            name: "value_ints".into(),
            r#type: 7,
            ints: vec![0, 0, 1, 0, 0, 0, 0, 1],
            ..Default::default()
        }],
    );
    b.node("Pad", &["x", "pads"], &["p"], vec![]);
    b.rinit("w", &[2, 1, 3, 3], 0.5);
    b.node(
        "Conv",
        &["p", "w"],
        &["c"],
        vec![attr_i("group", 2), attr_ints("strides", &[2, 2])],
    );
    b.node("Constant", &[], &["lo"], vec![attr_f("value_float", 0.0)]);
    b.node("Clip", &["c", "lo", ""], &["y"], vec![]);
    let g = import_onnx(&b.bytes("y", 13), &ImportOptions::default()).unwrap();
    assert_eq!(g.nodes.len(), 1);
    let Op::Conv(c) = &g.nodes[0].op else {
        panic!()
    };
    assert_eq!(c.pads, [1, 0, 0, 1]);
    assert!(c.is_depthwise());
    assert_eq!(c.act, Act::Relu);
    assert_eq!(g.shape(g.output), Shape::new(2, 3, 3));
}

#[test]
fn clip_attrs_for_old_opsets() {
    let mut b = ModelBuilder::new("x", &[1, 2, 3, 3]);
    b.rinit("w", &[2, 2, 1, 1], 0.5);
    b.node("Conv", &["x", "w"], &["c"], vec![]);
    b.node(
        "Clip",
        &["c"],
        &["y"],
        vec![attr_f("min", 0.0), attr_f("max", 6.0)],
    );
    let g = import_onnx(&b.bytes("y", 9), &ImportOptions::default()).unwrap();
    let Op::Conv(c) = &g.nodes[0].op else {
        panic!()
    };
    assert_eq!(c.act, Act::Clip(0.0, 6.0));
}
