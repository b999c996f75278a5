//! The progress bar: loss, accuracy, targets (tokens or images) per second, ETA. Where stderr is not a
//! terminal (a log file, `nohup`) the bar hides itself and evaluations are printed as plain lines.

use std::io::Write;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use indicatif::{ProgressBar, ProgressStyle};

pub struct Progress {
    bar: ProgressBar,
    /// Set when standard output is found closed (`| head -1`), which stops the run as a signal does.
    stop: Option<Arc<AtomicBool>>,
}

impl Progress {
    pub fn new(
        total: u64,
        start: u64,
        quiet: bool,
        unit: &str,
        stop: Option<Arc<AtomicBool>>,
    ) -> Progress {
        let bar = if quiet {
            ProgressBar::hidden()
        } else {
            ProgressBar::new(total)
        };
        let template = format!("{{spinner}} [{{elapsed_precise}}] {{wide_bar}} {{pos}}/{{len}} steps, ETA {{eta}}  {{msg}} ({unit})");
        bar.set_style(
            ProgressStyle::with_template(&template)
                .unwrap_or_else(|_| ProgressStyle::default_bar()),
        );
        bar.set_position(start);
        bar.reset_eta();
        Progress { bar, stop }
    }

    pub fn step(&self, step: u64, loss: f64, accuracy: f64, per_second: f64) {
        self.bar.set_position(step);
        self.bar.set_message(format!(
            "loss {loss:.4} acc {:.1}% {per_second:.0}/s",
            100.0 * accuracy
        ));
    }

    /// A line above the bar, or on stdout when there is no bar (unless quiet).
    pub fn line(&self, text: &str, quiet: bool) {
        if !self.bar.is_hidden() {
            self.bar.println(text);
        } else if !quiet && writeln!(std::io::stdout(), "{text}").is_err() {
            // The reader has gone: stop after this step with a checkpoint, as Ctrl-C does, rather
            // than end by SIGPIPE with the steps since the last checkpoint lost.
            if let Some(stop) = &self.stop {
                if !stop.swap(true, Ordering::SeqCst) {
                    eprintln!(
                        "spectra: standard output was closed; stopping after this step and writing \
                         a checkpoint"
                    );
                }
            }
        }
    }

    pub fn finish(&self) {
        self.bar.finish_and_clear();
    }
}
