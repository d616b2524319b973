//! The device service: the protocol of `targets/protocol` (`PROTOCOL.md`)
//! on the MCU, over any `embedded_io` stream (the board UART, [`crate::uart`]).
//!
//! [`Service`] implements `graftnet_protocol::Device`: the backbone in
//! flash ([`crate::BACKBONE`], used in place), the engine with its arena
//! and parameter table in `.bss` (as the self-test has them), and the task
//! patches in the A/B slot store ([`crate::slots`]) over the PATCHES
//! region. The board gives it the flash driver, the buffers and a clock;
//! `graftnet_protocol::serve` runs the loop.
//!
//! - Tasks are `base` and the store's; each patch is validated when the
//!   store mounts or changes (CRC, framing, backbone; with feature `verify`
//!   the signature against the compiled-in key, once) and kept as a view
//!   into flash, so a switch is one `Engine::apply` and nothing is copied.
//! - `Upload` chunks go straight to the inactive slot (the store stages the
//!   new set there); `Commit` validates it from flash, trial-applies the new
//!   patch to the engine, and only then writes the record. After any change
//!   the views are rebuilt from the new set and the active task is applied
//!   again from it (or `base` if it was deleted): the old slot is erased by
//!   the next change, and nothing may point into it then.
//! - Every refusal is a typed `Failure` and changes nothing: input size and
//!   finiteness and every task name of an `Infer` are checked before the
//!   engine switches.
//! - The self-test stays the firmware's other binary (`cargo run`); the
//!   protocol's `SelfTest` request is answered `Unsupported`.

// A `Failure` (160 bytes, its detail inline) is the protocol's refusal and
// lives on the stack by design, as in graftnet-protocol: no heap to box it.
#![allow(clippy::result_large_err)]

use core::fmt::Write as _;

use graftnet::{Backbone, ChannelRequant, Engine, Patch};
use graftnet_protocol::{
    Device, ErrorCode, Failure, Info, Input, TaskEntry, TaskList, TaskScores, UploadState,
    UploadStep, BASE_TASK, MAX_INFER_TASKS, PROTOCOL_VERSION,
};
use heapless::{String, Vec};

use crate::partition::NAME_LEN;
use crate::slots::{MappedFlash, Policy, SlotError, SlotStore};
use crate::{BACKBONE, FINGERPRINT, INPUT_LEN, MAX_CLASSES};

/// Tasks the store keeps besides `base`.
pub const TASKS: usize = 8;
/// Receive buffer: the longest request frame, an `Infer` with an `F32`
/// input (4 bytes a value) with its COBS overhead and fields; upload chunks
/// are bounded by it too.
pub const RX_LEN: usize = INPUT_LEN * 4 + (INPUT_LEN * 4) / 254 + 256;
/// Transmit buffer: the longest answer (a task list, or eight tasks'
/// scores).
pub const TX_LEN: usize = 2048;

/// Why the service could not start.
#[derive(Clone, Copy, Debug)]
pub enum SetupError {
    /// the backbone in flash does not validate
    Backbone(graftnet::FormatError),
    /// the engine refused the arena or parameter table
    Engine(graftnet::Error),
    /// the patch region cannot hold the store
    Store(SlotError),
}

impl core::fmt::Display for SetupError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            SetupError::Backbone(e) => write!(f, "backbone: {e}"),
            SetupError::Engine(e) => write!(f, "engine: {e}"),
            SetupError::Store(e) => write!(f, "patch store: {e}"),
        }
    }
}

/// The device: engine, store, views of the resident patches.
pub struct Service<F: MappedFlash> {
    engine: Engine<'static, 'static>,
    store: SlotStore<F, TASKS>,
    views: Vec<(String<NAME_LEN>, Patch<'static>), TASKS>,
    device: String<96>,
    clock: fn() -> u64,
    x: [f32; INPUT_LEN],
    q: [i8; INPUT_LEN],
    out: [[i8; MAX_CLASSES]; MAX_INFER_TASKS],
}

/// `bytes` with the lifetime of the flash region.
///
/// # Safety
/// `bytes` must lie in memory that lives for the program (the PATCHES
/// region) and must not be written while the returned slice or anything
/// made from it is used. The service keeps such slices only for the active
/// set, which the store never writes, and drops them (rebuilds the views,
/// re-applies the active task) after every change, before the next change
/// may erase the slot they point into.
unsafe fn in_flash(bytes: &[u8]) -> &'static [u8] {
    // SAFETY: the caller's contract.
    unsafe { core::slice::from_raw_parts(bytes.as_ptr(), bytes.len()) }
}

