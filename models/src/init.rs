//! Weight initialisation (docs/lipschitz.md §6.3): orthogonal, zero, and unit-RMS embedding
//! columns.

use candle_core::{DType, Device, Tensor};
use rand_distr::{Distribution, StandardNormal};
use spectra_core::linalg::svd::{compose, from_faer, thin_svd};
use spectra_core::{Result, SpectraRng};

/// `rows × cols` entries drawn from N(0, 1), as f32.
pub fn gaussian(rows: usize, cols: usize, rng: &mut SpectraRng, device: &Device) -> Result<Tensor> {
    let data: Vec<f32> = (0..rows * cols)
        .map(|_| StandardNormal.sample(rng))
        .collect();
    Ok(Tensor::from_vec(data, (rows, cols), device)?)
}

/// `orthogonalize(N(0,1)) · sqrt(fan_out/fan_in)`: every singular value of the normalised matrix is 1,
/// so the RMS→RMS norm is 1. The paper orthogonalises with Muon's Newton–Schulz iteration, which leaves
/// singular values in about [0.87, 1]; the exact polar factor gives exactly 1.
pub fn orthogonal(
    fan_out: usize,
    fan_in: usize,
    rng: &mut SpectraRng,
    device: &Device,
) -> Result<Tensor> {
    let g = gaussian(fan_out, fan_in, rng, device)?;
    let svd = thin_svd(&g)?;
    let ones = vec![(fan_out as f64 / fan_in as f64).sqrt(); svd.s.len()];
    from_faer(
        compose(svd.u.as_ref(), &ones, svd.v.as_ref()).as_ref(),
        DType::F32,
        device,
    )
}

/// `d × vocab`, one column per token, each column of RMS exactly 1.
pub fn unit_rms_columns(
    d: usize,
    vocab: usize,
    rng: &mut SpectraRng,
    device: &Device,
) -> Result<Tensor> {
    let g = gaussian(d, vocab, rng, device)?;
    let rms = g.sqr()?.mean_keepdim(0)?.sqrt()?;
    Ok(g.broadcast_div(&rms)?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use spectra_core::rng::derived_rng;

    #[test]
    fn embedding_columns_have_unit_rms() {
        let e = unit_rms_columns(16, 5, &mut derived_rng(1, 0), &Device::Cpu).unwrap();
        let rms = e
            .sqr()
            .unwrap()
            .mean(0)
            .unwrap()
            .sqrt()
            .unwrap()
            .to_vec1::<f32>()
            .unwrap();
        for r in rms {
            // One f32 division and a 16-term mean.
            assert!((r - 1.0).abs() < 1e-5, "{r}");
        }
    }

    #[test]
    fn orthogonal_init_has_unit_rms_to_rms_norm() {
        for (rows, cols) in [(8, 8), (12, 4), (4, 12)] {
            let w = orthogonal(rows, cols, &mut derived_rng(2, 0), &Device::Cpu).unwrap();
            let norm = crate::certificate::rms_to_rms_norm(&w).unwrap();
            // The exact SVD of an f32 matrix: relative error ~1e-6.
            assert!((norm - 1.0).abs() < 1e-4, "{rows}x{cols}: {norm}");
        }
    }
}
