//! The A/B slot store (`src/slots.rs`) on a simulated NOR flash
//! (`tests/sim`): the typed refusals, the build-time partition as the first
//! set, and random power cuts during upload, commit and delete sequences.
//!
//! Power cuts: for each of two flash geometries (4 KB sectors with 4-byte
//! writes; the STM32H743's 128 KB sectors with 32-byte flash words), seeded
//! scenarios of uploads (random chunk sizes), replacements, deletes and
//! refused uploads run once without a cut, recording every flash operation;
//! then each chosen cut point replays the scenario from a fresh flash with
//! power failing during that operation (every erase and every commit-record
//! write of the scenario, and random other writes), re-mounts, and requires
//! the task set found to equal, byte for byte, the set before the change in
//! progress or the set after it; then a new upload must succeed on top.
//! Set `GRAFTNET_SLOT_SEED` to replay other scenarios.

mod sim;

use graftnet::format::entry::{emit_entry, entry_len, EntryClass, EntryKind};
use graftnet::format::patch::{seal, HeaderRepr};
use graftnet::{FormatError, Patch};
use graftnet_mcu::partition;
use graftnet_mcu::slots::{Policy, SlotError, SlotStore, RECORD_LEN};
use sim::{Op, Rng, SimFlash};

const FP: u64 = 0x0123_4567_89ab_cdef;
const TASKS: usize = 6;

/// A valid patch of `len_hint` bytes or a few more (one entry of random
/// payload) for task `name` of backbone `fp`.
fn make_patch(name: &str, fp: u64, len_hint: usize, rng: &mut Rng) -> Vec<u8> {
    let eo = HeaderRepr::entries_off(name.len());
    let payload: Vec<u8> = (0..len_hint.saturating_sub(eo + 8))
        .map(|_| rng.byte())
        .collect();
    let total = eo + entry_len(payload.len());
    let mut blob = vec![0u8; total];
    let h = HeaderRepr {
        total_len: total as u32,
        backbone: fp,
        n_entries: 1,
        classes: 2,
        name_len: name.len() as u16,
        entries_off: eo as u32,
        task_version: 0,
    };
    h.emit(&mut blob);
    blob[48..48 + name.len()].copy_from_slice(name.as_bytes());
    emit_entry(
        &mut blob[eo..],
        EntryKind::Labels,
        EntryClass::Meta,
        0,
        &payload,
    );
    seal(&mut blob);
    assert!(Patch::parse(&blob).is_ok());
    blob
}

type Set = Vec<(String, Vec<u8>)>;

/// The active set, read back from flash.
fn set_of<const E: usize, const W: usize>(s: &SlotStore<SimFlash<E, W>, TASKS>) -> Set {
    s.tasks()
        .iter()
        .map(|t| (t.name.to_string(), s.flash().mem[t.range()].to_vec()))
        .collect()
}

fn upload_all<const E: usize, const W: usize>(
    s: &mut SlotStore<SimFlash<E, W>, TASKS>,
    name: &str,
    blob: &[u8],
    chunks: &[usize],
) -> Result<(), SlotError> {
    let mut at = 0;
    let mut i = 0;
    while at < blob.len() {
        let n = chunks
            .get(i % chunks.len().max(1))
            .copied()
            .unwrap_or(blob.len())
            .clamp(1, blob.len() - at);
        let held = s.upload(name, blob.len() as u32, at as u32, &blob[at..at + n])?;
        at += n;
        i += 1;
        assert_eq!(held as usize, at);
    }
    s.commit(name)
}

fn mount<const E: usize, const W: usize>(
    flash: SimFlash<E, W>,
) -> SlotStore<SimFlash<E, W>, TASKS> {
    SlotStore::mount(flash, Policy::new(FP)).expect("mount")
}

// ------------------------------------------------------------ refusals

type Small = SimFlash<4096, 4>;

fn small() -> SlotStore<Small, TASKS> {
    mount(Small::new(64 * 1024, 1))
}

