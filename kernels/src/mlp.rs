//! The Lipschitz GPT's MLP, `scaled_gelu(x W_inᵀ) W_outᵀ` (docs/lipschitz.md §6.2).
//!
//! On the CPU (f32) one op: forward two products and a GELU pass; backward three products for the
//! gradients and one pass that recomputes the activations beside the GELU's slope. Its two hidden
//! tensors (`[tokens, 4·d]`, the largest of a step) are then not graph nodes, each given a
//! zero-filled gradient buffer that its gradient is added into; the op keeps the pre-activations for
//! its backward. The values are those of the chain `linear → scaled_gelu → linear`, bit for bit.
//! Elsewhere that chain runs.

use std::sync::Mutex;

use candle_core::{CpuStorage, CustomOp3, DType, Layout, Result, Shape, Tensor};

use crate::activations::{scaled_gelu, scaled_gelu_backward_cpu, scaled_gelu_cpu};
use crate::cpu_op::with_f32;
use crate::linear::linear;
use crate::sgemm::{matmul, Operand};
use crate::storage::contiguous_cpu;

/// `scaled_gelu(x W_inᵀ) W_outᵀ` for `x: [n, d]`, `W_in: [hidden, d]`, `W_out: [d_out, hidden]`.
pub fn mlp(x: &Tensor, w_in: &Tensor, w_out: &Tensor) -> Result<Tensor> {
    let ((n, d), (hidden, d_in), (d_out, hidden_out)) = (x.dims2()?, w_in.dims2()?, w_out.dims2()?);
    if d != d_in || hidden != hidden_out {
        candle_core::bail!(
            "mlp: x is [{n}, {d}], W_in [{hidden}, {d_in}] and W_out [{d_out}, {hidden_out}]; \
             they need W_in's columns = x's columns and W_out's columns = W_in's rows"
        );
    }
    let cpu_f32 = [x, w_in, w_out]
        .iter()
        .all(|t| t.device().is_cpu() && t.dtype() == DType::F32);
    if cpu_f32 {
        x.contiguous()?.apply_op3(
            &w_in.contiguous()?,
            &w_out.contiguous()?,
            Mlp {
                pre_activations: Mutex::new(None),
            },
        )
    } else {
        linear(&scaled_gelu(&linear(x, w_in)?)?, w_out)
    }
}

struct Mlp {
    /// `x W_inᵀ` of the forward, for the backward.
    pre_activations: Mutex<Option<Vec<f32>>>,
}

impl Mlp {
    fn saved(&self) -> Result<std::sync::MutexGuard<'_, Option<Vec<f32>>>> {
        self.pre_activations
            .lock()
            .map_err(|_| candle_core::Error::Msg("mlp: an earlier pass of this op panicked".into()))
    }
}

