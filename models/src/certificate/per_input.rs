//! Per-input certificates (`docs/certificate.md`, "Per-input certificates"): the blocks' Lipschitz
//! constant on the ball around one input, from what an f64 forward pass of that input measures
//! entering every block (the stream's size, and each head's queries, keys and values), enlarged by
//! how far the ball can move each of them.

use candle_core::{DType, Tensor};
use spectra_core::Result;

use super::{GptBlockNorms, GptNorms};

/// The measured sizes are enlarged by `STREAM_SLACK` relative, plus `STREAM_FLOOR` times their
/// global bound (for a size that a residual happens to cancel): the f64 pass's rounding, amplified
/// through every block, stays many orders of magnitude below both.
const STREAM_SLACK: f64 = 1e-4;
const STREAM_FLOOR: f64 = 1e-9;

/// Rounding allowance of a variance computed as `E‖x‖² − ‖E x‖²` in f64, relative to `E‖x‖²`: each
/// moment sums at most `seq` weighted terms per coordinate, so either is off by at most about
/// `2·(seq + d_head)·2⁻⁵³·E‖x‖²` (~7e-14 at 256 positions of 64), far below it.
const VARIANCE_ROUNDING: f64 = 1e-12;

/// What one window's f64 forward pass measures entering one block: per position `t`, the stream's
/// RMS and, per head (`[t][h]`, ℓ2 norms), the query's norm; the radii of balls that hold the head's
/// keys (rotated) and values at positions `≤ t`; their standard deviations under the attention
/// weights of query `t` (`√E_p‖x − E_p x‖²`); and the largest of those weights.
#[derive(Clone, Debug, PartialEq)]
pub struct StreamSizes {
    pub rms: Vec<f64>,
    pub query: Vec<Vec<f64>>,
    pub key_spread: Vec<Vec<f64>>,
    pub value_spread: Vec<Vec<f64>>,
    pub key_deviation: Vec<Vec<f64>>,
    pub value_deviation: Vec<Vec<f64>>,
    pub largest_weight: Vec<Vec<f64>>,
}

impl StreamSizes {
    /// Per window, the sizes of a stream `[batch, seq, d_model]` whose heads' rotated queries and
    /// keys and values are `[q, k, v]` (`[batch, heads, seq, d_head]` each) and attention weights
    /// `weights` (`[batch, heads, seq, seq]`).
    pub fn measure(
        stream: &Tensor,
        [q, k, v]: [&Tensor; 3],
        weights: &Tensor,
    ) -> Result<Vec<StreamSizes>> {
        let f64s = |x: &Tensor| x.to_dtype(DType::F64);
        let (q, k, v, weights) = (f64s(q)?, f64s(k)?, f64s(v)?, f64s(weights)?);
        let rms = f64s(stream)?.sqr()?.mean(2)?.sqrt()?.to_vec2::<f64>()?;
        let query = q.sqr()?.sum(3)?.sqrt()?.to_vec3::<f64>()?;
        let key_deviation = weighted_deviation(&weights, &k)?;
        let value_deviation = weighted_deviation(&weights, &v)?;
        let largest_weight = weights.max(3)?.to_vec3::<f64>()?;
        let spreads = |x: &Tensor| -> Result<Vec<Vec<Vec<f64>>>> {
            let (batch, heads, seq, head_dim) = x.dims4()?;
            let vectors = x
                .reshape((batch * heads, seq, head_dim))?
                .to_vec3::<f64>()?;
            let per_head: Vec<Vec<f64>> = vectors.iter().map(|x| prefix_spread(x)).collect();
            Ok(per_head.chunks(heads).map(by_position).collect())
        };
        Ok(rms
            .into_iter()
            .zip(spreads(&k)?.into_iter().zip(spreads(&v)?))
            .enumerate()
            .map(|(i, (rms, (key_spread, value_spread)))| StreamSizes {
                rms,
                query: by_position(&query[i]),
                key_spread,
                value_spread,
                key_deviation: by_position(&key_deviation[i]),
                value_deviation: by_position(&value_deviation[i]),
                largest_weight: by_position(&largest_weight[i]),
            })
            .collect())
    }
}

