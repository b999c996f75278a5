//! Passkey retrieval: a 5-digit key hidden at a depth of repetitive filler; the prompt is compressed,
//! then the question is asked and the answer decoded greedily.
//!
//! The prompt follows the usual form (Mohtashami and Jaggi's landmark-attention test): an instruction,
//! filler sentences, the key sentence at the chosen depth, more filler. The key sentence is shortened to
//! "The pass key is 12345. Remember it." because the usual second clause ("12345 is the pass key.")
//! makes small models answer "… is the pass key". Lengths count the compressed part (instruction,
//! filler and key) in tokens; the question comes after compression, so a policy must keep the key
//! without knowing what will be asked.
//!
//! A policy can only lose what `Full` finds: policies are scored on the samples `Full` answers, at the
//! lengths where it answers at least half of them.

use std::time::Instant;

use rand::Rng;
use serde::Serialize;
use spectra_core::rng::derived_rng;
use spectra_core::{Error, Result};
use spectra_inference::{continue_session, GenerationParams, Logits, Session};
use spectra_models::llama::Llama;
use spectra_models::llama::TextTokenizer;

use super::{budget_tokens, check_context, Evaluation, FULL};

const INSTRUCTION: &str =
    "There is an important info hidden inside a lot of irrelevant text. Find it and \
                           memorize it. I will quiz you about the important information there.";
const FILLER: &str =
    " The grass is green. The sky is blue. The sun is yellow. Here we go. There and back again.";
const QUESTION: &str = "\n\nQuestion: What is the pass key?\nAnswer: The pass key is";
/// A space and five digits (SmolLM2's tokenizer splits digits one by one) and a spare.
const ANSWER_TOKENS: usize = 7;

#[derive(Debug, Serialize)]
pub struct PasskeyRow {
    pub policy: String,
    pub budget: String,
    /// Entries kept per KV head (mean over layers) at the shortest length used.
    pub budget_tokens: f64,
    /// Of the samples `Full` answers at the lengths used.
    pub correct: usize,
    pub total: usize,
    pub accuracy: f64,
}

/// How `Full` does at one length.
#[derive(Debug, Serialize)]
pub struct PasskeyLength {
    pub length: usize,
    pub full_correct: usize,
    pub samples: usize,
    /// Whether policies are scored here (`Full` answers at least half the samples).
    pub used: bool,
}

#[derive(Debug, Serialize)]
pub struct PasskeyAnswer {
    pub length: usize,
    pub depth: f64,
    pub trial: usize,
    pub key: String,
    pub policy: String,
    pub budget: String,
    pub answer: String,
    pub correct: bool,
}

#[derive(Debug, Serialize)]
pub struct PasskeyResult {
    pub lengths: Vec<PasskeyLength>,
    pub depths: Vec<f64>,
    pub trials: usize,
    pub rows: Vec<PasskeyRow>,
    /// Every answer, `Full`'s included.
    pub answers: Vec<PasskeyAnswer>,
}

impl PasskeyResult {
    pub fn lengths_used(&self) -> Vec<usize> {
        self.lengths
            .iter()
            .filter(|l| l.used)
            .map(|l| l.length)
            .collect()
    }
}

/// The prompt's pieces as tokens, so that lengths are exact.
struct Pieces {
    instruction: Vec<u32>,
    filler: Vec<u32>,
    question: Vec<u32>,
}

impl Pieces {
    fn new(tokenizer: &TextTokenizer) -> Result<Self> {
        Ok(Pieces {
            instruction: tokenizer.encode(INSTRUCTION)?,
            filler: tokenizer.encode(FILLER)?,
            question: tokenizer.encode(QUESTION)?,
        })
    }

    /// About `length` tokens: instruction, filler, the key sentence after `depth` of the filler, filler.
    fn context(&self, key_sentence: &[u32], length: usize, depth: f64) -> Result<Vec<u32>> {
        let fixed = self.instruction.len() + key_sentence.len();
        if length < fixed + self.filler.len() {
            return Err(Error::invalid(
                "Passkey.lengths",
                format!("{length} tokens cannot hold the instruction, the key and any filler; use at least {}", fixed + self.filler.len()),
            ));
        }
        let fillers = (length - fixed) / self.filler.len();
        let before = (fillers as f64 * depth).round() as usize;
        let mut tokens = self.instruction.clone();
        for i in 0..=fillers {
            if i == before {
                tokens.extend(key_sentence);
            }
            if i < fillers {
                tokens.extend(&self.filler);
            }
        }
        Ok(tokens)
    }
}

