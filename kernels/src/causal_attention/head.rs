//! One sequence of the fused causal attention on the CPU, head by head, in blocks of 64 positions.
//!
//! The products run on [`crate::sgemm`] (one thread: the sequences are spread over the threads). The
//! passes between them (RoPE, the transposes, the softmax, the softmax's gradient) are compiled for
//! AVX2 and FMA where the CPU has them, their sums and maxima kept in eight independent lanes so that
//! they become vector code: one running f32 sum is a chain of dependent additions that no compiler may
//! reorder, and was most of the op's time outside the products.

use super::CausalAttention;
use crate::cpu_op::{dot, softmax_in_place};
use crate::sgemm::{sgemm, Operand, Threads};
use crate::transpose::transpose;

/// Rows of queries (and keys) per block: a 64 × seq score tile of a 256-token window is 64 KiB.
const BLOCK: usize = 64;

/// The per-sequence work buffers of one worker, reused for every head.
pub(super) struct Scratch {
    q: Vec<f32>,
    k: Vec<f32>,
    /// kᵀ and vᵀ `[d_head, seq]`: the right-hand operands of Q Kᵀ and G Vᵀ row-major, which the
    /// product packs by contiguous copies instead of element by element.
    kt: Vec<f32>,
    vt: Vec<f32>,
    probs: Vec<f32>,
    grad_scores: Vec<f32>,
    dq: Vec<f32>,
    dk: Vec<f32>,
}

impl Scratch {
    pub(super) fn new(seq: usize, head_dim: usize) -> Self {
        let (t, dh) = (seq, head_dim);
        Scratch {
            q: vec![0.0; t * dh],
            k: vec![0.0; t * dh],
            kt: vec![0.0; t * dh],
            vt: vec![0.0; t * dh],
            probs: vec![0.0; t * t],
            grad_scores: vec![0.0; t * t],
            dq: vec![0.0; t * dh],
            dk: vec![0.0; t * dh],
        }
    }
}

/// `dst = beta · lhs · rhs`, or `dst += beta · lhs · rhs` with `accumulate`, for row-major `dst`
/// (row stride `dst_rs`) and `lhs`, `rhs` given as (pointer, row stride, column stride), on the
/// calling thread.
///
/// # Safety
/// Every element the strides reach, `m × k` of `lhs`, `k × n` of `rhs` and `m × n` of `dst`, must lie
/// in its allocation, and `dst` must not overlap the others.
#[inline(always)]
unsafe fn product(
    (m, n, k): (usize, usize, usize),
    dst: *mut f32,
    dst_rs: usize,
    lhs: (*const f32, usize, usize),
    rhs: (*const f32, usize, usize),
    beta: f32,
    accumulate: bool,
) {
    let operand = |(ptr, rs, cs): (*const f32, usize, usize)| Operand {
        ptr,
        rs: rs as isize,
        cs: cs as isize,
    };
    sgemm(
        (m, n, k),
        dst,
        dst_rs,
        operand(lhs),
        operand(rhs),
        beta,
        accumulate,
        Threads::One,
    )
}

impl CausalAttention {
    /// Every head of one sequence forward: `qkv` its `[seq, 3·width]` rows, `out` its `[seq, width]`
    /// rows, all of which are written.
    pub(super) fn sequence_forward(&self, qkv: &[f32], out: &mut [f32], s: &mut Scratch) {
        #[cfg(target_arch = "x86_64")]
        if crate::has_avx2_fma() {
            // SAFETY: the CPU has AVX2 and FMA.
            return unsafe { self.sequence_forward_avx2(qkv, out, s) };
        }
        for h in 0..self.dims.heads {
            self.head_forward(h, qkv, out, s);
        }
    }

    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx2,fma")]
    unsafe fn sequence_forward_avx2(&self, qkv: &[f32], out: &mut [f32], s: &mut Scratch) {
        for h in 0..self.dims.heads {
            self.head_forward(h, qkv, out, s);
        }
    }