/// `[batch][heads][seq]`: `√(E_p‖x‖² − ‖E_p x‖²)` under each query's weights `p`, for `x: [batch,
/// heads, seq, d_head]`, with the variance's rounding allowance.
fn weighted_deviation(weights: &Tensor, x: &Tensor) -> Result<Vec<Vec<Vec<f64>>>> {
    let mean = weights.matmul(x)?;
    let second = weights.matmul(&x.sqr()?.sum_keepdim(3)?)?.squeeze(3)?;
    let variance = (&second - mean.sqr()?.sum(3)?)?.relu()?;
    Ok((variance + (second * VARIANCE_ROUNDING)?)?
        .sqrt()?
        .to_vec3::<f64>()?)
}

/// `[heads][seq]` to `[seq][heads]`.
fn by_position(per_head: &[Vec<f64>]) -> Vec<Vec<f64>> {
    let seq = per_head.first().map_or(0, Vec::len);
    (0..seq)
        .map(|t| per_head.iter().map(|h| h[t]).collect())
        .collect()
}

fn norm(x: &[f64]) -> f64 {
    x.iter().map(|a| a * a).sum::<f64>().sqrt()
}

/// Per position `t`, the radius of a ball holding `vectors[s]` for every `s ≤ t`: the smaller of the
/// ball about the origin and the ball about the mean of all the vectors (a common component, which
/// a residual stream carries, then costs nothing).
fn prefix_spread(vectors: &[Vec<f64>]) -> Vec<f64> {
    let Some(first) = vectors.first() else {
        return Vec::new();
    };
    let mut mean = vec![0.0; first.len()];
    for x in vectors {
        for (m, a) in mean.iter_mut().zip(x) {
            *m += a / vectors.len() as f64;
        }
    }
    if mean.iter().any(|m| !m.is_finite()) {
        return vec![f64::INFINITY; vectors.len()];
    }
    let (mut about_origin, mut about_mean) = (0f64, 0f64);
    vectors
        .iter()
        .map(|x| {
            about_origin = about_origin.max(norm(x));
            let centred: Vec<f64> = x.iter().zip(&mean).map(|(a, m)| a - m).collect();
            about_mean = about_mean.max(norm(&centred));
            about_origin.min(about_mean)
        })
        .collect()
}

impl GptBlockNorms {
    /// The attention's Lipschitz constant at query position `t` on the set of streams within RMS
    /// `eta` of the measured one at every position `≤ t` (`docs/certificate.md`, (A2′)): (A2) with
    /// each head's measured query norm and key and value sizes, each grown by how far `eta` can move
    /// it, in place of their worst case on `D(r)`. `global` is the stage-1 radius the measured
    /// sizes' floor is taken from.
    fn measured_attention_lipschitz(
        &self,
        sizes: &StreamSizes,
        t: usize,
        eta: f64,
        global: f64,
        gpt: &GptNorms,
    ) -> f64 {
        let root_d = (gpt.d_model as f64).sqrt();
        let c = gpt.softmax_scale * gpt.heads as f64 / gpt.d_model as f64;
        // A size that is not finite leaves the bound to (A2): `max` and `min` would pass over a NaN.
        let every_size = [
            &sizes.query,
            &sizes.key_spread,
            &sizes.value_spread,
            &sizes.key_deviation,
            &sizes.value_deviation,
            &sizes.largest_weight,
        ];
        if every_size
            .iter()
            .any(|x| x[t].iter().any(|v| !v.is_finite()))
        {
            return f64::INFINITY;
        }
        let measured =
            |x: f64, sigma: f64| x * (1.0 + STREAM_SLACK) + sigma * root_d * STREAM_FLOOR * global;
        // How far the ball moves a head's vectors; the slack also covers the f32 RoPE tables,
        // whose bands are rotations only to ~1e-7.
        let moved = |sigma: f64| sigma * root_d * eta * (1.0 + STREAM_SLACK);
        let grow = |x: f64, sigma: f64| measured(x, sigma) + moved(sigma);
        let (mut kv_max, mut kv_query_rows, mut key_rows_v_max, mut query_side) =
            (0f64, 0f64, 0f64, 0f64);
        let mut query_total = 0f64;
        for h in 0..self.k_heads.len() {
            let (sq, sk, sv) = (self.q_heads[h], self.k_heads[h], self.v_heads[h]);
            let query = measured(sizes.query[t][h], sq);
            let q = grow(sizes.query[t][h], sq);
            let k_spread = grow(sizes.key_spread[t][h], sk);
            // How far the ball can tilt the weights: every score of query t moves by at most
            // `drift` plus a constant, so each weight changes by a factor within e^{±2·drift}.
            let drift = c * (moved(sq) * k_spread + query * moved(sk));
            let tilt = drift.exp();
            // The tilted weights' deviation of the measured vectors, then how far the ball moves
            // them (Minkowski under the tilted weights).
            let k = k_spread.min(tilt * measured(sizes.key_deviation[t][h], sk) + moved(sk));
            let v = grow(sizes.value_spread[t][h], sv)
                .min(tilt * measured(sizes.value_deviation[t][h], sv) + moved(sv));
            // Scores of moving keys vary around the most-weighted key's by at most twice their size,
            // on the weight it leaves to the others.
            let others = (1.0 - sizes.largest_weight[t][h]).max(0.0) + VARIANCE_ROUNDING;
            let moving_keys_share = (2.0 * tilt * others.sqrt()).min(1.0);
            kv_max = kv_max.max(k * v);
            kv_query_rows += (sq * k * v).powi(2);
            key_rows_v_max = key_rows_v_max.max(sk * moving_keys_share * v);
            query_side += (q * sk * moving_keys_share * v).powi(2);
            query_total += sizes.query[t][h].powi(2);
        }
        let query_total = grow(query_total.sqrt(), self.q.1);
        // A moving query against the keys' spread; the query against moving keys.
        let moving_query = (self.q.1 * kv_max).min(kv_query_rows.sqrt());
        let moving_keys = query_side.sqrt().min(query_total * key_rows_v_max);
        self.o.1 / 3.0 * (self.value_gain() + c * (moving_query + moving_keys))
    }
}

