//! Test support: building ONNX models in code.

use prost::Message;
use tract_onnx::pb;

// The tools' own constructors (`crate::onnx_build`), under the short names
// these tests use.
pub use crate::onnx_build::{
    attr_float as attr_f, attr_int as attr_i, attr_ints, attr_string as attr_s,
    attr_tensor as attr_t,
};

/// A float tensor in `raw_data` ([`crate::onnx_build::f32_tensor`]) with
/// ONNX's `i64` dims.
pub fn tensor_f(name: &str, dims: &[i64], v: &[f32]) -> pb::TensorProto {
    let dims: Vec<usize> = dims.iter().map(|&d| d as usize).collect();
    crate::onnx_build::f32_tensor(name, &dims, v)
}
/// An int64 tensor in `int64_data` (not `raw_data`, unlike
/// [`crate::onnx_build::i64_tensor`]: the importer reads both).
pub fn tensor_i64(name: &str, dims: &[i64], v: &[i64]) -> pb::TensorProto {
    pb::TensorProto {
        name: name.into(),
        dims: dims.to_vec(),
        data_type: 7,
        int64_data: v.to_vec(),
        ..Default::default()
    }
}

/// Deterministic pseudo-random values in [-1, 1).
pub fn rand_vec(n: usize, seed: u64) -> Vec<f32> {
    let mut s = seed
        .wrapping_mul(6364136223846793005)
        .wrapping_add(1442695040888963407);
    (0..n)
        .map(|_| {
            s = s
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            ((s >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
        })
        .collect()
}

pub struct ModelBuilder {
    pub graph: pb::GraphProto,
    counter: usize,
}

fn value_info(name: &str, dims: &[i64]) -> pb::ValueInfoProto {
    use pb::tensor_shape_proto::{dimension::Value, Dimension};
    let dim = dims
        .iter()
        .map(|&d| Dimension {
            value: Some(if d < 0 {
                Value::DimParam("N".into())
            } else {
                Value::DimValue(d)
            }),
            ..Default::default()
        })
        .collect();
    pb::ValueInfoProto {
        name: name.into(),
        r#type: Some(pb::TypeProto {
            value: Some(pb::type_proto::Value::TensorType(pb::type_proto::Tensor {
                elem_type: 1,
                shape: Some(pb::TensorShapeProto { dim }),
            })),
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// Conv + BN + Relu6 (Clip with Constant min/max) + GAP + Flatten + Gemm.
pub fn conv_bn_relu6_head() -> ModelBuilder {
    let mut b = ModelBuilder::new("x", &[1, 3, 8, 8]);
    b.rinit("w", &[8, 3, 3, 3], 0.4);
    b.rinit("cb", &[8], 0.2);
    b.rinit("g", &[8], 1.0);
    b.rinit("be", &[8], 0.5);
    b.rinit("m", &[8], 0.3);
    b.init("v", &[8], &[0.5, 1.0, 1.5, 2.0, 0.25, 0.75, 1.25, 3.0]);
    b.node(
        "Conv",
        &["x", "w", "cb"],
        &["c"],
        vec![
            attr_ints("strides", &[2, 2]),
            attr_ints("pads", &[1, 1, 1, 1]),
        ],
    );
    b.node(
        "BatchNormalization",
        &["c", "g", "be", "m", "v"],
        &["bn"],
        vec![attr_f("epsilon", 1e-5)],
    );
    b.constant("lo", tensor_f("", &[], &[0.0]));
    b.constant("hi", tensor_f("", &[], &[6.0]));
    b.node("Clip", &["bn", "lo", "hi"], &["r6"], vec![]);
    b.node("GlobalAveragePool", &["r6"], &["p"], vec![]);
    b.node("Flatten", &["p"], &["f"], vec![attr_i("axis", 1)]);
    b.rinit("fw", &[5, 8], 0.5);
    b.rinit("fb", &[5], 0.5);
    b.node(
        "Gemm",
        &["f", "fw", "fb"],
        &["y"],
        vec![
            attr_i("transB", 1),
            attr_f("alpha", 1.0),
            attr_f("beta", 1.0),
        ],
    );
    b
}

/// Paddle-style HardSwish `x * Clip(x + 3, 0, 6) / 6` between convs (opset 11).
pub fn paddle_hardswish() -> ModelBuilder {
    let mut b = ModelBuilder::new("x", &[1, 3, 8, 8]);
    b.rinit("w1", &[4, 3, 3, 3], 1.0);
    b.node(
        "Conv",
        &["x", "w1"],
        &["c1"],
        vec![attr_ints("pads", &[1, 1, 1, 1])],
    );
    b.constant("three", tensor_f("", &[], &[3.0]));
    b.constant("zero", tensor_f("", &[], &[0.0]));
    b.constant("six", tensor_f("", &[], &[6.0]));
    b.constant("six2", tensor_f("", &[], &[6.0]));
    b.node("Add", &["c1", "three"], &["a"], vec![]);
    b.node("Clip", &["a", "zero", "six"], &["cl"], vec![]);
    b.node("Mul", &["c1", "cl"], &["m"], vec![]);
    b.node("Div", &["m", "six2"], &["h"], vec![]);
    b.rinit("w2", &[2, 4, 1, 1], 1.0);
    b.node("Conv", &["h", "w2"], &["y"], vec![]);
    b
}

/// Conv + Relu, then `Shape -> Slice -> Concat -> Reshape` flatten, MatMul + Add, Softmax.
pub fn shape_flatten_matmul() -> ModelBuilder {
    let mut b = ModelBuilder::new("x", &[1, 3, 4, 4]);
    b.rinit("w", &[4, 3, 3, 3], 0.5);
    b.node(
        "Conv",
        &["x", "w"],
        &["c"],
        vec![
            attr_ints("strides", &[2, 2]),
            attr_ints("pads", &[1, 1, 1, 1]),
        ],
    );
    b.node("Relu", &["c"], &["r"], vec![]);
    b.node("Shape", &["r"], &["s"], vec![]);
    b.init_i64("st", &[1], &[0]);
    b.init_i64("en", &[1], &[1]);
    b.init_i64("ax", &[1], &[0]);
    b.node("Slice", &["s", "st", "en", "ax"], &["s0"], vec![]);
    b.constant("m1", tensor_i64("", &[1], &[-1]));
    b.node("Concat", &["s0", "m1"], &["shp"], vec![attr_i("axis", 0)]);
    b.node("Reshape", &["r", "shp"], &["f"], vec![]);
    b.rinit("mw", &[16, 3], 0.5);
    b.rinit("mb", &[3], 0.5);
    b.node("MatMul", &["f", "mw"], &["mm"], vec![]);
    b.node("Add", &["mm", "mb"], &["logits"], vec![]);
    b.node("Softmax", &["logits"], &["y"], vec![attr_i("axis", -1)]);
    b
}

/// A bag of ops: BN, HardSwish, pools, concat, depthwise, LeakyRelu,
/// residual Add, SE gate (gate first), ReduceMean head, Gemm (transB=0).
pub fn misc_ops() -> ModelBuilder {
    let mut b = ModelBuilder::new("x", &[1, 4, 9, 9]);
    b.rinit("w1", &[4, 4, 3, 3], 0.5);
    b.node(
        "Conv",
        &["x", "w1"],
        &["c1"],
        vec![attr_ints("pads", &[1, 1, 1, 1])],
    );
    b.rinit("g", &[4], 1.0);
    b.rinit("be", &[4], 0.5);
    b.rinit("m", &[4], 0.3);
    b.init("v", &[4], &[0.5, 1.0, 1.5, 2.0]);
    b.node(
        "BatchNormalization",
        &["c1", "g", "be", "m", "v"],
        &["bn"],
        vec![],
    );
    b.node("HardSwish", &["bn"], &["h"], vec![]);
    b.node(
        "MaxPool",
        &["h"],
        &["mp"],
        vec![
            attr_ints("kernel_shape", &[3, 3]),
            attr_ints("strides", &[2, 2]),
            attr_ints("pads", &[1, 1, 1, 1]),
        ],
    );
    b.node(
        "AveragePool",
        &["h"],
        &["ap"],
        vec![
            attr_ints("kernel_shape", &[3, 3]),
            attr_ints("strides", &[2, 2]),
            attr_s("auto_pad", "SAME_UPPER"),
        ],
    );
    b.node(
        "AveragePool",
        &["h"],
        &["ap2"],
        vec![
            attr_ints("kernel_shape", &[3, 3]),
            attr_ints("strides", &[2, 2]),
            attr_ints("pads", &[1, 1, 1, 1]),
            attr_i("count_include_pad", 1),
        ],
    );
    b.node(
        "Concat",
        &["mp", "ap", "ap2"],
        &["cat"],
        vec![attr_i("axis", 1)],
    );
    b.rinit("wd", &[12, 1, 3, 3], 0.5);
    b.rinit("bd", &[12], 0.5);
    b.node(
        "Conv",
        &["cat", "wd", "bd"],
        &["dw"],
        vec![attr_i("group", 12), attr_ints("pads", &[1, 1, 1, 1])],
    );
    b.node("LeakyRelu", &["dw"], &["lr"], vec![attr_f("alpha", 0.1)]);
    b.node("Add", &["lr", "cat"], &["res"], vec![]);
    b.node("GlobalAveragePool", &["res"], &["gp"], vec![]);
    b.rinit("ws1", &[3, 12, 1, 1], 0.5);
    b.node("Conv", &["gp", "ws1"], &["s1"], vec![]);
    b.node("Relu", &["s1"], &["s1r"], vec![]);
    b.rinit("ws2", &[12, 3, 1, 1], 0.5);
    b.rinit("bs2", &[1, 12, 1, 1], 0.5);
    b.node("Conv", &["s1r", "ws2"], &["s2"], vec![]);
    b.node("Add", &["s2", "bs2"], &["s2b"], vec![]);
    b.node(
        "HardSigmoid",
        &["s2b"],
        &["gate"],
        vec![attr_f("alpha", 0.2), attr_f("beta", 0.5)],
    );
    b.node("Mul", &["gate", "res"], &["se"], vec![]);
    b.rinit("wp", &[6, 12, 1, 1], 0.5);
    b.node(
        "Conv",
        &["se", "wp"],
        &["pw"],
        vec![attr_ints("strides", &[2, 2])],
    );
    b.init("sc", &[6, 1, 1], &[1.0, -2.0, 0.5, 3.0, 1.5, -0.5]);
    b.node("Mul", &["pw", "sc"], &["pws"], vec![]);
    b.node("Sigmoid", &["pws"], &["sg"], vec![]);
    b.node("Mul", &["pws", "sg"], &["sw"], vec![]);
    b.node(
        "ReduceMean",
        &["sw"],
        &["rm"],
        vec![attr_ints("axes", &[2, 3]), attr_i("keepdims", 0)],
    );
    b.rinit("gw", &[6, 7], 0.5);
    b.node("Gemm", &["rm", "gw"], &["gm"], vec![attr_f("alpha", 0.5)]);
    b.node("Tanh", &["gm"], &["y"], vec![]);
    b
}

impl ModelBuilder {
    /// `dims` < 0 are dynamic.
    pub fn new(input: &str, dims: &[i64]) -> Self {
        let graph = pb::GraphProto {
            name: "g".into(),
            input: vec![value_info(input, dims)],
            ..Default::default()
        };
        ModelBuilder { graph, counter: 0 }
    }
    pub fn init(&mut self, name: &str, dims: &[i64], v: &[f32]) {
        self.graph.initializer.push(tensor_f(name, dims, v));
    }
    pub fn init_i64(&mut self, name: &str, dims: &[i64], v: &[i64]) {
        self.graph.initializer.push(tensor_i64(name, dims, v));
    }
    /// Random initializer.
    pub fn rinit(&mut self, name: &str, dims: &[i64], scale: f32) {
        let n: i64 = dims.iter().product();
        self.counter += 1;
        let v: Vec<f32> = rand_vec(n as usize, 1000 + self.counter as u64)
            .iter()
            .map(|x| x * scale)
            .collect();
        self.init(name, dims, &v);
    }
    pub fn constant(&mut self, out: &str, t: pb::TensorProto) {
        self.node("Constant", &[], &[out], vec![attr_t("value", t)]);
    }
    pub fn node(&mut self, op: &str, ins: &[&str], outs: &[&str], attrs: Vec<pb::AttributeProto>) {
        self.counter += 1;
        self.graph.node.push(pb::NodeProto {
            name: format!("{op}_{}", self.counter),
            op_type: op.into(),
            input: ins.iter().map(|s| s.to_string()).collect(),
            output: outs.iter().map(|s| s.to_string()).collect(),
            attribute: attrs,
            ..Default::default()
        });
    }
    pub fn bytes(&self, output: &str, opset: i64) -> Vec<u8> {
        let mut g = self.graph.clone();
        g.output = vec![pb::ValueInfoProto {
            name: output.into(),
            ..Default::default()
        }];
        let m = pb::ModelProto {
            ir_version: 8,
            opset_import: vec![pb::OperatorSetIdProto {
                domain: String::new(),
                version: opset,
            }],
            producer_name: "graftnet-test".into(),
            graph: Some(g),
            ..Default::default()
        };
        m.encode_to_vec()
    }
    pub fn write_temp(&self, tag: &str, output: &str, opset: i64) -> std::path::PathBuf {
        let dir = std::env::temp_dir().join(format!("graftnet-tools-tests-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let p = dir.join(format!("{tag}.onnx"));
        std::fs::write(&p, self.bytes(output, opset)).unwrap();
        p
    }
}
