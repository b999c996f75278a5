//! `x Wᵀ` for activations `x: [n, fan_in]` and a weight `W: [fan_out, fan_in]`.
//!
//! On the CPU (f32) one op whose three products (forward, and the input's and the weight's gradients
//! backward) run on [`crate::sgemm`], reading `W` and the incoming gradient in place through strides.
//! candle's chain (`x.matmul(&w.t())`) is two graph nodes, and gives the transposed weight a gradient
//! that is then transposed and added into a zero-filled buffer. Elsewhere candle's matmul runs.

use candle_core::{CpuStorage, CustomOp2, DType, Layout, Result, Shape, Tensor};

use crate::cpu_op::with_f32;
use crate::sgemm::{matmul, Operand};
use crate::storage::contiguous_cpu;

/// `x Wᵀ`: `[n, fan_in] × [fan_out, fan_in] → [n, fan_out]`.
pub fn linear(x: &Tensor, w: &Tensor) -> Result<Tensor> {
    let ((n, fan_in), (fan_out, w_in)) = (x.dims2()?, w.dims2()?);
    if fan_in != w_in {
        candle_core::bail!("linear: x is [{n}, {fan_in}] but W is [{fan_out}, {w_in}]");
    }
    if x.device().is_cpu() && x.dtype() == DType::F32 && w.dtype() == DType::F32 {
        x.contiguous()?.apply_op2(&w.contiguous()?, LinearOp)
    } else {
        x.matmul(&w.t()?)
    }
}

struct LinearOp;

impl CustomOp2 for LinearOp {
    fn name(&self) -> &'static str {
        "linear"
    }

    fn cpu_fwd(
        &self,
        xs: &CpuStorage,
        xl: &Layout,
        ws: &CpuStorage,
        wl: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let (x, w) = (
            contiguous_cpu::<f32>(xs, xl, self.name())?,
            contiguous_cpu::<f32>(ws, wl, self.name())?,
        );
        let ((n, fan_in), (fan_out, _)) = (xl.shape().dims2()?, wl.shape().dims2()?);
        // SAFETY: x is n × fan_in and w fan_out × fan_in, both contiguous; Wᵀ is read through strides.
        let y = unsafe {
            matmul(
                (n, fan_out, fan_in),
                Operand::of(x, fan_in, false),
                Operand::of(w, fan_in, true),
            )
        };
        Ok((CpuStorage::F32(y), Shape::from((n, fan_out))))
    }

    fn bwd(
        &self,
        x: &Tensor,
        w: &Tensor,
        _y: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>)> {
        let ((n, fan_in), (fan_out, _)) = (x.dims2()?, w.dims2()?);
        let name = self.name();
        // SAFETY (both products): g is n × fan_out, w fan_out × fan_in, x n × fan_in, all
        // contiguous; gᵀ is read through strides.
        let dx = with_f32(grad, name, |g| {
            with_f32(w, name, |w| unsafe {
                matmul(
                    (n, fan_in, fan_out),
                    Operand::of(g, fan_out, false),
                    Operand::of(w, fan_in, false),
                )
            })
        })??;
        let dw = with_f32(grad, name, |g| {
            with_f32(x, name, |x| unsafe {
                matmul(
                    (fan_out, fan_in, n),
                    Operand::of(g, fan_out, true),
                    Operand::of(x, fan_in, false),
                )
            })
        })??;
        let device = grad.device();
        Ok((
            Some(Tensor::from_vec(dx, (n, fan_in), device)?),
            Some(Tensor::from_vec(dw, (fan_out, fan_in), device)?),
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{Device, Var};

    fn values(rows: usize, cols: usize, seed: usize) -> Tensor {
        let data: Vec<f32> = (0..rows * cols)
            .map(|i| (((i * 37 + seed * 11) % 101) as f32 - 50.0) / 61.0)
            .collect();
        Tensor::from_vec(data, (rows, cols), &Device::Cpu).unwrap()
    }

    #[test]
    fn the_op_is_candles_matmul_chain_forward_and_backward() {
        for (n, fan_in, fan_out) in [(1, 1, 1), (7, 5, 3), (300, 256, 65), (64, 300, 40)] {
            let run = |fused: bool| {
                let x = Var::from_tensor(&values(n, fan_in, 1)).unwrap();
                let w = Var::from_tensor(&values(fan_out, fan_in, 2)).unwrap();
                let y = if fused {
                    linear(x.as_tensor(), w.as_tensor()).unwrap()
                } else {
                    x.as_tensor().matmul(&w.as_tensor().t().unwrap()).unwrap()
                };
                let probe = values(n, fan_out, 3).sin().unwrap();
                let grads = (&y * probe).unwrap().sum_all().unwrap().backward().unwrap();
                let flat = |t: &Tensor| t.flatten_all().unwrap().to_vec1::<f32>().unwrap();
                [
                    flat(&y),
                    flat(grads.get(&x).unwrap()),
                    flat(grads.get(&w).unwrap()),
                ]
            };
            let (fused, chain) = (run(true), run(false));
            for (part, (f, c)) in ["y", "dx", "dw"].iter().zip(fused.iter().zip(&chain)) {
                for (i, (a, b)) in f.iter().zip(c).enumerate() {
                    // Both are f32 sums of at most 300 products of magnitude < 1 in different
                    // orders: they may differ by a few hundred ulps of the sum's size.
                    assert!(
                        (a - b).abs() <= 1e-4 * (1.0 + b.abs()),
                        "{n}×{fan_in}→{fan_out} {part}[{i}]: {a} vs {b}"
                    );
                }
            }
        }
    }

    #[test]
    fn mismatched_shapes_are_an_error_naming_both() {
        let e = linear(&values(4, 3, 0), &values(2, 5, 0))
            .unwrap_err()
            .to_string();
        assert!(e.contains("[4, 3]") && e.contains("[2, 5]"), "{e}");
    }
}
