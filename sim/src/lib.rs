//! `carnet-sim`: a deterministic simulation of one Carnet host and 2–8 sites in one thread,
//! on virtual time, driven by a seed (issue 13, section 2).
//!
//! The real session core (`carnet_syncd::session`) and the real replica
//! (`carnet_store::replica`) run unchanged; the simulator supplies what is around them: the
//! clock of each node (`node`), the disks under each database and trace journal (`disk`,
//! which loses un-synced writes at a power cut, tears pages, fails with ENOSPC or EIO), the network between each
//! site and the host (`link`: delays, interleaved streams, losses that cut a round, a stream
//! delivered twice, partitions), and the operations and faults at random (`world`). After the
//! world heals, `check` verifies the invariants.
//!
//! A seed replays the same world: the same operations, faults and deliveries at the same
//! virtual times, and the same keys, document ids and nonces (the thread's randomness is
//! seeded while the world lives: `carnet_store::crypto::seed_thread_for_simulation`). Only
//! the certificates' keys (made by rcgen) still come from the operating system; nothing
//! decides on their bytes.
//!
//! `run(seed)` is one world; `CARNET_SIM_SEED=N cargo test -p carnet-sim` replays seed N, and
//! `carnet-bench sim --seeds N` runs many.

pub mod check;
pub mod disk;
pub mod folder;
pub mod link;
pub mod node;
pub mod rng;
pub mod world;

pub use world::{Options, Stats};

/// A seed whose world broke an invariant (or whose simulation could not run).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Failure {
    /// The seed, to replay it.
    pub seed: u64,
    /// Its steps before healing, when not the default (`Options::steps`), to replay it.
    pub steps: Option<usize>,
    /// What went wrong.
    pub message: String,
}

impl std::fmt::Display for Failure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let steps = self
            .steps
            .map_or(String::new(), |n| format!("CARNET_SIM_STEPS={n} "));
        write!(
            f,
            "seed {}: {} (replay: {steps}CARNET_SIM_SEED={} cargo test -p carnet-sim)",
            self.seed, self.message, self.seed
        )
    }
}

/// Runs the world of `seed` to its checks; answers what happened in it.
pub fn run(seed: u64, opts: Options) -> Result<Stats, Failure> {
    let steps = (opts.steps != Options::default().steps).then_some(opts.steps);
    let fail = |message| Failure {
        seed,
        steps,
        message,
    };
    let started = std::time::Instant::now();
    let mut world = world::World::new(seed, opts).map_err(fail)?;
    if std::env::var_os("CARNET_SIM_TRACE").is_some() {
        eprintln!("world of seed {seed} made in {:?}", started.elapsed());
    }
    world.run().map_err(fail)?;
    Ok(world.stats)
}

#[cfg(test)]
mod tests {
    use super::Failure;

    #[test]
    fn a_failure_says_how_to_replay_it_with_its_steps_when_not_the_default() {
        let short = Failure {
            seed: 12,
            steps: None,
            message: "lost".into(),
        };
        assert_eq!(
            short.to_string(),
            "seed 12: lost (replay: CARNET_SIM_SEED=12 cargo test -p carnet-sim)"
        );
        let long = Failure {
            steps: Some(600),
            ..short
        };
        assert!(
            long.to_string()
                .contains("replay: CARNET_SIM_STEPS=600 CARNET_SIM_SEED=12 cargo"),
            "{long}"
        );
    }
}
