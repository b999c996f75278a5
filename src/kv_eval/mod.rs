//! `spectra kv`: every policy at every budget against the uncompressed cache (`Full`) on a real model —
//! language modelling, passkey retrieval, a RULER-style suite and decoding speed — written up as
//! Markdown, JSON and SVG.
//!
//! For language modelling, passkey retrieval and the RULER-style suite each prompt is run once, by a
//! session that records what every policy needs; each policy × budget then continues from a copy of
//! that session ([`Session::fork`]), compressed as after its own prefill. The results are the same as
//! running every arm from scratch with the prompt compressed once at its end, at a fraction of the
//! cost. Decoding runs every arm from scratch, compressing between prefill chunks (after the whole
//! prompt for a policy that re-reads it, KVzip), so that its peak KV is a real run's.

mod config;
mod decode;
mod interval;
mod language_modelling;
mod passkey;
mod progress;
mod reasoning;
mod report;
mod ruler;

use std::path::Path;
use std::sync::Arc;

use serde::Serialize;
use spectra_core::{Budget, Error, KvEvictionPolicy, Result, SideInfoNeeds, TriggerSchedule};
use spectra_inference::{CausalDecoder, RereadPrompt};
use spectra_models::llama::{Llama, TextTokenizer};

pub use config::{KvEvalConfig, KvTask};
pub use decode::{DecodeRow, DecodeTaskResult};
pub use language_modelling::{LanguageModellingResult, LanguageModellingRow};
pub use passkey::{PasskeyAnswer, PasskeyLength, PasskeyResult, PasskeyRow};
pub use reasoning::{ProblemSet, ReasoningAnswer, ReasoningResult, ReasoningRow};
pub use report::write_report;
pub use ruler::{PromptFormat, RulerAnswer, RulerResult, RulerRow, RulerTask, Turn};

/// The label under which the uncompressed reference appears in tables.
pub const FULL: &str = "Full";

/// One policy at one budget.
pub struct Arm<'c> {
    pub policy: Arc<dyn KvEvictionPolicy>,
    /// The policy's name, numbered when the config lists the same policy more than once.
    pub label: String,
    pub budget: &'c Budget,
}

impl Arm<'_> {
    pub fn budget_label(&self) -> String {
        budget_label(self.budget)
    }

    /// The policy as RON at its budget: what a stored answer of this arm is looked up by (its
    /// label may change with the other policies in the config; this does not).
    pub fn key(&self) -> String {
        format!(
            "{} at {}",
            spectra_core::registry::to_ron(&*self.policy),
            self.budget_label()
        )
    }
}

pub fn budget_label(budget: &Budget) -> String {
    match budget {
        Budget::Tokens(n) => n.to_string(),
        Budget::Ratio(r) => format!("{}%", r * 100.0),
        Budget::PerLayer(v) => format!("per layer {v:?}"),
    }
}

/// The mean over layers of the entries `budget` keeps at a context of `context_len` tokens.
pub fn budget_tokens(budget: &Budget, layers: usize, context_len: usize) -> f64 {
    (0..layers)
        .map(|l| budget.tokens(l, context_len) as f64)
        .sum::<f64>()
        / layers.max(1) as f64
}

/// What every task of an evaluation shares: the model, its tokenizer and the arms.
pub struct Evaluation<'c> {
    pub model: Arc<Llama>,
    pub tokenizer: TextTokenizer,
    pub arms: Vec<Arm<'c>>,
    /// What the shared prefill records: the union of the arms' needs.
    pub needs: SideInfoNeeds,
    /// The request to repeat a plain-text prompt, for policies that score by the model's re-read.
    pub reread: RereadPrompt,
    pub seed: u64,
    pub prefill_chunk: usize,
}

/// Everything `spectra kv` measured.
#[derive(Debug, Default, Serialize)]
pub struct KvReport {
    pub model: String,
    pub device: String,
    pub language_modelling: Vec<LanguageModellingResult>,
    pub passkey: Vec<PasskeyResult>,
    pub decode: Vec<DecodeTaskResult>,
    /// One per task and length.
    pub ruler: Vec<RulerResult>,
    /// One per problem set.
    pub reasoning: Vec<ReasoningResult>,
}

