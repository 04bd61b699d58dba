//! `carnet-bench sim [--seeds N] [--first S]`: runs N seeded worlds of the simulator
//! (`carnet-sim`, 1000 by default, from seed S, 0 by default) and prints seeds per second and
//! every failure with its seed (replay one with `CARNET_SIM_SEED=S cargo test -p carnet-sim`).
//! Exits 1 if any seed failed.

use std::time::Instant;

use crate::Res;

fn parse_args() -> Res<(u64, u64)> {
    let mut args = std::env::args().skip(2);
    let (mut seeds, mut first) = (1000, 0);
    while let Some(a) = args.next() {
        let mut value = |what: &str| {
            args.next()
                .and_then(|v| v.parse::<u64>().ok())
                .ok_or(format!("{what} takes a whole number"))
        };
        match a.as_str() {
            "--seeds" => seeds = value("--seeds")?,
            "--first" => first = value("--first")?,
            other => {
                return Err(
                    format!("unknown argument '{other}': sim [--seeds N] [--first S]").into(),
                );
            }
        }
    }
    Ok((seeds, first))
}

pub fn run() -> Res<()> {
    let (seeds, first) = parse_args()?;
    println!("carnet-bench sim — {seeds} seeded worlds from seed {first}, one thread\n");
    let started = Instant::now();
    let mut failures = Vec::new();
    let mut totals = carnet_sim::Stats::default();
    for seed in first..first.saturating_add(seeds) {
        match carnet_sim::run(seed, carnet_sim::Options::default()) {
            Ok(s) => totals.add(&s),
            Err(f) => {
                println!("FAILED {f}");
                failures.push(f);
            }
        }
        let done = seed - first + 1;
        if done % 100 == 0 {
            println!(
                "  {done} seeds, {:.1} seeds/s, {} failed",
                done as f64 / started.elapsed().as_secs_f64(),
                failures.len()
            );
        }
    }
    let took = started.elapsed().as_secs_f64();
    println!(
        "\n{seeds} seeds in {took:.1} s: {:.1} seeds/s; {} failed",
        seeds as f64 / took,
        failures.len()
    );
    println!("in all (passing seeds): {totals:?}");
    for f in &failures {
        println!("  seed {}: {}", f.seed, f.message);
    }
    if failures.is_empty() {
        Ok(())
    } else {
        Err(format!("{} of {seeds} seeds failed", failures.len()).into())
    }
}
