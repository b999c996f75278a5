//! The Lipschitz certificate: a whole-network bound composed from exact per-matrix spectral norms
//! (σ_max from an SVD, never a power-iteration estimate, which can only under-estimate). Every factor
//! is derived in `docs/certificate.md`; the paper's own formula (docs/lipschitz.md §7) is kept
//! beside it as `reference_bound`, for like-for-like comparison with published figures, and is not
//! a certificate.
//!
//! Norms: vectors are measured in RMS norm (`‖x‖₂/√dim`); a sequence `[seq, d]` in the largest
//! per-position RMS norm. The GPT's bound is from token inputs (the embedding's ℓ1→RMS norm, i.e. its
//! largest column RMS) to logits; `body_bound` is the part from the embedding output to the logits.

use candle_core::{DType, Tensor};
use serde::Serialize;
use spectra_core::{Error, Result};

use spectra_kernels::activations::GELU_DIVISOR;

mod per_input;
pub use per_input::StreamSizes;

/// The Lipschitz constant of `gelu_tanh(x)/1.1289`: the tanh form's largest slope, 1.128993068658772
/// at x = ±1.418504 (the root of its second derivative, found to 40 digits), divided by 1.1289 and
/// rounded up. It exceeds 1 because the paper's divisor is the exact GELU's slope, not the tanh form's.
pub const SCALED_GELU_LIPSCHITZ: f64 = 1.000_082_5;

/// Radii (in the certificate's input norm) at which the reports give certified robust accuracy.
pub const ROBUST_RADII: [f64; 3] = [0.001, 0.01, 0.1];

/// A certified Lipschitz bound and the per-matrix norms it was built from.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Certificate {
    /// Input to logits.
    pub bound: f64,
    /// From the first hidden representation (the GPT's embedding output; the MLP's input) to logits,
    /// valid for inputs of per-position RMS at most `input_rms`.
    pub body_bound: f64,
    /// The largest per-position RMS of a body input the bound covers (the GPT's largest embedding
    /// column RMS; unbounded, `f64::INFINITY`, for the MLP, whose bound holds everywhere).
    pub input_rms: f64,
    /// The paper code's formula on the same weights: the published number, not a certificate (it
    /// undercounts; `docs/certificate.md` says where). Equal to `bound` for the MLP.
    pub reference_bound: f64,
    /// `(radius ε, L)` for each of [`ROBUST_RADII`]: the body is L-Lipschitz on every input within ε of
    /// a body input the certificate covers (the GPT's domain grows to `input_rms + ε`).
    pub robust_bounds: Vec<(f64, f64)>,
    /// `(parameter, RMS→RMS norm)` in the order the network applies them (the embedding's entry is its
    /// largest column RMS).
    pub norms: Vec<(String, f64)>,
}

impl Certificate {
    /// The logit margin (target minus the largest other logit) above which a correct prediction stays
    /// correct under every body-input perturbation of norm ≤ ε, for each of the robust radii.
    ///
    /// A margin `z_y − z_j` is `(e_y − e_j)·z` with `‖e_y − e_j‖₂ = √2`, and `‖Δz‖₂ = √classes·‖Δz‖_rms ≤
    /// √classes·L·ε`, so a margin above `√(2·classes)·L·ε` cannot be overturned.
    pub fn robust_margins(&self, classes: usize) -> Vec<(f64, f64)> {
        let c = (2.0 * classes as f64).sqrt();
        self.robust_bounds
            .iter()
            .map(|&(eps, l)| (eps, c * l * eps))
            .collect()
    }
}

/// `sqrt(fan_in/fan_out) · σ_max(W)` for `W: [fan_out, fan_in]`, from an exact SVD in f64.
pub fn rms_to_rms_norm(w: &Tensor) -> Result<f64> {
    let (fan_out, fan_in) = w.dims2()?;
    Ok((fan_in as f64 / fan_out as f64).sqrt() * spectral_norm(w)?)
}

/// σ_max(W) from an exact SVD in f64.
fn spectral_norm(w: &Tensor) -> Result<f64> {
    let sigma = spectra_core::linalg::svd::sigma_max(w)?;
    if !sigma.is_finite() {
        return Err(Error::NonFinite {
            name: "certificate".into(),
            what: "a weight matrix".into(),
        });
    }
    Ok(sigma)
}

