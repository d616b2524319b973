//! `graftnet bench`: the command line of the host timings in `crate::bench`.

use std::path::PathBuf;

use anyhow::Result;
use clap::Args as ClapArgs;

use super::VerifyArgs;
use crate::bench;

#[derive(ClapArgs)]
pub struct Args {
    dir: PathBuf,
    #[command(flatten)]
    verify: VerifyArgs,
    /// task to time inference on (default: base, or the first of --tasks)
    #[arg(long)]
    task: Option<String>,
    /// time these tasks together in one pass (shared ops once): multi_ms
    #[arg(long, value_delimiter = ',', value_name = "A,B,...")]
    tasks: Vec<String>,
    #[arg(long, default_value_t = 1)]
    threads: usize,
    /// timed inferences (after warm-up)
    #[arg(long, default_value_t = 50)]
    iters: usize,
    /// kernel table (scalar, avx2, avx512vnni, neon, dotprod, or all; default: the best for this CPU)
    #[arg(long)]
    kernels: Option<String>,
    #[arg(long)]
    json: bool,
}

impl Args {
    pub fn run(self) -> Result<()> {
        let Args {
            dir,
            verify,
            task,
            tasks,
            threads,
            iters,
            kernels,
            json,
        } = self;
        verify.key().and_then(|verify_key| {
            bench::run(&bench::BenchArgs {
                dir,
                verify_key,
                task,
                threads,
                iters,
                json,
                kernels,
                tasks,
            })
        })
    }
}
