//! Grouped-query attention of a batch's new rows over each sequence's own cache. Sequences that feed
//! one token share one fused pass on the CPU ([`decode_attention`]), whatever their cache lengths; a
//! chunk of several tokens attends over its cache with the causal triangle on its newest entries.

use std::ops::Range;

use candle_core::{DType, Device, Tensor};
use spectra_core::ops::cpu_slice;
use spectra_core::Result;
use spectra_inference::SequenceRows;
use spectra_kv::KvCache;

use super::config::LlamaConfig;
use super::decoder::rows_of;
use spectra_kernels::decode_attention::{self, HeadEntries};

/// A batch's rows laid end to end: sequence `i` owns rows `ranges[i]`.
#[derive(Default)]
pub(super) struct BatchRows {
    pub tokens: Vec<u32>,
    pub positions: Vec<u64>,
    pub ranges: Vec<Range<usize>>,
    /// Per sequence of more than one row, its [`causal_mask`], built once for every layer.
    pub causal: Vec<Option<Tensor>>,
}

/// Attention of `q` (`[heads, rows, head_dim]`, every row of the batch, after RoPE) over each row's
/// sequence's cache, whose newest entries are that sequence's rows. Returns `[rows, heads·head_dim]`.
pub(super) fn attend(
    c: &LlamaConfig,
    layer: usize,
    q: &Tensor,
    batch: &mut [SequenceRows<'_>],
    rows: &BatchRows,
) -> Result<Tensor> {
    let scale = 1.0 / (c.head_dim as f64).sqrt();
    let fused = |s: &SequenceRows<'_>| {
        s.tokens.len() == 1
            && q.device().is_cpu()
            && q.dtype() == DType::F32
            && s.cache.dtype() == batch_dtype(batch)
            && matches!(s.cache.dtype(), DType::F32 | DType::F16)
    };
    let one_token: Vec<bool> = batch.iter().map(fused).collect();
    let mut parts: Vec<Option<Tensor>> = vec![None; batch.len()];
    if one_token.iter().any(|&f| f) {
        let chosen: Vec<usize> = (0..batch.len()).filter(|&i| one_token[i]).collect();
        // `[chosen, heads·d]`: the chosen rows' queries, each sequence's heads in order.
        let by_row = q.transpose(0, 1)?.contiguous()?;
        let queries = if chosen.len() == rows.tokens.len() {
            by_row
        } else {
            let index: Vec<u32> = chosen
                .iter()
                .map(|&i| rows.ranges[i].start as u32)
                .collect();
            by_row.index_select(&Tensor::new(index.as_slice(), q.device())?, 0)?
        };
        let mut caches: Vec<&mut KvCache> = batch
            .iter_mut()
            .zip(&one_token)
            .filter(|(_, &chosen)| chosen)
            .map(|(s, _)| &mut *s.cache)
            .collect();
        let out = attend_one_token(c, layer, &queries, &mut caches, scale as f32)?;
        for (n, &i) in chosen.iter().enumerate() {
            parts[i] = Some(out.narrow(0, n, 1)?);
        }
    }
    for (i, s) in batch.iter_mut().enumerate() {
        if parts[i].is_none() {
            let q = rows_of(q, &rows.ranges[i])?;
            let causal = rows.causal[i].as_ref();
            parts[i] = Some(attend_chunk(c, layer, &q, s.cache, causal, scale)?);
        }
    }
    let parts: Vec<Tensor> = parts.into_iter().flatten().collect();
    if parts.len() == 1 {
        return Ok(parts.into_iter().next().expect("one part"));
    }
    Ok(Tensor::cat(&parts, 0)?)
}

