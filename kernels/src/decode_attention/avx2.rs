//! [`attend_group`](super::attend_group) in AVX2 and FMA: each key is read once for all the query
//! heads of its group and the dot products of four keys are reduced together (one horizontal sum per
//! four keys instead of one per key); each value is read once for all the heads, into accumulators
//! that cover sixteen of its elements at a time.

use std::arch::x86_64::*;

use super::{CacheElement, HeadEntries};
use crate::cpu_op::{exp_nonpositive, maximum, sum};

/// Keys whose dot products are reduced together.
const KEYS: usize = 4;
/// Query heads whose value sums are accumulated together (sixteen registers).
const HEADS: usize = 8;

/// # Safety
/// The CPU must have AVX2, FMA and F16C; `d` must be a multiple of 16; `q` holds `g × d` values for
/// `g = scores.len()` heads, each of `scores` `range.len()` values, and `outs` `g × (d + 2)`.
#[target_feature(enable = "avx2,fma,f16c")]
pub(super) unsafe fn attend_group<T: CacheElement>(
    q: &[f32],
    head: &HeadEntries<'_, T>,
    range: std::ops::Range<usize>,
    d: usize,
    scale: f32,
    scores: &mut [&mut [f32]],
    outs: &mut [f32],
) {
    let g = scores.len();
    let n = range.len();
    outs.fill(0.0);
    if n == 0 {
        for h in 0..g {
            outs[h * (d + 2)] = f32::NEG_INFINITY;
        }
        return;
    }
    let keys = head.keys.as_ptr().add(range.start * d);
    let values = head.values.as_ptr().add(range.start * d);
    let scale = _mm256_set1_ps(scale);
    // Scores: q_h·k_j, four keys at a time.
    let mut j = 0;
    while j + KEYS <= n {
        for (h, row) in scores.iter_mut().enumerate() {
            let qh = q.as_ptr().add(h * d);
            let mut acc = [_mm256_setzero_ps(); KEYS];
            for c in (0..d).step_by(8) {
                let qv = _mm256_loadu_ps(qh.add(c));
                for (k, a) in acc.iter_mut().enumerate() {
                    *a = _mm256_fmadd_ps(qv, T::load8(keys.add((j + k) * d + c)), *a);
                }
            }
            let four = _mm_mul_ps(reduce4(acc), _mm256_castps256_ps128(scale));
            _mm_storeu_ps(row.as_mut_ptr().add(j), four);
        }
        j += KEYS;
    }
    for j in j..n {
        for (h, row) in scores.iter_mut().enumerate() {
            let qh = q.as_ptr().add(h * d);
            let mut acc = _mm256_setzero_ps();
            for c in (0..d).step_by(8) {
                acc = _mm256_fmadd_ps(
                    _mm256_loadu_ps(qh.add(c)),
                    T::load8(keys.add(j * d + c)),
                    acc,
                );
            }
            row[j] = horizontal_sum(_mm256_mul_ps(acc, scale));
        }
    }
    // Each head's maximum, exponentials and their sum.
    for (h, row) in scores.iter_mut().enumerate() {
        let max = maximum(row);
        row.iter_mut().for_each(|s| *s -= max);
        exp_nonpositive(row);
        let out = &mut outs[h * (d + 2)..];
        out[0] = max;
        out[1] = sum(row);
    }
    // Σ_j e_hj·v_j, sixteen elements of up to eight heads at a time.
    for first in (0..g).step_by(HEADS) {
        let heads = &scores[first..g.min(first + HEADS)];
        for c in (0..d).step_by(16) {
            let mut acc = [[_mm256_setzero_ps(); 2]; HEADS];
            for j in 0..n {
                let v0 = T::load8(values.add(j * d + c));
                let v1 = T::load8(values.add(j * d + c + 8));
                for (a, row) in acc.iter_mut().zip(heads) {
                    let e = _mm256_set1_ps(*row.get_unchecked(j));
                    a[0] = _mm256_fmadd_ps(e, v0, a[0]);
                    a[1] = _mm256_fmadd_ps(e, v1, a[1]);
                }
            }
            for (h, a) in acc.iter().take(heads.len()).enumerate() {
                let out = outs.as_mut_ptr().add((first + h) * (d + 2) + 2 + c);
                _mm256_storeu_ps(out, a[0]);
                _mm256_storeu_ps(out.add(8), a[1]);
            }
        }
    }
}

/// The horizontal sums of four vectors, as one.
#[inline(always)]
unsafe fn reduce4(v: [__m256; KEYS]) -> __m128 {
    // [v0 pair sums, v1 pair sums] per 128-bit half, then [v0..v3 quarter sums] per half.
    let pairs = _mm256_hadd_ps(_mm256_hadd_ps(v[0], v[1]), _mm256_hadd_ps(v[2], v[3]));
    _mm_add_ps(
        _mm256_castps256_ps128(pairs),
        _mm256_extractf128_ps(pairs, 1),
    )
}

#[inline(always)]
unsafe fn horizontal_sum(v: __m256) -> f32 {
    let quad = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    let pair = _mm_add_ps(quad, _mm_movehl_ps(quad, quad));
    _mm_cvtss_f32(_mm_add_ss(pair, _mm_movehdup_ps(pair)))
}
