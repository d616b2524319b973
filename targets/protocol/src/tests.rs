//! Round trips of every message, byte-exact frames, and the server loop
//! over an in-memory stream: garbage, truncated, oversized and empty frames
//! are answered (or skipped) and the loop goes on.

extern crate std;

use std::string::String;
use std::vec;
use std::vec::Vec;

use crate::*;

/// An in-memory stream: reads `input` at most `chunk` bytes per `read`,
/// collects what is written.
struct MemIo<'a> {
    input: &'a [u8],
    chunk: usize,
    out: Vec<u8>,
}

impl embedded_io::ErrorType for MemIo<'_> {
    type Error = core::convert::Infallible;
}

impl embedded_io::Read for MemIo<'_> {
    fn read(&mut self, buf: &mut [u8]) -> Result<usize, Self::Error> {
        let n = buf.len().min(self.chunk).min(self.input.len());
        buf[..n].copy_from_slice(&self.input[..n]);
        self.input = &self.input[n..];
        Ok(n)
    }
}

impl embedded_io::Write for MemIo<'_> {
    fn write(&mut self, buf: &[u8]) -> Result<usize, Self::Error> {
        self.out.extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> Result<(), Self::Error> {
        Ok(())
    }
}

/// A device with two tasks of 3 classes whose scores are the first input
/// values plus the task's index, and a RAM patch store (a "patch" is any
/// bytes starting with `GNPT`).
struct Mock {
    tasks: Vec<(String, Vec<u8>)>,
    active: usize,
    upload: Option<UploadState>,
    staging: Vec<u8>,
    scores: Vec<i8>,
}

impl Mock {
    fn new() -> Self {
        let tasks = vec![("base".into(), vec![]), ("a".into(), b"GNPTa".to_vec())];
        Mock {
            tasks,
            active: 0,
            upload: None,
            staging: vec![],
            scores: vec![0; 3 * MAX_INFER_TASKS],
        }
    }
    fn find(&self, t: &str) -> Result<usize, Failure> {
        self.tasks
            .iter()
            .position(|(n, _)| n == t)
            .ok_or(Failure::new(ErrorCode::UnknownTask))
    }
}