/// The dtype of the first sequence's cache: the fused pass reads caches of one dtype.
fn batch_dtype(batch: &[SequenceRows<'_>]) -> DType {
    batch.first().map_or(DType::F32, |s| s.cache.dtype())
}

/// Attention of `q` (`[heads, t, head_dim]`, the newest `t` tokens of one sequence) over each KV
/// head's cache, whose last `t` entries are those tokens. Returns `[t, heads·head_dim]`.
/// `causal` is [`causal_mask`] of `t`, given when `t > 1`.
fn attend_chunk(
    c: &LlamaConfig,
    layer: usize,
    q: &Tensor,
    cache: &mut KvCache,
    causal: Option<&Tensor>,
    scale: f64,
) -> Result<Tensor> {
    let (g, t, d) = (c.group_size(), q.dim(1)?, c.head_dim);
    let mut outputs = Vec::with_capacity(c.kv_heads);
    for kv in 0..c.kv_heads {
        // An f16 cache is widened for the chunk's products.
        let keys = cache.keys(layer, kv)?.to_dtype(q.dtype())?;
        let values = cache.values(layer, kv)?.to_dtype(q.dtype())?;
        let n = keys.dim(0)?;
        let qg = q.narrow(0, kv * g, g)?.reshape((g * t, d))?;
        let mut scores = (qg.matmul(&keys.t()?)? * scale)?;
        // Only the newest t entries can lie in a query's future: mask those with the triangle.
        if let Some(mask) = causal {
            let old = scores.narrow(1, 0, n - t)?;
            let new = scores
                .narrow(1, n - t, t)?
                .reshape((g, t, t))?
                .broadcast_add(mask)?
                .reshape((g * t, t))?;
            scores = Tensor::cat(&[old, new], 1)?;
        }
        let probs = candle_nn::ops::softmax_last_dim(&scores)?;
        if cache.tracks_attention() {
            // Summed over the group's queries on the device; nothing comes to the host.
            cache.add_attention(layer, kv, &probs.sum(0)?)?;
        }
        outputs.push(probs.matmul(&values)?.reshape((g, t, d))?);
    }
    Ok(Tensor::cat(&outputs, 0)?
        .transpose(0, 1)?
        .reshape((t, c.heads * d))?)
}

/// One new token of each of several sequences on the CPU, fused in one pass ([`decode_attention`])
/// over f32 or f16 caches: `q` is `[sequences, heads·head_dim]`. Sequence `s`'s KV head `kv` is head
/// `s·kv_heads + kv` of the pass, so its query heads are rows `s·heads + kv·group + g`, which is how
/// `q` lies. Returns `[sequences, heads·head_dim]`.
fn attend_one_token(
    c: &LlamaConfig,
    layer: usize,
    q: &Tensor,
    caches: &mut [&mut KvCache],
    scale: f32,
) -> Result<Tensor> {
    let dtype = caches[0].dtype();
    let stores = caches
        .iter()
        .flat_map(|cache| (0..c.kv_heads).map(move |kv| (cache, kv)))
        .map(|(cache, kv)| {
            Ok((
                cache.keys(layer, kv)?.storage_and_layout(),
                cache.values(layer, kv)?.storage_and_layout(),
            ))
        })
        .collect::<Result<Vec<_>>>()?;
    let tracks = caches.iter().any(|cache| cache.tracks_attention());
    let mut received = tracks.then(|| vec![Vec::new(); stores.len()]);
    let out = spectra_kernels::cpu_op::with_f32(q, "decode attention", |q| -> Result<Vec<f32>> {
        let received = received.as_deref_mut();
        macro_rules! attend_as {
            ($element:ty) => {{
                let heads = stores
                    .iter()
                    .map(|((ks, kl), (vs, vl))| {
                        Ok(HeadEntries {
                            keys: cpu_slice::<$element>(ks, kl, "decode attention")?,
                            values: cpu_slice::<$element>(vs, vl, "decode attention")?,
                        })
                    })
                    .collect::<Result<Vec<_>>>()?;
                decode_attention::attend_one_token(
                    q,
                    &heads,
                    c.group_size(),
                    c.head_dim,
                    scale,
                    received,
                )
            }};
        }
        Ok(match dtype {
            DType::F16 => attend_as!(half::f16),
            _ => attend_as!(f32),
        })
    })??;
    drop(stores);
    if let Some(received) = received {
        let device = q.device();
        for (head, r) in received.into_iter().enumerate() {
            let cache = &mut caches[head / c.kv_heads];
            if cache.tracks_attention() {
                let n = r.len();
                cache.add_attention(layer, head % c.kv_heads, &Tensor::from_vec(r, n, device)?)?;
            }
        }
    }
    Ok(Tensor::from_vec(
        out,
        (caches.len(), c.heads * c.head_dim),
        q.device(),
    )?)
}

/// `[t, t]`: 0 on and below the diagonal, −∞ above.
pub(super) fn causal_mask(t: usize, device: &Device) -> Result<Tensor> {
    let mask: Vec<f32> = (0..t)
        .flat_map(|i| (0..t).map(move |j| if j > i { f32::NEG_INFINITY } else { 0.0 }))
        .collect();
    Ok(Tensor::from_vec(mask, (t, t), device)?)
}
