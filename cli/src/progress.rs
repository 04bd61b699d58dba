//! Progress on a terminal while long work runs: a bar with bytes (a large body read from or
//! written to a file), a bar with counts (the changes a sync round pushes), a spinner with the
//! elapsed time while the replica or its daemon works on something that reports nothing.
//!
//! Invariants: nothing is drawn unless standard error is a terminal and the output is not
//! `--json` (`shown`), so scripts, pipes and logs never see it; what is drawn is sizes, counts
//! and fixed words, never a title, a file name or an identity (a file name may name a
//! patient). A `Progress` clears its line when dropped, so a command that fails half-way
//! leaves only its error on the terminal.

use std::borrow::Cow;
use std::io::IsTerminal;
use std::time::Duration;

use indicatif::{HumanBytes, ProgressBar, ProgressStyle};

/// Bodies from this size on get a bar (smaller ones are done before a bar could be read).
pub const LARGE: u64 = 1 << 20;

/// The piece read or written between two updates of a bytes bar.
pub const CHUNK: usize = 1 << 20;

/// Whether progress is drawn for this command: standard error is a terminal, and the output is
/// for people (`json` false).
pub fn shown(json: bool) -> bool {
    !json && std::io::stderr().is_terminal()
}

/// A bar or a spinner on standard error, or nothing.
#[derive(Debug)]
pub struct Progress(Option<ProgressBar>);

impl Progress {
    /// A spinner with `message` and the elapsed time, if `show`.
    pub fn spinner(show: bool, message: impl Into<Cow<'static, str>>) -> Progress {
        Progress::drawn(
            show,
            ProgressBar::new_spinner(),
            "{spinner} {msg} {elapsed}",
            message,
        )
    }

    /// A bar of `total` bytes, if `show`.
    pub fn bytes(show: bool, message: impl Into<Cow<'static, str>>, total: u64) -> Progress {
        Progress::drawn(
            show,
            ProgressBar::new(total),
            "{msg} [{bar:30}] {bytes}/{total_bytes} {bytes_per_sec} {eta}",
            message,
        )
    }

    /// A bar of `total` items, if `show`: `{pos}/{len}` then `message`.
    pub fn counts(show: bool, message: impl Into<Cow<'static, str>>, total: u64) -> Progress {
        Progress::drawn(
            show,
            ProgressBar::new(total),
            "{spinner} [{bar:20}] {pos}/{len} {msg} {elapsed}",
            message,
        )
    }

    fn drawn(
        show: bool,
        bar: ProgressBar,
        template: &str,
        message: impl Into<Cow<'static, str>>,
    ) -> Progress {
        if !show {
            return Progress(None);
        }
        if let Ok(style) = ProgressStyle::with_template(template) {
            bar.set_style(style.progress_chars("=> "));
        }
        bar.set_message(message);
        bar.enable_steady_tick(Duration::from_millis(120));
        Progress(Some(bar))
    }

    /// Moves the bar `n` further.
    pub fn inc(&self, n: u64) {
        if let Some(bar) = &self.0 {
            bar.inc(n);
        }
    }

    /// Sets the bar's position.
    pub fn set_position(&self, n: u64) {
        if let Some(bar) = &self.0 {
            bar.set_position(n);
        }
    }

    /// Replaces the message.
    pub fn set_message(&self, message: impl Into<Cow<'static, str>>) {
        if let Some(bar) = &self.0 {
            bar.set_message(message);
        }
    }
}

impl Drop for Progress {
    fn drop(&mut self) {
        if let Some(bar) = &self.0 {
            bar.finish_and_clear();
        }
    }
}

/// `n` bytes for people (`20.00 MiB`).
pub fn size(n: u64) -> String {
    HumanBytes(n).to_string()
}
