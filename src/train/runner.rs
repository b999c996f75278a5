//! The training loop: forward, loss, backward, each group's optimizer step, then each group's
//! constraints on each of its parameters; evaluation with the Lipschitz certificate at intervals;
//! checkpoints; metrics; the final report.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Instant;

use candle_core::{Device, Tensor};
use spectra_core::config;
use spectra_core::rng::derived_rng;
use spectra_core::{Error, OptimizerStep, Result, SpectraRng};
use spectra_models::{Dataset, Model, ModelConfig};

use super::checkpoint::{self, Checkpoint, RunPlan};
use super::config::TrainConfig;
use super::eval::{correct_count, evaluate};
use super::groups::{assemble, update, Group};
use super::metrics::{EvalRecord, MetricsWriter, Record, TrainRecord};
use super::progress::Progress;
use super::report;
use super::setup::{self, Setup};
use super::summary::{Outcome, TrainSummary};

/// The seed stream of the constraints' randomness (power-iteration starts); the model's is
/// [`setup::INIT_STREAM`].
const CONSTRAINT_STREAM: u64 = 2;

/// Command-line choices that are not part of the experiment.
#[derive(Clone, Debug, Default)]
pub struct TrainOptions {
    /// Continue from the output folder's checkpoint.
    pub resume: bool,
    /// No progress bar and no evaluation lines.
    pub quiet: bool,
    /// Replaces the config's `output`.
    pub output: Option<PathBuf>,
    /// Replaces the config's `steps` (the schedule then spans the new number).
    pub steps: Option<u64>,
    /// Set (e.g. by Ctrl-C) to stop after the current step with a checkpoint.
    pub stop: Option<Arc<AtomicBool>>,
    /// Stop with a checkpoint once this many steps are done, keeping the schedule of the full run: a
    /// long run done in pieces, each continued with `resume`.
    pub stop_at: Option<u64>,
}

/// Reads the config file and trains.
/// The copy of the applied config every run folder holds.
pub const CONFIG_COPY: &str = "config.ron";

pub fn train_file(path: &Path, options: &TrainOptions) -> Result<TrainSummary> {
    let cfg: TrainConfig = config::load(path)?;
    train(cfg, path, options)
}

/// A run's live state.
struct Run {
    /// Held for the run: a second process writing to the same folder is refused.
    _output_lock: crate::output::OutputLock,
    cfg: TrainConfig,
    config_file: PathBuf,
    output: PathBuf,
    device: Device,
    data: Box<dyn Dataset>,
    model: Box<dyn Model>,
    groups: Vec<Group>,
    rng: SpectraRng,
    fingerprint: String,
    /// The config as applied, in RON ([`CONFIG_COPY`]).
    applied_config: String,
    /// Steps completed.
    step: u64,
    last_checkpoint: Option<u64>,
}

pub fn train(
    mut cfg: TrainConfig,
    config_file: &Path,
    options: &TrainOptions,
) -> Result<TrainSummary> {
    if let Some(steps) = options.steps {
        if steps == 0 {
            return Err(Error::invalid("--steps", "must be ≥ 1"));
        }
        cfg.steps = steps;
    }
    if let Some(out) = &options.output {
        cfg.output = out.clone();
    }
    let latest = checkpoint::path_in(&cfg.output);
    let previous = checkpoint::previous_of(&latest);
    let nothing_to_resume = || {
        Error::file(
            &latest,
            if previous.exists() {
                format!(
                    "there is no checkpoint to resume from, only the one before it (a save was \
                     interrupted): move {} to {} to resume from it",
                    previous.display(),
                    latest.display()
                )
            } else {
                "there is no checkpoint to resume from; check the output folder (--output DIR), or \
                 run without --resume to start afresh"
                    .to_string()
            },
        )
    };
    // Where the folder is there, its lock first: a second process on it is refused whatever it
    // holds yet. One that is not there is made after the setup, so that a mistyped folder or a
    // config that cannot run leaves nothing behind.
    let early_lock = cfg
        .output
        .is_dir()
        .then(|| crate::output::lock(&cfg.output))
        .transpose()?;
    if options.resume && !latest.exists() {
        return Err(nothing_to_resume());
    }
    let mut run = Run::new(cfg, config_file, early_lock)?;
    if options.resume {
        run.restore()?;
    } else if let Some(earlier) = [&latest, &previous].into_iter().find(|p| p.exists()) {
        return Err(Error::file(
            earlier,
            "a checkpoint from an earlier run is here; continue it with --resume, or choose another output \
             (--output DIR) or delete the folder",
        ));
    }
    run.keep_config()?;
    run.train(options)
}

