//! Causal multi-head self-attention with RoPE, from the projections `[q | k | v]: [batch·seq, 3·width]`
//! (token-major, as one linear layer of the three stacked weights produces them; width = heads·d_head)
//! to the mixed values `[batch·seq, width]`: per head,
//! `output_scale · softmax(score_scale · rope(q)·rope(k)ᵀ + causal mask) · v`.
//!
//! On the CPU (f32) it is one op forward and one backward, flash-style: each (sequence, head) is
//! worked through in blocks of 64 positions whose scores stay in cache, the keys above the diagonal are
//! never multiplied, and the `batch × heads × seq²` scores are never stored: the backward recomputes
//! them. The chain it replaces (head split copies, RoPE's eight broadcast products, the score matmul,
//! the softmax, the value matmul, the merge copy, and their backward ops) walked those scores a dozen
//! times per layer and was most of a training step's time outside the dense matmuls. Elsewhere
//! candle's own kernels run the chain.

use std::sync::Arc;

use candle_core::{CpuStorage, CustomOp1, CustomOp2, DType, Layout, Result, Shape, Tensor, D};
use rayon::prelude::*;

use crate::rope::Rope;
use crate::storage::contiguous_cpu;

mod head;
use head::Scratch;

/// The sizes and scales of one attention call.
#[derive(Clone, Copy, Debug)]
pub struct AttentionDims {
    pub batch: usize,
    pub seq: usize,
    pub heads: usize,
    /// Multiplies `qᵀk` before the softmax.
    pub score_scale: f64,
    /// Multiplies the mixed values.
    pub output_scale: f64,
}

/// The mixed values `[batch·seq, width]` of causal self-attention over `qkv = [q | k | v]` of shape
/// `[batch·seq, 3·width]`, with RoPE applied to `q` and `k` (positions 0..seq in every sequence).
pub fn causal_rope_attention(qkv: &Tensor, rope: &Rope, dims: AttentionDims) -> Result<Tensor> {
    let (rows, columns) = qkv.dims2()?;
    if rows != dims.batch * dims.seq || columns % (3 * dims.heads) != 0 {
        candle_core::bail!(
            "causal_rope_attention: qkv is [{rows}, {columns}], expected [{} × {}, 3 × heads {} × d_head]",
            dims.batch,
            dims.seq,
            dims.heads
        );
    }
    if qkv.device().is_cpu() && qkv.dtype() == DType::F32 {
        let (cos, sin) = rope.tables();
        let op = CausalAttention {
            dims,
            head_dim: columns / 3 / dims.heads,
            cos,
            sin,
        };
        qkv.contiguous()?.apply_op1(op)
    } else {
        causal_rope_attention_chain(qkv, rope, dims)
    }
}

/// The same with candle's ops: split into heads, rotate, score, mask, softmax, mix, merge.
fn causal_rope_attention_chain(qkv: &Tensor, rope: &Rope, dims: AttentionDims) -> Result<Tensor> {
    let [q, k, v] = rotated_heads(qkv, rope, dims)?;
    mix_heads(&causal_probabilities(&q, &k, dims.score_scale)?, &v, dims)
}

/// The mixed values `[batch·seq, width]` of attention weights `[batch, heads, seq, seq]` over values
/// `[batch, heads, seq, d_head]`: `output_scale · weights·v`, the heads merged.
pub fn mix_heads(weights: &Tensor, v: &Tensor, dims: AttentionDims) -> Result<Tensor> {
    let (batch, heads, seq, head_dim) = v.dims4()?;
    let mixed = weights
        .matmul(v)?
        .transpose(1, 2)?
        .reshape((batch * seq, heads * head_dim))?;
    mixed * dims.output_scale
}

/// The queries and keys (rotated) and the values, `[batch, heads, seq, d_head]` each, that attention
/// over `qkv = [q | k | v]: [batch·seq, 3·width]` mixes.
pub fn rotated_heads(qkv: &Tensor, rope: &Rope, dims: AttentionDims) -> Result<[Tensor; 3]> {
    let width = qkv.dim(1)? / 3;
    let (b, t, heads) = (dims.batch, dims.seq, dims.heads);
    let split = |part: usize| -> Result<Tensor> {
        qkv.narrow(1, part * width, width)?
            .reshape((b, t, heads, width / heads))?
            .transpose(1, 2)?
            .contiguous()
    };
    Ok([rope.apply(&split(0)?)?, rope.apply(&split(1)?)?, split(2)?])
}