fn slot_failure(e: SlotError) -> Failure {
    let code = match e {
        SlotError::Patch(f) => return Failure::format(&f),
        SlotError::Flash(_) | SlotError::Geometry | SlotError::Exhausted => ErrorCode::Storage,
        SlotError::BadName | SlotError::NameMismatch => ErrorCode::InvalidName,
        SlotError::UnknownTask => ErrorCode::UnknownTask,
        SlotError::TableFull { .. } | SlotError::NoSpace { .. } => ErrorCode::StorageFull,
        SlotError::NoUpload => ErrorCode::NoUpload,
        SlotError::OutOfOrder { held } => ErrorCode::OffsetMismatch { held },
        SlotError::Overrun { total } => ErrorCode::TooLarge { max: total },
        SlotError::Incomplete { held, total } => ErrorCode::UploadIncomplete {
            held,
            total_len: total,
        },
        SlotError::LengthMismatch { .. } => {
            ErrorCode::Format(graftnet_protocol::FormatKind::Truncated)
        }
    };
    Failure::with(code, format_args!("{e}"))
}

fn unknown(task: &str) -> Failure {
    Failure::with(
        ErrorCode::UnknownTask,
        format_args!("no task '{task}' on this device"),
    )
}

impl<F: MappedFlash> Service<F> {
    /// Mounts the store on `flash` and sets up the engine over the
    /// compiled-in backbone, `arena` and `params`; `board` names the board
    /// in `Info`, `clock` gives microseconds.
    pub fn new(
        flash: F,
        arena: &'static mut [i8],
        params: &'static mut [ChannelRequant],
        board: &str,
        clock: fn() -> u64,
    ) -> Result<Self, SetupError> {
        #[cfg(not(feature = "verify"))]
        let (bb, policy) = (
            Backbone::parse(&BACKBONE.0).map_err(SetupError::Backbone)?,
            Policy::new(FINGERPRINT),
        );
        #[cfg(feature = "verify")]
        let key =
            graftnet::VerifyKey::from_bytes(&crate::VERIFY_KEY).map_err(SetupError::Backbone)?;
        #[cfg(feature = "verify")]
        let (bb, policy) = (
            Backbone::parse_verified(&BACKBONE.0, &key).map_err(SetupError::Backbone)?,
            Policy::signed(FINGERPRINT, key),
        );
        #[cfg(not(feature = "verify"))]
        let engine = Engine::new(&bb, arena, params).map_err(|e| SetupError::Engine(e.into()))?;
        #[cfg(feature = "verify")]
        let engine = Engine::new_verified(&bb, arena, params, &key).map_err(SetupError::Engine)?;
        let store = SlotStore::mount(flash, policy).map_err(SetupError::Store)?;
        let mut device = String::new();
        let _ = write!(
            device,
            "graftnet-mcu {} ({board})",
            env!("CARGO_PKG_VERSION")
        );
        let mut s = Service {
            engine,
            store,
            views: Vec::new(),
            device,
            clock,
            x: [0.0; INPUT_LEN],
            q: [0; INPUT_LEN],
            out: [[0; MAX_CLASSES]; MAX_INFER_TASKS],
        };
        s.refresh(BASE_TASK);
        Ok(s)
    }

    /// The store (for the boot banner).
    pub fn store(&self) -> &SlotStore<F, TASKS> {
        &self.store
    }

    /// The engine (for the boot banner).
    pub fn engine(&self) -> &Engine<'static, 'static> {
        &self.engine
    }

    /// The active task's name, owned (the engine's borrows the patch).
    fn active_name(&self) -> String<NAME_LEN> {
        let mut active = String::new();
        let _ = active.push_str(self.engine.task_name());
        active
    }

    /// Rebuilds the views from the store's active set and applies `active`
    /// from it (`base` if it is gone).
    fn refresh(&mut self, active: &str) {
        self.views.clear();
        for t in self.store.tasks() {
            let Some(bytes) = self.store.flash().contents().get(t.range()) else {
                continue;
            };
            // SAFETY: a patch of the active set, in the PATCHES region (see
            // `in_flash`); views are rebuilt after every change.
            let blob = unsafe { in_flash(bytes) };
            // The store validated it when it mounted or committed the set;
            // this gives the (verified) view the engine applies.
            if let Ok(p) = self.store.policy().check(&t.name, blob) {
                let _ = self.views.push((t.name.clone(), p));
            }
        }
        match self.views.iter().find(|(n, _)| *n == active) {
            Some((_, p)) if self.engine.apply(*p).is_ok() => {}
            _ => self.engine.reset(),
        }
    }

