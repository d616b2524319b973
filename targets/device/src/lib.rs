//! `graftnet-device`: graftnet on a Linux board (Raspberry Pi 4/5, Jetson Orin, any host).
//!
//! ```text
//! graftnet-device --dir EXPORT_DIR [--protocol json|postcard] [--socket PATH]
//!                 [--tcp ADDR] [--max-connections N] [--timeout SECS]
//!                 [--max-request-bytes N] [--max-patch-bytes N] [--verify-key KEY.pub]
//! ```
//!
//! Loads `EXPORT_DIR/backbone.gnb` and the `EXPORT_DIR/*.gnp` its
//! `manifest.json` lists (see [`export`]), then serves
//! task-tagged inference requests on stdin/stdout and, with `--socket`, on
//! a Unix stream socket, with `--tcp`, on a TCP address (one thread per
//! connection, one engine shared by all). Without a socket the program
//! ends at the end of stdin; with one it serves until it is stopped, so it
//! runs as a service with stdin closed (`graftnet-device.service`).
//!
//! Two protocols, one per process (`--protocol`): JSON lines, one object
//! per line (the default, for people and scripts; see [`protocol`]), or
//! the binary device protocol shared with the MCU firmware (`postcard`:
//! postcard messages in COBS frames, `targets/protocol/PROTOCOL.md`; see
//! [`binary`]), which also uploads, commits and deletes patches: they are
//! validated and stored atomically in the export directory ([`store`]).
//!
//! With `--verify-key KEY.pub` the device runs signed blobs only: the
//! backbone and every patch must carry that key's Ed25519 signature
//! (`graftnet export --sign`, `graftnet sign`); see [`export`].
//!
//! Memory: one arena and one parameter table, sized by the backbone, for the
//! process lifetime; the backbone is memory-mapped, the patches are read
//! once (and replaced by uploads). Each request sets the engine up for its
//! task (`Engine::new`, `Engine::apply`: kilobytes of patch, no reload;
//! [`server`] says why per request).
//!
//! Bounds, so that no client (or number of clients) can exhaust the device
//! ([`Limits`]): at most `--max-connections` socket connections are served
//! at once (default 16; one more gets an error line and is closed, so
//! threads stay at that number plus two); each connection has `--timeout`
//! seconds (default 30) to deliver each request line, counted from its
//! start or its previous response, and is closed with an error line after
//! it (an idle client and one trickling a line byte by byte alike); a
//! request line may hold at most [`max_request_bytes`] of the model's input
//! size (32 bytes per input value plus 64 KiB), and parsing it costs that
//! line plus `4·C·H·W` bytes ([`protocol::parse_request`]). So the memory a
//! socket can make the device use is bounded by
//! `max_connections · (2 · max_request_bytes + 4·C·H·W)` plus the fixed
//! buffers. Requests are parsed before the engine lock is taken
//! ([`server::respond`]). With `--protocol postcard` a connection holds a
//! receive buffer of [`binary::max_frame`] (`4·C·H·W` + 4 KiB, at least
//! 64 KiB) and a transmit buffer of [`binary::tx_len`], and the device at
//! most one upload in progress of at most `--max-patch-bytes`, so the
//! bound is `max_connections · (max_frame + tx_len) + max_patch_bytes`.
//!
//! The board packages (`targets/rpi4`, `targets/rpi5`, `targets/jetson-orin`)
//! are this library compiled for their CPU; [`Board`] says which.

// `graftnet_protocol::Failure` (a code and a 128-byte detail, inline so the
// MCU needs no heap) is the error of the request paths; it is moved, not boxed.
#![allow(clippy::result_large_err)]

pub mod binary;
pub mod conn;
pub mod export;
pub mod protocol;
pub mod server;
pub mod store;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpListener;
use std::os::unix::fs::FileTypeExt;
use std::os::unix::net::UnixListener;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use graftnet::VerifyKey;

use crate::conn::Conn;
use crate::export::{ExportBytes, LoadError};
use crate::protocol::{error_response, Refusal};
use crate::server::{respond, Server, DEFAULT_MAX_PATCH};
use crate::store::{PatchMeta, PatchStore, StoredTask};

