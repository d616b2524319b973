//! The front end: ONNX protobuf tensors to constant [`Tensor`]s, node
//! attributes ([`Attrs`]), and the topological order of the nodes the output
//! needs.

use std::collections::{HashMap, HashSet};

use tract_onnx::pb;

use super::error::{ImportError, Res};
use super::graph::Val;

// ---------------------------------------------------------------------------
// Constant tensors
// ---------------------------------------------------------------------------

#[derive(Clone, Debug, PartialEq)]
pub(super) enum Data {
    F(Vec<f32>),
    I(Vec<i64>),
}

#[derive(Clone, Debug, PartialEq)]
pub(super) struct Tensor {
    pub(super) dims: Vec<usize>,
    pub(super) data: Data,
}

pub(super) fn numel(d: &[usize]) -> usize {
    d.iter().product()
}

pub(super) fn strides(d: &[usize]) -> Vec<usize> {
    let mut s = vec![1; d.len()];
    for i in (0..d.len().saturating_sub(1)).rev() {
        s[i] = s[i + 1] * d[i + 1];
    }
    s
}

impl Tensor {
    pub(super) fn f(dims: Vec<usize>, v: Vec<f32>) -> Tensor {
        Tensor {
            dims,
            data: Data::F(v),
        }
    }
    pub(super) fn i(dims: Vec<usize>, v: Vec<i64>) -> Tensor {
        Tensor {
            dims,
            data: Data::I(v),
        }
    }
    pub(super) fn len(&self) -> usize {
        match &self.data {
            Data::F(v) => v.len(),
            Data::I(v) => v.len(),
        }
    }
    pub(super) fn is_float(&self) -> bool {
        matches!(self.data, Data::F(_))
    }
    pub(super) fn f32s(&self) -> Vec<f32> {
        match &self.data {
            Data::F(v) => v.clone(),
            Data::I(v) => v.iter().map(|&x| x as f32).collect(),
        }
    }
    pub(super) fn i64s(&self) -> Vec<i64> {
        match &self.data {
            Data::F(v) => v.iter().map(|&x| x as i64).collect(),
            Data::I(v) => v.clone(),
        }
    }
    pub(super) fn scalar_f32(&self) -> Option<f32> {
        if self.len() == 1 {
            Some(self.f32s()[0])
        } else {
            None
        }
    }
    /// Same data, new dims (same element count).
    pub(super) fn reshaped(&self, dims: Vec<usize>) -> Tensor {
        Tensor {
            dims,
            data: self.data.clone(),
        }
    }
    /// Gather elements by flat index.
    pub(super) fn gather_flat(&self, dims: Vec<usize>, idx: &[usize]) -> Tensor {
        match &self.data {
            Data::F(v) => Tensor::f(dims, idx.iter().map(|&i| v[i]).collect()),
            Data::I(v) => Tensor::i(dims, idx.iter().map(|&i| v[i]).collect()),
        }
    }
}

pub(super) fn f16_to_f32(h: u16) -> f32 {
    let sign = ((h >> 15) & 1) as u32;
    let exp = ((h >> 10) & 0x1f) as u32;
    let man = (h & 0x3ff) as u32;
    let bits = if exp == 0 {
        if man == 0 {
            sign << 31
        } else {
            // subnormal: value = man * 2^-24
            let v = man as f32 * (1.0 / 16_777_216.0);
            return if sign == 1 { -v } else { v };
        }
    } else if exp == 31 {
        (sign << 31) | 0x7f80_0000 | (man << 13)
    } else {
        (sign << 31) | ((exp + 112) << 23) | (man << 13)
    };
    f32::from_bits(bits)
}

