//! Decoding speed: greedy decoding after a long prompt, token by token, with compression by the
//! policy's trigger; tokens per second, eviction's share of the time and the cache's peak size.

use std::path::Path;
use std::time::Instant;

use serde::Serialize;
use spectra_core::{Error, Result};
use spectra_models::llama::{Logits, Session};

use super::{budget_tokens, check_context, greedy, read_tokens, Bench, FULL};

#[derive(Debug, Serialize)]
pub struct DecodeRow {
    pub context: usize,
    pub policy: String,
    pub budget: String,
    pub budget_tokens: f64,
    pub tokens_per_second: f64,
    /// Time spent choosing and compacting entries, as a share of the decoding time.
    pub eviction_share: f64,
    /// The largest KV allocation while decoding (after the prompt's compression), bytes.
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
    bench: &Bench<'_>,
    text: &Path,
    contexts: &[usize],
    tokens: usize,
) -> Result<DecodeTaskResult> {
    let all = read_tokens(&bench.tokenizer, text)?;
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
        check_context(&bench.model, context + tokens, "Decode.contexts")?;
        let mut shared = Session::recording(&bench.model, bench.needs)?;
        let first = shared.prefill(&all[..context], bench.prefill_chunk, Logits::Last)?;
        let first = greedy(&first)?;
        let full = shared.fork_uncompressed()?;
        rows.push(decode(
            full,
            first,
            tokens,
            context,
            FULL,
            "—".into(),
            context as f64,
        )?);
        for arm in &bench.arms {
            let session = shared.fork(Some(arm.policy), arm.budget.clone(), bench.seed)?;
            rows.push(decode(
                session,
                first,
                tokens,
                context,
                &arm.label,
                arm.budget_label(),
                budget_tokens(arm.budget, bench.model.config.layers, context),
            )?);
        }
    }
    Ok(DecodeTaskResult {
        text: text.display().to_string(),
        tokens,
        rows,
    })
}

fn decode(
    mut session: Session<'_>,
    first: u32,
    tokens: usize,
    context: usize,
    policy: &str,
    budget: String,
    budget_tokens: f64,
) -> Result<DecodeRow> {
    let started = Instant::now();
    let mut next = first;
    for _ in 0..tokens {
        next = greedy(&session.step(next)?)?;
    }
    let elapsed = started.elapsed().as_secs_f64().max(1e-9);
    let row = DecodeRow {
        context,
        policy: policy.to_string(),
        budget,
        budget_tokens,
        tokens_per_second: tokens as f64 / elapsed,
        eviction_share: session.stats.eviction_time.as_secs_f64() / elapsed,
        peak_kv_bytes: session.stats.peak_kv_bytes,
        compressions: session.stats.compressions,
    };
    eprintln!(
        "decode at {context}: {} @ {}: {:.2} tokens/s, eviction {:.1}%, peak KV {:.1} MiB",
        row.policy,
        row.budget,
        row.tokens_per_second,
        100.0 * row.eviction_share,
        row.peak_kv_bytes as f64 / f64::from(1 << 20)
    );
    Ok(row)
}
