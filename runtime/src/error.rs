//! Typed errors, one small enum per layer. All are `Copy`, carry the indices
//! needed to find the problem, and print a sentence that says what is wrong.

use core::fmt;

use crate::format::signature::KeyId;

/// A blob (backbone or patch) failed validation. Returned by the parsers and
/// by [`crate::Engine::apply`]; nothing is half-applied when it is returned.
#[non_exhaustive]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FormatError {
    /// The buffer is shorter than the blob says (or than a header).
    Truncated {
        /// bytes the blob needs
        need: u32,
        /// bytes the buffer holds
        have: u32,
    },
    /// The header declares a total length shorter than the blob's fixed
    /// part (its header, or for a patch its header and name).
    TooShort {
        /// total length the header declares
        declared: u32,
        /// the fewest bytes a blob of this kind has
        min: u32,
    },
    /// The backbone declares more memory than its graph can use: an arena
    /// larger than all its tensors side by side, or a tensor capacity larger
    /// than its shape (or the class capacity) needs. Refused so that a
    /// corrupt or hostile header cannot make a loader allocate gigabytes.
    Oversized {
        /// which size ("arena", "tensor capacity")
        what: &'static str,
        /// bytes declared
        declared: u32,
        /// the most the graph can use
        max: u64,
    },
    /// A per-channel scale or bias code is outside the range the exporter
    /// writes (infinite, NaN or saturated).
    BadCode {
        /// entry index in its task section
        entry: u32,
        /// op the entry targets
        op: u16,
        /// output channel
        channel: u16,
        /// the code
        code: u16,
        /// what is wrong
        what: &'static str,
    },
    /// The first four bytes are not the expected magic.
    BadMagic {
        /// the magic that was expected (`b"GNBB"` or `b"GNPT"`)
        expected: [u8; 4],
        /// the bytes found
        found: [u8; 4],
    },
    /// A format version this build cannot read.
    UnsupportedVersion {
        /// version in the blob
        found: u16,
        /// version this build reads
        supported: u16,
    },
    /// The patch's task version is older than one the caller accepted
    /// before ([`crate::Engine::apply_newer`]): a rollback.
    OlderVersion {
        /// the patch's task version
        version: u32,
        /// the lowest version the caller accepts
        min: u32,
    },
    /// The CRC-32 over the blob does not match the stored one: corruption.
    ChecksumMismatch {
        /// stored checksum
        stored: u32,
        /// computed checksum
        computed: u32,
    },
    /// A section offset or length points outside the blob or overlaps another.
    BadLayout {
        /// which section
        section: &'static str,
    },
    /// A tensor record is inconsistent.
    BadTensor {
        /// tensor index
        tensor: u16,
        /// what is wrong
        what: &'static str,
    },
    /// An op record is inconsistent.
    BadOp {
        /// op index
        op: u16,
        /// what is wrong
        what: &'static str,
    },
    /// A task entry (in a patch, or the backbone's base task) is inconsistent.
    BadEntry {
        /// entry index
        entry: u32,
        /// op the entry targets
        op: u16,
        /// what is wrong
        what: &'static str,
    },
    /// The patch was made for another backbone.
    WrongBackbone {
        /// fingerprint of the backbone in use
        expected: u64,
        /// fingerprint the patch was made for
        found: u64,
    },
    /// The patch's classifier has more classes than the backbone's arena holds.
    TooManyClasses {
        /// classes in the patch
        classes: u16,
        /// the backbone's capacity
        max: u16,
    },
    /// A streamed patch does not fit the caller's buffer.
    BufferTooSmall {
        /// bytes needed
        need: u32,
        /// bytes available
        have: u32,
    },
    /// The reader failed or ended early while streaming a patch.
    Io,
    /// A verification key is configured, and the blob carries no signature
    /// trailer (`FORMAT.md`, "Signatures"): nothing, or something other
    /// than an Ed25519 trailer, follows its declared length.
    Unsigned,
    /// The blob is signed with another key than the configured one.
    WrongKey {
        /// id of the configured key
        expected: KeyId,
        /// id of the key the trailer names
        found: KeyId,
    },
    /// The signature does not verify: the blob (or its trailer) was
    /// modified after it was signed.
    BadSignature,
    /// 32 bytes that are no usable Ed25519 public key.
    BadKey,
    /// The task needs more arena than the engine was given (a patch that
    /// brings its own head, or runs at another input size).
    ArenaTooSmall {
        /// bytes needed
        need: u32,
        /// bytes the engine has
        have: u32,
    },
    /// The task needs a longer parameter table than the engine was given
    /// (a patch that brings its own head).
    ParamsTooSmall {
        /// entries needed
        need: u32,
        /// entries the engine has
        have: u32,
    },
}

