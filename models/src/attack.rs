//! Lower bounds on a network's Lipschitz constant, found by attacking it: the largest ratio
//! `‖f(x) − f(y)‖ / ‖x − y‖` that projected gradient ascent with restarts finds on pairs of inputs
//! within a ball, and that hill-climbing finds on pairs of token sequences. A certificate is an upper
//! bound; the ratio of the two says how much room is left between them.
//!
//! Norms are the certificate's: a sequence `[seq, d]` is measured by its largest per-position RMS
//! (embedding outputs and logits alike); a token sequence by its largest per-position ℓ1 distance of
//! one-hot vectors (2 wherever two sequences differ); an image, a sequence of one position, by its RMS.

use candle_core::{DType, Device, Tensor, Var};
use rand::Rng;
use serde::Serialize;
use spectra_core::{Result, SpectraRng};

use crate::Model;

/// How hard to attack: restarts and steps of gradient ascent per restart, a batch of pairs per
/// restart, and rounds of token hill-climbing (each tries every token at one position).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub struct AttackEffort {
    pub restarts: usize,
    pub steps: usize,
    pub batch: usize,
    pub token_rounds: usize,
}

impl Default for AttackEffort {
    fn default() -> Self {
        AttackEffort {
            restarts: 9,
            steps: 40,
            batch: 8,
            token_rounds: 60,
        }
    }
}

/// The best ratios an attack found.
#[derive(Clone, Copy, Debug, PartialEq, Serialize)]
pub struct LowerBounds {
    /// On the part of the network `Certificate::body_bound` bounds (the GPT's embedding output to
    /// the logits; the MLP's input to the logits), inputs within the certificate's domain.
    pub body: f64,
    /// From the raw inputs (token sequences), where they differ from the body's.
    pub inputs: Option<f64>,
}

/// The RMS of each row of `[.., d]` over its last dimension, in f64.
pub fn row_rms(x: &Tensor) -> Result<Tensor> {
    let last = x.rank() - 1;
    Ok(x.to_dtype(DType::F64)?.sqr()?.mean_keepdim(last)?.sqrt()?)
}

/// The largest per-position RMS of `[batch, seq, d]`, per batch element.
pub fn seq_norms(x: &Tensor) -> Result<Vec<f64>> {
    Ok(row_rms(x)?.squeeze(2)?.max(1)?.to_vec1::<f64>()?)
}

/// Random sequences `[b, t, d]` with each position's RMS drawn uniformly in (0.05·r, r].
pub fn random_inputs(
    (b, t, d): (usize, usize, usize),
    r: f64,
    rng: &mut SpectraRng,
    device: &Device,
) -> Result<Tensor> {
    let g = crate::init::gaussian(b * t, d, rng, device)?;
    let rms = g.sqr()?.mean_keepdim(1)?.sqrt()?;
    let radii: Vec<f32> = (0..b * t)
        .map(|_| (r * rng.random_range(0.05..1.0)) as f32)
        .collect();
    let radii = Tensor::from_vec(radii, (b * t, 1), device)?;
    Ok(g.broadcast_div(&rms)?
        .broadcast_mul(&radii)?
        .reshape((b, t, d))?)
}

/// Every row of `[.., d]` scaled down to RMS at most `r`.
pub fn project(x: &Tensor, r: f64) -> Result<Tensor> {
    let factor = (row_rms(x)?.maximum(r)?.recip()? * r)?.to_dtype(DType::F32)?;
    Ok(x.broadcast_mul(&factor)?)
}

/// Each row of `[.., d]` scaled to RMS 1 (the steepest-ascent direction of each position's norm).
pub fn normalized(g: &Tensor) -> Result<Tensor> {
    let rms = (row_rms(g)? + 1e-30)?.to_dtype(DType::F32)?;
    Ok(g.broadcast_div(&rms)?)
}

/// Per batch element, `‖f(x) − f(y)‖ / ‖x − y‖` in the sequence norm.
pub fn ratios(f_diff: &Tensor, x_diff: &Tensor) -> Result<Vec<f64>> {
    Ok(seq_norms(f_diff)?
        .into_iter()
        .zip(seq_norms(x_diff)?)
        .map(|(n, d)| if d > 0.0 { n / d } else { 0.0 })
        .collect())
}

/// Random sequences whose every position lies in one random head's coordinates: the inputs on which
/// one head carries all the energy, when q and k keep coordinates apart.
fn one_head_inputs(
    dims: (usize, usize, usize),
    heads: usize,
    r: f64,
    rng: &mut SpectraRng,
    device: &Device,
) -> Result<Tensor> {
    let d = dims.2;
    let x = random_inputs(dims, r, rng, device)?;
    let dh = d / heads;
    let h = rng.random_range(0..heads);
    let mask: Vec<f32> = (0..d)
        .map(|i| if i / dh == h { 1.0 } else { 0.0 })
        .collect();
    let x = x.broadcast_mul(&Tensor::from_vec(mask, d, device)?)?;
    let radius = rng.random_range(0.5..1.0) * r;
    let scale = (((row_rms(&x)? + 1e-30)?.recip()?) * radius)?.to_dtype(DType::F32)?;
    Ok(x.broadcast_mul(&scale)?)
}

/// The best ratio projected gradient ascent finds for `f` on pairs `(x, x + δ)` of `[b, t, d]`
/// inputs with every position of both in the RMS ball of radius `r`: restarts at three scales of
/// `‖δ‖` (a local slope, a nearby pair, a distant pair) and, every other restart, from inputs
/// confined to one of `heads` heads' coordinates.
pub fn body_lower_bound(
    f: &dyn Fn(&Tensor) -> Result<Tensor>,
    dims: (usize, usize, usize),
    heads: usize,
    r: f64,
    effort: &AttackEffort,
    rng: &mut SpectraRng,
    device: &Device,
) -> Result<f64> {
    let start = |restart: usize, rng: &mut SpectraRng| {
        if restart % 2 == 1 {
            one_head_inputs(dims, heads, r, rng, device)
        } else {
            random_inputs(dims, r, rng, device)
        }
    };
    ascend(f, (dims, device), r, &|x| project(x, r), start, effort, rng)
}

