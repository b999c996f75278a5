//! Grouped-query attention of a batch's new rows over each sequence's own cache. Sequences that feed
//! one token share one fused pass on the CPU ([`decode_attention`]), whatever their cache lengths; a
//! chunk of several tokens attends over its cache with the causal triangle on its newest entries.

use std::ops::Range;

use candle_core::{DType, Device, Layout, StorageRef, Tensor, WithDType};
use spectra_core::ops::cpu_slice;
use spectra_core::Result;
use spectra_inference::SequenceRows;
use spectra_kv::KvCache;

use super::config::LlamaConfig;
use spectra_kernels::chunk_attention;
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
/// head's cache, whose last `t` entries are those tokens. Returns `[t, heads·head_dim]`. On the CPU
/// over an f32 or f16 cache it is one fused pass ([`chunk_attention`]); elsewhere candle's ops with
/// `causal`, [`causal_mask`] of `t`, given when `t > 1`.
fn attend_chunk(
    c: &LlamaConfig,
    layer: usize,
    q: &Tensor,
    cache: &mut KvCache,
    causal: Option<&Tensor>,
    scale: f64,
) -> Result<Tensor> {
    if q.device().is_cpu()
        && q.dtype() == DType::F32
        && matches!(cache.dtype(), DType::F32 | DType::F16)
    {
        return attend_chunk_fused(c, layer, q, cache, scale as f32);
    }
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

/// [`attend_chunk`] on the CPU, over an f32 or f16 cache.
fn attend_chunk_fused(
    c: &LlamaConfig,
    layer: usize,
    q: &Tensor,
    cache: &mut KvCache,
    scale: f32,
) -> Result<Tensor> {
    let t = q.dim(1)?;
    let stores = head_stores(&[&*cache], layer, c.kv_heads)?;
    let mut received = cache
        .tracks_attention()
        .then(|| vec![Vec::new(); c.kv_heads]);
    let dtype = cache.dtype();
    let out = spectra_kernels::cpu_op::with_f32(q, "chunk attention", |q| -> Result<Vec<f32>> {
        let received = received.as_deref_mut();
        let (g, d) = (c.group_size(), c.head_dim);
        Ok(match dtype {
            DType::F16 => chunk_attention::attend_chunk(
                q,
                &heads_of::<half::f16>(&stores)?,
                g,
                d,
                scale,
                received,
            ),
            _ => {
                chunk_attention::attend_chunk(q, &heads_of::<f32>(&stores)?, g, d, scale, received)
            }
        })
    })??;
    drop(stores);
    add_received(&mut [cache], layer, c.kv_heads, received)?;
    Ok(Tensor::from_vec(
        out,
        (t, c.heads * c.head_dim),
        q.device(),
    )?)
}

/// The stored keys and values of every KV head of `caches` at `layer`, cache by cache.
fn head_stores<'a>(
    caches: &[&'a KvCache],
    layer: usize,
    kv_heads: usize,
) -> Result<Vec<(Stored<'a>, Stored<'a>)>> {
    caches
        .iter()
        .flat_map(|cache| (0..kv_heads).map(move |kv| (cache, kv)))
        .map(|(cache, kv)| {
            Ok((
                cache.keys(layer, kv)?.storage_and_layout(),
                cache.values(layer, kv)?.storage_and_layout(),
            ))
        })
        .collect()
}

/// A tensor's storage, read-locked, and its layout.
type Stored<'a> = (StorageRef<'a>, &'a Layout);

/// [`head_stores`] as slices of their element type.
fn heads_of<'a, T: WithDType>(
    stores: &'a [(Stored<'_>, Stored<'_>)],
) -> Result<Vec<HeadEntries<'a, T>>> {
    stores
        .iter()
        .map(|((ks, kl), (vs, vl))| {
            Ok(HeadEntries {
                keys: cpu_slice::<T>(ks, kl, "attention")?,
                values: cpu_slice::<T>(vs, vl, "attention")?,
            })
        })
        .collect()
}

/// The attention each head of `caches` received (cache by cache, `kv_heads` each), given to the
/// caches that track it.
fn add_received(
    caches: &mut [&mut KvCache],
    layer: usize,
    kv_heads: usize,
    received: Option<Vec<Vec<f32>>>,
) -> Result<()> {
    let Some(received) = received else {
        return Ok(());
    };
    for (head, r) in received.into_iter().enumerate() {
        let cache = &mut caches[head / kv_heads];
        if cache.tracks_attention() {
            let n = r.len();
            let device = cache.keys(layer, head % kv_heads)?.device().clone();
            cache.add_attention(layer, head % kv_heads, &Tensor::from_vec(r, n, &device)?)?;
        }
    }
    Ok(())
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
    let shared: Vec<&KvCache> = caches.iter().map(|c| &**c).collect();
    let stores = head_stores(&shared, layer, c.kv_heads)?;
    let tracks = caches.iter().any(|cache| cache.tracks_attention());
    let mut received = tracks.then(|| vec![Vec::new(); stores.len()]);
    let out = spectra_kernels::cpu_op::with_f32(q, "decode attention", |q| -> Result<Vec<f32>> {
        let received = received.as_deref_mut();
        let (g, d) = (c.group_size(), c.head_dim);
        Ok(match dtype {
            DType::F16 => decode_attention::attend_one_token(
                q,
                &heads_of::<half::f16>(&stores)?,
                g,
                d,
                scale,
                received,
            ),
            _ => decode_attention::attend_one_token(
                q,
                &heads_of::<f32>(&stores)?,
                g,
                d,
                scale,
                received,
            ),
        })
    })??;
    drop(stores);
    drop(shared);
    add_received(caches, layer, c.kv_heads, received)?;
    Ok(Tensor::from_vec(
        out,
        (caches.len(), c.heads * c.head_dim),
        q.device(),
    )?)
}

/// Rows `range` (along dim 1) of `[heads, rows, head_dim]`, contiguous.
pub(super) fn rows_of(x: &Tensor, range: &std::ops::Range<usize>) -> Result<Tensor> {
    Ok(x.narrow(1, range.start, range.len())?.contiguous()?)
}

/// `[t, t]`: 0 on and below the diagonal, −∞ above.
pub(super) fn causal_mask(t: usize, device: &Device) -> Result<Tensor> {
    let mask: Vec<f32> = (0..t)
        .flat_map(|i| (0..t).map(move |j| if j > i { f32::NEG_INFINITY } else { 0.0 }))
        .collect();
    Ok(Tensor::from_vec(mask, (t, t), device)?)
}
