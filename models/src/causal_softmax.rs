//! Causal attention weights: `softmax(scale · s)` over the keys a query may see (key j ≤ query i), 0
//! for the others, for square score blocks `[.., seq, seq]` whose queries and keys are the same
//! positions.
//!
//! On the CPU (f32) it is one pass forward and one backward. The chain it replaces (scale, add a −∞
//! mask, max, subtract, exp, sum, divide, and as many backward ops) walks the batch × heads × seq²
//! scores more than a dozen times per attention layer, and exponentiates the masked half too; in a
//! training step of the paper's GPT those are the largest tensors after the MLP's. Elsewhere candle's
//! own kernels run the chain.

use candle_core::{CpuStorage, CustomOp1, CustomOp2, DType, Layout, Result, Shape, Tensor, D};
use rayon::prelude::*;

use crate::cpu_op::contiguous_f32;

/// `softmax(scale · scores + causal mask)` over the last axis of `scores: [.., seq, seq]`.
pub fn causal_softmax(scores: &Tensor, scale: f64) -> Result<Tensor> {
    let dims = scores.dims();
    let seq = dims[dims.len().saturating_sub(1)];
    if dims.len() < 2 || dims[dims.len() - 2] != seq {
        candle_core::bail!("causal_softmax: expects square [.., seq, seq] scores, got {dims:?}");
    }
    if scores.device().is_cpu() && scores.dtype() == DType::F32 {
        scores.contiguous()?.apply_op1(CausalSoftmax { scale })
    } else {
        causal_softmax_chain(scores, scale)
    }
}

/// The same with candle's ops (one kernel each on a GPU): scale, hide the keys above the diagonal
/// behind −∞, softmax. The mask is built on the scores' device from a `seq`-long index and broadcast,
/// never materialized at the scores' size.
fn causal_softmax_chain(scores: &Tensor, scale: f64) -> Result<Tensor> {
    let seq = scores.dim(D::Minus1)?;
    let device = scores.device();
    let visible = Tensor::tril2(seq, DType::U8, device)?.broadcast_as(scores.shape())?;
    let hidden = Tensor::full(f32::NEG_INFINITY, (), device)?
        .to_dtype(scores.dtype())?
        .broadcast_as(scores.shape())?;
    softmax_last(&visible.where_cond(&(scores * scale)?, &hidden)?)
}

/// Softmax over the last axis with a gradient (candle-nn's fused kernel has none); the row maximum is
/// subtracted as a constant, which leaves the value and the gradient unchanged.
fn softmax_last(x: &Tensor) -> Result<Tensor> {
    let max = x.max_keepdim(D::Minus1)?.detach();
    let e = x.broadcast_sub(&max)?.exp()?;
    e.broadcast_div(&e.sum_keepdim(D::Minus1)?)
}

/// The length of a row (`seq`) of a `[.., seq, seq]` layout.
fn row_len(layout: &Layout) -> usize {
    layout.dims().last().copied().unwrap_or(1).max(1)
}

/// Forward: per row (query i), the maximum, the exponentials and their sum over keys 0..=i.
struct CausalSoftmax {
    scale: f64,
}

impl CustomOp1 for CausalSoftmax {
    fn name(&self) -> &'static str {
        "causal-softmax"
    }

    fn cpu_fwd(&self, storage: &CpuStorage, layout: &Layout) -> Result<(CpuStorage, Shape)> {
        let scores = contiguous_f32(storage, layout, self.name())?;
        let seq = row_len(layout);
        // As candle's `Tensor * f64` applies it.
        let scale = self.scale as f32;
        let mut probs = vec![0f32; scores.len()];
        probs
            .par_chunks_mut(seq)
            .zip(scores.par_chunks(seq))
            .enumerate()
            .for_each(|(row, (p, s))| {
                let visible = row % seq + 1;
                let (p, s) = (&mut p[..visible], &s[..visible]);
                let mut max = f32::NEG_INFINITY;
                for (p, &v) in p.iter_mut().zip(s) {
                    *p = v * scale;
                    max = max.max(*p);
                }
                let mut sum = 0f32;
                for p in p.iter_mut() {
                    *p = (*p - max).exp();
                    sum += *p;
                }
                for p in p {
                    *p /= sum;
                }
            });
        Ok((CpuStorage::F32(probs), layout.shape().clone()))
    }

    fn bwd(&self, _scores: &Tensor, probs: &Tensor, grad: &Tensor) -> Result<Option<Tensor>> {
        let op = CausalSoftmaxGrad { scale: self.scale };
        Ok(Some(probs.apply_op2_no_bwd(&grad.contiguous()?, &op)?))
    }
}

/// Backward: `scale · p ⊙ (g − Σⱼ gⱼpⱼ)` per row; zero where p is (the masked keys).
struct CausalSoftmaxGrad {
    scale: f64,
}