/// Runs every task of `config`; progress goes to stderr, and the RULER suite's answers to
/// `output` as they complete (a run killed there continues where it stopped).
pub fn run(config: &KvEvalConfig, output: &Path) -> Result<KvReport> {
    let device = config.device.resolve()?;
    check_files(config)?;
    let (model, tokenizer) = Llama::load(config.model.path(), &device, config.weights)?;
    // Every task's lengths against the model's context before the first task runs, so that a late
    // task's impossible length does not cost the earlier tasks' work.
    for task in &config.tasks {
        let (needed, what) = task.positions();
        check_context(&model, needed, what)?;
    }
    let eval = Evaluation {
        arms: arms(&config.policies, &config.budgets),
        needs: config
            .policies
            .iter()
            .fold(SideInfoNeeds::default(), |n, p| n.union(p.needs())),
        reread: reread_prompt(&tokenizer, &Turn::default())?,
        model: Arc::new(model),
        tokenizer,
        seed: config.seed,
        prefill_chunk: config.prefill_chunk,
    };
    let model_name = config.model.path().display().to_string();
    let mut report = KvReport {
        model: model_name.clone(),
        device: format!("{device:?}"),
        ..KvReport::default()
    };
    for task in &config.tasks {
        match task {
            KvTask::LanguageModelling {
                text,
                context,
                scored,
                passages,
                chunk,
            } => report.language_modelling.push(language_modelling::run(
                &eval,
                &language_modelling::LanguageModellingSettings {
                    text,
                    context: *context,
                    scored: *scored,
                    passages: *passages,
                    chunk: *chunk,
                },
            )?),
            KvTask::Passkey {
                lengths,
                depths,
                trials,
            } => report
                .passkey
                .push(passkey::run(&eval, lengths, depths, *trials)?),
            KvTask::Ruler {
                tasks,
                lengths,
                samples,
                query_aware,
                data,
                max_new_tokens,
                format,
                batch,
            } => report.ruler.extend(ruler::run(
                &eval,
                &ruler::RulerSettings {
                    tasks,
                    lengths,
                    samples: *samples,
                    query_aware: *query_aware,
                    data,
                    max_new_tokens: *max_new_tokens,
                    format: *format,
                    batch: *batch,
                    model: &model_name,
                    output,
                },
            )?),
            KvTask::Reasoning {
                sets,
                problems,
                max_new_tokens,
                budgets,
                data,
                batch,
            } => report.reasoning.extend(reasoning::run(
                &eval,
                &reasoning::ReasoningSettings {
                    sets,
                    problems: *problems,
                    max_new_tokens: *max_new_tokens,
                    arms: &arms(
                        &config.policies,
                        budgets.as_deref().unwrap_or(&config.budgets),
                    ),
                    data,
                    batch: *batch,
                    model: &model_name,
                    output,
                },
            )?),
            KvTask::Decode {
                text,
                contexts,
                tokens,
            } => report
                .decode
                .push(decode::run(&eval, text, contexts, *tokens)?),
        }
    }
    Ok(report)
}