impl Device for Mock {
    fn info(&mut self) -> Result<Info<'_>, Failure> {
        Ok(Info {
            protocol: PROTOCOL_VERSION,
            device: "mock",
            runtime: "0",
            backbone: 0x1234,
            input: [1, 2, 2],
            max_classes: 3,
            arena_len: 64,
            params_len: 9,
            kernels: "scalar",
            tasks: self.tasks.len() as u16,
            active: &self.tasks[self.active].0,
            max_frame: 0,
            max_patch: 64,
        })
    }
    fn tasks(&mut self) -> Result<TaskList<'_>, Failure> {
        let mut tasks = heapless::Vec::new();
        for (n, b) in &self.tasks {
            let _ = tasks.push(TaskEntry {
                name: n,
                classes: 3,
                version: 0,
                bytes: b.len() as u32,
            });
        }
        Ok(TaskList {
            active: &self.tasks[self.active].0,
            tasks,
        })
    }
    fn switch(&mut self, task: &str) -> Result<(), Failure> {
        self.active = self.find(task)?;
        Ok(())
    }
    fn infer(
        &mut self,
        tasks: &[&str],
        input: Input<'_>,
    ) -> Result<heapless::Vec<TaskScores<'_>, MAX_INFER_TASKS>, Failure> {
        if input.len() != Some(4) {
            return Err(Failure::new(ErrorCode::InputSize {
                expected: 4,
                got: input.len().unwrap_or(0) as u32,
            }));
        }
        let x: Vec<i8> = match input {
            Input::I8(v) => v.to_vec(),
            Input::F32(_) => input.f32_values().map(|f| f as i8).collect(),
        };
        let mut idx = Vec::new();
        for t in tasks {
            idx.push(self.find(t)?);
        }
        if idx.is_empty() {
            idx.push(self.active);
        }
        for (k, &i) in idx.iter().enumerate() {
            for (s, &v) in self.scores[k * 3..k * 3 + 3].iter_mut().zip(&x) {
                *s = v.wrapping_add(i as i8);
            }
            self.active = i;
        }
        let mut out = heapless::Vec::new();
        for (k, (&i, s)) in idx.iter().zip(self.scores.chunks(3)).enumerate() {
            let _ = out.push(TaskScores {
                task: &self.tasks[i].0,
                scores: s,
                scale: 0.5,
                zero_point: -1,
                top1: 0,
                us: k as u32,
            });
        }
        Ok(out)
    }
    fn upload(
        &mut self,
        name: &str,
        total_len: u32,
        offset: u32,
        chunk: &[u8],
    ) -> Result<u32, Failure> {
        match UploadState::plan(
            self.upload.as_ref(),
            name,
            total_len,
            offset,
            chunk.len(),
            64,
        )? {
            UploadStep::Query { held } => Ok(held),
            UploadStep::Start => {
                self.staging.clear();
                self.staging.extend_from_slice(chunk);
                self.upload = Some(UploadState::started(name, total_len, chunk.len() as u32));
                Ok(chunk.len() as u32)
            }
            UploadStep::Append { .. } => {
                self.staging.extend_from_slice(chunk);
                let u = self.upload.as_mut().unwrap();
                u.held += chunk.len() as u32;
                Ok(u.held)
            }
        }
    }
    fn commit(&mut self, name: &str) -> Result<TaskEntry<'_>, Failure> {
        UploadState::complete(self.upload.as_ref(), name)?;
        self.upload = None;
        if !self.staging.starts_with(b"GNPT") {
            return Err(Failure::format(&graftnet::FormatError::BadMagic {
                expected: *b"GNPT",
                found: [0; 4],
            }));
        }
        self.tasks.retain(|(n, _)| n != name);
        self.tasks
            .push((name.into(), core::mem::take(&mut self.staging)));
        let (n, b) = self.tasks.last().unwrap();
        Ok(TaskEntry {
            name: n,
            classes: 3,
            version: 0,
            bytes: b.len() as u32,
        })
    }
    fn delete(&mut self, name: &str) -> Result<(), Failure> {
        if name == BASE_TASK {
            return Err(Failure::new(ErrorCode::Protected));
        }
        let i = self.find(name)?;
        self.tasks.remove(i);
        self.active = if self.active == i {
            0
        } else {
            self.active - (self.active > i) as usize
        };
        Ok(())
    }
}

fn frame<T: serde::Serialize>(m: &T) -> Vec<u8> {
    let mut buf = vec![0u8; 4096];
    encode(m, &mut buf).unwrap().to_vec()
}

/// Serves `input` (read `chunk` bytes at a time) on `dev` with an
/// `rx`-byte receive buffer; returns the answer frames' bytes.
fn serve_all(dev: &mut Mock, input: &[u8], chunk: usize, rx: usize) -> Vec<Vec<u8>> {
    let mut io = MemIo {
        input,
        chunk,
        out: vec![],
    };
    let (mut rxb, mut txb) = (vec![0u8; rx], vec![0u8; 1024]);
    serve(&mut io, dev, &mut rxb, &mut txb).unwrap();
    io.out
        .split(|&b| b == 0)
        .filter(|f| !f.is_empty())
        .map(|f| f.to_vec())
        .collect()
}

fn code_of(f: &mut [u8]) -> Option<ErrorCode> {
    match decode_response(f).unwrap() {
        Response::Error { code, .. } => Some(code),
        _ => None,
    }
}

fn names<'a>(v: &[&'a str]) -> heapless::Vec<&'a str, MAX_INFER_TASKS> {
    heapless::Vec::from_slice(v).unwrap()
}

