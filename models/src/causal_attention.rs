//! Causal multi-head self-attention with RoPE, from the projections `[q | k | v]: [batch·seq, 3·width]`
//! (token-major, as one linear layer of the three stacked weights produces them; width = heads·d_head)
//! to the mixed values `[batch·seq, width]`: per head,
//! `output_scale · softmax(score_scale · rope(q)·rope(k)ᵀ + causal mask) · v`.
//!
//! On the CPU (f32) it is one op forward and one backward, flash-style: each (sequence, head) is
//! worked through in 64-row blocks whose score tile stays in cache, the keys above the diagonal are
//! never multiplied, and the `batch × heads × seq²` scores are never stored: the backward recomputes
//! them. The chain it replaces (head split copies, RoPE's eight broadcast products, the score matmul,
//! the softmax, the value matmul, the merge copy, and their backward ops) walked those scores a dozen
//! times per layer and was most of a training step's time outside the dense matmuls. Elsewhere
//! candle's own kernels run the chain.

use std::sync::Arc;

use candle_core::{CpuStorage, CustomOp1, CustomOp2, DType, Layout, Result, Shape, Tensor, D};
use rayon::prelude::*;

use crate::cpu_op::{contiguous_f32, exp_nonpositive, vectorized};
use crate::rope::Rope;
use crate::sgemm::{sgemm, Operand, Threads};

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
    let (rows, columns) = qkv.dims2()?;
    let width = columns / 3;
    let (b, t, heads) = (dims.batch, dims.seq, dims.heads);
    let split = |part: usize| -> Result<Tensor> {
        qkv.narrow(1, part * width, width)?
            .reshape((b, t, heads, width / heads))?
            .transpose(1, 2)?
            .contiguous()
    };
    let q = rope.apply(&split(0)?)?;
    let k = rope.apply(&split(1)?)?;
    let probs = causal_softmax_chain(&q.matmul(&k.t()?)?, dims.score_scale)?;
    let mixed = probs
        .matmul(&split(2)?)?
        .transpose(1, 2)?
        .reshape((rows, width))?;
    mixed * dims.output_scale
}

/// `softmax(scale · scores)` over the keys each query may see (key j ≤ query i), 0 for the others, for
/// `[.., seq, seq]` scores. The mask is built on the scores' device from a `seq`-long index and
/// broadcast, never materialized at the scores' size.
fn causal_softmax_chain(scores: &Tensor, scale: f64) -> Result<Tensor> {
    let seq = scores.dim(D::Minus1)?;
    let device = scores.device();
    let visible = Tensor::tril2(seq, DType::U8, device)?.broadcast_as(scores.shape())?;
    let hidden = Tensor::full(f32::NEG_INFINITY, (), device)?
        .to_dtype(scores.dtype())?
        .broadcast_as(scores.shape())?;
    let x = visible.where_cond(&(scores * scale)?, &hidden)?;
    // The row maximum is subtracted as a constant, which leaves the value and the gradient unchanged
    // (candle-nn's fused softmax has no gradient).
    let max = x.max_keepdim(D::Minus1)?.detach();
    let e = x.broadcast_sub(&max)?.exp()?;
    e.broadcast_div(&e.sum_keepdim(D::Minus1)?)
}

/// Rows of queries (and keys) per block: a 64 × seq score tile of a 256-token window is 64 KiB.
const BLOCK: usize = 64;

/// The fused op: forward [`CausalAttention`], backward [`CausalAttentionGrad`].
#[derive(Clone)]
struct CausalAttention {
    dims: AttentionDims,
    head_dim: usize,
    /// RoPE tables `[≥ seq, head_dim/2]`.
    cos: Arc<[f32]>,
    sin: Arc<[f32]>,
}

/// `dst = beta · lhs · rhs` for row-major `dst` (row stride `dst_rs`) with arbitrary `lhs` and `rhs`
/// strides (`*_rs` between rows, `*_cs` between columns), one thread.
///
/// # Safety
/// Every element the strides reach, `m × k` of `lhs`, `k × n` of `rhs` and `m × n` of `dst`, must lie
/// in its allocation, and `dst` must not overlap the others.
unsafe fn product(
    (m, n, k): (usize, usize, usize),
    dst: *mut f32,
    dst_rs: usize,
    lhs: (*const f32, usize, usize),
    rhs: (*const f32, usize, usize),
    beta: f32,
) {
    let operand = |(ptr, rs, cs): (*const f32, usize, usize)| Operand {
        ptr,
        rs: rs as isize,
        cs: cs as isize,
    };
    sgemm(
        (m, n, k),
        dst,
        dst_rs,
        operand(lhs),
        operand(rhs),
        beta,
        false,
        Threads::One,
    )
}