pub(super) fn tensor_from_proto(t: &pb::TensorProto) -> Result<Tensor, String> {
    if t.data_location == Some(1) || !t.external_data.is_empty() {
        return Err(format!(
            "tensor '{}' uses external data, which is not supported",
            t.name
        ));
    }
    let mut dims = Vec::with_capacity(t.dims.len());
    for &d in &t.dims {
        if d < 0 {
            return Err(format!("tensor '{}' has negative dim {d}", t.name));
        }
        dims.push(d as usize);
    }
    let n = numel(&dims);
    let raw = &t.raw_data;
    let chunks = |w: usize| -> Result<std::slice::ChunksExact<'_, u8>, String> {
        if raw.len() != n * w {
            return Err(format!(
                "tensor '{}': raw_data has {} bytes, expected {}",
                t.name,
                raw.len(),
                n * w
            ));
        }
        Ok(raw.chunks_exact(w))
    };
    let ints32 =
        |f: &dyn Fn(i32) -> i64| -> Vec<i64> { t.int32_data.iter().map(|&v| f(v)).collect() };
    let out = match t.data_type {
        1 => Tensor::f(
            dims,
            if !raw.is_empty() {
                chunks(4)?
                    .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
                    .collect()
            } else {
                t.float_data.clone()
            },
        ),
        10 => Tensor::f(
            dims,
            if !raw.is_empty() {
                chunks(2)?
                    .map(|c| f16_to_f32(u16::from_le_bytes([c[0], c[1]])))
                    .collect()
            } else {
                t.int32_data.iter().map(|&v| f16_to_f32(v as u16)).collect()
            },
        ),
        16 => Tensor::f(
            dims,
            if !raw.is_empty() {
                chunks(2)?
                    .map(|c| f32::from_bits((u16::from_le_bytes([c[0], c[1]]) as u32) << 16))
                    .collect()
            } else {
                t.int32_data
                    .iter()
                    .map(|&v| f32::from_bits((v as u32 & 0xffff) << 16))
                    .collect()
            },
        ),
        11 => Tensor::f(
            dims,
            if !raw.is_empty() {
                chunks(8)?
                    .map(|c| {
                        f64::from_le_bytes([c[0], c[1], c[2], c[3], c[4], c[5], c[6], c[7]]) as f32
                    })
                    .collect()
            } else {
                t.double_data.iter().map(|&v| v as f32).collect()
            },
        ),
        7 => Tensor::i(
            dims,
            if !raw.is_empty() {
                chunks(8)?
                    .map(|c| i64::from_le_bytes([c[0], c[1], c[2], c[3], c[4], c[5], c[6], c[7]]))
                    .collect()
            } else {
                t.int64_data.clone()
            },
        ),
        6 => Tensor::i(
            dims,
            if !raw.is_empty() {
                chunks(4)?
                    .map(|c| i32::from_le_bytes([c[0], c[1], c[2], c[3]]) as i64)
                    .collect()
            } else {
                ints32(&|v| v as i64)
            },
        ),
        5 => Tensor::i(
            dims,
            if !raw.is_empty() {
                chunks(2)?
                    .map(|c| i16::from_le_bytes([c[0], c[1]]) as i64)
                    .collect()
            } else {
                ints32(&|v| v as i16 as i64)
            },
        ),
        4 => Tensor::i(
            dims,
            if !raw.is_empty() {
                chunks(2)?
                    .map(|c| u16::from_le_bytes([c[0], c[1]]) as i64)
                    .collect()
            } else {
                ints32(&|v| v as u16 as i64)
            },
        ),
        3 => Tensor::i(
            dims,
            if !raw.is_empty() {
                chunks(1)?.map(|c| c[0] as i8 as i64).collect()
            } else {
                ints32(&|v| v as i8 as i64)
            },
        ),
        2 => Tensor::i(
            dims,
            if !raw.is_empty() {
                chunks(1)?.map(|c| c[0] as i64).collect()
            } else {
                ints32(&|v| v as u8 as i64)
            },
        ),
        9 => Tensor::i(
            dims,
            if !raw.is_empty() {
                chunks(1)?.map(|c| (c[0] != 0) as i64).collect()
            } else {
                ints32(&|v| (v != 0) as i64)
            },
        ),
        12 => Tensor::i(
            dims,
            if !raw.is_empty() {
                chunks(4)?
                    .map(|c| u32::from_le_bytes([c[0], c[1], c[2], c[3]]) as i64)
                    .collect()
            } else {
                t.uint64_data.iter().map(|&v| v as i64).collect()
            },
        ),
        13 => Tensor::i(
            dims,
            if !raw.is_empty() {
                chunks(8)?
                    .map(|c| {
                        u64::from_le_bytes([c[0], c[1], c[2], c[3], c[4], c[5], c[6], c[7]]) as i64
                    })
                    .collect()
            } else {
                t.uint64_data.iter().map(|&v| v as i64).collect()
            },
        ),
        dt => {
            let name = pb::tensor_proto::DataType::try_from(dt)
                .map(|d| d.as_str_name())
                .unwrap_or("unknown");
            return Err(format!(
                "tensor '{}' has unsupported data type {name} ({dt})",
                t.name
            ));
        }
    };
    if out.len() != n {
        return Err(format!(
            "tensor '{}' has {} values for dims {:?}",
            t.name,
            out.len(),
            out.dims
        ));
    }
    Ok(out)
}

