//! Decoding speed: greedy decoding after a long prompt, token by token, with compression by the
//! policy's trigger; tokens per second, eviction's share of the time and the cache's peak size.
//!
//! Unlike the quality tasks, every arm runs its prompt itself, compressing between prefill chunks as
//! `spectra generate` does: the peak is then that of a real run, prefill included, not that of a
//! copy of a shared uncompressed prefill.

use std::path::Path;
use std::time::Instant;

use serde::Serialize;
use spectra_core::{Budget, Error, Result};
use spectra_inference::{continue_session, GenerationParams, Logits, Session};
use spectra_models::llama::Llama;

use super::{budget_tokens, read_tokens, Evaluation, FULL};

#[derive(Debug, Serialize)]
pub struct DecodeRow {
    pub context: usize,
    pub policy: String,
    pub budget: String,
    pub budget_tokens: f64,
    /// The prompt's tokens per second, compression between its chunks included.
    pub prefill_tokens_per_second: f64,
    pub tokens_per_second: f64,
    /// Time spent choosing and compacting entries, as a share of the decoding time.
    pub eviction_share: f64,
    /// The largest KV allocation of the whole run, prefill included, bytes.
    pub peak_kv_bytes: usize,
    pub compressions: usize,
}

#[derive(Debug, Serialize)]
pub struct DecodeTaskResult {
    pub text: String,
    pub tokens: usize,
    /// `Full` first at each context, then every arm.
    pub rows: Vec<DecodeRow>,
}

pub fn run(
    eval: &Evaluation<'_>,
    text: &Path,
    contexts: &[usize],
    tokens: usize,
) -> Result<DecodeTaskResult> {
    let all = read_tokens(&eval.tokenizer, text)?;
    let mut rows = Vec::new();
    for &context in contexts {
        if all.len() < context {
            return Err(Error::file(
                text,
                format!(
                    "holds {} tokens, fewer than the decode context {context}; give a longer text",
                    all.len()
                ),
            ));
        }
        let prompt = &all[..context];
        let full = Session::new(
            eval.model.clone(),
            None,
            Budget::Tokens(usize::MAX),
            eval.seed,
        )?;
        rows.push(decode(
            full,
            (prompt, eval.prefill_chunk),
            tokens,
            FULL,
            "—".into(),
            context as f64,
        )?);
        for arm in &eval.arms {
            let session = Session::new(
                eval.model.clone(),
                Some(arm.policy.clone()),
                arm.budget.clone(),
                eval.seed,
            )?
            .with_reread(eval.reread.clone());
            rows.push(decode(
                session,
                (prompt, eval.prefill_chunk),
                tokens,
                &arm.label,
                arm.budget_label(),
                budget_tokens(arm.budget, eval.model.config.layers, context),
            )?);
        }
    }
    Ok(DecodeTaskResult {
        text: text.display().to_string(),
        tokens,
        rows,
    })
}

/// The prompt prefilled in chunks, then `tokens` decoded greedily.
fn decode(
    session: Session<Llama>,
    (prompt, chunk): (&[u32], usize),
    tokens: usize,
    policy: &str,
    budget: String,
    budget_tokens: f64,
) -> Result<DecodeRow> {
    let mut session = session.with_decoding(tokens);
    let prefill_started = Instant::now();
    let logits = session.prefill(prompt, chunk, Logits::Last)?;
    let prefill_seconds = prefill_started.elapsed().as_secs_f64().max(1e-9);
    let eviction_before = session.stats().eviction_time;
    // One token more than are timed: the session reads every token but the last.
    let params = GenerationParams {
        max_tokens: tokens + 1,
        ignore_stop_tokens: true,
        ..GenerationParams::default()
    };
    let started = Instant::now();
    continue_session(&mut session, &logits, &params, |_| Ok(false))?;
    let elapsed = started.elapsed().as_secs_f64().max(1e-9);
    let row = DecodeRow {
        context: prompt.len(),
        policy: policy.to_string(),
        budget,
        budget_tokens,
        prefill_tokens_per_second: prompt.len() as f64 / prefill_seconds,
        tokens_per_second: tokens as f64 / elapsed,
        eviction_share: (session.stats().eviction_time - eviction_before).as_secs_f64() / elapsed,
        peak_kv_bytes: session.stats().peak_kv_bytes,
        compressions: session.stats().compressions,
    };
    eprintln!(
        "decode at {}: {} @ {}: prefill {:.1} tokens/s, decode {:.2} tokens/s, eviction {:.1}%, peak KV \
         {:.1} MiB",
        row.context,
        row.policy,
        row.budget,
        row.prefill_tokens_per_second,
        row.tokens_per_second,
        100.0 * row.eviction_share,
        crate::units::mib(row.peak_kv_bytes)
    );
    Ok(row)
}