#[test]
fn upload_commit_delete_round_trip() {
    let mut rng = Rng::new(7);
    let mut s = small();
    assert!(s.tasks().is_empty());
    let a = make_patch("alpha", FP, 3000, &mut rng);
    let b = make_patch("bravo", FP, 5001, &mut rng);
    upload_all(&mut s, "alpha", &a, &[100, 7, 1000]).unwrap();
    upload_all(&mut s, "bravo", &b, &[4096]).unwrap();
    let want: Set = vec![("alpha".into(), a.clone()), ("bravo".into(), b.clone())];
    assert_eq!(set_of(&s), want);
    assert_eq!(s.active().generation, 2);
    assert_eq!(s.patch("bravo").unwrap().name(), "bravo");
    // Survives a re-mount.
    let s2 = mount(s.flash().clone());
    assert_eq!(set_of(&s2), want);
    // Replace alpha: it moves to the end of the table.
    let a2 = make_patch("alpha", FP, 2000, &mut rng);
    upload_all(&mut s, "alpha", &a2, &[333]).unwrap();
    assert_eq!(
        set_of(&s),
        vec![("bravo".into(), b.clone()), ("alpha".into(), a2.clone())]
    );
    s.delete("bravo").unwrap();
    assert_eq!(set_of(&s), vec![("alpha".into(), a2.clone())]);
    assert_eq!(s.delete("bravo"), Err(SlotError::UnknownTask));
    assert_eq!(
        set_of(&mount(s.flash().clone())),
        vec![("alpha".into(), a2)]
    );
    assert_eq!(s.flash().double_writes, 0);
}

#[test]
fn chunks_must_continue_the_upload_and_resume() {
    let mut rng = Rng::new(8);
    let mut s = small();
    let a = make_patch("alpha", FP, 1000, &mut rng);
    let n = a.len() as u32;
    assert_eq!(s.upload("alpha", n, 0, &a[..100]), Ok(100));
    // A repeated or skipped chunk says where to continue.
    assert_eq!(
        s.upload("alpha", n, 50, &a[50..150]),
        Err(SlotError::OutOfOrder { held: 100 })
    );
    assert_eq!(
        s.upload("alpha", n, 200, &a[200..300]),
        Err(SlotError::OutOfOrder { held: 100 })
    );
    assert_eq!(s.upload_state(), Some(("alpha", 100, n)));
    assert_eq!(
        s.commit("alpha"),
        Err(SlotError::Incomplete {
            held: 100,
            total: n
        })
    );
    assert_eq!(
        s.upload("bravo", n, 100, &a[100..200]),
        Err(SlotError::NoUpload)
    );
    assert_eq!(
        s.upload("alpha", n + 1, 100, &a[100..200]),
        Err(SlotError::NoUpload)
    );
    assert_eq!(s.upload("alpha", n, 100, &a[100..]), Ok(n));
    assert_eq!(
        s.upload("alpha", n, n, &[0]),
        Err(SlotError::Overrun { total: n })
    );
    assert_eq!(s.commit("bravo"), Err(SlotError::NoUpload));
    s.commit("alpha").unwrap();
    assert_eq!(s.commit("alpha"), Err(SlotError::NoUpload));
    assert_eq!(set_of(&s), vec![("alpha".into(), a)]);
}