    /// Every head of one sequence backward: from its `[seq, 3·width]` rows `qkv` and output gradient
    /// rows `grad` (`[seq, width]`) into `dqkv` (`[seq, 3·width]`), every element of which is written.
    pub(super) fn sequence_backward(
        &self,
        qkv: &[f32],
        grad: &[f32],
        dqkv: &mut [f32],
        s: &mut Scratch,
    ) {
        #[cfg(target_arch = "x86_64")]
        if crate::has_avx2_fma() {
            // SAFETY: the CPU has AVX2 and FMA.
            return unsafe { self.sequence_backward_avx2(qkv, grad, dqkv, s) };
        }
        for h in 0..self.dims.heads {
            self.head_backward(h, qkv, grad, dqkv, s);
        }
    }

    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx2,fma")]
    unsafe fn sequence_backward_avx2(
        &self,
        qkv: &[f32],
        grad: &[f32],
        dqkv: &mut [f32],
        s: &mut Scratch,
    ) {
        for h in 0..self.dims.heads {
            self.head_backward(h, qkv, grad, dqkv, s);
        }
    }

    /// Columns `at..at + d_head` of one sequence's rows (`src`, row stride `3·width`) into
    /// `dst: [seq, d_head]`, rotated by RoPE as [`crate::rope::Rope::apply`] computes it.
    #[inline(always)]
    fn rotate(&self, src: &[f32], at: usize, dst: &mut [f32]) {
        let (dh, half) = (self.head_dim, self.head_dim / 2);
        for (pos, (row, out)) in src
            .chunks_exact(3 * self.width())
            .zip(dst.chunks_exact_mut(dh))
            .enumerate()
        {
            let (a, b) = row[at..at + dh].split_at(half);
            let (first, second) = out.split_at_mut(half);
            rotate_pairs((a, b), self.angle(pos), 1.0, (first, second));
        }
    }

    /// The transpose of [`Self::rotate`] (rotation by the opposite angle), from `src: [seq, d_head]`
    /// into columns `at..at + d_head` of `dst`, one sequence's rows (row stride `3·width`).
    #[inline(always)]
    fn rotate_back(&self, src: &[f32], at: usize, dst: &mut [f32]) {
        let (dh, half) = (self.head_dim, self.head_dim / 2);
        for (pos, (g, row)) in src
            .chunks_exact(dh)
            .zip(dst.chunks_exact_mut(3 * self.width()))
            .enumerate()
        {
            let (first, second) = row[at..at + dh].split_at_mut(half);
            rotate_pairs(g.split_at(half), self.angle(pos), -1.0, (first, second));
        }
    }

    /// RoPE's cos and sin at one position, `[d_head / 2]` each.
    #[inline(always)]
    fn angle(&self, pos: usize) -> (&[f32], &[f32]) {
        let half = self.head_dim / 2;
        (
            &self.cos[pos * half..(pos + 1) * half],
            &self.sin[pos * half..(pos + 1) * half],
        )
    }

    /// Head `h`'s rotated q and k of one sequence (`qkv`, its `[seq, 3·width]` rows) into the scratch,
    /// and kᵀ.
    #[inline(always)]
    fn rotate_head(&self, qkv: &[f32], h: usize, s: &mut Scratch) {
        let at = h * self.head_dim;
        self.rotate(qkv, at, &mut s.q);
        self.rotate(qkv, self.width() + at, &mut s.k);
        transpose(
            (self.dims.seq, self.head_dim),
            &s.k,
            self.head_dim,
            &mut s.kt,
        );
    }

    /// The attention weights of one head into `probs: [seq, seq]`: row i holds the softmax over keys
    /// 0..=i and zeros after it up to the end of its block (the rest of the row is never read).
    #[inline(always)]
    fn probabilities(&self, q: &[f32], kt: &[f32], probs: &mut [f32]) {
        let (t, dh) = (self.dims.seq, self.head_dim);
        for (c0, c1) in blocks(t) {
            // SAFETY: rows c0..t of q and of probs (row stride t), keys c0..c1 of kᵀ (row stride
            // t), all in bounds; probs is a separate buffer.
            unsafe {
                // S[c0.., c0..c1] = scale · Q[c0..] K[c0..c1]ᵀ.
                product(
                    (t - c0, c1 - c0, dh),
                    probs[c0 * t + c0..].as_mut_ptr(),
                    t,
                    (q[c0 * dh..].as_ptr(), dh, 1),
                    (kt[c0..].as_ptr(), t, 1),
                    self.dims.score_scale as f32,
                    false,
                );
            }
        }
        for (r0, r1) in blocks(t) {
            for i in r0..r1 {
                let (seen, hidden) = probs[i * t..i * t + r1].split_at_mut(i + 1);
                softmax_in_place(seen);
                hidden.fill(0.0);
            }
        }
    }