    fn view(&self, task: &str) -> Option<&(String<NAME_LEN>, Patch<'static>)> {
        self.views.iter().find(|(n, _)| n == task)
    }

    fn activate(&mut self, task: &str) -> Result<(), Failure> {
        if self.engine.task_name() == task {
            return Ok(());
        }
        if task == BASE_TASK {
            self.engine.reset();
            return Ok(());
        }
        let p = self.view(task).map(|v| v.1).ok_or_else(|| unknown(task))?;
        self.engine.apply(p).map_err(|e| Failure::format(&e))
    }

    fn entry(&self, name: &str) -> Option<TaskEntry<'_>> {
        let (n, p) = self.view(name)?;
        let bytes = self.store.task(name).map_or(0, |t| t.len);
        Some(TaskEntry {
            name: n.as_str(),
            classes: p.classes(),
            version: p.task_version(),
            bytes,
        })
    }
}

impl<F: MappedFlash> Device for Service<F> {
    fn info(&mut self) -> Result<Info<'_>, Failure> {
        let bb = self.engine.backbone();
        let t = bb.input();
        Ok(Info {
            protocol: PROTOCOL_VERSION,
            device: self.device.as_str(),
            runtime: graftnet::RUNTIME_VERSION,
            backbone: bb.fingerprint(),
            input: [t.c, t.h, t.w],
            max_classes: bb.max_classes(),
            arena_len: bb.arena_len() as u32,
            params_len: bb.params_len() as u32,
            kernels: self.engine.kernels().name,
            tasks: 1 + self.views.len() as u16,
            active: self.engine.task_name(),
            max_frame: 0,
            max_patch: self.store.max_patch(),
        })
    }

    fn tasks(&mut self) -> Result<TaskList<'_>, Failure> {
        let mut tasks = Vec::new();
        let base = TaskEntry {
            name: BASE_TASK,
            classes: self.engine.backbone().base_classes(),
            version: 0,
            bytes: 0,
        };
        let _ = tasks.push(base);
        for (n, _) in &self.views {
            if let Some(e) = self.entry(n) {
                let _ = tasks.push(e);
            }
        }
        Ok(TaskList {
            active: self.engine.task_name(),
            tasks,
        })
    }

    fn switch(&mut self, task: &str) -> Result<(), Failure> {
        self.activate(task)
    }

    fn infer(
        &mut self,
        tasks: &[&str],
        input: Input<'_>,
    ) -> Result<Vec<TaskScores<'_>, MAX_INFER_TASKS>, Failure> {
        // Everything that can be refused is checked before the engine moves.
        let got = input.len().unwrap_or(0);
        if input.len() != Some(INPUT_LEN) {
            let code = ErrorCode::InputSize {
                expected: INPUT_LEN as u32,
                got: got as u32,
            };
            return Err(Failure::with(
                code,
                format_args!("input of {got} values; the model takes {INPUT_LEN}"),
            ));
        }
        if let Input::F32(_) = input {
            for (i, v) in input.f32_values().enumerate() {
                if !v.is_finite() {
                    let code = ErrorCode::NonFiniteInput { index: i as u32 };
                    return Err(Failure::with(
                        code,
                        format_args!("input value {i} is not finite"),
                    ));
                }
                self.x[i] = v;
            }
        }
        if let Some(t) = tasks
            .iter()
            .find(|t| **t != BASE_TASK && self.view(t).is_none())
        {
            return Err(unknown(t));
        }
        let active = self.engine.task_name();
        let one = [active];
        let run: &[&str] = if tasks.is_empty() { &one } else { tasks };
        // (name index, classes, scale, zero point, top1, us) per task
        let mut meta: Vec<(Option<usize>, usize, f32, i32, u16, u32), MAX_INFER_TASKS> = Vec::new();
        for (k, task) in run.iter().enumerate() {
            let t0 = (self.clock)();
            self.activate(task)?;
            let scores = match input {
                Input::I8(v) => self.engine.run(v),
                Input::F32(_) => {
                    self.engine
                        .quantize_input(&self.x, &mut self.q)
                        .map_err(|e| Failure::run(&e))?;
                    self.engine.run(&self.q)
                }
            }
            .map_err(|e| Failure::run(&e))?;
            let q = scores.quantized();
            let n = q.len().min(MAX_CLASSES);
            for (d, &s) in self.out[k].iter_mut().zip(&q[..n]) {
                *d = s;
            }
            let (scale, zp) = scores.quant();
            let top1 = scores.argmax() as u16;
            let us = ((self.clock)() - t0).min(u32::MAX as u64) as u32;
            let idx = self.views.iter().position(|(name, _)| name == task);
            let _ = meta.push((idx, n, scale, zp, top1, us));
        }
        let mut results = Vec::new();
        for (k, &(idx, n, scale, zero_point, top1, us)) in meta.iter().enumerate() {
            let task = match idx {
                Some(i) => self.views[i].0.as_str(),
                None => BASE_TASK,
            };
            let _ = results.push(TaskScores {
                task,
                scores: &self.out[k][..n],
                scale,
                zero_point,
                top1,
                us,
            });
        }
        Ok(results)
    }

    fn upload(
        &mut self,
        name: &str,
        total_len: u32,
        offset: u32,
        chunk: &[u8],
    ) -> Result<u32, Failure> {
        let cur = self
            .store
            .upload_state()
            .map(|(n, held, total)| UploadState::started(n, total, held));
        match UploadState::plan(
            cur.as_ref(),
            name,
            total_len,
            offset,
            chunk.len(),
            self.store.max_patch(),
        )? {
            UploadStep::Query { held } => Ok(held),
            UploadStep::Start => self
                .store
                .upload(name, total_len, 0, chunk)
                .map_err(slot_failure),
            UploadStep::Append { offset } => self
                .store
                .upload(name, total_len, offset, chunk)
                .map_err(slot_failure),
        }
    }

    fn commit(&mut self, name: &str) -> Result<TaskEntry<'_>, Failure> {
        let active = self.active_name();
        let engine = &mut self.engine;
        let r = self.store.commit_with(name, |blob| {
            // SAFETY: the staged patch, in the PATCHES region; the store
            // writes only the record (elsewhere in the slot) before
            // `refresh` below replaces the engine's patch.
            let blob = unsafe { in_flash(blob) };
            let p = Patch::parse(blob)?;
            engine.apply(p).map_err(SlotError::Patch)
        });
        // Views and the active task from the set now in force (the old one
        // if the commit failed), whatever the trial put in the engine.
        self.refresh(&active);
        r.map_err(slot_failure)?;
        self.entry(name).ok_or_else(|| unknown(name))
    }

    fn delete(&mut self, name: &str) -> Result<(), Failure> {
        if name == BASE_TASK {
            return Err(Failure::with(
                ErrorCode::Protected,
                format_args!("'{BASE_TASK}' is the backbone's own task"),
            ));
        }
        if self.view(name).is_none() {
            return Err(unknown(name));
        }
        let active = self.active_name();
        let r = self.store.delete(name);
        self.refresh(&active);
        r.map_err(slot_failure)
    }
}

