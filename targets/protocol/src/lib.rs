//! graftnet's device protocol: how a host (or anything else) talks to a
//! device running graftnet — an MCU over a UART, a Linux board over
//! stdin/stdout, a Unix socket or TCP.
//!
//! Requests and responses ([`Request`], [`Response`]) are postcard messages
//! in COBS frames (each ended by a zero byte; [`frame`]) over any
//! `embedded_io::{Read, Write}`. Payloads are borrowed from the receive
//! buffer and lists have fixed capacities (`heapless`), so a `no_std`
//! device serves the protocol without a heap: it implements [`Device`] and
//! calls [`serve`] with two buffers. The normative description — framing,
//! every message and field, error codes, versioning, upload semantics — is
//! `PROTOCOL.md` beside this crate's `Cargo.toml`.
//!
//! ```text
//! struct Board { .. }                       // engine, patch storage
//! impl graftnet_protocol::Device for Board { .. }
//! let (mut rx, mut tx) = ([0u8; 4096], [0u8; 1024]);
//! graftnet_protocol::serve(&mut uart, &mut board, &mut rx, &mut tx)?;
//! ```
//!
//! A client sends with [`call`] (or [`encode`] and a [`FrameReader`]) and
//! checks [`Info::protocol`] against [`PROTOCOL_VERSION`] first.
#![no_std]
#![deny(unsafe_code)]
#![warn(missing_docs)]
// A `Failure` (160 bytes, its detail inline) and the list-carrying
// `Response` variants (a `TaskList` is about 1 KB) live on the stack by
// design: a `no_std` device has no heap to box them into.
#![allow(clippy::result_large_err, clippy::large_enum_variant)]

#[cfg(feature = "std")]
extern crate std;

pub mod error;
pub mod frame;
pub mod message;
pub mod server;
#[cfg(feature = "std")]
mod std_io;

#[cfg(test)]
mod tests;

pub use error::{CallError, ErrorCode, Failure, FormatKind, FrameError, DETAIL_CAP};
pub use frame::{call, decode_request, decode_response, encode, Frame, FrameReader};
pub use message::{Info, Input, Request, Response, TaskEntry, TaskList, TaskScores};
pub use server::{answer, check_name, respond, serve, Device, UploadState, UploadStep, MIN_TX_BUF};
#[cfg(feature = "std")]
pub use std_io::FromStd;

/// The protocol version this crate speaks ([`Info::protocol`]). It changes
/// when a message's encoding changes incompatibly; appending a variant to
/// [`Request`], [`Response`] or [`ErrorCode`] does not change it.
pub const PROTOCOL_VERSION: u16 = 1;

/// Tasks one [`Request::Infer`] may name.
pub const MAX_INFER_TASKS: usize = 8;

/// Entries of a [`TaskList`] (`base` included): the most resident tasks a
/// device reports.
pub const MAX_TASKS: usize = 32;

/// Longest task name a device stores, in bytes (the MCU patch partition's
/// name field).
pub const MAX_NAME_LEN: usize = 32;

/// The backbone's own task.
pub const BASE_TASK: &str = "base";

/// Bytes of COBS frame around a message of `n` bytes: one per 254 bytes
/// (rounded up, at least one) and the terminating zero. A client sizes
/// upload chunks so that `chunk + name + 32 + cobs_overhead(...)` fits the
/// device's [`Info::max_frame`].
pub const fn cobs_overhead(n: usize) -> usize {
    n / 254 + 2
}

/// serde for `&[i8]` as a postcard byte array (a varint length, then one
/// byte per value, two's complement), borrowed when decoding.
mod i8_bytes {
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(v: &&[i8], s: S) -> Result<S::Ok, S::Error> {
        s.serialize_bytes(bytemuck::cast_slice(v))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<&'de [i8], D::Error> {
        <&'de [u8]>::deserialize(d).map(bytemuck::cast_slice)
    }
}
