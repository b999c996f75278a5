//! Random weights and inputs for the Lipschitz GPT's tests, and the certificate's sequence norm.

#![allow(dead_code)] // each test file uses a different subset

use candle_core::{DType, Device, Tensor};
use rand::Rng;
use spectra::models::{LipschitzGpt, Model};
use spectra_core::linalg::svd::with_singular_values;
use spectra_core::SpectraRng;

/// Every matrix gets singular values spread up to `top` (RMS→RMS norm `top`), embedding columns unit RMS.
pub fn randomize(gpt: &LipschitzGpt, top: f64, rng: &mut SpectraRng) {
    for p in gpt.params() {
        let (rows, cols) = p.var.dims2().unwrap();
        if p.name == "embed" {
            continue;
        }
        let k = rows.min(cols);
        let scale = (rows as f64 / cols as f64).sqrt();
        let sigmas: Vec<f64> = (0..k)
            .map(|i| top * scale * (1.0 - 0.5 * i as f64 / k as f64))
            .collect();
        let w = with_singular_values(rows, cols, &sigmas, rng, DType::F32, &Device::Cpu).unwrap();
        p.var.set(&w).unwrap();
    }
}

/// The RMS of each row of `[.., d]` over its last dimension, in f64.
pub fn row_rms(x: &Tensor) -> Tensor {
    let last = x.rank() - 1;
    x.to_dtype(DType::F64)
        .unwrap()
        .sqr()
        .unwrap()
        .mean_keepdim(last)
        .unwrap()
        .sqrt()
        .unwrap()
}

/// The largest per-position RMS of `[batch, seq, d]`, per batch element.
pub fn seq_norms(x: &Tensor) -> Vec<f64> {
    row_rms(x)
        .squeeze(2)
        .unwrap()
        .max(1)
        .unwrap()
        .to_vec1::<f64>()
        .unwrap()
}

/// Random sequences with each position's RMS drawn uniformly in (0.05·r, r].
pub fn random_inputs(b: usize, t: usize, d: usize, r: f64, rng: &mut SpectraRng) -> Tensor {
    let g = spectra::models::init::gaussian(b * t, d, rng, &Device::Cpu).unwrap();
    let rms = g.sqr().unwrap().mean_keepdim(1).unwrap().sqrt().unwrap();
    let radii: Vec<f32> = (0..b * t)
        .map(|_| (r * rng.random_range(0.05..1.0)) as f32)
        .collect();
    let radii = Tensor::from_vec(radii, (b * t, 1), &Device::Cpu).unwrap();
    g.broadcast_div(&rms)
        .unwrap()
        .broadcast_mul(&radii)
        .unwrap()
        .reshape((b, t, d))
        .unwrap()
}
