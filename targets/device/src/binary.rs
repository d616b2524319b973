//! The binary protocol (`--protocol postcard`; `targets/protocol/PROTOCOL.md`)
//! on one stream: COBS frames in, one answer frame out per frame.
//!
//! The frame reader and the dispatch are `graftnet-protocol`'s (the same
//! code an MCU runs); this file only sizes the buffers from the model and
//! takes the shared server's lock once per frame. Frames are decoded in
//! place in the connection's receive buffer: an int8 input goes from the
//! socket into that buffer and from there into the engine's arena, with no
//! other copy.

use std::io::{Read, Write};
use std::sync::Mutex;

use graftnet_protocol::{respond, ErrorCode, Failure, FrameReader, FromStd, Response, MAX_INFER_TASKS};

use crate::server::Server;
use crate::End;

/// Bytes of request besides the input or chunk: the variant, task names
/// (at most `MAX_INFER_TASKS` of 32 bytes), lengths and offsets.
const REQUEST_OVERHEAD: usize = 4096;

/// The receive buffer, the longest request frame: an `F32` input of
/// `n_input` values (4 bytes each) plus [`REQUEST_OVERHEAD`], with COBS's
/// overhead; at least 64 KiB so that uploads go in 64 KiB chunks on any
/// model.
pub fn max_frame(n_input: usize) -> usize {
    let msg = n_input.saturating_mul(4).saturating_add(REQUEST_OVERHEAD).max(64 << 10);
    msg + msg / 254 + 2
}

/// The transmit buffer: `MAX_INFER_TASKS` results of `max_classes` scores
/// plus room for names and the other answers.
pub fn tx_len(max_classes: usize) -> usize {
    let msg = MAX_INFER_TASKS * (max_classes + 64) + 8192;
    msg + msg / 254 + 2
}

/// Serves frames read from `input` until its end, a read error or timeout,
/// or until `out()` cannot be written. `new_frame` is called before each
/// frame is waited for (a socket's deadline starts there).
pub(crate) fn serve_frames<R: Read, W: Write>(
    srv: &Mutex<Server<'_>>,
    max_frame: usize,
    tx_len: usize,
    input: &mut R,
    mut new_frame: impl FnMut(&mut R),
    mut out: impl FnMut() -> W,
) -> End {
    let mut rx = vec![0u8; max_frame];
    let mut tx = vec![0u8; tx_len];
    let mut reader = FrameReader::new(&mut rx);
    loop {
        new_frame(input);
        let frame = match reader.next(&mut FromStd(&mut *input)) {
            Ok(Some(f)) => f,
            Ok(None) => return End::Closed,
            Err(e) if matches!(e.kind(), std::io::ErrorKind::TimedOut | std::io::ErrorKind::WouldBlock) => return End::TimedOut,
            Err(_) => return End::Closed,
        };
        let n = respond(&mut *srv.lock().unwrap_or_else(|p| p.into_inner()), frame, max_frame, &mut tx);
        let mut w = out();
        if n > 0 && w.write_all(&tx[..n]).and_then(|_| w.flush()).is_err() {
            return End::Closed;
        }
    }
}

/// The frame telling a client why its connection is closed (`Busy`, with
/// `detail`).
pub(crate) fn closing_frame(detail: &str) -> Vec<u8> {
    let f = Failure::with(ErrorCode::Busy, format_args!("{detail}"));
    let mut buf = vec![0u8; 512];
    let n = graftnet_protocol::encode(&Response::Error { code: f.code, detail: &f.detail }, &mut buf).map_or(0, |b| b.len());
    buf.truncate(n);
    buf
}