    /// Head `h` of one sequence forward: its mixed values into columns `h·d_head..` of `out` (the
    /// sequence's `[seq, width]` rows).
    #[inline(always)]
    fn head_forward(&self, h: usize, qkv: &[f32], out: &mut [f32], s: &mut Scratch) {
        let (t, dh, width) = (self.dims.seq, self.head_dim, self.width());
        self.rotate_head(qkv, h, s);
        self.probabilities(&s.q, &s.kt, &mut s.probs);
        let v = &qkv[2 * width + h * dh..];
        for (c0, c1) in blocks(t) {
            // SAFETY: rows c0..t, keys c0..c1 of probs; rows c0..c1 of head h's value columns (row
            // stride 3·width) and rows c0..t of its output columns (row stride width), all within
            // the sequence's rows; out is a separate buffer.
            unsafe {
                // O[c0..] (+)= output_scale · P[c0.., c0..c1] V[c0..c1]; the first block writes
                // every row.
                product(
                    (t - c0, dh, c1 - c0),
                    out[c0 * width + h * dh..].as_mut_ptr(),
                    width,
                    (s.probs[c0 * t + c0..].as_ptr(), t, 1),
                    (v[c0 * 3 * width..].as_ptr(), 3 * width, 1),
                    self.dims.output_scale as f32,
                    c0 > 0,
                );
            }
        }
    }

    /// Head `h` of one sequence backward, into head h's columns of `dqkv`.
    #[inline(always)]
    fn head_backward(
        &self,
        h: usize,
        qkv: &[f32],
        grad: &[f32],
        dqkv: &mut [f32],
        s: &mut Scratch,
    ) {
        let (t, dh, width) = (self.dims.seq, self.head_dim, self.width());
        let (scale, out_scale) = (self.dims.score_scale as f32, self.dims.output_scale as f32);
        self.rotate_head(qkv, h, s);
        self.probabilities(&s.q, &s.kt, &mut s.probs);
        transpose((t, dh), &qkv[2 * width + h * dh..], 3 * width, &mut s.vt);
        let g = &grad[h * dh..];
        for (c0, c1) in blocks(t) {
            // SAFETY: as in `probabilities`, with g head h's columns of the gradient rows (row
            // stride width) and vᵀ its values `[dh, seq]`; distinct buffers.
            unsafe {
                // dP[c0.., c0..c1] = output_scale · G[c0..] V[c0..c1]ᵀ.
                product(
                    (t - c0, c1 - c0, dh),
                    s.grad_scores[c0 * t + c0..].as_mut_ptr(),
                    t,
                    (g[c0 * width..].as_ptr(), width, 1),
                    (s.vt[c0..].as_ptr(), t, 1),
                    out_scale,
                    false,
                );
            }
        }
        for (r0, r1) in blocks(t) {
            for i in r0..r1 {
                let p = &s.probs[i * t..i * t + r1];
                softmax_gradient(p, &mut s.grad_scores[i * t..i * t + r1], scale);
            }
        }
        for (c0, c1) in blocks(t) {
            // SAFETY: rows c0..t, keys c0..c1 of dS, rows c0..c1 of k, rows c0..t of dq.
            unsafe {
                // dQ[c0..] (+)= dS[c0.., c0..c1] K[c0..c1].
                product(
                    (t - c0, dh, c1 - c0),
                    s.dq[c0 * dh..].as_mut_ptr(),
                    dh,
                    (s.grad_scores[c0 * t + c0..].as_ptr(), t, 1),
                    (s.k[c0 * dh..].as_ptr(), dh, 1),
                    1.0,
                    c0 > 0,
                );
            }
        }
        // The keys' and values' gradients by blocks of queries, the last first: it reaches every
        // key, so it writes, and the others add.
        for (r0, r1) in blocks(t).rev() {
            let first = r1 == t;
            // SAFETY: rows r0..r1, keys 0..r1 of dS and P read transposed; rows r0..r1 of q and g;
            // keys 0..r1 of dk and of head h's value-gradient columns in dqkv (row stride 3·width).
            unsafe {
                // dK[..r1] (+)= dS[r0..r1, ..r1]ᵀ Q[r0..r1].
                product(
                    (r1, dh, r1 - r0),
                    s.dk.as_mut_ptr(),
                    dh,
                    (s.grad_scores[r0 * t..].as_ptr(), 1, t),
                    (s.q[r0 * dh..].as_ptr(), dh, 1),
                    1.0,
                    !first,
                );
                // dV[..r1] (+)= output_scale · P[r0..r1, ..r1]ᵀ G[r0..r1].
                product(
                    (r1, dh, r1 - r0),
                    dqkv[2 * width + h * dh..].as_mut_ptr(),
                    3 * width,
                    (s.probs[r0 * t..].as_ptr(), 1, t),
                    (g[r0 * width..].as_ptr(), width, 1),
                    out_scale,
                    !first,
                );
            }
        }
        self.rotate_back(&s.dq, h * dh, dqkv);
        self.rotate_back(&s.dk, width + h * dh, dqkv);
    }
}

