//! `carnet-bench sim [--seeds N] [--first S] [--steps T]`: runs N seeded worlds of the simulator
//! (`carnet-sim`, 1000 by default, from seed S, 0 by default; T steps each before healing, the
//! simulator's default otherwise: longer worlds reach interleavings short ones do not) and
//! prints seeds per second and every failure with how to replay it (`CARNET_SIM_SEED=S cargo
//! test -p carnet-sim`, with `CARNET_SIM_STEPS=T` when given). Exits 1 if any seed failed.

use std::time::Instant;

use crate::Res;

fn parse_args() -> Res<(u64, u64, carnet_sim::Options)> {
    let mut args = std::env::args().skip(2);
    let (mut seeds, mut first) = (1000, 0);
    let mut opts = carnet_sim::Options::default();
    while let Some(a) = args.next() {
        let mut value = |what: &str| {
            args.next()
                .and_then(|v| v.parse::<u64>().ok())
                .ok_or(format!("{what} takes a whole number"))
        };
        match a.as_str() {
            "--seeds" => seeds = value("--seeds")?,
            "--first" => first = value("--first")?,
            "--steps" => {
                opts.steps = usize::try_from(value("--steps")?)
                    .map_err(|_| "--steps takes a whole number")?;
            }
            other => {
                return Err(format!(
                    "unknown argument '{other}': sim [--seeds N] [--first S] [--steps T]"
                )
                .into());
            }
        }
    }
    Ok((seeds, first, opts))
}

pub fn run() -> Res<()> {
    let (seeds, first, opts) = parse_args()?;
    println!(
        "carnet-bench sim — {seeds} seeded worlds from seed {first}, {} steps each, one thread\n",
        opts.steps
    );
    let started = Instant::now();
    let mut failures = Vec::new();
    let mut totals = carnet_sim::Stats::default();
    for seed in first..first.saturating_add(seeds) {
        match carnet_sim::run(seed, opts) {
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
        println!("  {f}");
    }
    if failures.is_empty() {
        Ok(())
    } else {
        Err(format!("{} of {seeds} seeds failed", failures.len()).into())
    }
}