/// The board a binary was built for (what its `.cargo/config.toml` chose).
#[derive(Clone, Copy, Debug)]
pub struct Board {
    /// package name, e.g. "rpi4"
    pub name: &'static str,
    /// the `-C target-cpu` it was compiled with
    pub cpu: &'static str,
}

/// The build host (`cargo run` in `targets/device`).
pub const HOST: Board = Board {
    name: "host",
    cpu: "native target default",
};

/// Bytes of request JSON allowed per input value: a float as printed by any
/// JSON writer (`-1.2345678901234567e-308` is 24 bytes) plus its separator
/// and some whitespace.
pub const BYTES_PER_INPUT_VALUE: usize = 32;

/// Bytes of request JSON allowed besides the input values (braces, keys,
/// `id` up to [`protocol::MAX_ID_BYTES`], the task name, whitespace).
pub const REQUEST_OVERHEAD_BYTES: usize = 64 << 10;

/// The longest request line for a model taking `n_input` (C·H·W) values:
/// `32 · n_input + 65536` bytes (4.9 MB for a 3x224x224 input, 164 KB for
/// 3x32x32). Longer lines are refused without being parsed.
pub fn max_request_bytes(n_input: usize) -> usize {
    n_input
        .saturating_mul(BYTES_PER_INPUT_VALUE)
        .saturating_add(REQUEST_OVERHEAD_BYTES)
}

/// Connections served at once by default.
pub const DEFAULT_MAX_CONNECTIONS: usize = 16;

/// Seconds a connection has for each request line by default.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(30);

/// What one client, or many, may use of the device (module doc, "Bounds").
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Limits {
    /// socket connections served at once
    pub max_connections: usize,
    /// time a socket connection has for each request line (and to take
    /// each response)
    pub timeout: Duration,
    /// longest request line, in bytes (without the newline)
    pub max_request: usize,
}

impl Limits {
    /// The defaults for a model taking `n_input` values.
    pub fn for_input(n_input: usize) -> Self {
        Limits {
            max_connections: DEFAULT_MAX_CONNECTIONS,
            timeout: DEFAULT_TIMEOUT,
            max_request: max_request_bytes(n_input),
        }
    }
}

const USAGE: &str = "usage: graftnet-device --dir EXPORT_DIR [--protocol json|postcard] [--socket PATH] [--tcp ADDR]
                       [--max-connections N] [--timeout SECS] [--max-request-bytes N]
                       [--max-patch-bytes N] [--verify-key KEY.pub]