/// The attention weights `[batch, heads, seq, seq]` of rotated queries and keys `[batch, heads, seq,
/// d_head]`: `softmax(scale · q·kᵀ)` over the keys each query may see (key j ≤ query i), 0 for the
/// others. The mask is built on the scores' device from a `seq`-long index and broadcast, never
/// materialized at the scores' size.
pub fn causal_probabilities(q: &Tensor, k: &Tensor, scale: f64) -> Result<Tensor> {
    let scores = q.matmul(&k.t()?)?;
    let seq = scores.dim(D::Minus1)?;
    let device = scores.device();
    let visible = Tensor::tril2(seq, DType::U8, device)?.broadcast_as(scores.shape())?;
    let hidden = Tensor::full(f32::NEG_INFINITY, (), device)?
        .to_dtype(scores.dtype())?
        .broadcast_as(scores.shape())?;
    let x = visible.where_cond(&(&scores * scale)?, &hidden)?;
    // The row maximum is subtracted as a constant, which leaves the value and the gradient unchanged
    // (candle-nn's fused softmax has no gradient).
    let max = x.max_keepdim(D::Minus1)?.detach();
    let e = x.broadcast_sub(&max)?.exp()?;
    e.broadcast_div(&e.sum_keepdim(D::Minus1)?)
}

/// The fused op: forward [`CausalAttention`], backward [`CausalAttentionGrad`]; the work of one
/// sequence is in [`head`].
#[derive(Clone)]
struct CausalAttention {
    dims: AttentionDims,
    head_dim: usize,
    /// RoPE tables `[≥ seq, head_dim/2]`.
    cos: Arc<[f32]>,
    sin: Arc<[f32]>,
}

impl CausalAttention {
    fn width(&self) -> usize {
        self.dims.heads * self.head_dim
    }

    fn scratch(&self) -> Scratch {
        Scratch::new(self.dims.seq, self.head_dim)
    }
}

impl CustomOp1 for CausalAttention {
    fn name(&self) -> &'static str {
        "causal-rope-attention"
    }

    fn cpu_fwd(&self, storage: &CpuStorage, layout: &Layout) -> Result<(CpuStorage, Shape)> {
        let qkv = contiguous_cpu::<f32>(storage, layout, self.name())?;
        let (t, width) = (self.dims.seq, self.width());
        let mut out = vec![0f32; qkv.len() / 3];
        out.par_chunks_mut(t * width)
            .zip(qkv.par_chunks(3 * t * width))
            .for_each_init(
                || self.scratch(),
                |s, (out, qkv)| self.sequence_forward(qkv, out, s),
            );
        Ok((
            CpuStorage::F32(out),
            Shape::from((self.dims.batch * t, width)),
        ))
    }

    fn bwd(&self, qkv: &Tensor, _out: &Tensor, grad: &Tensor) -> Result<Option<Tensor>> {
        let op = CausalAttentionGrad {
            forward: self.clone(),
        };
        Ok(Some(qkv.apply_op2_no_bwd(&grad.contiguous()?, &op)?))
    }
}

/// Backward: `d[q | k | v]` from `[q | k | v]` and the output gradient.
struct CausalAttentionGrad {
    forward: CausalAttention,
}

