//! The device side: a [`Device`] answers requests; [`serve`] runs the
//! protocol over a stream for it.
//!
//! Contracts:
//! - Every non-empty frame gets exactly one answer frame, in order. A frame
//!   that is too long, not COBS, or not a request is answered with
//!   [`ErrorCode::FrameTooLarge`] or [`ErrorCode::Malformed`] and the loop
//!   goes on at the next zero byte; nothing a client sends stops it. Only
//!   the end of the stream or an I/O error returns.
//! - A refused request changes nothing on the device ([`Device`] methods
//!   must keep that: a failed switch, upload chunk or commit leaves the
//!   active task and the resident set as they were).
//! - Buffers are the caller's: `rx` bounds the longest request (an upload
//!   chunk or an input plus a few dozen bytes), `tx` the longest answer; no
//!   heap is used.

use embedded_io::{Read, Write};

use crate::error::{ErrorCode, Failure};
use crate::frame::{decode_request, encode, Frame, FrameReader};
use crate::message::{Info, Input, Request, Response, TaskEntry, TaskList, TaskScores};
use crate::{BASE_TASK, MAX_INFER_TASKS, MAX_NAME_LEN};

/// The smallest `tx` buffer [`serve`] works with: room for any
/// [`Response::Error`] with an empty detail.
pub const MIN_TX_BUF: usize = 32;

/// What a device does for each request; [`serve`] calls it. Each method
/// either does all of its work or returns a [`Failure`] having changed
/// nothing.
pub trait Device {
    /// What the device is (`max_frame` is filled in by [`serve`] from its
    /// receive buffer).
    fn info(&mut self) -> Result<Info<'_>, Failure>;
    /// The resident tasks, `base` first.
    fn tasks(&mut self) -> Result<TaskList<'_>, Failure>;
    /// Makes `task` active.
    fn switch(&mut self, task: &str) -> Result<(), Failure>;
    /// Runs each of `tasks` (the active task if empty) on `input`, in
    /// order; the results borrow the device's score buffers.
    fn infer(
        &mut self,
        tasks: &[&str],
        input: Input<'_>,
    ) -> Result<heapless::Vec<TaskScores<'_>, MAX_INFER_TASKS>, Failure>;
    /// Takes one upload chunk (see [`UploadState::plan`]); returns the bytes
    /// now held.
    fn upload(
        &mut self,
        name: &str,
        total_len: u32,
        offset: u32,
        chunk: &[u8],
    ) -> Result<u32, Failure>;
    /// Validates the complete upload `name` and makes it resident
    /// (replacing a task of the same name), atomically.
    fn commit(&mut self, name: &str) -> Result<TaskEntry<'_>, Failure>;
    /// Removes resident task `name` (the base task is
    /// [`ErrorCode::Protected`]); if it was active, `base` becomes active.
    fn delete(&mut self, name: &str) -> Result<(), Failure>;
    /// Runs the built-in self-test: `(passed, failed)`. Optional.
    fn selftest(&mut self) -> Result<(u32, u32), Failure> {
        Err(Failure::with(
            ErrorCode::Unsupported,
            format_args!("this device has no built-in self-test"),
        ))
    }
}

/// Serves requests from `io` on `dev` until the stream ends (`Ok`) or
/// fails (`Err`). `rx` receives request frames (its length is the longest
/// request accepted and is reported as [`Info::max_frame`]); `tx` holds
/// each answer (at least [`MIN_TX_BUF`] bytes; an answer that does not fit
/// is replaced by [`ErrorCode::ResponseTooLarge`]).
pub fn serve<IO: Read + Write, D: Device>(
    io: &mut IO,
    dev: &mut D,
    rx: &mut [u8],
    tx: &mut [u8],
) -> Result<(), IO::Error> {
    let mut reader = FrameReader::new(rx);
    let max_frame = reader.capacity();
    loop {
        let n = match reader.next(io)? {
            None => return Ok(()),
            Some(frame) => respond(dev, frame, max_frame, tx),
        };
        if n > 0 {
            io.write_all(&tx[..n])?;
            io.flush()?;
        }
    }
}

