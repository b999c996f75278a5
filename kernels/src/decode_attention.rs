//! One new token's attention over every KV head's cache, fused and on every thread: each thread takes
//! an equal share of every head's entries, reads each key and value once for the whole GQA group, and
//! keeps a running maximum, sum and weighted value sum; the shares are then combined exactly (as
//! flash-decoding does). candle's chain (`q·Kᵀ`, scale, softmax, `·V` per head, a concatenation and a
//! transpose) allocated a tensor per step and ran its products on one thread at this size. The cache
//! may hold f32 or f16 ([`CacheElement`]); f16 halves the bytes each step reads.

use std::borrow::Cow;
use std::cell::RefCell;

use half::f16;

use crate::cpu_op::{dot, exp_nonpositive, vectorized};
use crate::spin_pool::{run_parts, DisjointWrites};

#[cfg(target_arch = "x86_64")]
mod avx2;

/// One KV head's cache: `[n, head_dim]` keys and values, row-major.
pub struct HeadEntries<'a, T> {
    pub keys: &'a [T],
    pub values: &'a [T],
}

/// How a cache row is read: as f32, converted where it is stored narrower.
pub trait CacheElement: Copy + Sync {
    /// `q·row`.
    fn dot(q: &[f32], row: &[Self]) -> f32;
    /// `acc += p·row`.
    fn add_scaled(acc: &mut [f32], p: f32, row: &[Self]);
    /// The rows as f32: borrowed where they are f32.
    fn widen(rows: &[Self]) -> Cow<'_, [f32]>;

    /// The eight elements at `p`, as f32.
    ///
    /// # Safety
    /// The CPU must have AVX2 and F16C, and `p` must point at eight elements.
    #[cfg(target_arch = "x86_64")]
    unsafe fn load8(p: *const Self) -> std::arch::x86_64::__m256;
}

impl CacheElement for f32 {
    #[inline(always)]
    fn dot(q: &[f32], row: &[f32]) -> f32 {
        dot(q, row)
    }

    #[inline(always)]
    fn add_scaled(acc: &mut [f32], p: f32, row: &[f32]) {
        for (a, &v) in acc.iter_mut().zip(row) {
            *a += p * v;
        }
    }

    fn widen(rows: &[f32]) -> Cow<'_, [f32]> {
        Cow::Borrowed(rows)
    }

    #[cfg(target_arch = "x86_64")]
    #[inline(always)]
    unsafe fn load8(p: *const f32) -> std::arch::x86_64::__m256 {
        std::arch::x86_64::_mm256_loadu_ps(p)
    }
}

impl CacheElement for f16 {
    #[inline(always)]
    fn dot(q: &[f32], row: &[f16]) -> f32 {
        #[cfg(target_arch = "x86_64")]
        {
            if f16c::available() {
                // SAFETY: the CPU has the features; `q` and `row` have the same length.
                return unsafe { f16c::dot(q, row) };
            }
        }
        q.iter().zip(row).map(|(a, b)| a * b.to_f32()).sum()
    }

    #[inline(always)]
    fn add_scaled(acc: &mut [f32], p: f32, row: &[f16]) {
        #[cfg(target_arch = "x86_64")]
        {
            if f16c::available() {
                // SAFETY: as above, for `acc` and `row`.
                return unsafe { f16c::add_scaled(acc, p, row) };
            }
        }
        for (a, v) in acc.iter_mut().zip(row) {
            *a += p * v.to_f32();
        }
    }

    fn widen(rows: &[f16]) -> Cow<'_, [f32]> {
        let mut out = vec![0f32; rows.len()];
        #[cfg(target_arch = "x86_64")]
        {
            if f16c::available() {
                // SAFETY: the CPU has the features; `out` is as long as `rows`.
                unsafe { f16c::widen(rows, &mut out) };
                return Cow::Owned(out);
            }
        }
        for (o, v) in out.iter_mut().zip(rows) {
            *o = v.to_f32();
        }
        Cow::Owned(out)
    }

    #[cfg(target_arch = "x86_64")]
    #[inline(always)]
    unsafe fn load8(p: *const f16) -> std::arch::x86_64::__m256 {
        use std::arch::x86_64::*;
        _mm256_cvtph_ps(_mm_loadu_si128(p as *const __m128i))
    }
}

/// f16 rows widened eight at a time by F16C: `half`'s own conversion ran in software here, and made
/// an f16 cache decode at half the speed of an f32 one.
#[cfg(target_arch = "x86_64")]
mod f16c {
    use half::f16;
    use std::arch::x86_64::*;

    pub(super) fn available() -> bool {
        is_x86_feature_detected!("avx2")
            && is_x86_feature_detected!("fma")
            && is_x86_feature_detected!("f16c")
    }

