//! The fused AdamW update: one pass reads the weight, the gradient and both moments and writes the
//! new weight and moments (28 bytes per f32 entry), where the candle-op chain it replaces runs 15
//! elementwise operations, each a pass over memory of its own.

use candle_core::{DType, Device, Tensor};

use spectra_core::ops::{cpu_slice, cpu_tensor, elementwise_operands, Float};
use spectra_core::Result;

/// The scalars of one AdamW update, folded on the host so that one kernel serves every variant
/// (bias-corrected or not, the JAX variant's decay scaled by the target norm, ...):
///
/// m' = β₁m + (1−β₁)g, v' = β₂v + (1−β₂)g², d = m'·c_m / (√(v'·c_v) + eps),
/// W' = W·weight_scale − lr·d.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct AdamWScalars {
    pub beta1: f64,
    pub beta2: f64,
    /// c_m: 1/(1 − β₁ᵗ) with bias correction at update t, 1 without.
    pub m_correction: f64,
    /// c_v: 1/(1 − β₂ᵗ) with bias correction at update t, 1 without.
    pub v_correction: f64,
    pub eps: f64,
    pub lr: f64,
    /// 1 − the decoupled decay of this step (wd·lr, times the target norm in the JAX variant).
    pub weight_scale: f64,
}

impl AdamWScalars {
    /// (c_m, c_v) for update `t` (1-based): Adam's bias corrections, or (1, 1) without them.
    pub fn corrections(beta1: f64, beta2: f64, t: u64, bias_correction: bool) -> (f64, f64) {
        if !bias_correction {
            return (1.0, 1.0);
        }
        let t = i32::try_from(t).unwrap_or(i32::MAX);
        (1.0 / (1.0 - beta1.powi(t)), 1.0 / (1.0 - beta2.powi(t)))
    }

    /// The scalars in the tensors' element type, in kernel argument order. Differences such as
    /// 1 − β₁ are formed in f64 and rounded once, as candle's `affine` does with its f64 factors.
    pub fn kernel_scalars<T: Float>(&self) -> [T; 9] {
        [
            self.beta1,
            1.0 - self.beta1,
            self.beta2,
            1.0 - self.beta2,
            self.m_correction,
            self.v_correction,
            self.eps,
            self.lr,
            self.weight_scale,
        ]
        .map(T::from_f64)
    }
}

/// The new weight and moments, each a fresh tensor shaped like the weight.
#[derive(Clone, Debug)]
pub struct AdamWUpdate {
    pub weight: Tensor,
    pub m: Tensor,
    pub v: Tensor,
}

/// One AdamW update of `weight` from `grad` and the moments `m`, `v` (all of one shape, f32 or f64,
/// on one device; non-contiguous operands are copied first). The inputs are left unchanged, so a
/// caller can still discard the result.
pub fn adamw_update(
    weight: &Tensor,
    grad: &Tensor,
    m: &Tensor,
    v: &Tensor,
    scalars: &AdamWScalars,
) -> Result<AdamWUpdate> {
    let [w, g, m, v] = elementwise_operands(
        "adamw_update",
        [("weight", weight), ("gradient", grad), ("m", m), ("v", v)],
    )?;
    match (w.device(), w.dtype()) {
        (Device::Cpu, DType::F32) => cpu::<f32>([&w, &g, &m, &v], scalars),
        (Device::Cpu, DType::F64) => cpu::<f64>([&w, &g, &m, &v], scalars),
        #[cfg(feature = "cuda")]
        (Device::Cuda(_), DType::F32) => {
            cuda::update::<f32>([&w, &g, &m, &v], scalars, "adamw_f32")
        }
        #[cfg(feature = "cuda")]
        (Device::Cuda(_), DType::F64) => {
            cuda::update::<f64>([&w, &g, &m, &v], scalars, "adamw_f64")
        }
        (device, dtype) => Err(spectra_core::Error::Device(format!(
            "adamw_update has no kernel for {dtype:?} on {:?}",
            device.location()
        ))),
    }
}

