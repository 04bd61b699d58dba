//! `carnet`: the human and script interface to a Carnet replica.
//!
//! Exit codes: 0 success; 2 usage or invalid input; 3 access denied (and traced); 4 not found;
//! 5 integrity failure (tampering or corruption detected); 1 other failures (storage).

mod commands;
mod demo;
mod fhir;
mod progress;
mod store;
mod terminal;

use std::io::Write;

use carnet_cli::args;
use clap::Parser;
use serde_json::json;

fn main() {
    let cli = match args::Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => std::process::exit(usage_error(&e)),
    };
    std::process::exit(execute(&cli));
}

/// A command line clap refused (or `--help`, `--version`): said as clap says it, and with
/// `--json` also as the JSON error every other failure gives (exit 2).
fn usage_error(e: &clap::Error) -> i32 {
    use clap::error::ErrorKind;
    let code = e.exit_code();
    let informative = matches!(
        e.kind(),
        ErrorKind::DisplayHelp
            | ErrorKind::DisplayVersion
            | ErrorKind::DisplayHelpOnMissingArgumentOrSubcommand
    );
    if !informative && std::env::args_os().any(|a| a == "--json") {
        let rendered = e.render().to_string();
        let message = rendered
            .lines()
            .next()
            .unwrap_or_default()
            .trim_start_matches("error: ");
        println!(
            "{}",
            json!({"error": {"kind": "invalid", "message": message, "exit_code": code}})
        );
    }
    let _ = e.print();
    code
}

/// Runs a parsed command and prints its reply; returns the exit code.
pub(crate) fn execute(cli: &args::Cli) -> i32 {
    let outcome = commands::run(cli);
    for warning in commands::take_warnings() {
        eprintln!("warning: {}", terminal::printable(&warning));
    }
    match outcome {
        // The data went to stdout (`-o -`): what the command says of it goes to stderr.
        Ok(reply) if commands::wrote_stdout() => {
            if cli.json {
                eprintln!("{}", reply.json);
            } else if !reply.human.is_empty() {
                eprintln!("{}", terminal::printable(&reply.human));
            }
            0
        }
        Ok(reply) => {
            let mut out = std::io::stdout().lock();
            let written = if let Some(raw) = &reply.raw_stdout {
                out.write_all(raw)
            } else if cli.json {
                writeln!(out, "{}", reply.json)
            } else if reply.human.is_empty() {
                Ok(())
            } else {
                writeln!(out, "{}", terminal::printable(&reply.human))
            };
            match written.and_then(|_| out.flush()) {
                Ok(()) => 0,
                // The reader went away (`carnet … | head`): nothing more to say.
                Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => 0,
                Err(e) => {
                    eprintln!("error: cannot write the output: {e}");
                    1
                }
            }
        }
        Err(f) => {
            if cli.json {
                println!(
                    "{}",
                    json!({"error": {"kind": f.kind(), "message": f.message(), "exit_code": f.exit_code()}})
                );
            }
            eprintln!("error: {}", terminal::printable(&f.message()));
            f.exit_code()
        }
    }
}
