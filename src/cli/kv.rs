//! `spectra kv CONFIG.ron`: every policy at every budget against the uncompressed cache.

use std::path::PathBuf;

use spectra::kv_eval::KvEvalConfig;
use spectra_core::config;
use spectra_core::Error;

#[derive(clap::Args)]
pub struct KvArgs {
    /// The KV evaluation config (RON); see experiments/kv_smollm2.ron.
    config: PathBuf,
    /// Write into this folder instead of the config's `output`.
    #[arg(long)]
    output: Option<PathBuf>,
}

pub fn run(args: KvArgs) -> Result<(), Error> {
    let cfg: KvEvalConfig = config::load(&args.config)?;
    let output = args.output.unwrap_or_else(|| cfg.output.clone());
    spectra::output::prepare(&output)?;
    let _writing = spectra::output::lock(&output)?;
    let report = spectra::kv_eval::run(&cfg, &output)?;
    spectra::kv_eval::write_report(&output, &args.config, &report)?;
    println!(
        "{}\nwritten to {}",
        std::fs::read_to_string(output.join("report.md")).unwrap_or_default(),
        output.display()
    );
    Ok(())
}
