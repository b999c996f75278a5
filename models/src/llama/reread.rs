//! KVzip's context reconstruction (Kim et al., 2025): after reading its context, the model is asked to
//! repeat it, and reads it once more, chunk by chunk, behind the request. Each cached entry is scored
//! by the most attention it receives from one query of that re-read (over the heads sharing its KV
//! head). As in the paper's code, a chunk's queries are softmaxed over the first entries (the
//! sinks), the chunk's own cached entries and the re-read's tokens only, and the re-read leaves the
//! cache as it found it.
//!
//! The re-read runs on a copy of the cache, which a session's peak KV bytes do not count, at
//! positions up to a chunk and its request past the context (as kvpress's), which may lie past the
//! model's trained context when the context nearly fills it.

use candle_core::{DType, Tensor};
use rayon::prelude::*;
use spectra_core::{Error, Result};
use spectra_kernels::sgemm::{matmul_on, Operand, Threads};
use spectra_kv::KvCache;

use spectra_inference::{CausalDecoder, Logits, RereadPrompt, Taps};

use super::attention::causal_mask;
use super::Llama;
use spectra_kernels::cpu_op::{exp_nonpositive, maximum, sum, vectorized, with_f32};

/// Context tokens per re-read chunk, as KVzip's.
pub const CHUNK: usize = 2048;
/// Entries every chunk's softmax includes: the context's first.
pub const SINKS: usize = 4;
/// Tokens of the previous chunk that a later chunk's request repeats, to say where to resume.
const RESUME_FROM: usize = 8;

/// `[layer][kv_head][entry]`: the scores of the `context.len()` entries of `cache`, which holds exactly
/// `context` read at positions `0..position`. The re-read runs on a copy of the cache, at the
/// positions after `position`, in forward passes of at most `pass` tokens.
pub(super) fn reconstruction_scores(
    model: &Llama,
    cache: &KvCache,
    context: &[u32],
    position: u64,
    prompt: &RereadPrompt,
    pass: usize,
) -> Result<Vec<Vec<Vec<f32>>>> {
    let c = &model.config;
    let n = context.len();
    for l in 0..c.layers {
        if cache.lens(l)?.iter().any(|&len| len != n) {
            return Err(Error::invalid(
                "context reconstruction",
                format!(
                    "layer {l} holds other than the {n} context entries the re-read would score; \
                     it must run right after the whole context is read, before any eviction"
                ),
            ));
        }
    }
    let mut scores = vec![vec![vec![0f32; n]; c.kv_heads]; c.layers];
    let scale = 1.0 / (c.head_dim as f64).sqrt();
    for (i, chunk) in context.chunks(CHUNK).enumerate() {
        let start = i * CHUNK;
        let mut input = if i == 0 {
            prompt.first.clone()
        } else {
            let mut request = prompt.next.clone();
            request.extend(&context[start.saturating_sub(RESUME_FROM)..start]);
            request
        };
        input.extend(&prompt.suffix);
        input.extend(chunk);
        let t = input.len();
        let mut scratch = cache.deep_copy()?;
        let mut taps = Taps {
            window: t,
            ..Taps::default()
        };
        let mut at = position;
        for piece in input.chunks(pass.max(1)) {
            model.forward_one(piece, at, &mut scratch, &mut taps, Logits::None)?;
            at += piece.len() as u64;
        }
        let sinks = SINKS.min(start);
        for (l, layer_scores) in scores.iter_mut().enumerate() {
            let queries = taps.window_queries[l]
                .as_ref()
                .ok_or_else(|| Error::invalid("context reconstruction", "no queries recorded"))?;
            for (kv, head_scores) in layer_scores.iter_mut().enumerate() {
                // An f16 or bf16 cache is widened to the queries' dtype, as the attention does.
                let keys = scratch.keys(l, kv)?.to_dtype(queries.dtype())?;
                let keys = Tensor::cat(
                    &[
                        keys.narrow(0, 0, sinks)?,
                        keys.narrow(0, start, chunk.len())?,
                        keys.narrow(0, n, t)?,
                    ],
                    0,
                )?;
                let group = queries.narrow(0, kv * c.group_size(), c.group_size())?;
                let received = chunk_scores(&group, &keys, sinks, chunk.len(), scale)?;
                head_scores[start..start + chunk.len()].copy_from_slice(&received);
            }
        }
    }
    Ok(scores)
}

/// For one KV head: `queries` `[g, t, d]` (the re-read's, for the `g` heads of the group) against
/// `keys` `[sinks + chunk + t, d]` (the sinks, the chunk's cached entries, the re-read's own, which
/// are masked causally). The most attention each of the `chunk` entries receives from one query.
pub fn chunk_scores(
    queries: &Tensor,
    keys: &Tensor,
    sinks: usize,
    chunk: usize,
    scale: f64,
) -> Result<Vec<f32>> {
    let on_cpu = queries.device().is_cpu() && keys.device().is_cpu();
    if !(on_cpu && queries.dtype() == DType::F32 && keys.dtype() == DType::F32) {
        return chunk_scores_by_tensors(queries, keys, sinks, chunk, scale);
    }
    let (g, t, d) = queries.dims3()?;
    let q = queries.contiguous()?;
    let k = keys.contiguous()?;
    let scores = with_f32(&q, "context reconstruction", |q| {
        with_f32(&k, "context reconstruction", |k| {
            chunk_scores_cpu(q, k, (g * t, t, d), (sinks, chunk), scale as f32)
        })
    })???;
    Ok(scores)
}