#[test]
fn every_request_round_trips() {
    let f32s: Vec<u8> = [1.5f32, -2.0, 0.0, 3.25]
        .iter()
        .flat_map(|x| x.to_le_bytes())
        .collect();
    let reqs = [
        Request::Info,
        Request::Tasks,
        Request::Switch { task: "mnist-sb" },
        Request::Infer {
            tasks: names(&[]),
            input: Input::I8(&[-128, 0, 127, 5]),
        },
        Request::Infer {
            tasks: names(&["a", "b", "c", "d", "e", "f", "g", "h"]),
            input: Input::F32(&f32s),
        },
        Request::Upload {
            name: "t",
            total_len: 1 << 20,
            offset: 4096,
            chunk: &[0, 1, 2, 0, 255],
        },
        Request::Upload {
            name: "t",
            total_len: 9,
            offset: 0,
            chunk: &[],
        },
        Request::Commit { name: "t" },
        Request::Delete { name: "t" },
        Request::SelfTest,
    ];
    for r in &reqs {
        let mut f = frame(r);
        assert_eq!(
            f.iter().filter(|&&b| b == 0).count(),
            1,
            "{r:?}: one zero byte, the terminator"
        );
        assert_eq!(f.last(), Some(&0));
        assert_eq!(&decode_request(&mut f).unwrap(), r);
    }
    let Request::Infer { input, .. } = &reqs[4] else {
        unreachable!()
    };
    assert_eq!(
        input.f32_values().collect::<Vec<_>>(),
        [1.5, -2.0, 0.0, 3.25]
    );
    assert_eq!(input.len(), Some(4));
    assert_eq!(Input::F32(&[0; 5]).len(), None);
}

#[test]
fn every_response_round_trips() {
    let mut tasks = heapless::Vec::new();
    tasks
        .push(TaskEntry {
            name: "base",
            classes: 10,
            version: 0,
            bytes: 0,
        })
        .unwrap();
    tasks
        .push(TaskEntry {
            name: "x",
            classes: 2,
            version: 7,
            bytes: 4242,
        })
        .unwrap();
    let mut scores = heapless::Vec::new();
    scores
        .push(TaskScores {
            task: "x",
            scores: &[-3, 100, 0],
            scale: 0.125,
            zero_point: -4,
            top1: 1,
            us: 812,
        })
        .unwrap();
    let info = Info {
        protocol: PROTOCOL_VERSION,
        device: "graftnet-device 0.1.0 (rpi4)",
        runtime: "0.1.0",
        backbone: 0xdead_beef_0123_4567,
        input: [3, 224, 224],
        max_classes: 1000,
        arena_len: 1 << 20,
        params_len: 17056,
        kernels: "neon",
        tasks: 2,
        active: "x",
        max_frame: 262144,
        max_patch: 1 << 24,
    };
    let resps = [
        Response::Info(info),
        Response::Tasks(TaskList { active: "x", tasks }),
        Response::Switched { task: "x" },
        Response::Infer(scores),
        Response::Upload {
            name: "x",
            total_len: 10,
            held: 4,
        },
        Response::Committed(TaskEntry {
            name: "x",
            classes: 2,
            version: 7,
            bytes: 10,
        }),
        Response::Deleted { name: "x" },
        Response::SelfTest {
            passed: 40,
            failed: 0,
        },
        Response::Error {
            code: ErrorCode::WrongBackbone {
                expected: 1,
                found: u64::MAX,
            },
            detail: "made for another backbone",
        },
        Response::Error {
            code: ErrorCode::Format(FormatKind::ChecksumMismatch),
            detail: "",
        },
        Response::Error {
            code: ErrorCode::OffsetMismatch { held: 4096 },
            detail: "resume",
        },
    ];
    for r in &resps {
        let mut f = frame(r);
        assert_eq!(&decode_response(&mut f).unwrap(), r);
    }
    let Response::Infer(s) = &resps[3] else {
        unreachable!()
    };
    let d: Vec<f32> = s[0].dequantized().collect();
    assert_eq!(d, [0.125, 13.0, 0.5]);
}

