//! `graftnet`: export ONNX models to a backbone + task patches, inspect blobs,
//! and run or evaluate tasks on the host through the real runtime. Each
//! command lives in its own file under `cli/`.

use std::process::ExitCode;

use clap::{Parser, Subcommand};

mod bench;
mod cli;

#[derive(Parser)]
#[command(
    name = "graftnet",
    version,
    about = "One frozen int8 backbone, many kilobyte task patches (K for the Price of 1)"
)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Export a base model and task models to DIR/backbone.gnb + DIR/NAME.gnp.
    Export(cli::export::Args),
    /// Train a task patch (S/B, DW, logits) or a whole base on the CPU; writes ONNX for `export`.
    Learn(Box<graftnet_tools::learn::cli::LearnArgs>),
    /// Describe a backbone (.gnb) or patch (.gnp): layers, shapes, sizes, quantization, signature.
    Inspect(cli::inspect::Args),
    /// Make an Ed25519 signing key: KEY (secret, 64 hex digits, mode 0600) and KEY.pub.
    Keygen(cli::keygen::Args),
    /// Sign backbones (.gnb) and patches (.gnp) in place (or to --out): appends an Ed25519 signature trailer, replacing an old one.
    Sign(cli::sign::Args),
    /// Talk to a board over the device protocol: info, tasks, switch, infer, upload, delete, check, bench.
    Device(cli::device::DeviceArgs),
    /// Class scores of one input; several --task in one pass (the ops they share run once).
    Run(cli::run::Args),
    /// Int8 top-1 accuracy of a task (and the float model's, with --reference).
    Eval(cli::eval::Args),
    /// Time inference, task switch and memory of an export directory (and signature checks, with --verify-key).
    Bench(cli::bench::Args),
    /// Randomized long run of one engine: task switches, inferences checked
    /// bit for bit against a per-task reference, corrupted patches that must
    /// be refused; exits non-zero on any mismatch or accepted corruption.
    Soak(graftnet_tools::soak::SoakArgs),
    /// The main job on the models and data the repository ships: export,
    /// then run every task and print accuracy, sizes and switch time.
    Demo(cli::demo::Args),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let r = match cli.cmd {
        Cmd::Export(a) => a.run(),
        Cmd::Learn(a) => a.run(),
        Cmd::Inspect(a) => a.run(),
        Cmd::Keygen(a) => a.run(),
        Cmd::Sign(a) => a.run(),
        Cmd::Device(a) => cli::device::run(a),
        Cmd::Run(a) => a.run(),
        Cmd::Eval(a) => a.run(),
        Cmd::Bench(a) => a.run(),
        Cmd::Soak(a) => a.run(),
        Cmd::Demo(a) => a.run(),
    };
    match r {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
