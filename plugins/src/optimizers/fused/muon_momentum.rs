//! The fused Muon momentum: one pass over the momentum buffer and the gradient writes the new
//! buffer, the update direction (Nesterov's, when asked) and the direction's squared Frobenius norm,
//! the scaling orthogonalization starts with, so that no further pass or host round trip is needed
//! for it.

use candle_core::{DType, Device, Tensor};

use spectra_core::ops::{cpu_slice, cpu_tensor, elementwise_operands, Float};
use spectra_core::Result;

/// What one momentum step produces.
#[derive(Clone, Debug)]
pub struct MomentumUpdate {
    /// b' = μb + (1−μ)g.
    pub buffer: Tensor,
    /// b' itself, or with Nesterov (1−μ)g + μb' (a separate tensor).
    pub direction: Tensor,
    /// Σ direction², accumulated in f64 (exact to ~n·2⁻⁵³ relative, beyond f32's overflow and
    /// underflow): a 0-d f64 tensor on the operands' device.
    pub direction_sum_sq: Tensor,
}

/// One Muon momentum step of `buffer` with `grad` (same shape, f32 or f64, one device;
/// non-contiguous operands are copied first). The inputs are left unchanged.
pub fn muon_momentum(
    buffer: &Tensor,
    grad: &Tensor,
    momentum: f64,
    nesterov: bool,
) -> Result<MomentumUpdate> {
    let [b, g] = elementwise_operands("muon_momentum", [("buffer", buffer), ("gradient", grad)])?;
    match (b.device(), b.dtype()) {
        (Device::Cpu, DType::F32) => cpu::<f32>([&b, &g], momentum, nesterov),
        (Device::Cpu, DType::F64) => cpu::<f64>([&b, &g], momentum, nesterov),
        #[cfg(feature = "cuda")]
        (Device::Cuda(_), DType::F32) => {
            cuda::momentum::<f32>([&b, &g], momentum, nesterov, "muon_momentum_f32")
        }
        #[cfg(feature = "cuda")]
        (Device::Cuda(_), DType::F64) => {
            cuda::momentum::<f64>([&b, &g], momentum, nesterov, "muon_momentum_f64")
        }
        (device, dtype) => Err(spectra_core::Error::Device(format!(
            "muon_momentum has no kernel for {dtype:?} on {:?}",
            device.location()
        ))),
    }
}

/// Independent partial sums of the CPU path: lets the compiler keep them in vector registers
/// instead of waiting on one serial chain of f64 additions.
const LANES: usize = 8;

fn cpu<T: Float>(operands: [&Tensor; 2], momentum: f64, nesterov: bool) -> Result<MomentumUpdate> {
    let (mu, one_minus_mu) = (T::from_f64(momentum), T::from_f64(1.0 - momentum));
    let locked = operands.map(|t| t.storage_and_layout());
    let b = cpu_slice::<T>(&locked[0].0, locked[0].1, "Muon momentum")?;
    let g = cpu_slice::<T>(&locked[1].0, locked[1].1, "Muon momentum")?;
    let n = b.len();
    let mut b_out = vec![T::zero(); n];
    let mut d_out = if nesterov {
        vec![T::zero(); n]
    } else {
        Vec::new()
    };
    let mut lanes = [0f64; LANES];
    let step = |b: T, g: T| {
        let g = g * one_minus_mu;
        let b = b * mu + g;
        (b, if nesterov { g + b * mu } else { b })
    };
    if nesterov {
        for (i, ((b_out, d_out), (&b, &g))) in b_out
            .iter_mut()
            .zip(&mut d_out)
            .zip(b.iter().zip(g))
            .enumerate()
        {
            let (b, d) = step(b, g);
            *b_out = b;
            *d_out = d;
            lanes[i % LANES] += d.to_f64() * d.to_f64();
        }
    } else {
        for (i, (b_out, (&b, &g))) in b_out.iter_mut().zip(b.iter().zip(g)).enumerate() {
            let (b, _) = step(b, g);
            *b_out = b;
            lanes[i % LANES] += b.to_f64() * b.to_f64();
        }
    }
    let shape = operands[0].shape();
    let buffer = cpu_tensor(b_out, shape);
    let direction = if nesterov {
        cpu_tensor(d_out, shape)
    } else {
        buffer.clone()
    };
    Ok(MomentumUpdate {
        buffer,
        direction,
        direction_sum_sq: Tensor::new(lanes.iter().sum::<f64>(), &Device::Cpu)?,
    })
}

