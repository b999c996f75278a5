//! Attention of the observation window's queries over the cached keys, and the 1-d pooling SnapKV and
//! R-KV apply to it.

use candle_core::{DType, Tensor};
use serde::{Deserialize, Serialize};
use spectra_core::{Error, GqaAggregation, KvLayerView, KvSideInfo, Result};

/// How votes are smoothed over neighbouring entries.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Pooling {
    /// Mean over the kernel, zero padding counted (PyTorch `avg_pool1d`'s default).
    Avg,
    /// Maximum over the kernel; NaN wins, as in PyTorch.
    Max,
}

/// The post-RoPE window queries, checked against the layer: `[kv_heads · group, w, head_dim]`, `w ≥ 1`.
pub fn window_queries<'a>(
    side: &KvSideInfo<'a>,
    layer: &KvLayerView<'_>,
    policy: &str,
) -> Result<&'a Tensor> {
    let q = side.window_queries.ok_or_else(|| {
        Error::invalid(
            policy,
            "needs the post-RoPE queries of the last positions (SideInfoNeeds::window_queries), none were given",
        )
    })?;
    let heads = layer.heads.len() * layer.group_size;
    let head_dim = layer
        .heads
        .iter()
        .find(|h| !h.is_empty())
        .map(|h| h.keys.dim(1))
        .transpose()?;
    let ok = q.rank() == 3
        && q.dim(0)? == heads
        && q.dim(1)? >= 1
        && head_dim.is_none_or(|d| q.dims().get(2) == Some(&d));
    if !ok {
        return Err(Error::invalid(
            policy,
            format!(
                "window queries have shape {:?}; expected [query heads = {heads}, window ≥ 1, head_dim{}]",
                q.dims(),
                head_dim.map(|d| format!(" = {d}")).unwrap_or_default()
            ),
        ));
    }
    Ok(q)
}

/// `Q_win Kᵀ / √d` for the query heads of one KV head: row `h · window + i` is query `i` of group member
/// `h` against all `n` keys.
pub struct GroupLogits {
    pub group: usize,
    pub window: usize,
    pub n: usize,
    pub data: Vec<f32>,
}

impl GroupLogits {
    pub fn new(queries: &Tensor, kv_head: usize, group: usize, keys: &Tensor) -> Result<Self> {
        let window = queries.dim(1)?;
        let n = keys.dim(0)?;
        let logits = group_logits(queries, kv_head, group, keys)?;
        let data = logits.flatten_all()?.to_vec1::<f32>()?;
        Ok(GroupLogits {
            group,
            window,
            n,
            data,
        })
    }

    pub fn row(&self, member: usize, query: usize) -> &[f32] {
        let at = (member * self.window + query) * self.n;
        &self.data[at..at + self.n]
    }
}

/// `Q_win Kᵀ / √d` for the query heads of one KV head, `[group · window, n]` f32 on the keys' device:
/// row `h · window + i` is query `i` of group member `h`.
pub fn group_logits(
    queries: &Tensor,
    kv_head: usize,
    group: usize,
    keys: &Tensor,
) -> Result<Tensor> {
    let (_, window, head_dim) = queries.dims3()?;
    let q = queries
        .narrow(0, kv_head * group, group)?
        .to_dtype(DType::F32)?
        .reshape((group * window, head_dim))?;
    let k = keys.to_dtype(DType::F32)?;
    Ok((q.matmul(&k.t()?)? / (head_dim as f64).sqrt())?)
}

/// Combines per-member score rows into one (mean or max over the group).
pub fn reduce_group(rows: &[Vec<f32>], how: GqaAggregation) -> Vec<f32> {
    let n = rows.first().map_or(0, Vec::len);
    (0..n)
        .map(|j| match how {
            GqaAggregation::Max => rows.iter().map(|r| r[j]).fold(f32::NEG_INFINITY, f32::max),
            GqaAggregation::Mean | GqaAggregation::NotApplicable => {
                rows.iter().map(|r| r[j]).sum::<f32>() / rows.len() as f32
            }
        })
        .collect()
}

/// Softmax in place, shifted by the maximum for stability. Entries set to `-inf` get zero weight; a row
/// containing NaN becomes all NaN.
pub fn softmax_in_place(row: &mut [f32]) {
    let max = row.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    if max == f32::NEG_INFINITY {
        row.fill(0.0);
        return;
    }
    let mut sum = 0.0f32;
    for x in row.iter_mut() {
        *x = (*x - max).exp();
        sum += *x;
    }
    row.iter_mut().for_each(|x| *x /= sum);
}

/// Stride-1 pooling with `kernel / 2` padding on each side, so the output has the input's length.
/// `kernel` is odd (configs are checked).
pub fn pool1d(v: &[f32], kernel: usize, pooling: Pooling) -> Vec<f32> {
    let half = kernel / 2;
    (0..v.len())
        .map(|j| {
            let window = &v[j.saturating_sub(half)..(j + half + 1).min(v.len())];
            match pooling {
                Pooling::Avg => window.iter().sum::<f32>() / kernel as f32,
                Pooling::Max => window.iter().copied().fold(f32::NEG_INFINITY, |m, x| {
                    if x.is_nan() || m.is_nan() {
                        f32::NAN
                    } else {
                        m.max(x)
                    }
                }),
            }
        })
        .collect()
}

/// The config check for a pooling kernel.
pub fn validate_kernel(kernel: usize) -> Result<(), String> {
    if kernel == 0 || kernel.is_multiple_of(2) {
        return Err(format!(
            "kernel {kernel} must be odd (1, 3, 5, ...) so that pooling keeps the length"
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pooling_keeps_length_and_pads_like_pytorch() {
        let v = [1.0, 4.0, 2.0, 8.0];
        // avg_pool1d(k=3, pad=1, count_include_pad): (0+1+4)/3, (1+4+2)/3, (4+2+8)/3, (2+8+0)/3.
        assert_eq!(
            pool1d(&v, 3, Pooling::Avg),
            vec![5.0 / 3.0, 7.0 / 3.0, 14.0 / 3.0, 10.0 / 3.0]
        );
        assert_eq!(pool1d(&v, 3, Pooling::Max), vec![4.0, 4.0, 8.0, 8.0]);
        assert_eq!(pool1d(&v, 1, Pooling::Avg), v.to_vec());
        assert!(pool1d(&[1.0, f32::NAN, 0.0], 3, Pooling::Max)
            .iter()
            .all(|x| x.is_nan()));
        assert!(
            validate_kernel(4).is_err()
                && validate_kernel(0).is_err()
                && validate_kernel(7).is_ok()
        );
    }

    #[test]
    fn softmax_is_normalised_and_masks() {
        let mut row = [0.0, (2.0f32).ln(), f32::NEG_INFINITY, (5.0f32).ln()];
        softmax_in_place(&mut row);
        // Weights 1 : 2 : 0 : 5 out of 8; exp/ln round trip in f32 is good to ~1e-7 relative.
        for (got, want) in row.iter().zip([0.125, 0.25, 0.0, 0.625]) {
            assert!((got - want).abs() < 1e-6);
        }
    }
}