impl CustomOp2 for CausalSoftmaxGrad {
    fn name(&self) -> &'static str {
        "causal-softmax-grad"
    }

    fn cpu_fwd(
        &self,
        probs_storage: &CpuStorage,
        probs_layout: &Layout,
        grad_storage: &CpuStorage,
        grad_layout: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let probs = contiguous_f32(probs_storage, probs_layout, self.name())?;
        let grad = contiguous_f32(grad_storage, grad_layout, self.name())?;
        let seq = row_len(probs_layout);
        let scale = self.scale as f32;
        let mut out = vec![0f32; probs.len()];
        out.par_chunks_mut(seq)
            .zip(probs.par_chunks(seq).zip(grad.par_chunks(seq)))
            .enumerate()
            .for_each(|(row, (out, (p, g)))| {
                let visible = row % seq + 1;
                let (out, p, g) = (&mut out[..visible], &p[..visible], &g[..visible]);
                let dot: f32 = p.iter().zip(g).map(|(p, g)| p * g).sum();
                for ((out, &p), &g) in out.iter_mut().zip(p).zip(g) {
                    *out = scale * p * (g - dot);
                }
            });
        Ok((CpuStorage::F32(out), probs_layout.shape().clone()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{Device, Var};

    fn scores(batch: usize, seq: usize) -> Tensor {
        let data: Vec<f32> = (0..batch * seq * seq)
            .map(|i| ((i * 37 % 101) as f32 - 50.0) / 7.0)
            .collect();
        Tensor::from_vec(data, (batch, seq, seq), &Device::Cpu).unwrap()
    }

    /// Forward values and the gradient of Σ w ⊙ p, fused and chained, as flat vectors.
    fn value_and_grad(s: &Tensor, scale: f64, fused: bool) -> (Vec<f32>, Vec<f32>) {
        let var = Var::from_tensor(s).unwrap();
        let p = if fused {
            causal_softmax(var.as_tensor(), scale).unwrap()
        } else {
            causal_softmax_chain(var.as_tensor(), scale).unwrap()
        };
        let weights = scores(s.dim(0).unwrap(), s.dim(1).unwrap()).cos().unwrap();
        let grads = (&p * weights)
            .unwrap()
            .sum_all()
            .unwrap()
            .backward()
            .unwrap();
        let flat = |t: &Tensor| t.flatten_all().unwrap().to_vec1::<f32>().unwrap();
        (flat(&p), flat(grads.get(&var).unwrap()))
    }

    #[test]
    fn fused_op_matches_the_chain_that_other_devices_run_forward_and_backward() {
        for (batch, seq, scale) in [(3, 1, 1.0), (2, 7, 1.0 / 64.0), (4, 33, 3.0)] {
            let s = scores(batch, seq);
            let (p_fused, g_fused) = value_and_grad(&s, scale, true);
            let (p_chain, g_chain) = value_and_grad(&s, scale, false);
            // Same operations except the order of the row sum (and the dot product backward):
            // a few f32 ulps of values ≤ 1.
            for (i, (a, b)) in p_fused.iter().zip(&p_chain).enumerate() {
                assert!((a - b).abs() <= 1e-6, "p[{i}] {a} vs {b} (seq {seq})");
            }
            for (i, (a, b)) in g_fused.iter().zip(&g_chain).enumerate() {
                assert!((a - b).abs() <= 1e-5 * scale as f32, "grad[{i}] {a} vs {b}");
            }
        }
    }

    #[test]
    fn rows_are_causal_distributions_and_match_a_hand_computation() {
        // One row of three keys seen by query 2: softmax(2·[0, ln 2, ln 3]) = [1, 4, 9]/14.
        let l2 = std::f32::consts::LN_2;
        let l3 = 3f32.ln();
        let s = Tensor::from_vec(
            vec![5.0, 9.0, 9.0, 1.0, 2.0, 9.0, 0.0, l2, l3],
            (1, 3, 3),
            &Device::Cpu,
        )
        .unwrap();
        let p = causal_softmax(&s, 2.0).unwrap().flatten_all().unwrap();
        let p = p.to_vec1::<f32>().unwrap();
        // Query 1 sees [1, 2]: softmax([2, 4]) = [1, e²]/(1 + e²).
        let e2 = 2f32.exp();
        let expected = [
            1.0,
            0.0,
            0.0,
            1.0 / (1.0 + e2),
            e2 / (1.0 + e2),
            0.0,
            1.0 / 14.0,
            4.0 / 14.0,
            9.0 / 14.0,
        ];
        for (i, (a, b)) in p.iter().zip(expected).enumerate() {
            assert!((a - b).abs() < 1e-6, "p[{i}] {a} vs {b}");
        }
    }

    #[test]
    fn non_square_scores_are_an_error() {
        let s = Tensor::zeros((2, 3, 4), DType::F32, &Device::Cpu).unwrap();
        let e = causal_softmax(&s, 1.0).unwrap_err().to_string();
        assert!(e.contains("square"), "{e}");
    }
}
