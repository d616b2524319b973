//! `graftnet-device`: graftnet on a Linux board (Raspberry Pi 4/5, Jetson Orin, any host).
//!
//! ```text
//! graftnet-device --dir EXPORT_DIR [--socket PATH]
//! ```
//!
//! Loads `EXPORT_DIR/backbone.gnb` and the `EXPORT_DIR/*.gnp` its
//! `manifest.json` lists (see [`export`]), then serves
//! task-tagged inference requests, one JSON object per line (see
//! [`protocol`]), on stdin/stdout and, with `--socket`, on a Unix stream
//! socket (one thread per connection, one engine shared by all). Without a
//! socket the program ends at the end of stdin; with one it serves until it
//! is stopped, so it runs as a service with stdin closed
//! (`graftnet-device.service`).
//!
//! Memory: one arena and one parameter table, sized by the backbone, for the
//! process lifetime; the blobs are read once. Requests switch tasks with
//! `Engine::apply` (kilobytes of patch, no reload).
//!
//! The board packages (`targets/rpi4`, `targets/rpi5`, `targets/jetson-orin`)
//! are this library compiled for their CPU; [`Board`] says which.

pub mod export;
pub mod protocol;
pub mod server;

use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::fs::FileTypeExt;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Mutex;

use graftnet::{Engine, Requant};

use crate::export::ExportBytes;
use crate::protocol::{error_response, Refusal};
use crate::server::Server;

/// The board a binary was built for (what its `.cargo/config.toml` chose).
#[derive(Clone, Copy, Debug)]
pub struct Board {
    /// package name, e.g. "rpi4"
    pub name: &'static str,
    /// the `-C target-cpu` it was compiled with
    pub cpu: &'static str,
}

/// The build host (`cargo run` in `targets/device`).
pub const HOST: Board = Board { name: "host", cpu: "native target default" };

/// Longest request line accepted (a 3x224x224 float input is ~1.7 MB of JSON).
pub const MAX_LINE: usize = 8 << 20;

const USAGE: &str = "usage: graftnet-device --dir EXPORT_DIR [--socket PATH]