Serves graftnet inference requests on stdin (and on a Unix socket with
--socket, on TCP with --tcp), as JSON lines or, with --protocol postcard, as
the binary device protocol (targets/protocol/PROTOCOL.md: postcard messages in
COBS frames; info, tasks, switch, infer, and patch upload/commit/delete, as
`graftnet device` speaks it). JSON lines:
  request  {\"id\": 1, \"task\": \"mnist-sb\", \"input\": [f32; C*H*W, NCHW]}
           (or \"input_i8\": [i8; H*W*C, NHWC]; task \"base\" = the backbone's own task)
  response {\"id\":1,\"task\":\"mnist-sb\",\"top1\":3,\"scores\":[...],\"us\":812}
  error    {\"id\":1,\"error\":\"...\"}

  --protocol P           json (default) or postcard, on stdin and every socket
  --socket PATH          serve on a Unix stream socket
  --tcp ADDR             serve on TCP, e.g. 127.0.0.1:7878 (no authentication: bind to a trusted network)
  --max-connections N    socket connections served at once (default 16); more get an error and are closed
  --timeout SECS         time a socket connection has for each request line (default 30)
  --max-request-bytes N  longest request line (default 32 * C*H*W + 65536, from the model's input)
  --max-patch-bytes N    largest patch an upload may send (postcard; default 16 MiB)
  --verify-key KEY.pub   run signed blobs only: the backbone and every patch must carry this key's
                         Ed25519 signature (graftnet export --sign); others are refused";

/// The wire protocol of a process (`--protocol`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Wire {
    /// JSON lines ([`protocol`])
    Json,
    /// the binary device protocol ([`binary`])
    Postcard,
}

struct Args {
    dir: PathBuf,
    wire: Wire,
    socket: Option<PathBuf>,
    tcp: Option<String>,
    max_patch: u32,
    max_connections: usize,
    timeout: Duration,
    max_request: Option<usize>,
    verify_key: Option<PathBuf>,
}

/// Reads a public-key file (`KEY.pub` from `graftnet keygen`).
pub fn read_verify_key(path: &Path) -> Result<VerifyKey, String> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| format!("reading the verification key {}: {e}", path.display()))?;
    if text.contains("secret key") {
        return Err(format!(
            "{} is a secret key; --verify-key takes the public key (KEY.pub)",
            path.display()
        ));
    }
    let bytes = graftnet::format::signature::key_from_text(&text)
        .map_err(|e| format!("{}: {e}", path.display()))?;
    VerifyKey::from_bytes(&bytes).map_err(|e| format!("{}: {e}", path.display()))
}

fn parse_args(mut it: impl Iterator<Item = String>) -> Result<Option<Args>, String> {
    let (mut dir, mut socket, mut max_request, mut verify_key, mut tcp) =
        (None, None, None, None, None);
    let (mut wire, mut max_patch) = (Wire::Json, DEFAULT_MAX_PATCH);
    let (mut max_connections, mut timeout) = (DEFAULT_MAX_CONNECTIONS, DEFAULT_TIMEOUT);
    let positive = |flag: &str, v: Option<String>| -> Result<usize, String> {
        let v = v.ok_or(format!("{flag} needs a number"))?;
        v.parse::<usize>()
            .ok()
            .filter(|&n| n > 0)
            .ok_or(format!("{flag}: '{v}' is not a positive integer"))
    };
    while let Some(a) = it.next() {
        match a.as_str() {
            "--dir" => dir = Some(PathBuf::from(it.next().ok_or("--dir needs a directory")?)),
            "--socket" => socket = Some(PathBuf::from(it.next().ok_or("--socket needs a path")?)),
            "--tcp" => tcp = Some(it.next().ok_or("--tcp needs an address (HOST:PORT)")?),
            "--protocol" => {
                wire = match it.next().as_deref() {
                    Some("json") => Wire::Json,
                    Some("postcard") => Wire::Postcard,
                    other => {
                        return Err(format!("--protocol takes json or postcard, not {other:?}"))
                    }
                }
            }
            "--max-patch-bytes" => {
                let n = positive("--max-patch-bytes", it.next())?;
                max_patch = u32::try_from(n)
                    .map_err(|_| format!("--max-patch-bytes: {n} is above {}", u32::MAX))?;
            }
            "--max-connections" => max_connections = positive("--max-connections", it.next())?,
            "--timeout" => timeout = Duration::from_secs(positive("--timeout", it.next())? as u64),
            "--max-request-bytes" => {
                max_request = Some(positive("--max-request-bytes", it.next())?)
            }
            "--verify-key" => {
                verify_key = Some(PathBuf::from(
                    it.next().ok_or("--verify-key needs a public-key file")?,
                ))
            }
            "-h" | "--help" => return Ok(None),
            "-V" | "--version" => {
                println!("graftnet-device {}", env!("CARGO_PKG_VERSION"));
                std::process::exit(0);
            }
            _ => return Err(format!("unexpected argument '{a}'")),
        }
    }
    let dir = dir.ok_or("--dir EXPORT_DIR is required")?;
    Ok(Some(Args {
        dir,
        wire,
        socket,
        tcp,
        max_patch,
        max_connections,
        timeout,
        max_request,
        verify_key,
    }))
}

/// The program; `board` names the build.
pub fn main(board: Board) -> ExitCode {
    let args = match parse_args(std::env::args().skip(1)) {
        Ok(Some(a)) => a,
        Ok(None) => {
            println!("{USAGE}");
            return ExitCode::SUCCESS;
        }
        Err(e) => {
            eprintln!("graftnet-device: {e}\n\n{USAGE}");
            return ExitCode::from(2);
        }
    };
    match run(board, &args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("graftnet-device: {e}");
            ExitCode::FAILURE
        }
    }
}

fn cpu_features() -> String {
    #[cfg(target_arch = "aarch64")]
    {
        let f = [
            ("neon", std::arch::is_aarch64_feature_detected!("neon")),
            (
                "dotprod",
                std::arch::is_aarch64_feature_detected!("dotprod"),
            ),
            ("i8mm", std::arch::is_aarch64_feature_detected!("i8mm")),
        ];
        let on: Vec<&str> = f.iter().filter(|x| x.1).map(|x| x.0).collect();
        format!("aarch64 [{}]", on.join(" "))
    }
    #[cfg(target_arch = "x86_64")]
    {
        let f = [
            ("avx2", std::arch::is_x86_feature_detected!("avx2")),
            (
                "avx512vnni",
                std::arch::is_x86_feature_detected!("avx512vnni"),
            ),
        ];
        let on: Vec<&str> = f.iter().filter(|x| x.1).map(|x| x.0).collect();
        format!("x86_64 [{}]", on.join(" "))
    }
    #[cfg(not(any(target_arch = "aarch64", target_arch = "x86_64")))]
    {
        std::env::consts::ARCH.to_string()
    }
}

/// Loads export directory `dir` as the program does — the backbone mapped
/// (and verified with `key`), the patches the manifest lists validated,
/// warnings on stderr — and calls `f` with the server over it. The server
/// borrows the mapping, so it lives only inside `f`. (The program runs in
/// `f`; tests serve a socket from it in-process.)
pub fn with_export<R>(
    dir: &Path,
    key: Option<VerifyKey>,
    board: Board,
    max_patch: u32,
    f: impl FnOnce(&Mutex<Server<'_>>) -> R,
) -> Result<R, LoadError> {
    let bytes = ExportBytes::read(dir)?;
    for w in bytes.warnings() {
        eprintln!("graftnet-device: warning: {w}");
    }
    let bb = bytes.backbone(key.as_ref())?;
    let (patches, warnings) = bytes.patches(&bb, key.as_ref());
    for w in &warnings {
        eprintln!("graftnet-device: warning: {w}");
    }
    let mut tasks = Vec::new();
    for (_, path, p) in patches {
        if tasks.len() + 1 >= graftnet_protocol::MAX_TASKS {
            eprintln!(
                "graftnet-device: warning: {}: more than {} tasks; skipped",
                path.display(),
                graftnet_protocol::MAX_TASKS - 1
            );
            continue;
        }
        let file_bytes = bytes
            .patches
            .iter()
            .find(|(f, _)| f == path)
            .map(|(_, b)| b.clone())
            .unwrap_or_default();
        tasks.push(StoredTask::new(
            PatchMeta::of(&p),
            path.to_path_buf(),
            file_bytes,
        ));
    }
    if let Some(k) = &key {
        eprintln!(
            "graftnet-device: signatures required: key {} (backbone verified)",
            k.id()
        );
    }
    let device = format!(
        "graftnet-device {} ({})",
        env!("CARGO_PKG_VERSION"),
        board.name
    );
    let mut server = Server::new(bb, PatchStore::new(dir, tasks), key, device, max_patch);
    for w in server.check_patches() {
        eprintln!("graftnet-device: warning: {w}");
    }
    Ok(f(&Mutex::new(server)))
}

fn run(board: Board, args: &Args) -> Result<(), Box<dyn std::error::Error>> {
    let key = args
        .verify_key
        .as_deref()
        .map(read_verify_key)
        .transpose()?;
    let listener = match &args.socket {
        Some(p) => Some(bind(p)?),
        None => None,
    };
    let tcp = match &args.tcp {
        Some(a) => Some(TcpListener::bind(a).map_err(|e| format!("binding TCP {a}: {e}"))?),
        None => None,
    };
    with_export(&args.dir, key, board, args.max_patch, |server| {
        serve_all(board, args, server, listener, tcp)
    })?;
    Ok(())
}

/// Reports the start-up and serves stdin and the sockets.
fn serve_all(
    board: Board,
    args: &Args,
    server: &Mutex<Server<'_>>,
    listener: Option<UnixListener>,
    tcp: Option<TcpListener>,
) {
    let (t, n_input, max_classes) = {
        let server = server.lock().unwrap_or_else(|p| p.into_inner());
        let bb = *server.backbone();
        let t = bb.input();
        eprintln!(
            "graftnet-device {} ({}, -C target-cpu={}; running on {}), kernels {}: backbone {:016x} {} bytes (mapped), arena {} bytes, \
             input {}x{}x{} (c,h,w), tasks: {}",
            env!("CARGO_PKG_VERSION"),
            board.name,
            board.cpu,
            cpu_features(),
            server.kernels(),
            bb.fingerprint(),
            bb.bytes().len(),
            bb.arena_len(),
            t.c,
            t.h,
            t.w,
            server.task_names().join(", ")
        );
        (t, server.n_input(), bb.max_classes() as usize)
    };
    let limits = Limits {
        max_connections: args.max_connections,
        timeout: args.timeout,
        max_request: args
            .max_request
            .unwrap_or_else(|| max_request_bytes(t.len())),
    };
    let wire = args.wire;
    let frames = (binary::max_frame(n_input), binary::tx_len(max_classes));
    match wire {
        Wire::Json => eprintln!(
            "graftnet-device: JSON lines; limits: {} connections at once, {} s per request line, request lines up to {} bytes",
            limits.max_connections,
            limits.timeout.as_secs(),
            limits.max_request
        ),
        Wire::Postcard => eprintln!(
            "graftnet-device: binary protocol {} (postcard, COBS); limits: {} connections at once, {} s per frame, frames up to {} bytes, patches up to {} bytes",
            graftnet_protocol::PROTOCOL_VERSION,
            limits.max_connections,
            limits.timeout.as_secs(),
            frames.0,
            args.max_patch
        ),
    }
    let socket_mode = Mode {
        wire,
        limits,
        n_input,
        frames,
    };
    std::thread::scope(|s| {
        let srv = server;
        s.spawn(move || {
            let stdin = std::io::stdin();
            let stdout = std::io::stdout();
            match wire {
                Wire::Json => {
                    serve_stream(
                        srv,
                        n_input,
                        limits.max_request,
                        &mut stdin.lock(),
                        |_| {},
                        || stdout.lock(),
                    );
                }
                Wire::Postcard => {
                    binary::serve_frames(
                        srv,
                        frames.0,
                        frames.1,
                        &mut stdin.lock(),
                        |_| {},
                        || stdout.lock(),
                    );
                }
            }
        });
        if let Some(l) = tcp {
            if let Ok(a) = l.local_addr() {
                eprintln!("graftnet-device: listening on tcp:{a}");
            }
            s.spawn(move || serve_socket(srv, l.incoming(), socket_mode, &AtomicBool::new(false)));
        }
        if let Some(l) = listener {
            eprintln!(
                "graftnet-device: listening on {}",
                args.socket.as_ref().unwrap().display()
            );
            serve_socket(srv, l.incoming(), socket_mode, &AtomicBool::new(false));
        }
    });
}

/// Binds the socket, replacing a stale socket file (never another kind of file).
fn bind(p: &Path) -> Result<UnixListener, Box<dyn std::error::Error>> {
    if let Ok(m) = std::fs::symlink_metadata(p) {
        if m.file_type().is_socket() {
            std::fs::remove_file(p)?;
        } else {
            return Err(format!("{} exists and is not a socket", p.display()).into());
        }
    }
    UnixListener::bind(p).map_err(|e| format!("binding {}: {e}", p.display()).into())
}

/// How sockets are served: the protocol, the bounds, and the buffer sizes.
#[derive(Clone, Copy, Debug)]
pub struct Mode {
    /// JSON lines or the binary protocol
    pub wire: Wire,
    /// connections, timeout, request size
    pub limits: Limits,
    /// the model's input size (C·H·W)
    pub n_input: usize,
    /// binary protocol: receive and transmit buffer bytes ([`binary::max_frame`], [`binary::tx_len`])
    pub frames: (usize, usize),
}

impl Mode {
    /// JSON lines with `limits` for a model taking `n_input` values.
    pub fn json(limits: Limits, n_input: usize) -> Self {
        Mode {
            wire: Wire::Json,
            limits,
            n_input,
            frames: (0, 0),
        }
    }

    /// The binary protocol with `limits`, buffers sized for `srv`'s model.
    pub fn postcard(srv: &Mutex<Server<'_>>, limits: Limits) -> Self {
        let s = srv.lock().unwrap_or_else(|p| p.into_inner());
        let (n_input, max_classes) = (s.n_input(), s.backbone().max_classes() as usize);
        Mode {
            wire: Wire::Postcard,
            limits,
            n_input,
            frames: (binary::max_frame(n_input), binary::tx_len(max_classes)),
        }
    }
}

/// Accepts connections from `incoming` (a Unix or TCP listener's) and
/// serves each on its own thread, at most `mode.limits.max_connections`
/// at once; returns once `stop` is set (checked after each accept) and
/// every connection has ended.
pub fn serve_socket<C: Conn>(
    srv: &Mutex<Server<'_>>,
    incoming: impl Iterator<Item = std::io::Result<C>>,
    mode: Mode,
    stop: &AtomicBool,
) where
    for<'x> &'x C: Write,
{
    // Only this thread adds to the count, so checking then adding is exact.
    let active = AtomicUsize::new(0);
    std::thread::scope(|s| {
        for conn in incoming {
            if stop.load(Ordering::Relaxed) {
                break;
            }
            let c = match conn {
                Ok(c) => c,
                Err(e) => {
                    eprintln!("graftnet-device: accept: {e}");
                    continue;
                }
            };
            c.accepted();
            if active.load(Ordering::Acquire) >= mode.limits.max_connections {
                refuse(c, mode);
                continue;
            }
            active.fetch_add(1, Ordering::AcqRel);
            let active = &active;
            s.spawn(move || {
                serve_connection(srv, c, mode);
                active.fetch_sub(1, Ordering::AcqRel);
            });
        }
    });
}

/// Tells a connection beyond the limit why it is closed, then closes it
/// (the message fits the socket buffer; a peer that never reads cannot hold
/// up the accept loop).
fn refuse<C: Conn>(mut c: C, mode: Mode)
where
    for<'x> &'x C: Write,
{
    let _ = c.set_nonblocking(true);
    let max = mode.limits.max_connections;
    let msg = format!("too many connections (this device serves {max} at once); try again later");
    let _ = match mode.wire {
        Wire::Json => writeln!(
            c,
            "{}",
            error_response(&Refusal {
                id: serde_json::Value::Null,
                message: msg
            })
        ),
        Wire::Postcard => c.write_all(&binary::closing_frame(&msg)),
    };
    let _ = c.shutdown();
}

/// A socket read against a deadline: each read waits at most until
/// `deadline`, then fails with `TimedOut`.
struct Deadline<C> {
    stream: C,
    deadline: Instant,
}

impl<C: Conn> Read for Deadline<C>
where
    for<'x> &'x C: Write,
{
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let left = self.deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(std::io::ErrorKind::TimedOut.into());
        }
        self.stream.set_read_timeout(Some(left))?;
        self.stream.read(buf)
    }
}

