//! The KV-cache evaluation config.

use std::path::PathBuf;
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use spectra_core::config::{Invalid, Validate};
use spectra_core::{registry, Budget, DeviceSpec, KvEvictionPolicy};
use spectra_models::llama::WeightFormat;
use spectra_models::DecoderConfig;

use super::reasoning::ProblemSet;
use super::ruler::{PromptFormat, RulerTask};

/// `spectra kv` reads this: every policy at every budget, on every task, against `Full`.
#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KvEvalConfig {
    pub model: DecoderConfig,
    pub policies: Vec<Arc<dyn KvEvictionPolicy>>,
    pub budgets: Vec<Budget>,
    pub tasks: Vec<KvTask>,
    #[serde(default)]
    pub device: DeviceSpec,
    #[serde(default)]
    pub seed: u64,
    /// Prompt tokens per prefill chunk (attention scores are at most chunk × context).
    #[serde(default = "prefill_chunk")]
    pub prefill_chunk: usize,
    /// How the model's matrices are held and multiplied: `F32` (the default, exact products for
    /// the quality tables) or `AsStored` (the fast decoder).
    #[serde(default = "exact_products")]
    pub weights: WeightFormat,
    pub output: PathBuf,
}

fn exact_products() -> WeightFormat {
    WeightFormat::F32
}
fn prefill_chunk() -> usize {
    256
}
fn one() -> usize {
    1
}
fn ruler_data() -> PathBuf {
    PathBuf::from("data/kv/ruler")
}
fn reasoning_data() -> PathBuf {
    PathBuf::from("data/kv/reasoning")
}

/// llama.cpp's 8 parallel sequences, where batching has paid off on this machine.
fn reasoning_batch() -> usize {
    8
}

fn ruler_batch() -> usize {
    16
}

fn scoring_chunk() -> usize {
    32
}

/// What to measure. Every task compares each policy × budget with the uncompressed cache (`Full`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub enum KvTask {
    /// Language modelling on `passages` consecutive `context`-token passages of `text`: the first
    /// `context − scored` tokens are the prompt; the last `scored` tokens are fed `chunk` at a time with
    /// the cache compressed between chunks as in decoding, and scored: NLL, perplexity and top-1
    /// agreement of the next-token predictions with `Full`'s.
    LanguageModelling {
        text: PathBuf,
        context: usize,
        scored: usize,
        #[serde(default = "one")]
        passages: usize,
        #[serde(default = "scoring_chunk")]
        chunk: usize,
    },
    /// A 5-digit key hidden at each depth (0 = start, 1 = end) of filler text of each length (tokens),
    /// `trials` random keys each; the prompt is compressed, then the question asked. Lengths at which
    /// `Full` does not answer every sample are reported and left out.
    Passkey {
        lengths: Vec<usize>,
        depths: Vec<f64>,
        #[serde(default = "one")]
        trials: usize,
    },
    /// RULER-style synthetic tasks (needles, variable tracking, common and frequent words), `samples`
    /// prompts per task of each total length (context, question and answer, in tokens), generated
    /// from the seed with essays and words from `data` (`scripts/get-ruler-data.sh`). The context is
    /// compressed before the question is seen, or with it where `query_aware`. `max_new_tokens`
    /// replaces RULER's answer lengths (128 tokens for needles, 30, 120 and 50 for the others). Up to
    /// `batch` policy × budget arms of a sample answer together, one forward pass a step, each from
    /// its own fork of the sample's prefill.
    Ruler {
        tasks: Vec<RulerTask>,
        lengths: Vec<usize>,
        #[serde(default = "one")]
        samples: usize,
        #[serde(default)]
        query_aware: bool,
        #[serde(default = "ruler_data")]
        data: PathBuf,
        #[serde(default)]
        max_new_tokens: Option<usize>,
        #[serde(default)]
        format: PromptFormat,
        #[serde(default = "ruler_batch")]
        batch: usize,
    },
    /// Chain-of-thought answers to math problems with the cache bounded *during* generation
    /// (decode-time compression, TriAttention's setting): each set's first `problems` problems
    /// (from `data`, `scripts/get-reasoning-data.sh`), in the model's chat template, generated
    /// greedily up to `max_new_tokens` tokens by `Full` and by every policy at each of `budgets`
    /// (the config's `budgets` when absent), `batch` sequences at a time through the batching
    /// engine. Each answer is stored as it completes: a stopped run continues.
    Reasoning {
        sets: Vec<ProblemSet>,
        problems: usize,
        max_new_tokens: usize,
        #[serde(default)]
        budgets: Option<Vec<Budget>>,
        #[serde(default = "reasoning_data")]
        data: PathBuf,
        #[serde(default = "reasoning_batch")]
        batch: usize,
    },
    /// Greedy decoding of `tokens` tokens after the first `context` tokens of `text`, for each context:
    /// tokens per second, eviction's share of the time, and the KV cache's peak bytes.
    Decode {
        text: PathBuf,
        contexts: Vec<usize>,
        tokens: usize,
    },
}

