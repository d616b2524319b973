//! Framing: postcard messages in COBS frames, each ended by one zero byte.
//!
//! COBS (consistent overhead byte stuffing) removes every zero byte from a
//! message at a cost of one byte per 254, so a zero byte marks the end of a
//! frame and nothing else: a receiver that lost its place (garbage, a
//! dropped byte, a frame too long for its buffer) finds the next frame
//! boundary at the next zero byte. A message is serialized by postcard
//! and COBS-coded in place, a block at a time ([`encode`]; the bytes of
//! `postcard::to_slice_cobs`, at memory-copy speed, which keeps a 150 KB
//! inference input's framing cost to tens of microseconds); decoding undoes
//! the COBS in place, then decodes the message and refuses trailing bytes,
//! so decoded messages borrow the receive buffer.
//!
//! [`FrameReader`] cuts a byte stream into frames in a caller-owned buffer:
//! bytes are read in as large blocks as the buffer allows (one `read` per
//! block, not per byte), a frame is handed out in place, and the bytes
//! after it stay for the next call. A frame longer than the buffer is
//! skipped up to its terminator and reported once as
//! [`Frame::TooLarge`]; empty frames (a lone zero byte, which a client may
//! send to resynchronize) are skipped silently. No method panics.
//!
//! (postcard's `CobsAccumulator` does the same job with a buffer whose size
//! is a const generic and a second copy of every byte through its feed; the
//! server takes its buffers as slices from the caller, so that an MCU can
//! place them, and decodes in the buffer it read into.)

use embedded_io::{Read, Write};
use serde::{Deserialize, Serialize};

use crate::error::{CallError, FrameError};
use crate::message::{Request, Response};

/// One frame from [`FrameReader::next`].
#[derive(Debug, PartialEq, Eq)]
pub enum Frame<'f> {
    /// The frame's COBS bytes, without the terminating zero byte (decode
    /// with [`decode_request`] / [`decode_response`]).
    Data(&'f mut [u8]),
    /// A frame longer than the buffer; its bytes were skipped.
    TooLarge,
}

/// Cuts a byte stream into COBS frames in a caller-owned buffer (module
/// doc).
pub struct FrameReader<'b> {
    buf: &'b mut [u8],
    /// first byte not yet handed out
    start: usize,
    /// end of the bytes read
    end: usize,
    /// inside a frame longer than the buffer: bytes are dropped up to the
    /// next zero byte
    skipping: bool,
}

impl<'b> FrameReader<'b> {
    /// A reader over `buf`: frames up to `buf.len()` bytes, terminator
    /// included, are received.
    pub fn new(buf: &'b mut [u8]) -> Self {
        FrameReader {
            buf,
            start: 0,
            end: 0,
            skipping: false,
        }
    }

    /// The longest frame received, in bytes (terminator included).
    pub fn capacity(&self) -> usize {
        self.buf.len()
    }

    /// The next non-empty frame read from `r`; `None` at the end of the
    /// stream (a partial frame before it is dropped).
    pub fn next<'s, R: Read>(&'s mut self, r: &mut R) -> Result<Option<Frame<'s>>, R::Error> {
        loop {
            let window = self.buf.get(self.start..self.end).unwrap_or(&[]);
            if let Some(i) = memchr::memchr(0, window) {
                let (s, e) = (self.start, self.start + i);
                self.start = e + 1;
                if self.skipping {
                    self.skipping = false;
                    return Ok(Some(Frame::TooLarge));
                }
                if e == s {
                    continue;
                }
                return Ok(self.buf.get_mut(s..e).map(Frame::Data));
            }
            if self.skipping {
                (self.start, self.end) = (0, 0);
            } else if self.start > 0 {
                self.buf.copy_within(self.start..self.end, 0);
                self.end -= self.start;
                self.start = 0;
            }
            if self.end >= self.buf.len() {
                // A whole buffer without a terminator: the frame is too long.
                self.skipping = true;
                (self.start, self.end) = (0, 0);
                if self.buf.is_empty() {
                    return Ok(None);
                }
            }
            let n = r.read(&mut self.buf[self.end..])?;
            if n == 0 {
                return Ok(None);
            }
            self.end += n;
        }
    }
}