/// Pinned bytes: the wire format must not drift (`PROTOCOL.md` examples).
#[test]
fn frames_are_byte_exact() {
    assert_eq!(frame(&Request::Info), [0x01, 0x01, 0x00]);
    // Switch = variant 2, then "ab" as varint length 2 + bytes.
    assert_eq!(
        frame(&Request::Switch { task: "ab" }),
        [0x05, 0x02, 0x02, b'a', b'b', 0x00]
    );
    // Infer (3), no tasks (0), I8 (0), 2 values (2), -1 0 -> 0xff 0x00;
    // raw 03 00 00 02 ff 00, in COBS blocks 02 03 | 01 | 03 02 ff | 01, then 00.
    assert_eq!(
        frame(&Request::Infer {
            tasks: names(&[]),
            input: Input::I8(&[-1, 0])
        }),
        [0x02, 0x03, 0x01, 0x03, 0x02, 0xff, 0x01, 0x00]
    );
    // Error (8), code UnknownTask (3), detail "" (0).
    assert_eq!(
        frame(&Response::Error {
            code: ErrorCode::UnknownTask,
            detail: ""
        }),
        [0x03, 0x08, 0x03, 0x01, 0x00]
    );
    let mut bytes = frame(&Response::Error {
        code: ErrorCode::UnknownTask,
        detail: "",
    });
    assert_eq!(bytes[..], [0x03, 0x08, 0x03, 0x01, 0x00]);
    assert!(matches!(
        decode_response(&mut bytes).unwrap(),
        Response::Error {
            code: ErrorCode::UnknownTask,
            detail: ""
        }
    ));
}

#[test]
fn the_loop_answers_every_request() {
    let mut input = Vec::new();
    let reqs = [
        Request::Info,
        Request::Tasks,
        Request::Switch { task: "a" },
        Request::Infer {
            tasks: names(&["base", "a"]),
            input: Input::I8(&[1, 2, 3, 4]),
        },
        Request::Upload {
            name: "n",
            total_len: 6,
            offset: 0,
            chunk: b"GNP",
        },
        Request::Upload {
            name: "n",
            total_len: 6,
            offset: 0,
            chunk: &[],
        },
        Request::Upload {
            name: "n",
            total_len: 6,
            offset: 3,
            chunk: b"T!!",
        },
        Request::Commit { name: "n" },
        Request::Delete { name: "a" },
        Request::SelfTest,
    ];
    for r in &reqs {
        input.extend(frame(r));
    }
    let mut dev = Mock::new();
    let mut out = serve_all(&mut dev, &input, 7, 256);
    assert_eq!(out.len(), reqs.len());
    let mut it = out.iter_mut().map(|f| {
        f.push(0);
        decode_response(f).unwrap()
    });
    let Some(Response::Info(i)) = it.next() else {
        panic!()
    };
    assert_eq!((i.max_frame, i.active, i.tasks), (256, "base", 2));
    let Some(Response::Tasks(t)) = it.next() else {
        panic!()
    };
    assert_eq!(
        t.tasks.iter().map(|t| t.name).collect::<Vec<_>>(),
        ["base", "a"]
    );
    assert_eq!(it.next(), Some(Response::Switched { task: "a" }));
    let Some(Response::Infer(s)) = it.next() else {
        panic!()
    };
    assert_eq!(
        (s[0].task, s[0].scores, s[1].task, s[1].scores),
        ("base", &[1i8, 2, 3][..], "a", &[2i8, 3, 4][..])
    );
    assert_eq!(
        it.next(),
        Some(Response::Upload {
            name: "n",
            total_len: 6,
            held: 3
        })
    );
    assert_eq!(
        it.next(),
        Some(Response::Upload {
            name: "n",
            total_len: 6,
            held: 3
        }),
        "an empty chunk asks"
    );
    assert_eq!(
        it.next(),
        Some(Response::Upload {
            name: "n",
            total_len: 6,
            held: 6
        })
    );
    assert_eq!(
        it.next(),
        Some(Response::Committed(TaskEntry {
            name: "n",
            classes: 3,
            version: 0,
            bytes: 6
        }))
    );
    assert_eq!(it.next(), Some(Response::Deleted { name: "a" }));
    assert!(matches!(
        it.next(),
        Some(Response::Error {
            code: ErrorCode::Unsupported,
            ..
        })
    ));
    assert_eq!(
        dev.tasks.iter().map(|t| t.0.as_str()).collect::<Vec<_>>(),
        ["base", "n"]
    );
}

