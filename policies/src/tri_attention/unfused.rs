//! The host path the key score op replaced, kept as its test oracle: per key, the band norms in one
//! pass, the norm term as one dot product, and each form as a dot product with the whole key in the
//! key's own coordinate layout (summed in 16 interleaved partial sums, another order than the op's).

use candle_core::{DType, Tensor};
use spectra_core::rope::RopePairing;

use super::scoring::{GroupForms, OffsetAggregation};

/// Raw scores `[group][n]` of the keys `[n, head_dim]` (any dtype; copied to the host as f32).
pub fn unfused_scores(
    forms: &GroupForms,
    keys: &Tensor,
    pairing: RopePairing,
    aggregation: OffsetAggregation,
) -> Vec<Vec<f32>> {
    let (n, d) = keys.dims2().unwrap();
    let keys: Vec<f32> = keys
        .to_dtype(DType::F32)
        .unwrap()
        .flatten_all()
        .unwrap()
        .to_vec1()
        .unwrap();
    let bands = d / 2;
    // The forms scattered to the key's coordinates: u_f at Re(f)'s index, v_f at Im(f)'s.
    let rows: Vec<Vec<f32>> = (0..forms.group * forms.forms)
        .map(|row| {
            let (u, v) = forms.form(row / forms.forms, row % forms.forms);
            let mut w = vec![0f32; d];
            for f in 0..bands {
                let (re, im) = pairing.coordinates(d, f);
                w[re] = u[f];
                w[im] = v[f];
            }
            w
        })
        .collect();
    let mut out = vec![vec![0f32; n]; forms.group];
    let mut norms = vec![0f32; bands];
    let mut values = vec![0f32; forms.forms];
    for (j, key) in keys.chunks_exact(d).enumerate() {
        for (f, norm) in norms.iter_mut().enumerate() {
            let (re, im) = pairing.coordinates(d, f);
            *norm = (key[re] * key[re] + key[im] * key[im]).sqrt();
        }
        for (h, scores) in out.iter_mut().enumerate() {
            let norm_term = dot(&norms, forms.norm_weights(h));
            let head_rows = &rows[h * forms.forms..(h + 1) * forms.forms];
            for (value, row) in values.iter_mut().zip(head_rows) {
                *value = dot(key, row);
            }
            let trig = match (forms.forms, aggregation) {
                (0, _) => 0.0,
                (_, OffsetAggregation::Mean) => values[0],
                (_, OffsetAggregation::Max) => {
                    values.iter().copied().fold(f32::NEG_INFINITY, f32::max)
                }
            };
            scores[j] = trig + norm_term;
        }
    }
    out
}

/// Lanes of independent partial sums, so that the compiler vectorises the dot product.
const LANES: usize = 16;

fn dot(a: &[f32], b: &[f32]) -> f32 {
    let mut acc = [0f32; LANES];
    let (a_chunks, b_chunks) = (a.chunks_exact(LANES), b.chunks_exact(LANES));
    let tail: f32 = a_chunks
        .remainder()
        .iter()
        .zip(b_chunks.remainder())
        .map(|(x, y)| x * y)
        .sum();
    for (x, y) in a_chunks.zip(b_chunks) {
        for l in 0..LANES {
            acc[l] += x[l] * y[l];
        }
    }
    acc.iter().sum::<f32>() + tail
}