/// Query rows whose logits are formed at once: a block of `ROWS × keys` stays in cache.
const ROWS: usize = 64;

/// [`chunk_scores`] on the CPU without the `rows × keys` attention matrix: each block of query rows'
/// logits from spectra's product, then each row's softmax and the running maximum, block by block
/// on every thread.
fn chunk_scores_cpu(
    q: &[f32],
    keys: &[f32],
    (rows, t, d): (usize, usize, usize),
    (sinks, chunk): (usize, usize),
    scale: f32,
) -> candle_core::Result<Vec<f32>> {
    let width = sinks + chunk + t;
    if q.len() != rows * d || keys.len() != width * d {
        candle_core::bail!("context reconstruction: operands of the wrong size");
    }
    let block_best = |first: usize| -> Vec<f32> {
        let m = ROWS.min(rows - first);
        // SAFETY: `q` holds rows·d values, so rows first..first + m exist; `keys` is width × d,
        // read as its d × width transpose.
        let mut logits = unsafe {
            matmul_on(
                (m, width, d),
                Operand::of(&q[first * d..], d, false),
                Operand::of(keys, d, true),
                Threads::One,
            )
        };
        vectorized(|| {
            let mut best = vec![0f32; chunk];
            for (r, row) in logits.chunks_exact_mut(width).enumerate() {
                // The re-read's own keys up to this query's position.
                let visible = sinks + chunk + (first + r) % t + 1;
                let row = &mut row[..visible];
                for x in row.iter_mut() {
                    *x *= scale;
                }
                let max = maximum(row);
                for x in row.iter_mut() {
                    *x -= max;
                }
                exp_nonpositive(row);
                let inverse = 1.0 / sum(row);
                for (b, &p) in best.iter_mut().zip(&row[sinks..sinks + chunk]) {
                    let p = p * inverse;
                    *b = if p > *b { p } else { *b };
                }
            }
            best
        })
    };
    let starts: Vec<usize> = (0..rows).step_by(ROWS).collect();
    Ok(starts.into_par_iter().map(block_best).reduce(
        || vec![0f32; chunk],
        |mut a, b| {
            for (x, y) in a.iter_mut().zip(b) {
                *x = x.max(y);
            }
            a
        },
    ))
}

/// [`chunk_scores`] by candle's ops (any device): the whole attention matrix at once.
fn chunk_scores_by_tensors(
    queries: &Tensor,
    keys: &Tensor,
    sinks: usize,
    chunk: usize,
    scale: f64,
) -> Result<Vec<f32>> {
    let (g, t, d) = queries.dims3()?;
    let logits = (queries.reshape((g * t, d))?.matmul(&keys.t()?)? * scale)?;
    let cached = logits.narrow(1, 0, sinks + chunk)?;
    let own = logits
        .narrow(1, sinks + chunk, t)?
        .reshape((g, t, t))?
        .broadcast_add(&causal_mask(t, queries.device())?)?
        .reshape((g * t, t))?;
    let probs = candle_nn::ops::softmax_last_dim(&Tensor::cat(&[cached, own], 1)?)?;
    Ok(probs.narrow(1, sinks, chunk)?.max(0)?.to_vec1::<f32>()?)
}

#[cfg(test)]
mod tests {
    use candle_core::Device;

    use super::*;

    /// The scores recomputed in f64 from the definition: softmax over the sinks, the chunk and the
    /// causal prefix of the re-read, then the maximum over queries and heads of the group.
    #[test]
    fn chunk_scores_match_the_definition_in_f64() {
        // More query rows than one block of ROWS, so that the blocks' maxima are combined.
        let (g, t, d, sinks, chunk) = (3, 30, 4, 2, 5);
        let value = |i: usize| ((i * 37 % 23) as f32 - 11.0) / 7.0;
        let q: Vec<f32> = (0..g * t * d).map(value).collect();
        let k: Vec<f32> = (0..(sinks + chunk + t) * d).map(|i| value(i + 5)).collect();
        let queries = Tensor::from_vec(q.clone(), (g, t, d), &Device::Cpu).unwrap();
        let keys = Tensor::from_vec(k.clone(), (sinks + chunk + t, d), &Device::Cpu).unwrap();
        let scale = 0.5;
        let fused = chunk_scores(&queries, &keys, sinks, chunk, scale).unwrap();
        let by_tensors = chunk_scores_by_tensors(&queries, &keys, sinks, chunk, scale).unwrap();
        let mut want = vec![0f64; chunk];
        for h in 0..g {
            for i in 0..t {
                let row = |j: usize| -> f64 {
                    (0..d)
                        .map(|x| q[(h * t + i) * d + x] as f64 * k[j * d + x] as f64)
                        .sum::<f64>()
                        * scale
                };
                // The re-read's own keys up to and including its position.
                let visible: Vec<usize> = (0..sinks + chunk + i + 1).collect();
                let max = visible.iter().map(|&j| row(j)).fold(f64::MIN, f64::max);
                let total: f64 = visible.iter().map(|&j| (row(j) - max).exp()).sum();
                for (e, w) in want.iter_mut().enumerate() {
                    *w = w.max((row(sinks + e) - max).exp() / total);
                }
            }
        }
        for got in [fused, by_tensors] {
            for (a, b) in got.iter().zip(&want) {
                // f32 products and softmax (the fused path's exp within 2⁻²² relative) against
                // f64: a few ulps of numbers below 1.
                assert!((*a as f64 - b).abs() < 1e-6, "{got:?} vs {want:?}");
            }
        }
    }
}