fn serve_connection<C: Conn>(srv: &Mutex<Server<'_>>, c: C, mode: Mode)
where
    for<'x> &'x C: Write,
{
    let Ok(w) = c.try_clone() else { return };
    let limits = mode.limits;
    // A client that does not read its responses gets `timeout` per request too.
    let _ = w.set_write_timeout(Some(limits.timeout));
    let mut dl = Deadline {
        stream: c,
        deadline: Instant::now() + limits.timeout,
    };
    let timed_out = match mode.wire {
        Wire::Json => {
            let mut r = BufReader::new(dl);
            let restart = |r: &mut BufReader<Deadline<C>>| {
                r.get_mut().deadline = Instant::now() + limits.timeout
            };
            serve_stream(
                srv,
                mode.n_input,
                limits.max_request,
                &mut r,
                restart,
                || &w,
            ) == End::TimedOut
        }
        Wire::Postcard => {
            let restart = |d: &mut Deadline<C>| d.deadline = Instant::now() + limits.timeout;
            binary::serve_frames(srv, mode.frames.0, mode.frames.1, &mut dl, restart, || &w)
                == End::TimedOut
        }
    };
    if timed_out {
        let msg = format!(
            "no complete request within {} s; closing the connection",
            limits.timeout.as_secs()
        );
        let _ = match mode.wire {
            Wire::Json => writeln!(
                &w,
                "{}",
                error_response(&Refusal {
                    id: serde_json::Value::Null,
                    message: msg.replace("request", "request line")
                })
            ),
            Wire::Postcard => (&w).write_all(&binary::closing_frame(&msg)),
        };
    }
}

/// Why a connection's loop returned.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum End {
    /// end of input, or the other side stopped reading
    Closed,
    /// a request did not arrive in time
    TimedOut,
}