impl Run {
    fn new(
        mut cfg: TrainConfig,
        config_file: &Path,
        early_lock: Option<crate::output::OutputLock>,
    ) -> Result<Run> {
        let device = cfg.device.resolve()?;
        let Setup {
            data,
            model,
            routed,
        } = setup::build(&cfg, config_file, &device)?;
        let fingerprint = fingerprint(&cfg);
        let effective = spectra_core::registry::to_ron_pretty(&cfg)
            .map_err(|e| Error::invalid("config", format!("the run's config copy: {e}")))?;
        let groups = assemble(model.params(), std::mem::take(&mut cfg.groups), &routed);
        let output = cfg.output.clone();
        crate::output::prepare(&output)?;
        let _output_lock = match early_lock {
            Some(held) => held,
            None => crate::output::lock(&output)?,
        };
        Ok(Run {
            _output_lock,
            rng: derived_rng(cfg.seed, CONSTRAINT_STREAM),
            cfg,
            config_file: config_file.to_path_buf(),
            output,
            device,
            data,
            model,
            groups,
            fingerprint,
            applied_config: effective,
            step: 0,
            last_checkpoint: None,
        })
    }

    /// Keeps the config as this run applies it (sweep values and command-line overrides included)
    /// in its folder, so that `spectra certify` rebuilds the model its checkpoint holds. Written once
    /// the folder is known to be this run's (a fresh one, or a checkpoint this config continues).
    fn keep_config(&self) -> Result<()> {
        let path = self.output.join(CONFIG_COPY);
        let text = format!(
            "// The configuration of the run in this folder, as it was applied.\n{}\n",
            self.applied_config
        );
        // Written beside it and renamed, so that a reader never sees half a file.
        let partial = path.with_extension("ron.partial");
        std::fs::write(&partial, text)
            .and_then(|()| std::fs::rename(&partial, &path))
            .map_err(|e| Error::file(&path, format!("cannot write: {e}")))
    }

    fn checkpoint_path(&self) -> PathBuf {
        checkpoint::path_in(&self.output)
    }

    fn save_checkpoint(&mut self) -> Result<()> {
        let mut tensors = HashMap::new();
        for p in self.model.params() {
            tensors.insert(checkpoint::param_key(&p.name), p.var.as_tensor().clone());
        }
        for g in &self.groups {
            for (key, t) in g.optimizer.state() {
                tensors.insert(format!("{}{key}", checkpoint::optimizer_prefix(&g.name)), t);
            }
            for (ci, per_param) in g.states.iter().enumerate() {
                for (p, state) in g.params.iter().zip(per_param) {
                    for (key, t) in state {
                        tensors.insert(
                            format!(
                                "{}{key}",
                                checkpoint::constraint_prefix(&g.name, ci, &p.name)
                            ),
                            t.clone(),
                        );
                    }
                }
            }
        }
        let ck = Checkpoint {
            step: self.step,
            tensors,
            rng: self.rng.clone(),
            fingerprint: self.fingerprint.clone(),
            plan: Some(self.plan()),
        };
        checkpoint::save(&self.checkpoint_path(), &ck)?;
        self.last_checkpoint = Some(self.step);
        Ok(())
    }

    fn plan(&self) -> RunPlan {
        RunPlan {
            steps: self.cfg.steps,
            eval_windows: self.cfg.eval.windows,
        }
    }

    /// A resumed run keeps the plan its checkpoint was written under: with other steps the
    /// learning-rate schedule would change mid-run, with other evaluation windows the evaluations
    /// before and after would not compare, and the report would describe neither run.
    fn same_plan(&self, written: RunPlan) -> Result<()> {
        let now = self.plan();
        if written.steps != now.steps {
            return Err(Error::invalid(
                "steps",
                format!(
                    "the checkpoint's run spans {} steps (its learning-rate schedule and report), and \
                     this run asks for {} (--steps, or the config's steps); resume with --steps {}, or \
                     train {} steps afresh in another output folder (--output DIR)",
                    written.steps, now.steps, written.steps, now.steps
                ),
            ));
        }
        if written.eval_windows != now.eval_windows {
            let windows = |w: Option<usize>| {
                w.map_or("the whole validation split".to_string(), |w| {
                    format!("{w} validation windows")
                })
            };
            let keep = written
                .eval_windows
                .map_or("leave eval.windows out".to_string(), |w| {
                    format!("set eval.windows to {w}")
                });
            return Err(Error::invalid(
                "eval.windows",
                format!(
                    "the checkpoint's run evaluates on {}, and this config on {}: \
                     the evaluations before and after would not compare; to resume, {keep}, or start \
                     afresh in another output folder (--output DIR)",
                    windows(written.eval_windows),
                    windows(now.eval_windows),
                ),
            ));
        }
        Ok(())
    }

