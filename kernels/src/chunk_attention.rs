//! A prompt chunk's attention over its sequence's cache: the chunk's `t` queries of every head
//! against each KV head's `n` entries, the last `t` of which are the chunk's own, so that query `i`
//! sees entries `0..n − t + i + 1`. The work is cut into tiles of a few positions × the GQA group's
//! query heads (about [`TILE_ROWS`] rows), whose scores against every key they see stay in cache
//! (48 × 8192 × 4 bytes = 1.5 MiB): a product, the softmax in place, a product, on one thread per
//! tile. candle's chain per KV head (`q·Kᵀ` for the whole chunk, the scaling, the mask's
//! concatenation, the softmax, `·V`) wrote and re-read `group·t × n` scores in memory several times:
//! 117 MB per KV head and layer for a 512-token chunk after 8K tokens of Qwen2.5, whose KV heads
//! each serve 7 query heads.

use std::borrow::Cow;
use std::cell::RefCell;

use crate::cpu_op::{softmax_in_place, vectorized};
use crate::decode_attention::{CacheElement, HeadEntries};
use crate::sgemm::{sgemm, Operand, Threads};
use crate::spin_pool::{run_parts, DisjointWrites};
use crate::transpose::transpose;

/// Query rows a tile aims at (positions × the group's heads).
const TILE_ROWS: usize = 48;

thread_local! {
    /// A tile's scores, then its weights; kept between calls.
    static SCORES: RefCell<Vec<f32>> = const { RefCell::new(Vec::new()) };
}