#[test]
fn bad_uploads_are_refused_and_the_set_stays() {
    let mut rng = Rng::new(9);
    let mut s = small();
    let a = make_patch("alpha", FP, 1500, &mut rng);
    upload_all(&mut s, "alpha", &a, &[500]).unwrap();
    let before = set_of(&s);
    let generation = s.active().generation;

    // Another backbone: refused as soon as the header is in.
    let other = make_patch("bravo", FP ^ 1, 1500, &mut rng);
    let e = s.upload("bravo", other.len() as u32, 0, &other[..40]);
    assert_eq!(e, Ok(40));
    let e = s.upload("bravo", other.len() as u32, 40, &other[40..200]);
    assert_eq!(
        e,
        Err(SlotError::Patch(FormatError::WrongBackbone {
            expected: FP,
            found: FP ^ 1
        }))
    );
    assert_eq!(
        s.upload("bravo", other.len() as u32, 200, &other[200..]),
        Err(SlotError::NoUpload)
    );

    // A corrupted chunk: the CRC fails at commit.
    let mut bad = make_patch("bravo", FP, 1500, &mut rng);
    upload_all(&mut s, "bravo", &bad, &[1500]).unwrap();
    let good_b = set_of(&s);
    bad[700] ^= 0x10;
    let r = upload_all(&mut s, "bravo", &bad, &[256]);
    assert!(
        matches!(
            r,
            Err(SlotError::Patch(FormatError::ChecksumMismatch { .. }))
        ),
        "{r:?}"
    );
    assert_eq!(set_of(&s), good_b);
    s.delete("bravo").unwrap();
    assert_eq!(set_of(&s), before);
    assert_eq!(s.active().generation, generation + 2);

    // The upload's length is not the patch's.
    let c = make_patch("charlie", FP, 800, &mut rng);
    let r = s.upload("charlie", c.len() as u32 + 5, 0, &c[..64]);
    assert_eq!(
        r,
        Err(SlotError::LengthMismatch {
            upload: c.len() as u32 + 5,
            patch: c.len() as u32
        })
    );
    // Trailing bytes that are not a signature: refused at commit.
    let mut padded = c.clone();
    padded.extend_from_slice(&[0u8; 80]);
    let r = upload_all(&mut s, "charlie", &padded, &[64]);
    assert!(matches!(r, Err(SlotError::LengthMismatch { .. })), "{r:?}");
    // The patch names another task.
    let r = upload_all(&mut s, "delta", &c, &[64]);
    assert_eq!(r, Err(SlotError::NameMismatch));
    // Not a patch at all.
    let r = s.upload("echo", 100, 0, &[0x55; 100]);
    assert!(
        matches!(r, Err(SlotError::Patch(FormatError::BadMagic { .. }))),
        "{r:?}"
    );
    // Names.
    for n in ["", "base", "a\0b", "this-name-is-longer-than-32-bytes!"] {
        assert_eq!(
            s.upload(n, 100, 0, &c[..64]),
            Err(SlotError::BadName),
            "{n:?}"
        );
    }
    assert_eq!(
        s.upload("x", 10, 0, &c[..10]),
        Err(SlotError::LengthMismatch {
            upload: 10,
            patch: 48
        })
    );
    assert_eq!(set_of(&s), before);
    assert_eq!(set_of(&mount(s.flash().clone())), before);
    assert_eq!(s.flash().double_writes, 0);
}

#[test]
fn full_table_and_full_slot_are_refused() {
    let mut rng = Rng::new(10);
    let mut s = small();
    for i in 0..TASKS {
        let name = format!("t{i}");
        upload_all(&mut s, &name, &make_patch(&name, FP, 300, &mut rng), &[300]).unwrap();
    }
    let p = make_patch("one-more", FP, 300, &mut rng);
    assert_eq!(
        s.upload("one-more", p.len() as u32, 0, &p[..64]),
        Err(SlotError::TableFull {
            capacity: TASKS as u16
        })
    );
    // Replacing a task of a full table is fine.
    upload_all(&mut s, "t0", &make_patch("t0", FP, 500, &mut rng), &[100]).unwrap();
    let big = make_patch("big", FP, 40_000, &mut rng);
    s.delete("t1").unwrap();
    let r = s.upload("big", big.len() as u32, 0, &big[..64]);
    assert!(
        matches!(r, Err(SlotError::NoSpace { have: 32768, .. })),
        "{r:?}"
    );
    assert_eq!(s.tasks().len(), TASKS - 1);
}

