//! Int8 top-1 within 1.0 point of the float model (tract) for every task of
//! every shipped model, on >= 2,000 test images per task (the full test
//! splits written by `tests/data/setup.sh`).

use graftnet_tests::*;
use graftnet_tools::host::{argmax, ExportDir};
use graftnet_tools::pipeline::{export, ExportOptions};
use graftnet_tools::reference::TractModel;

/// Images per task (spread evenly over the split).
const N: usize = 2000;

fn subset(ds: &graftnet_tools::data::Dataset, n: usize) -> Vec<usize> {
    let step = (ds.len() / n).max(1);
    (0..ds.len()).step_by(step).take(n).collect()
}

fn family(arch: &str, form: &str, tasks: &[(&str, &str)]) {
    let m = models();
    let fixture = m.join("data");
    let out = scratch(&format!("acc-{arch}-{form}"));
    let mut opts = ExportOptions {
        base: m.join(arch).join(format!("base.{form}.onnx")),
        calib: fixture.join("fashion_calib_x.npy"),
        out: out.clone(),
        ..Default::default()
    };
    for (t, d) in tasks {
        opts.tasks
            .push((t.to_string(), m.join(arch).join(format!("{t}.{form}.onnx"))));
        opts.calib_tasks
            .insert(t.to_string(), fixture.join(format!("{d}_calib_x.npy")));
    }
    let report = export(&opts).unwrap();
    let d = ExportDir::open(&out).unwrap();
    let mut failures = Vec::new();
    for (task, data_task) in std::iter::once(("base", "fashion")).chain(tasks.iter().copied()) {
        let x = require_generated(&format!("{data_task}_test_x.npy"));
        let y = require_generated(&format!("{data_task}_test_y.npy"));
        let ds = npy(&x, Some(&y));
        let labels = ds.labels.clone().unwrap();
        let idx = subset(&ds, N);
        assert!(
            idx.len() >= 2000,
            "{data_task}: only {} test images",
            idx.len()
        );
        let onnx = if task == "base" {
            opts.base.clone()
        } else {
            m.join(arch).join(format!("{task}.{form}.onnx"))
        };
        let tract = TractModel::load(&onnx, None).unwrap();
        let int8: Vec<usize> = d
            .with_engine(task, |e| {
                Ok(idx
                    .iter()
                    .map(|&i| e.run_f32(ds.sample(i)).unwrap().argmax())
                    .collect())
            })
            .unwrap();
        let float: Vec<usize> = idx
            .iter()
            .map(|&i| argmax(&tract.run(ds.sample(i)).unwrap()))
            .collect();
        let n = idx.len() as f64;
        let acc_q = idx
            .iter()
            .zip(&int8)
            .filter(|(&i, &p)| p == labels[i])
            .count() as f64
            / n
            * 100.0;
        let acc_f = idx
            .iter()
            .zip(&float)
            .filter(|(&i, &p)| p == labels[i])
            .count() as f64
            / n
            * 100.0;
        let agree = int8.iter().zip(&float).filter(|(a, b)| a == b).count() as f64 / n * 100.0;
        let bytes = report
            .tasks
            .iter()
            .find(|t| t.name == task)
            .unwrap()
            .patch_bytes;
        println!("| {arch} {form} | {task} | {} | {acc_f:.2} | {acc_q:.2} | {:+.2} | {agree:.2} | {bytes} |", idx.len(), acc_q - acc_f);
        if (acc_q - acc_f).abs() > 1.0 {
            failures.push(format!(
                "{arch} {form} {task}: int8 {acc_q:.2} % vs float {acc_f:.2} %"
            ));
        }
    }
    let _ = std::fs::remove_dir_all(&out);
    assert!(
        failures.is_empty(),
        "more than 1.0 point from float: {failures:?}"
    );
}

#[test]
fn mnv2_folded_tasks_within_one_point() {
    family(
        "mnv2",
        "folded",
        &[
            ("mnist-sb", "mnist"),
            ("mnist-dw", "mnist"),
            ("fashion-updown-sb", "fashion-updown"),
            ("fashion-binary-logits", "fashion-binary"),
        ],
    );
}

#[test]
fn mnv2_unfolded_tasks_within_one_point() {
    family(
        "mnv2",
        "unfolded",
        &[("mnist-sb", "mnist"), ("mnist-dw", "mnist")],
    );
}

#[test]
fn mnv3_tasks_within_one_point() {
    family(
        "mnv3",
        "folded",
        &[
            ("mnist-sb", "mnist"),
            ("fashion-updown-sb", "fashion-updown"),
        ],
    );
}
