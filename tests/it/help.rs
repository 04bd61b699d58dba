//! `--help` is the CLI's reference: every command, option and argument says what it is, and the
//! main commands show an example, each of which the command line accepts as written.
//!
//! The checks walk clap's own command tree (`carnet_cli::args::Cli::command()`), the one the
//! binary parses with and `carnet man` renders, so nothing can be added to it undocumented.

use carnet_cli::args::Cli;
use clap::{CommandFactory, Parser};

/// The commands a newcomer reaches for first: each has an example section in its long help.
const MAIN_COMMANDS: &[&str] = &[
    "init",
    "inbox list",
    "inbox retry",
    "pro add",
    "dossier create",
    "dossier show",
    "grant add",
    "doc add",
    "doc get",
    "doc list",
    "export",
    "audit show",
    "authority export",
    "authority import",
    "sync now",
    "sync status",
    "backup",
    "restore",
    "completions",
    "man",
];

/// The clap tree as the binary builds it (global options propagated, `help` added).
fn tree() -> clap::Command {
    let mut cli = Cli::command();
    cli.build();
    cli
}

/// Everything under `cmd` (named `path`) that `--help` would show without a description: a
/// command without its one-line summary, an option or argument without help, a value of an
/// enumerated option without its meaning.
fn undocumented(cmd: &clap::Command, path: &str) -> Vec<String> {
    let mut missing = Vec::new();
    if cmd.get_about().is_none() && cmd.get_long_about().is_none() {
        missing.push(format!("{path}: the command"));
    }
    for arg in cmd.get_arguments().filter(|a| !a.is_hide_set()) {
        let name = match arg.get_long() {
            Some(long) => format!("--{long}"),
            None => arg.get_id().as_str().to_uppercase(),
        };
        if arg.get_help().is_none() && arg.get_long_help().is_none() {
            missing.push(format!("{path} {name}"));
        }
        for value in arg.get_possible_values() {
            if !value.is_hide_set() && value.get_help().is_none() {
                missing.push(format!("{path} {name} {}", value.get_name()));
            }
        }
    }
    for sub in cmd.get_subcommands() {
        missing.extend(undocumented(sub, &format!("{path} {}", sub.get_name())));
    }
    missing
}

/// The subcommand at `path` ("doc add"), if the tree has it.
fn find<'a>(root: &'a clap::Command, path: &str) -> Option<&'a clap::Command> {
    path.split(' ')
        .try_fold(root, |cmd, name| cmd.find_subcommand(name))
}

/// `line` split into words as a shell would (spaces separate, double quotes group), up to a
/// pipe or a redirection: the command line `carnet` itself receives.
fn words(line: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut word: Option<String> = None;
    let mut quoted = false;
    for c in line.chars() {
        match c {
            '"' => {
                quoted = !quoted;
                word.get_or_insert_with(String::new);
            }
            ' ' if !quoted => out.extend(word.take()),
            c => word.get_or_insert_with(String::new).push(c),
        }
    }
    out.extend(word);
    let end = out
        .iter()
        .position(|w| ["|", ">", ">>", "<"].contains(&w.as_str()))
        .unwrap_or(out.len());
    out.truncate(end);
    out
}

/// The command lines of an example section: its lines that start with `carnet `.
fn example_lines(text: &str) -> Vec<&str> {
    text.lines()
        .map(str::trim)
        .filter(|l| l.starts_with("carnet "))
        .collect()
}

#[test]
fn every_command_option_argument_and_value_has_a_description() {
    let missing = undocumented(&tree(), "carnet");
    assert!(
        missing.is_empty(),
        "--help shows these without a description (add a doc comment in cli/src/args.rs):\n{}",
        missing.join("\n")
    );
}

#[test]
fn the_check_finds_what_lacks_a_description() {
    // The same walk on a small tree with one of each gap: it must name all four, so an empty
    // answer on the real tree means something.
    let tree = clap::Command::new("tool")
        .about("A tool.")
        .arg(clap::Arg::new("input").help("The input file."))
        .subcommand(
            clap::Command::new("run")
                .about("Runs it.")
                .arg(clap::Arg::new("speed").long("speed"))
                .arg(
                    clap::Arg::new("mode")
                        .long("mode")
                        .help("How to run.")
                        .value_parser([
                            clap::builder::PossibleValue::new("fast").help("Quickly."),
                            clap::builder::PossibleValue::new("slow"),
                        ]),
                ),
        )
        .subcommand(clap::Command::new("stop").arg(clap::Arg::new("NOW").help("When.")));
    assert_eq!(
        undocumented(&tree, "tool"),
        [
            "tool run --speed",
            "tool run --mode slow",
            "tool stop: the command"
        ]
    );
    assert_eq!(
        words(r#"carnet doc add --title "CR de consultation" a.pdf"#),
        [
            "carnet",
            "doc",
            "add",
            "--title",
            "CR de consultation",
            "a.pdf"
        ]
    );
    assert_eq!(
        words("carnet completions bash > /etc/bash_completion.d/carnet"),
        ["carnet", "completions", "bash"]
    );
}

#[test]
fn the_main_commands_show_examples_the_command_line_accepts() {
    let root = tree();
    for path in MAIN_COMMANDS {
        let cmd = find(&root, path).unwrap_or_else(|| panic!("no command `carnet {path}`"));
        let section = cmd
            .get_after_long_help()
            .map(|s| s.to_string())
            .unwrap_or_default();
        assert!(
            section.starts_with("Example"),
            "`carnet {path} --help` has no example section (after_long_help):\n{section}"
        );
        let lines = example_lines(&section);
        assert!(!lines.is_empty(), "`carnet {path}`: no example command");
        for line in lines {
            assert!(
                line.starts_with(&format!("carnet {path}")),
                "`carnet {path}` shows an example of another command: {line}"
            );
            if let Err(e) = Cli::try_parse_from(words(line)) {
                panic!("the example `{line}` of `carnet {path}` is refused:\n{e}");
            }
        }
    }
    // And the binary shows them: long help only, `-h` stays short.
    let long = crate::support::run_raw(&[], &["doc", "add", "--help"]);
    assert_eq!(long.code, 0, "{}", long.stderr);
    assert!(long.stdout.contains("Examples:"), "{}", long.stdout);
    let short = crate::support::run_raw(&[], &["doc", "add", "-h"]);
    assert!(!short.stdout.contains("Examples:"), "{}", short.stdout);
}
