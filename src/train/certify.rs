//! `spectra certify RUN_DIR`: a trained run's certificate, recomputed from its checkpoint; the
//! certified robust accuracy on its validation split at any radius; the paper's published formula
//! beside it; and, when asked, the best lower bound the attacks find, which says how much room the
//! certificate leaves.

use std::path::{Path, PathBuf};
use std::time::Instant;

use serde::Serialize;
use spectra_core::rng::derived_rng;
use spectra_core::{config, Error, Result};
use spectra_models::attack::AttackEffort;

use super::config::TrainConfig;
use super::eval::evaluate;
use super::runner::{fingerprint, CONFIG_COPY};
use super::{checkpoint, setup};

/// The seed stream of the attacks' random inputs.
const ATTACK_STREAM: u64 = 7;

/// What to certify besides the run's own evaluation.
#[derive(Clone, Debug, Default)]
pub struct CertifyOptions {
    /// The config that trained the run, where the folder holds no `config.ron`.
    pub config: Option<PathBuf>,
    /// Radii of the certified robust accuracy (the certificate's input norm).
    pub radii: Vec<f64>,
    /// Attack the network with this effort.
    pub attack: Option<AttackEffort>,
}

/// Everything `spectra certify` found; `--json` prints it.
#[derive(Clone, Debug, Serialize)]
pub struct CertifyReport {
    pub run: PathBuf,
    pub config: PathBuf,
    /// The training step the checkpoint holds.
    pub step: u64,
    /// From the inputs (token sequences, images) to the logits.
    pub bound: f64,
    /// From the body's input (the GPT's embedding output) to the logits, on inputs of RMS up to
    /// `input_rms`.
    pub body_bound: f64,
    pub input_rms: f64,
    /// The paper code's formula on the same weights: not a certificate.
    pub published_formula: f64,
    pub validation_loss: f64,
    pub validation_accuracy: f64,
    pub validation_targets: u64,
    pub robust: Vec<RobustAccuracy>,
    pub attack: Option<AttackReport>,
    /// `(parameter, RMS→RMS norm)` in the order the network applies them.
    pub norms: Vec<(String, f64)>,
}

/// Certified robust accuracy at one radius.
#[derive(Clone, Debug, Serialize)]
pub struct RobustAccuracy {
    pub radius: f64,
    /// The body's bound on inputs within `radius` of its domain.
    pub body_bound: f64,
    /// The logit margin above which a prediction cannot be overturned.
    pub margin: f64,
    pub accuracy: f64,
    /// Certified by each input's own bound on the ball around it, where the model gives one: at
    /// least `accuracy`, since that bound is never above the global one.
    pub per_input_accuracy: Option<f64>,
}

/// The attacks' best ratios, and their share of the certified bounds.
#[derive(Clone, Debug, Serialize)]
pub struct AttackReport {
    pub effort: AttackEffort,
    pub body_lower_bound: f64,
    /// `body_lower_bound / body_bound`: 1 would be a tight certificate.
    pub body_ratio: f64,
    pub input_lower_bound: Option<f64>,
    pub input_ratio: Option<f64>,
    pub seconds: f64,
}

/// Certifies the run in `run` (its `checkpoint.safetensors`, trained with its `config.ron` or
/// `options.config`).
pub fn certify(run: &Path, options: &CertifyOptions) -> Result<CertifyReport> {
    for &r in &options.radii {
        if !(r > 0.0 && r.is_finite()) {
            return Err(Error::invalid(
                "--eps",
                format!("radius {r} is not a positive number; give radii like 0.001,0.01,0.1"),
            ));
        }
    }
    let mut radii = options.radii.clone();
    let mut seen = Vec::new();
    radii.retain(|r| {
        let new = !seen.contains(r);
        seen.push(*r);
        new
    });
    if !run.is_dir() {
        return Err(Error::file(
            run,
            "is not a run folder; give the output folder of a `spectra train` run",
        ));
    }
    let config_file = options
        .config
        .clone()
        .unwrap_or_else(|| run.join(CONFIG_COPY));
    if !config_file.is_file() {
        return Err(Error::file(
            &config_file,
            "not found: runs trained before spectra kept their config have none; give the config \
             that trained this run with --config FILE",
        ));
    }
    let cfg: TrainConfig = config::load(&config_file)?;
    let data = cfg.data.path();
    if data.is_relative() && !data.exists() {
        return Err(Error::file(
            data,
            format!(
                "not found from {}: {} names the data as training was given it, relative to the \
                 directory training ran in; run `spectra certify` from there (or fetch the data there: \
                 `scripts/get-data.sh`)",
                std::env::current_dir().map_or_else(|_| "here".into(), |d| d.display().to_string()),
                config_file.display()
            ),
        ));
    }
    let checkpoint_file = checkpoint::path_in(run);
    if !checkpoint_file.is_file() {
        return Err(Error::file(
            &checkpoint_file,
            "not found: the run has written no checkpoint yet (it writes one at the end, and every \
             `checkpoint_every` steps)",
        ));
    }
    let device = cfg.device.resolve()?;
    let built = setup::build(&cfg, &config_file, &device)?;
    let ck = checkpoint::load(&checkpoint_file, &device)?;
    if ck.fingerprint != fingerprint(&cfg) {
        return Err(Error::file(
            &checkpoint_file,
            format!(
                "was written with a different model, data, parameter groups or seed than {} \
                 describes; give the config that trained this run with --config FILE",
                config_file.display()
            ),
        ));
    }
    ck.restore_params(built.model.params(), &checkpoint_file)?;
    let model = built.model.as_ref();
    let cert = model.certificate_at(&radii)?;
    let classes = built.data.input_kind().classes();
    let margins = cert.robust_margins(classes);
    let e = evaluate(
        model,
        built.data.as_ref(),
        &cfg.eval,
        &device,
        &margins,
        &radii,
    )?;
    let attack = match &options.attack {
        Some(effort) => {
            let started = Instant::now();
            let mut rng = derived_rng(cfg.seed, ATTACK_STREAM);
            let found = model.lower_bounds(&cert, effort, &mut rng)?;
            Some(AttackReport {
                effort: *effort,
                body_lower_bound: found.body,
                body_ratio: found.body / cert.body_bound,
                input_lower_bound: found.inputs,
                input_ratio: found.inputs.map(|l| l / cert.bound),
                seconds: started.elapsed().as_secs_f64(),
            })
        }
        None => None,
    };
    let robust = cert
        .robust_bounds
        .iter()
        .zip(&margins)
        .zip(&e.certified_accuracy)
        .enumerate()
        .map(
            |(i, (((radius, body_bound), (_, margin)), (_, accuracy)))| RobustAccuracy {
                radius: *radius,
                body_bound: *body_bound,
                margin: *margin,
                accuracy: *accuracy,
                per_input_accuracy: e.per_input_certified_accuracy.get(i).map(|(_, a)| *a),
            },
        )
        .collect();
    Ok(CertifyReport {
        run: run.to_path_buf(),
        config: config_file,
        step: ck.step,
        bound: cert.bound,
        body_bound: cert.body_bound,
        input_rms: cert.input_rms,
        published_formula: cert.reference_bound,
        validation_loss: e.loss,
        validation_accuracy: e.accuracy,
        validation_targets: e.targets,
        robust,
        attack,
        norms: cert.norms,
    })
}