/// Garbage, a truncated frame, a frame too long for the buffer, an empty
/// frame, an unknown variant, trailing bytes: each is answered with a typed
/// error (the empty frame with nothing) and the next request is served.
#[test]
fn bad_frames_are_answered_and_the_loop_goes_on() {
    let info = frame(&Request::Info);
    let mut good = frame(&Request::Switch { task: "a" });
    let mut input = Vec::new();
    input.extend_from_slice(&[0x37, 0xff, 0x10, 0x99, 0x00]); // garbage
    input.extend_from_slice(&good[..good.len() - 3]); // truncated
    input.push(0);
    input.extend(core::iter::repeat_n(0x41u8, 1000)); // too long for 64 bytes
    input.push(0);
    input.extend_from_slice(&[0, 0]); // empty frames
    input.extend_from_slice(&[0x02, 0x2a, 0x00]); // variant 42
    good.pop();
    input.extend_from_slice(&[0x06, 0x02, 0x02, b'a', b'b', 0x07, 0x00]); // Switch "ab" + a byte
    input.extend_from_slice(&good);
    input.push(0);
    input.extend_from_slice(&info);
    for chunk in [1, 3, 64, 4096] {
        let mut dev = Mock::new();
        let mut out = serve_all(&mut dev, &input, chunk, 64);
        let codes: Vec<_> = out
            .iter_mut()
            .map(|f| {
                f.push(0);
                code_of(f)
            })
            .collect();
        assert_eq!(
            codes,
            [
                Some(ErrorCode::Malformed),
                Some(ErrorCode::Malformed),
                Some(ErrorCode::FrameTooLarge { max: 64 }),
                Some(ErrorCode::Malformed),
                Some(ErrorCode::Malformed),
                None,
                None
            ],
            "read {chunk} bytes at a time"
        );
        assert_eq!(dev.active, 1, "the switch after the bad frames was served");
    }
}

#[test]
fn a_stream_ending_inside_a_frame_ends_the_loop() {
    let f = frame(&Request::Tasks);
    let mut input = frame(&Request::Info);
    input.extend_from_slice(&f[..f.len() - 1]);
    assert_eq!(serve_all(&mut Mock::new(), &input, 5, 64).len(), 1);
}

#[test]
fn refusals_change_nothing() {
    let mut input = Vec::new();
    for r in [
        Request::Switch { task: "nope" },
        Request::Infer {
            tasks: names(&["a", "nope"]),
            input: Input::I8(&[1, 2, 3, 4]),
        },
        Request::Infer {
            tasks: names(&[]),
            input: Input::I8(&[1, 2, 3]),
        },
        Request::Upload {
            name: "base",
            total_len: 6,
            offset: 0,
            chunk: b"GN",
        },
        Request::Upload {
            name: "../x",
            total_len: 6,
            offset: 0,
            chunk: b"GN",
        },
        Request::Upload {
            name: "n",
            total_len: 65,
            offset: 0,
            chunk: b"GN",
        },
        Request::Upload {
            name: "n",
            total_len: 6,
            offset: 0,
            chunk: b"GN",
        },
        Request::Upload {
            name: "n",
            total_len: 6,
            offset: 3,
            chunk: b"PT",
        },
        Request::Upload {
            name: "n",
            total_len: 6,
            offset: 2,
            chunk: b"PTxxx",
        },
        Request::Commit { name: "n" },
        Request::Commit { name: "m" },
        Request::Upload {
            name: "n",
            total_len: 6,
            offset: 2,
            chunk: b"xxxx",
        },
        Request::Commit { name: "n" },
        Request::Delete { name: "base" },
        Request::Delete { name: "nope" },
    ] {
        input.extend(frame(&r));
    }
    let mut dev = Mock::new();
    let mut out = serve_all(&mut dev, &input, 16, 256);
    let codes: Vec<_> = out
        .iter_mut()
        .map(|f| {
            f.push(0);
            code_of(f)
        })
        .collect();
    assert_eq!(
        codes,
        [
            Some(ErrorCode::UnknownTask),
            Some(ErrorCode::UnknownTask),
            Some(ErrorCode::InputSize {
                expected: 4,
                got: 3
            }),
            Some(ErrorCode::InvalidName),
            Some(ErrorCode::InvalidName),
            Some(ErrorCode::TooLarge { max: 64 }),
            None,
            Some(ErrorCode::OffsetMismatch { held: 2 }),
            Some(ErrorCode::TooLarge { max: 6 }),
            Some(ErrorCode::UploadIncomplete {
                held: 2,
                total_len: 6
            }),
            Some(ErrorCode::NoUpload),
            None,
            Some(ErrorCode::Format(FormatKind::BadMagic)),
            Some(ErrorCode::Protected),
            Some(ErrorCode::UnknownTask),
        ]
    );
    assert_eq!((dev.active, dev.tasks.len()), (0, 2));
}

