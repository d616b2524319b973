//! The messages: [`Request`] (client to device) and [`Response`] (device to
//! client), with the types they carry.
//!
//! Every payload is borrowed (`&'a str`, `&'a [u8]`, `&'a [i8]`) from the
//! frame it was decoded from (`postcard::from_bytes_cobs` decodes in place),
//! and every list has a fixed capacity (`heapless::Vec`), so a device decodes
//! a request with no heap and no copy. Byte and int8 payloads are encoded as
//! postcard byte arrays (a varint length, then the bytes). The field
//! encodings are listed in `PROTOCOL.md`.

use serde::{Deserialize, Serialize};

use crate::error::ErrorCode;
use crate::{MAX_INFER_TASKS, MAX_TASKS};

/// A request. Variants are only ever appended (`PROTOCOL.md`, "Versioning").
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum Request<'a> {
    /// What the device is and runs: answered by [`Response::Info`].
    Info,
    /// The resident tasks: answered by [`Response::Tasks`].
    Tasks,
    /// Makes `task` the active one: answered by [`Response::Switched`].
    Switch {
        /// a resident task's name, or `base`
        task: &'a str,
    },
    /// Runs each task of `tasks` (the active task if empty) on `input`:
    /// answered by [`Response::Infer`], one result per task in order.
    /// The active task afterwards is the last one run.
    Infer {
        /// task names, at most [`MAX_INFER_TASKS`]
        tasks: heapless::Vec<&'a str, MAX_INFER_TASKS>,
        /// the input
        input: Input<'a>,
    },
    /// One chunk of a patch upload: answered by [`Response::Upload`] with
    /// the bytes now held. See `PROTOCOL.md`, "Upload, resume, commit".
    Upload {
        /// the task name the patch will be stored under
        name: &'a str,
        /// the patch's length in bytes
        total_len: u32,
        /// where `chunk` starts in the patch
        offset: u32,
        /// the bytes (empty: only ask how many bytes are held)
        #[serde(with = "serde_bytes")]
        chunk: &'a [u8],
    },
    /// Validates the completed upload of `name` and makes it a resident
    /// task: answered by [`Response::Committed`].
    Commit {
        /// the upload's name
        name: &'a str,
    },
    /// Removes a resident task: answered by [`Response::Deleted`].
    Delete {
        /// the task's name
        name: &'a str,
    },
    /// Runs the device's built-in self-test (optional; MCU firmware):
    /// answered by [`Response::SelfTest`].
    SelfTest,
}

/// An inference input.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub enum Input<'a> {
    /// Already quantized with the task's input quantization: H·W·C int8
    /// values in NHWC order.
    I8(#[serde(with = "crate::i8_bytes")] &'a [i8]),
    /// C·H·W `f32` values in NCHW order (the ONNX model's input), as
    /// little-endian bytes (4 per value; no alignment is assumed). The
    /// device quantizes them with each task's input quantization.
    F32(#[serde(with = "serde_bytes")] &'a [u8]),
}

impl<'a> Input<'a> {
    /// Number of values (`None`: an `F32` byte count that is not a
    /// multiple of 4).
    pub fn len(&self) -> Option<usize> {
        match self {
            Input::I8(v) => Some(v.len()),
            Input::F32(b) => (b.len() % 4 == 0).then_some(b.len() / 4),
        }
    }

    /// No values.
    pub fn is_empty(&self) -> bool {
        self.len() == Some(0)
    }

    /// The `F32` values, decoded from their little-endian bytes (empty for
    /// `I8`).
    pub fn f32_values(&self) -> impl Iterator<Item = f32> + 'a {
        let b: &'a [u8] = match self {
            Input::F32(b) => b,
            Input::I8(_) => &[],
        };
        b.chunks_exact(4)
            .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
    }
}

