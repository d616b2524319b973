//! `Engine::run_tasks` on real exports (the fuzz seeds: a tiny network with
//! S/B, DW, logits patches and one that brings its own head, and a
//! MobileNetV3-small with two S/B patches): every task's scores equal a separate `apply` + `run`, on
//! every kernel table this CPU runs and, with `std`, several thread counts.
//! Runs under qemu-aarch64 too (`targets/qemu-test.sh`), so the NEON and
//! dotprod tables are checked on the boards.

use graftnet::kernels::Kernels;
use graftnet::{Backbone, ChannelRequant, Engine, Patch};

static TINY: &[u8] = include_bytes!("../fuzz/seeds/backbone/tiny.gnb");
static TINY_PATCHES: [&[u8]; 4] = [
    include_bytes!("../fuzz/seeds/patch/tiny-sb.gnp"),
    include_bytes!("../fuzz/seeds/patch/tiny-dw.gnp"),
    include_bytes!("../fuzz/seeds/patch/tiny-logits.gnp"),
    // brings its own head (FC-ReLU-FC)
    include_bytes!("../fuzz/seeds/patch/tiny-head.gnp"),
];
static MNV3: &[u8] = include_bytes!("../fuzz/seeds/mnv3.gnb");
static MNV3_PATCHES: [&[u8]; 2] = [
    include_bytes!("../fuzz/seeds/patch/mnv3-mnist-sb.gnp"),
    include_bytes!("../fuzz/seeds/patch/mnv3-fashion-updown-sb.gnp"),
];

fn check(bb_bytes: &[u8], patch_bytes: &[&[u8]]) -> usize {
    let bb = Backbone::parse(bb_bytes).unwrap();
    let patches: Vec<Patch<'_>> = patch_bytes
        .iter()
        .map(|b| Patch::parse(b).unwrap())
        .collect();
    let n = patches.len();
    // Every task (None = base), a task twice, and the base between two.
    let mut lists: Vec<Vec<Option<usize>>> = vec![
        (0..n).map(Some).chain([None]).collect(),
        vec![Some(n - 1), Some(n - 1)],
        vec![Some(0), None, Some(n - 1)],
        vec![Some(n - 2), Some(n - 1), None],
    ];
    lists.push(vec![None]);
    let inputs: Vec<Vec<i8>> = (0..3u32)
        .map(|s| {
            (0..bb.input().len() as u32)
                .map(|i| (i.wrapping_mul(2_654_435_761).wrapping_add(s * 977) >> 13) as i8)
                .collect()
        })
        .collect();
    let sizes = bb.engine_sizes(&patches);
    let mut arena = vec![0i8; sizes.arena];
    let mut params = vec![ChannelRequant::default(); sizes.params];
    let mut branch = vec![0i8; sizes.arena];
    let mut e = Engine::new(&bb, &mut arena, &mut params).unwrap();
    let mut checked = 0;
    let threads: &[usize] = if cfg!(feature = "std") {
        &[1, 2, 3]
    } else {
        &[1]
    };
    for k in Kernels::available() {
        e.set_kernels(k);
        for &t in threads {
            #[cfg(feature = "std")]
            e.set_threads(t);
            let _ = t;
            for list in &lists {
                let tasks: Vec<Option<Patch<'_>>> =
                    list.iter().map(|&i| i.map(|i| patches[i])).collect();
                for x in &inputs {
                    let mut together = Vec::new();
                    e.run_tasks(x, &tasks, &mut branch, |j, s| {
                        together.push((j, s.quantized().to_vec()))
                    })
                    .unwrap();
                    assert_eq!(e.task_name(), "base");
                    for (j, task) in tasks.iter().enumerate() {
                        match task {
                            Some(p) => e.apply(*p).unwrap(),
                            None => e.reset(),
                        }
                        let alone = e.run(x).unwrap().quantized().to_vec();
                        assert_eq!(
                            together[j],
                            (j, alone),
                            "kernels {}, {t} threads, list {list:?}, task {j}",
                            k.name
                        );
                        checked += 1;
                    }
                    e.reset();
                }
            }
        }
    }
    checked
}

#[test]
fn run_tasks_equals_separate_runs_on_the_tiny_network() {
    let n = check(TINY, &TINY_PATCHES);
    println!("{n} task results compared");
}

#[test]
fn run_tasks_equals_separate_runs_on_mobilenet_v3() {
    let n = check(MNV3, &MNV3_PATCHES);
    println!("{n} task results compared");
}