impl KvTask {
    /// The most positions the task fills in one sequence, and the setting that asks for them.
    /// Passkey's question and answer come on top of its lengths; it checks those itself.
    pub fn positions(&self) -> (usize, &'static str) {
        let max = |values: &[usize]| values.iter().copied().max().unwrap_or(0);
        match self {
            KvTask::LanguageModelling { context, .. } => (*context, "LanguageModelling.context"),
            KvTask::Passkey { lengths, .. } => (max(lengths), "Passkey.lengths"),
            KvTask::Ruler { lengths, .. } => (max(lengths), "Ruler.lengths"),
            // The prompts' lengths come on top; the engine refuses one that does not fit.
            KvTask::Reasoning { max_new_tokens, .. } => {
                (*max_new_tokens, "Reasoning.max_new_tokens")
            }
            KvTask::Decode {
                contexts, tokens, ..
            } => (max(contexts).saturating_add(*tokens), "Decode.contexts"),
        }
    }
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
        self.validate_budgets(&self.budgets)?;
        if self.output.as_os_str().is_empty() {
            return Err(Invalid::new(
                "output is empty: the report's files would land in the current folder",
            )
            .near("output")
            .help("name a folder, e.g. `output: \"runs/kv\"`"));
        }
        if self.prefill_chunk == 0 {
            return Err(Invalid::new("prefill_chunk = 0")
                .near("prefill_chunk")
                .help("use e.g. 256"));
        }
        if self.tasks.is_empty() {
            return Err(
                Invalid::new("no tasks: the evaluation would have nothing to measure")
                    .near("tasks")
                    .help("add e.g. `Passkey(lengths: [1024], depths: [0.5])`"),
            );
        }
        // The same policy twice would be two identical rows in every table.
        let written: Vec<String> = self.policies.iter().map(registry::to_ron).collect();
        for (i, w) in written.iter().enumerate() {
            if written[..i].contains(w) {
                let name = self.policies[i].typetag_name();
                return Err(Invalid::new(format!(
                    "the policy `{name}` is listed twice with the same settings"
                ))
                .near(name)
                .help("remove one, or give it other settings"));
            }
        }
        self.tasks.iter().try_for_each(validate_task)?;
        for task in &self.tasks {
            if let KvTask::Reasoning {
                budgets: Some(budgets),
                ..
            } = task
            {
                self.validate_budgets(budgets)?;
            }
        }
        Ok(())
    }
}

impl KvEvalConfig {
    /// Each budget is valid and every policy takes it.
    fn validate_budgets(&self, budgets: &[Budget]) -> Result<(), Invalid> {
        for budget in budgets {
            budget
                .validate()
                .map_err(|m| Invalid::new(m).near("budgets"))?;
            for p in &self.policies {
                let name = p.typetag_name();
                p.validate(budget).map_err(|m| {
                    // Not every error is the budget's (a missing stats file is not): name it as
                    // the setting under which it arose.
                    Invalid::new(format!("{name} at budget {budget:?}: {m}")).near(name)
                })?;
            }
        }
        Ok(())
    }
}