    fn restore(&mut self) -> Result<()> {
        let path = self.checkpoint_path();
        let ck = checkpoint::load(&path, &self.device)?;
        if ck.fingerprint != self.fingerprint {
            return Err(Error::file(
                &path,
                "this checkpoint was written with a different model, data, parameter groups or seed than \
                 the config has now; resume with the config that wrote it, or start afresh in another output folder",
            ));
        }
        if let Some(plan) = ck.plan {
            self.same_plan(plan)?;
        }
        ck.restore_params(self.model.params(), &path)?;
        for g in &mut self.groups {
            let prefix = checkpoint::optimizer_prefix(&g.name);
            let state: HashMap<String, Tensor> = ck
                .tensors
                .iter()
                .filter_map(|(k, t)| k.strip_prefix(&prefix).map(|k| (k.to_string(), t.clone())))
                .collect();
            g.optimizer.load_state(&state, &g.params)?;
            for (ci, per_param) in g.states.iter_mut().enumerate() {
                for (p, st) in g.params.iter().zip(per_param.iter_mut()) {
                    let prefix = checkpoint::constraint_prefix(&g.name, ci, &p.name);
                    st.clear();
                    for (k, t) in &ck.tensors {
                        if let Some(key) = k.strip_prefix(&prefix) {
                            st.insert(key.to_string(), t.clone());
                        }
                    }
                }
            }
        }
        self.rng = ck.rng;
        self.step = ck.step;
        self.last_checkpoint = Some(ck.step);
        Ok(())
    }

    fn train(mut self, options: &TrainOptions) -> Result<TrainSummary> {
        let steps = self.cfg.steps;
        if self.step > steps {
            // The summary would read "finished after 5 of 3 steps", with no evaluation of its own.
            return Err(Error::invalid(
                "steps",
                format!(
                    "the checkpoint is at step {}, past the {steps} steps this run asks for (--steps, \
                     or the config's steps); resume with more than {} steps, or leave --steps out",
                    self.step, self.step
                ),
            ));
        }
        let resumed_at = options.resume.then_some(self.step);
        let (mut metrics, kept) = MetricsWriter::open(&self.output, resumed_at)?;
        let mut history = kept;
        let unit = if self.data.targets_per_item() > 1 {
            "tokens"
        } else {
            "images"
        };
        let progress = Progress::new(steps, self.step, options.quiet, unit, options.stop.clone());
        let batch_size = self.cfg.data.batch_size();
        let checkpoint_every = self
            .cfg
            .checkpoint_every
            .unwrap_or(self.cfg.eval.every)
            .max(1);
        let say = |p: &Progress, text: &str| p.line(text, options.quiet);
        if self.step >= steps {
            say(
                &progress,
                &format!(
                    "nothing to do: the checkpoint is at step {} of {steps}",
                    self.step
                ),
            );
        }
        if resumed_at.is_none() {
            let record = self.evaluate()?;
            say(&progress, &eval_line(&record, steps));
            metrics.write(&Record::Eval(record.clone()))?;
            history.push(Record::Eval(record));
        }
        let started = Instant::now();
        let (mut step_time, mut constraint_time, mut targets, mut done) = (0f64, 0f64, 0u64, 0u64);
        let mut outcome = Outcome::Finished;
        while self.step < steps {
            let requested = options
                .stop
                .as_ref()
                .is_some_and(|s| s.load(Ordering::SeqCst));
            if requested || options.stop_at.is_some_and(|at| self.step >= at) {
                self.save_checkpoint()?;
                say(
                    &progress,
                    &format!(
                        "stopped at step {}; checkpoint in {}",
                        self.step,
                        self.checkpoint_path().display()
                    ),
                );
                outcome = Outcome::Stopped;
                break;
            }
            let t0 = Instant::now();
            let (loss, accuracy, n, seconds_in_constraints) =
                self.step_once(batch_size).map_err(|e| self.diverged(e))?;
            let step_seconds = t0.elapsed().as_secs_f64();
            self.step += 1;
            (step_time, constraint_time, targets, done) = (
                step_time + step_seconds,
                constraint_time + seconds_in_constraints,
                targets + n,
                done + 1,
            );
            let rate = targets as f64 / started.elapsed().as_secs_f64().max(1e-9);
            progress.step(self.step, loss, accuracy, rate);
            let record = Record::Train(TrainRecord {
                step: self.step,
                loss,
                accuracy,
                lr_factor: self.cfg.schedule.factor(self.step - 1, steps),
                step_seconds,
                constraint_seconds: seconds_in_constraints,
                targets_per_second: n as f64 / step_seconds.max(1e-9),
            });
            metrics.write(&record)?;
            history.push(record);
            let last = self.step == steps;
            if self.step.is_multiple_of(self.cfg.eval.every) || last {
                let record = self.evaluate()?;
                say(&progress, &eval_line(&record, steps));
                metrics.write(&Record::Eval(record.clone()))?;
                history.push(Record::Eval(record));
            }
            if self.step.is_multiple_of(checkpoint_every) || last {
                metrics.flush()?;
                self.save_checkpoint()?;
            }
        }
        metrics.flush()?;
        progress.finish();
        let final_eval = history.iter().rev().find_map(|r| match r {
            Record::Eval(e) => Some(e.clone()),
            _ => None,
        });
        let summary = TrainSummary {
            outcome,
            output: self.output.clone(),
            steps_done: self.step,
            steps,
            final_eval,
            seconds: started.elapsed().as_secs_f64(),
            mean_step_seconds: step_time / done.max(1) as f64,
            mean_constraint_seconds: constraint_time / done.max(1) as f64,
            targets_per_second: targets as f64 / step_time.max(1e-9),
        };
        let json = serde_json::to_string_pretty(&summary)
            .map_err(|e| Error::invalid("summary", e.to_string()))?;
        let summary_path = self.output.join("summary.json");
        std::fs::write(&summary_path, json)
            .map_err(|e| Error::file(&summary_path, e.to_string()))?;
        if outcome == Outcome::Finished {
            let describe = report::RunDescription {
                config_file: &self.config_file,
                config: &self.cfg,
                groups: &self.groups,
                validation: self.data.describe_validation(),
                validation_items: self
                    .cfg
                    .eval
                    .windows
                    .map_or(self.data.validation_items(), |w| {
                        w.min(self.data.validation_items())
                    }),
                parameters: self.model.params().iter().map(|p| p.var.elem_count()).sum(),
            };
            report::write(&self.output, &describe, &history, &summary)?;
        }
        Ok(summary)
    }

