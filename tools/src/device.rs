//! The host side of the device protocol (`targets/protocol/PROTOCOL.md`):
//! connecting to a device ([`connect`]: a Unix socket, TCP, a serial line,
//! or a program's stdin/stdout) and talking to it ([`Client`]).
//!
//! The framing and the messages are `graftnet-protocol`'s, the code the
//! devices run. A device's refusal comes back as a typed [`Refused`] error
//! (inside `anyhow`, so callers `downcast_ref` it to read the code).

use std::io::{Read, Write};
use std::net::TcpStream;
use std::os::unix::net::UnixStream;
use std::process::{Child, ChildStdin, ChildStdout, Command, Stdio};
use std::time::Duration;

use anyhow::{bail, Context, Result};
use graftnet_protocol::{
    encode, ErrorCode, Frame, FrameReader, FromStd, Input, Request, Response, TaskEntry,
    MAX_INFER_TASKS, PROTOCOL_VERSION,
};

/// A byte stream to a device.
pub trait Stream: Read + Write + Send {}
impl<T: Read + Write + Send> Stream for T {}

/// Opens `spec`: `unix:PATH`, `tcp:HOST:PORT`, `serial:/dev/ttyX[@BAUD]`
/// (raw mode, 8N1, default 115200 baud) or `stdio:CMD` (runs `sh -c CMD`
/// and talks over its stdin/stdout).
pub fn connect(spec: &str) -> Result<Box<dyn Stream>> {
    let (kind, rest) = spec.split_once(':').with_context(|| {
        format!(
            "--connect '{spec}': expected unix:PATH, tcp:HOST:PORT, serial:DEV[@BAUD] or stdio:CMD"
        )
    })?;
    Ok(match kind {
        "unix" => {
            Box::new(UnixStream::connect(rest).with_context(|| format!("connecting to {rest}"))?)
        }
        "tcp" => {
            let s = TcpStream::connect(rest).with_context(|| format!("connecting to {rest}"))?;
            s.set_nodelay(true)?;
            Box::new(s)
        }
        "serial" => Box::new(open_serial(rest)?),
        "stdio" => Box::new(Spawned::new(rest)?),
        _ => bail!("--connect '{spec}': unknown kind '{kind}' (unix, tcp, serial, stdio)"),
    })
}

/// `DEV[@BAUD]`: the tty in raw mode (no echo, no line editing, no
/// translation of bytes, 8 data bits) at BAUD.
fn open_serial(spec: &str) -> Result<std::fs::File> {
    use rustix::termios::{tcgetattr, tcsetattr, OptionalActions};
    let (dev, baud) = match spec.rsplit_once('@') {
        Some((d, b)) => (
            d,
            b.parse::<u32>()
                .with_context(|| format!("serial baud rate '{b}'"))?,
        ),
        None => (spec, 115_200),
    };
    let f = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(dev)
        .with_context(|| format!("opening {dev}"))?;
    let mut t = tcgetattr(&f).with_context(|| format!("{dev} is not a terminal"))?;
    t.make_raw();
    t.set_speed(baud)
        .with_context(|| format!("{dev}: baud rate {baud} not supported"))?;
    tcsetattr(&f, OptionalActions::Now, &t).with_context(|| format!("configuring {dev}"))?;
    Ok(f)
}

/// A device program run as a child, spoken to over its stdin/stdout. On
/// drop its stdin is closed (a device serving stdin ends there) and it is
/// waited for, killed after 10 s.
struct Spawned {
    child: Child,
    stdin: Option<ChildStdin>,
    stdout: ChildStdout,
}

impl Spawned {
    fn new(cmd: &str) -> Result<Self> {
        let mut child = Command::new("sh")
            .args(["-c", cmd])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .with_context(|| format!("starting '{cmd}'"))?;
        let (stdin, stdout) = (child.stdin.take(), child.stdout.take());
        Ok(Spawned {
            child,
            stdin,
            stdout: stdout.context("no stdout")?,
        })
    }
}

