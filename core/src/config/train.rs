//! The training experiment config.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use super::{Invalid, ParamSelector, Validate};
use crate::constraint::WeightConstraint;
use crate::device::DeviceSpec;
use crate::optimizer::Optimizer;
use crate::schedule::Schedule;

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

/// The model to train. Defaults are the Lipschitz paper's (§4).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub enum ModelConfig {
    /// The Lipschitz transformer: no norms, convex residuals, 1/d attention, GELU/1.1289.
    LipschitzGpt {
        #[serde(default = "d256")]
        d_model: usize,
        #[serde(default = "three")]
        blocks: usize,
        #[serde(default = "four")]
        heads: usize,
        #[serde(default = "d256")]
        seq_len: usize,
        #[serde(default = "four")]
        mlp_ratio: usize,
        /// Modular mass of the blocks relative to embedding and head (mass 1 each).
        #[serde(default = "sixteen")]
        blocks_mass: f64,
        #[serde(default = "one")]
        softmax_scale: f64,
        /// A constant multiplying the logits (the paper's `final_scale`); the certified bound includes
        /// it, and the optimizer's target norms are divided by it as modular mass prescribes. Left out
        /// when 1, so that configs and checkpoints written before it existed still match.
        #[serde(default = "one", skip_serializing_if = "is_one")]
        final_scale: f64,
    },
    /// The ReLU MLP: `layers` linear layers of width `hidden`, the input layer zero-initialised.
    LipschitzMlp {
        #[serde(default = "d256")]
        hidden: usize,
        #[serde(default = "three")]
        layers: usize,
    },
}

fn d256() -> usize {
    256
}
fn three() -> usize {
    3
}
fn four() -> usize {
    4
}
fn is_one(x: &f64) -> bool {
    *x == 1.0
}
fn sixteen() -> f64 {
    16.0
}
fn one() -> f64 {
    1.0
}

/// Training data.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub enum DataConfig {
    /// Character-level text: vocabulary from the corpus, first 90% train, last 10% validation.
    Text { path: PathBuf, batch_size: usize },
    /// IDX image files (Fashion-MNIST's layout: `train-images-idx3-ubyte.gz` and friends).
    Idx { dir: PathBuf, batch_size: usize },
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
        let batch = match &self.data {
            DataConfig::Text { batch_size, .. } | DataConfig::Idx { batch_size, .. } => *batch_size,
        };
        if batch == 0 {
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
        }
        Ok(())
    }
}
