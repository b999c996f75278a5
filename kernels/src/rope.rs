//! Rotary position embedding: the cos/sin tables of a set of positions, and the rotation they give
//! to the Lipschitz GPT (differentiably, for training) and to the Llama decoder (candle's fused
//! kernels, for inference).
//!
//! Band f turns the pair `(x[f], x[f + d/2])` ("rotate half") or `(x[2f], x[2f + 1])` (interleaved)
//! by its phase at the position. The GPT's frequencies are `ω_f = 10000^(−2f/d)`, rotate half
//! (docs/lipschitz.md §6.2). The paper's code swaps sin and cos, making each band a reflection
//! `[[c, s], [s, −c]]` instead of a rotation (docs/lipschitz.md §9.6); `qᵀk` still depends only on
//! the relative position and the map is still orthogonal (sensitivity 1), so the Lipschitz bound is
//! the same. Its checkpoints would need the literal form; training from scratch does not.

use std::sync::Arc;

use candle_core::{Device, Result, Tensor, D};

/// Cached cos/sin tables, `[positions, head_dim/2]` each, as tensors on the model's device and as
/// f32 for the fused CPU attention.
#[derive(Clone, Debug)]
pub struct Rope {
    cos: Tensor,
    sin: Tensor,
    tables: (Arc<[f32]>, Arc<[f32]>),
    interleaved: bool,
}

impl Rope {
    /// The GPT's tables: positions `0..seq_len`, the bands' angular frequencies `inv_freq` (one per
    /// pair of a head's elements, as `RopeSpec::inv_freq` lists them), rotate half.
    pub fn new(inv_freq: &[f64], seq_len: usize, device: &Device) -> Result<Self> {
        let positions: Vec<u64> = (0..seq_len as u64).collect();
        Self::at_positions(
            inv_freq.len(),
            &positions,
            |f, p| p as f64 * inv_freq[f],
            1.0,
            false,
            device,
        )
    }

    /// Tables for `positions`: band f at position p turned by `phase(f, p)` radians (formed in f64:
    /// positions beyond 2^24 would lose whole radians in f32), cos and sin multiplied by `scaling`
    /// (YaRN's attention factor; 1 otherwise); `interleaved` pairs neighbouring elements.
    pub fn at_positions(
        bands: usize,
        positions: &[u64],
        phase: impl Fn(usize, u64) -> f64,
        scaling: f64,
        interleaved: bool,
        device: &Device,
    ) -> Result<Self> {
        let mut cos = Vec::with_capacity(positions.len() * bands);
        let mut sin = Vec::with_capacity(positions.len() * bands);
        for &p in positions {
            for f in 0..bands {
                let angle = phase(f, p);
                cos.push((scaling * angle.cos()) as f32);
                sin.push((scaling * angle.sin()) as f32);
            }
        }
        let tables = (Arc::from(cos.as_slice()), Arc::from(sin.as_slice()));
        Ok(Rope {
            cos: Tensor::from_vec(cos, (positions.len(), bands), device)?,
            sin: Tensor::from_vec(sin, (positions.len(), bands), device)?,
            tables,
            interleaved,
        })
    }

    /// The cos and sin tables `[positions, head_dim/2]` as f32, shared.
    pub fn tables(&self) -> (Arc<[f32]>, Arc<[f32]>) {
        self.tables.clone()
    }

    /// Rotates `x` of shape `[batch, heads, seq, head_dim]` at the first `seq` positions, as candle
    /// ops that carry gradients (rotate-half tables only).
    pub fn apply(&self, x: &Tensor) -> Result<Tensor> {
        if self.interleaved {
            candle_core::bail!(
                "Rope::apply rotates halves; interleaved tables rotate with apply_fused"
            );
        }
        let (_, _, seq, head_dim) = x.dims4()?;
        let half = head_dim / 2;
        let cos = self.cos.narrow(0, 0, seq)?.to_dtype(x.dtype())?;
        let sin = self.sin.narrow(0, 0, seq)?.to_dtype(x.dtype())?;
        let a = x.narrow(D::Minus1, 0, half)?;
        let b = x.narrow(D::Minus1, half, half)?;
        let first = (a.broadcast_mul(&cos)? - b.broadcast_mul(&sin)?)?;
        let second = (a.broadcast_mul(&sin)? + b.broadcast_mul(&cos)?)?;
        Tensor::cat(&[first, second], D::Minus1)
    }

