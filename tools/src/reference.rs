//! Float reference through tract: the "peer" implementation every graftnet
//! result is checked against.
//!
//! The model is loaded with tract's own ONNX front end (independent of
//! [`crate::import`]), the input fact is pinned to `f32 [1, c, h, w]`,
//! and the model is optimized and made runnable. `run` always takes NCHW data:
//! for TF exports whose input is NHWC followed by `Transpose(perm=[0,3,1,2])`
//! the input is transposed to NHWC before it is handed to tract.

use std::path::Path;
use std::sync::Arc;

use anyhow::{anyhow, bail, Context};
use prost::Message;
use tract_onnx::pb;
use tract_onnx::prelude::*;

/// An optimized, runnable tract model with one f32 input of batch 1.
pub struct TractModel {
    plan: Arc<TypedRunnableModel>,
    /// (c, h, w) of the NCHW input `run` expects.
    shape: (usize, usize, usize),
    /// The ONNX input is NHWC (tf2onnx); `run` transposes.
    nhwc: bool,
}

impl std::fmt::Debug for TractModel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TractModel")
            .field("shape", &self.shape)
            .field("nhwc", &self.nhwc)
            .finish()
    }
}

/// Input layout as declared by the ONNX file: name, dims (None = dynamic),
/// and whether it is NHWC consumed only through `Transpose(perm=[0,3,1,2])`.
fn declared_input(bytes: &[u8]) -> anyhow::Result<(String, Vec<Option<usize>>, bool)> {
    let model = pb::ModelProto::decode(bytes).context("decoding ONNX protobuf")?;
    let graph = model
        .graph
        .as_ref()
        .ok_or_else(|| anyhow!("ONNX model has no graph"))?;
    let inits: std::collections::HashSet<&str> =
        graph.initializer.iter().map(|t| t.name.as_str()).collect();
    let input = graph
        .input
        .iter()
        .find(|i| !inits.contains(i.name.as_str()))
        .ok_or_else(|| anyhow!("ONNX model has no (non-initializer) input"))?;
    let mut dims = Vec::new();
    if let Some(pb::type_proto::Value::TensorType(t)) =
        input.r#type.as_ref().and_then(|t| t.value.as_ref())
    {
        if let Some(s) = &t.shape {
            for d in &s.dim {
                dims.push(match d.value {
                    Some(pb::tensor_shape_proto::dimension::Value::DimValue(v)) if v > 0 => {
                        Some(v as usize)
                    }
                    _ => None,
                });
            }
        }
    }
    let consumers: Vec<&pb::NodeProto> = graph
        .node
        .iter()
        .filter(|n| n.input.contains(&input.name))
        .collect();
    let nhwc = dims.len() == 4
        && !consumers.is_empty()
        && consumers.iter().all(|n| {
            n.op_type == "Transpose"
                && n.attribute
                    .iter()
                    .any(|a| a.name == "perm" && a.ints == [0, 3, 1, 2])
        });
    Ok((input.name.clone(), dims, nhwc))
}

impl TractModel {
    /// Load an ONNX file. `input_shape` is `(c, h, w)`; when `None` the
    /// declared input shape is used (batch forced to 1) and must be static.
    pub fn load(path: &Path, input_shape: Option<(usize, usize, usize)>) -> anyhow::Result<Self> {
        let bytes = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
        let (name, dims, nhwc) = declared_input(&bytes)?;
        let shape = match input_shape {
            Some(s) => s,
            None => {
                if dims.len() != 4 {
                    bail!(
                        "input '{name}' has rank {} (expected 4); pass an input shape",
                        dims.len()
                    );
                }
                let (c, h, w) = if nhwc {
                    (dims[3], dims[1], dims[2])
                } else {
                    (dims[1], dims[2], dims[3])
                };
                match (c, h, w) {
                    (Some(c), Some(h), Some(w)) => (c, h, w),
                    _ => bail!("input '{name}' has a dynamic shape; pass an input shape (c, h, w)"),
                }
            }
        };
        let (c, h, w) = shape;
        let fact_shape: [usize; 4] = if nhwc { [1, h, w, c] } else { [1, c, h, w] };
        let model = tract_onnx::onnx()
            .with_ignore_value_info(true)
            .model_for_read(&mut &bytes[..])
            .with_context(|| format!("tract: parsing {}", path.display()))?
            .with_input_fact(0, f32::fact(fact_shape).into())
            .context("tract: setting the input fact")?
            .into_optimized()
            .with_context(|| format!("tract: optimizing {}", path.display()))?
            .into_runnable()
            .context("tract: making the model runnable")?;
        Ok(TractModel {
            plan: model,
            shape,
            nhwc,
        })
    }

    /// `(c, h, w)` of the NCHW input.
    pub fn input_shape(&self) -> (usize, usize, usize) {
        self.shape
    }

    /// Run on one NCHW image (`c * h * w` values); returns the first output,
    /// flattened.
    pub fn run(&self, input_nchw: &[f32]) -> anyhow::Result<Vec<f32>> {
        let (c, h, w) = self.shape;
        if input_nchw.len() != c * h * w {
            bail!(
                "input has {} values, the model expects {}x{}x{} = {}",
                input_nchw.len(),
                c,
                h,
                w,
                c * h * w
            );
        }
        let tensor = if self.nhwc {
            let mut t = vec![0f32; c * h * w];
            for ci in 0..c {
                for y in 0..h {
                    for x in 0..w {
                        t[(y * w + x) * c + ci] = input_nchw[(ci * h + y) * w + x];
                    }
                }
            }
            Tensor::from_shape(&[1, h, w, c], &t)?
        } else {
            Tensor::from_shape(&[1, c, h, w], input_nchw)?
        };
        let outputs = self.plan.run(tvec!(tensor.into()))?;
        let out = outputs
            .first()
            .ok_or_else(|| anyhow!("tract: model produced no output"))?;
        let view = out
            .to_plain_array_view::<f32>()
            .context("tract: output is not f32")?;
        Ok(view.iter().copied().collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::import::testutil::*;

    #[test]
    fn reference_runs_tiny_conv() {
        // 1x1 conv with weight 2 and bias 1 on a 1x2x2 input, then Relu.
        let mut b = ModelBuilder::new("x", &[1, 1, 2, 2]);
        b.init("w", &[1, 1, 1, 1], &[2.0]);
        b.init("b", &[1], &[1.0]);
        b.node("Conv", &["x", "w", "b"], &["c"], vec![]);
        b.node("Relu", &["c"], &["y"], vec![]);
        let path = b.write_temp("reference_tiny", "y", 13);
        let m = TractModel::load(&path, None).unwrap();
        let y = m.run(&[1.0, -1.0, 0.5, -2.0]).unwrap();
        assert_eq!(y, vec![3.0, 0.0, 2.0, 0.0]);
    }

    #[test]
    fn reference_rejects_wrong_input_len() {
        let mut b = ModelBuilder::new("x", &[1, 1, 2, 2]);
        b.node("Relu", &["x"], &["y"], vec![]);
        let path = b.write_temp("reference_len", "y", 13);
        let m = TractModel::load(&path, None).unwrap();
        assert!(m.run(&[1.0]).is_err());
    }
}