    /// One optimizer step; returns the batch's loss and accuracy, its targets, and the constraints' time.
    fn step_once(&mut self, batch_size: usize) -> Result<(f64, f64, u64, f64)> {
        let step = self.step;
        let batch = self
            .data
            .train_batch(self.cfg.seed, step, batch_size, &self.device)?;
        let logits = self.model.logits(&batch.inputs)?;
        let loss = candle_nn::loss::cross_entropy(&logits, &batch.targets)?;
        let loss_value = loss.to_scalar::<f32>()? as f64;
        if !loss_value.is_finite() {
            return Err(Error::NonFinite {
                name: "the training loss".into(),
                what: format!("it is {loss_value}"),
            });
        }
        let n = batch.targets.dim(0)?;
        let accuracy = correct_count(&logits.detach(), &batch.targets)? / n as f64;
        let grads = loss.backward()?;
        let at = OptimizerStep {
            step,
            lr_factor: self.cfg.schedule.factor(step, self.cfg.steps),
        };
        let constraint_seconds = update(&mut self.groups, &grads, &at, &mut self.rng)?;
        Ok((loss_value, accuracy, n as u64, constraint_seconds))
    }

    /// A NaN or Inf anywhere in a step (loss, gradients, updated weights) ends the run; the checkpoint
    /// on disk predates it and stays.
    fn diverged(&self, e: Error) -> Error {
        if !matches!(e, Error::NonFinite { .. }) {
            return e;
        }
        let kept = match self.last_checkpoint {
            Some(s) => format!(
                "the last good checkpoint (after step {s}) is kept in {}",
                self.checkpoint_path().display()
            ),
            None => "no checkpoint had been written yet".to_string(),
        };
        Error::invalid(
            format!("step {}", self.step + 1),
            format!("{e}; training stopped and {kept}; lower the learning rate or tighten the constraints"),
        )
    }

    fn evaluate(&self) -> Result<EvalRecord> {
        let cert = self.model.certificate()?;
        let classes = self.data.input_kind().classes();
        let e = evaluate(
            self.model.as_ref(),
            self.data.as_ref(),
            &self.cfg.eval,
            &self.device,
            &cert.robust_margins(classes),
            &[],
        )?;
        Ok(EvalRecord {
            step: self.step,
            val_loss: e.loss,
            val_accuracy: e.accuracy,
            val_targets: e.targets,
            lipschitz_bound: cert.bound,
            body_bound: cert.body_bound,
            reference_bound: Some(cert.reference_bound),
            certified_accuracy: e.certified_accuracy,
            norms: cert.norms,
        })
    }
}

