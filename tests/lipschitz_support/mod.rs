//! Random weights for the Lipschitz GPT's tests.

use candle_core::{DType, Device};
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