#[test]
fn the_build_time_partition_is_the_first_set() {
    let mut rng = Rng::new(11);
    let a = make_patch("alpha", FP, 2000, &mut rng);
    let b = make_patch("bravo", FP, 3000, &mut rng);
    let parts: [(&str, &[u8]); 2] = [("alpha", &a), ("bravo", &b)];
    let mut image = vec![0u8; partition::image_len(parts.iter().map(|p| p.1.len()))];
    partition::emit(&parts, &mut image).unwrap();
    let mut flash = Small::new(64 * 1024, 2);
    flash.mem[..image.len()].copy_from_slice(&image);
    let mut s = mount(flash);
    assert_eq!(s.active().generation, 0);
    assert_eq!(
        set_of(&s),
        vec![("alpha".into(), a.clone()), ("bravo".into(), b.clone())]
    );
    // The first change goes to slot B and keeps the seed's tasks.
    let c = make_patch("charlie", FP, 1000, &mut rng);
    upload_all(&mut s, "charlie", &c, &[999]).unwrap();
    assert_eq!(s.active().slot, Some(graftnet_mcu::slots::Slot::B));
    assert_eq!(
        set_of(&mount(s.flash().clone())),
        vec![
            ("alpha".into(), a),
            ("bravo".into(), b),
            ("charlie".into(), c)
        ]
    );

    // A partition with a patch of another backbone, or larger than a slot,
    // is no set: the store starts empty.
    let other = make_patch("alpha", FP ^ 2, 2000, &mut rng);
    let parts: [(&str, &[u8]); 1] = [("alpha", &other)];
    let mut image = vec![0u8; partition::image_len(parts.iter().map(|p| p.1.len()))];
    partition::emit(&parts, &mut image).unwrap();
    let mut flash = Small::new(64 * 1024, 3);
    flash.mem[..image.len()].copy_from_slice(&image);
    assert!(mount(flash).tasks().is_empty());
    let big = make_patch("alpha", FP, 40_000, &mut rng);
    let parts: [(&str, &[u8]); 1] = [("alpha", &big)];
    let mut image = vec![0u8; partition::image_len(parts.iter().map(|p| p.1.len()))];
    partition::emit(&parts, &mut image).unwrap();
    let mut flash = Small::new(64 * 1024, 4);
    flash.mem[..image.len()].copy_from_slice(&image);
    assert!(mount(flash).tasks().is_empty());
}

#[test]
fn unusable_geometry_is_refused() {
    // 3 sectors: the halves are not whole sectors.
    let r = SlotStore::<Small, TASKS>::mount(Small::new(3 * 4096, 1), Policy::new(FP));
    assert!(matches!(r, Err(SlotError::Geometry)));
    // A write unit that does not divide the 64-byte blob alignment.
    let r =
        SlotStore::<SimFlash<4096, 48>, TASKS>::mount(SimFlash::new(8 * 4096, 1), Policy::new(FP));
    assert!(matches!(r, Err(SlotError::Geometry)));
}

#[cfg(feature = "verify")]
#[test]
fn with_a_key_only_signed_patches_enter() {
    use graftnet::format::signature::TRAILER_LEN;
    use graftnet::SigningKey;
    let key = SigningKey::from_seed(&[5; 32]);
    let other = SigningKey::from_seed(&[6; 32]);
    let mut rng = Rng::new(12);
    let mut s: SlotStore<Small, TASKS> = SlotStore::mount(
        Small::new(64 * 1024, 1),
        Policy::signed(FP, key.verify_key()),
    )
    .unwrap();
    let plain = make_patch("alpha", FP, 1000, &mut rng);
    let mut signed = plain.clone();
    signed.extend_from_slice(&key.sign(&plain));
    let mut wrong = plain.clone();
    wrong.extend_from_slice(&other.sign(&plain));
    assert_eq!(
        upload_all(&mut s, "alpha", &plain, &[100]),
        Err(SlotError::Patch(FormatError::Unsigned))
    );
    assert!(matches!(
        upload_all(&mut s, "alpha", &wrong, &[100]),
        Err(SlotError::Patch(FormatError::WrongKey { .. }))
    ));
    let mut forged = signed.clone();
    forged[60] ^= 1;
    seal(&mut forged[..plain.len()]);
    assert_eq!(
        upload_all(&mut s, "alpha", &forged, &[100]),
        Err(SlotError::Patch(FormatError::BadSignature))
    );
    assert!(s.tasks().is_empty());
    upload_all(&mut s, "alpha", &signed, &[100]).unwrap();
    assert_eq!(s.tasks()[0].len as usize, plain.len() + TRAILER_LEN);
    // A store without the key reads the signed set; one with another key does not.
    let flash = s.into_flash();
    assert_eq!(
        SlotStore::<Small, TASKS>::mount(flash.clone(), Policy::new(FP))
            .unwrap()
            .tasks()
            .len(),
        1
    );
    assert!(
        SlotStore::<Small, TASKS>::mount(flash, Policy::signed(FP, other.verify_key()))
            .unwrap()
            .tasks()
            .is_empty()
    );
}

// ---------------------------------------------------------- power cuts

