//! Language modelling under compression: NLL, perplexity and top-1 agreement with `Full` on the last
//! tokens of long passages, fed in chunks with the cache compressed between chunks as in decoding.

use std::path::Path;
use std::time::Instant;

use candle_core::Tensor;
use serde::Serialize;
use spectra_core::{Error, Result};
use spectra_inference::{Logits, Session};
use spectra_models::llama::score_targets;
use spectra_models::llama::Llama;

use super::{budget_tokens, read_tokens, Evaluation, FULL};

pub struct LanguageModellingSettings<'a> {
    pub text: &'a Path,
    pub context: usize,
    pub scored: usize,
    pub passages: usize,
    pub chunk: usize,
}

#[derive(Debug, Serialize)]
pub struct LanguageModellingRow {
    pub policy: String,
    pub budget: String,
    /// Entries kept per KV head (mean over layers) at the end of the prompt.
    pub budget_tokens: f64,
    /// Mean NLL of the scored tokens, nats.
    pub nll: f64,
    pub delta_nll: f64,
    pub perplexity: f64,
    /// Share of scored positions whose most likely next token equals `Full`'s.
    pub agreement: f64,
    /// The largest KV allocation while scoring, bytes.
    pub peak_kv_bytes: usize,
    pub compressions: usize,
}

#[derive(Debug, Serialize)]
pub struct LanguageModellingResult {
    pub text: String,
    pub context: usize,
    pub scored: usize,
    pub passages: usize,
    pub chunk: usize,
    pub full: LanguageModellingRow,
    pub rows: Vec<LanguageModellingRow>,
}

/// Sums over passages.
#[derive(Default)]
struct Tally {
    nll: f64,
    agree: usize,
    count: usize,
    peak_kv_bytes: usize,
    compressions: usize,
}

impl Tally {
    fn row(
        &self,
        policy: &str,
        budget: String,
        budget_tokens: f64,
        full_nll: f64,
    ) -> LanguageModellingRow {
        let nll = self.nll / self.count.max(1) as f64;
        LanguageModellingRow {
            policy: policy.to_string(),
            budget,
            budget_tokens,
            nll,
            delta_nll: nll - full_nll,
            perplexity: nll.exp(),
            agreement: self.agree as f64 / self.count.max(1) as f64,
            peak_kv_bytes: self.peak_kv_bytes,
            compressions: self.compressions,
        }
    }
}

pub fn run(
    eval: &Evaluation<'_>,
    settings: &LanguageModellingSettings<'_>,
) -> Result<LanguageModellingResult> {
    let tokens = read_tokens(&eval.tokenizer, settings.text)?;
    let needed = settings.passages.saturating_mul(settings.context);
    if tokens.len() < needed {
        return Err(Error::file(
            settings.text,
            format!(
                "holds {} tokens; {} passages of {} tokens need {needed}: give a longer text or ask for \
                 fewer passages",
                tokens.len(),
                settings.passages,
                settings.context
            ),
        ));
    }
    let prompt_len = settings.context - settings.scored;
    let mut full = Tally::default();
    let mut arms: Vec<Tally> = eval.arms.iter().map(|_| Tally::default()).collect();
    for (p, passage) in tokens
        .chunks_exact(settings.context)
        .take(settings.passages)
        .enumerate()
    {
        let started = Instant::now();
        let (prompt, scored) = passage.split_at(prompt_len);
        let mut shared =
            Session::recording(eval.model.clone(), eval.needs)?.with_reread(eval.reread.clone());
        let first = shared.prefill(prompt, eval.prefill_chunk, Logits::Last)?;
        let mut reference = shared.fork_uncompressed()?;
        let full_top = score(
            &mut reference,
            &first,
            scored,
            settings.chunk,
            None,
            &mut full,
        )?;
        eprintln!(
            "language modelling, passage {}/{}: {FULL} NLL {:.4} ({:.0}s)",
            p + 1,
            settings.passages,
            full.nll / full.count as f64,
            started.elapsed().as_secs_f64()
        );
        for (arm, tally) in eval.arms.iter().zip(&mut arms) {
            let started = Instant::now();
            let mut session =
                shared.fork(Some(arm.policy.clone()), arm.budget.clone(), eval.seed)?;
            score(
                &mut session,
                &first,
                scored,
                settings.chunk,
                Some(&full_top),
                tally,
            )?;
            eprintln!(
                "  {} @ {}: NLL {:.4}, agreement {:.1}% ({:.0}s)",
                arm.label,
                arm.budget_label(),
                tally.nll / tally.count as f64,
                100.0 * tally.agree as f64 / tally.count as f64,
                started.elapsed().as_secs_f64()
            );
        }
    }
    let full_nll = full.nll / full.count.max(1) as f64;
    let layers = eval.model.config.layers;
    Ok(LanguageModellingResult {
        text: settings.text.display().to_string(),
        context: settings.context,
        scored: settings.scored,
        passages: settings.passages,
        chunk: settings.chunk,
        full: full.row(FULL, "—".into(), settings.context as f64, full_nll),
        rows: eval
            .arms
            .iter()
            .zip(&arms)
            .map(|(arm, t)| {
                t.row(
                    &arm.label,
                    arm.budget_label(),
                    budget_tokens(arm.budget, layers, prompt_len),
                    full_nll,
                )
            })
            .collect(),
    })
}

/// Scores `scored` given the prompt's last logits `first`, feeding the tokens `chunk` at a time; adds
/// to `tally` (agreement against `reference`, when given) and returns the predicted tokens.
fn score(
    session: &mut Session<Llama>,
    first: &Tensor,
    scored: &[u32],
    chunk: usize,
    reference: Option<&[u32]>,
    tally: &mut Tally,
) -> Result<Vec<u32>> {
    let (nll, mut top) = score_targets(first, &scored[..1])?;
    let mut nlls = nll;
    // Token i's logits predict token i + 1, so every scored token but the last is fed.
    let fed = &scored[..scored.len() - 1];
    let mut done = 0;
    for piece in fed.chunks(chunk) {
        let logits = session.extend(piece, Logits::All)?;
        let targets = &scored[done + 1..done + 1 + piece.len()];
        let (nll, predicted) = score_targets(&logits, targets)?;
        nlls.extend(nll);
        top.extend(predicted);
        done += piece.len();
    }
    tally.nll += nlls.iter().sum::<f64>();
    tally.count += nlls.len();
    tally.agree += match reference {
        Some(r) => r.iter().zip(&top).filter(|(a, b)| a == b).count(),
        None => top.len(),
    };
    tally.peak_kv_bytes = tally.peak_kv_bytes.max(session.stats().peak_kv_bytes);
    tally.compressions += session.stats().compressions;
    Ok(top)
}
