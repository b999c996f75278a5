//! The Lipschitz GPT's residual connection `(1 − a)·x + a·f(x)` with `a = 1/(2L)`
//! (docs/lipschitz.md §6.2).
//!
//! On the CPU (f32) one op: candle's chain (two scalings and a sum) is three nodes of the stream's size
//! in the graph, each written forward and each given a zero-filled gradient buffer that its gradient is
//! then added to backward; six residuals per step of the paper's GPT. Backward is the two scalings of
//! the incoming gradient. The values are the chain's bit for bit. Elsewhere candle's kernels run.

use candle_core::{CpuStorage, CustomOp2, DType, Layout, Result, Shape, Tensor};
use rayon::prelude::*;

use crate::storage::contiguous_cpu;

/// `(1 − a)·x + a·f` for tensors of one shape.
pub fn residual(x: &Tensor, f: &Tensor, a: f64) -> Result<Tensor> {
    if x.dims() != f.dims() {
        candle_core::bail!("residual: x is {:?} but f(x) is {:?}", x.dims(), f.dims());
    }
    if x.device().is_cpu() && x.dtype() == DType::F32 && f.dtype() == DType::F32 {
        x.contiguous()?.apply_op2(&f.contiguous()?, Residual { a })
    } else {
        residual_chain(x, f, a)
    }
}

fn residual_chain(x: &Tensor, f: &Tensor, a: f64) -> Result<Tensor> {
    (x * (1.0 - a))? + (f * a)?
}

/// Elements per rayon task.
const PAR_CHUNK: usize = 1 << 14;

struct Residual {
    a: f64,
}

impl CustomOp2 for Residual {
    fn name(&self) -> &'static str {
        "residual"
    }

    fn cpu_fwd(
        &self,
        xs: &CpuStorage,
        xl: &Layout,
        fs: &CpuStorage,
        fl: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let (x, f) = (
            contiguous_cpu::<f32>(xs, xl, self.name())?,
            contiguous_cpu::<f32>(fs, fl, self.name())?,
        );
        // As candle's affine ops apply them: f32 factors, `v·m + 0`.
        let (keep, mix) = ((1.0 - self.a) as f32, self.a as f32);
        let mut out = vec![0f32; x.len()];
        out.par_chunks_mut(PAR_CHUNK)
            .zip(x.par_chunks(PAR_CHUNK).zip(f.par_chunks(PAR_CHUNK)))
            .for_each(|(out, (x, f))| {
                for (o, (&x, &f)) in out.iter_mut().zip(x.iter().zip(f)) {
                    *o = (x * keep + 0.0) + (f * mix + 0.0);
                }
            });
        Ok((CpuStorage::F32(out), xl.shape().clone()))
    }

    fn bwd(
        &self,
        _x: &Tensor,
        _f: &Tensor,
        _out: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>)> {
        Ok((
            Some(grad.affine(1.0 - self.a, 0.0)?),
            Some(grad.affine(self.a, 0.0)?),
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{Device, Var};

    fn values(n: usize, seed: usize) -> Tensor {
        let data: Vec<f32> = (0..n)
            .map(|i| (((i * 31 + seed * 7) % 97) as f32 - 48.0) / 13.0)
            .collect();
        Tensor::from_vec(data, (n / 5, 5), &Device::Cpu).unwrap()
    }

    #[test]
    fn fused_op_is_the_chain_bit_for_bit_forward_and_backward() {
        for a in [1.0 / 6.0, 0.5, 0.01] {
            let run = |fused: bool| {
                let x = Var::from_tensor(&values(40_000, 1)).unwrap();
                let f = Var::from_tensor(&values(40_000, 2)).unwrap();
                let y = if fused {
                    residual(x.as_tensor(), f.as_tensor(), a).unwrap()
                } else {
                    residual_chain(x.as_tensor(), f.as_tensor(), a).unwrap()
                };
                let w = values(40_000, 3).sin().unwrap();
                let grads = (&y * w).unwrap().sum_all().unwrap().backward().unwrap();
                let flat = |t: &Tensor| t.flatten_all().unwrap().to_vec1::<f32>().unwrap();
                [
                    flat(&y),
                    flat(grads.get(&x).unwrap()),
                    flat(grads.get(&f).unwrap()),
                ]
            };
            assert_eq!(run(true), run(false), "a = {a}");
        }
    }

    #[test]
    fn a_hand_computed_mix() {
        let x = Tensor::new(&[3f32, -6.0], &Device::Cpu).unwrap();
        let f = Tensor::new(&[9f32, 0.0], &Device::Cpu).unwrap();
        let y = residual(&x, &f, 1.0 / 3.0)
            .unwrap()
            .to_vec1::<f32>()
            .unwrap();
        assert!(
            (y[0] - 5.0).abs() < 1e-6 && (y[1] + 4.0).abs() < 1e-6,
            "{y:?}"
        );
        let e = residual(&x, &values(10, 0), 0.5).unwrap_err().to_string();
        assert!(e.contains("f(x) is [2, 5]"), "{e}");
    }
}