impl Read for Spawned {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        self.stdout.read(buf)
    }
}

impl Write for Spawned {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        match &mut self.stdin {
            Some(s) => s.write(buf),
            None => Err(std::io::ErrorKind::BrokenPipe.into()),
        }
    }
    fn flush(&mut self) -> std::io::Result<()> {
        self.stdin.as_mut().map_or(Ok(()), |s| s.flush())
    }
}

impl Drop for Spawned {
    fn drop(&mut self) {
        drop(self.stdin.take());
        for _ in 0..100 {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A device's refusal: its code and detail.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Refused {
    /// the code
    pub code: ErrorCode,
    /// the device's sentence
    pub detail: String,
}

impl std::fmt::Display for Refused {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "the device refused: {} ({:?})", self.detail, self.code)
    }
}

impl std::error::Error for Refused {}

/// What a device said about itself (`Info`), owned.
#[derive(Clone, Debug, PartialEq)]
pub struct DeviceInfo {
    pub protocol: u16,
    pub device: String,
    pub runtime: String,
    pub backbone: u64,
    /// `[C, H, W]`
    pub input: [u16; 3],
    pub max_classes: u16,
    pub arena_len: u32,
    pub params_len: u32,
    pub kernels: String,
    pub tasks: u16,
    pub active: String,
    pub max_frame: u32,
    pub max_patch: u32,
}

impl DeviceInfo {
    /// C·H·W.
    pub fn n_input(&self) -> usize {
        self.input.iter().map(|&d| d as usize).product()
    }
}

/// One task's result, owned.
#[derive(Clone, Debug, PartialEq)]
pub struct TaskResult {
    pub task: String,
    /// int8 scores as the device computed them
    pub quantized: Vec<i8>,
    /// dequantized exactly as the runtime does (`graftnet::quant::dequantize`)
    pub scores: Vec<f32>,
    pub top1: usize,
    /// microseconds on the device (switch, input quantization, inference)
    pub us: u32,
}

/// A resident task, owned.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TaskInfo {
    pub name: String,
    pub classes: u16,
    pub version: u32,
    pub bytes: u32,
}

impl From<&TaskEntry<'_>> for TaskInfo {
    fn from(t: &TaskEntry<'_>) -> Self {
        TaskInfo {
            name: t.name.to_string(),
            classes: t.classes,
            version: t.version,
            bytes: t.bytes,
        }
    }
}

/// A connection to a device that speaks protocol [`PROTOCOL_VERSION`].
pub struct Client {
    io: FromStd<Box<dyn Stream>>,
    tx: Vec<u8>,
    rx: Vec<u8>,
    /// the device's `Info` at connection time
    pub info: DeviceInfo,
}

/// Bytes of answer the client takes: the largest a device sends (eight
/// results of 65,535 classes would be more; real heads are ≤ a few
/// thousand classes).
const RX_LEN: usize = 1 << 20;

impl Client {
    /// Connects over `io`: ends any partial frame on the line (one zero
    /// byte), asks `Info`, and refuses a device of another protocol version.
    pub fn new(io: Box<dyn Stream>) -> Result<Self> {
        let mut c = Client {
            io: FromStd(io),
            tx: vec![0; 1 << 16],
            rx: vec![0; RX_LEN],
            info: DeviceInfo {
                protocol: 0,
                device: String::new(),
                runtime: String::new(),
                backbone: 0,
                input: [0; 3],
                max_classes: 0,
                arena_len: 0,
                params_len: 0,
                kernels: String::new(),
                tasks: 0,
                active: String::new(),
                max_frame: 0,
                max_patch: 0,
            },
        };
        c.io.0.write_all(&[0]).context("writing to the device")?;
        c.info = c.query_info()?;
        if c.info.protocol != PROTOCOL_VERSION {
            bail!(
                "the device speaks protocol version {}, this client {}",
                c.info.protocol,
                PROTOCOL_VERSION
            );
        }
        let need = (c.info.max_frame as usize).max(1 << 16);
        c.tx.resize(need, 0);
        Ok(c)
    }