impl CustomOp3 for Mlp {
    fn name(&self) -> &'static str {
        "mlp"
    }

    fn cpu_fwd(
        &self,
        xs: &CpuStorage,
        xl: &Layout,
        ins: &CpuStorage,
        inl: &Layout,
        outs: &CpuStorage,
        outl: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let name = self.name();
        let (x, w_in, w_out) = (
            contiguous_cpu::<f32>(xs, xl, name)?,
            contiguous_cpu::<f32>(ins, inl, name)?,
            contiguous_cpu::<f32>(outs, outl, name)?,
        );
        let ((n, d), (hidden, _), (d_out, _)) = (
            xl.shape().dims2()?,
            inl.shape().dims2()?,
            outl.shape().dims2()?,
        );
        // SAFETY: x is n × d, W_in hidden × d, W_out d_out × hidden, all contiguous; the weights'
        // transposes are read through strides.
        let u = unsafe {
            matmul(
                (n, hidden, d),
                Operand::of(x, d, false),
                Operand::of(w_in, d, true),
            )
        };
        let mut g = vec![0f32; u.len()];
        scaled_gelu_cpu(&u, &mut g);
        let y = unsafe {
            matmul(
                (n, d_out, hidden),
                Operand::of(&g, hidden, false),
                Operand::of(w_out, hidden, true),
            )
        };
        *self.saved()? = Some(u);
        Ok((CpuStorage::F32(y), Shape::from((n, d_out))))
    }

    fn bwd(
        &self,
        x: &Tensor,
        w_in: &Tensor,
        w_out: &Tensor,
        _y: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let ((n, d), (hidden, _), (d_out, _)) = (x.dims2()?, w_in.dims2()?, w_out.dims2()?);
        let saved = self.saved()?;
        let Some(u) = saved.as_ref() else {
            candle_core::bail!("mlp: backward without a forward");
        };
        let name = self.name();
        let mut g = vec![0f32; u.len()];
        // SAFETY (all products): grad is n × d_out, W_out d_out × hidden, the activations and their
        // gradient n × hidden, W_in hidden × d, x n × d, all contiguous; transposes through strides.
        let (du, d_w_out) = with_f32(grad, name, |grad| {
            let mut du = with_f32(w_out, name, |w_out| unsafe {
                matmul(
                    (n, hidden, d_out),
                    Operand::of(grad, d_out, false),
                    Operand::of(w_out, hidden, false),
                )
            })?;
            scaled_gelu_backward_cpu(u, &mut du, &mut g);
            let d_w_out = unsafe {
                matmul(
                    (d_out, hidden, n),
                    Operand::of(grad, d_out, true),
                    Operand::of(&g, hidden, false),
                )
            };
            Ok::<_, candle_core::Error>((du, d_w_out))
        })??;
        drop(g);
        let d_w_in = with_f32(x, name, |x| unsafe {
            matmul(
                (hidden, d, n),
                Operand::of(&du, hidden, true),
                Operand::of(x, d, false),
            )
        })?;
        let dx = with_f32(w_in, name, |w_in| unsafe {
            matmul(
                (n, d, hidden),
                Operand::of(&du, hidden, false),
                Operand::of(w_in, d, false),
            )
        })?;
        let device = grad.device();
        Ok((
            Some(Tensor::from_vec(dx, (n, d), device)?),
            Some(Tensor::from_vec(d_w_in, (hidden, d), device)?),
            Some(Tensor::from_vec(d_w_out, (d_out, hidden), device)?),
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{Device, Var};

    fn values(rows: usize, cols: usize, seed: usize) -> Tensor {
        let data: Vec<f32> = (0..rows * cols)
            .map(|i| (((i * 37 + seed * 11) % 101) as f32 - 50.0) / 41.0)
            .collect();
        Tensor::from_vec(data, (rows, cols), &Device::Cpu).unwrap()
    }

    /// The op against the chain of the three ops it fuses, each of which is tested against candle's
    /// own chain: the same products and the same GELU passes, so the same bits.
    #[test]
    fn the_op_is_the_linear_gelu_linear_chain_bit_for_bit() {
        for (n, d, hidden, d_out) in [(1, 1, 1, 1), (7, 5, 20, 3), (300, 64, 256, 64)] {
            let run = |fused: bool| {
                let x = Var::from_tensor(&values(n, d, 1)).unwrap();
                let w_in = Var::from_tensor(&values(hidden, d, 2)).unwrap();
                let w_out = Var::from_tensor(&values(d_out, hidden, 3)).unwrap();
                let (xt, wi, wo) = (x.as_tensor(), w_in.as_tensor(), w_out.as_tensor());
                let y = if fused {
                    mlp(xt, wi, wo).unwrap()
                } else {
                    linear(&scaled_gelu(&linear(xt, wi).unwrap()).unwrap(), wo).unwrap()
                };
                let probe = values(n, d_out, 4).sin().unwrap();
                let grads = (&y * probe).unwrap().sum_all().unwrap().backward().unwrap();
                let flat = |t: &Tensor| t.flatten_all().unwrap().to_vec1::<f32>().unwrap();
                [
                    flat(&y),
                    flat(grads.get(&x).unwrap()),
                    flat(grads.get(&w_in).unwrap()),
                    flat(grads.get(&w_out).unwrap()),
                ]
            };
            assert_eq!(run(true), run(false), "{n}×{d}→{hidden}→{d_out}");
        }
    }

    #[test]
    fn mismatched_shapes_are_an_error_naming_all_three() {
        let e = mlp(&values(4, 3, 0), &values(8, 3, 0), &values(2, 7, 0))
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("[4, 3]") && e.contains("[8, 3]") && e.contains("[2, 7]"),
            "{e}"
        );
    }
}