/// The best ratio projected gradient ascent finds for `f` on pairs of inputs within `radius` of
/// `center` (`[b, t, d]`, one ball per batch element): the bound a per-input certificate gives.
pub fn ball_lower_bound(
    f: &dyn Fn(&Tensor) -> Result<Tensor>,
    center: &Tensor,
    radius: f64,
    effort: &AttackEffort,
    rng: &mut SpectraRng,
) -> Result<f64> {
    let (dims, device) = (center.dims3()?, center.device());
    let into_ball =
        |x: &Tensor| -> Result<Tensor> { Ok((project(&(x - center)?, radius)? + center)?) };
    let start = |_: usize, rng: &mut SpectraRng| {
        into_ball(&(center + random_inputs(dims, radius, rng, device)?)?)
    };
    ascend(f, (dims, device), radius, &into_ball, start, effort, rng)
}

/// Gradient ascent on `‖f(x + δ) − f(x)‖ / ‖δ‖` over pairs kept in a domain by `into_domain` (of
/// size `r`), each restart from `start(restart)` with `‖δ‖` at one of three scales of `r`; step
/// sizes shrink linearly so that the last steps refine rather than jump. Every pair scored lies in
/// the domain, the last step's too.
fn ascend(
    f: &dyn Fn(&Tensor) -> Result<Tensor>,
    (dims, device): ((usize, usize, usize), &Device),
    r: f64,
    into_domain: &dyn Fn(&Tensor) -> Result<Tensor>,
    mut start: impl FnMut(usize, &mut SpectraRng) -> Result<Tensor>,
    effort: &AttackEffort,
    rng: &mut SpectraRng,
) -> Result<f64> {
    let ratio_of = |x: &Tensor, delta: &Tensor| -> Result<Vec<f64>> {
        ratios(&(f(&(x + delta)?)? - f(x)?)?, delta)
    };
    let mut best = 0f64;
    for restart in 0..effort.restarts {
        let eps = r * [1e-2, 0.1, 0.5][restart % 3];
        let mut x = start(restart, rng)?;
        let mut delta = project(&random_inputs(dims, eps, rng, device)?, eps)?;
        delta = (into_domain(&(&x + &delta)?)? - &x)?;
        for step in 0..effort.steps {
            let xv = Var::from_tensor(&x)?;
            let dv = Var::from_tensor(&delta)?;
            let diff = (f(&(xv.as_tensor() + dv.as_tensor())?)? - f(xv.as_tensor())?)?;
            best = ratios(&diff, &delta)?.into_iter().fold(best, f64::max);
            let grads = diff.sqr()?.sum_all()?.backward()?;
            let (Some(gx), Some(gd)) = (grads.get(&xv), grads.get(&dv)) else {
                return Err(spectra_core::Error::invalid(
                    "attack",
                    "the network's output does not depend on its input",
                ));
            };
            let decay = 1.0 - step as f64 / effort.steps as f64;
            x = into_domain(&(&x + (normalized(gx)? * (0.1 * r * decay))?)?)?;
            delta = project(&(&delta + (normalized(gd)? * (0.3 * eps * decay))?)?, eps)?;
            delta = (into_domain(&(&x + &delta)?)? - &x)?;
        }
        best = ratio_of(&x, &delta)?.into_iter().fold(best, f64::max);
    }
    Ok(best)
}

/// The best ratio found on pairs of token sequences of length `t` over a vocabulary of `vocab`:
/// hill-climbing, one position at a time, over every token there. The input distance of two
/// different sequences is 2.
pub fn token_lower_bound(
    model: &dyn Model,
    (t, vocab): (usize, usize),
    effort: &AttackEffort,
    rng: &mut SpectraRng,
    device: &Device,
) -> Result<f64> {
    let logits = |seqs: &[Vec<u32>]| -> Result<Tensor> {
        let tokens = Tensor::from_vec(seqs.concat(), (seqs.len(), t), device)?;
        Ok(model.logits(&tokens)?.reshape((seqs.len(), t, vocab))?)
    };
    let mut best = 0f64;
    for _ in 0..4 {
        let mut pair: [Vec<u32>; 2] =
            [0, 1].map(|_| (0..t).map(|_| rng.random_range(0..vocab as u32)).collect());
        // Each restart climbs from its own pair: a move is taken when it beats this pair's ratio.
        let mut current = 0f64;
        for _ in 0..effort.token_rounds {
            let (side, pos) = (rng.random_range(0..2), rng.random_range(0..t));
            let candidates: Vec<Vec<u32>> = (0..vocab as u32)
                .map(|tok| {
                    let mut s = pair[side].clone();
                    s[pos] = tok;
                    s
                })
                .collect();
            let other = logits(&[pair[1 - side].clone()])?;
            let norms = seq_norms(&logits(&candidates)?.broadcast_sub(&other)?)?;
            let (tok, ratio) = candidates
                .iter()
                .zip(norms)
                .filter(|(c, _)| **c != pair[1 - side])
                .map(|(c, n)| (c[pos], n / 2.0))
                .fold((pair[side][pos], 0.0), |a, b| if b.1 > a.1 { b } else { a });
            if ratio >= current {
                current = ratio;
                best = best.max(ratio);
                pair[side][pos] = tok;
            }
        }
    }
    Ok(best)
}
