//! `spectra bench`'s measurement, llama-batched-bench's job: `parallel` sequences of `prompt_tokens`
//! each, submitted together to the batching engine, each generating `gen` tokens; the prompts'
//! aggregate prefill rate, the aggregate decoding rate, time to first token, the KV memory held and
//! how many sequences ran at once. Decoding is also set against its physical limit: the bytes each
//! decoding pass must read (the weights once, and every entry of every sequence's cache) at the rate
//! this machine reads memory, measured in the same run.

use std::sync::Arc;
use std::time::{Duration, Instant};

use rayon::prelude::*;
use serde::Serialize;
use spectra_core::{Budget, Error, KvEvictionPolicy, Result};
use spectra_inference::{
    CausalDecoder, Engine, EngineConfig, Event, GenerationParams, Request, RereadPrompt,
    SchedulerConfig, StepPriority,
};
use spectra_models::llama::Llama;

/// One configuration to measure.
#[derive(Clone, Debug)]
pub struct BenchCase {
    pub prompt_tokens: usize,
    pub parallel: usize,
    pub gen: usize,
    pub policy: Option<Arc<dyn KvEvictionPolicy>>,
    pub budget: Budget,
    /// The KV memory all sequences may hold together; unlimited when `None`.
    pub kv_memory: Option<usize>,
    pub step_tokens: usize,
    pub chunk: usize,
    pub priority: StepPriority,
}

/// What one configuration measured.
#[derive(Clone, Debug, Serialize)]
pub struct BenchRow {
    pub parallel: usize,
    pub prompt_tokens: usize,
    pub gen: usize,
    pub policy: String,
    pub budget: Option<usize>,
    pub kv_memory: Option<usize>,
    /// Prompt tokens per second over the passes that read prompts.
    pub prefill_tokens_per_s: f64,
    /// Decoded tokens per second over the passes that only decode.
    pub decode_tokens_per_s: f64,
    /// Everything, prompts and generated tokens, over the whole run.
    pub total_tokens_per_s: f64,
    /// Mean and largest time from submission to a sequence's first token.
    pub ttft_s: f64,
    pub ttft_max_s: f64,
    /// The most KV bytes the caches held together, and the most reserved for one sequence.
    pub peak_kv_bytes: usize,
    pub reserved_kv_bytes_per_sequence: usize,
    /// The most sequences running at once.
    pub admitted: usize,
    pub steps: usize,
    /// Bytes the decoding passes had to read, per pass on average, and the shortest time that takes
    /// at `memory_read_gb_s` as a share of the time they took (1 = at the limit).
    pub decode_bytes_per_pass: f64,
    pub decode_roofline: f64,
    pub memory_read_gb_s: f64,
}

/// Measures one configuration on `model`, its prompts cut from `text` (sequence `i` starts `i`
/// prompts into it, wrapping around).
pub fn run(
    model: &Arc<Llama>,
    text: &[u32],
    case: &BenchCase,
    reread: RereadPrompt,
    memory_read: f64,
) -> Result<BenchRow> {
    if text.len() < case.prompt_tokens || case.prompt_tokens == 0 {
        return Err(Error::invalid(
            "--prompt-tokens",
            format!(
                "{} tokens asked for, the prompt text has {}; give a longer --prompt-file",
                case.prompt_tokens,
                text.len()
            ),
        ));
    }
    let mut engine = Engine::new(
        model.clone(),
        EngineConfig {
            scheduler: SchedulerConfig {
                kv_memory: case.kv_memory.unwrap_or(usize::MAX),
                max_sequences: case.parallel,
                step_tokens: case.step_tokens,
                chunk: case.chunk,
                priority: case.priority,
            },
            reread: Some(reread),
        },
        None,
    )?;
    let mut reserved = 0;
    let started = Instant::now();
    for i in 0..case.parallel {
        let start = (i * case.prompt_tokens) % (text.len() - case.prompt_tokens + 1);
        let request = Request {
            prompt: text[start..start + case.prompt_tokens].to_vec(),
            params: GenerationParams {
                max_tokens: case.gen,
                ignore_stop_tokens: true,
                ..GenerationParams::default()
            },
            policy: case.policy.clone(),
            budget: case.budget.clone(),
            seed: i as u64,
        };
        reserved = engine.reservation(&request);
        engine.submit(request)?;
    }
    let (mut prefill_time, mut decode_time) = (Duration::ZERO, Duration::ZERO);
    let (mut prompt_read, mut decoded, mut decode_passes, mut decode_bytes) = (0, 0, 0, 0f64);
    let (mut ttfts, mut generated, mut admitted, mut steps) = (Vec::new(), 0, 0, 0);
    let weights = model.weight_bytes() as f64;
    while engine.has_work() {
        let before = Instant::now();
        let events = engine.step()?;
        let took = before.elapsed();
        let step = engine.last_step();
        steps += 1;
        admitted = admitted.max(engine.running());
        if step.prompt_tokens > 0 {
            prefill_time += took;
            prompt_read += step.prompt_tokens;
        } else if step.decode_tokens > 0 {
            decode_time += took;
            decoded += step.decode_tokens;
            decode_passes += 1;
            decode_bytes += weights + step.kv_bytes_read as f64;
        }
        for event in events {
            match event {
                Event::Token { .. } => generated += 1,
                Event::Finished { stats, .. } => {
                    ttfts.extend(stats.time_to_first_token.map(|t| t.as_secs_f64()))
                }
                Event::Failed { error, .. } => return Err(Error::invalid("bench", error)),
            }
        }
    }
    let total = started.elapsed().as_secs_f64();
    let rate = |n: usize, t: Duration| n as f64 / t.as_secs_f64().max(1e-9);
    let passes = decode_passes.max(1) as f64;
    Ok(BenchRow {
        parallel: case.parallel,
        prompt_tokens: case.prompt_tokens,
        gen: case.gen,
        policy: case
            .policy
            .as_ref()
            .map_or("Full".into(), |p| p.typetag_name().to_string()),
        budget: match (&case.policy, &case.budget) {
            (Some(_), Budget::Tokens(n)) => Some(*n),
            _ => None,
        },
        kv_memory: case.kv_memory,
        prefill_tokens_per_s: rate(prompt_read, prefill_time),
        decode_tokens_per_s: rate(decoded, decode_time),
        total_tokens_per_s: (prompt_read + generated) as f64 / total.max(1e-9),
        ttft_s: ttfts.iter().sum::<f64>() / ttfts.len().max(1) as f64,
        ttft_max_s: ttfts.iter().copied().fold(0.0, f64::max),
        peak_kv_bytes: engine.peak_kv_bytes(),
        reserved_kv_bytes_per_sequence: reserved,
        admitted,
        steps,
        decode_bytes_per_pass: decode_bytes / passes,
        decode_roofline: decode_bytes / memory_read / decode_time.as_secs_f64().max(1e-9),
        memory_read_gb_s: memory_read / 1e9,
    })
}

/// The rate, bytes per second, at which every core together reads a buffer far larger than the
/// last-level cache (1 GiB): the median of five reads after a first one.
pub fn memory_read_rate() -> f64 {
    let buffer = vec![1u64; 1 << 27];
    let read = || {
        let started = Instant::now();
        let sum: u64 = buffer
            .par_chunks(1 << 16)
            .map(|c| c.iter().sum::<u64>())
            .sum();
        std::hint::black_box(sum);
        started.elapsed().as_secs_f64()
    };
    read();
    let mut times: Vec<f64> = (0..5).map(|_| read()).collect();
    times.sort_by(f64::total_cmp);
    (buffer.len() * 8) as f64 / times[2]
}