impl CustomOp2 for CausalAttentionGrad {
    fn name(&self) -> &'static str {
        "causal-rope-attention-grad"
    }

    fn cpu_fwd(
        &self,
        qkv_storage: &CpuStorage,
        qkv_layout: &Layout,
        grad_storage: &CpuStorage,
        grad_layout: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let qkv = contiguous_cpu::<f32>(qkv_storage, qkv_layout, self.name())?;
        let grad = contiguous_cpu::<f32>(grad_storage, grad_layout, self.name())?;
        let f = &self.forward;
        let (t, width) = (f.dims.seq, f.width());
        let mut dqkv = vec![0f32; qkv.len()];
        dqkv.par_chunks_mut(3 * t * width)
            .zip(
                qkv.par_chunks(3 * t * width)
                    .zip(grad.par_chunks(t * width)),
            )
            .for_each_init(
                || f.scratch(),
                |s, (dqkv, (qkv, g))| f.sequence_backward(qkv, g, dqkv, s),
            );
        Ok((CpuStorage::F32(dqkv), qkv_layout.shape().clone()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rope::gpt_frequencies;
    use candle_core::{Device, Var};

    fn values(rows: usize, width: usize, seed: usize) -> Tensor {
        let data: Vec<f32> = (0..rows * width)
            .map(|i| (((i * 37 + seed * 11) % 101) as f32 - 50.0) / 25.0)
            .collect();
        Tensor::from_vec(data, (rows, width), &Device::Cpu).unwrap()
    }

    /// The output and the gradient of Σ w ⊙ out with respect to `[q | k | v]`, fused or chained.
    fn value_and_grad(dims: AttentionDims, width: usize, fused: bool) -> Vec<Vec<f32>> {
        let rows = dims.batch * dims.seq;
        let rope = Rope::new(&gpt_frequencies(width / dims.heads), dims.seq, &Device::Cpu).unwrap();
        let qkv = Var::from_tensor(&values(rows, 3 * width, 1)).unwrap();
        let out = if fused {
            causal_rope_attention(qkv.as_tensor(), &rope, dims).unwrap()
        } else {
            causal_rope_attention_chain(qkv.as_tensor(), &rope, dims).unwrap()
        };
        let w = values(rows, width, 7).cos().unwrap();
        let grads = (&out * w).unwrap().sum_all().unwrap().backward().unwrap();
        let flat = |t: &Tensor| t.flatten_all().unwrap().to_vec1::<f32>().unwrap();
        vec![flat(&out), flat(grads.get(&qkv).unwrap())]
    }

    #[test]
    fn fused_op_matches_the_chain_that_other_devices_run_forward_and_backward() {
        // Sequences shorter than, equal to and longer than a block, not multiples of it.
        for (batch, seq, heads, width, score_scale) in [
            (3, 1, 1, 4, 1.0),
            (2, 7, 2, 8, 0.5),
            (2, 64, 2, 16, 1.0 / 8.0),
            (3, 150, 4, 32, 3.0 / 8.0),
        ] {
            let dims = AttentionDims {
                batch,
                seq,
                heads,
                score_scale,
                output_scale: 1.0 / 3.0,
            };
            let fused = value_and_grad(dims, width, true);
            let chain = value_and_grad(dims, width, false);
            for (name, (a, b)) in ["output", "d[q | k | v]"]
                .iter()
                .zip(fused.iter().zip(&chain))
            {
                let size = b.iter().fold(0f32, |m, x| m.max(x.abs()));
                for (i, (x, y)) in a.iter().zip(b).enumerate() {
                    // The same products summed in a different order (blocked gemm against
                    // candle's batched one), and a polynomial exp against libm's: a few f32 ulps of
                    // the tensor's largest entry, accumulated over ≤ 150 terms.
                    assert!(
                        (x - y).abs() <= 2e-5 * size.max(1e-3),
                        "{name}[{i}] {x} vs {y} (batch {batch}, seq {seq}, heads {heads})"
                    );
                }
            }
        }
    }

    #[test]
    fn one_query_attends_as_a_hand_computation_says() {
        // One head of width 2, two positions. Position 0 sees only itself: its output is v₀/3.
        // Position 1 with scores s₁₀ = q₁·R(0)k₀ and s₁₁ = q₁·R(1)k₁ mixes v₀, v₁.
        let rope = Rope::new(&gpt_frequencies(2), 2, &Device::Cpu).unwrap();
        // Rows [q | k | v] per position.
        let qkv = Tensor::new(
            &[
                [1f32, 0.0, 1.0, 1.0, 3.0, 6.0],
                [0.0, 2.0, 1.0, 0.0, 9.0, -3.0],
            ],
            &Device::Cpu,
        )
        .unwrap();
        let dims = AttentionDims {
            batch: 1,
            seq: 2,
            heads: 1,
            score_scale: 1.0,
            output_scale: 1.0 / 3.0,
        };
        let out = causal_rope_attention(&qkv, &rope, dims)
            .unwrap()
            .to_vec2::<f32>()
            .unwrap();
        // RoPE at position p rotates by p radians (ω = 1 for d_head 2); q₁ = (0, 2) rotated by 1.
        let (c, s) = (1f64.cos(), 1f64.sin());
        let q1 = (-2.0 * s, 2.0 * c);
        let k0 = (1.0, 1.0);
        let k1 = (c, s);
        let s10 = q1.0 * k0.0 + q1.1 * k0.1;
        let s11 = q1.0 * k1.0 + q1.1 * k1.1;
        let p1 = 1.0 / (1.0 + (s10 - s11).exp());
        let p0 = 1.0 - p1;
        let expected = [
            [1.0, 2.0],
            [(p0 * 3.0 + p1 * 9.0) / 3.0, (p0 * 6.0 - p1 * 3.0) / 3.0],
        ];
        for (row, want) in out.iter().zip(expected) {
            for (&x, y) in row.iter().zip(want) {
                assert!((x as f64 - y).abs() < 1e-6, "{out:?} vs {expected:?}");
            }
        }
    }

    #[test]
    fn mismatched_shapes_are_an_error() {
        let rope = Rope::new(&gpt_frequencies(4), 4, &Device::Cpu).unwrap();
        let dims = AttentionDims {
            batch: 2,
            seq: 4,
            heads: 2,
            score_scale: 1.0,
            output_scale: 1.0,
        };
        let e = causal_rope_attention(&values(8, 8, 0), &rope, dims)
            .unwrap_err()
            .to_string();
        assert!(e.contains("qkv is [8, 8]"), "{e}");
        let e = causal_rope_attention(&values(6, 24, 0), &rope, dims)
            .unwrap_err()
            .to_string();
        assert!(e.contains("expected [2 × 4"), "{e}");
    }
}