/// `softmax(q·Kᵀ·scale + causal mask)·V` for every head of a chunk of `t` positions: `q` is
/// `[heads, t, d]` (query head `h` reads KV head `h / group`) and each KV head's entries end with the
/// chunk's own `t`. Returns `[t, heads·d]`. With `received`, also each entry's weights summed over
/// its group's queries and the chunk's positions, one vector per KV head (as long as its entries).
///
/// # Panics
/// When `q` is not `heads.len() · group` heads of `t × d`, a KV head's keys and values are not both
/// `n × d`, or it holds fewer than `t` entries.
pub fn attend_chunk<T: CacheElement>(
    q: &[f32],
    heads: &[HeadEntries<'_, T>],
    group: usize,
    d: usize,
    scale: f32,
    received: Option<&mut [Vec<f32>]>,
) -> Vec<f32> {
    let width = heads.len() * group * d;
    assert!(
        width > 0 && q.len().is_multiple_of(width),
        "chunk attention: {} query elements are not {} heads of d = {d}",
        q.len(),
        heads.len() * group
    );
    assert!(
        heads
            .iter()
            .all(|h| h.keys.len() == h.values.len() && h.keys.len().is_multiple_of(d)),
        "chunk attention: a KV head's keys and values are not both n × d = {d}"
    );
    let t = q.len() / width;
    let lens: Vec<usize> = heads.iter().map(|h| h.keys.len() / d).collect();
    assert!(
        lens.iter().all(|&n| n >= t),
        "chunk attention: a KV head holds fewer entries than the chunk's {t} positions"
    );
    // kᵀ `[d, n]` per KV head, the right-hand side of q·Kᵀ that the product packs row by row; the
    // values as f32.
    let keys_t: Vec<Vec<f32>> = heads
        .iter()
        .zip(&lens)
        .map(|(h, &n)| {
            let mut kt = vec![0f32; n * d];
            transpose((n, d), &T::widen(h.keys), d, &mut kt);
            kt
        })
        .collect();
    let values: Vec<Cow<'_, [f32]>> = heads.iter().map(|h| T::widen(h.values)).collect();
    let positions = (TILE_ROWS / group).max(1);
    let tiles = t.div_ceil(positions);
    let mut out = vec![0f32; t * width];
    let parts = crate::spin_pool::parts();
    let tracking = received.is_some();
    let starts: Vec<usize> = lens
        .iter()
        .scan(0, |at, &n| {
            *at += n;
            Some(*at - n)
        })
        .collect();
    let total: usize = lens.iter().sum();
    let mut sums = vec![0f32; if tracking { parts * total } else { 0 }];
    let out_writes = DisjointWrites::new(&mut out);
    let sum_writes = DisjointWrites::new(&mut sums);
    run_parts(|part, parts| {
        vectorized(|| {
            // Tiles taken in turn: later positions see more keys, so a contiguous share would not
            // be an equal one.
            for item in (part..heads.len() * tiles).step_by(parts) {
                let (kv, tile) = (item % heads.len(), item / heads.len());
                let first = tile * positions;
                let tile = Tile {
                    kv,
                    first,
                    positions: positions.min(t - first),
                    t,
                    n: lens[kv],
                    group,
                    heads: heads.len() * group,
                    d,
                };
                let weights = tracking.then(|| {
                    // SAFETY: part `part`'s `total` sums, which only this part writes.
                    unsafe {
                        std::slice::from_raw_parts_mut(
                            sum_writes.at(part * total + starts[kv]),
                            lens[kv],
                        )
                    }
                });
                // SAFETY: the tile's rows of `out` are written by this tile alone.
                unsafe { tile.attend(q, &keys_t[kv], &values[kv], scale, out_writes, weights) };
            }
        })
    });
    if let Some(received) = received {
        for (kv, r) in received.iter_mut().enumerate() {
            *r = (0..lens[kv])
                .map(|j| (0..parts).map(|p| sums[p * total + starts[kv] + j]).sum())
                .collect();
        }
    }
    out
}

/// Positions `first..first + positions` of KV head `kv`'s query heads.
struct Tile {
    kv: usize,
    first: usize,
    positions: usize,
    t: usize,
    n: usize,
    group: usize,
    /// Query heads in all.
    heads: usize,
    d: usize,
}

impl Tile {
    /// The tile's outputs into `out` (`[t, heads·d]`), and with `weights` its queries' weights
    /// added to it (per entry).
    ///
    /// # Safety
    /// `out` holds `t` rows of `heads·d`, and nothing else writes this tile's elements of it.
    #[inline(always)]
    unsafe fn attend(
        &self,
        q: &[f32],
        keys_t: &[f32],
        values: &[f32],
        scale: f32,
        out: DisjointWrites,
        weights: Option<&mut [f32]>,
    ) {
        let (d, p) = (self.d, self.positions);
        let rows = self.group * p;
        // Entries the tile's last position sees; earlier positions see fewer.
        let seen = self.n - self.t + self.first + p;
        // Row `h·p + i`: query head `kv·group + h` at position `first + i`.
        let mut queries = vec![0f32; rows * d];
        for h in 0..self.group {
            let head = self.kv * self.group + h;
            let from = (head * self.t + self.first) * d;
            queries[h * p * d..(h + 1) * p * d].copy_from_slice(&q[from..from + p * d]);
        }
        let mut mixed = vec![0f32; rows * d];
        SCORES.with_borrow_mut(|scores| {
            if scores.len() < rows * seen {
                scores.resize(rows * seen, 0.0);
            }
            // SAFETY: queries `rows × d`, kᵀ `d × n` (row stride n) of which `seen ≤ n` columns,
            // scores `rows × seen`.
            sgemm(
                (rows, seen, d),
                scores.as_mut_ptr(),
                seen,
                Operand::of(&queries, d, false),
                Operand {
                    ptr: keys_t.as_ptr(),
                    rs: self.n as isize,
                    cs: 1,
                },
                scale,
                false,
                Threads::One,
            );
            let mut weights = weights;
            for (r, row) in scores[..rows * seen].chunks_exact_mut(seen).enumerate() {
                let sees = self.n - self.t + self.first + r % p + 1;
                let (live, future) = row.split_at_mut(sees);
                softmax_in_place(live);
                future.fill(0.0);
                if let Some(w) = weights.as_deref_mut() {
                    for (w, &x) in w.iter_mut().zip(live.iter()) {
                        *w += x;
                    }
                }
            }
            // SAFETY: weights `rows × seen`, values `seen × d` of `n × d`, mixed `rows × d`.
            sgemm(
                (rows, d, seen),
                mixed.as_mut_ptr(),
                d,
                Operand::of(&scores[..rows * seen], seen, false),
                Operand::of(values, d, false),
                1.0,
                false,
                Threads::One,
            );
        });
        let width = self.heads * d;
        for h in 0..self.group {
            let head = self.kv * self.group + h;
            for i in 0..p {
                let to = out.at((self.first + i) * width + head * d);
                std::ptr::copy_nonoverlapping(mixed[(h * p + i) * d..].as_ptr(), to, d);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use half::f16;

    fn values(n: usize, seed: f64) -> Vec<f32> {
        (0..n)
            .map(|i| ((i as f64 * 0.731 + seed).sin() * 1.7) as f32)
            .collect()
    }

    /// `[t, heads·d]` and the weights received per KV head, from the definition in f64.
    fn reference(
        q: &[f32],
        stores: &[(Vec<f32>, Vec<f32>)],
        group: usize,
        d: usize,
        t: usize,
        scale: f64,
    ) -> (Vec<f64>, Vec<Vec<f64>>) {
        let heads = stores.len() * group;
        let mut out = vec![0f64; t * heads * d];
        let mut received: Vec<Vec<f64>> =
            stores.iter().map(|(k, _)| vec![0.0; k.len() / d]).collect();
        for h in 0..heads {
            let (keys, vals) = &stores[h / group];
            let n = keys.len() / d;
            for i in 0..t {
                let query = &q[(h * t + i) * d..][..d];
                let sees = n - t + i + 1;
                let scores: Vec<f64> = (0..sees)
                    .map(|j| {
                        scale
                            * (0..d)
                                .map(|c| f64::from(query[c]) * f64::from(keys[j * d + c]))
                                .sum::<f64>()
                    })
                    .collect();
                let top = scores.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
                let exps: Vec<f64> = scores.iter().map(|s| (s - top).exp()).collect();
                let total: f64 = exps.iter().sum();
                for (j, e) in exps.iter().enumerate() {
                    let p = e / total;
                    received[h / group][j] += p;
                    for c in 0..d {
                        out[i * heads * d + h * d + c] += p * f64::from(vals[j * d + c]);
                    }
                }
            }
        }
        (out, received)
    }

    /// Every output and received weight against the f64 definition, for caches of f32 and of f16
    /// (the reference reads the same f16 values widened), KV heads of different lengths (one holding
    /// only the chunk), tiles cut mid-chunk (7 query heads a KV head: 6 positions a tile) and a width
    /// that is not a multiple of eight. Scores stay below ~10, where f32 products and the
    /// exponential's 2⁻²² keep weights and outputs within 2·10⁻⁶ of the definition; 10⁻⁵ leaves
    /// room for the sums' order.
    #[test]
    fn chunk_attention_is_the_definition() {
        for (group, d, t, extra) in [(7, 20, 13, [0, 41]), (3, 64, 50, [200, 3])] {
            let scale = 1.0 / (d as f64).sqrt();
            let q = values(2 * group * t * d, 0.3);
            let stores: Vec<(Vec<f32>, Vec<f32>)> = extra
                .iter()
                .enumerate()
                .map(|(h, &e)| {
                    let n = t + e;
                    let round =
                        |v: Vec<f32>| v.iter().map(|&x| f16::from_f32(x).to_f32()).collect();
                    (
                        round(values(n * d, h as f64)),
                        round(values(n * d, 5.0 + h as f64)),
                    )
                })
                .collect();
            let (want, want_received) = reference(&q, &stores, group, d, t, scale);
            let check = |got: &[f32], received: &[Vec<f32>]| {
                for (g, w) in got.iter().zip(&want) {
                    assert!((f64::from(*g) - w).abs() < 1e-5, "output {g} against {w}");
                }
                for (r, w) in received.iter().zip(&want_received) {
                    assert_eq!(r.len(), w.len());
                    for (g, w) in r.iter().zip(w) {
                        assert!(
                            (f64::from(*g) - w).abs() < 1e-5 * w.max(1.0),
                            "weight {g} against {w}"
                        );
                    }
                }
            };
            let heads: Vec<HeadEntries<'_, f32>> = stores
                .iter()
                .map(|(k, v)| HeadEntries { keys: k, values: v })
                .collect();
            let mut received = vec![Vec::new(); 2];
            let got = attend_chunk(&q, &heads, group, d, scale as f32, Some(&mut received));
            assert_eq!(got.len(), want.len());
            check(&got, &received);
            let halves: Vec<(Vec<f16>, Vec<f16>)> = stores
                .iter()
                .map(|(k, v)| {
                    let narrow = |x: &[f32]| x.iter().map(|&v| f16::from_f32(v)).collect();
                    (narrow(k), narrow(v))
                })
                .collect();
            let heads: Vec<HeadEntries<'_, f16>> = halves
                .iter()
                .map(|(k, v)| HeadEntries { keys: k, values: v })
                .collect();
            let got = attend_chunk(&q, &heads, group, d, scale as f32, Some(&mut received));
            check(&got, &received);
            // Without tracking, the same outputs.
            assert_eq!(attend_chunk(&q, &heads, group, d, scale as f32, None), got);
        }
    }
}
