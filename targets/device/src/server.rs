//! One engine serving task-tagged requests.
//!
//! Contracts:
//! - Requests are served one at a time (callers share the server behind a
//!   mutex); a request naming another task than the active one switches first
//!   (`Engine::apply`, or `Engine::reset` for `"base"`). Results do not depend
//!   on the order of requests: a patch always applies over the base task.
//! - Every line gets exactly one response line, except blank lines, which are
//!   ignored. Nothing a client sends stops the server.
//! - A request line is parsed before the lock is taken ([`respond`]): the
//!   lock covers the task switch, the input quantization and the inference
//!   only, so a client sending a large or malformed request never holds up
//!   the others' inferences.

use std::sync::Mutex;
use std::time::Instant;

use graftnet::{Engine, Patch};
use serde_json::Value;

use crate::export::BASE_TASK;
use crate::protocol::{error_response, parse_request, response, Input, Refusal, Request};

/// The engine, the tasks it can switch to, and scratch buffers.
pub struct Server<'a, 'm> {
    engine: Engine<'a, 'm>,
    patches: Vec<(String, Patch<'a>)>,
    n_input: usize,
    quantized: Vec<i8>,
    scores: Vec<f32>,
}

impl<'a, 'm> Server<'a, 'm> {
    /// A server over `engine` (any task active) and the patches it may apply.
    pub fn new(engine: Engine<'a, 'm>, patches: Vec<(String, Patch<'a>)>) -> Self {
        let n_input = engine.backbone().input().len();
        let max_classes = engine.backbone().max_classes() as usize;
        Server { engine, patches, n_input, quantized: vec![0; n_input], scores: vec![0.0; max_classes] }
    }

    /// Task names: `"base"`, then the patches'.
    pub fn tasks(&self) -> Vec<&str> {
        core::iter::once(BASE_TASK).chain(self.patches.iter().map(|(n, _)| n.as_str())).collect()
    }

    /// The engine (for start-up reporting).
    pub fn engine(&self) -> &Engine<'a, 'm> {
        &self.engine
    }

    /// Applies every patch once and returns to the base task: a patch that
    /// cannot be applied is reported at start-up and dropped.
    pub fn check_patches(&mut self) -> Vec<String> {
        let mut bad = Vec::new();
        let mut keep = Vec::new();
        for (name, p) in self.patches.drain(..) {
            match self.engine.apply(p) {
                Ok(()) => keep.push((name, p)),
                Err(e) => bad.push(format!("task '{name}': {e}; skipped")),
            }
        }
        self.patches = keep;
        self.engine.reset();
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

    /// Serves one parsed request: the task switch and the inference.
    pub fn handle(&mut self, req: &Request) -> String {
        match self.serve(&req.id, &req.task, &req.input) {
            Ok(s) => s,
            Err(r) => error_response(&r),
        }
    }

    fn switch_to(&mut self, id: &Value, task: &str) -> Result<(), Refusal> {
        if self.engine.task_name() == task {
            return Ok(());
        }
        if task == BASE_TASK {
            self.engine.reset();
            return Ok(());
        }
        let Some(&(_, p)) = self.patches.iter().find(|(n, _)| n == task) else {
            return Err(Refusal { id: id.clone(), message: format!("unknown task '{task}'; this device has: {}", self.tasks().join(", ")) });
        };
        self.engine
            .apply(p)
            .map_err(|e| Refusal { id: id.clone(), message: format!("task '{task}' cannot be applied: {e}") })
    }

    fn serve(&mut self, id: &Value, task: &str, input: &Input) -> Result<String, Refusal> {
        let t0 = Instant::now();
        self.switch_to(id, task)?;
        let run_err = |e: graftnet::RunError| Refusal { id: id.clone(), message: format!("inference failed: {e}") };
        let scores = match input {
            Input::F32(x) => {
                self.engine.quantize_input(x, &mut self.quantized).map_err(run_err)?;
                self.engine.run(&self.quantized).map_err(run_err)?
            }
            Input::I8(q) => self.engine.run(q).map_err(run_err)?,
        };
        let n = scores.dequantize_into(&mut self.scores);
        let top1 = scores.argmax();
        let us = t0.elapsed().as_micros();
        Ok(response(id, task, top1, &self.scores[..n], us))
    }
}

/// Serves one request line on the shared server; `None` for a blank line.
/// `n_input` is the model's input size ([`Server::n_input`]). The line is
/// parsed first, without the lock; a refused line never takes it.
pub fn respond(srv: &Mutex<Server<'_, '_>>, n_input: usize, line: &str) -> Option<String> {
    if line.trim().is_empty() {
        return None;
    }
    Some(match parse_request(line, n_input) {
        Ok(req) => srv.lock().unwrap_or_else(|p| p.into_inner()).handle(&req),
        Err(r) => error_response(&r),
    })
}
