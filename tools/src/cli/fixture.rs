//! `graftnet fixture`: synthetic MobileNet ONNX models (random weights,
//! PyTorch export style) with derived S/B, DW and logits tasks, plus random
//! calibration data (`graftnet_tools::fixtures`).

use std::path::PathBuf;

use anyhow::{bail, Context, Result};
use clap::Args as ClapArgs;

use graftnet_tools::data;
use graftnet_tools::fixtures::{
    derive_task, mobilenet_v2, mobilenet_v3_small, random_inputs, to_onnx, ExportStyle,
    MobileNetV2Config, MobileNetV3Config, TaskKind,
};

#[derive(ClapArgs)]
pub struct Args {
    /// mnv2 or mnv3
    #[arg(long, default_value = "mnv2")]
    arch: String,
    #[arg(long, default_value_t = 1.0)]
    width: f32,
    #[arg(long, default_value_t = 224)]
    resolution: usize,
    #[arg(long, default_value_t = 3)]
    channels: usize,
    #[arg(long, default_value_t = 10)]
    classes: usize,
    /// calibration samples to write
    #[arg(long, default_value_t = 8)]
    calib: usize,
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// also write K logits-only tasks (logits-1..K) and K S/B tasks on the
    /// last two blocks (sb-tail-1..K): tasks that share a prefix, for
    /// `export --share-prefix` and `bench --tasks`
    #[arg(long, default_value_t = 0, value_name = "K")]
    multi: usize,
    #[arg(long)]
    out: PathBuf,
}

impl Args {
    pub fn run(self) -> Result<()> {
        let Args {
            arch,
            width,
            resolution,
            channels,
            classes,
            calib,
            seed,
            multi,
            out,
        } = self;
        let stride = if resolution >= 96 { 2 } else { 1 };
        let base = match arch.as_str() {
            "mnv2" => mobilenet_v2(&MobileNetV2Config {
                width,
                resolution,
                in_channels: channels,
                classes,
                first_stride: stride,
                seed,
            }),
            "mnv3" => mobilenet_v3_small(&MobileNetV3Config {
                width,
                resolution,
                in_channels: channels,
                classes,
                first_stride: 2,
                reduced_tail: false,
                seed,
            }),
            _ => bail!("--arch must be mnv2 or mnv3"),
        };
        std::fs::create_dir_all(&out).with_context(|| format!("creating {}", out.display()))?;
        let style = ExportStyle::default();
        let mut models = vec![
            ("base".to_string(), base.clone()),
            (
                "sb".to_string(),
                derive_task(&base, TaskKind::ScaleBias { classes }, seed + 1),
            ),
            (
                "dw".to_string(),
                derive_task(&base, TaskKind::Depthwise { classes }, seed + 2),
            ),
            (
                "logits".to_string(),
                derive_task(&base, TaskKind::Logits { classes }, seed + 3),
            ),
        ];
        models.push((
            "head".to_string(),
            derive_task(
                &base,
                TaskKind::HiddenHead {
                    hidden: 32,
                    classes,
                },
                seed + 4,
            ),
        ));
        for i in 1..=multi as u64 {
            let logits = TaskKind::Logits { classes };
            let tail = TaskKind::ScaleBiasTail { blocks: 2, classes };
            models.push((
                format!("logits-{i}"),
                derive_task(&base, logits, seed + 20 + i),
            ));
            models.push((
                format!("sb-tail-{i}"),
                derive_task(&base, tail, seed + 40 + i),
            ));
        }
        for (name, p) in &models {
            let path = out.join(format!("{name}.onnx"));
            std::fs::write(&path, to_onnx(p, &style))
                .with_context(|| format!("writing {}", path.display()))?;
        }
        let [_, c, h, w] = base.input_shape();
        data::write_npy_f32(
            out.join("calib.npy"),
            &[calib, c, h, w],
            &random_inputs(calib, c, h, w, seed + 10),
        )?;
        println!(
            "wrote {}/{{base,sb,dw,logits,head}}.onnx (head: a new FC-ReLU-FC head, 32 hidden units) and calib.npy ({} parameters, {} batch-norm channels); export with:\n  graftnet export --base {0}/base.onnx --task sb={0}/sb.onnx --task dw={0}/dw.onnx --task logits={0}/logits.onnx --task head={0}/head.onnx --calib {0}/calib.npy --out {0}/export",
            out.display(),
            base.param_count(),
            base.bn_channels()
        );
        if multi > 0 {
            println!(
                "wrote {}/logits-{{1..{multi}}}.onnx and sb-tail-{{1..{multi}}}.onnx (tasks sharing a prefix with the base); time them together with export --share-prefix, then bench --tasks",
                out.display()
            );
        }
        Ok(())
    }
}