fn validate_task(task: &KvTask) -> Result<(), Invalid> {
    let at_least_one = |field: &'static str, value: usize| {
        if value == 0 {
            Err(Invalid::new(format!("{field} = 0; it must be at least 1")).near(field))
        } else {
            Ok(())
        }
    };
    match task {
        KvTask::LanguageModelling {
            context,
            scored,
            passages,
            chunk,
            ..
        } => {
            at_least_one("passages", *passages)?;
            at_least_one("chunk", *chunk)?;
            if *scored == 0 || scored >= context {
                return Err(Invalid::new(format!(
                    "scored = {scored} must be in 1..context ({context}): the unscored tokens are the prompt"
                ))
                .near("scored"));
            }
        }
        KvTask::Passkey {
            lengths,
            depths,
            trials,
        } => {
            at_least_one("trials", *trials)?;
            if depths.is_empty() || lengths.is_empty() {
                return Err(
                    Invalid::new("passkey needs at least one length and one depth")
                        .near("Passkey")
                        .help("e.g. `lengths: [2048], depths: [0.1, 0.5, 0.9]`"),
                );
            }
            if let Some(d) = depths.iter().find(|d| !(0.0..=1.0).contains(*d)) {
                return Err(
                    Invalid::new(format!("passkey depth {d} is outside [0, 1]")).near("depths")
                );
            }
            if let Some(l) = lengths.iter().find(|&&l| l < 64) {
                return Err(Invalid::new(format!(
                    "passkey length {l} is too short to hide a key in; use at least 64 tokens"
                ))
                .near("lengths"));
            }
        }
        KvTask::Ruler {
            tasks,
            lengths,
            samples,
            max_new_tokens,
            batch,
            ..
        } => {
            at_least_one("samples", *samples)?;
            at_least_one("batch", *batch)?;
            if let Some(n) = max_new_tokens {
                at_least_one("max_new_tokens", *n)?;
            }
            if tasks.is_empty() || lengths.is_empty() {
                return Err(Invalid::new("Ruler needs at least one task and one length")
                    .near("Ruler")
                    .help("e.g. `Ruler(tasks: [niah_single_1, niah_multikey_1, vt, cwe], lengths: [4096])`"));
            }
            if let Some(l) = lengths.iter().find(|&&l| l < 256) {
                return Err(Invalid::new(format!(
                    "Ruler length {l} is too short for a haystack; use at least 256 tokens"
                ))
                .near("lengths"));
            }
            for (i, l) in lengths.iter().enumerate() {
                if lengths[..i].contains(l) {
                    return Err(
                        Invalid::new(format!("the length {l} is listed twice")).near("lengths")
                    );
                }
            }
            for (i, t) in tasks.iter().enumerate() {
                if tasks[..i].contains(t) {
                    return Err(
                        Invalid::new(format!("the task `{}` is listed twice", t.name()))
                            .near(t.name()),
                    );
                }
            }
        }
        KvTask::Reasoning {
            sets,
            problems,
            max_new_tokens,
            budgets,
            batch,
            ..
        } => {
            at_least_one("problems", *problems)?;
            at_least_one("max_new_tokens", *max_new_tokens)?;
            at_least_one("batch", *batch)?;
            if sets.is_empty() {
                return Err(Invalid::new("Reasoning needs at least one problem set")
                    .near("Reasoning")
                    .help("e.g. `sets: [gsm8k, aime2025]`"));
            }
            if budgets.as_ref().is_some_and(Vec::is_empty) {
                return Err(Invalid::new("Reasoning.budgets is empty")
                    .near("Reasoning")
                    .help("give budgets, e.g. `budgets: Some([Tokens(256), Tokens(512)])`, or leave it out for the config's"));
            }
        }
        KvTask::Decode {
            contexts, tokens, ..
        } => {
            at_least_one("tokens", *tokens)?;
            if contexts.is_empty() || contexts.contains(&0) {
                return Err(Invalid::new(
                    "decode contexts must be a non-empty list of lengths ≥ 1",
                )
                .near("contexts"));
            }
        }
    }
    Ok(())
}
