//! TriAttention's key score computed straight from post-RoPE keys (kv-eviction.md §1.4), the form used
//! when compressing.
//!
//! For a query head with calibrated centre `q̄_f` and a cached key `k̃` (post-RoPE), band by band
//! `A_f = Re(q̄_f conj k̃_f)`, `B_f = Im(q̄_f conj k̃_f)` and
//! `base_δ = a · Σ_f (A_f cos θ_fδ − B_f sin θ_fδ)`, `θ_fδ = ω_f (t + δ)`, which rearranges to
//! `Σ_f k̃re_f · a(q̄re cos θ − q̄im sin θ) + k̃im_f · a(q̄im cos θ + q̄re sin θ)`: for each offset δ a
//! fixed linear form in the key. The score of all keys for all offsets is therefore one matrix product
//! `K̃ · Wᵀ` with `W` built from an `F × |D|` table of cos/sin (computed in f64 once per round). For the
//! mean over offsets, linearity lets the forms be averaged first, so `W` has one row per query head.
//! The norm term `a · Σ_f c_f |k̃_f|` with `c_f = m_f − |q̄_f|` (or `m_f`) is a second, `F`-wide product.
//! `a` is RoPE's attention scaling: both terms then equal the pre-RoPE form's `a²`-weighted sums.

use candle_core::{DType, Storage, Tensor};
use serde::{Deserialize, Serialize};
use spectra_core::kv_stats::HeadBandStats;
use spectra_core::rope::{RopePairing, RopeSpec};
use spectra_core::{Error, Result};

/// How the 17 future offsets are combined.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum OffsetAggregation {
    Mean,
    Max,
}

/// The parts of the configuration the raw score depends on.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct ScoreOptions {
    /// Offsets are the powers of two up to this (65536: 2^0..2^16, 17 offsets).
    pub max_offset: u64,
    pub aggregation: OffsetAggregation,
    /// Weight the norm term by `m_f` instead of `m_f − |q̄_f|` (ablation).
    pub disable_mlr: bool,
    /// Score by the norm term alone (ablation).
    pub disable_trig: bool,
}

/// The future offsets `δ`: every power of two up to `max_offset`.
pub fn offsets(max_offset: u64) -> Vec<u64> {
    (0..64)
        .map(|e| 1u64 << e)
        .take_while(|&d| d <= max_offset)
        .collect()
}

/// `cos θ_fδ` and `sin θ_fδ` for every offset δ and band f, with `θ_fδ = ω_f (t + δ)` reduced modulo 2π
/// in f64 (an f32 angle at t ≈ 1e5 is off by ~1e-2 rad).
#[derive(Clone, Debug)]
pub struct OffsetTable {
    pub offsets: Vec<u64>,
    bands: usize,
    /// `[offset][band]`.
    cos: Vec<f64>,
    sin: Vec<f64>,
}

impl OffsetTable {
    pub fn new(rope: &RopeSpec, position: u64, max_offset: u64) -> Self {
        let offsets = offsets(max_offset);
        let bands = rope.bands();
        let (mut cos, mut sin) = (
            Vec::with_capacity(offsets.len() * bands),
            Vec::with_capacity(offsets.len() * bands),
        );
        for &delta in &offsets {
            for f in 0..bands {
                let (s, c) = rope.phase(f, (position + delta) as f64).sin_cos();
                cos.push(c);
                sin.push(s);
            }
        }
        OffsetTable {
            offsets,
            bands,
            cos,
            sin,
        }
    }
}

/// The linear forms and norm weights of one KV head's query group.
pub struct GroupScorer {
    group: usize,
    head_dim: usize,
    /// Forms per query head: 0 (norm only), 1 (mean over offsets) or |D| (max over offsets).
    forms: usize,
    /// `[group · forms][head_dim]`: row `h · forms + r` is query head `h`'s form for offset `r`.
    trig: Vec<f32>,
    /// `[group][bands]`: `a · c_f` per query head.
    norm: Vec<f32>,
    pairing: RopePairing,
    aggregation: OffsetAggregation,
}