/// Every policy except the never-evicting ones (they equal the reference) at every budget.
fn arms<'c>(policies: &[Arc<dyn KvEvictionPolicy>], budgets: &'c [Budget]) -> Vec<Arm<'c>> {
    let evicting: Vec<&Arc<dyn KvEvictionPolicy>> = policies
        .iter()
        .filter(|p| p.contract().trigger != TriggerSchedule::Never)
        .collect();
    let mut arms = Vec::new();
    for (i, policy) in evicting.iter().enumerate() {
        let name = policy.typetag_name();
        let same: Vec<usize> = (0..evicting.len())
            .filter(|&j| evicting[j].typetag_name() == name)
            .collect();
        let wrapped = |j: usize| {
            evicting[j]
                .inner()
                .map(|inner| format!("{name}({})", inner.typetag_name()))
        };
        let label = if same.len() == 1 {
            name.to_string()
        } else if same.iter().all(|&j| wrapped(j).is_some())
            && same
                .iter()
                .all(|&j| same.iter().all(|&k| j == k || wrapped(j) != wrapped(k)))
        {
            wrapped(i).unwrap_or_default()
        } else {
            let nth = same.iter().position(|&j| j == i).unwrap_or(0) + 1;
            format!("{name} #{nth}")
        };
        arms.extend(budgets.iter().map(|budget| Arm {
            policy: Arc::clone(policy),
            label: label.clone(),
            budget,
        }));
    }
    arms
}

/// How to get a missing evaluation text.
const GET_DATA: &str = "scripts/get-data.sh puts the evaluation texts in data/";

/// The model and the texts the tasks read exist, or an error naming the first missing one and the
/// script that fetches it (so that `spectra check` finds them missing before a run does).
pub fn check_files(config: &KvEvalConfig) -> Result<()> {
    let model = config.model.path();
    if !model.exists() {
        return Err(Error::file(
            model,
            "not found; scripts/get-model.sh downloads SmolLM2-135M-Instruct into data/models/ \
             (scripts/get-model.sh qwen2.5-coder-0.5b, Qwen2.5-Coder-0.5B-Instruct)",
        ));
    }
    for task in &config.tasks {
        if let KvTask::LanguageModelling { text, .. } | KvTask::Decode { text, .. } = task {
            if !text.is_file() {
                return Err(Error::file(text, format!("not found; {GET_DATA}")));
            }
        }
        if let KvTask::Reasoning { sets, data, .. } = task {
            for set in sets {
                set.load(data, 1)?;
            }
        }
    }
    Ok(())
}

/// The tokens of a text file, with a message saying what to do when it is missing.
pub fn read_tokens(tokenizer: &TextTokenizer, path: &Path) -> Result<Vec<u32>> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| Error::file(path, format!("cannot read ({e}); {GET_DATA}")))?;
    tokenizer.encode(&text)
}

/// KVzip's request to repeat the context, in the prompt's turn.
pub fn reread_prompt(tokenizer: &TextTokenizer, turn: &Turn) -> Result<RereadPrompt> {
    Ok(RereadPrompt {
        first: tokenizer.encode("\n\nRepeat the previous context exactly.")?,
        next: tokenizer
            .encode("\n\nRepeat the part of the previous context exactly, starting with")?,
        suffix: tokenizer.encode(if turn.close.is_empty() {
            "\n"
        } else {
            &turn.close
        })?,
    })
}

/// Checks that `needed` tokens fit the model's context.
pub fn check_context(model: &Llama, needed: usize, what: &str) -> Result<()> {
    if needed > model.context_len() {
        return Err(Error::invalid(
            what,
            format!(
                "needs {needed} positions but the model was trained on {}; use a shorter length",
                model.config.max_context
            ),
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use spectra_policies::{AdaKv, KvZip, SnapKv};

    #[test]
    fn wrappers_of_different_policies_are_labelled_by_what_they_wrap() {
        let policies: Vec<Arc<dyn KvEvictionPolicy>> = vec![
            Arc::new(SnapKv::default()),
            Arc::new(AdaKv::default()),
            Arc::new(AdaKv {
                policy: Box::new(KvZip::default()),
                ..AdaKv::default()
            }),
            Arc::new(KvZip::default()),
            Arc::new(KvZip { sinks: 8 }),
        ];
        let budgets = [Budget::Ratio(0.5)];
        let labels: Vec<String> = arms(&policies, &budgets)
            .into_iter()
            .map(|a| a.label)
            .collect();
        assert_eq!(
            labels,
            [
                "SnapKv",
                "AdaKv(SnapKv)",
                "AdaKv(KvZip)",
                "KvZip #1",
                "KvZip #2"
            ]
        );
    }
}
