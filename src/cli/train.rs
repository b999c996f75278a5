//! `spectra train CONFIG.ron`.

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use spectra::train::{train_file, Outcome, TrainOptions, STOPPED_EXIT_STATUS};
use spectra_core::Error;

#[derive(clap::Args)]
pub struct TrainArgs {
    /// The training config (RON).
    config: PathBuf,
    /// Continue from the checkpoint in the output folder.
    #[arg(long)]
    resume: bool,
    /// Write into this folder instead of the config's `output`.
    #[arg(long)]
    output: Option<PathBuf>,
    /// Train for this many steps instead of the config's `steps` (the schedule spans them).
    #[arg(long)]
    steps: Option<u64>,
    /// Stop with a checkpoint after this many steps (the schedule still spans all of them); continue
    /// later with --resume.
    #[arg(long)]
    stop_at: Option<u64>,
    /// No progress bar or evaluation lines; the final result is still printed.
    #[arg(long)]
    quiet: bool,
}

/// Exits 0 when the run finished, [`STOPPED_EXIT_STATUS`] when it stopped with a checkpoint.
pub fn run(args: TrainArgs) -> Result<ExitCode, Error> {
    // A closed standard output is noticed by the writes that fail, and stops the run with a
    // checkpoint (train::Progress), instead of ending the process by SIGPIPE mid-step.
    #[cfg(unix)]
    // SAFETY: changing a signal's disposition; no other thread handles SIGPIPE.
    unsafe {
        libc::signal(libc::SIGPIPE, libc::SIG_IGN);
    }
    let stop = Arc::new(AtomicBool::new(false));
    let flag = Arc::clone(&stop);
    // Ctrl-C, and SIGTERM and SIGHUP (what `timeout`, schedulers and container stops send): a
    // checkpoint, so that the run continues with --resume.
    ctrlc::set_handler(move || {
        if flag.swap(true, Ordering::SeqCst) {
            // A second signal while the checkpoint is being written: the user insists.
            std::process::exit(130);
        }
        eprintln!(
            "\nspectra: interrupted; stopping after this step and writing a checkpoint (interrupt again to abort)"
        );
    })
    .map_err(|e| Error::invalid("signals", format!("cannot install the handler: {e}")))?;
    let options = TrainOptions {
        resume: args.resume,
        quiet: args.quiet,
        output: args.output,
        steps: args.steps,
        stop: Some(stop),
        stop_at: args.stop_at,
    };
    let summary = train_file(&args.config, &options)?;
    // The summary on stdout, or on stderr once stdout is closed.
    let say = |text: String| {
        if writeln!(std::io::stdout(), "{text}").is_err() {
            eprintln!("{text}");
        }
    };
    let stopped = summary.outcome == Outcome::Stopped;
    if let Some(e) = &summary.final_eval {
        let numbers = format!(
            "validation accuracy {:.2}%, validation loss {:.4}, certified Lipschitz bound {:.4}{}",
            100.0 * e.val_accuracy,
            e.val_loss,
            e.lipschitz_bound,
            e.certified_summary()
        );
        say(if stopped {
            // Not the run's result: the last evaluation may be from long before the stop.
            format!(
                "stopped after {} of {} steps, not finished; the last evaluation, at step {}: {numbers}",
                summary.steps_done, summary.steps, e.step
            )
        } else {
            format!("finished after {} steps: {numbers}", summary.steps_done)
        });
    }
    let files = if stopped {
        "summary.json, metrics.jsonl, train.csv, eval.csv, checkpoint.safetensors, config.ron; report.md comes \
         when the run finishes"
    } else {
        "report.md, summary.json, metrics.jsonl, train.csv, eval.csv, checkpoint.safetensors, config.ron"
    };
    say(format!("results in {} ({files})", summary.output.display()));
    if !stopped {
        return Ok(ExitCode::SUCCESS);
    }
    // A resumed run keeps the steps its checkpoint was written with.
    let steps = args
        .steps
        .map_or(String::new(), |s| format!(" --steps {s}"));
    say(format!(
        "continue with: spectra train {} --resume --output {}{steps}",
        args.config.display(),
        summary.output.display()
    ));
    Ok(ExitCode::from(STOPPED_EXIT_STATUS))
}