impl GroupScorer {
    pub fn new(
        centers: &[HeadBandStats<'_>],
        table: &OffsetTable,
        rope: &RopeSpec,
        options: &ScoreOptions,
    ) -> Self {
        let (d, bands, group) = (rope.head_dim, rope.bands(), centers.len());
        let a = rope.attention_scaling;
        let forms = match (options.disable_trig, options.aggregation) {
            (true, _) => 0,
            (false, OffsetAggregation::Mean) => 1,
            (false, OffsetAggregation::Max) => table.offsets.len(),
        };
        let mut trig = vec![0f32; group * forms * d];
        let mut norm = vec![0f32; group * bands];
        let count = table.offsets.len() as f64;
        for (h, c) in centers.iter().enumerate() {
            for f in 0..bands {
                let (qre, qim, m) = (
                    c.mean_re[f] as f64,
                    c.mean_im[f] as f64,
                    c.abs_mean[f] as f64,
                );
                let weight = if options.disable_mlr {
                    m
                } else {
                    m - qre.hypot(qim)
                };
                norm[h * bands + f] = (a * weight) as f32;
                if forms == 0 {
                    continue;
                }
                let (re, im) = rope.pair(f);
                let mut mean = (0.0, 0.0);
                for o in 0..table.offsets.len() {
                    let (cos, sin) = (
                        table.cos[o * table.bands + f],
                        table.sin[o * table.bands + f],
                    );
                    let u = a * (qre * cos - qim * sin);
                    let v = a * (qim * cos + qre * sin);
                    match options.aggregation {
                        OffsetAggregation::Max => {
                            let row = (h * forms + o) * d;
                            trig[row + re] = u as f32;
                            trig[row + im] = v as f32;
                        }
                        OffsetAggregation::Mean => mean = (mean.0 + u / count, mean.1 + v / count),
                    }
                }
                if options.aggregation == OffsetAggregation::Mean {
                    trig[h * d + re] = mean.0 as f32;
                    trig[h * d + im] = mean.1 as f32;
                }
            }
        }
        GroupScorer {
            group,
            head_dim: d,
            forms,
            trig,
            norm,
            pairing: rope.pairing,
            aggregation: options.aggregation,
        }
    }

    /// Raw scores `[group][n]` of the keys `[n, head_dim]` (post-RoPE, any dtype, on any device; copied
    /// to the host once as f32). One pass over the keys: per key the band norms, the norm terms and the
    /// forms' dot products.
    pub fn raw_scores(&self, keys: &Tensor) -> Result<Vec<Vec<f32>>> {
        let (n, d) = keys.dims2()?;
        if d != self.head_dim {
            return Err(Error::invalid(
                "TriAttention",
                format!(
                    "keys have head_dim {d}, the RoPE description {}",
                    self.head_dim
                ),
            ));
        }
        with_f32_rows(keys, |keys| self.score_rows(keys, n, d))
    }

    fn score_rows(&self, keys: &[f32], n: usize, d: usize) -> Vec<Vec<f32>> {
        let mut out = vec![vec![0f32; n]; self.group];
        let bands = d / 2;
        let mut norms = vec![0f32; bands];
        let mut forms = vec![0f32; self.forms];
        for (j, key) in keys.chunks_exact(d).enumerate() {
            match self.pairing {
                RopePairing::Half => {
                    let (re, im) = key.split_at(bands);
                    for ((n, x), y) in norms.iter_mut().zip(re).zip(im) {
                        *n = (x * x + y * y).sqrt();
                    }
                }
                RopePairing::Interleaved => {
                    for (n, pair) in norms.iter_mut().zip(key.chunks_exact(2)) {
                        *n = (pair[0] * pair[0] + pair[1] * pair[1]).sqrt();
                    }
                }
            }
            for (h, scores) in out.iter_mut().enumerate() {
                let norm_term = dot(&norms, &self.norm[h * bands..(h + 1) * bands]);
                let rows = &self.trig[h * self.forms * d..(h + 1) * self.forms * d];
                for (value, row) in forms.iter_mut().zip(rows.chunks_exact(d)) {
                    *value = dot(key, row);
                }
                let trig = match (self.forms, self.aggregation) {
                    (0, _) => 0.0,
                    (_, OffsetAggregation::Mean) => forms[0],
                    (_, OffsetAggregation::Max) => {
                        forms.iter().copied().fold(f32::NEG_INFINITY, f32::max)
                    }
                };
                scores[j] = trig + norm_term;
            }
        }
        out
    }
}

/// Runs `f` on the keys as one row-major f32 slice: borrowed in place when they are a contiguous f32
/// tensor in host memory (the cache's usual case), otherwise copied to the host once.
fn with_f32_rows<T>(keys: &Tensor, f: impl FnOnce(&[f32]) -> T) -> Result<T> {
    {
        let (storage, layout) = keys.storage_and_layout();
        if let (Storage::Cpu(cpu), Some((start, end))) = (&*storage, layout.contiguous_offsets()) {
            if let Ok(all) = cpu.as_slice::<f32>() {
                return Ok(f(&all[start..end]));
            }
        }
    }
    let copy: Vec<f32> = keys.to_dtype(DType::F32)?.flatten_all()?.to_vec1()?;
    Ok(f(&copy))
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
