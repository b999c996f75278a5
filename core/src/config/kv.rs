//! The KV-cache evaluation config.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use super::{Invalid, Validate};
use crate::device::DeviceSpec;
use crate::kv_policy::{Budget, KvEvictionPolicy};

/// `spectra kv` reads this: every policy at every budget, on every task, against `Full`.
#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KvEvalConfig {
    pub model: KvModelConfig,
    pub policies: Vec<Box<dyn KvEvictionPolicy>>,
    pub budgets: Vec<Budget>,
    pub tasks: Vec<KvTask>,
    #[serde(default)]
    pub device: DeviceSpec,
    #[serde(default)]
    pub seed: u64,
    pub output: PathBuf,
}

/// A pretrained decoder.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub enum KvModelConfig {
    /// A GGUF file (weights, tokenizer and hyper-parameters in one).
    Gguf { path: PathBuf },
    /// A Hugging Face folder: `config.json`, `*.safetensors`, `tokenizer.json`.
    Safetensors { dir: PathBuf },
}

/// What to measure.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub enum KvTask {
    /// NLL of the last `scored` tokens of a `context`-token passage from `text`, decoding with compression.
    LanguageModelling {
        text: PathBuf,
        context: usize,
        scored: usize,
    },
    /// A 5-digit key hidden at each depth of filler text of each length, then asked for.
    Passkey {
        lengths: Vec<usize>,
        depths: Vec<f64>,
        trials: usize,
    },
    /// Top-1 agreement of next-token predictions with `Full` over `tokens` tokens of `text`.
    Agreement { text: PathBuf, tokens: usize },
}

impl Validate for KvEvalConfig {
    fn validate(&self) -> Result<(), Invalid> {
        if self.policies.is_empty() {
            return Err(Invalid::new("no policies")
                .near("policies")
                .help("add e.g. `(type: \"Full\", cfg: ())`"));
        }
        if self.budgets.is_empty() {
            return Err(Invalid::new("no budgets")
                .near("budgets")
                .help("add e.g. `Tokens(512)`"));
        }
        for budget in &self.budgets {
            budget
                .validate()
                .map_err(|m| Invalid::new(m).near("budgets"))?;
            for p in &self.policies {
                let name = p.typetag_name();
                p.validate(budget).map_err(|m| {
                    Invalid::new(format!("{name} cannot hold budget {budget:?}: {m}")).near(name)
                })?;
            }
        }
        for task in &self.tasks {
            if let KvTask::Passkey { depths, .. } = task {
                if let Some(d) = depths.iter().find(|d| !(0.0..=1.0).contains(*d)) {
                    return Err(
                        Invalid::new(format!("passkey depth {d} is outside [0, 1]")).near("depths")
                    );
                }
            }
            if let KvTask::LanguageModelling {
                context, scored, ..
            } = task
            {
                if scored > context || *scored == 0 {
                    return Err(Invalid::new(format!(
                        "scored = {scored} must be in 1..=context ({context})"
                    ))
                    .near("scored"));
                }
            }
        }
        Ok(())
    }
}