/// One change of a scenario.
#[derive(Clone)]
enum Action {
    /// upload and commit (expected to succeed)
    Upload {
        name: String,
        blob: Vec<u8>,
        chunks: Vec<usize>,
    },
    /// upload a patch with one byte flipped, then commit: refused
    Corrupt {
        name: String,
        blob: Vec<u8>,
        chunks: Vec<usize>,
    },
    /// an upload that stops halfway, then another change
    Abandon {
        name: String,
        blob: Vec<u8>,
    },
    Delete {
        name: String,
    },
}

const NAMES: [&str; 5] = [
    "alpha",
    "bravo",
    "charlie-with-a-long-task-name-32",
    "d",
    "echo",
];

/// A seeded scenario whose every set fits a slot of `slot_len` bytes.
fn scenario(rng: &mut Rng, steps: usize, max_patch: usize, slot_len: usize) -> (Set, Vec<Action>) {
    let mut model: Set = Vec::new();
    let mut actions = Vec::new();
    // Room for alignment and for the upload after each cut.
    let budget = slot_len - RECORD_LEN - partition::table_len(TASKS) - 64 * TASKS - 1024;
    let mut seed: Set = Vec::new();
    if rng.below(2) == 0 {
        // Start from a build-time partition with two tasks.
        for name in &NAMES[..2] {
            let blob = make_patch(
                name,
                FP,
                100 + rng.below(max_patch as u64 / 2) as usize,
                rng,
            );
            seed.push((name.to_string(), blob));
        }
        model = seed.clone();
    }
    while actions.len() < steps {
        let name = NAMES[rng.below(NAMES.len() as u64) as usize].to_string();
        let chunks: Vec<usize> = (0..3).map(|_| 1 + rng.below(2000) as usize).collect();
        match rng.below(10) {
            0..=1 if !model.is_empty() => {
                let victim = model[rng.below(model.len() as u64) as usize].0.clone();
                model.retain(|(n, _)| *n != victim);
                actions.push(Action::Delete { name: victim });
            }
            2 => {
                let mut blob =
                    make_patch(&name, FP, 100 + rng.below(max_patch as u64) as usize, rng);
                let i = 48 + rng.below(blob.len() as u64 - 48) as usize;
                blob[i] ^= 1 << rng.below(8);
                actions.push(Action::Corrupt { name, blob, chunks });
            }
            3 => {
                let blob = make_patch(&name, FP, 200 + rng.below(max_patch as u64) as usize, rng);
                let used: usize = model
                    .iter()
                    .filter(|(n, _)| *n != name)
                    .map(|(_, b)| b.len())
                    .sum();
                if used + blob.len() > budget {
                    continue;
                }
                actions.push(Action::Abandon { name, blob });
            }
            _ => {
                let blob = make_patch(&name, FP, 100 + rng.below(max_patch as u64) as usize, rng);
                let used: usize = model
                    .iter()
                    .filter(|(n, _)| *n != name)
                    .map(|(_, b)| b.len())
                    .sum();
                if used + blob.len() > budget {
                    continue;
                }
                model.retain(|(n, _)| *n != name);
                model.push((name.clone(), blob.clone()));
                actions.push(Action::Upload { name, blob, chunks });
            }
        }
    }
    (seed, actions)
}

/// Runs `a`; `Err` only from a power cut (anything else unexpected panics).
fn run_action<const E: usize, const W: usize>(
    s: &mut SlotStore<SimFlash<E, W>, TASKS>,
    a: &Action,
) -> Result<(), SlotError> {
    let r = match a {
        Action::Upload { name, blob, chunks } | Action::Corrupt { name, blob, chunks } => {
            upload_all(s, name, blob, chunks)
        }
        Action::Abandon { name, blob } => s
            .upload(name, blob.len() as u32, 0, &blob[..blob.len() / 2])
            .map(|_| ()),
        Action::Delete { name } => s.delete(name),
    };
    if s.flash().is_dead() {
        assert!(r.is_err(), "a power cut went unnoticed");
        return r;
    }
    match (a, r) {
        (Action::Corrupt { .. }, Err(SlotError::Patch(_))) => Ok(()),
        (Action::Corrupt { name, .. }, r) => panic!("a corrupted upload of {name}: {r:?}"),
        (_, Err(e)) => panic!("{}: {e}", describe(a)),
        (_, Ok(())) => Ok(()),
    }
}

