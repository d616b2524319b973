//! Typed refusals: what a device answers instead of a result
//! ([`crate::Response::Error`]), and the errors of the framing layer.
//!
//! [`ErrorCode`] is on the wire; its variants are only ever appended, so an
//! older client decodes every code it knows (`PROTOCOL.md`, "Versioning").
//! [`Failure`] is the device-side owned form (a code and a short sentence in
//! a fixed-capacity string), so a `no_std` device needs no heap to refuse.

use core::fmt::{self, Write as _};

use serde::{Deserialize, Serialize};

/// Bytes of the human-readable detail a [`Failure`] keeps (longer text is
/// cut at a character boundary).
pub const DETAIL_CAP: usize = 128;

/// Why a request was refused. Serialized as a postcard enum (a varint
/// variant index, then the fields).
#[non_exhaustive]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum ErrorCode {
    /// The frame is not valid COBS or not a request of this protocol
    /// version (unknown variant, bad lengths, trailing bytes).
    Malformed,
    /// The frame is longer than the device's receive buffer; it was skipped
    /// up to its terminating zero byte.
    FrameTooLarge {
        /// the longest frame the device accepts, in bytes (with COBS
        /// overhead and the terminator)
        max: u32,
    },
    /// The answer does not fit the device's transmit buffer.
    ResponseTooLarge {
        /// the device's transmit buffer, in bytes
        max: u32,
    },
    /// No such task on the device (switch, infer, delete).
    UnknownTask,
    /// The uploaded patch was made for another backbone.
    WrongBackbone {
        /// fingerprint of the device's backbone
        expected: u64,
        /// fingerprint the patch names
        found: u64,
    },
    /// The uploaded patch failed the runtime's validation (checksum,
    /// framing, signature, ...): which check, as the runtime's
    /// `FormatError` variant.
    Format(FormatKind),
    /// `Commit` before every byte of the upload arrived.
    UploadIncomplete {
        /// bytes the device holds
        held: u32,
        /// bytes the upload declared
        total_len: u32,
    },
    /// An `Upload` chunk does not start where the held bytes end; resume
    /// from `held`.
    OffsetMismatch {
        /// bytes the device holds for this upload
        held: u32,
    },
    /// More bytes than the device can take: an upload's `total_len`, or a
    /// chunk that runs past `total_len`.
    TooLarge {
        /// the most the device accepts, in bytes
        max: u32,
    },
    /// The input has the wrong number of elements (or an `F32` input a
    /// byte count that is not a multiple of 4).
    InputSize {
        /// elements the model takes (C·H·W)
        expected: u32,
        /// elements given
        got: u32,
    },
    /// A float input holds NaN or an infinity.
    NonFiniteInput {
        /// index of the first such value (NCHW order)
        index: u32,
    },
    /// No room for another task (the device's task table or its patch
    /// storage is full); delete one first.
    StorageFull,
    /// Writing the patch storage failed (I/O error, flash program error).
    Storage,
    /// The device cannot serve this now (e.g. a flash erase in progress);
    /// try again.
    Busy,
    /// The device does not implement this request.
    Unsupported,
    /// A task name that cannot be stored: empty, longer than
    /// [`crate::MAX_NAME_LEN`], the reserved `base`, or not the name inside
    /// the uploaded patch.
    InvalidName,
    /// `Commit` for a name without an upload in progress.
    NoUpload,
    /// The task cannot be deleted (the base task).
    Protected,
    /// The inference failed (a quantization the runtime refused).
    Inference,
}

impl fmt::Display for ErrorCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            ErrorCode::Malformed => f.write_str("malformed frame"),
            ErrorCode::FrameTooLarge { max } => {
                write!(f, "frame too large (the device takes at most {max} bytes)")
            }
            ErrorCode::ResponseTooLarge { max } => {
                write!(f, "response too large for the device's {max}-byte buffer")
            }
            ErrorCode::UnknownTask => f.write_str("unknown task"),
            ErrorCode::WrongBackbone { expected, found } => {
                write!(
                    f,
                    "patch made for backbone {found:016x}, the device has {expected:016x}"
                )
            }
            ErrorCode::Format(k) => write!(f, "patch refused: {k:?}"),
            ErrorCode::UploadIncomplete { held, total_len } => {
                write!(f, "upload incomplete: {held} of {total_len} bytes held")
            }
            ErrorCode::OffsetMismatch { held } => write!(
                f,
                "offset mismatch: the device holds {held} bytes; resume there"
            ),
            ErrorCode::TooLarge { max } => {
                write!(f, "too large (the device takes at most {max} bytes)")
            }
            ErrorCode::InputSize { expected, got } => {
                write!(f, "input has {got} elements, the model takes {expected}")
            }
            ErrorCode::NonFiniteInput { index } => {
                write!(f, "input value {index} is NaN or infinite")
            }
            ErrorCode::StorageFull => f.write_str("task storage full"),
            ErrorCode::Storage => f.write_str("patch storage failed"),
            ErrorCode::Busy => f.write_str("device busy"),
            ErrorCode::Unsupported => f.write_str("not supported by this device"),
            ErrorCode::InvalidName => f.write_str("invalid task name"),
            ErrorCode::NoUpload => f.write_str("no upload in progress for this name"),
            ErrorCode::Protected => f.write_str("the base task cannot be deleted"),
            ErrorCode::Inference => f.write_str("inference failed"),
        }
    }
}