/// The per-sequence work buffers of one worker, reused for every head.
struct Scratch {
    q: Vec<f32>,
    k: Vec<f32>,
    /// kᵀ and vᵀ `[d_head, seq]`: the right-hand operands of Q Kᵀ and G Vᵀ row-major, which the
    /// product packs by contiguous copies instead of element by element.
    kt: Vec<f32>,
    vt: Vec<f32>,
    probs: Vec<f32>,
    grad_scores: Vec<f32>,
    dq: Vec<f32>,
    dk: Vec<f32>,
}

impl CausalAttention {
    fn width(&self) -> usize {
        self.dims.heads * self.head_dim
    }

    fn scratch(&self) -> Scratch {
        let (t, dh) = (self.dims.seq, self.head_dim);
        Scratch {
            q: vec![0.0; t * dh],
            k: vec![0.0; t * dh],
            kt: vec![0.0; t * dh],
            vt: vec![0.0; t * dh],
            probs: vec![0.0; t * t],
            grad_scores: vec![0.0; t * t],
            dq: vec![0.0; t * dh],
            dk: vec![0.0; t * dh],
        }
    }

    /// Columns `at..at + d_head` of one sequence's rows (`src`, row stride `3·width`) into
    /// `dst: [seq, d_head]`, rotated by RoPE as [`Rope::apply`] computes it.
    #[inline(always)]
    fn rotate(&self, src: &[f32], at: usize, dst: &mut [f32]) {
        let dh = self.head_dim;
        let half = dh / 2;
        for (pos, (row, out)) in src
            .chunks_exact(3 * self.width())
            .zip(dst.chunks_exact_mut(dh))
            .enumerate()
        {
            let x = &row[at..at + dh];
            let (cos, sin) = (
                &self.cos[pos * half..(pos + 1) * half],
                &self.sin[pos * half..(pos + 1) * half],
            );
            for f in 0..half {
                let (a, b) = (x[f], x[f + half]);
                out[f] = a * cos[f] - b * sin[f];
                out[f + half] = a * sin[f] + b * cos[f];
            }
        }
    }

    /// The transpose of [`Self::rotate`] (rotation by the opposite angle), from `src: [seq, d_head]`
    /// into columns `at..at + d_head` of `dst`, one sequence's rows (row stride `3·width`).
    #[inline(always)]
    fn rotate_back(&self, src: &[f32], at: usize, dst: &mut [f32]) {
        let dh = self.head_dim;
        let half = dh / 2;
        for (pos, (g, row)) in src
            .chunks_exact(dh)
            .zip(dst.chunks_exact_mut(3 * self.width()))
            .enumerate()
        {
            let out = &mut row[at..at + dh];
            let (cos, sin) = (
                &self.cos[pos * half..(pos + 1) * half],
                &self.sin[pos * half..(pos + 1) * half],
            );
            for f in 0..half {
                let (a, b) = (g[f], g[f + half]);
                out[f] = a * cos[f] + b * sin[f];
                out[f + half] = b * cos[f] - a * sin[f];
            }
        }
    }

    /// Head `h`'s rotated q and k of one sequence (`qkv`, its `[seq, 3·width]` rows) into the scratch.
    #[inline(always)]
    fn rotate_head(&self, qkv: &[f32], h: usize, s: &mut Scratch) {
        let at = h * self.head_dim;
        self.rotate(qkv, at, &mut s.q);
        self.rotate(qkv, self.width() + at, &mut s.k);
        transpose(&s.k, self.head_dim, &mut s.kt);
    }