impl GptNorms {
    /// Per position `t` of one input sequence, the Lipschitz constant of the blocks (embedding output
    /// to the stream entering the head) on the ball of radius `eps` around it, from `window[l]`, what
    /// the sequence measures entering block `l`. Position `t`'s logits depend on positions `≤ t`
    /// only. With `e_l(t)` the bound entering block `l` for positions `≤ t` (1 at the embedding),
    /// every perturbed stream there lies within `η = e_l(t)·eps` of the measured one, and so within
    /// RMS `R_l(t) = (1 + STREAM_SLACK)·max_{s≤t} rms + η` (plus `STREAM_FLOOR` of the global radius),
    /// never more than the global stage-1 radius on `D(input_rms + eps)`. The attention at `t` is
    /// the smaller of `L_att(R_l(t))` and its measured form; `e` after the attention is the running
    /// maximum over positions of `((1 − a) + a·L_att(t))·e_l(t)`, then the MLP multiplies it.
    pub fn local_block_bounds(&self, input_rms: f64, window: &[StreamSizes], eps: f64) -> Vec<f64> {
        let a = self.residual_weight;
        // A centre outside `D(input_rms)` (a body input that no embedding gives) enlarges the domain.
        let centre = window.first().map_or(0.0, |s| {
            s.rms.iter().fold(0.0, |m: f64, &x| {
                if x.is_finite() {
                    m.max(x)
                } else {
                    f64::INFINITY
                }
            })
        });
        // Embedding outputs measure at `input_rms` up to the f64 rounding of the two RMS sums.
        let domain = if centre > input_rms * (1.0 + 1e-12) {
            centre * (1.0 + STREAM_SLACK)
        } else {
            input_rms
        };
        let positions = window.first().map_or(0, |s| s.rms.len());
        let mut e = vec![1.0; positions];
        let mut global = domain + eps;
        for (b, sizes) in self.blocks.iter().zip(window) {
            let (mut running, mut after) = (0f64, 0f64);
            for (t, e_t) in e.iter_mut().enumerate() {
                let measured = sizes.rms[t];
                // A stream that is not finite is bounded by the global radius alone; so is any
                // measured size that is not (`min` passes over a NaN).
                running = if measured.is_finite() {
                    running.max(measured)
                } else {
                    f64::INFINITY
                };
                let eta = *e_t * eps;
                let radius =
                    (running * (1.0 + STREAM_SLACK) + STREAM_FLOOR * global + eta).min(global);
                let attention = b
                    .attention_lipschitz(radius, self.heads, self.softmax_scale)
                    .min(b.measured_attention_lipschitz(sizes, t, eta, global, self));
                after = after.max(((1.0 - a) + a * attention) * *e_t);
                *e_t = after * ((1.0 - a) + a * b.mlp_lipschitz());
            }
            global *= (1.0 - a) + a * b.attention_gain();
            global *= (1.0 - a) + a * b.mlp_gain();
        }
        e
    }
}

