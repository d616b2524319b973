//! Times the parts of a task switch: `cargo run --release -p graftnet-tests --example switch_profile -- EXPORT_DIR TASK`
use std::time::Instant;

use graftnet::{Backbone, Engine, Patch, Requant};

fn main() {
    let a: Vec<String> = std::env::args().collect();
    let dir = std::path::Path::new(&a[1]);
    let bbb = std::fs::read(dir.join("backbone.gnb")).unwrap();
    let pb = std::fs::read(dir.join(format!("{}.gnp", a[2]))).unwrap();
    let bb = Backbone::parse(&bbb).unwrap();
    let mut arena = vec![0i8; bb.arena_len()];
    let mut params = vec![Requant::default(); bb.params_len()];
    let mut e = Engine::new(&bb, &mut arena, &mut params).unwrap();
    let n = 300;
    let t = Instant::now();
    for _ in 0..n {
        std::hint::black_box(Patch::parse(&pb).unwrap());
    }
    println!(
        "Patch::parse   {:8.1} us",
        t.elapsed().as_secs_f64() * 1e6 / n as f64
    );
    let p = Patch::parse(&pb).unwrap();
    let t = Instant::now();
    for _ in 0..n {
        std::hint::black_box(
            bb.validate_task(p.entry_bytes(), p.n_entries(), false)
                .unwrap(),
        );
    }
    println!(
        "validate_task  {:8.1} us",
        t.elapsed().as_secs_f64() * 1e6 / n as f64
    );
    let t = Instant::now();
    for _ in 0..n {
        e.apply(p).unwrap();
    }
    println!(
        "apply (all)    {:8.1} us",
        t.elapsed().as_secs_f64() * 1e6 / n as f64
    );
}