/// σ_max of each head's block of rows of `w: [heads·head_dim, fan_in]` (a projection whose output is
/// split into heads).
pub fn head_spectral_norms(w: &Tensor, heads: usize) -> Result<Vec<f64>> {
    let rows = w.dim(0)?;
    if heads == 0 || rows % heads != 0 {
        return Err(Error::invalid(
            "certificate",
            format!("{rows} rows do not split into {heads} heads"),
        ));
    }
    let dh = rows / heads;
    (0..heads)
        .map(|h| spectral_norm(&w.narrow(0, h * dh, dh)?))
        .collect()
}

/// The ℓ2 distance between every two rows of `w: [rows, cols]`, in f64: how far apart two classes'
/// logits can move per unit of the head's input.
pub fn row_distances(w: &Tensor) -> Result<Vec<Vec<f64>>> {
    let rows = w.to_dtype(DType::F64)?.to_vec2::<f64>()?;
    Ok(rows
        .iter()
        .map(|a| {
            rows.iter()
                .map(|b| {
                    a.iter()
                        .zip(b)
                        .map(|(x, y)| (x - y) * (x - y))
                        .sum::<f64>()
                        .sqrt()
                })
                .collect()
        })
        .collect())
}

/// The largest column RMS of an embedding `[d, vocab]`: its ℓ1→RMS norm, and the largest RMS of any
/// embedding output.
pub fn max_column_rms(e: &Tensor) -> Result<f64> {
    let rms = e
        .to_dtype(DType::F64)?
        .sqr()?
        .mean(0)?
        .sqrt()?
        .max(0)?
        .to_scalar::<f64>()?;
    if !rms.is_finite() {
        return Err(Error::NonFinite {
            name: "embed".into(),
            what: "the embedding table".into(),
        });
    }
    Ok(rms)
}

/// Layers applied one after another with 1-Lipschitz maps between them: the product of their norms.
/// The bound holds on all of input space, so it is also the bound at every robust radius.
pub fn chain(norms: Vec<(String, f64)>, radii: &[f64]) -> Certificate {
    let bound = norms.iter().map(|(_, n)| n).product();
    Certificate {
        bound,
        body_bound: bound,
        input_rms: f64::INFINITY,
        reference_bound: bound,
        robust_bounds: radii.iter().map(|&eps| (eps, bound)).collect(),
        norms,
    }
}

/// One GPT block's norms: the RMS→RMS norm of every matrix (all of q, k, v, o are square, where it is
/// σ_max) and σ_max of each head's rows of the query, key and value projections.
#[derive(Clone, Debug)]
pub struct GptBlockNorms {
    pub q: (String, f64),
    pub k: (String, f64),
    pub v: (String, f64),
    pub o: (String, f64),
    pub mlp_in: (String, f64),
    pub mlp_out: (String, f64),
    pub q_heads: Vec<f64>,
    pub k_heads: Vec<f64>,
    pub v_heads: Vec<f64>,
}

impl GptBlockNorms {
    /// `sqrt(Σ_h σ(Wv_h)²)`: the value path's gain when every head reads a different position.
    fn value_gain(&self) -> f64 {
        self.v_heads.iter().map(|s| s * s).sum::<f64>().sqrt()
    }

    /// `max_h σ(Wk_h)·σ(Wv_h)`.
    fn key_value_gain(&self) -> f64 {
        self.k_heads
            .iter()
            .zip(&self.v_heads)
            .map(|(k, v)| k * v)
            .fold(0.0, f64::max)
    }

    /// The attention sub-block's output RMS per unit of input RMS (`docs/certificate.md`, (A1)).
    fn attention_gain(&self) -> f64 {
        self.o.1 * self.value_gain() / 3.0
    }

    /// The attention sub-block's Lipschitz constant on inputs of per-position RMS ≤ r, for scores
    /// `q·k·softmax_scale/d_head` over `heads` heads (`docs/certificate.md`, (A2)).
    fn attention_lipschitz(&self, r: f64, heads: usize, softmax_scale: f64) -> f64 {
        let score = 2.0 * softmax_scale * heads as f64 * r * r * self.q.1 * self.key_value_gain();
        self.o.1 / 3.0 * (self.value_gain() + score)
    }

    fn mlp_gain(&self) -> f64 {
        self.mlp_out.1 * self.mlp_in.1 / GELU_DIVISOR
    }

    fn mlp_lipschitz(&self) -> f64 {
        self.mlp_out.1 * self.mlp_in.1 * SCALED_GELU_LIPSCHITZ
    }
}

/// The norms a GPT's certificate is composed from; blocks in the order they run.
#[derive(Clone, Debug)]
pub struct GptNorms {
    pub embed: (String, f64),
    pub blocks: Vec<GptBlockNorms>,
    pub head: (String, f64),
    /// The residual weight `a` of `(1 − a)·x + a·f(x)`.
    pub residual_weight: f64,
    pub heads: usize,
    pub d_model: usize,
    pub softmax_scale: f64,
    pub final_scale: f64,
}

