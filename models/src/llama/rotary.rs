//! The decoder's RoPE tables from the model's `RopeSpec` (any positions, pairing and scaling).

use candle_core::Device;
use spectra_core::rope::{RopePairing, RopeSpec};
use spectra_core::Result;
use spectra_kernels::rope::Rope;

/// The rotation tables of `positions`, built once per forward pass and shared by every layer's
/// queries and keys; phases from the spec in f64.
pub fn rope_at(spec: &RopeSpec, positions: &[u64], device: &Device) -> Result<Rope> {
    Ok(Rope::at_positions(
        spec.bands(),
        positions,
        |f, p| spec.phase(f, p as f64),
        spec.attention_scaling,
        spec.pairing == RopePairing::Interleaved,
        device,
    )?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Tensor;
    use spectra_core::rope::RopeScaling;

    /// The tensor path must agree with the spec's scalar f64 rotation, for both pairings.
    #[test]
    fn matches_the_scalar_rotation() {
        for pairing in [RopePairing::Half, RopePairing::Interleaved] {
            let spec = RopeSpec::new(8, 10000.0, pairing, RopeScaling::None);
            let data: Vec<f32> = (0..2 * 3 * 8)
                .map(|i| ((i * 7 % 11) as f32 - 5.0) / 3.0)
                .collect();
            let x = Tensor::from_vec(data.clone(), (2, 3, 8), &Device::Cpu).unwrap();
            let positions = [0u64, 17, 70_000];
            let y = rope_at(&spec, &positions, &Device::Cpu)
                .unwrap()
                .apply_fused(&x)
                .unwrap()
                .to_vec3::<f32>()
                .unwrap();
            for h in 0..2 {
                for (t, &p) in positions.iter().enumerate() {
                    let row: Vec<f64> = data[(h * 3 + t) * 8..][..8]
                        .iter()
                        .map(|&v| f64::from(v))
                        .collect();
                    let want = spec.rotate(&row, p as f64).unwrap();
                    for (got, want) in y[h][t].iter().zip(want) {
                        // f32 storage of cos/sin and of the result: a few ulps of values of size ~2.
                        assert!(
                            (f64::from(*got) - want).abs() < 1e-5,
                            "{pairing:?} p={p}: {got} vs {want}"
                        );
                    }
                }
            }
        }
    }
}
