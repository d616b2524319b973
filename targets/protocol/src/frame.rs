//! Framing: postcard messages in COBS frames, each ended by one zero byte.
//!
//! COBS (consistent overhead byte stuffing) removes every zero byte from a
//! message at a cost of one byte per 254, so a zero byte marks the end of a
//! frame and nothing else: a receiver that lost its place (garbage, a
//! dropped byte, a frame too long for its buffer) finds the next frame
//! boundary at the next zero byte. Encoding is `postcard::to_slice_cobs`,
//! decoding the COBS bytes in place (`cobs::decode_in_place`, as
//! `postcard::from_bytes_cobs` does) and then the message, refusing trailing bytes (in place, so decoded messages
//! borrow the receive buffer).
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
            if let Some(i) = window.iter().position(|&b| b == 0) {
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
pub fn encode<'b, T: Serialize>(msg: &T, buf: &'b mut [u8]) -> Result<&'b mut [u8], FrameError> {
    postcard::to_slice_cobs(msg, buf).map_err(|e| match e {
        postcard::Error::SerializeBufferFull => FrameError::BufferFull,
        _ => FrameError::Malformed,
    })
}

/// Decodes a frame's bytes (from [`Frame::Data`], or a whole frame with its
/// terminator) as `T`, in place. The frame must hold exactly one message:
/// trailing bytes make it malformed (`postcard::from_bytes_cobs` would
/// ignore them).
fn decode<'f, T: Deserialize<'f>>(frame: &'f mut [u8]) -> Result<T, FrameError> {
    let n = cobs::decode_in_place(frame).map_err(|_| FrameError::Malformed)?;
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
