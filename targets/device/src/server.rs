//! One engine serving task-tagged requests, in JSON lines ([`Server::handle`])
//! or in the binary protocol ([`graftnet_protocol::Device`]).
//!
//! Contracts:
//! - Requests are served one at a time (callers share the server behind a
//!   mutex). Results do not depend on the order of requests: a patch always
//!   applies over the base task.
//! - Every JSON line gets exactly one response line, except blank lines,
//!   which are ignored; every binary frame one answer frame. Nothing a
//!   client sends stops the server.
//! - A JSON request line is parsed before the lock is taken ([`respond`]):
//!   the lock covers the task switch, the input quantization and the
//!   inference only, so a client sending a large or malformed request
//!   never holds up the others' inferences. (A binary frame decodes in
//!   place in microseconds; it is decoded under the lock.)
//! - The resident task set changes only through a validated, atomic commit
//!   or a delete ([`crate::store`]); a refused request changes nothing.
//!
//! The engine is set up for each request ([`Server::engine_for`]):
//! `Engine::new` (the base task's parameters), then `Patch::parse` and
//! `Engine::apply` for a patch. The engine borrows the patch bytes for as
//! long as it lives, and uploads and deletes change those bytes while the
//! device runs, so no engine outlives a request. That costs two parameter
//! derivations per request (about 70-80 µs on a desktop core for
//! MobileNetV2-1.0 S/B, ~1.5 % of its inference; `targets/README.md`
//! measures the device's overhead) instead of one per task switch.

use std::sync::Mutex;
use std::time::Instant;

use graftnet::{Backbone, Engine, Requant, VerifyKey};
use graftnet_protocol::{
    Device, ErrorCode, Failure, Info, Input as WireInput, TaskEntry, TaskList, TaskScores,
    UploadState, UploadStep, BASE_TASK, MAX_INFER_TASKS, PROTOCOL_VERSION,
};
use crate::protocol::{error_response, parse_request, response, Input, Refusal, Request};
use crate::store::{validate, PatchMeta, PatchStore};

/// Largest patch accepted by upload by default (16 MiB: a 1000-class
/// classifier over 1280 features is 1.3 MB).
pub const DEFAULT_MAX_PATCH: u32 = 16 << 20;

/// The engine's memory, the tasks it can switch to, and scratch buffers.
pub struct Server<'b> {
    bb: Backbone<'b>,
    key: Option<VerifyKey>,
    arena: Vec<i8>,
    params: Vec<Requant>,
    store: PatchStore,
    active: String,
    device: String,
    kernels: &'static str,
    max_patch: u32,
    n_input: usize,
    quantized: Vec<i8>,
    floats: Vec<f32>,
    scores: Vec<f32>,
    /// int8 scores of the tasks of one binary `Infer`, `max_classes` each
    results: Vec<i8>,
    upload: Option<(UploadState, Vec<u8>)>,
}

/// One task's result: `(store index or None for base, classes, scale, zero
/// point, top1, µs)`.
type Meta = (Option<usize>, usize, f32, i32, usize, u32);

impl<'b> Server<'b> {
    /// A server over backbone `bb` (verified already when `key` is set) and
    /// the resident patches `store` (validated already); `device` names the
    /// program and board for `Info`.
    pub fn new(bb: Backbone<'b>, store: PatchStore, key: Option<VerifyKey>, device: String, max_patch: u32) -> Self {
        let n_input = bb.input().len();
        let max_classes = bb.max_classes() as usize;
        Server {
            bb,
            key,
            arena: vec![0; bb.arena_len()],
            params: vec![Requant::default(); bb.params_len()],
            store,
            active: BASE_TASK.to_string(),
            device,
            kernels: graftnet::kernels::Kernels::best().name,
            max_patch,
            n_input,
            quantized: vec![0; n_input],
            floats: Vec::with_capacity(n_input),
            scores: vec![0.0; max_classes],
            results: vec![0; MAX_INFER_TASKS * max_classes],
            upload: None,
        }
    }

    /// Task names: `"base"`, then the patches'.
    pub fn task_names(&self) -> Vec<&str> {
        core::iter::once(BASE_TASK).chain(self.store.tasks().iter().map(|t| t.name.as_str())).collect()
    }