#[cfg(test)]
mod tests {
    use super::super::tests::{block, gpt};
    use super::*;
    use candle_core::Device;

    /// Sizes of a window of `seq` positions whose every measured size is `value`.
    fn uniform(seq: usize, heads: usize, rms: f64, value: f64) -> StreamSizes {
        let each = vec![vec![value; heads]; seq];
        StreamSizes {
            rms: vec![rms; seq],
            query: each.clone(),
            key_spread: each.clone(),
            value_spread: each.clone(),
            key_deviation: each.clone(),
            value_deviation: each,
            largest_weight: vec![vec![0.0; heads]; seq],
        }
    }

    #[test]
    fn spreads_take_the_smaller_ball_over_the_prefix() {
        // (3, 4), (3, −4), (0, 0): mean (2, 0), distances √17, √17, 2; norms 5, 5, 0. The ball about
        // the mean is the smaller from the first position on.
        let v = prefix_spread(&[vec![3.0, 4.0], vec![3.0, -4.0], vec![0.0, 0.0]]);
        for got in &v {
            assert!((got - 17f64.sqrt()).abs() < 1e-15, "{v:?}");
        }
        // About the origin where that is smaller: (0, 0), (4, 0), (4, 0) have mean (8/3, 0); the first
        // alone is 0 from the origin, then the mean's ball (radius 8/3) beats the origin's (4).
        let v = prefix_spread(&[vec![0.0, 0.0], vec![4.0, 0.0], vec![4.0, 0.0]]);
        assert_eq!(v[0], 0.0);
        assert!(
            v[1..].iter().all(|r| (r - 8.0 / 3.0).abs() < 1e-15),
            "{v:?}"
        );
        // A vector that is not finite, even after the position, leaves no ball.
        let v = prefix_spread(&[vec![1.0, 0.0], vec![f64::NAN, 0.0]]);
        assert!(v.iter().all(|r| *r == f64::INFINITY), "{v:?}");
        // One window, one head, two positions of 2-vectors: queries (3, 4), (0, 1); keys (3, 4),
        // (3, −4); values (1, 0), (1, 0). The second query weighs the keys ¼ and ¾.
        let tensor = |x: &[f64]| Tensor::from_slice(x, (1, 1, 2, 2), &Device::Cpu).unwrap();
        let (q, k, v) = (
            tensor(&[3.0, 4.0, 0.0, 1.0]),
            tensor(&[3.0, 4.0, 3.0, -4.0]),
            tensor(&[1.0, 0.0, 1.0, 0.0]),
        );
        let weights = tensor(&[1.0, 0.0, 0.25, 0.75]);
        let stream = Tensor::from_slice(&[3.0, 4.0, 0.0, 0.0], (1, 2, 2), &Device::Cpu).unwrap();
        let sizes = StreamSizes::measure(&stream, [&q, &k, &v], &weights).unwrap();
        let sizes = &sizes[0];
        assert_eq!(sizes.rms, vec![12.5f64.sqrt(), 0.0]);
        assert_eq!(sizes.query, vec![vec![5.0], vec![1.0]]);
        assert_eq!(sizes.key_spread, vec![vec![4.0], vec![4.0]]);
        assert_eq!(sizes.value_spread, vec![vec![0.0], vec![0.0]]);
        assert_eq!(sizes.largest_weight, vec![vec![1.0], vec![0.75]]);
        // Keys under (¼, ¾): mean (3, −2), deviations 6 and 2, variance ¼·36 + ¾·4 = 12; under (1, 0)
        // none. Values are equal: none. Each carries its rounding allowance, 1e-12 of E‖x‖² = 25.
        let allowance = (25.0 * VARIANCE_ROUNDING).sqrt();
        let close = |got: f64, want: f64| (got - want).abs() < 1e-12 + 1e-12 * want;
        assert!(close(sizes.key_deviation[0][0], allowance), "{sizes:?}");
        assert!(close(
            sizes.key_deviation[1][0],
            (12.0 + 25.0 * VARIANCE_ROUNDING).sqrt()
        ));
        assert!(sizes
            .value_deviation
            .iter()
            .all(|d| close(d[0], VARIANCE_ROUNDING.sqrt())));
    }