fn cpu<T: Float>(operands: [&Tensor; 4], scalars: &AdamWScalars) -> Result<AdamWUpdate> {
    let [b1, one_minus_b1, b2, one_minus_b2, cm, cv, eps, lr, ws] = scalars.kernel_scalars::<T>();
    let locked = operands.map(|t| t.storage_and_layout());
    let [w, g, m, v] = [0, 1, 2, 3].map(|i| cpu_slice::<T>(&locked[i].0, locked[i].1, "AdamW"));
    let (w, g, m, v) = (w?, g?, m?, v?);
    let n = w.len();
    let mut w_out = vec![T::zero(); n];
    let mut m_out = vec![T::zero(); n];
    let mut v_out = vec![T::zero(); n];
    for (((((w_out, m_out), v_out), &w), &g), (&m, &v)) in w_out
        .iter_mut()
        .zip(&mut m_out)
        .zip(&mut v_out)
        .zip(w)
        .zip(g)
        .zip(m.iter().zip(v))
    {
        let m = m * b1 + g * one_minus_b1;
        let v = v * b2 + (g * g) * one_minus_b2;
        let d = (m * cm) / ((v * cv).sqrt() + eps);
        *w_out = w * ws - d * lr;
        *m_out = m;
        *v_out = v;
    }
    let shape = operands[0].shape();
    Ok(AdamWUpdate {
        weight: cpu_tensor(w_out, shape),
        m: cpu_tensor(m_out, shape),
        v: cpu_tensor(v_out, shape),
    })
}

#[cfg(feature = "cuda")]
mod cuda {
    use candle_core::cuda_backend::cudarc::driver::{DeviceRepr, PushKernelArg};
    use candle_core::cuda_backend::CudaDType;
    use candle_core::Tensor;

    use super::{AdamWScalars, AdamWUpdate};
    use spectra_core::ops::cuda::{output, tensor, view};
    use spectra_core::ops::grid::elementwise;
    use spectra_core::ops::nvrtc::{cuda_function, launch_error, KernelModule};
    use spectra_core::ops::Float;
    use spectra_core::Result;

    const MODULE: KernelModule = KernelModule::new("spectra_adamw", spectra_kernels::cuda::ADAMW);

    pub(super) fn update<T: Float + CudaDType + DeviceRepr>(
        operands: [&Tensor; 4],
        scalars: &AdamWScalars,
        function: &str,
    ) -> Result<AdamWUpdate> {
        let locked = operands.map(|t| t.storage_and_layout());
        let [w, g, m, v] = [0, 1, 2, 3].map(|i| view::<T>(&locked[i].0, locked[i].1, "AdamW"));
        let ((w, device), (g, _), (m, _), (v, _)) = (w?, g?, m?, v?);
        let n = w.len();
        let func = cuda_function(device, &MODULE, function)?;
        let (w_out, m_out, v_out) = (
            output::<T>(device, n)?,
            output::<T>(device, n)?,
            output::<T>(device, n)?,
        );
        let args = scalars.kernel_scalars::<T>();
        let n_arg = n as u64;
        let mut launch = func.builder();
        launch.arg(&n_arg);
        launch.arg(&w).arg(&g).arg(&m).arg(&v);
        launch.arg(&w_out).arg(&m_out).arg(&v_out);
        for a in &args {
            launch.arg(a);
        }
        // SAFETY: the arguments match the kernel's signature in order and type; every view and
        // output holds n elements of T.
        unsafe { launch.launch(elementwise(n).config()) }
            .map_err(|e| launch_error(&MODULE, function, e))?;
        let shape = operands[0].shape();
        Ok(AdamWUpdate {
            weight: tensor(w_out, device, shape),
            m: tensor(m_out, device, shape),
            v: tensor(v_out, device, shape),
        })
    }
}

#[cfg(test)]
mod tests {
    use rand::SeedableRng;
    use rand_distr::{Distribution, StandardNormal};

    use super::*;
    use spectra_core::rng::SpectraRng;

    /// The unfused candle-op chain the fused op replaces (the oracle), one op per pass.
    fn chain(
        w: &Tensor,
        g: &Tensor,
        m: &Tensor,
        v: &Tensor,
        s: &AdamWScalars,
    ) -> (Tensor, Tensor, Tensor) {
        let m = ((m * s.beta1).unwrap() + (g * (1.0 - s.beta1)).unwrap()).unwrap();
        let v = ((v * s.beta2).unwrap() + (g.sqr().unwrap() * (1.0 - s.beta2)).unwrap()).unwrap();
        let m_hat = m.affine(s.m_correction, 0.0).unwrap();
        let v_hat = v.affine(s.v_correction, 0.0).unwrap();
        let d = m_hat
            .div(&v_hat.sqrt().unwrap().affine(1.0, s.eps).unwrap())
            .unwrap();
        let w = (w.affine(s.weight_scale, 0.0).unwrap() - d.affine(s.lr, 0.0).unwrap()).unwrap();
        (w, m, v)
    }