/// Answers one received frame (the body of [`serve`]'s loop, for a caller
/// that reads frames itself, e.g. to lock a shared device per frame): a
/// frame too long or not a request is refused, a request is [`answer`]ed.
/// Returns the answer's frame length in `tx`.
pub fn respond<D: Device>(dev: &mut D, frame: Frame<'_>, max_frame: usize, tx: &mut [u8]) -> usize {
    match frame {
        Frame::TooLarge => refuse(
            &Failure::new(ErrorCode::FrameTooLarge {
                max: max_frame as u32,
            }),
            tx,
        ),
        Frame::Data(f) => match decode_request(f) {
            Ok(req) => answer(dev, req, max_frame, tx),
            Err(_) => refuse(
                &Failure::with(
                    ErrorCode::Malformed,
                    format_args!(
                        "the frame is not a request of protocol version {}",
                        crate::PROTOCOL_VERSION
                    ),
                ),
                tx,
            ),
        },
    }
}

/// Serves one decoded request: the answer's frame length in `tx`.
pub fn answer<D: Device>(dev: &mut D, req: Request<'_>, max_frame: usize, tx: &mut [u8]) -> usize {
    let r = match req {
        Request::Info => dev.info().map(|mut i| {
            i.max_frame = max_frame as u32;
            Response::Info(i)
        }),
        Request::Tasks => dev.tasks().map(Response::Tasks),
        Request::Switch { task } => dev.switch(task).map(|()| Response::Switched { task }),
        Request::Infer { tasks, input } => dev.infer(&tasks, input).map(Response::Infer),
        Request::Upload {
            name,
            total_len,
            offset,
            chunk,
        } => dev
            .upload(name, total_len, offset, chunk)
            .map(|held| Response::Upload {
                name,
                total_len,
                held,
            }),
        Request::Commit { name } => dev.commit(name).map(Response::Committed),
        Request::Delete { name } => dev.delete(name).map(|()| Response::Deleted { name }),
        Request::SelfTest => dev
            .selftest()
            .map(|(passed, failed)| Response::SelfTest { passed, failed }),
    };
    match r {
        Ok(resp) => send(&resp, tx),
        Err(f) => refuse(&f, tx),
    }
}

/// Encodes `resp` into `tx`: the frame length, or a `ResponseTooLarge`
/// refusal's if it does not fit.
fn send(resp: &Response<'_>, tx: &mut [u8]) -> usize {
    let max = tx.len() as u32;
    match encode(resp, tx) {
        Ok(f) => f.len(),
        Err(_) => refuse(&Failure::new(ErrorCode::ResponseTooLarge { max }), tx),
    }
}

/// Encodes a refusal into `tx` (without its detail if that does not fit;
/// 0 if not even that fits, below [`MIN_TX_BUF`]).
fn refuse(f: &Failure, tx: &mut [u8]) -> usize {
    if let Ok(fr) = encode(
        &Response::Error {
            code: f.code,
            detail: &f.detail,
        },
        tx,
    ) {
        return fr.len();
    }
    encode(
        &Response::Error {
            code: f.code,
            detail: "",
        },
        tx,
    )
    .map_or(0, |fr| fr.len())
}

/// Checks a task name that is to be stored: 1 to [`MAX_NAME_LEN`] bytes of
/// ASCII letters, digits, `-`, `_` and `.`, not starting with `.`, and not
/// `base`. (So it is also a safe file name on a Linux device.)
pub fn check_name(name: &str) -> Result<(), Failure> {
    let ok_char = |c: u8| c.is_ascii_alphanumeric() || matches!(c, b'-' | b'_' | b'.');
    if name.is_empty()
        || name.len() > MAX_NAME_LEN
        || !name.bytes().all(ok_char)
        || name.starts_with('.')
    {
        return Err(Failure::with(
            ErrorCode::InvalidName,
            format_args!("task names are 1 to {MAX_NAME_LEN} bytes of A-Z a-z 0-9 - _ . (not starting with .)"),
        ));
    }
    if name == BASE_TASK {
        return Err(Failure::with(
            ErrorCode::InvalidName,
            format_args!("'{BASE_TASK}' is the backbone's own task"),
        ));
    }
    Ok(())
}

