//! KVzip's context reconstruction (Kim et al., 2025): after reading its context, the model is asked to
//! repeat it, and reads it once more, chunk by chunk, behind the request. Each cached entry is scored
//! by the most attention it receives from one query of that re-read (over the heads sharing its KV
//! head). As in the paper's code, a chunk's queries are softmaxed over the first entries (the
//! sinks), the chunk's own cached entries and the re-read's tokens only, and the re-read leaves the
//! cache as it found it.

use candle_core::Tensor;
use spectra_core::kv_cache::KvCache;
use spectra_core::{Error, Result};

use super::{causal_mask, Llama, Logits, Taps};

/// Context tokens per re-read chunk, as KVzip's.
pub const CHUNK: usize = 2048;
/// Entries every chunk's softmax includes: the context's first.
pub const SINKS: usize = 4;
/// Tokens of the previous chunk that a later chunk's request repeats, to say where to resume.
const RESUME_FROM: usize = 8;

/// The tokens of the request to repeat the context.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RereadPrompt {
    /// Before the first chunk: "Repeat the previous context exactly."
    pub first: Vec<u32>,
    /// Before a later chunk, followed by the previous chunk's last tokens: "Repeat the part of the
    /// previous context exactly, starting with".
    pub next: Vec<u32>,
    /// After the request: the end of the user's turn and the assistant's opening, in the prompt's
    /// own format.
    pub suffix: Vec<u32>,
}

/// `[layer][kv_head][entry]`: the scores of the `context.len()` entries of `cache`, which holds exactly
/// `context` read at positions `0..position`. The re-read runs on a copy of the cache, at the
/// positions after `position`, in forward passes of at most `pass` tokens.
pub fn reconstruction_scores(
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
            let positions: Vec<u64> = (at..at + piece.len() as u64).collect();
            model.forward(piece, &positions, &mut scratch, &mut taps, Logits::Last)?;
            at += piece.len() as u64;
        }
        let sinks = SINKS.min(start);
        for (l, layer_scores) in scores.iter_mut().enumerate() {
            let queries = taps.window_queries[l]
                .as_ref()
                .ok_or_else(|| Error::invalid("context reconstruction", "no queries recorded"))?;
            for (kv, head_scores) in layer_scores.iter_mut().enumerate() {
                let keys = scratch.keys(l, kv)?;
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
        let (g, t, d, sinks, chunk) = (2, 3, 4, 1, 5);
        let value = |i: usize| ((i * 37 % 23) as f32 - 11.0) / 7.0;
        let q: Vec<f32> = (0..g * t * d).map(value).collect();
        let k: Vec<f32> = (0..(sinks + chunk + t) * d).map(|i| value(i + 5)).collect();
        let queries = Tensor::from_vec(q.clone(), (g, t, d), &Device::Cpu).unwrap();
        let keys = Tensor::from_vec(k.clone(), (sinks + chunk + t, d), &Device::Cpu).unwrap();
        let scale = 0.5;
        let got = chunk_scores(&queries, &keys, sinks, chunk, scale).unwrap();
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
        for (a, b) in got.iter().zip(&want) {
            // f32 products and softmax against f64: a few ulps of numbers below 1.
            assert!((*a as f64 - b).abs() < 1e-6, "{got:?} vs {want:?}");
        }
    }
}