    fn gaussian(n: usize, std: f64, rng: &mut SpectraRng) -> Vec<f64> {
        (0..n)
            .map(|_| {
                let z: f64 = StandardNormal.sample(rng);
                std * z
            })
            .collect()
    }

    fn values(t: &Tensor) -> Vec<f64> {
        t.flatten_all()
            .unwrap()
            .to_dtype(DType::F64)
            .unwrap()
            .to_vec1()
            .unwrap()
    }

    /// Scalars of update t for the plain (bias-corrected) AdamW, and the JAX variant's (β₂ 0.95,
    /// eps 1e-12, no correction, decay × target norm 0.5).
    fn variants(t: u64) -> [AdamWScalars; 2] {
        let (lr, wd) = (0.01, 0.1);
        let (cm, cv) = AdamWScalars::corrections(0.9, 0.999, t, true);
        [
            AdamWScalars {
                beta1: 0.9,
                beta2: 0.999,
                m_correction: cm,
                v_correction: cv,
                eps: 1e-8,
                lr,
                weight_scale: 1.0 - wd * lr,
            },
            AdamWScalars {
                beta1: 0.9,
                beta2: 0.95,
                m_correction: 1.0,
                v_correction: 1.0,
                eps: 1e-12,
                lr,
                weight_scale: 1.0 - wd * lr * 0.5,
            },
        ]
    }

    #[test]
    fn fused_update_equals_the_candle_chain_exactly() {
        let mut rng = SpectraRng::seed_from_u64(3);
        for variant in 0..2 {
            for dtype in [DType::F32, DType::F64] {
                let shape = (7, 13);
                let n = 7 * 13;
                let tensor = |v: Vec<f64>| {
                    Tensor::from_vec(v, shape, &Device::Cpu)
                        .unwrap()
                        .to_dtype(dtype)
                        .unwrap()
                };
                let mut fused = (
                    tensor(gaussian(n, 0.3, &mut rng)),
                    Tensor::zeros(shape, dtype, &Device::Cpu).unwrap(),
                    Tensor::zeros(shape, dtype, &Device::Cpu).unwrap(),
                );
                let mut unfused = fused.clone();
                for t in 1..=5 {
                    // Gradients of mixed scale, exact zeros included (v = 0 until a nonzero g arrives).
                    let mut g = gaussian(n, 10f64.powi(t as i32 - 3), &mut rng);
                    g[0] = 0.0;
                    let g = tensor(g);
                    let s = variants(t)[variant];
                    let out = adamw_update(&fused.0, &g, &fused.1, &fused.2, &s).unwrap();
                    fused = (out.weight, out.m, out.v);
                    unfused = chain(&unfused.0, &g, &unfused.1, &unfused.2, &s);
                    // The same correctly rounded operations in the same order: equal to the last bit
                    // (up to the sign of zero, which `==` ignores).
                    for (f, u, what) in [
                        (&fused.0, &unfused.0, "weight"),
                        (&fused.1, &unfused.1, "m"),
                        (&fused.2, &unfused.2, "v"),
                    ] {
                        assert_eq!(
                            values(f),
                            values(u),
                            "{what}, {dtype:?}, variant {variant}, step {t}"
                        );
                    }
                }
            }
        }
    }

