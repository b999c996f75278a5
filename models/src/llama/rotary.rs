//! RoPE on tensors, for any positions, pairing and scaling a `RopeSpec` describes.

use candle_core::{Device, Tensor};
use spectra_core::rope::{RopePairing, RopeSpec};
use spectra_core::Result;

/// cos/sin tables for one set of positions, built once per forward pass and shared by every layer's
/// queries and keys. Phases come from the spec in f64 (positions far beyond 2^24 would lose whole
/// radians in f32).
pub struct Rotary {
    cos: Tensor,
    sin: Tensor,
    pairing: RopePairing,
}

impl Rotary {
    pub fn new(spec: &RopeSpec, positions: &[u64], device: &Device) -> Result<Self> {
        let bands = spec.bands();
        let a = spec.attention_scaling;
        let mut cos = Vec::with_capacity(positions.len() * bands);
        let mut sin = Vec::with_capacity(positions.len() * bands);
        for &p in positions {
            for f in 0..bands {
                let phase = spec.phase(f, p as f64);
                cos.push((a * phase.cos()) as f32);
                sin.push((a * phase.sin()) as f32);
            }
        }
        Ok(Rotary {
            cos: Tensor::from_vec(cos, (positions.len(), bands), device)?,
            sin: Tensor::from_vec(sin, (positions.len(), bands), device)?,
            pairing: spec.pairing,
        })
    }

    /// Rotates `x` of shape `[heads, tokens, head_dim]`; token `i` sits at the `i`-th position.
    pub fn apply(&self, x: &Tensor) -> Result<Tensor> {
        let cos = self.cos.to_dtype(x.dtype())?;
        let sin = self.sin.to_dtype(x.dtype())?;
        let x4 = x.unsqueeze(0)?.contiguous()?;
        let rotated = match self.pairing {
            RopePairing::Interleaved => candle_nn::rotary_emb::rope_i(&x4, &cos, &sin)?,
            RopePairing::Half => candle_nn::rotary_emb::rope(&x4, &cos, &sin)?,
        };
        Ok(rotated.squeeze(0)?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
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
            let y = Rotary::new(&spec, &positions, &Device::Cpu)
                .unwrap()
                .apply(&x)
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