/// The upload in progress on a device: which task, its declared length, and
/// how many bytes (from offset 0) it holds. One at a time.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct UploadState {
    /// the task name
    pub name: heapless::String<MAX_NAME_LEN>,
    /// the declared patch length
    pub total_len: u32,
    /// bytes held, `0..held`
    pub held: u32,
}

/// What to do with an upload chunk ([`UploadState::plan`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum UploadStep {
    /// An empty chunk: only answer `held`; nothing changes.
    Query {
        /// bytes held for this name and length (0 if another upload is in
        /// progress, or none)
        held: u32,
    },
    /// Offset 0: discard any upload in progress (whatever its name), start
    /// this one, and store the chunk at offset 0.
    Start,
    /// Store the chunk at `offset`, right after the held bytes.
    Append {
        /// where the chunk goes (= the bytes held)
        offset: u32,
    },
}

impl UploadState {
    /// Decides what an `Upload { name, total_len, offset, chunk }` does,
    /// given the upload in progress `cur` and the largest patch `max_patch`
    /// the device takes (`PROTOCOL.md`, "Upload, resume, commit"):
    /// a bad name, `total_len` of 0 or above `max_patch`, and a chunk
    /// running past `total_len` are refused; an empty chunk is a
    /// [`UploadStep::Query`]; offset 0 is a [`UploadStep::Start`]; the
    /// offset where the held bytes of the same upload end is an
    /// [`UploadStep::Append`]; any other offset is
    /// [`ErrorCode::OffsetMismatch`] with the bytes held.
    pub fn plan(
        cur: Option<&UploadState>,
        name: &str,
        total_len: u32,
        offset: u32,
        chunk_len: usize,
        max_patch: u32,
    ) -> Result<UploadStep, Failure> {
        check_name(name)?;
        if total_len == 0 || total_len > max_patch {
            return Err(Failure::with(
                ErrorCode::TooLarge { max: max_patch },
                format_args!("a patch of {total_len} bytes; this device takes 1 to {max_patch}"),
            ));
        }
        let held = match cur {
            Some(u) if u.name == name && u.total_len == total_len => u.held,
            _ => 0,
        };
        if chunk_len == 0 {
            return Ok(UploadStep::Query { held });
        }
        if offset as u64 + chunk_len as u64 > total_len as u64 {
            return Err(Failure::with(
                ErrorCode::TooLarge { max: total_len },
                format_args!(
                    "chunk {offset}..{} runs past the upload's {total_len} bytes",
                    offset as u64 + chunk_len as u64
                ),
            ));
        }
        if offset == 0 {
            return Ok(UploadStep::Start);
        }
        if held > 0 && offset == held {
            return Ok(UploadStep::Append { offset });
        }
        Err(Failure::with(
            ErrorCode::OffsetMismatch { held },
            format_args!("chunk at offset {offset}, but {held} bytes are held; resume at {held}"),
        ))
    }

    /// A new upload holding its first `held` bytes.
    pub fn started(name: &str, total_len: u32, held: u32) -> Self {
        let mut n = heapless::String::new();
        // `plan` checked the name's length.
        let _ = n.push_str(name);
        UploadState {
            name: n,
            total_len,
            held,
        }
    }

    /// Checks that the upload in progress `cur` is `name`'s and complete,
    /// before a commit validates it.
    pub fn complete<'u>(
        cur: Option<&'u UploadState>,
        name: &str,
    ) -> Result<&'u UploadState, Failure> {
        match cur {
            Some(u) if u.name == name => {
                if u.held == u.total_len {
                    Ok(u)
                } else {
                    Err(Failure::with(
                        ErrorCode::UploadIncomplete {
                            held: u.held,
                            total_len: u.total_len,
                        },
                        format_args!("upload '{name}' holds {} of {} bytes", u.held, u.total_len),
                    ))
                }
            }
            _ => Err(Failure::with(
                ErrorCode::NoUpload,
                format_args!("no upload in progress for '{name}'"),
            )),
        }
    }
}
