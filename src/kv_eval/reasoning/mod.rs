//! Reasoning under decode-time compression, TriAttention's setting: a model writes a chain of
//! thought for each math problem while its KV cache is bounded *during* generation, and the final
//! answer is checked. Every arm (`Full`, and each policy at each budget) answers every problem
//! greedily, `batch` sequences at a time through the batching engine; each answer is stored as it
//! completes ([`ANSWERS`]), so a stopped run continues. Per arm: accuracy with its 95% bootstrap
//! interval, the tokens generated, the answers cut at `max_new_tokens`, decoding throughput and the
//! largest cache a sequence held.

pub mod answer;
mod problems;
pub mod table;

use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;
use std::time::Instant;

use serde::{Deserialize, Serialize};
use spectra_core::{Budget, Error, KvEvictionPolicy, Result};
use spectra_inference::{
    Engine, EngineConfig, Event, FinishReason, GenerationParams, Request, SchedulerConfig,
    StepPriority,
};

use problems::Problem;
pub use problems::ProblemSet;

use super::progress::{Progress, Stored};
use super::{interval, Arm, Evaluation, FULL};
use crate::chat_template::{ChatTemplate, Message};

/// Where the answers are stored as they complete.
const ANSWERS: &str = "reasoning-answers.jsonl";

/// Appended to each problem: the instruction Qwen's and DeepSeek's math evaluations use.
const INSTRUCTION: &str = "Please reason step by step, and put your final answer within \\boxed{}.";

/// The task's settings, as the config gives them.
pub struct ReasoningSettings<'a> {
    pub sets: &'a [ProblemSet],
    pub problems: usize,
    pub max_new_tokens: usize,
    /// Every policy at every budget of the task.
    pub arms: &'a [Arm<'a>],
    pub data: &'a Path,
    pub batch: usize,
    /// The model file, as the stored answers name it.
    pub model: &'a str,
    pub output: &'a Path,
}

/// What every stored answer depends on besides its problem, token limit and arm.
#[derive(Debug, PartialEq, Serialize, Deserialize)]
struct Settings {
    model: String,
    seed: u64,
    instruction: String,
}

/// One arm's answer to one problem.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct ReasoningAnswer {
    pub problem: String,
    pub max_new_tokens: usize,
    /// `Full`, or the policy as RON at its budget: what the stored answer is looked up by.
    pub arm: String,
    pub policy: String,
    pub budget: String,
    pub text: String,
    pub extracted: Option<String>,
    pub reference: String,
    pub correct: bool,
    pub tokens: usize,
    /// Whether it ran to `max_new_tokens` without ending.
    pub cut: bool,
    pub peak_kv_bytes: usize,
}

fn answer_key(problem: &str, max_new_tokens: usize, arm: &str) -> String {
    format!("{problem} {max_new_tokens} {arm}")
}

impl Stored for ReasoningAnswer {
    fn key(&self) -> String {
        answer_key(&self.problem, self.max_new_tokens, &self.arm)
    }
}

/// One arm over a set.
#[derive(Debug, Serialize)]
pub struct ReasoningRow {
    pub policy: String,
    pub budget: String,
    pub correct: usize,
    /// Percent, with its 95% bootstrap interval over the problems.
    pub accuracy: f64,
    pub interval: Option<[f64; 2]>,
    pub mean_tokens: f64,
    /// Answers that ran to `max_new_tokens` without ending.
    pub cut: usize,
    /// Tokens generated per second over this invocation's sequences (prompts included in the time;
    /// `None` when every answer was stored by an earlier run).
    pub tokens_per_second: Option<f64>,
    /// The largest KV cache one sequence held, bytes.
    pub peak_kv_bytes: usize,
}

/// One set's table.
#[derive(Debug, Serialize)]
pub struct ReasoningResult {
    pub set: String,
    pub problems: usize,
    pub max_new_tokens: usize,
    pub batch: usize,
    pub rows: Vec<ReasoningRow>,
    pub answers: Vec<ReasoningAnswer>,
}

/// An arm as the engine runs it: `Full` is no policy and no bound.
struct Runner<'a> {
    label: String,
    budget_label: String,
    key: String,
    policy: Option<Arc<dyn KvEvictionPolicy>>,
    budget: &'a Budget,
}

/// `Full`'s budget: never reached.
const UNBOUNDED: Budget = Budget::Tokens(usize::MAX);

/// Runs every set, continuing from the answers stored in the output folder.
pub fn run(
    eval: &Evaluation<'_>,
    settings: &ReasoningSettings<'_>,
) -> Result<Vec<ReasoningResult>> {
    let mut progress = Progress::open(
        settings.output,
        ANSWERS,
        &Settings {
            model: settings.model.to_string(),
            seed: eval.seed,
            instruction: INSTRUCTION.to_string(),
        },
    )?;
    let template = ChatTemplate::of(&eval.tokenizer)?;
    let runners: Vec<Runner> = std::iter::once(Runner {
        label: FULL.into(),
        budget_label: "—".into(),
        key: FULL.into(),
        policy: None,
        budget: &UNBOUNDED,
    })
    .chain(settings.arms.iter().map(|a| Runner {
        label: a.label.clone(),
        budget_label: a.budget_label(),
        key: a.key(),
        policy: Some(a.policy.clone()),
        budget: a.budget,
    }))
    .collect();
    let mut results = Vec::new();
    for &set in settings.sets {
        let problems = set.load(settings.data, settings.problems)?;
        let prompts = problems
            .iter()
            .map(|p| {
                let text = template.render(&[Message {
                    role: "user".into(),
                    content: format!("{}\n{INSTRUCTION}", p.question),
                }])?;
                eval.tokenizer.encode(&text)
            })
            .collect::<Result<Vec<_>>>()?;
        let mut rows = Vec::new();
        let mut answers = Vec::new();
        for runner in &runners {
            let key = |p: &Problem| answer_key(&p.id, settings.max_new_tokens, &runner.key);
            let missing: Vec<usize> = (0..problems.len())
                .filter(|&i| progress.get(&key(&problems[i])).is_none())
                .collect();
            let rate = if missing.is_empty() {
                None
            } else {
                Some(generate(
                    eval,
                    settings,
                    runner,
                    (&problems, &prompts),
                    &missing,
                    &mut progress,
                )?)
            };
            let mine: Vec<ReasoningAnswer> = problems
                .iter()
                .filter_map(|p| progress.get(&key(p)).cloned())
                .collect();
            rows.push(row(runner, &mine, rate, eval.seed));
            answers.extend(mine);
        }
        results.push(ReasoningResult {
            set: set.name().into(),
            problems: problems.len(),
            max_new_tokens: settings.max_new_tokens,
            batch: settings.batch,
            rows,
            answers,
        });
    }
    Ok(results)
}