    /// The backbone.
    pub fn backbone(&self) -> &Backbone<'b> {
        &self.bb
    }

    /// The kernel table inferences run on.
    pub fn kernels(&self) -> &'static str {
        self.kernels
    }

    /// The active task (the last one run or switched to).
    pub fn active(&self) -> &str {
        &self.active
    }

    /// Applies every patch once: a patch that cannot be applied is reported
    /// at start-up and dropped.
    pub fn check_patches(&mut self) -> Vec<String> {
        let mut bad = Vec::new();
        let (bb, arena, params) = (&self.bb, &mut self.arena, &mut self.params);
        self.store.retain(|t| {
            let r = t.patch().and_then(|p| {
                let mut e = Engine::new(bb, arena, params).map_err(|e| Failure::run(&e))?;
                e.apply(p).map_err(|e| Failure::format(&e))
            });
            if let Err(f) = &r {
                bad.push(format!("task '{}': {f}; skipped", t.name));
            }
            r.is_ok()
        });
        bad
    }

    /// The model's input size (C*H*W), which requests are parsed against.
    pub fn n_input(&self) -> usize {
        self.n_input
    }

    /// Serves one request line; `None` for a blank line. (Parses under
    /// whatever lock the caller holds; connections use [`respond`].)
    pub fn handle_line(&mut self, line: &str) -> Option<String> {
        if line.trim().is_empty() {
            return None;
        }
        Some(match parse_request(line, self.n_input) {
            Ok(req) => self.handle(&req),
            Err(r) => error_response(&r),
        })
    }

    /// Serves one parsed JSON request: the task switch and the inference.
    pub fn handle(&mut self, req: &Request) -> String {
        let refusal = |message: String| error_response(&Refusal { id: req.id.clone(), message });
        if req.task != BASE_TASK && self.store.get(&req.task).is_none() {
            return refusal(format!("unknown task '{}'; this device has: {}", req.task, self.task_names().join(", ")));
        }
        let t0 = Instant::now();
        let input = match &req.input {
            Input::F32(x) => Run::F32(x),
            Input::I8(q) => Run::I8(q),
        };
        let (bb, store) = (&self.bb, &self.store);
        match run_one(bb, &mut self.arena, &mut self.params, store, &req.task, input, &mut self.quantized, &mut self.scores) {
            Ok((n, top1)) => {
                self.active = req.task.clone();
                response(&req.id, &req.task, top1, &self.scores[..n], t0.elapsed().as_micros())
            }
            Err(f) => refusal(match f.code {
                ErrorCode::Format(_) | ErrorCode::WrongBackbone { .. } => {
                    format!("task '{}' cannot be applied: {}", req.task, f.detail)
                }
                _ => format!("inference failed: {}", f.detail),
            }),
        }
    }

    /// Runs `tasks` (the active task if empty) on `input`, each in turn,
    /// keeping each task's int8 scores in `self.results`.
    ///
    /// The one place multi-task inference happens: each task is set up and
    /// run on its own (`run_one`). `Engine::run_tasks` (shared layers run
    /// once, bit-identical results) replaces this loop when the runtime has
    /// it.
    fn run_tasks(&mut self, tasks: &[&str], input: WireInput<'_>) -> Result<heapless::Vec<Meta, MAX_INFER_TASKS>, Failure> {
        let got = input.len();
        if got != Some(self.n_input) {
            let got = got.unwrap_or(0) as u32;
            return Err(Failure::new(ErrorCode::InputSize { expected: self.n_input as u32, got }));
        }
        let mut idx: heapless::Vec<Option<usize>, MAX_INFER_TASKS> = heapless::Vec::new();
        let active = [self.active.as_str()];
        for &t in if tasks.is_empty() { &active[..] } else { tasks } {
            let i = match self.store.tasks().iter().position(|s| s.name == t) {
                Some(i) => Some(i),
                None if t == BASE_TASK => None,
                None => return Err(self.unknown(t)),
            };
            let _ = idx.push(i);
        }
        self.floats.clear();
        self.floats.extend(input.f32_values());
        let maxc = self.bb.max_classes() as usize;
        let mut out = heapless::Vec::new();
        for (k, &i) in idx.iter().enumerate() {
            let t0 = Instant::now();
            let name = i.map_or(BASE_TASK, |i| self.store.tasks()[i].name.as_str());
            let run = match input {
                WireInput::I8(q) => Run::I8(q),
                WireInput::F32(_) => Run::F32(&self.floats),
            };
            let mut e = engine_for(&self.bb, &mut self.arena, &mut self.params, &self.store, name)?;
            let s = match run {
                Run::I8(q) => e.run(q),
                Run::F32(x) => e.quantize_input(x, &mut self.quantized).and_then(|()| e.run(&self.quantized)),
            }
            .map_err(|e| Failure::run(&e))?;
            let n = s.len().min(maxc);
            self.results[k * maxc..k * maxc + n].copy_from_slice(&s.quantized()[..n]);
            let (scale, zp) = s.quant();
            let _ = out.push((i, n, scale, zp, s.argmax(), t0.elapsed().as_micros() as u32));
        }
        if let Some(&(i, ..)) = out.last() {
            self.active = i.map_or(BASE_TASK, |i| self.store.tasks()[i].name.as_str()).to_string();
        }
        Ok(out)
    }

    fn unknown(&self, task: &str) -> Failure {
        Failure::with(ErrorCode::UnknownTask, format_args!("unknown task '{task}'; this device has: {}", self.task_names().join(", ")))
    }

    fn entry(&self, i: Option<usize>) -> TaskEntry<'_> {
        match i {
            None => TaskEntry { name: BASE_TASK, classes: self.bb.base_classes(), version: 0, bytes: 0 },
            Some(i) => {
                let t = &self.store.tasks()[i];
                TaskEntry { name: &t.name, classes: t.classes, version: t.version, bytes: t.bytes.len() as u32 }
            }
        }
    }
}