fn describe(a: &Action) -> String {
    match a {
        Action::Upload { name, blob, .. } => format!("upload {name} ({} bytes)", blob.len()),
        Action::Corrupt { name, blob, .. } => {
            format!("corrupted upload {name} ({} bytes)", blob.len())
        }
        Action::Abandon { name, blob } => format!("abandoned upload {name} ({} bytes)", blob.len()),
        Action::Delete { name } => format!("delete {name}"),
    }
}

/// The sets before and after each action, from the uncut run.
fn expected_sets(seed: &Set, actions: &[Action]) -> Vec<Set> {
    let mut sets = vec![seed.clone()];
    let mut m = seed.clone();
    for a in actions {
        match a {
            Action::Upload { name, blob, .. } => {
                m.retain(|(n, _)| n != name);
                m.push((name.clone(), blob.clone()));
            }
            Action::Delete { name } => m.retain(|(n, _)| n != name),
            Action::Corrupt { .. } | Action::Abandon { .. } => {}
        }
        sets.push(m.clone());
    }
    sets
}

fn fresh<const E: usize, const W: usize>(
    len: usize,
    seed_set: &Set,
    flash_seed: u64,
) -> SimFlash<E, W> {
    let mut f = SimFlash::<E, W>::new(len, flash_seed);
    if !seed_set.is_empty() {
        let parts: Vec<(&str, &[u8])> = seed_set
            .iter()
            .map(|(n, b)| (n.as_str(), b.as_slice()))
            .collect();
        let mut image = vec![0u8; partition::image_len(parts.iter().map(|p| p.1.len()))];
        partition::emit(&parts, &mut image).unwrap();
        f.mem[..image.len()].copy_from_slice(&image);
    }
    f
}

#[derive(Default, Debug)]
struct CutStats {
    cuts: usize,
    erase_cuts: usize,
    record_cuts: usize,
    write_cuts: usize,
    found_before: usize,
    found_after: usize,
}

/// Every scenario of one geometry, cut at every erase and record write and
/// at `per_scenario` other random operations.
fn power_cuts<const E: usize, const W: usize>(
    len: usize,
    scenarios: u64,
    steps: usize,
    max_patch: usize,
    per_scenario: usize,
) -> CutStats {
    let base_seed: u64 = std::env::var("GRAFTNET_SLOT_SEED")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(0x5107);
    let slot_len = len / 2;
    let mut stats = CutStats::default();
    for sc in 0..scenarios {
        let seed = base_seed.wrapping_mul(1000).wrapping_add(sc + E as u64);
        let mut rng = Rng::new(seed);
        let (seed_set, actions) = scenario(&mut rng, steps, max_patch, slot_len);
        let sets = expected_sets(&seed_set, &actions);
        // The uncut run, traced; each action's first operation.
        let mut flash = fresh::<E, W>(len, &seed_set, seed);
        flash.trace = Some(Vec::new());
        let mut s = mount(flash);
        assert_eq!(set_of(&s), sets[0], "scenario {seed}: the initial set");
        let mut starts = Vec::new();
        for (i, a) in actions.iter().enumerate() {
            starts.push(s.flash().trace.as_ref().unwrap().len());
            run_action(&mut s, a)
                .unwrap_or_else(|e| panic!("scenario {seed} action {i} ({}): {e}", describe(a)));
            assert_eq!(set_of(&s), sets[i + 1], "scenario {seed}: after action {i}");
            assert_eq!(
                set_of(&mount(s.flash().clone())),
                sets[i + 1],
                "scenario {seed}: re-mount after action {i}"
            );
        }
        let trace = s.flash().trace.clone().unwrap();
        assert_eq!(s.flash().double_writes, 0);
        // Cut points: every erase and record write, then random writes.
        let is_record = |op: &Op| matches!(op, Op::Write { at, len } if *len as usize == RECORD_LEN && (*at as usize + RECORD_LEN).is_multiple_of(slot_len));
        let mut points: Vec<usize> = (0..trace.len())
            .filter(|&k| matches!(trace[k], Op::Erase { .. }) || is_record(&trace[k]))
            .collect();
        let want = (points.len() + per_scenario).min(trace.len());
        while points.len() < want {
            let k = rng.below(trace.len() as u64) as usize;
            if !points.contains(&k) {
                points.push(k);
            }
        }
        for &k in &points {
            let mut flash = fresh::<E, W>(len, &seed_set, seed ^ (k as u64) << 20);
            flash.cut_at(k as u64);
            let mut s = mount(flash);
            let i = starts.partition_point(|&st| st <= k) - 1;
            for a in &actions[..i] {
                run_action(&mut s, a).expect("before the cut");
            }
            assert!(
                run_action(&mut s, &actions[i]).is_err() && s.flash().is_dead(),
                "scenario {seed}: op {k} is in action {i}"
            );
            let mut flash = s.into_flash();
            flash.reboot();
            let mut s = mount(flash);
            let found = set_of(&s);
            let (before, after) = (&sets[i], &sets[i + 1]);
            assert!(found == *before || found == *after, "scenario {seed}, cut at op {k} ({:?}) in action {i}: a set that is neither before nor after", trace[k]);
            for t in s.tasks() {
                s.patch(&t.name)
                    .unwrap_or_else(|e| panic!("scenario {seed} cut {k}: {e}"));
            }
            stats.cuts += 1;
            match trace[k] {
                Op::Erase { .. } => stats.erase_cuts += 1,
                ref op if is_record(op) => stats.record_cuts += 1,
                _ => stats.write_cuts += 1,
            }
            if found == *after && before != after {
                stats.found_after += 1;
            } else {
                stats.found_before += 1;
            }
            // The store carries on: a new task on top of what it found.
            let p = make_patch("recovery", FP, 300, &mut rng);
            upload_all(&mut s, "recovery", &p, &[128])
                .unwrap_or_else(|e| panic!("scenario {seed} cut {k}: upload after the cut: {e}"));
            let mut want = found.clone();
            want.retain(|(n, _)| n != "recovery");
            want.push(("recovery".into(), p));
            assert_eq!(set_of(&mount(s.flash().clone())), want);
            assert_eq!(s.flash().double_writes, 0);
        }
    }
    stats
}