// ---------------------------------------------------------------------------
// Attributes
// ---------------------------------------------------------------------------

pub(super) struct Attrs<'a>(pub(super) &'a [pb::AttributeProto]);

impl<'a> Attrs<'a> {
    pub(super) fn get(&self, name: &str) -> Option<&'a pb::AttributeProto> {
        self.0.iter().find(|a| a.name == name)
    }
    pub(super) fn int(&self, name: &str) -> Option<i64> {
        self.get(name).map(|a| a.i)
    }
    pub(super) fn float(&self, name: &str) -> Option<f32> {
        self.get(name).map(|a| a.f)
    }
    pub(super) fn ints(&self, name: &str) -> Option<Vec<i64>> {
        self.get(name).map(|a| a.ints.clone())
    }
    pub(super) fn floats(&self, name: &str) -> Option<Vec<f32>> {
        self.get(name).map(|a| a.floats.clone())
    }
    pub(super) fn string(&self, name: &str) -> Option<String> {
        self.get(name)
            .map(|a| String::from_utf8_lossy(&a.s).into_owned())
    }
    pub(super) fn tensor(&self, name: &str) -> Option<&'a pb::TensorProto> {
        self.get(name).and_then(|a| a.t.as_ref())
    }
}

// ---------------------------------------------------------------------------
// Graph order
// ---------------------------------------------------------------------------

pub(super) fn topo_order(
    g: &pb::GraphProto,
    needed: &[bool],
    vals: &HashMap<String, Val>,
) -> Res<Vec<usize>> {
    let mut avail: HashSet<&str> = vals.keys().map(|s| s.as_str()).collect();
    let mut done = vec![false; g.node.len()];
    let mut order = Vec::new();
    let todo = needed.iter().filter(|&&b| b).count();
    // Repeated sweeps keep the file order when it is already topological.
    loop {
        let mut progress = false;
        for (i, n) in g.node.iter().enumerate() {
            if !needed[i] || done[i] {
                continue;
            }
            if n.input
                .iter()
                .all(|s| s.is_empty() || avail.contains(s.as_str()))
            {
                done[i] = true;
                order.push(i);
                progress = true;
                for o in &n.output {
                    avail.insert(o.as_str());
                }
            }
        }
        if order.len() == todo {
            return Ok(order);
        }
        if !progress {
            let (i, n) = g
                .node
                .iter()
                .enumerate()
                .find(|(i, _)| needed[*i] && !done[*i])
                .unwrap();
            let missing: Vec<&str> = n
                .input
                .iter()
                .filter(|s| !s.is_empty() && !avail.contains(s.as_str()))
                .map(|s| s.as_str())
                .collect();
            let name = if n.name.is_empty() {
                format!("{}#{}", n.op_type, i)
            } else {
                n.name.clone()
            };
            return Err(ImportError::Malformed(format!(
                "node '{name}' reads undefined value(s) {missing:?} (or the graph has a cycle)"
            )));
        }
    }
}