/// An input for [`run_one`].
#[derive(Clone, Copy)]
enum Run<'x> {
    F32(&'x [f32]),
    I8(&'x [i8]),
}

/// The engine with `task` active (module doc: set up per request).
fn engine_for<'s>(
    bb: &Backbone<'s>,
    arena: &'s mut [i8],
    params: &'s mut [Requant],
    store: &'s PatchStore,
    task: &str,
) -> Result<Engine<'s, 's>, Failure> {
    let mut e = Engine::new(bb, arena, params).map_err(|e| Failure::run(&e))?;
    if task != BASE_TASK {
        let t = store.get(task).ok_or_else(|| Failure::new(ErrorCode::UnknownTask))?;
        e.apply(t.patch()?).map_err(|e| Failure::format(&e))?;
    }
    Ok(e)
}

/// Runs `task` on `input`, dequantizing the scores into `scores`:
/// `(classes, top1)`.
#[allow(clippy::too_many_arguments)]
fn run_one(
    bb: &Backbone<'_>,
    arena: &mut [i8],
    params: &mut [Requant],
    store: &PatchStore,
    task: &str,
    input: Run<'_>,
    quantized: &mut [i8],
    scores: &mut [f32],
) -> Result<(usize, usize), Failure> {
    let mut e = engine_for(bb, arena, params, store, task)?;
    let s = match input {
        Run::F32(x) => e.quantize_input(x, quantized).and_then(|()| e.run(quantized)),
        Run::I8(q) => e.run(q),
    }
    .map_err(|e| Failure::run(&e))?;
    Ok((s.dequantize_into(scores), s.argmax()))
}