#[cfg(feature = "cuda")]
mod cuda {
    use candle_core::cuda_backend::cudarc::driver::{DeviceRepr, PushKernelArg};
    use candle_core::cuda_backend::CudaDType;
    use candle_core::{Shape, Tensor};

    use super::MomentumUpdate;
    use spectra_core::ops::cuda::{output, tensor, view};
    use spectra_core::ops::grid::{elementwise, BLOCK};
    use spectra_core::ops::nvrtc::{cuda_function, launch_error, KernelModule};
    use spectra_core::ops::Float;
    use spectra_core::Result;

    const MODULE: KernelModule = KernelModule::new(
        "spectra_muon_momentum",
        spectra_kernels::cuda::MUON_MOMENTUM,
    );

    pub(super) fn momentum<T: Float + CudaDType + DeviceRepr>(
        operands: [&Tensor; 2],
        momentum: f64,
        nesterov: bool,
        function: &str,
    ) -> Result<MomentumUpdate> {
        // The kernel's shared array is sized for this block size.
        const _: () = assert!(BLOCK == 256);
        let locked = operands.map(|t| t.storage_and_layout());
        let (b, device) = view::<T>(&locked[0].0, locked[0].1, "Muon momentum")?;
        let (g, _) = view::<T>(&locked[1].0, locked[1].1, "Muon momentum")?;
        let n = b.len();
        let func = cuda_function(device, &MODULE, function)?;
        let grid = elementwise(n);
        let blocks = grid.blocks as usize;
        let b_out = output::<T>(device, n)?;
        // Without Nesterov the direction is b' itself; the kernel never touches d_out then.
        let d_out = output::<T>(device, if nesterov { n } else { 1 })?;
        let partial = output::<f64>(device, blocks)?;
        let (n_arg, mu, one_minus_mu, nesterov_arg) = (
            n as u64,
            T::from_f64(momentum),
            T::from_f64(1.0 - momentum),
            i32::from(nesterov),
        );
        let mut launch = func.builder();
        launch.arg(&n_arg).arg(&b).arg(&g);
        launch.arg(&b_out).arg(&d_out).arg(&partial);
        launch.arg(&mu).arg(&one_minus_mu).arg(&nesterov_arg);
        // SAFETY: the arguments match the kernel's signature in order and type; b, g and b_out
        // hold n elements, d_out n when the kernel writes it, partial one per block.
        unsafe { launch.launch(grid.config()) }.map_err(|e| launch_error(&MODULE, function, e))?;
        let shape = operands[0].shape();
        let buffer = tensor(b_out, device, shape);
        let direction = if nesterov {
            tensor(d_out, device, shape)
        } else {
            buffer.clone()
        };
        let partial = tensor(partial, device, &Shape::from(blocks));
        Ok(MomentumUpdate {
            buffer,
            direction,
            direction_sum_sq: partial.sum_all()?,
        })
    }
}

#[cfg(test)]
mod tests {
    use rand::SeedableRng;
    use rand_distr::{Distribution, StandardNormal};

    use super::*;
    use spectra_core::rng::SpectraRng;

    /// The unfused candle-op chain the fused op replaces (the oracle): buffer and direction.
    fn chain(b: &Tensor, g: &Tensor, mu: f64, nesterov: bool) -> (Tensor, Tensor) {
        let b = ((b * mu).unwrap() + (g * (1.0 - mu)).unwrap()).unwrap();
        let d = if nesterov {
            ((g * (1.0 - mu)).unwrap() + (&b * mu).unwrap()).unwrap()
        } else {
            b.clone()
        };
        (b, d)
    }