/// Sets up the service and serves the protocol on `io` for ever; returns
/// only if the setup fails. Prints a banner (the store's set) to `log`.
pub fn run<F: MappedFlash, IO: embedded_io::Read + embedded_io::Write>(
    flash: F,
    io: &mut IO,
    arena: &'static mut [i8],
    params: &'static mut [ChannelRequant],
    board: &str,
    clock: fn() -> u64,
    log: &mut impl core::fmt::Write,
) -> SetupError {
    let mut service = match Service::new(flash, arena, params, board, clock) {
        Ok(s) => s,
        Err(e) => return e,
    };
    let set = service.store().active();
    let _ = write!(
        log,
        "graftnet service on {board}: backbone {FINGERPRINT:016x} ({} bytes), kernels {}, patch store generation {} ({}), tasks: base",
        BACKBONE.0.len(),
        service.engine().kernels().name,
        set.generation,
        match set.slot {
            Some(crate::slots::Slot::A) => "slot A",
            Some(crate::slots::Slot::B) => "slot B",
            None => "empty",
        },
    );
    for t in service.store().tasks() {
        let _ = write!(log, ", {} ({} bytes)", t.name, t.len);
    }
    let _ = writeln!(
        log,
        "\nready: device protocol {PROTOCOL_VERSION} on the UART, frames up to {RX_LEN} bytes"
    );
    let mut rx = [0u8; RX_LEN];
    let mut tx = [0u8; TX_LEN];
    loop {
        // The UART never ends nor fails (uart::Never); serve again if it did.
        let _ = graftnet_protocol::serve(io, &mut service, &mut rx, &mut tx);
    }
}