    #[test]
    fn worst_case_sizes_give_the_global_attention_bound() {
        // Each measured size at its worst case on D(r) (σ·√d·r, the query's whole norm ‖W_q‖·√d·r
        // shared by the heads), no ball: (A2′) is (A2) term for term.
        let (heads, r) = (4, 0.7);
        let norms = gpt(vec![block(1.3, heads, 1.3)], 1.0, 0.5, heads, 1.0);
        let b = &norms.blocks[0];
        let root_d = (norms.d_model as f64).sqrt();
        let worst = 1.3 * root_d * r;
        let mut sizes = uniform(1, heads, r, worst);
        sizes.query = vec![vec![worst / (heads as f64).sqrt(); heads]];
        let measured = b.measured_attention_lipschitz(&sizes, 0, 0.0, 0.0, &norms);
        let global = b.attention_lipschitz(r, heads, 1.0);
        // The measured sizes carry their slack: each score product has two of them.
        assert!(
            measured >= global && measured <= global * (1.0 + STREAM_SLACK).powi(2),
            "{measured} vs {global}"
        );
    }

    #[test]
    fn small_measured_sizes_tighten_the_bound_and_never_loosen_it() {
        let heads = 2;
        let norms = gpt(vec![block(1.5, heads, 1.5); 2], 1.0, 0.25, heads, 1.0);
        let global = norms.body_bound(1.0 + 0.01) / norms.head.1;
        let small = norms.local_block_bounds(1.0, &vec![uniform(3, heads, 1.0, 0.1); 2], 0.01);
        let huge = norms.local_block_bounds(1.0, &vec![uniform(3, heads, 1.0, 1e6); 2], 0.01);
        assert!(
            small.iter().all(|&l| l < 0.9 * global),
            "{small:?} vs {global}"
        );
        assert!(
            huge.iter().all(|&l| l <= global * (1.0 + 1e-12)),
            "{huge:?}"
        );
        // Sizes that are not finite fall back to the global radius.
        // (The embedding output itself is always finite: it is a column of the table.)
        let mut first = uniform(3, heads, 1.0, 0.1);
        first.query[1][0] = f64::NAN;
        first.largest_weight[2][1] = f64::NAN;
        let mut second = uniform(3, heads, 1.0, 0.1);
        second.rms[2] = f64::INFINITY;
        second.value_spread[0][1] = f64::INFINITY;
        let b = &norms.blocks[0];
        for t in [1, 2] {
            let measured = b.measured_attention_lipschitz(&first, t, 0.01, 1.0, &norms);
            assert_eq!(measured, f64::INFINITY, "position {t}");
        }
        let fallback = norms.local_block_bounds(1.0, &[first, second], 0.01);
        assert!(fallback
            .iter()
            .all(|l| l.is_finite() && *l <= global * (1.0 + 1e-12)));
        assert!(fallback.windows(2).all(|w| w[0] <= w[1]), "{fallback:?}");
    }

    #[test]
    fn attention_on_one_key_leaves_the_value_term() {
        // Every query puts all its weight on one key (the keys and values it weighs do not vary):
        // as the ball shrinks, the score terms vanish and the attention is `‖W_o‖/3·S_v`.
        let heads = 2;
        let norms = gpt(vec![block(1.5, heads, 1.5)], 1.0, 0.25, heads, 1.0);
        let mut sizes = uniform(3, heads, 1.0, 5.0);
        sizes.key_deviation = vec![vec![0.0; heads]; 3];
        sizes.value_deviation = vec![vec![0.0; heads]; 3];
        sizes.largest_weight = vec![vec![1.0; heads]; 3];
        let b = &norms.blocks[0];
        let value_term = 1.5 / 3.0 * (2.0f64 * 1.5 * 1.5).sqrt();
        for eta in [1e-3, 1e-6] {
            let l = b.measured_attention_lipschitz(&sizes, 2, eta, 1.0, &norms);
            assert!(
                l > value_term && l < value_term * (1.0 + 1e3 * eta),
                "{l} at {eta}"
            );
        }
    }
}
