//! The Lipschitz certificate (the paper's §5): a whole-network bound composed from exact per-matrix
//! RMS→RMS norms (σ_max from an SVD, never a power-iteration estimate, which can only under-estimate).
//!
//! Norms: vectors are measured in RMS norm (`‖x‖₂/√dim`); a sequence `[seq, d]` in the largest
//! per-position RMS norm. The GPT's bound is from token inputs (the embedding's ℓ1→RMS norm, i.e. its
//! largest column RMS) to logits; `body_bound` is the part from the embedding output to the logits.

use candle_core::{DType, Tensor};
use serde::Serialize;
use spectra_core::{Error, Result};

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
    /// `(parameter, RMS→RMS norm)` in the order the network applies them (the embedding's entry is its
    /// largest column RMS).
    pub norms: Vec<(String, f64)>,
}

/// `sqrt(fan_in/fan_out) · σ_max(W)` for `W: [fan_out, fan_in]`, from an exact SVD in f64.
pub fn rms_to_rms_norm(w: &Tensor) -> Result<f64> {
    let (fan_out, fan_in) = w.dims2()?;
    let sigma = spectra_core::linalg::svd::sigma_max(w)?;
    if !sigma.is_finite() {
        return Err(Error::NonFinite {
            name: "certificate".into(),
            what: "a weight matrix".into(),
        });
    }
    Ok((fan_in as f64 / fan_out as f64).sqrt() * sigma)
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
pub fn chain(norms: Vec<(String, f64)>) -> Certificate {
    let bound = norms.iter().map(|(_, n)| n).product();
    Certificate {
        bound,
        body_bound: bound,
        input_rms: f64::INFINITY,
        norms,
    }
}

/// One GPT block's `(name, RMS→RMS norm)` per matrix.
#[derive(Clone, Debug)]
pub struct GptBlockNorms {
    pub q: (String, f64),
    pub k: (String, f64),
    pub v: (String, f64),
    pub o: (String, f64),
    pub mlp_in: (String, f64),
    pub mlp_out: (String, f64),
}

/// The §5 transformer bound, blocks in the order they run, residual weight `a`, `softmax_scale` as
/// the attention scale and `final_scale` multiplying the logits (the paper's code leaves it out of
/// its bound; a certificate cannot). The activation bound starts at the embedding's largest column RMS (§5 assumes
/// 1, which is what a capped embedding guarantees; the actual value is never looser).
pub fn gpt(
    embed: (String, f64),
    blocks: &[GptBlockNorms],
    head: (String, f64),
    a: f64,
    softmax_scale: f64,
    final_scale: f64,
) -> Certificate {
    let input_rms = embed.1;
    // Stage 1: a bound on the RMS of the residual stream entering each sub-block.
    let mut r = input_rms;
    let mut stream = Vec::with_capacity(blocks.len());
    for b in blocks {
        stream.push(r);
        r = (1.0 - a) * r + a * (b.o.1 * b.v.1 / 3.0) * r;
        r = (1.0 - a) * r + a * (b.mlp_out.1 * b.mlp_in.1 / crate::activations::GELU_MAX_SLOPE) * r;
    }
    // Stage 2: compose the residual blocks' Lipschitz constants.
    let mut body = 1.0;
    for (b, r) in blocks.iter().zip(stream) {
        let (q, k, v, o) = (b.q.1, b.k.1, b.v.1, b.o.1);
        let attention = o / 3.0 * (v + 2.0 * v * r * r * q * k) * softmax_scale;
        body = (1.0 - a) * body + a * body * attention;
        let mlp = b.mlp_out.1 * b.mlp_in.1 / crate::activations::GELU_MAX_SLOPE;
        body = (1.0 - a) * body + a * body * mlp;
    }
    body *= head.1 * final_scale;
    let mut norms = vec![embed.clone()];
    for b in blocks {
        norms.extend([
            b.q.clone(),
            b.k.clone(),
            b.v.clone(),
            b.o.clone(),
            b.mlp_in.clone(),
            b.mlp_out.clone(),
        ]);
    }
    norms.push(head);
    Certificate {
        bound: embed.1 * body,
        body_bound: body,
        input_rms,
        norms,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn block(n: f64) -> GptBlockNorms {
        let e = |s: &str| (s.to_string(), n);
        GptBlockNorms {
            q: e("q"),
            k: e("k"),
            v: e("v"),
            o: e("o"),
            mlp_in: e("in"),
            mlp_out: e("out"),
        }
    }

    #[test]
    fn unit_norm_gpt_matches_a_hand_computation() {
        // All norms 1, one block, a = 1/2, scale 1: r stays 1 for attention input;
        // attention L = (1/3)(1 + 2) = 1, so the residual gives 1; MLP L = 1/1.1289,
        // residual: 1/2 + 1/2/1.1289.
        let c = gpt(
            ("embed".into(), 1.0),
            &[block(1.0)],
            ("head".into(), 1.0),
            0.5,
            1.0,
            1.0,
        );
        let expected = 0.5 + 0.5 / 1.1289;
        assert!((c.bound - expected).abs() < 1e-15, "{}", c.bound);
        assert_eq!(c.norms.len(), 8);
    }

    #[test]
    fn gpt_bound_matches_the_reference_loop_for_two_blocks() {
        // The §5 loop written out for norms 2, a = 1/4, scale 1, embedding 1, head 2, final scale 3.
        let a = 0.25f64;
        let r0 = 1.0f64;
        let r1 = (1.0 - a) * r0 + a * (4.0 / 3.0) * r0;
        let r2 = (1.0 - a) * r1 + a * (4.0 / 1.1289) * r1;
        let att = |r: f64| 2.0 / 3.0 * (2.0 + 2.0 * 2.0 * r * r * 4.0);
        let mut l = 1.0f64;
        l = (1.0 - a) * l + a * l * att(r0);
        l = (1.0 - a) * l + a * l * 4.0 / 1.1289;
        l = (1.0 - a) * l + a * l * att(r2);
        l = (1.0 - a) * l + a * l * 4.0 / 1.1289;
        l *= 2.0 * 3.0;
        let c = gpt(
            ("embed".into(), 1.0),
            &[block(2.0), block(2.0)],
            ("head".into(), 2.0),
            a,
            1.0,
            3.0,
        );
        assert!((c.bound - l).abs() < 1e-12 * l, "{} vs {l}", c.bound);
    }

    #[test]
    fn chain_is_the_product() {
        let c = chain(vec![
            ("a".into(), 2.0),
            ("b".into(), 0.5),
            ("c".into(), 3.0),
        ]);
        assert_eq!(c.bound, 3.0);
    }
}
