//! The simulator in CI: a few hundred seeded worlds, each healed and checked
//! (`carnet_sim::check`). `CARNET_SIM_SEED=N` replays seed N alone; `CARNET_SIM_SEEDS=K`
//! runs K seeds from `CARNET_SIM_FIRST` (0 by default), within `CARNET_SIM_BUDGET_S` seconds.

use std::time::{Duration, Instant};

/// Seeds CI runs.
const SEEDS: u64 = 300;
/// The test stops starting seeds after this long (a loaded machine runs fewer; it says so).
const BUDGET: Duration = Duration::from_secs(75);

fn env_u64(name: &str) -> Option<u64> {
    std::env::var(name).ok().and_then(|v| v.trim().parse().ok())
}

#[test]
fn seeded_worlds_heal_and_keep_every_invariant() {
    if let Some(seed) = env_u64("CARNET_SIM_SEED") {
        match carnet_sim::run(seed, carnet_sim::Options::default()) {
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
        if let Err(f) = carnet_sim::run(seed, carnet_sim::Options::default()) {
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