/// The blocks `(start, end)` of `BLOCK` positions that cover `0..t`. Each product takes one block
/// of keys (or queries) with every position the causal mask lets it reach, so that its right-hand
/// operand, a block, is packed once, not once per block of the other side.
fn blocks(t: usize) -> impl DoubleEndedIterator<Item = (usize, usize)> {
    (0..t.div_ceil(BLOCK)).map(move |b| (b * BLOCK, ((b + 1) * BLOCK).min(t)))
}

/// Each pair `(a_f, b_f)` turned by the angle whose cosine and sine are `(c_f, sign·s_f)`:
/// `first_f = a·c − b·s'`, `second_f = a·s' + b·c`. `sign` −1 turns back (`s'` is exactly `−s`).
#[inline(always)]
fn rotate_pairs(
    (a, b): (&[f32], &[f32]),
    (cos, sin): (&[f32], &[f32]),
    sign: f32,
    (first, second): (&mut [f32], &mut [f32]),
) {
    let n = first.len();
    assert!(second.len() == n && a.len() == n && b.len() == n && cos.len() == n && sin.len() == n);
    let mut done = 0;
    #[cfg(target_arch = "x86_64")]
    if crate::has_avx2_fma() {
        // SAFETY: the CPU has AVX2; every slice holds n elements (checked above).
        unsafe {
            rotate_pairs_avx2(
                (a, b),
                (cos, sin),
                sign,
                (first.as_mut_ptr(), second.as_mut_ptr()),
                n,
            )
        };
        done = n / 8 * 8;
    }
    for f in done..n {
        let s = sign * sin[f];
        first[f] = a[f] * cos[f] - b[f] * s;
        second[f] = a[f] * s + b[f] * cos[f];
    }
}

/// The first `n / 8 · 8` pairs of [`rotate_pairs`], eight at a time: the compiler's own vector loop
/// for it ran only after a check that the two outputs (halves of one row) do not overlap the inputs,
/// and fell back to scalar code.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
unsafe fn rotate_pairs_avx2(
    (a, b): (&[f32], &[f32]),
    (cos, sin): (&[f32], &[f32]),
    sign: f32,
    (first, second): (*mut f32, *mut f32),
    n: usize,
) {
    use std::arch::x86_64::*;
    let sign = _mm256_set1_ps(sign);
    for f in (0..n / 8 * 8).step_by(8) {
        let load = |x: &[f32]| _mm256_loadu_ps(x.as_ptr().add(f));
        let (a, b, c) = (load(a), load(b), load(cos));
        let s = _mm256_mul_ps(sign, load(sin));
        _mm256_storeu_ps(
            first.add(f),
            _mm256_sub_ps(_mm256_mul_ps(a, c), _mm256_mul_ps(b, s)),
        );
        _mm256_storeu_ps(
            second.add(f),
            _mm256_add_ps(_mm256_mul_ps(a, s), _mm256_mul_ps(b, c)),
        );
    }
}

/// The gradient of the scores from the softmax's `p` and the gradient `dp` of its output, in place
/// of `dp`: `scale · p ⊙ (dp − p·dp)`. Where p is 0 (keys hidden from the query) it is 0.
#[inline(always)]
fn softmax_gradient(p: &[f32], dp: &mut [f32], scale: f32) {
    let along = dot(p, dp);
    for (d, &p) in dp.iter_mut().zip(p) {
        *d = scale * p * (*d - along);
    }
}