    /// The attention weights of one head into `probs: [seq, seq]`: row i holds the softmax over keys
    /// 0..=i and zeros after it up to the end of its block (the rest of the row is never read).
    #[inline(always)]
    fn probabilities(&self, q: &[f32], kt: &[f32], probs: &mut [f32]) {
        let (t, dh) = (self.dims.seq, self.head_dim);
        let scale = self.dims.score_scale as f32;
        for r0 in (0..t).step_by(BLOCK) {
            let r1 = (r0 + BLOCK).min(t);
            // SAFETY: rows r0..r1 of q and of probs (row stride t, r1 ≤ t columns), keys 0..r1 of k,
            // all in bounds; probs is a separate buffer.
            unsafe {
                product(
                    (r1 - r0, r1, dh),
                    probs[r0 * t..].as_mut_ptr(),
                    t,
                    (q[r0 * dh..].as_ptr(), dh, 1),
                    (kt.as_ptr(), t, 1),
                    1.0,
                );
            }
            for i in r0..r1 {
                let row = &mut probs[i * t..i * t + r1];
                let (seen, hidden) = row.split_at_mut(i + 1);
                softmax_in_place(seen, scale);
                hidden.fill(0.0);
            }
        }
    }

    /// Head `h` of one sequence forward: its mixed values into columns `h·d_head..` of `out` (the
    /// sequence's `[seq, width]` rows).
    #[inline(always)]
    fn head_forward(&self, h: usize, qkv: &[f32], out: &mut [f32], s: &mut Scratch) {
        let (t, dh, width) = (self.dims.seq, self.head_dim, self.width());
        self.rotate_head(qkv, h, s);
        self.probabilities(&s.q, &s.kt, &mut s.probs);
        let v = &qkv[2 * width + h * dh..];
        for r0 in (0..t).step_by(BLOCK) {
            let r1 = (r0 + BLOCK).min(t);
            // SAFETY: rows r0..r1 of probs (keys 0..r1), rows 0..r1 of head h's value columns
            // (row stride 3·width) and rows r0..r1 of its output columns (row stride width), all
            // within the sequence's rows; out is a separate buffer.
            unsafe {
                product(
                    (r1 - r0, dh, r1),
                    out[r0 * width + h * dh..].as_mut_ptr(),
                    width,
                    (s.probs[r0 * t..].as_ptr(), t, 1),
                    (v.as_ptr(), 3 * width, 1),
                    self.dims.output_scale as f32,
                );
            }
        }
    }

    /// Head `h` of one sequence backward, from its `[seq, 3·width]` rows `qkv` and output gradient
    /// rows `grad` (`[seq, width]`), into head h's columns of `dqkv` (`[seq, 3·width]`).
    #[inline(always)]
    fn head_backward(
        &self,
        h: usize,
        qkv: &[f32],
        grad: &[f32],
        dqkv: &mut [f32],
        s: &mut Scratch,
    ) {
        let (t, dh, width) = (self.dims.seq, self.head_dim, self.width());
        let (scale, out_scale) = (self.dims.score_scale as f32, self.dims.output_scale as f32);
        self.rotate_head(qkv, h, s);
        self.probabilities(&s.q, &s.kt, &mut s.probs);
        let g = &grad[h * dh..];
        for (pos, row) in qkv.chunks_exact(3 * width).enumerate() {
            for (f, &v) in row[2 * width + h * dh..][..dh].iter().enumerate() {
                s.vt[f * t + pos] = v;
            }
        }
        for r0 in (0..t).step_by(BLOCK) {
            let r1 = (r0 + BLOCK).min(t);
            // SAFETY (all products): the same row and key ranges as in `probabilities`; g is head
            // h's columns of the gradient rows (row stride width, dh columns), vᵀ its values
            // `[dh, seq]`; distinct buffers.
            unsafe {
                // dP = output_scale · G Vᵀ.
                product(
                    (r1 - r0, r1, dh),
                    s.grad_scores[r0 * t..].as_mut_ptr(),
                    t,
                    (g[r0 * width..].as_ptr(), width, 1),
                    (s.vt.as_ptr(), t, 1),
                    out_scale,
                );
            }
            for i in r0..r1 {
                let (p, dp) = (
                    &s.probs[i * t..i * t + r1],
                    &mut s.grad_scores[i * t..i * t + r1],
                );
                let (seen, hidden) = dp.split_at_mut(i + 1);
                let dot: f32 = p[..=i].iter().zip(seen.iter()).map(|(p, d)| p * d).sum();
                for (d, &p) in seen.iter_mut().zip(p) {
                    *d = scale * p * (*d - dot);
                }
                hidden.fill(0.0);
            }
            unsafe {
                // dQ = dS K.
                product(
                    (r1 - r0, dh, r1),
                    s.dq[r0 * dh..].as_mut_ptr(),
                    dh,
                    (s.grad_scores[r0 * t..].as_ptr(), t, 1),
                    (s.k.as_ptr(), dh, 1),
                    1.0,
                );
            }
        }
        for c0 in (0..t).step_by(BLOCK) {
            let c1 = (c0 + BLOCK).min(t);
            let corner = c0 * t + c0;
            // SAFETY: columns c0..c1 of rows c0..t of the [seq, seq] buffers (zero or written above
            // the diagonal within each block), rows c0..t of q and g; keys c0..c1 of dk and of head
            // h's value-gradient columns in dqkv (row stride 3·width).
            unsafe {
                // dK = dSᵀ Q.
                product(
                    (c1 - c0, dh, t - c0),
                    s.dk[c0 * dh..].as_mut_ptr(),
                    dh,
                    (s.grad_scores[corner..].as_ptr(), 1, t),
                    (s.q[c0 * dh..].as_ptr(), dh, 1),
                    1.0,
                );
                // dV = output_scale · Pᵀ G.
                product(
                    (c1 - c0, dh, t - c0),
                    dqkv[c0 * 3 * width + 2 * width + h * dh..].as_mut_ptr(),
                    3 * width,
                    (s.probs[corner..].as_ptr(), 1, t),
                    (g[c0 * width..].as_ptr(), width, 1),
                    out_scale,
                );
            }
        }
        self.rotate_back(&s.dq, h * dh, dqkv);
        self.rotate_back(&s.dk, width + h * dh, dqkv);
    }
}