pub fn run(
    eval: &Evaluation<'_>,
    lengths: &[usize],
    depths: &[f64],
    trials: usize,
) -> Result<PasskeyResult> {
    let pieces = Pieces::new(&eval.tokenizer)?;
    let mut rng = derived_rng(eval.seed, 0x5041_5353);
    let mut result = PasskeyResult {
        lengths: Vec::new(),
        depths: depths.to_vec(),
        trials,
        rows: Vec::new(),
        answers: Vec::new(),
    };
    // Per arm: (correct, total) over the samples Full answers at the lengths used.
    let mut tally = vec![(0usize, 0usize); eval.arms.len()];
    for &length in lengths {
        check_context(
            &eval.model,
            length + pieces.question.len() + ANSWER_TOKENS,
            "Passkey.lengths",
        )?;
        let mut answers = Vec::new();
        let mut full_correct = 0;
        for &depth in depths {
            for trial in 0..trials {
                let key = rng.random_range(10_000..100_000u32).to_string();
                let sentence = eval
                    .tokenizer
                    .encode(&format!(" The pass key is {key}. Remember it."))?;
                let context = pieces.context(&sentence, length, depth)?;
                let started = Instant::now();
                let mut shared = Session::recording(eval.model.clone(), eval.needs)?
                    .with_reread(eval.reread.clone());
                shared.prefill(&context, eval.prefill_chunk, Logits::Last)?;
                let reference = shared.fork_uncompressed()?;
                let said = answer(eval, reference, &pieces.question)?;
                let solved = digits(&said) == key;
                eprintln!(
                    "passkey {length} tokens, depth {depth}, trial {}: {FULL} says {said:?} (key {key}, {:.0}s)",
                    trial + 1,
                    started.elapsed().as_secs_f64()
                );
                let sample = |policy: String, budget: String, answer: String| PasskeyAnswer {
                    length,
                    depth,
                    trial,
                    key: key.clone(),
                    policy,
                    budget,
                    correct: digits(&answer) == key,
                    answer,
                };
                answers.push((None, sample(FULL.into(), "—".into(), said)));
                if !solved {
                    continue;
                }
                full_correct += 1;
                for (i, arm) in eval.arms.iter().enumerate() {
                    let session =
                        shared.fork(Some(arm.policy.clone()), arm.budget.clone(), eval.seed)?;
                    let said = answer(eval, session, &pieces.question)?;
                    answers.push((Some(i), sample(arm.label.clone(), arm.budget_label(), said)));
                }
            }
        }
        let samples = depths.len() * trials;
        let used = 2 * full_correct >= samples;
        eprintln!(
            "passkey {length} tokens: {FULL} answers {full_correct}/{samples}{}",
            if used { "" } else { "; left out" }
        );
        result.lengths.push(PasskeyLength {
            length,
            full_correct,
            samples,
            used,
        });
        for (arm, a) in answers {
            if let (Some(i), true) = (arm, used) {
                tally[i].0 += usize::from(a.correct);
                tally[i].1 += 1;
            }
            result.answers.push(a);
        }
    }
    let shortest = result.lengths_used().into_iter().min().unwrap_or(0);
    let layers = eval.model.config.layers;
    result.rows = eval
        .arms
        .iter()
        .zip(&tally)
        .map(|(arm, &(correct, total))| {
            let row = PasskeyRow {
                policy: arm.label.clone(),
                budget: arm.budget_label(),
                budget_tokens: budget_tokens(arm.budget, layers, shortest),
                correct,
                total,
                accuracy: correct as f64 / total.max(1) as f64,
            };
            eprintln!(
                "  {} @ {}: {}/{} correct",
                row.policy, row.budget, row.correct, row.total
            );
            row
        })
        .collect();
    Ok(result)
}

/// Asks the question and decodes the answer greedily, until the first number has ended.
fn answer(eval: &Evaluation<'_>, mut session: Session<Llama>, question: &[u32]) -> Result<String> {
    let logits = session.extend(question, Logits::Last)?;
    let params = GenerationParams {
        max_tokens: ANSWER_TOKENS,
        stop_tokens: eval.tokenizer.eos.into_iter().collect(),
        ..GenerationParams::default()
    };
    let said = continue_session(&mut session, &logits, &params, |said| {
        let text = eval.tokenizer.decode(said)?;
        let text = text.trim_start();
        Ok(text.starts_with(|c: char| c.is_ascii_digit())
            && text.contains(|c: char| !c.is_ascii_digit()))
    })?;
    eval.tokenizer.decode(&said)
}

/// The first run of digits in `text`.
fn digits(text: &str) -> String {
    text.chars()
        .skip_while(|c| !c.is_ascii_digit())
        .take_while(char::is_ascii_digit)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::digits;

    #[test]
    fn the_answer_is_the_first_number() {
        assert_eq!(digits(" 68213. Remember"), "68213");
        assert_eq!(digits(" the key"), "");
        assert_eq!(digits("is 12 and 34"), "12");
    }
}