impl GptNorms {
    /// The body's Lipschitz constant (embedding output to logits) on inputs of per-position RMS at most
    /// `input_rms`. Stage 1 bounds the RMS entering each sub-block; stage 2 composes the residual
    /// sub-blocks, `Lip((1 − a)x + a f(x)) ≤ (1 − a) + a·Lip(f)`.
    pub fn body_bound(&self, input_rms: f64) -> f64 {
        let a = self.residual_weight;
        let mut r = input_rms;
        let mut body = 1.0;
        for b in &self.blocks {
            let attention = b.attention_lipschitz(r, self.heads, self.softmax_scale);
            body *= (1.0 - a) + a * attention;
            r *= (1.0 - a) + a * b.attention_gain();
            body *= (1.0 - a) + a * b.mlp_lipschitz();
            r *= (1.0 - a) + a * b.mlp_gain();
        }
        body * self.head.1 * self.final_scale
    }

    /// The paper code's formula (`utils.py::calculate_lipschitz_constant`, 2025-06-12), as published:
    /// r₀ = 1, one whole-matrix norm per projection, the softmax scale on the value term too, the GELU
    /// divisor applied to the Lipschitz constant as well as to the activation size, `final_scale` left
    /// out, and the blocks taken in the paper's tracker order (the reverse of the order they run).
    pub fn reference_bound(&self) -> f64 {
        let a = self.residual_weight;
        let mut r = 1.0;
        let mut l = self.embed.1;
        for b in self.blocks.iter().rev() {
            let (q, k, v, o) = (b.q.1, b.k.1, b.v.1, b.o.1);
            let attention = o / 3.0 * (v + 2.0 * v * r * r * q * k) * self.softmax_scale;
            l = (1.0 - a) * l + a * l * attention;
            r = (1.0 - a) * r + a * (o * v / 3.0) * r;
            l = (1.0 - a) * l + a * l * b.mlp_gain();
            r = (1.0 - a) * r + a * b.mlp_gain() * r;
        }
        l * self.head.1
    }

