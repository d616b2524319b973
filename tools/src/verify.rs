//! The runtime's verdict on an export, before anything is written.
//!
//! The exporter writes blobs through the runtime's own `emit` code, but some
//! rules the runtime enforces cannot be seen in the quantized model alone:
//! a scale ratio whose requantization multiplier overflows, a bias or scale
//! code the runtime refuses, a bound on the arena. So the export runs the
//! real runtime on the bytes it is about to write — `Backbone::parse`,
//! `Engine::new` (which derives the base task) and, per task,
//! `Patch::parse` and `Engine::apply` — and fails, naming the task, op and
//! tensors, instead of writing a blob that `inspect`, `run` or a device
//! would refuse. It costs one parse and one task switch per blob.

use anyhow::{anyhow, bail, Result};
use graftnet::format::NONE;
use graftnet::{Backbone, ChannelRequant, Engine, Error, FormatError, Patch, RunError};

use crate::pipeline::BASE_TASK;
use crate::quantize::QModel;

/// Every activation scale is one the format holds (finite, positive). The
/// runtime refuses others too, but without saying which tensor; this names
/// it and the calibration range behind it.
pub fn check_scales(task: &str, q: &QModel) -> Result<()> {
    for t in &q.tensors {
        if !(t.scale.is_finite() && t.scale > 0.0) {
            bail!(
                "task '{task}': tensor '{}' gets the activation scale {:e} from its calibration \
                 range, which the format cannot hold (it must be finite and positive); is the \
                 calibration data within the model's working range?",
                t.name,
                t.scale
            );
        }
    }
    Ok(())
}

/// Runs the backbone and every `(task, model, patch)` through the runtime;
/// `Err` says what it refuses and where. Returns what each patch shares
/// with the base task.
pub fn check_export(
    base: &QModel,
    backbone: &[u8],
    patches: &[(&str, &QModel, &[u8])],
) -> Result<SharedWithBase> {
    check_scales(BASE_TASK, base)?;
    for (name, q, _) in patches {
        check_scales(name, q)?;
    }
    let bb = Backbone::parse(backbone).map_err(|e| refused(BASE_TASK, base, e.into()))?;
    let parsed: Vec<Patch<'_>> = patches
        .iter()
        .filter_map(|(_, _, blob)| Patch::parse(blob).ok())
        .collect();
    let sizes = bb.engine_sizes(&parsed);
    let mut arena = vec![0i8; sizes.arena];
    let mut params = vec![ChannelRequant::default(); sizes.params];
    let mut engine = Engine::new(&bb, &mut arena, &mut params)
        .map_err(|e| refused(BASE_TASK, base, e.into()))?;
    let mut tasks = Vec::with_capacity(patches.len());
    for (name, q, blob) in patches {
        let p = Patch::parse(blob).map_err(|e| refused(name, q, e.into()))?;
        engine.apply(p).map_err(|e| refused(name, q, e.into()))?;
        let sp = engine
            .shared_prefix(&[None, Some(p)])
            .map_err(|e| refused(name, q, e))?;
        tasks.push(sp.ops);
    }
    Ok(SharedWithBase {
        n_ops: bb.n_ops(),
        tasks,
    })
}

/// Ops of a backbone, and per patch the leading ops it shares with the
/// base task ([`Engine::shared_prefix`]), as [`check_export`] found them.
pub struct SharedWithBase {
    pub n_ops: usize,
    pub tasks: Vec<usize>,
}

/// The runtime's error `e` on task `task` (quantized as `q`), with the
/// names of the op and tensors it points at.
fn refused(task: &str, q: &QModel, e: Error) -> anyhow::Error {
    let (op, tensor) = match e {
        Error::Format(
            FormatError::BadOp { op, .. }
            | FormatError::BadEntry { op, .. }
            | FormatError::BadCode { op, .. },
        )
        | Error::Run(RunError::BadQuantization { op }) => (Some(op).filter(|&o| o != NONE), None),
        Error::Format(FormatError::BadTensor { tensor, .. }) => (None, Some(tensor)),
        _ => (None, None),
    };
    let mut msg = format!("task '{task}': the runtime would refuse this export: {e}");
    let tensor_desc = |t: usize| {
        q.tensors.get(t).map_or(format!("tensor {t}"), |x| {
            format!("'{}' (scale {:e}, zero point {})", x.name, x.scale, x.zp)
        })
    };
    if let Some(o) = op.and_then(|o| q.ops.get(o as usize)) {
        msg += &format!(
            "; op {} is node '{}' ({}), reading {} and writing {}",
            op.unwrap_or_default(),
            o.name,
            o.kind.name(),
            tensor_desc(o.in0),
            tensor_desc(o.out)
        );
    }
    if let Some(t) = tensor {
        msg += &format!("; tensor {t} is {}", tensor_desc(t as usize));
    }
    let scales = match e {
        Error::Run(RunError::BadQuantization { .. })
        | Error::Format(FormatError::BadCode { .. }) => true,
        Error::Format(FormatError::BadEntry { what, .. }) => what.contains("quantization"),
        _ => false,
    };
    if scales {
        msg += " (extreme calibration data or weights give scales the int8 model cannot represent)";
    }
    anyhow!(msg)
}