/// `dst: [cols, rows] = srcᵀ` for `src: [rows, cols]`.
#[inline(always)]
fn transpose(src: &[f32], cols: usize, dst: &mut [f32]) {
    let rows = src.len() / cols;
    for (r, row) in src.chunks_exact(cols).enumerate() {
        for (c, &x) in row.iter().enumerate() {
            dst[c * rows + r] = x;
        }
    }
}

/// `softmax(scale · row)` in place; the same operations in the same order as the chain's (scale,
/// maximum, subtract, exponentiate, sum, divide).
#[inline(always)]
fn softmax_in_place(row: &mut [f32], scale: f32) {
    let mut max = f32::NEG_INFINITY;
    for x in row.iter_mut() {
        *x *= scale;
        max = max.max(*x);
    }
    for x in row.iter_mut() {
        *x -= max;
    }
    exp_nonpositive(row);
    let sum: f32 = row.iter().sum();
    for x in row.iter_mut() {
        *x /= sum;
    }
}

impl CustomOp1 for CausalAttention {
    fn name(&self) -> &'static str {
        "causal-rope-attention"
    }

    fn cpu_fwd(&self, storage: &CpuStorage, layout: &Layout) -> Result<(CpuStorage, Shape)> {
        let qkv = contiguous_f32(storage, layout, self.name())?;
        let (t, width) = (self.dims.seq, self.width());
        let mut out = vec![0f32; qkv.len() / 3];
        out.par_chunks_mut(t * width)
            .zip(qkv.par_chunks(3 * t * width))
            .for_each_init(
                || self.scratch(),
                |s, (out, qkv)| {
                    vectorized(|| {
                        for h in 0..self.dims.heads {
                            self.head_forward(h, qkv, out, s);
                        }
                    })
                },
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
        let qkv = contiguous_f32(qkv_storage, qkv_layout, self.name())?;
        let grad = contiguous_f32(grad_storage, grad_layout, self.name())?;
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
                |s, (dqkv, (qkv, g))| {
                    vectorized(|| {
                        for h in 0..f.dims.heads {
                            f.head_backward(h, qkv, g, dqkv, s);
                        }
                    })
                },
            );
        Ok((CpuStorage::F32(dqkv), qkv_layout.shape().clone()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
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
        let rope = Rope::new(width / dims.heads, dims.seq, &Device::Cpu).unwrap();
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
        let rope = Rope::new(2, 2, &Device::Cpu).unwrap();
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
        let rope = Rope::new(4, 4, &Device::Cpu).unwrap();
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
