//! The simulator in CI: a few hundred seeded worlds, each healed and checked
//! (`carnet_sim::check`). `CARNET_SIM_SEED=N` replays seed N alone; `CARNET_SIM_SEEDS=K`
//! runs K seeds from `CARNET_SIM_FIRST` (0 by default), within `CARNET_SIM_BUDGET_S` seconds;
//! `CARNET_SIM_STEPS=S` gives each world S steps before healing (`Options::steps`).

use std::time::{Duration, Instant};

/// Seeds CI runs.
const SEEDS: u64 = 300;
/// The test stops starting seeds after this long (a loaded machine runs fewer; it says so).
const BUDGET: Duration = Duration::from_secs(130);

fn env_u64(name: &str) -> Option<u64> {
    std::env::var(name).ok().and_then(|v| v.trim().parse().ok())
}

/// The worlds' options: the default, with `CARNET_SIM_STEPS` steps when it is set.
fn options() -> carnet_sim::Options {
    let mut opts = carnet_sim::Options::default();
    if let Some(steps) = env_u64("CARNET_SIM_STEPS") {
        opts.steps = steps as usize;
    }
    opts
}

#[test]
fn seeded_worlds_heal_and_keep_every_invariant() {
    if let Some(seed) = env_u64("CARNET_SIM_SEED") {
        match carnet_sim::run(seed, options()) {
            Ok(stats) => println!("seed {seed}: {stats:?}"),
            Err(f) => panic!("{f}"),
        }
        return;
    }
    let first = env_u64("CARNET_SIM_FIRST").unwrap_or(0);
    let seeds = env_u64("CARNET_SIM_SEEDS").unwrap_or(SEEDS);
    let budget = env_u64("CARNET_SIM_BUDGET_S").map_or(BUDGET, Duration::from_secs);
    let started = Instant::now();
    let mut failures = Vec::new();
    let mut ran = 0;
    for seed in first..first + seeds {
        if started.elapsed() > budget {
            break;
        }
        if let Err(f) = carnet_sim::run(seed, options()) {
            eprintln!("{f}");
            failures.push(f);
        }
        ran += 1;
    }
    let took = started.elapsed().as_secs_f64();
    println!(
        "{ran} seeds in {took:.1} s ({:.1} seeds/s), {} failed",
        ran as f64 / took,
        failures.len()
    );
    assert!(ran >= 50, "only {ran} seeds ran within {budget:?}");
    assert!(
        failures.is_empty(),
        "{} seeds failed; the first: {}",
        failures.len(),
        failures[0]
    );
}

/// A seed replays its world byte for byte: the same documents under the same ids (which come
/// from the product's own randomness, seeded by the world).
#[test]
fn a_seed_replays_its_world_with_the_same_ids() {
    let ids = |seed| {
        let mut world =
            carnet_sim::world::World::new(seed, carnet_sim::Options::default()).expect("world");
        world.run().expect("run");
        world.model.written.iter().map(|w| w.id).collect::<Vec<_>>()
    };
    let first = ids(7);
    assert!(!first.is_empty(), "seed 7 writes documents");
    assert_eq!(first, ids(7), "the same ids on a replay");
    assert_ne!(first, ids(8), "another seed, other ids");
}