    #[test]
    fn fused_update_follows_an_f64_recomputation_over_several_steps() {
        let mut rng = SpectraRng::seed_from_u64(4);
        let n = 257;
        let f32_tensor = |v: &[f64]| {
            Tensor::from_vec(v.to_vec(), n, &Device::Cpu)
                .unwrap()
                .to_dtype(DType::F32)
                .unwrap()
        };
        for variant in 0..2 {
            // The f32 run's starting weights, exactly representable, so both runs start equal.
            let w0 = values(&f32_tensor(&gaussian(n, 0.3, &mut rng)));
            let (mut w, mut m, mut v) = (
                f32_tensor(&w0),
                Tensor::zeros(n, DType::F32, &Device::Cpu).unwrap(),
                Tensor::zeros(n, DType::F32, &Device::Cpu).unwrap(),
            );
            let (mut w64, mut m64, mut v64) = (w0.clone(), vec![0.0; n], vec![0.0; n]);
            for t in 1..=6 {
                let g = values(&f32_tensor(&gaussian(n, 1.0, &mut rng)));
                let s = variants(t)[variant];
                let out = adamw_update(&w, &f32_tensor(&g), &m, &v, &s).unwrap();
                (w, m, v) = (out.weight, out.m, out.v);
                for i in 0..n {
                    m64[i] = s.beta1 * m64[i] + (1.0 - s.beta1) * g[i];
                    v64[i] = s.beta2 * v64[i] + (1.0 - s.beta2) * g[i] * g[i];
                    let d = m64[i] * s.m_correction / ((v64[i] * s.v_correction).sqrt() + s.eps);
                    w64[i] = w64[i] * s.weight_scale - s.lr * d;
                }
                // f32 rounding, u = 2⁻²⁴ ≈ 6e-8 per operation: m and v are convex combinations of g
                // and g² (|g| < 6 here), off by a few u of that scale per step; W moves by lr·d with d
                // of order 1 and ~10 roundings, and is rounded once per step. Six steps measure
                // ≤ 8e-8 on m and v and ≤ 2e-7 on W; 1e-6 leaves a factor of 5 or more.
                let err = |a: &Tensor, b: &[f64]| {
                    values(a)
                        .iter()
                        .zip(b)
                        .map(|(x, y)| (x - y).abs())
                        .fold(0.0, f64::max)
                };
                let what = format!("variant {variant}, step {t}");
                assert!(err(&m, &m64) < 1e-6, "m: {what}: {}", err(&m, &m64));
                assert!(err(&v, &v64) < 1e-6, "v: {what}: {}", err(&v, &v64));
                assert!(err(&w, &w64) < 1e-6, "W: {what}: {}", err(&w, &w64));
            }
        }
    }

    #[test]
    fn non_contiguous_operands_are_read_through_their_layout() {
        let mut rng = SpectraRng::seed_from_u64(5);
        let wide = |rng: &mut SpectraRng| {
            Tensor::from_vec(gaussian(15, 1.0, rng), (3, 5), &Device::Cpu)
                .unwrap()
                .to_dtype(DType::F32)
                .unwrap()
        };
        let (w, g, m) = (wide(&mut rng), wide(&mut rng), wide(&mut rng));
        let v = wide(&mut rng).sqr().unwrap();
        let s = variants(3)[0];
        // Transposed views: strides (1, 5), not contiguous.
        let transposed = adamw_update(
            &w.t().unwrap(),
            &g.t().unwrap(),
            &m.t().unwrap(),
            &v.t().unwrap(),
            &s,
        )
        .unwrap();
        let (want_w, want_m, want_v) = chain(&w, &g, &m, &v, &s);
        assert_eq!(values(&transposed.weight), values(&want_w.t().unwrap()));
        assert_eq!(values(&transposed.m), values(&want_m.t().unwrap()));
        assert_eq!(values(&transposed.v), values(&want_v.t().unwrap()));
        assert_eq!(transposed.weight.dims(), &[5, 3]);
    }

    #[test]
    fn mismatched_or_unsupported_operands_are_named() {
        let dev = Device::Cpu;
        let s = variants(1)[0];
        let a = Tensor::zeros((2, 3), DType::F32, &dev).unwrap();
        let other_shape = Tensor::zeros((3, 2), DType::F32, &dev).unwrap();
        let err = adamw_update(&a, &other_shape, &a, &a, &s)
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("`gradient`") && err.contains("[3, 2]"),
            "{err}"
        );
        let other_dtype = Tensor::zeros((2, 3), DType::F64, &dev).unwrap();
        let err = adamw_update(&a, &a, &a, &other_dtype, &s)
            .unwrap_err()
            .to_string();
        assert!(err.contains("`v`") && err.contains("F64"), "{err}");
        let bf16 = a.to_dtype(DType::BF16).unwrap();
        let err = adamw_update(&bf16, &bf16, &bf16, &bf16, &s)
            .unwrap_err()
            .to_string();
        assert!(err.contains("f32 or f64") && err.contains("BF16"), "{err}");
    }

    #[test]
    fn bias_corrections_are_adams() {
        let (cm, cv) = AdamWScalars::corrections(0.9, 0.999, 2, true);
        // 1/(1 − 0.81), 1/(1 − 0.998001).
        assert!((cm - 1.0 / 0.19).abs() < 1e-12 && (cv - 1.0 / 0.001999).abs() < 1e-9);
        assert_eq!(AdamWScalars::corrections(0.9, 0.999, 2, false), (1.0, 1.0));
    }
}
