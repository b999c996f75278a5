//! `spectra sweep SWEEP.ron`.

use std::path::PathBuf;

use spectra::train::sweep::{self, SweepConfig};
use spectra_core::{config, Error};

#[derive(clap::Args)]
pub struct SweepArgs {
    /// The sweep config (RON): methods, each a training config and a grid of field values.
    config: PathBuf,
    /// Runs at a time (replaces the config's `parallel`).
    #[arg(long)]
    parallel: Option<usize>,
}

pub fn run(args: SweepArgs) -> Result<(), Error> {
    let text = config::read(&args.config)?;
    let mut cfg: SweepConfig = config::parse(&text, &args.config)?;
    if let Some(p) = args.parallel {
        cfg.parallel = p.max(1);
    }
    let exe = std::env::current_exe()
        .map_err(|e| Error::invalid("sweep", format!("cannot find the spectra binary: {e}")))?;
    let rows = sweep::run(&cfg, (&args.config, &text), &exe, false)?;
    let failed = rows.iter().filter(|r| r.val_accuracy.is_none()).count();
    println!(
        "summary: {} (and summary.csv, pareto.svg)",
        cfg.output.join("summary.md").display()
    );
    if failed > 0 {
        return Err(Error::invalid(
            "sweep",
            format!(
                "{failed} of {} runs failed; their log.txt says why",
                rows.len()
            ),
        ));
    }
    Ok(())
}
