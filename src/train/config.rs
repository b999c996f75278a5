//! The training experiment config.

use std::path::{Path, PathBuf};

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use spectra_core::config::{self, Invalid, Validate};
use spectra_core::registry::{self, Family};
use spectra_core::{DeviceSpec, Optimizer, Schedule, WeightConstraint};
use spectra_models::{DataConfig, ModelConfig};

use super::param_selector::ParamSelector;

/// `spectra train` reads this.
#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TrainConfig {
    pub model: ModelConfig,
    pub data: DataConfig,
    /// Parameter groups, matched in order: each parameter goes to the first group that selects it.
    pub groups: Vec<ParamGroupConfig>,
    #[serde(default = "default_schedule")]
    pub schedule: Schedule,
    pub steps: u64,
    pub eval: EvalConfig,
    #[serde(default)]
    pub device: DeviceSpec,
    #[serde(default)]
    pub seed: u64,
    /// Folder for metrics, checkpoints and the report.
    pub output: PathBuf,
    /// Write a checkpoint every this many steps (and at the end).
    #[serde(default)]
    pub checkpoint_every: Option<u64>,
}

fn default_schedule() -> Schedule {
    Schedule::Linear
}

/// When and on what to evaluate.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EvalConfig {
    /// Evaluate every this many steps (and after the last).
    pub every: u64,
    /// Evaluate on this many validation windows/images; absent: the whole validation split.
    #[serde(default)]
    pub windows: Option<usize>,
    #[serde(default = "eval_batch")]
    pub batch_size: usize,
}

fn eval_batch() -> usize {
    64
}

/// An optimizer and the constraints applied after it, for the parameters the selectors pick.
#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ParamGroupConfig {
    pub name: String,
    pub params: Vec<ParamSelector>,
    pub optimizer: Box<dyn Optimizer>,
    #[serde(default)]
    pub constraints: Vec<Box<dyn WeightConstraint>>,
}

impl Validate for TrainConfig {
    fn validate(&self) -> Result<(), Invalid> {
        if self.steps == 0 {
            return Err(Invalid::new("steps is 0: nothing would train")
                .near("steps")
                .help("set steps: 1 or more"));
        }
        if self.output.as_os_str().is_empty() {
            return Err(Invalid::new(
                "output is empty: the run's files would land in the current folder",
            )
            .near("output")
            .help("name a folder, e.g. `output: \"runs/first\"`"));
        }
        if self.checkpoint_every == Some(0) {
            return Err(Invalid::new("checkpoint_every is 0")
                .near("checkpoint_every")
                .help("checkpoint every N ≥ 1 steps, or leave it out to checkpoint at each evaluation"));
        }
        if self.eval.every == 0 {
            return Err(Invalid::new("eval.every is 0")
                .near("every")
                .help("evaluate every N ≥ 1 steps"));
        }
        if self.eval.windows == Some(0) {
            return Err(Invalid::new(
                "eval.windows is 0: a loss and accuracy over no windows are not results",
            )
            .near("eval:")
            .help(
                "use 1 or more, or leave windows out to evaluate on the whole validation split",
            ));
        }
        if self.eval.batch_size == 0 {
            return Err(Invalid::new("eval.batch_size is 0")
                .near("eval:")
                .help("use 1 or more (the default is 64)"));
        }
        if self.groups.is_empty() {
            return Err(Invalid::new("no parameter groups").near("groups").help(
                "add one, e.g. `groups: [(name: \"all\", params: [All], optimizer: (type: \"AdamW\", cfg: ()))]`",
            ));
        }
        self.schedule
            .validate()
            .map_err(|m| Invalid::new(m).near("schedule"))?;
        if self.data.batch_size() == 0 {
            return Err(Invalid::new("batch_size is 0")
                .near("batch_size")
                .help("use 1 or more"));
        }
        for (i, g) in self.groups.iter().enumerate() {
            if self.groups[..i].iter().any(|h| h.name == g.name) {
                return Err(
                    Invalid::new(format!("two groups are named `{}`", g.name)).near(g.name.clone())
                );
            }
            if g.params.is_empty() {
                return Err(
                    Invalid::new(format!("group `{}` selects no parameters", g.name))
                        .near(g.name.clone())
                        .help("give it selectors, e.g. `params: [Role(Hidden), Name(\"head\")]`"),
                );
            }
            let name = g.optimizer.typetag_name();
            g.optimizer
                .validate()
                .map_err(|m| Invalid::new(format!("{name}: {m}")).near(name))?;
            for c in &g.constraints {
                let name = c.typetag_name();
                c.validate()
                    .map_err(|m| Invalid::new(format!("{name}: {m}")).near(name))?;
            }
            if let Some(c) = g.constraints.iter().find(|c| c.needs_update_bound()) {
                if !g.optimizer.bounds_updates() {
                    return Err(unbounded_updates(g, c.typetag_name()));
                }
            }
        }
        Ok(())
    }
}

/// Group `group` pairs `constraint`, which needs a bound on each update, with an optimizer that gives
/// none (it used to fail at step 0 without a location); the help names the plugins that pair.
fn unbounded_updates(group: &ParamGroupConfig, constraint: &str) -> Invalid {
    let optimizers = registered::<Box<dyn Optimizer>>(Family::Optimizer, |o| o.bounds_updates());
    let constraints = registered::<Box<dyn WeightConstraint>>(Family::WeightConstraint, |c| {
        !c.needs_update_bound()
    });
    Invalid::new(format!(
        "group `{}`: {constraint} needs an optimizer that bounds the norm of each update, and {} \
         does not",
        group.name,
        group.optimizer.typetag_name()
    ))
    .near(constraint)
    .within(group.name.clone())
    .help(format!(
        "use an optimizer that does ({}), or a constraint that needs no bound ({})",
        optimizers.join(", "),
        constraints.join(", ")
    ))
}

/// The registered plugins of `family` whose default configuration satisfies `keep`.
fn registered<T: DeserializeOwned>(family: Family, keep: impl Fn(&T) -> bool) -> Vec<&'static str> {
    registry::plugins()
        .into_iter()
        .filter(|p| p.family == family)
        .filter(|p| {
            config::parse_ron::<T>(&(p.default_config)(), Path::new(p.name)).is_ok_and(|t| keep(&t))
        })
        .map(|p| p.name)
        .collect()
}