#[test]
fn an_answer_too_large_for_tx_is_refused() {
    let mut dev = Mock::new();
    let mut tx = [0u8; MIN_TX_BUF];
    let n = answer(&mut dev, Request::Info, 64, &mut tx);
    assert!(n > 0);
    assert_eq!(
        code_of(&mut tx[..n]),
        Some(ErrorCode::ResponseTooLarge {
            max: MIN_TX_BUF as u32
        })
    );
    // The longest code with an empty detail fits MIN_TX_BUF.
    let worst = Response::Error {
        code: ErrorCode::WrongBackbone {
            expected: u64::MAX,
            found: u64::MAX,
        },
        detail: "",
    };
    assert!(frame(&worst).len() <= MIN_TX_BUF);
}

#[test]
fn call_sends_and_reads_one_exchange() {
    // The device's answer is already in the stream; `call` writes the request.
    let answer_bytes = frame(&Response::Switched { task: "a" });
    let mut io = MemIo {
        input: &answer_bytes,
        chunk: 2,
        out: vec![],
    };
    let (mut tx, mut rxb) = ([0u8; 64], [0u8; 64]);
    let mut rx = FrameReader::new(&mut rxb);
    let r = call(&mut io, &Request::Switch { task: "a" }, &mut tx, &mut rx).unwrap();
    assert_eq!(r, Response::Switched { task: "a" });
    assert_eq!(io.out, frame(&Request::Switch { task: "a" }));
    let mut io = MemIo {
        input: &[],
        chunk: 2,
        out: vec![],
    };
    let mut rxb2 = [0u8; 64];
    let mut rx = FrameReader::new(&mut rxb2);
    assert_eq!(
        call(&mut io, &Request::Info, &mut tx, &mut rx),
        Err(CallError::Frame(FrameError::Eof))
    );
}

#[test]
fn names_are_checked() {
    for ok in [
        "a",
        "mnist-sb",
        "fashion_binary.logits",
        &"x".repeat(MAX_NAME_LEN),
    ] {
        assert!(check_name(ok).is_ok(), "{ok}");
    }
    for bad in [
        "",
        "base",
        ".hidden",
        "a/b",
        "..",
        "a b",
        "é",
        &"x".repeat(MAX_NAME_LEN + 1),
    ] {
        assert_eq!(
            check_name(bad).unwrap_err().code,
            ErrorCode::InvalidName,
            "{bad}"
        );
    }
}

#[test]
fn failure_details_are_cut_not_lost() {
    let f = Failure::with(ErrorCode::Busy, format_args!("{}", "é".repeat(100)));
    assert_eq!(f.detail.len(), DETAIL_CAP);
    assert_eq!(
        Failure::new(ErrorCode::StorageFull).detail,
        "task storage full"
    );
    let e = graftnet::FormatError::WrongBackbone {
        expected: 1,
        found: 2,
    };
    assert_eq!(
        Failure::format(&e).code,
        ErrorCode::WrongBackbone {
            expected: 1,
            found: 2
        }
    );
    let e = graftnet::FormatError::ChecksumMismatch {
        stored: 1,
        computed: 2,
    };
    assert_eq!(
        Failure::format(&e).code,
        ErrorCode::Format(FormatKind::ChecksumMismatch)
    );
    let e = graftnet::RunError::InputSize {
        expected: 4,
        got: 3,
    };
    assert_eq!(
        Failure::run(&e).code,
        ErrorCode::InputSize {
            expected: 4,
            got: 3
        }
    );
}