/// Serves lines from `input` until its end (or until the other side stops
/// reading, or a read times out), writing each response through `out()`
/// and flushing it. `new_line` is called before each request line is read
/// (the socket's deadline starts there). Lines longer than `max_line` are
/// refused unparsed; lines are parsed outside the engine lock.
fn serve_stream<R: BufRead, W: Write>(
    srv: &Mutex<Server<'_>>,
    n_input: usize,
    max_line: usize,
    input: &mut R,
    mut new_line: impl FnMut(&mut R),
    mut out: impl FnMut() -> W,
) -> End {
    let mut buf = Vec::new();
    loop {
        new_line(input);
        let resp = match read_line(input, &mut buf, max_line) {
            Ok(Line::Eof) => return End::Closed,
            Ok(Line::TooLong) => Some(error_response(&Refusal {
                id: serde_json::Value::Null,
                message: format!(
                    "request line longer than {max_line} bytes (the limit for this model's input)"
                ),
            })),
            Ok(Line::Data) => match std::str::from_utf8(&buf) {
                Ok(s) => respond(srv, n_input, s),
                Err(_) => Some(error_response(&Refusal {
                    id: serde_json::Value::Null,
                    message: "request is not UTF-8".into(),
                })),
            },
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::TimedOut | std::io::ErrorKind::WouldBlock
                ) =>
            {
                return End::TimedOut
            }
            Err(_) => return End::Closed,
        };
        if let Some(r) = resp {
            let mut w = out();
            if writeln!(w, "{r}").and_then(|_| w.flush()).is_err() {
                return End::Closed;
            }
        }
    }
}

enum Line {
    Data,
    TooLong,
    Eof,
}

/// Reads one line into `buf` (without the newline), at most `max` bytes;
/// the rest of a longer line is skipped.
fn read_line<R: BufRead>(r: &mut R, buf: &mut Vec<u8>, max: usize) -> std::io::Result<Line> {
    buf.clear();
    let n = r.by_ref().take(max as u64 + 1).read_until(b'\n', buf)?;
    if n == 0 {
        return Ok(Line::Eof);
    }
    if buf.last() == Some(&b'\n') {
        buf.pop();
        if buf.last() == Some(&b'\r') {
            buf.pop();
        }
        return Ok(Line::Data);
    }
    if buf.len() <= max {
        return Ok(Line::Data); // last line without a newline
    }
    // Skip to the end of the over-long line.
    loop {
        buf.clear();
        let n = r.by_ref().take(1 << 16).read_until(b'\n', buf)?;
        if n == 0 || buf.last() == Some(&b'\n') {
            buf.clear();
            return Ok(Line::TooLong);
        }
    }
}

#[cfg(test)]
mod tests;