/// The device: answer to [`Request::Info`].
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Info<'a> {
    /// [`crate::PROTOCOL_VERSION`] of the device; a client refuses another
    pub protocol: u16,
    /// the device program and board, e.g. `graftnet-device 0.1.0 (rpi4)`
    pub device: &'a str,
    /// version of the graftnet runtime it runs
    pub runtime: &'a str,
    /// the backbone's content fingerprint (patches name it)
    pub backbone: u64,
    /// the model input `[C, H, W]`
    pub input: [u16; 3],
    /// the most classes a task may have
    pub max_classes: u16,
    /// activation arena, bytes
    pub arena_len: u32,
    /// per-channel parameter table, entries
    pub params_len: u32,
    /// the kernel table in use (e.g. `neon`, `dotprod`, `dsp`)
    pub kernels: &'a str,
    /// resident tasks, `base` included
    pub tasks: u16,
    /// the active task
    pub active: &'a str,
    /// the longest request frame the device receives, in bytes (COBS
    /// overhead and terminator included): bounds upload chunks and inputs
    pub max_frame: u32,
    /// the largest patch the device accepts, in bytes
    pub max_patch: u32,
}

/// One resident task.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TaskEntry<'a> {
    /// its name (`base` for the backbone's own task)
    pub name: &'a str,
    /// number of classes
    pub classes: u16,
    /// the patch's task version (0 for `base`)
    pub version: u32,
    /// the patch's size in bytes (0 for `base`)
    pub bytes: u32,
}

/// The answer to [`Request::Tasks`].
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TaskList<'a> {
    /// the active task
    pub active: &'a str,
    /// every resident task, `base` first
    pub tasks: heapless::Vec<TaskEntry<'a>, MAX_TASKS>,
}

/// One task's result of an [`Request::Infer`].
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct TaskScores<'a> {
    /// the task
    pub task: &'a str,
    /// int8 class scores as the engine produced them
    #[serde(with = "crate::i8_bytes")]
    pub scores: &'a [i8],
    /// scale of the scores' quantization
    pub scale: f32,
    /// zero point of the scores' quantization
    pub zero_point: i32,
    /// index of the highest score (the first on ties)
    pub top1: u16,
    /// microseconds this task took on the device: its switch, the input
    /// quantization (`F32`) and the inference
    pub us: u32,
}

impl TaskScores<'_> {
    /// The dequantized score (logit) of each class, exactly as the runtime
    /// computes it on the device (`graftnet::Scores::get`).
    pub fn dequantized(&self) -> impl Iterator<Item = f32> + '_ {
        self.scores
            .iter()
            .map(|&q| graftnet::quant::dequantize(q, self.scale, self.zero_point))
    }
}

/// A response. Variants are only ever appended.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum Response<'a> {
    /// answer to [`Request::Info`]
    Info(Info<'a>),
    /// answer to [`Request::Tasks`]
    Tasks(TaskList<'a>),
    /// answer to [`Request::Switch`]: the now active task
    Switched {
        /// the active task
        task: &'a str,
    },
    /// answer to [`Request::Infer`]: one result per task, in request order
    Infer(heapless::Vec<TaskScores<'a>, MAX_INFER_TASKS>),
    /// answer to [`Request::Upload`]
    Upload {
        /// the upload's name
        name: &'a str,
        /// the length it declared
        total_len: u32,
        /// bytes the device holds (`0..held`); the next chunk starts here
        held: u32,
    },
    /// answer to [`Request::Commit`]: the new resident task
    Committed(TaskEntry<'a>),
    /// answer to [`Request::Delete`]
    Deleted {
        /// the removed task
        name: &'a str,
    },
    /// answer to [`Request::SelfTest`]
    SelfTest {
        /// checks that passed
        passed: u32,
        /// checks that failed
        failed: u32,
    },
    /// the request was refused; nothing changed on the device
    Error {
        /// why, for programs
        code: ErrorCode,
        /// why, for people
        detail: &'a str,
    },
}