    /// [`connect`], then [`Client::new`].
    pub fn connect(spec: &str) -> Result<Self> {
        Self::new(connect(spec)?)
    }

    /// Sends `req` and hands the answer to `f`; a refusal is a [`Refused`]
    /// error.
    pub fn call<R>(
        &mut self,
        req: &Request<'_>,
        f: impl FnOnce(Response<'_>) -> Result<R>,
    ) -> Result<R> {
        let cap = self.tx.len();
        let frame = encode(req, &mut self.tx)
            .map_err(|e| anyhow::anyhow!("{e} (the request does not fit {cap} bytes)"))?;
        self.io
            .0
            .write_all(frame)
            .context("writing to the device")?;
        self.io.0.flush().context("writing to the device")?;
        let mut reader = FrameReader::new(&mut self.rx);
        let frame = match reader
            .next(&mut self.io)
            .context("reading from the device")?
        {
            None => bail!("the device closed the connection"),
            Some(Frame::TooLarge) => bail!("the device's answer is longer than {RX_LEN} bytes"),
            Some(Frame::Data(f)) => f,
        };
        let resp = graftnet_protocol::decode_response(frame)
            .map_err(|e| anyhow::anyhow!("the device's answer: {e}"))?;
        match resp {
            Response::Error { code, detail } => Err(Refused {
                code,
                detail: detail.to_string(),
            }
            .into()),
            r => f(r),
        }
    }

    fn query_info(&mut self) -> Result<DeviceInfo> {
        self.call(&Request::Info, |r| match r {
            Response::Info(i) => Ok(DeviceInfo {
                protocol: i.protocol,
                device: i.device.into(),
                runtime: i.runtime.into(),
                backbone: i.backbone,
                input: i.input,
                max_classes: i.max_classes,
                arena_len: i.arena_len,
                params_len: i.params_len,
                kernels: i.kernels.into(),
                tasks: i.tasks,
                active: i.active.into(),
                max_frame: i.max_frame,
                max_patch: i.max_patch,
            }),
            other => unexpected(&other),
        })
    }

    /// The device's `Info` now.
    pub fn refresh_info(&mut self) -> Result<&DeviceInfo> {
        self.info = self.query_info()?;
        Ok(&self.info)
    }

    /// The resident tasks and the active one.
    pub fn tasks(&mut self) -> Result<(Vec<TaskInfo>, String)> {
        self.call(&Request::Tasks, |r| match r {
            Response::Tasks(t) => Ok((
                t.tasks.iter().map(TaskInfo::from).collect(),
                t.active.to_string(),
            )),
            other => unexpected(&other),
        })
    }

    /// Makes `task` active.
    pub fn switch(&mut self, task: &str) -> Result<()> {
        self.call(&Request::Switch { task }, |r| match r {
            Response::Switched { .. } => Ok(()),
            other => unexpected(&other),
        })
    }

    /// Runs `tasks` (the active one if empty) on `input`.
    pub fn infer(&mut self, tasks: &[&str], input: Input<'_>) -> Result<Vec<TaskResult>> {
        let names = heapless::Vec::<&str, MAX_INFER_TASKS>::from_slice(tasks)
            .map_err(|_| anyhow::anyhow!("at most {MAX_INFER_TASKS} tasks per inference"))?;
        self.call(
            &Request::Infer {
                tasks: names,
                input,
            },
            |r| match r {
                Response::Infer(v) => Ok(v
                    .iter()
                    .map(|s| TaskResult {
                        task: s.task.to_string(),
                        quantized: s.scores.to_vec(),
                        scores: s.dequantized().collect(),
                        top1: s.top1 as usize,
                        us: s.us,
                    })
                    .collect()),
                other => unexpected(&other),
            },
        )
    }

    /// One `Upload` request: the bytes the device then holds.
    pub fn upload_chunk(
        &mut self,
        name: &str,
        total_len: u32,
        offset: u32,
        chunk: &[u8],
    ) -> Result<u32> {
        self.call(
            &Request::Upload {
                name,
                total_len,
                offset,
                chunk,
            },
            |r| match r {
                Response::Upload { held, .. } => Ok(held),
                other => unexpected(&other),
            },
        )
    }

    /// The largest upload chunk for task `name` that fits the device's
    /// receive buffer (`PROTOCOL.md`, "Upload, resume, commit").
    pub fn max_chunk(&self, name: &str) -> usize {
        let frame = self.info.max_frame as usize;
        let fixed = 1 + (1 + name.len()) + 3 * 5;
        let msg = frame.saturating_sub(2).saturating_mul(254) / 255;
        msg.saturating_sub(fixed)
    }

    /// Uploads `bytes` as task `name` in chunks of at most `chunk` bytes,
    /// resuming from what the device already holds of it, then commits.
    /// `progress(held, total)` is called after each chunk.
    pub fn upload(
        &mut self,
        name: &str,
        bytes: &[u8],
        chunk: usize,
        mut progress: impl FnMut(u32, u32),
    ) -> Result<TaskInfo> {
        let total = u32::try_from(bytes.len()).context("a patch above 4 GiB")?;
        let chunk = chunk.min(self.max_chunk(name)).max(1);
        let mut held = self.upload_chunk(name, total, 0, &[])?;
        if held > 0 && held < total {
            eprintln!("graftnet: the device holds {held} of {total} bytes of '{name}'; resuming");
        }
        // (A device holding every byte already goes straight to the commit.)
        while held < total {
            let end = (held as usize + chunk).min(bytes.len());
            held = match self.upload_chunk(name, total, held, &bytes[held as usize..end]) {
                Ok(h) => h,
                Err(e) => match e.downcast_ref::<Refused>() {
                    // Someone else moved the upload on: continue from the device's count.
                    Some(Refused {
                        code: ErrorCode::OffsetMismatch { held: h },
                        ..
                    }) if *h < total => *h,
                    _ => return Err(e),
                },
            };
            progress(held, total);
        }
        self.commit(name)
    }

    /// Commits the complete upload of `name`.
    pub fn commit(&mut self, name: &str) -> Result<TaskInfo> {
        self.call(&Request::Commit { name }, |r| match r {
            Response::Committed(t) => Ok(TaskInfo::from(&t)),
            other => unexpected(&other),
        })
    }

    /// Removes task `name`.
    pub fn delete(&mut self, name: &str) -> Result<()> {
        self.call(&Request::Delete { name }, |r| match r {
            Response::Deleted { .. } => Ok(()),
            other => unexpected(&other),
        })
    }

    /// Sends raw bytes (tests: malformed frames) and reads one answer
    /// frame, which must be a refusal: returns it.
    pub fn raw(&mut self, bytes: &[u8]) -> Result<Refused> {
        self.io.0.write_all(bytes)?;
        self.io.0.flush()?;
        let mut reader = FrameReader::new(&mut self.rx);
        let Some(Frame::Data(f)) = reader.next(&mut self.io)? else {
            bail!("no answer");
        };
        let resp = graftnet_protocol::decode_response(f)
            .map_err(|e| anyhow::anyhow!("the device's answer: {e}"))?;
        match resp {
            Response::Error { code, detail } => Ok(Refused {
                code,
                detail: detail.to_string(),
            }),
            other => unexpected(&other),
        }
    }
}

fn unexpected<R>(r: &Response<'_>) -> Result<R> {
    bail!("unexpected answer from the device: {r:?}")
}
