//! Progress shown on a terminal while a long command waits (`carnet sync now`). Nothing is
//! drawn when standard error is not a terminal, so scripts and logs stay clean.

use std::io::IsTerminal;
use std::time::Duration;

use indicatif::{ProgressBar, ProgressStyle};

/// A spinner with a message and the elapsed time, drawn on standard error.
pub struct Spinner(Option<ProgressBar>);

impl Spinner {
    /// Starts drawing, if standard error is a terminal.
    pub fn start(message: &'static str) -> Spinner {
        if !std::io::stderr().is_terminal() {
            return Spinner(None);
        }
        let bar = ProgressBar::new_spinner();
        if let Ok(style) = ProgressStyle::with_template("{spinner} {msg} {elapsed}") {
            bar.set_style(style);
        }
        bar.set_message(message);
        bar.enable_steady_tick(Duration::from_millis(120));
        Spinner(Some(bar))
    }

    /// Clears the line.
    pub fn finish(self) {
        if let Some(bar) = self.0 {
            bar.finish_and_clear();
        }
    }
}
