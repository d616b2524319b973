//! Times the parts of a task switch: `cargo run --release -p graftnet-tests --example switch_profile -- EXPORT_DIR TASK [ROUNDS]`
//!
//! Medians over ROUNDS (default 300) of: `Patch::parse` (checksum, header,
//! framing), `Backbone::validate_task` (the check `apply` starts with),
//! `Engine::apply` of the parsed patch (a switch between resident, verified
//! patches: validation + derivation), and `Patch::parse` + `Engine::apply`
//! (a switch from bytes). The derivation is apply minus validation.
use std::time::Instant;

use graftnet::{Backbone, ChannelRequant, Engine, Patch};

fn median_us(rounds: usize, mut f: impl FnMut()) -> f64 {
    let mut t: Vec<f64> = (0..rounds)
        .map(|_| {
            let t0 = Instant::now();
            f();
            t0.elapsed().as_secs_f64() * 1e6
        })
        .collect();
    t.sort_by(|a, b| a.total_cmp(b));
    t[t.len() / 2]
}

fn main() {
    let a: Vec<String> = std::env::args().collect();
    let dir = std::path::Path::new(&a[1]);
    let rounds: usize = a.get(3).map_or(300, |r| r.parse().unwrap());
    let bbb = std::fs::read(dir.join("backbone.gnb")).unwrap();
    let pb = std::fs::read(dir.join(format!("{}.gnp", a[2]))).unwrap();
    let bb = Backbone::parse(&bbb).unwrap();
    let mut arena = vec![0i8; bb.arena_len()];
    let mut params = vec![ChannelRequant::default(); bb.params_len()];
    let mut e = Engine::new(&bb, &mut arena, &mut params).unwrap();
    let parse = median_us(rounds, || {
        std::hint::black_box(Patch::parse(&pb).unwrap());
    });
    let p = Patch::parse(&pb).unwrap();
    let validate = median_us(rounds, || {
        std::hint::black_box(
            bb.validate_task(p.entry_bytes(), p.n_entries(), false)
                .unwrap(),
        );
    });
    let apply = median_us(rounds, || e.apply(p).unwrap());
    let both = median_us(rounds, || e.apply(Patch::parse(&pb).unwrap()).unwrap());
    println!("patch          {} bytes", pb.len());
    println!("Patch::parse   {parse:8.1} us");
    println!("validate_task  {validate:8.1} us");
    println!(
        "derive         {:8.1} us (apply - validate_task)",
        apply - validate
    );
    println!("apply (all)    {apply:8.1} us   <- switch between resident patches");
    println!("parse + apply  {both:8.1} us   <- switch from bytes");
}