    #[inline(always)]
    unsafe fn widen8(row: &[f16], i: usize) -> __m256 {
        _mm256_cvtph_ps(_mm_loadu_si128(row.as_ptr().add(i) as *const __m128i))
    }

    /// # Safety
    /// The CPU must have AVX2, FMA and F16C; `q` and `row` must have the same length.
    #[target_feature(enable = "avx2,fma,f16c")]
    pub(super) unsafe fn dot(q: &[f32], row: &[f16]) -> f32 {
        let n = row.len() / 8 * 8;
        let mut acc = _mm256_setzero_ps();
        for i in (0..n).step_by(8) {
            acc = _mm256_fmadd_ps(_mm256_loadu_ps(q.as_ptr().add(i)), widen8(row, i), acc);
        }
        let mut lanes = [0f32; 8];
        _mm256_storeu_ps(lanes.as_mut_ptr(), acc);
        let tail: f32 = (n..row.len()).map(|i| q[i] * row[i].to_f32()).sum();
        lanes.iter().sum::<f32>() + tail
    }

    /// # Safety
    /// The CPU must have AVX2, FMA and F16C; `out` must be as long as `rows`.
    #[target_feature(enable = "avx2,fma,f16c")]
    pub(super) unsafe fn widen(rows: &[f16], out: &mut [f32]) {
        let n = rows.len() / 8 * 8;
        for i in (0..n).step_by(8) {
            _mm256_storeu_ps(out.as_mut_ptr().add(i), widen8(rows, i));
        }
        for i in n..rows.len() {
            out[i] = rows[i].to_f32();
        }
    }

    /// # Safety
    /// As [`dot`], for `acc` and `row`.
    #[target_feature(enable = "avx2,fma,f16c")]
    pub(super) unsafe fn add_scaled(acc: &mut [f32], p: f32, row: &[f16]) {
        let n = row.len() / 8 * 8;
        let pv = _mm256_set1_ps(p);
        for i in (0..n).step_by(8) {
            let a = acc.as_mut_ptr().add(i);
            _mm256_storeu_ps(a, _mm256_fmadd_ps(pv, widen8(row, i), _mm256_loadu_ps(a)));
        }
        for i in n..row.len() {
            acc[i] += p * row[i].to_f32();
        }
    }
}

thread_local! {
    /// Every head's scores, then their exponentials, `g × n` per head; kept between steps.
    static SCORES: RefCell<Vec<f32>> = const { RefCell::new(Vec::new()) };
}