    /// The certificate, with the body's bound at each of `radii` around its domain.
    pub fn certificate(self, radii: &[f64]) -> Certificate {
        let input_rms = self.embed.1;
        let body = self.body_bound(input_rms);
        let robust_bounds = radii
            .iter()
            .map(|&eps| (eps, self.body_bound(input_rms + eps)))
            .collect();
        let reference_bound = self.reference_bound();
        let mut norms = vec![self.embed];
        for b in self.blocks {
            norms.extend([b.q, b.k, b.v, b.o, b.mlp_in, b.mlp_out]);
        }
        norms.push(self.head);
        Certificate {
            bound: input_rms * body,
            body_bound: body,
            input_rms,
            reference_bound,
            robust_bounds,
            norms,
        }
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    pub(crate) fn block(n: f64, heads: usize, head_norm: f64) -> GptBlockNorms {
        let e = |s: &str| (s.to_string(), n);
        GptBlockNorms {
            q: e("q"),
            k: e("k"),
            v: e("v"),
            o: e("o"),
            mlp_in: e("in"),
            mlp_out: e("out"),
            q_heads: vec![head_norm; heads],
            k_heads: vec![head_norm; heads],
            v_heads: vec![head_norm; heads],
        }
    }

    pub(crate) fn gpt(
        blocks: Vec<GptBlockNorms>,
        head: f64,
        a: f64,
        heads: usize,
        final_scale: f64,
    ) -> GptNorms {
        GptNorms {
            embed: ("embed".into(), 1.0),
            blocks,
            head: ("head".into(), head),
            residual_weight: a,
            heads,
            d_model: 8,
            softmax_scale: 1.0,
            final_scale,
        }
    }

    #[test]
    fn unit_norm_gpt_matches_a_hand_computation() {
        // Orthogonal q, k, v, o, MLP in and out, 4 heads (each head's rows of an orthogonal matrix have
        // σ = 1), a = 1/2, r = 1. Value gain √4 = 2; score term 2·1·4·1·1·1 = 8: attention
        // L = (2 + 8)/3. MLP L = 1.0000825. Residuals 1/2 + L/2 each.
        let c = gpt(vec![block(1.0, 4, 1.0)], 1.0, 0.5, 4, 1.0).certificate(&ROBUST_RADII);
        let expected = (0.5 + 0.5 * 10.0 / 3.0) * (0.5 + 0.5 * SCALED_GELU_LIPSCHITZ);
        assert!((c.bound - expected).abs() < 1e-15, "{}", c.bound);
        assert_eq!(c.norms.len(), 8);
        // The published formula on the same norms: attention (1/3)(1 + 2) = 1, MLP 1/1.1289.
        let reference = 0.5 + 0.5 / 1.1289;
        assert!((c.reference_bound - reference).abs() < 1e-15);
    }

    #[test]
    fn gpt_bound_matches_the_derivation_for_two_blocks() {
        // Norms 2, per-head norms 1.5, 2 heads, a = 1/4, scale 1, embedding 1, head 2, final scale 3.
        let a = 0.25f64;
        let (sv, kv) = ((2.0f64 * 1.5 * 1.5).sqrt(), 1.5 * 1.5);
        let att_gain = 2.0 * sv / 3.0;
        let mlp_gain = 4.0 / 1.1289;
        let att = |r: f64| 2.0 / 3.0 * (sv + 2.0 * 2.0 * r * r * 2.0 * kv);
        let mlp = 4.0 * SCALED_GELU_LIPSCHITZ;
        let r0 = 1.0f64;
        let r1 = r0 * (1.0 - a + a * att_gain) * (1.0 - a + a * mlp_gain);
        let l = (1.0 - a + a * att(r0))
            * (1.0 - a + a * mlp)
            * (1.0 - a + a * att(r1))
            * (1.0 - a + a * mlp)
            * 2.0
            * 3.0;
        let c = gpt(vec![block(2.0, 2, 1.5), block(2.0, 2, 1.5)], 2.0, a, 2, 3.0)
            .certificate(&ROBUST_RADII);
        assert!((c.bound - l).abs() < 1e-12 * l, "{} vs {l}", c.bound);
        // Larger domains give larger bounds.
        let bounds: Vec<f64> = c.robust_bounds.iter().map(|(_, b)| *b).collect();
        assert!(bounds.windows(2).all(|w| w[0] < w[1]) && bounds[0] > c.body_bound);
    }

    #[test]
    fn reference_bound_is_the_papers_loop() {
        // The published formula (docs/lipschitz.md §7.2) written out for two different blocks, run
        // in tracker order (reversed).
        let a = 0.25f64;
        let (first, second) = (block(2.0, 2, 1.0), block(1.5, 2, 1.0));
        let mut r = 1.0f64;
        let mut l = 1.0f64;
        for n in [1.5f64, 2.0] {
            l = (1.0 - a) * l + a * l * (n / 3.0 * (n + 2.0 * n * r * r * n * n));
            r = (1.0 - a) * r + a * (n * n / 3.0) * r;
            l = (1.0 - a) * l + a * l * n * n / 1.1289;
            r = (1.0 - a) * r + a * (n * n / 1.1289) * r;
        }
        l *= 2.0;
        let c = gpt(vec![first, second], 2.0, a, 2, 3.0).certificate(&ROBUST_RADII);
        assert!((c.reference_bound - l).abs() < 1e-12 * l);
    }

    #[test]
    fn the_gelu_constant_bounds_the_slope() {
        // The tanh-form GELU's slope on a fine grid, in f64, against the constant (and its rounding).
        let c = (2.0 / std::f64::consts::PI).sqrt();
        let slope = |x: f64| {
            let u = c * (x + 0.044715 * x * x * x);
            let t = u.tanh();
            0.5 * (1.0 + t) + 0.5 * x * (1.0 - t * t) * c * (1.0 + 3.0 * 0.044715 * x * x)
        };
        let max = (0..=80_000)
            .map(|i| slope(-4.0 + i as f64 * 1e-4).abs())
            .fold(0.0, f64::max);
        assert!((max - 1.128_993_068_658_772).abs() < 1e-9, "{max}");
        assert!(max / 1.1289 <= SCALED_GELU_LIPSCHITZ);
        assert!(SCALED_GELU_LIPSCHITZ - max / 1.1289 < 1e-7);
    }

    #[test]
    fn chain_is_the_product() {
        let c = chain(
            vec![("a".into(), 2.0), ("b".into(), 0.5), ("c".into(), 3.0)],
            &ROBUST_RADII,
        );
        assert_eq!(c.bound, 3.0);
        assert_eq!(c.reference_bound, 3.0);
    }

    #[test]
    fn robust_margins_scale_with_the_classes_and_the_radius() {
        let c = chain(vec![("a".into(), 2.0)], &ROBUST_RADII);
        let m = c.robust_margins(8);
        // √(2·8) = 4; L = 2.
        for (eps, margin) in m {
            assert!((margin - 8.0 * eps).abs() < 1e-15);
        }
    }
}
