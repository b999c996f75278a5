//! Subcommands of `spectra`.

mod args;
mod bench;
mod calibrate;
mod certify;
mod check;
mod fit_kvzap;
mod generate;
mod kv;
mod list;
mod perplexity;
mod serve;
mod sweep;
mod tokenize;
mod train;

use std::process::ExitCode;

use clap::{Parser, Subcommand};
use spectra_core::Error;

#[derive(Parser)]
#[command(
    name = "spectra",
    version,
    about = "Lipschitz-constrained training and bounded KV caches, as plugins"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Print every registered plugin with its summary and default config.
    List {
        /// Only this family: constraint, optimizer or policy.
        family: Option<String>,
    },
    /// Validate an experiment config (training, sweep or KV evaluation) and print what would run.
    Check {
        /// The RON file.
        file: std::path::PathBuf,
    },
    /// Train a model (e.g. `spectra train experiments/quick.ron`); Ctrl-C stops with a checkpoint.
    Train(train::TrainArgs),
    /// Compute TriAttention's calibration statistics for a model from plain text.
    Calibrate(calibrate::CalibrateArgs),
    /// Fit KVzap's surrogate for a model on its own KVzip scores over plain text.
    FitKvzap(fit_kvzap::FitKvzapArgs),
    /// Generate text with a Llama, Qwen2 or Qwen3 model, optionally with a bounded KV cache.
    Generate(generate::GenerateArgs),
    /// Many sequences decoded together: prefill and decoding rates, time to first token, KV memory.
    Bench(bench::BenchArgs),
    /// An OpenAI-compatible server where each request may choose its KV policy and budget.
    Serve(serve::ServeArgs),
    /// A text's token ids, printed as llama.cpp's `llama-tokenize --ids` prints them.
    Tokenize(tokenize::TokenizeArgs),
    /// A text's perplexity as llama.cpp's llama-perplexity measures it.
    Perplexity(perplexity::PerplexityArgs),
    /// Evaluate KV eviction policies on a real model against the uncompressed cache.
    Kv(kv::KvArgs),
    /// Run a grid of training runs and plot accuracy against the certified Lipschitz bound.
    Sweep(sweep::SweepArgs),
    /// A trained run's certified Lipschitz bound, certified robust accuracy and (--attack) how close
    /// attacks come to the bound.
    Certify(certify::CertifyArgs),
}

pub fn run() -> ExitCode {
    spectra::allocator::keep_freed_memory();
    spectra::threads::decide_thread_count();
    end_quietly_on_a_closed_pipe();
    let cli = Cli::parse();
    // Two plugins with one name would otherwise surface only when a config names one of them.
    if let Err(e) = spectra_core::registry::check_unique() {
        eprintln!("error: {e}");
        return ExitCode::FAILURE;
    }
    let done = |result: Result<(), Error>| result.map(|()| ExitCode::SUCCESS);
    let result = match cli.command {
        Command::List { family } => done(list::run(family.as_deref())),
        Command::Check { file } => done(check::run(&file)),
        Command::Train(args) => train::run(args),
        Command::Sweep(args) => done(sweep::run(args)),
        Command::Certify(args) => done(certify::run(args)),
        Command::Generate(args) => done(rayon::scope(|_| generate::run(args))),
        Command::Calibrate(args) => done(calibrate::run(args)),
        Command::FitKvzap(args) => done(rayon::scope(|_| fit_kvzap::run(args))),
        Command::Kv(args) => done(rayon::scope(|_| kv::run(args))),
        Command::Perplexity(args) => done(rayon::scope(|_| perplexity::run(args))),
        Command::Bench(args) => done(rayon::scope(|_| bench::run(args))),
        Command::Serve(args) => done(serve::run(args)),
        Command::Tokenize(args) => done(tokenize::run(args)),
    };
    result.unwrap_or_else(|e| {
        eprintln!("error: {e}");
        ExitCode::FAILURE
    })
}

/// Rust ignores SIGPIPE, so `spectra list | head` would panic on the first print after `head` exits;
/// the default action ends the process quietly, as other command-line tools do.
fn end_quietly_on_a_closed_pipe() {
    #[cfg(unix)]
    // SAFETY: resetting a signal's disposition to its default before any thread is started.
    unsafe {
        libc::signal(libc::SIGPIPE, libc::SIG_DFL);
    }
}