/// `softmax(q·Kᵀ·scale)·V` for each query head (`q: [heads, d]`, head `h` reading KV head `h / group`),
/// as `[heads·d]`. With `received`, also each entry's attention summed over its group's queries, one
/// vector per KV head.
pub fn attend_one_token<T: CacheElement>(
    q: &[f32],
    heads: &[HeadEntries<'_, T>],
    group: usize,
    d: usize,
    scale: f32,
    received: Option<&mut [Vec<f32>]>,
) -> Vec<f32> {
    let lens: Vec<usize> = heads.iter().map(|h| h.keys.len() / d).collect();
    // Where each KV head's `g × n` scores start.
    let starts: Vec<usize> = lens
        .iter()
        .scan(0, |at, &n| {
            let start = *at;
            *at += group * n;
            Some(start)
        })
        .collect();
    let total: usize = lens.iter().map(|&n| group * n).sum();
    // Per part, per query head: running maximum, sum, and `d` weighted value sums.
    let stride = d + 2;
    let parts = crate::spin_pool::parts();
    let mut partial = vec![0f32; parts * q.len() / d * stride];
    SCORES.with_borrow_mut(|scores| {
        if scores.len() < total {
            scores.resize(total, 0.0);
        }
        let scores_out = DisjointWrites::new(scores);
        let partial_out = DisjointWrites::new(&mut partial);
        run_parts(|part, parts| {
            vectorized(|| {
                for (kv, head) in heads.iter().enumerate() {
                    let n = lens[kv];
                    let range = part * n / parts..(part + 1) * n / parts;
                    // SAFETY: this part alone writes its `range` of each of this head's `group`
                    // rows of scores, and its own partial sums; both buffers outlive the section.
                    let mut rows: Vec<&mut [f32]> = (0..group)
                        .map(|g| unsafe {
                            std::slice::from_raw_parts_mut(
                                scores_out.at(starts[kv] + g * n + range.start),
                                range.len(),
                            )
                        })
                        .collect();
                    let first = part * q.len() / d + kv * group;
                    let outs = unsafe {
                        std::slice::from_raw_parts_mut(
                            partial_out.at(first * stride),
                            group * stride,
                        )
                    };
                    attend_group(
                        &q[kv * group * d..(kv + 1) * group * d],
                        head,
                        range,
                        d,
                        scale,
                        &mut rows,
                        outs,
                    );
                }
            })
        });
        let mut attended = vec![0f32; q.len()];
        let heads_q = q.len() / d;
        // Per part and query head: the factor that turns its exponentials into probabilities.
        let mut factors = vec![0f32; parts * heads_q];
        for h in 0..heads_q {
            let at =
                |p: usize| &partial[(p * heads_q + h) * stride..(p * heads_q + h + 1) * stride];
            let max = (0..parts)
                .map(|p| at(p)[0])
                .fold(f32::NEG_INFINITY, f32::max);
            let weights: Vec<f32> = (0..parts).map(|p| (at(p)[0] - max).exp()).collect();
            let sum: f32 = (0..parts).map(|p| at(p)[1] * weights[p]).sum();
            let out = &mut attended[h * d..(h + 1) * d];
            for (p, &w) in weights.iter().enumerate() {
                for (o, &a) in out.iter_mut().zip(&at(p)[2..]) {
                    *o += a * w;
                }
                factors[p * heads_q + h] = w / sum;
            }
            out.iter_mut().for_each(|o| *o /= sum);
        }
        if let Some(received) = received {
            for (kv, got) in received.iter_mut().enumerate() {
                let n = lens[kv];
                got.clear();
                got.resize(n, 0.0);
                for p in 0..parts {
                    for g in 0..group {
                        let factor = factors[p * heads_q + kv * group + g];
                        let row = &scores[starts[kv] + g * n..starts[kv] + (g + 1) * n];
                        for j in p * n / parts..(p + 1) * n / parts {
                            got[j] += row[j] * factor;
                        }
                    }
                }
            }
        }
        attended
    })
}

/// The `g` query heads of one KV head (`q`: `g × d`) against entries `range` of it: for each query
/// head `h`, `scores[h]` gets `e^{s_j − m}` for `s_j = q_h·k_j·scale` and `m` their maximum, and
/// `outs[h·(d+2)..]` gets `[m, Σ_j e^{s_j − m}, Σ_j e^{s_j − m}·v_j]` (`m = −∞` and zero sums for an
/// empty range). Where the CPU has AVX2 and FMA, every key and value is read once for all `g` heads
/// and the scores of four keys are reduced together.
#[inline(always)]
fn attend_group<T: CacheElement>(
    q: &[f32],
    head: &HeadEntries<'_, T>,
    range: std::ops::Range<usize>,
    d: usize,
    scale: f32,
    scores: &mut [&mut [f32]],
    outs: &mut [f32],
) {
    #[cfg(target_arch = "x86_64")]
    {
        if d.is_multiple_of(16) && f16c::available() {
            // SAFETY: the CPU has AVX2 and FMA (and F16C where `T` is f16, which `CacheElement`
            // checks); `d` is a multiple of 16 and every slice has the sizes described above.
            unsafe { avx2::attend_group(q, head, range, d, scale, scores, outs) };
            return;
        }
    }
    for (g, s) in scores.iter_mut().enumerate() {
        attend_range(
            &q[g * d..(g + 1) * d],
            head,
            range.clone(),
            d,
            scale,
            s,
            &mut outs[g * (d + 2)..(g + 1) * (d + 2)],
        );
    }
}

/// One query against entries `range` of one head: `scores` gets `e^{s_j − m}` for `s_j = q·k_j·scale`
/// and `m` their maximum, and `out` gets `[m, Σ_j e^{s_j − m}, Σ_j e^{s_j − m}·v_j]` (`m = −∞` and zero
/// sums for an empty range).
#[inline(always)]
fn attend_range<T: CacheElement>(
    q: &[f32],
    head: &HeadEntries<'_, T>,
    range: std::ops::Range<usize>,
    d: usize,
    scale: f32,
    scores: &mut [f32],
    out: &mut [f32],
) {
    let mut max = f32::NEG_INFINITY;
    for (j, s) in range.clone().zip(scores.iter_mut()) {
        *s = T::dot(q, &head.keys[j * d..(j + 1) * d]) * scale;
        max = max.max(*s);
    }
    out.fill(0.0);
    out[0] = max;
    if scores.is_empty() {
        return;
    }
    scores.iter_mut().for_each(|s| *s -= max);
    exp_nonpositive(scores);
    out[1] = scores.iter().sum();
    let acc = &mut out[2..];
    for (j, &p) in range.zip(scores.iter()) {
        T::add_scaled(acc, p, &head.values[j * d..(j + 1) * d]);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{Device, Tensor};

    fn values(n: usize, seed: f32) -> Vec<f32> {
        (0..n)
            .map(|i| (i as f32 * 0.731 + seed).sin() * 2.3)
            .collect()
    }

    /// Against candle's chain per head (`q·Kᵀ·scale`, softmax, `·V`), with heads of different lengths
    /// (1 entry, fewer entries than threads, many). Scores here reach ~30, where one f32 ulp of a
    /// score (the dot products sum in another order) is 2·10⁻⁶ of its exponential; with the
    /// exponential's own 2⁻²², probabilities and outputs agree within 10⁻⁵ relative.
    #[test]
    fn fused_attention_is_candles_softmax_chain() {
        let (d, group) = (64, 3);
        let lens = [1usize, 5, 700];
        let q = values(lens.len() * group * d, 0.2);
        let stores: Vec<(Vec<f32>, Vec<f32>)> = lens
            .iter()
            .enumerate()
            .map(|(h, &n)| (values(n * d, h as f32), values(n * d, 10.0 + h as f32)))
            .collect();
        let heads: Vec<HeadEntries<'_, f32>> = stores
            .iter()
            .map(|(k, v)| HeadEntries { keys: k, values: v })
            .collect();
        let scale = 1.0 / (d as f32).sqrt();
        let mut received = vec![Vec::new(); lens.len()];
        let got = attend_one_token(&q, &heads, group, d, scale, Some(&mut received));
        for (kv, (&n, (k, v))) in lens.iter().zip(&stores).enumerate() {
            let dev = &Device::Cpu;
            let qg = Tensor::from_slice(&q[kv * group * d..(kv + 1) * group * d], (group, d), dev)
                .unwrap();
            let k = Tensor::from_slice(k, (n, d), dev).unwrap();
            let v = Tensor::from_slice(v, (n, d), dev).unwrap();
            let probs = candle_nn::ops::softmax_last_dim(
                &(qg.matmul(&k.t().unwrap()).unwrap() * f64::from(scale)).unwrap(),
            )
            .unwrap();
            let want = probs
                .matmul(&v)
                .unwrap()
                .flatten_all()
                .unwrap()
                .to_vec1::<f32>()
                .unwrap();
            let out = &got[kv * group * d..(kv + 1) * group * d];
            for (a, b) in out.iter().zip(&want) {
                assert!(
                    (a - b).abs() <= 1e-5 * b.abs().max(1.0),
                    "head {kv}: {a} vs {b}"
                );
            }
            let sums = probs.sum(0).unwrap().to_vec1::<f32>().unwrap();
            for (a, b) in received[kv].iter().zip(&sums) {
                assert!((a - b).abs() <= 1e-5 * b + 1e-9, "head {kv}: {a} vs {b}");
            }
        }
    }

    /// An f16 cache is read as the f32 cache of its widened values (its products fuse multiply and
    /// add, the f32 path's round twice: a few ulps apart).
    #[test]
    fn an_f16_cache_reads_as_its_f32_values() {
        let (d, group, n) = (64, 3, 300);
        let q = values(2 * group * d, 0.4);
        let narrow: Vec<Vec<f16>> = (0..4)
            .map(|i| {
                values(n * d, i as f32)
                    .iter()
                    .map(|&v| f16::from_f32(v))
                    .collect()
            })
            .collect();
        let wide: Vec<Vec<f32>> = narrow
            .iter()
            .map(|v| v.iter().map(|x| x.to_f32()).collect())
            .collect();
        let heads16: Vec<HeadEntries<'_, f16>> = (0..2)
            .map(|h| HeadEntries {
                keys: &narrow[2 * h],
                values: &narrow[2 * h + 1],
            })
            .collect();
        let heads32: Vec<HeadEntries<'_, f32>> = (0..2)
            .map(|h| HeadEntries {
                keys: &wide[2 * h],
                values: &wide[2 * h + 1],
            })
            .collect();
        let a = attend_one_token(&q, &heads16, group, d, 0.125, None);
        let b = attend_one_token(&q, &heads32, group, d, 0.125, None);
        for (x, y) in a.iter().zip(&b) {
            assert!((x - y).abs() <= 1e-5 * y.abs().max(1.0), "{x} vs {y}");
        }
    }

    #[test]
    fn a_single_entry_gets_all_the_attention() {
        let keys = vec![1.0f32; 8];
        let values: Vec<f32> = (0..8).map(|i| i as f32).collect();
        let heads = [HeadEntries {
            keys: &keys,
            values: &values,
        }];
        let mut received = vec![Vec::new()];
        let out = attend_one_token(&[3.0; 16], &heads, 2, 8, 0.5, Some(&mut received));
        assert_eq!(out, [values.clone(), values].concat());
        assert_eq!(received[0], vec![2.0]);
    }
}