/// The runtime's `graftnet::FormatError` variant, without its fields (the
/// device's `detail` text carries them).
#[non_exhaustive]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[allow(missing_docs)] // each is the runtime variant of the same name
pub enum FormatKind {
    Truncated,
    TooShort,
    Oversized,
    BadCode,
    BadMagic,
    UnsupportedVersion,
    OlderVersion,
    ChecksumMismatch,
    BadLayout,
    BadTensor,
    BadOp,
    BadEntry,
    WrongBackbone,
    TooManyClasses,
    BufferTooSmall,
    Io,
    Unsigned,
    WrongKey,
    BadSignature,
    BadKey,
    /// a variant added to the runtime after this protocol version
    Other,
}

impl From<&graftnet::FormatError> for FormatKind {
    fn from(e: &graftnet::FormatError) -> Self {
        use graftnet::FormatError as E;
        match e {
            E::Truncated { .. } => FormatKind::Truncated,
            E::TooShort { .. } => FormatKind::TooShort,
            E::Oversized { .. } => FormatKind::Oversized,
            E::BadCode { .. } => FormatKind::BadCode,
            E::BadMagic { .. } => FormatKind::BadMagic,
            E::UnsupportedVersion { .. } => FormatKind::UnsupportedVersion,
            E::OlderVersion { .. } => FormatKind::OlderVersion,
            E::ChecksumMismatch { .. } => FormatKind::ChecksumMismatch,
            E::BadLayout { .. } => FormatKind::BadLayout,
            E::BadTensor { .. } => FormatKind::BadTensor,
            E::BadOp { .. } => FormatKind::BadOp,
            E::BadEntry { .. } => FormatKind::BadEntry,
            E::WrongBackbone { .. } => FormatKind::WrongBackbone,
            E::TooManyClasses { .. } => FormatKind::TooManyClasses,
            E::BufferTooSmall { .. } => FormatKind::BufferTooSmall,
            E::Io => FormatKind::Io,
            E::Unsigned => FormatKind::Unsigned,
            E::WrongKey { .. } => FormatKind::WrongKey,
            E::BadSignature => FormatKind::BadSignature,
            E::BadKey => FormatKind::BadKey,
            _ => FormatKind::Other,
        }
    }
}

/// A refusal as a device makes it: the code and a sentence (at most
/// [`DETAIL_CAP`] bytes), owned, so no heap is needed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Failure {
    /// what went wrong, for programs
    pub code: ErrorCode,
    /// what went wrong, for people
    pub detail: heapless::String<DETAIL_CAP>,
}

impl Failure {
    /// A failure whose detail is the code's own sentence.
    pub fn new(code: ErrorCode) -> Self {
        Self::with(code, format_args!("{code}"))
    }

    /// A failure with a detail formatted from `args` (cut to
    /// [`DETAIL_CAP`] bytes at a character boundary).
    pub fn with(code: ErrorCode, args: fmt::Arguments<'_>) -> Self {
        let mut w = Truncating(heapless::String::new());
        let _ = w.write_fmt(args);
        Failure { code, detail: w.0 }
    }

    /// The refusal of a patch the runtime did not accept: `WrongBackbone`
    /// with both fingerprints, any other error as [`ErrorCode::Format`];
    /// the runtime's sentence is the detail.
    pub fn format(e: &graftnet::FormatError) -> Self {
        let code = match *e {
            graftnet::FormatError::WrongBackbone { expected, found } => {
                ErrorCode::WrongBackbone { expected, found }
            }
            _ => ErrorCode::Format(FormatKind::from(e)),
        };
        Self::with(code, format_args!("{e}"))
    }

    /// The refusal of an inference the runtime did not run.
    pub fn run(e: &graftnet::RunError) -> Self {
        let code = match *e {
            graftnet::RunError::InputSize { expected, got } => {
                ErrorCode::InputSize { expected, got }
            }
            graftnet::RunError::NonFiniteInput { index } => ErrorCode::NonFiniteInput { index },
            _ => ErrorCode::Inference,
        };
        Self::with(code, format_args!("{e}"))
    }
}

impl fmt::Display for Failure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.detail)
    }
}

impl core::error::Error for Failure {}

/// A `fmt::Write` that keeps what fits and drops the rest.
struct Truncating(heapless::String<DETAIL_CAP>);

impl fmt::Write for Truncating {
    fn write_str(&mut self, s: &str) -> fmt::Result {
        for c in s.chars() {
            if self.0.push(c).is_err() {
                break;
            }
        }
        Ok(())
    }
}

/// A frame that could not be sent or understood (framing layer, both sides).
#[non_exhaustive]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FrameError {
    /// The message does not fit the transmit buffer.
    BufferFull,
    /// The bytes are not valid COBS or not a message of this protocol.
    Malformed,
    /// A received frame is longer than the receive buffer (it was skipped).
    TooLarge,
    /// The stream ended (inside a frame or before one).
    Eof,
}

impl fmt::Display for FrameError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            FrameError::BufferFull => "message does not fit the transmit buffer",
            FrameError::Malformed => "malformed frame",
            FrameError::TooLarge => "frame longer than the receive buffer",
            FrameError::Eof => "the stream ended",
        })
    }
}

impl core::error::Error for FrameError {}

/// A request that did not get an answer ([`crate::call`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CallError<E> {
    /// reading or writing the stream failed
    Io(E),
    /// the request could not be framed, or the answer was not understood
    Frame(FrameError),
}

impl<E: fmt::Debug> fmt::Display for CallError<E> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            CallError::Io(e) => write!(f, "I/O error: {e:?}"),
            CallError::Frame(e) => write!(f, "{e}"),
        }
    }
}

impl<E: fmt::Debug> core::error::Error for CallError<E> {}