    /// Rotates `x` of shape `[heads, tokens, head_dim]`, token `i` at the `i`-th position, with
    /// candle's fused kernels (no gradient): the decoder's path.
    pub fn apply_fused(&self, x: &Tensor) -> Result<Tensor> {
        let cos = self.cos.to_dtype(x.dtype())?;
        let sin = self.sin.to_dtype(x.dtype())?;
        let x4 = x.unsqueeze(0)?.contiguous()?;
        let rotated = if self.interleaved {
            candle_nn::rotary_emb::rope_i(&x4, &cos, &sin)?
        } else {
            candle_nn::rotary_emb::rope(&x4, &cos, &sin)?
        };
        rotated.squeeze(0)
    }
}

/// The GPT's frequencies `10000^(−2f/d)`, written out for the tests.
#[cfg(test)]
pub(crate) fn gpt_frequencies(head_dim: usize) -> Vec<f64> {
    (0..head_dim / 2)
        .map(|f| 10000f64.powf(-2.0 * f as f64 / head_dim as f64))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rotate(rope: &Rope, x: Vec<f32>, seq: usize, d: usize) -> Vec<f32> {
        let t = Tensor::from_vec(x, (1, 1, seq, d), &Device::Cpu).unwrap();
        rope.apply(&t)
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1()
            .unwrap()
    }

    #[test]
    fn rotation_preserves_norms_and_matches_a_hand_computed_band() {
        let (seq, d) = (5, 8);
        let rope = Rope::new(&gpt_frequencies(d), seq, &Device::Cpu).unwrap();
        let x: Vec<f32> = (0..seq * d)
            .map(|i| ((i * 7 % 11) as f32 - 5.0) / 3.0)
            .collect();
        let y = rotate(&rope, x.clone(), seq, d);
        for p in 0..seq {
            let n_in: f32 = x[p * d..(p + 1) * d].iter().map(|v| v * v).sum();
            let n_out: f32 = y[p * d..(p + 1) * d].iter().map(|v| v * v).sum();
            // f32 rounding of a sum of 8 squares of size ~3.
            assert!((n_in - n_out).abs() < 1e-4, "position {p}");
        }
        // Position 3, band 1: ω = 10000^(−2/8) = 0.1, angle 0.3; pair (x[1], x[5]).
        let (a, b) = (x[3 * d + 1] as f64, x[3 * d + 5] as f64);
        let (c, s) = (0.3f64.cos(), 0.3f64.sin());
        assert!((y[3 * d + 1] as f64 - (a * c - b * s)).abs() < 1e-6);
        assert!((y[3 * d + 5] as f64 - (a * s + b * c)).abs() < 1e-6);
    }

    #[test]
    fn dot_products_depend_only_on_relative_position() {
        let (seq, d) = (6, 4);
        let rope = Rope::new(&gpt_frequencies(d), seq, &Device::Cpu).unwrap();
        let q = [0.3f32, -1.2, 0.7, 0.4];
        let k = [1.1f32, 0.2, -0.5, 0.9];
        let tile = |v: &[f32; 4]| {
            (0..seq)
                .flat_map(|_| v.iter().copied())
                .collect::<Vec<f32>>()
        };
        let (rq, rk) = (
            rotate(&rope, tile(&q), seq, d),
            rotate(&rope, tile(&k), seq, d),
        );
        let dot = |i: usize, j: usize| (0..d).map(|c| rq[i * d + c] * rk[j * d + c]).sum::<f32>();
        assert!((dot(3, 1) - dot(5, 3)).abs() < 1e-5);
        assert!((dot(2, 2) - dot(0, 0)).abs() < 1e-5);
    }
}