#[test]
fn power_cuts_small_sectors() {
    // 64 KB: two 32 KB slots of eight 4 KB sectors, 4-byte writes.
    let st = power_cuts::<4096, 4>(64 * 1024, 10, 8, 6000, 60);
    println!("small sectors: {st:?}");
    assert!(
        st.cuts >= 1000
            && st.erase_cuts > 0
            && st.record_cuts > 0
            && st.found_before > 0
            && st.found_after > 0,
        "{st:?}"
    );
}

#[test]
fn power_cuts_stm32h7_sectors() {
    // The STM32H743's PATCHES region: two 128 KB sectors, 32-byte flash words.
    let st = power_cuts::<{ 128 * 1024 }, 32>(256 * 1024, 8, 6, 30_000, 80);
    println!("STM32H7 sectors: {st:?}");
    assert!(
        st.cuts >= 600
            && st.erase_cuts > 0
            && st.record_cuts > 0
            && st.found_before > 0
            && st.found_after > 0,
        "{st:?}"
    );
}

#[test]
fn a_refused_commit_check_keeps_the_set_and_discards_the_upload() {
    let mut rng = Rng::new(13);
    let mut s = small();
    let a = make_patch("alpha", FP, 900, &mut rng);
    upload_all(&mut s, "alpha", &a, &[900]).unwrap();
    let b = make_patch("bravo", FP, 700, &mut rng);
    s.upload("bravo", b.len() as u32, 0, &b).unwrap();
    let refusal = SlotError::Patch(FormatError::BadLayout {
        section: "trial apply",
    });
    let mut seen = None;
    let r = s.commit_with("bravo", |blob| {
        seen = Some(blob.to_vec());
        Err(refusal)
    });
    assert_eq!(r, Err(refusal));
    assert_eq!(seen, Some(b.clone()));
    assert_eq!(set_of(&s), vec![("alpha".into(), a.clone())]);
    assert_eq!(s.commit("bravo"), Err(SlotError::NoUpload));
    assert_eq!(set_of(&mount(s.flash().clone())), vec![("alpha".into(), a)]);
}