Serves graftnet inference requests as JSON lines on stdin (and on a Unix
socket with --socket):
  request  {\"id\": 1, \"task\": \"mnist-sb\", \"input\": [f32; C*H*W, NCHW]}
           (or \"input_i8\": [i8; H*W*C, NHWC]; task \"base\" = the backbone's own task)
  response {\"id\":1,\"task\":\"mnist-sb\",\"top1\":3,\"scores\":[...],\"us\":812}
  error    {\"id\":1,\"error\":\"...\"}";

struct Args {
    dir: PathBuf,
    socket: Option<PathBuf>,
}

fn parse_args(mut it: impl Iterator<Item = String>) -> Result<Option<Args>, String> {
    let (mut dir, mut socket) = (None, None);
    while let Some(a) = it.next() {
        match a.as_str() {
            "--dir" => dir = Some(PathBuf::from(it.next().ok_or("--dir needs a directory")?)),
            "--socket" => socket = Some(PathBuf::from(it.next().ok_or("--socket needs a path")?)),
            "-h" | "--help" => return Ok(None),
            "-V" | "--version" => {
                println!("graftnet-device {}", env!("CARGO_PKG_VERSION"));
                std::process::exit(0);
            }
            _ => return Err(format!("unexpected argument '{a}'")),
        }
    }
    let dir = dir.ok_or("--dir EXPORT_DIR is required")?;
    Ok(Some(Args { dir, socket }))
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
            ("dotprod", std::arch::is_aarch64_feature_detected!("dotprod")),
            ("i8mm", std::arch::is_aarch64_feature_detected!("i8mm")),
        ];
        let on: Vec<&str> = f.iter().filter(|x| x.1).map(|x| x.0).collect();
        format!("aarch64 [{}]", on.join(" "))
    }
    #[cfg(target_arch = "x86_64")]
    {
        let f = [("avx2", std::arch::is_x86_feature_detected!("avx2")), ("avx512vnni", std::arch::is_x86_feature_detected!("avx512vnni"))];
        let on: Vec<&str> = f.iter().filter(|x| x.1).map(|x| x.0).collect();
        format!("x86_64 [{}]", on.join(" "))
    }
    #[cfg(not(any(target_arch = "aarch64", target_arch = "x86_64")))]
    {
        std::env::consts::ARCH.to_string()
    }
}

fn run(board: Board, args: &Args) -> Result<(), Box<dyn std::error::Error>> {
    let bytes = ExportBytes::read(&args.dir)?;
    for w in bytes.warnings() {
        eprintln!("graftnet-device: warning: {w}");
    }
    let bb = bytes.backbone()?;
    let (patches, warnings) = bytes.patches(&bb);
    for w in &warnings {
        eprintln!("graftnet-device: warning: {w}");
    }
    let mut arena = vec![0i8; bb.arena_len()];
    let mut params = vec![Requant::default(); bb.params_len()];
    let engine = Engine::new(&bb, &mut arena, &mut params)?;
    let mut server = Server::new(engine, patches);
    for w in server.check_patches() {
        eprintln!("graftnet-device: warning: {w}");
    }
    let t = bb.input();
    eprintln!(
        "graftnet-device {} ({}, -C target-cpu={}; running on {}), kernels {}: backbone {:016x} {} bytes, arena {} bytes, \
         input {}x{}x{} (c,h,w), tasks: {}",
        env!("CARGO_PKG_VERSION"),
        board.name,
        board.cpu,
        cpu_features(),
        server.engine().kernels().name,
        bb.fingerprint(),
        bb.bytes().len(),
        bb.arena_len(),
        t.c,
        t.h,
        t.w,
        server.tasks().join(", ")
    );
    let server = Mutex::new(server);
    let listener = match &args.socket {
        Some(p) => Some(bind(p)?),
        None => None,
    };
    std::thread::scope(|s| {
        let srv = &server;
        s.spawn(move || {
            let stdin = std::io::stdin();
            let stdout = std::io::stdout();
            serve_stream(srv, stdin.lock(), || stdout.lock());
        });
        if let Some(l) = &listener {
            eprintln!("graftnet-device: listening on {}", args.socket.as_ref().unwrap().display());
            for conn in l.incoming() {
                match conn {
                    Ok(c) => {
                        s.spawn(move || serve_connection(srv, c));
                    }
                    Err(e) => eprintln!("graftnet-device: accept: {e}"),
                }
            }
        }
    });
    Ok(())
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

fn serve_connection(srv: &Mutex<Server<'_, '_>>, c: UnixStream) {
    let Ok(w) = c.try_clone() else { return };
    serve_stream(srv, BufReader::new(c), || &w);
}

/// Serves lines from `input` until its end (or until the other side stops
/// reading), writing each response through `out()` and flushing it.
fn serve_stream<R: BufRead, W: Write>(srv: &Mutex<Server<'_, '_>>, mut input: R, mut out: impl FnMut() -> W) {
    let mut buf = Vec::new();
    loop {
        let resp = match read_line(&mut input, &mut buf) {
            Ok(Line::Eof) => return,
            Ok(Line::TooLong) => Some(error_response(&Refusal {
                id: serde_json::Value::Null,
                message: format!("request line longer than {MAX_LINE} bytes"),
            })),
            Ok(Line::Data) => match std::str::from_utf8(&buf) {
                Ok(s) => srv.lock().unwrap_or_else(|p| p.into_inner()).handle_line(s),
                Err(_) => Some(error_response(&Refusal { id: serde_json::Value::Null, message: "request is not UTF-8".into() })),
            },
            Err(_) => return,
        };
        if let Some(r) = resp {
            let mut w = out();
            if writeln!(w, "{r}").and_then(|_| w.flush()).is_err() {
                return;
            }
        }
    }
}

enum Line {
    Data,
    TooLong,
    Eof,
}

/// Reads one line into `buf` (without the newline), at most [`MAX_LINE`]
/// bytes; the rest of a longer line is skipped.
fn read_line<R: BufRead>(r: &mut R, buf: &mut Vec<u8>) -> std::io::Result<Line> {
    buf.clear();
    let n = r.by_ref().take(MAX_LINE as u64 + 1).read_until(b'\n', buf)?;
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
    if buf.len() <= MAX_LINE {
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
mod tests {
    use super::*;

    #[test]
    fn lines_are_bounded() {
        let mut long = vec![b'x'; MAX_LINE + 10];
        long.extend_from_slice(b"\n{\"a\":1}\r\nlast");
        let mut r = std::io::Cursor::new(long);
        let mut buf = Vec::new();
        assert!(matches!(read_line(&mut r, &mut buf).unwrap(), Line::TooLong));
        assert!(matches!(read_line(&mut r, &mut buf).unwrap(), Line::Data));
        assert_eq!(buf, b"{\"a\":1}");
        assert!(matches!(read_line(&mut r, &mut buf).unwrap(), Line::Data));
        assert_eq!(buf, b"last");
        assert!(matches!(read_line(&mut r, &mut buf).unwrap(), Line::Eof));
    }
}