fn eval_line(r: &EvalRecord, steps: u64) -> String {
    format!(
        "step {:>6}/{steps}  val loss {:.4}  val acc {:.2}%  certified Lipschitz bound {:.4}{}",
        r.step,
        r.val_loss,
        100.0 * r.val_accuracy,
        r.lipschitz_bound,
        r.certified_summary()
    )
}
/// What a run must agree with to resume from a checkpoint, in the form checkpoints have always
/// recorded, so that older ones stay resumable: RON as `ron` writes it by default (`Some(x)` spelled
/// out), the model as its config reads, without a final scale of 1 (checkpoints written before the
/// GPT had one name none).
/// What a checkpoint must have been written with to continue (or certify) a run of `cfg`.
pub(crate) fn fingerprint(cfg: &TrainConfig) -> String {
    fn plain<T: serde::Serialize>(value: &T) -> String {
        ron::to_string(value).unwrap_or_else(|e| format!("<cannot print as RON: {e}>"))
    }
    format!(
        "{} {} {} seed {}",
        model_fingerprint(&cfg.model),
        plain(&cfg.data),
        plain(&cfg.groups),
        cfg.seed
    )
}

fn model_fingerprint(model: &ModelConfig) -> String {
    spectra_core::registry::to_ron(model).replace(",final_scale:1.0)", ")")
}

#[cfg(test)]
mod tests {
    use super::*;
    use spectra_models::GptShape;

    fn gpt(final_scale: f64) -> ModelConfig {
        ModelConfig::LipschitzGpt(GptShape {
            vocab: 0,
            d_model: 128,
            blocks: 2,
            heads: 4,
            seq_len: 64,
            mlp_ratio: 4,
            blocks_mass: 16.0,
            softmax_scale: 1.0,
            final_scale,
        })
    }

    /// Every training config in experiments/ survives its copy: printed as a run folder keeps it
    /// and read back, it describes the same run (fingerprint and every field).
    #[test]
    fn the_config_copy_reads_back_as_the_same_run() {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("experiments");
        let mut checked = 0;
        for entry in std::fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            let Ok(cfg) = config::load::<TrainConfig>(&path) else {
                continue; // a sweep or a KV evaluation
            };
            let copy = spectra_core::registry::to_ron_pretty(&cfg).unwrap();
            let back: TrainConfig = config::parse(&copy, &path).unwrap_or_else(|e| {
                panic!(
                    "{}: its copy does not read back: {e}\n{copy}",
                    path.display()
                )
            });
            assert_eq!(fingerprint(&back), fingerprint(&cfg), "{}", path.display());
            assert_eq!(
                spectra_core::registry::to_ron(&back),
                spectra_core::registry::to_ron(&cfg)
            );
            checked += 1;
        }
        assert!(checked >= 10, "only {checked} training configs found");
    }

    /// The text checkpoints written before `final_scale` existed carry for this model.
    #[test]
    fn a_final_scale_of_one_fingerprints_as_before_it_existed() {
        assert_eq!(
            model_fingerprint(&gpt(1.0)),
            "LipschitzGpt(d_model:128,blocks:2,heads:4,seq_len:64,mlp_ratio:4,blocks_mass:16.0,softmax_scale:1.0)"
        );
        assert!(model_fingerprint(&gpt(0.5)).ends_with(",final_scale:0.5)"));
    }

    /// Optional settings are written `Some(..)`, as checkpoints have always recorded them.
    #[test]
    fn optional_settings_fingerprint_as_before() {
        let text = r#"(
            model: LipschitzGpt(d_model: 128, blocks: 2, heads: 4, seq_len: 64),
            data: Text(path: "t.txt", batch_size: 2),
            groups: [(name: "all", params: [All], optimizer: (type: "Muon",
                cfg: (lr: 0.1, momentum_warmup: (from: 0.85, steps: 300))))],
            steps: 1,
            eval: (every: 1),
            output: "out",
        )"#;
        let cfg: TrainConfig = config::parse(text, std::path::Path::new("t.ron")).unwrap();
        let print = fingerprint(&cfg);
        assert!(
            print.contains("momentum_warmup:Some((from:0.85,steps:300))"),
            "{print}"
        );
    }
}