/// Answers the `missing` problems with `runner`'s policy and budget through the engine, storing
/// each answer as its sequence finishes; the tokens generated per second.
fn generate(
    eval: &Evaluation<'_>,
    settings: &ReasoningSettings<'_>,
    runner: &Runner<'_>,
    (problems, prompts): (&[Problem], &[Vec<u32>]),
    missing: &[usize],
    progress: &mut Progress<ReasoningAnswer>,
) -> Result<f64> {
    let mut engine = Engine::new(
        eval.model.clone(),
        EngineConfig {
            scheduler: SchedulerConfig {
                kv_memory: usize::MAX,
                max_sequences: settings.batch,
                step_tokens: settings.batch * (eval.prefill_chunk + 1),
                chunk: eval.prefill_chunk,
                priority: StepPriority::DecodeFirst,
            },
            reread: Some(eval.reread.clone()),
        },
        None,
    )?;
    let mut of = HashMap::new();
    for &i in missing {
        let id = engine.submit(Request {
            prompt: prompts[i].clone(),
            params: GenerationParams {
                max_tokens: settings.max_new_tokens,
                stop_tokens: eval.tokenizer.eos.into_iter().collect(),
                ..GenerationParams::default()
            },
            policy: runner.policy.clone(),
            budget: runner.budget.clone(),
            seed: eval.seed,
        })?;
        of.insert(id, (i, Vec::new()));
    }
    let started = Instant::now();
    let mut generated = 0;
    let mut done = 0;
    while engine.has_work() {
        for event in engine.step()? {
            match event {
                Event::Token { id, token, .. } => {
                    generated += 1;
                    if let Some((_, tokens)) = of.get_mut(&id) {
                        tokens.push(token);
                    }
                }
                Event::Finished {
                    id, reason, stats, ..
                } => {
                    let Some((i, mut tokens)) = of.remove(&id) else {
                        continue;
                    };
                    if reason == FinishReason::Stop {
                        tokens.pop_if(|t| eval.tokenizer.eos == Some(*t));
                    }
                    let problem = &problems[i];
                    let text = eval.tokenizer.decode(&tokens)?;
                    let extracted = answer::extract(&text);
                    done += 1;
                    eprintln!(
                        "reasoning {}, {} at {}: {}/{} ({} tokens, {:?})",
                        problem.id,
                        runner.label,
                        runner.budget_label,
                        done,
                        missing.len(),
                        stats.generated_tokens,
                        extracted
                    );
                    progress.record(ReasoningAnswer {
                        problem: problem.id.clone(),
                        max_new_tokens: settings.max_new_tokens,
                        arm: runner.key.clone(),
                        policy: runner.label.clone(),
                        budget: runner.budget_label.clone(),
                        correct: extracted
                            .as_deref()
                            .is_some_and(|a| answer::matches(a, &problem.answer)),
                        extracted,
                        text,
                        reference: problem.answer.clone(),
                        tokens: stats.generated_tokens,
                        cut: reason == FinishReason::Length,
                        peak_kv_bytes: stats.peak_kv_bytes,
                    })?;
                }
                Event::Failed { id, error } => {
                    let problem = of.get(&id).map_or("?", |(i, _)| problems[*i].id.as_str());
                    return Err(Error::invalid(
                        "Reasoning",
                        format!(
                            "{} at {} on {problem}: {error}",
                            runner.label, runner.budget_label
                        ),
                    ));
                }
            }
        }
    }
    Ok(generated as f64 / started.elapsed().as_secs_f64().max(1e-9))
}

fn row(
    runner: &Runner<'_>,
    answers: &[ReasoningAnswer],
    rate: Option<f64>,
    seed: u64,
) -> ReasoningRow {
    let scores: Vec<f64> = answers
        .iter()
        .map(|a| if a.correct { 100.0 } else { 0.0 })
        .collect();
    let n = answers.len().max(1) as f64;
    ReasoningRow {
        policy: runner.label.clone(),
        budget: runner.budget_label.clone(),
        correct: answers.iter().filter(|a| a.correct).count(),
        accuracy: scores.iter().sum::<f64>() / n,
        interval: interval::bootstrap(&[&scores], seed),
        mean_tokens: answers.iter().map(|a| a.tokens as f64).sum::<f64>() / n,
        cut: answers.iter().filter(|a| a.cut).count(),
        tokens_per_second: rate,
        peak_kv_bytes: answers.iter().map(|a| a.peak_kv_bytes).max().unwrap_or(0),
    }
}