impl Device for Server<'_> {
    fn info(&mut self) -> Result<Info<'_>, Failure> {
        let t = self.bb.input();
        Ok(Info {
            protocol: PROTOCOL_VERSION,
            device: &self.device,
            runtime: graftnet::RUNTIME_VERSION,
            backbone: self.bb.fingerprint(),
            input: [t.c, t.h, t.w],
            max_classes: self.bb.max_classes(),
            arena_len: self.bb.arena_len() as u32,
            params_len: self.bb.params_len() as u32,
            kernels: self.kernels,
            tasks: 1 + self.store.tasks().len() as u16,
            active: &self.active,
            max_frame: 0,
            max_patch: self.max_patch,
        })
    }

    fn tasks(&mut self) -> Result<TaskList<'_>, Failure> {
        let mut tasks = heapless::Vec::new();
        let _ = tasks.push(self.entry(None));
        for i in 0..self.store.tasks().len() {
            // The store keeps at most MAX_TASKS - 1 patches.
            let _ = tasks.push(self.entry(Some(i)));
        }
        Ok(TaskList { active: &self.active, tasks })
    }

    fn switch(&mut self, task: &str) -> Result<(), Failure> {
        if task != BASE_TASK && self.store.get(task).is_none() {
            return Err(self.unknown(task));
        }
        // Applied for real: a patch that no longer applies is refused here.
        engine_for(&self.bb, &mut self.arena, &mut self.params, &self.store, task)?;
        self.active = task.to_string();
        Ok(())
    }

    fn infer(&mut self, tasks: &[&str], input: WireInput<'_>) -> Result<heapless::Vec<TaskScores<'_>, MAX_INFER_TASKS>, Failure> {
        let meta = self.run_tasks(tasks, input)?;
        let maxc = self.bb.max_classes() as usize;
        let mut out = heapless::Vec::new();
        for (k, &(i, n, scale, zero_point, top1, us)) in meta.iter().enumerate() {
            let task = i.map_or(BASE_TASK, |i| self.store.tasks()[i].name.as_str());
            let scores = &self.results[k * maxc..k * maxc + n];
            let _ = out.push(TaskScores { task, scores, scale, zero_point, top1: top1 as u16, us });
        }
        Ok(out)
    }

    fn upload(&mut self, name: &str, total_len: u32, offset: u32, chunk: &[u8]) -> Result<u32, Failure> {
        let cur = self.upload.as_ref().map(|u| &u.0);
        match UploadState::plan(cur, name, total_len, offset, chunk.len(), self.max_patch)? {
            UploadStep::Query { held } => Ok(held),
            UploadStep::Start => {
                let mut bytes = Vec::with_capacity(total_len as usize);
                bytes.extend_from_slice(chunk);
                self.upload = Some((UploadState::started(name, total_len, chunk.len() as u32), bytes));
                Ok(chunk.len() as u32)
            }
            UploadStep::Append { .. } => {
                let Some((state, bytes)) = self.upload.as_mut() else {
                    return Err(Failure::new(ErrorCode::NoUpload));
                };
                bytes.extend_from_slice(chunk);
                state.held += chunk.len() as u32;
                Ok(state.held)
            }
        }
    }

    fn commit(&mut self, name: &str) -> Result<TaskEntry<'_>, Failure> {
        UploadState::complete(self.upload.as_ref().map(|u| &u.0), name)?;
        // Complete: validated now, and discarded whatever the outcome.
        let Some((_, bytes)) = self.upload.take() else {
            return Err(Failure::new(ErrorCode::NoUpload));
        };
        let meta = validate(&bytes, name, &self.bb, self.key.as_ref(), &mut self.arena, &mut self.params).map(|p| PatchMeta::of(&p))?;
        let i = self.store.commit(meta, bytes)?;
        Ok(self.entry(Some(i)))
    }

    fn delete(&mut self, name: &str) -> Result<(), Failure> {
        if name == BASE_TASK {
            return Err(Failure::with(ErrorCode::Protected, format_args!("'{BASE_TASK}' is the backbone's own task")));
        }
        self.store.delete(name)?;
        if self.active == name {
            self.active = BASE_TASK.to_string();
        }
        Ok(())
    }
}

/// Serves one request line on the shared server; `None` for a blank line.
/// `n_input` is the model's input size ([`Server::n_input`]). The line is
/// parsed first, without the lock; a refused line never takes it.
pub fn respond(srv: &Mutex<Server<'_>>, n_input: usize, line: &str) -> Option<String> {
    if line.trim().is_empty() {
        return None;
    }
    Some(match parse_request(line, n_input) {
        Ok(req) => srv.lock().unwrap_or_else(|p| p.into_inner()).handle(&req),
        Err(r) => error_response(&r),
    })
}