/// Encodes `msg` as one COBS frame (terminator included) into `buf`.
///
/// The message is serialized by postcard (`postcard::to_slice`) near the
/// end of `buf` and COBS-encoded forward into its start ([`cobs_encode`]),
/// a block (up to 254 bytes) at a time: the same bytes as
/// `postcard::to_slice_cobs`, which encodes byte by byte, at memory-copy
/// speed. `buf` needs `buf.len() / 254 + 3` bytes beyond the message (the
/// room the codes are written into), slightly more than the frame itself.
pub fn encode<'b, T: Serialize>(msg: &T, buf: &'b mut [u8]) -> Result<&'b mut [u8], FrameError> {
    // Room for the code bytes of any message that fits (one per 254 bytes,
    // one more, and the terminator).
    let k = buf.len() / 254 + 3;
    let n = match buf.get_mut(k..) {
        Some(tail) => postcard::to_slice(msg, tail)
            .map_err(|e| match e {
                postcard::Error::SerializeBufferFull => FrameError::BufferFull,
                _ => FrameError::Malformed,
            })?
            .len(),
        None => return Err(FrameError::BufferFull),
    };
    if n + n / 254 + 2 > buf.len() {
        return Err(FrameError::BufferFull);
    }
    let len = cobs_encode(buf, k, n);
    Ok(&mut buf[..len])
}

/// COBS-encodes the `n` bytes at `buf[k..k + n]` into `buf[..]`, in place,
/// and appends the zero terminator; returns the frame length. Needs
/// `k >= n / 254 + 2` (the code bytes outrun the data by at most that)
/// and `buf.len() >= n + n / 254 + 2`.
fn cobs_encode(buf: &mut [u8], k: usize, n: usize) -> usize {
    let (mut src, end, mut out) = (k, k + n, 0);
    loop {
        // One block: up to 254 data bytes before a zero (or the end).
        let limit = (end - src).min(254);
        let run = memchr::memchr(0, &buf[src..src + limit]).unwrap_or(limit);
        buf[out] = run as u8 + 1;
        buf.copy_within(src..src + run, out + 1);
        out += run + 1;
        src += run;
        if run == 254 {
            // A full block carries no zero: the next block starts here.
            if src == end {
                break;
            }
            continue;
        }
        if src == end {
            break;
        }
        src += 1; // the zero the block's code stands for
        if src == end {
            // A message ending in zero: one more, empty block.
            buf[out] = 1;
            out += 1;
            break;
        }
    }
    buf[out] = 0;
    out + 1
}

/// Decodes COBS `frame` (with or without its terminator) in place: the
/// message length, `None` if it is not valid COBS. Block-wise, like
/// [`cobs_encode`]; accepts exactly what `cobs::decode_in_place` accepts.
pub(crate) fn cobs_decode(frame: &mut [u8]) -> Option<usize> {
    let end = memchr::memchr(0, frame).unwrap_or(frame.len());
    if end == 0 {
        return None; // no block at all
    }
    let (mut src, mut out) = (0, 0);
    while src < end {
        let code = frame[src] as usize;
        let block_end = src + code;
        if block_end > end {
            return None;
        }
        frame.copy_within(src + 1..block_end, out);
        out += code - 1;
        src = block_end;
        if code != 0xff && src < end {
            frame[out] = 0;
            out += 1;
        }
    }
    Some(out)
}

/// Decodes a frame's bytes (from [`Frame::Data`], or a whole frame with its
/// terminator) as `T`, in place. The frame must hold exactly one message:
/// trailing bytes make it malformed (`postcard::from_bytes_cobs` would
/// ignore them).
fn decode<'f, T: Deserialize<'f>>(frame: &'f mut [u8]) -> Result<T, FrameError> {
    let n = cobs_decode(frame).ok_or(FrameError::Malformed)?;
    match postcard::take_from_bytes(frame.get(..n).unwrap_or(&[])) {
        Ok((msg, [])) => Ok(msg),
        _ => Err(FrameError::Malformed),
    }
}

/// Decodes a request frame in place; the request borrows `frame`.
pub fn decode_request(frame: &mut [u8]) -> Result<Request<'_>, FrameError> {
    decode(frame)
}

/// Decodes a response frame in place; the response borrows `frame`.
pub fn decode_response(frame: &mut [u8]) -> Result<Response<'_>, FrameError> {
    decode(frame)
}

/// Sends `req` (framed in `tx`) and reads the answer with `rx`: the client
/// side of one exchange. The response borrows `rx`'s buffer.
pub fn call<'r, IO: Read + Write>(
    io: &mut IO,
    req: &Request<'_>,
    tx: &mut [u8],
    rx: &'r mut FrameReader<'_>,
) -> Result<Response<'r>, CallError<IO::Error>> {
    let frame = encode(req, tx).map_err(CallError::Frame)?;
    io.write_all(frame).map_err(CallError::Io)?;
    io.flush().map_err(CallError::Io)?;
    match rx.next(io).map_err(CallError::Io)? {
        None => Err(CallError::Frame(FrameError::Eof)),
        Some(Frame::TooLarge) => Err(CallError::Frame(FrameError::TooLarge)),
        Some(Frame::Data(f)) => decode_response(f).map_err(CallError::Frame),
    }
}