impl fmt::Display for FormatError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            FormatError::Truncated { need, have } => {
                write!(f, "blob truncated: needs {need} bytes, buffer holds {have}")
            }
            FormatError::TooShort { declared, min } => write!(
                f,
                "header declares a total length of {declared} bytes, less than the {min} bytes of its fixed part"
            ),
            FormatError::Oversized {
                what,
                declared,
                max,
            } => write!(
                f,
                "{what} of {declared} bytes declared, but the graph never needs more than {max}"
            ),
            FormatError::BadCode {
                entry,
                op,
                channel,
                code,
                what,
            } => write!(
                f,
                "task entry {entry} (op {op}), channel {channel}: code {code:#06x} {what}"
            ),
            FormatError::BadMagic { expected, found } => write!(
                f,
                "bad magic {:?}, expected {:?} (not a graftnet blob of this kind)",
                found, expected
            ),
            FormatError::UnsupportedVersion { found, supported } => write!(
                f,
                "format version {found} is not supported (this build reads version {supported})"
            ),
            FormatError::ChecksumMismatch { stored, computed } => write!(
                f,
                "checksum mismatch (stored {stored:#010x}, computed {computed:#010x}): the blob is corrupted"
            ),
            FormatError::BadLayout { section } => {
                write!(f, "section '{section}' lies outside the blob or overlaps another")
            }
            FormatError::BadTensor { tensor, what } => write!(f, "tensor {tensor}: {what}"),
            FormatError::BadOp { op, what } => write!(f, "op {op}: {what}"),
            FormatError::BadEntry { entry, op, what } => {
                write!(f, "patch entry {entry} (op {op}): {what}")
            }
            FormatError::OlderVersion { version, min } => write!(
                f,
                "patch is version {version} of its task, older than version {min} accepted before (a rollback)"
            ),
            FormatError::WrongBackbone { expected, found } => write!(
                f,
                "patch was made for backbone {found:016x}, but the loaded backbone is {expected:016x}"
            ),
            FormatError::TooManyClasses { classes, max } => write!(
                f,
                "patch has {classes} classes, the backbone's arena holds at most {max}"
            ),
            FormatError::BufferTooSmall { need, have } => {
                write!(f, "patch needs a {need}-byte buffer, got {have}")
            }
            FormatError::Io => write!(f, "reading the patch failed or ended early"),
            FormatError::ArenaTooSmall { need, have } => write!(
                f,
                "the task needs an arena of {need} bytes, the engine has {have}"
            ),
            FormatError::ParamsTooSmall { need, have } => write!(
                f,
                "the task needs a parameter table of {need} entries, the engine has {have}"
            ),
            FormatError::Unsigned => write!(
                f,
                "the blob is not signed, and signatures are required (a verification key is set)"
            ),
            FormatError::WrongKey { expected, found } => write!(
                f,
                "the blob is signed with key {found}, not with the verification key {expected}"
            ),
            FormatError::BadSignature => write!(
                f,
                "bad signature: the blob was modified after it was signed (or its signature is corrupted)"
            ),
            FormatError::BadKey => write!(f, "not a valid Ed25519 public key"),
        }
    }
}

impl core::error::Error for FormatError {}

/// Setting up or running the engine failed.
#[non_exhaustive]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RunError {
    /// The activation arena is smaller than the backbone's plan.
    ArenaTooSmall {
        /// bytes needed
        need: u32,
        /// bytes given
        have: u32,
    },
    /// The per-channel parameter table is smaller than the backbone needs.
    ParamsTooSmall {
        /// entries needed
        need: u32,
        /// entries given
        have: u32,
    },
    /// The input has the wrong number of elements.
    InputSize {
        /// elements expected (C*H*W)
        expected: u32,
        /// elements given
        got: u32,
    },
    /// A task's quantization parameters cannot be represented (a scale of
    /// zero, infinity or NaN, or a requantization multiplier >= 2^30).
    BadQuantization {
        /// op index
        op: u16,
    },
    /// A float input holds NaN or an infinity (a sensor or preprocessing
    /// fault); refused rather than quantized to an arbitrary int8 value.
    NonFiniteInput {
        /// index of the first such value (NCHW order)
        index: u32,
    },
    /// The branch buffer given to `Engine::run_tasks` cannot hold the
    /// tensors kept at the branch point (`SharedPrefix::branch_len`).
    BranchTooSmall {
        /// bytes needed
        need: u32,
        /// bytes given
        have: u32,
    },
}

impl fmt::Display for RunError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            RunError::ArenaTooSmall { need, have } => {
                write!(
                    f,
                    "arena too small: the plan needs {need} bytes, got {have}"
                )
            }
            RunError::ParamsTooSmall { need, have } => write!(
                f,
                "parameter table too small: needs {need} entries, got {have}"
            ),
            RunError::InputSize { expected, got } => {
                write!(f, "input has {got} elements, the model takes {expected}")
            }
            RunError::BadQuantization { op } => write!(
                f,
                "op {op}: quantization parameters out of range (zero, infinite or huge scale ratio)"
            ),
            RunError::NonFiniteInput { index } => {
                write!(f, "input value {index} (NCHW order) is NaN or infinite")
            }
            RunError::BranchTooSmall { need, have } => write!(
                f,
                "branch buffer too small: the tasks' shared prefix keeps {need} bytes, got {have}"
            ),
        }
    }
}

impl core::error::Error for RunError {}

/// Any runtime error.
#[non_exhaustive]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Error {
    /// A blob failed validation.
    Format(FormatError),
    /// Engine setup or inference failed.
    Run(RunError),
}

impl From<FormatError> for Error {
    fn from(e: FormatError) -> Self {
        Error::Format(e)
    }
}

impl From<RunError> for Error {
    fn from(e: RunError) -> Self {
        Error::Run(e)
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::Format(e) => e.fmt(f),
            Error::Run(e) => e.fmt(f),
        }
    }
}

impl core::error::Error for Error {
    fn source(&self) -> Option<&(dyn core::error::Error + 'static)> {
        match self {
            Error::Format(e) => Some(e),
            Error::Run(e) => Some(e),
        }
    }
}
