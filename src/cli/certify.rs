//! `spectra certify RUN_DIR`: the certificate of a trained run, recomputed from its checkpoint.

use std::num::NonZeroUsize;
use std::path::PathBuf;

use spectra::models::attack::AttackEffort;
use spectra::models::certificate::ROBUST_RADII;
use spectra::train::certify::{certify, CertifyOptions, CertifyReport};
use spectra_core::Error;

use super::args::at_least_one;

#[derive(clap::Args)]
pub struct CertifyArgs {
    /// The output folder of a `spectra train` run (its checkpoint and config.ron).
    run: PathBuf,
    /// The config that trained the run, for folders without config.ron.
    #[arg(long)]
    config: Option<PathBuf>,
    /// Radii of the certified robust accuracy, in the certificate's input norm.
    #[arg(long, value_delimiter = ',', default_values_t = ROBUST_RADII, allow_negative_numbers = true)]
    eps: Vec<f64>,
    /// Also attack the network (gradient ascent with restarts on the body's inputs, hill-climbing
    /// on token sequences) and report the best lower bound against the certified one.
    #[arg(long)]
    attack: bool,
    /// Restarts of the attack's gradient ascent (more find larger ratios, slower).
    #[arg(long, value_parser = at_least_one, requires = "attack")]
    restarts: Option<NonZeroUsize>,
    /// Steps of each restart.
    #[arg(long, value_parser = at_least_one, requires = "attack")]
    steps: Option<NonZeroUsize>,
    /// Print the report as JSON.
    #[arg(long)]
    json: bool,
}

pub fn run(args: CertifyArgs) -> Result<(), Error> {
    let usual = AttackEffort::default();
    let options = CertifyOptions {
        config: args.config,
        radii: args.eps,
        attack: args.attack.then_some(AttackEffort {
            restarts: args.restarts.map_or(usual.restarts, NonZeroUsize::get),
            steps: args.steps.map_or(usual.steps, NonZeroUsize::get),
            ..usual
        }),
    };
    let report = certify(&args.run, &options)?;
    if args.json {
        let json = serde_json::to_string_pretty(&report)
            .map_err(|e| Error::invalid("--json", e.to_string()))?;
        println!("{json}");
    } else {
        print!("{}", describe(&report));
    }
    Ok(())
}

fn describe(r: &CertifyReport) -> String {
    let mut out = format!(
        "run {} at step {} (config {})\n\
         certified Lipschitz bound {:.4} (inputs to logits); body {:.4} on inputs of RMS ≤ {:.4}\n\
         the paper's published formula gives {:.4} (not a certificate)\n\
         validation: loss {:.4}, accuracy {:.2}% over {} targets\n",
        r.run.display(),
        r.step,
        r.config.display(),
        r.bound,
        r.body_bound,
        r.input_rms,
        r.published_formula,
        r.validation_loss,
        100.0 * r.validation_accuracy,
        r.validation_targets
    );
    for a in &r.robust {
        let per_input = a
            .per_input_accuracy
            .map(|p| format!("; {:.2}% by each input's own bound", 100.0 * p))
            .unwrap_or_default();
        out += &format!(
            "certified robust accuracy {:.2}% at ε = {} (body bound {:.4}, margin {:.4}){per_input}\n",
            100.0 * a.accuracy,
            a.radius,
            a.body_bound,
            a.margin
        );
    }
    if let Some(a) = &r.attack {
        out += &format!(
            "attack ({} restarts × {} steps, {:.0}s): body {:.4} = {:.3} of the certified {:.4}",
            a.effort.restarts,
            a.effort.steps,
            a.seconds,
            a.body_lower_bound,
            a.body_ratio,
            r.body_bound
        );
        if let (Some(l), Some(ratio)) = (a.input_lower_bound, a.input_ratio) {
            out += &format!(
                "; token sequences {l:.4} = {ratio:.3} of the certified {:.4}",
                r.bound
            );
        }
        out += "\n";
    }
    out
}