    fn values(t: &Tensor) -> Vec<f64> {
        t.flatten_all()
            .unwrap()
            .to_dtype(DType::F64)
            .unwrap()
            .to_vec1()
            .unwrap()
    }

    fn gaussian(shape: (usize, usize), rng: &mut SpectraRng, dtype: DType) -> Tensor {
        let data: Vec<f64> = (0..shape.0 * shape.1)
            .map(|_| StandardNormal.sample(rng))
            .collect();
        Tensor::from_vec(data, shape, &Device::Cpu)
            .unwrap()
            .to_dtype(dtype)
            .unwrap()
    }

    #[test]
    fn fused_momentum_equals_the_candle_chain() {
        let mut rng = SpectraRng::seed_from_u64(8);
        for dtype in [DType::F32, DType::F64] {
            for nesterov in [false, true] {
                // 37×29 = 1073 entries: not a multiple of the CPU path's lanes.
                let shape = (37, 29);
                let mut fused = Tensor::zeros(shape, dtype, &Device::Cpu).unwrap();
                let mut unfused = fused.clone();
                for (step, mu) in [0.85, 0.9, 0.95].into_iter().enumerate() {
                    let g = gaussian(shape, &mut rng, dtype);
                    let out = muon_momentum(&fused, &g, mu, nesterov).unwrap();
                    let (b, d) = chain(&unfused, &g, mu, nesterov);
                    let what = format!("{dtype:?} nesterov {nesterov} step {step}");
                    // The same correctly rounded operations in the same order: equal to the last bit.
                    assert_eq!(values(&out.buffer), values(&b), "buffer, {what}");
                    assert_eq!(values(&out.direction), values(&d), "direction, {what}");
                    // Σd² of the same values in another order (f64 partial sums): each order is within
                    // n·2⁻⁵³ ≈ 1.2e-13 relative of the exact sum.
                    let want: f64 = values(&d).iter().map(|x| x * x).sum();
                    let got = out.direction_sum_sq.to_scalar::<f64>().unwrap();
                    assert!(
                        (got - want).abs() <= 2.5e-13 * want,
                        "Σd², {what}: {got} vs {want}"
                    );
                    assert_eq!(out.direction_sum_sq.dims(), &[] as &[usize]);
                    fused = out.buffer;
                    unfused = b;
                }
            }
        }
    }

    #[test]
    fn the_sum_of_squares_survives_what_f32_cannot_hold() {
        // Entries of 1e20 square to 1e40 (beyond f32) and of 1e-25 to 1e-50 (below f32's subnormals):
        // the f64 accumulation keeps both exact to rounding.
        for scale in [1e20f64, 1e-25] {
            let g = Tensor::new(&[3.0 * scale, 4.0 * scale], &Device::Cpu)
                .unwrap()
                .to_dtype(DType::F32)
                .unwrap();
            let b = g.zeros_like().unwrap();
            // μ = 0: the direction is g itself.
            let out = muon_momentum(&b, &g, 0.0, false).unwrap();
            let ss = out.direction_sum_sq.to_scalar::<f64>().unwrap();
            let g32 = values(&g);
            let want = g32[0] * g32[0] + g32[1] * g32[1];
            assert!((ss / want - 1.0).abs() < 1e-15, "{scale}: {ss} vs {want}");
            assert!((ss.sqrt() / (5.0 * scale) - 1.0).abs() < 1e-7, "{scale}");
        }
    }

    #[test]
    fn mismatched_operands_are_named() {
        let a = Tensor::zeros((2, 3), DType::F32, &Device::Cpu).unwrap();
        let b = Tensor::zeros(6, DType::F32, &Device::Cpu).unwrap();
        let err = muon_momentum(&a, &b, 0.9, true).unwrap_err().to_string();
        assert!(err.contains("`gradient`") && err.contains("[6]"), "{err}");
    }
}
