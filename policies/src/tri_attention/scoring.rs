//! TriAttention's key score computed straight from post-RoPE keys (docs/kv-policies.md §4.4), the
//! form used when compressing.
//!
//! For a query head with calibrated centre `q̄_f` and a cached key `k̃` (post-RoPE), band by band
//! `A_f = Re(q̄_f conj k̃_f)`, `B_f = Im(q̄_f conj k̃_f)` and
//! `base_δ = a · Σ_f (A_f cos θ_fδ − B_f sin θ_fδ)`, `θ_fδ = ω_f (t + δ)`, which rearranges to
//! `Σ_f k̃re_f · u_fδ + k̃im_f · v_fδ` with `u = a(q̄re cos θ − q̄im sin θ)`, `v = a(q̄im cos θ + q̄re sin θ)`:
//! for each offset δ a fixed linear form in the key (its *weights*). For the mean over offsets, linearity
//! lets the forms be averaged first: one form per query head, built from the offsets' mean phasor
//! `(mean_δ cos θ_fδ, mean_δ sin θ_fδ)`. The norm term `a · Σ_f c_f |k̃_f|` with `c_f = m_f − |q̄_f|` (or
//! `m_f`) has one weight per band. `a` is RoPE's attention scaling: both terms then equal the pre-RoPE
//! form's `a²`-weighted sums. The phases are computed and reduced modulo 2π in f64.
//!
//! [`GroupForms`] holds these weights for one KV head's query group; the key score op
//! (`key_scores`) evaluates them for every key in one pass.

use crate::tri_attention::query_stats::HeadBandStats;
use serde::{Deserialize, Serialize};
use spectra_core::rope::RopeSpec;

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

impl ScoreOptions {
    /// Linear forms per query head: none (norm only), one (mean over offsets) or one per offset (max).
    pub fn forms_per_head(&self, offsets: usize) -> usize {
        match (self.disable_trig, self.aggregation) {
            (true, _) => 0,
            (false, OffsetAggregation::Mean) => 1,
            (false, OffsetAggregation::Max) => offsets,
        }
    }
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
    /// `t`: the position of the next token.
    pub position: u64,
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
            position,
            offsets,
            bands,
            cos,
            sin,
        }
    }

    /// `(mean_δ cos θ_fδ, mean_δ sin θ_fδ)`: summed in offset order, then divided by the count.
    fn mean_phasor(&self, f: usize) -> (f64, f64) {
        let (mut c, mut s) = (0.0, 0.0);
        for o in 0..self.offsets.len() {
            c += self.cos[o * self.bands + f];
            s += self.sin[o * self.bands + f];
        }
        let count = self.offsets.len() as f64;
        (c / count, s / count)
    }
}

/// `(u, v)`: the weights of `k̃re_f` and `k̃im_f` in the logit of centre `(q̄re, q̄im)` rotated by the
/// phasor `(cos, sin)`, times `a`. The CUDA kernel evaluates the same expression in the same order.
pub fn form_weights(qre: f64, qim: f64, cos: f64, sin: f64, a: f64) -> (f64, f64) {
    (a * (qre * cos - qim * sin), a * (qim * cos + qre * sin))
}

/// `a · c_f` for band `f` of `center`: `c_f = m_f − |q̄_f|`, or `m_f` with `disable_mlr`.
pub fn norm_weight(center: &HeadBandStats<'_>, f: usize, a: f64, disable_mlr: bool) -> f64 {
    let m = center.abs_mean[f] as f64;
    let weight = if disable_mlr {
        m
    } else {
        m - (center.mean_re[f] as f64).hypot(center.mean_im[f] as f64)
    };
    a * weight
}

/// The weights of one KV head's query group, rounded to f32 once.
#[derive(Clone, Debug)]
pub struct GroupForms {
    pub group: usize,
    pub bands: usize,
    /// Forms per query head: 0 (norm only), 1 (mean over offsets) or |D| (max over offsets).
    pub forms: usize,
    /// `[group · forms][2 · bands]`: row `h · forms + r` holds query head `h`'s form for offset `r`
    /// (or the mean form): `u_0..u_F` then `v_0..v_F`.
    pub trig: Vec<f32>,
    /// `[group][bands]`: `a · c_f` per query head.
    pub norm: Vec<f32>,
}

impl GroupForms {
    pub fn new(
        centers: &[HeadBandStats<'_>],
        table: &OffsetTable,
        rope: &RopeSpec,
        options: &ScoreOptions,
    ) -> Self {
        let (bands, group) = (rope.bands(), centers.len());
        let a = rope.attention_scaling;
        let forms = options.forms_per_head(table.offsets.len());
        let mut trig = vec![0f32; group * forms * 2 * bands];
        let mut norm = vec![0f32; group * bands];
        let mean_phasors: Vec<(f64, f64)> = if forms == 1 {
            (0..bands).map(|f| table.mean_phasor(f)).collect()
        } else {
            Vec::new()
        };
        for (h, c) in centers.iter().enumerate() {
            for f in 0..bands {
                norm[h * bands + f] = norm_weight(c, f, a, options.disable_mlr) as f32;
                let (qre, qim) = (c.mean_re[f] as f64, c.mean_im[f] as f64);
                for r in 0..forms {
                    let (cos, sin) = if forms == 1 {
                        mean_phasors[f]
                    } else {
                        (table.cos[r * bands + f], table.sin[r * bands + f])
                    };
                    let (u, v) = form_weights(qre, qim, cos, sin, a);
                    let row = (h * forms + r) * 2 * bands;
                    trig[row + f] = u as f32;
                    trig[row + bands + f] = v as f32;
                }
            }
        }
        GroupForms {
            group,
            bands,
            forms,
            trig,
            norm,
        }
    }

    /// Query head `h`'s form `r`: `(u, v)`, each `bands` long.
    pub fn form(&self, h: usize, r: usize) -> (&[f32], &[f32]) {
        let row = (h * self.forms + r) * 2 * self.bands;
        self.trig[row..row + 2 * self.bands].split_at(self.bands)
    }

    /// Query head `h`'s norm weights.
    pub fn norm_weights(&self, h: usize) -> &[f32] {
        &self.norm[h * self.bands..(h + 1) * self.bands]
    }
}

/// What the scores of one KV head's keys depend on besides the keys.
#[derive(Clone, Copy, Debug)]
pub struct KeyScoreInputs<'a> {
    /// One per query head of the group.
    pub centers: &'a [HeadBandStats<'a>],
    pub rope: &'a RopeSpec,
    /// The phases of this step (built once per step, shared by every head and layer).
    pub table: &'a OffsetTable,
    pub options: &'a ScoreOptions,
}
