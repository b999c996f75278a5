//! One weight row against up to eight quantized input rows, in vector code: each 32-element weight
//! block is loaded and unpacked once for up to four inputs and multiplied with the matching block of
//! each, so that many sequences decoding together share the unpacking as they share the read.
//!
//! Most formats are taken as unsigned weight bytes `u` with a per-block offset `m`, so that the byte
//! products are `u8 × i8`: a block's value is `d·Σ u·x + m·s`, where `s = d_x·Σ x` is the input
//! block's sum (Q4_1: `u` its nibbles and `m` its stored offset; Q4_0: its nibbles, `m = −8·d`;
//! Q5_0 and Q5_1 the same with a fifth bit; Q4_K and Q5_K per sub-block of 32, `d·sc` and
//! `−dmin·m`; Q8_0: its bytes plus 128, `m = −128·d`). Q6_K keeps signed values `q − 32` and takes
//! `|q|·(x·sign q)`, since its two scales per 32 elements leave no one offset to add. The scale is
//! per lane of the eight partial sums (lanes 0–3 hold elements 0–15), which Q6_K's 16-element
//! sub-blocks need. With AVX-VNNI one `vpdpbusd` forms the eight partial sums; with AVX2 alone
//! `vpmaddubsw` and `vpmaddwd` do, except for Q8_0, whose `u` up to 255 could overflow
//! `vpmaddubsw`'s 16-bit pair sums and which keeps signed bytes as Q6_K does.

use std::arch::x86_64::*;

use super::formats::scale_min_k4;
use super::{BlockFormat, QuantizedRows, BLOCK};

/// Inputs one call takes at most.
pub(super) const INPUTS: usize = 8;

/// How far ahead of the current block the weights are prefetched, in bytes.
const PREFETCH: usize = 3072;

pub(super) fn has_avx2() -> bool {
    is_x86_feature_detected!("avx2")
        && is_x86_feature_detected!("fma")
        && is_x86_feature_detected!("f16c")
}

pub(super) fn has_vnni() -> bool {
    has_avx2() && is_x86_feature_detected!("avxvnni")
}

/// `out[k] = row · x_{first + k}` with AVX-VNNI.
///
/// # Safety
/// The CPU must have AVX2, FMA, F16C and AVX-VNNI; `row` holds `x.blocks_per_row` blocks of
/// `format`, inputs `first..first + out.len()` exist and `out.len() ≤ INPUTS`.
#[target_feature(enable = "avx2,fma,f16c,avxvnni")]
pub(super) unsafe fn rows_vnni(
    format: BlockFormat,
    row: &[u8],
    x: &QuantizedRows,
    first: usize,
    out: &mut [f32],
) {
    by_format::<Vnni, VnniSigned, Q8_0Unsigned, Vnni>(format, row.as_ptr(), x, first, out)
}

/// `out[k] = row · x_{first + k}` with AVX2.
///
/// # Safety
/// As [`rows_vnni`], without AVX-VNNI.
#[target_feature(enable = "avx2,fma,f16c")]
pub(super) unsafe fn rows_avx2(
    format: BlockFormat,
    row: &[u8],
    x: &QuantizedRows,
    first: usize,
    out: &mut [f32],
) {
    by_format::<Madd, MaddSigned, Q8_0Signed, MaddSigned>(format, row.as_ptr(), x, first, out)
}

/// [`by_inputs`] for `format`: the unsigned formats with the product `U`, Q6_K's signed values with
/// `S`, and Q8_0 read as `Q8` with the product `Q8P` (unsigned with AVX-VNNI, signed without).
#[inline(always)]
unsafe fn by_format<U: Product, S: Product, Q8: Format, Q8P: Product>(
    format: BlockFormat,
    w: *const u8,
    x: &QuantizedRows,
    first: usize,
    out: &mut [f32],
) {
    match format {
        BlockFormat::Q4_0 => by_inputs::<Q4_0, U>(w, x, first, out),
        BlockFormat::Q4_1 => by_inputs::<Q4_1, U>(w, x, first, out),
        BlockFormat::Q5_0 => by_inputs::<Q5_0, U>(w, x, first, out),
        BlockFormat::Q5_1 => by_inputs::<Q5_1, U>(w, x, first, out),
        BlockFormat::Q8_0 => by_inputs::<Q8, Q8P>(w, x, first, out),
        BlockFormat::Q4K => by_inputs::<Q4K, U>(w, x, first, out),
        BlockFormat::Q5K => by_inputs::<Q5K, U>(w, x, first, out),
        BlockFormat::Q6K => by_inputs::<Q6K, S>(w, x, first, out),
    }
}

/// Block `b` of a row stored in `format`, as f32: the values [`BlockFormat::dequantize_block`]
/// gives (each `q·scale`, then `+ offset`, rounded as there).
///
/// # Safety
/// The CPU must have AVX2, FMA and F16C; `row` holds block `b` of `format`.
#[target_feature(enable = "avx2,fma,f16c")]
pub(super) unsafe fn dequantize_block_avx2(
    format: BlockFormat,
    row: &[u8],
    b: usize,
    out: &mut [f32; BLOCK],
) {
    let w = row.as_ptr();
    match format {
        BlockFormat::Q4_0 => expand::<Q4_0>(w, b, out),
        BlockFormat::Q4_1 => expand::<Q4_1>(w, b, out),
        BlockFormat::Q5_0 => expand::<Q5_0>(w, b, out),
        BlockFormat::Q5_1 => expand::<Q5_1>(w, b, out),
        BlockFormat::Q8_0 => expand::<Q8_0Signed>(w, b, out),
        BlockFormat::Q4K => expand::<Q4K>(w, b, out),
        BlockFormat::Q5K => expand::<Q5K>(w, b, out),
        BlockFormat::Q6K => expand::<Q6K>(w, b, out),
    }
}

#[inline(always)]
unsafe fn expand<F: Format>(w: *const u8, b: usize, out: &mut [f32; BLOCK]) {
    let (u, signed, scale, m) = F::unpack(w.add(b / F::SUBS * F::BYTES), b % F::SUBS);
    let mut bytes = [0u8; BLOCK];
    _mm256_storeu_si256(
        bytes.as_mut_ptr() as *mut __m256i,
        if F::SIGNED { signed } else { u },
    );
    // The scale of elements 0–15 sits in lanes 0–3, that of 16–31 in lanes 4–7.
    let halves = [
        _mm256_permutevar8x32_ps(scale, _mm256_setzero_si256()),
        _mm256_permutevar8x32_ps(scale, _mm256_set1_epi32(4)),
    ];
    let offset = _mm256_set1_ps(m);
    for eighth in 0..4 {
        let packed = _mm_loadl_epi64(bytes.as_ptr().add(8 * eighth) as *const __m128i);
        let ints = if F::SIGNED {
            _mm256_cvtepi8_epi32(packed)
        } else {
            _mm256_cvtepu8_epi32(packed)
        };
        let values = _mm256_mul_ps(_mm256_cvtepi32_ps(ints), halves[eighth / 2]);
        _mm256_storeu_ps(
            out.as_mut_ptr().add(8 * eighth),
            _mm256_add_ps(values, offset),
        );
    }
}

/// A weight block unpacked: the bytes the products take, the signed bytes where the product needs
/// them, its scale per lane of the eight partial sums, and its offset.
type Unpacked = (__m256i, __m256i, __m256, f32);

/// A weight format's blocks as the byte products take them: `SUBS` blocks of 32 per stored unit of
/// `BYTES` (a K-quant's super-block holds eight).
trait Format {
    const BYTES: usize;
    const SUBS: usize = 1;
    /// Whether the values are the signed bytes (the unsigned ones plus the offset otherwise).
    const SIGNED: bool = false;
    /// Block `sub` of the unit at `b`.
    unsafe fn unpack(b: *const u8, sub: usize) -> Unpacked;
}

struct Q4_0;
struct Q4_1;
struct Q5_0;
struct Q5_1;
/// Q8_0's bytes plus 128, for `u8 × i8` products.
struct Q8_0Unsigned;
/// Q8_0's bytes as they are, for the sign trick.
struct Q8_0Signed;
struct Q4K;
struct Q5K;
struct Q6K;

impl Format for Q4_0 {
    const BYTES: usize = 18;
    #[inline(always)]
    unsafe fn unpack(b: *const u8, _: usize) -> Unpacked {
        let d = f16_to_f32(b);
        (
            nibbles(b.add(2)),
            _mm256_setzero_si256(),
            _mm256_set1_ps(d),
            -8.0 * d,
        )
    }
}

impl Format for Q4_1 {
    const BYTES: usize = 20;
    #[inline(always)]
    unsafe fn unpack(b: *const u8, _: usize) -> Unpacked {
        let m = f16_to_f32(b.add(2));
        (
            nibbles(b.add(4)),
            _mm256_setzero_si256(),
            _mm256_set1_ps(f16_to_f32(b)),
            m,
        )
    }
}

impl Format for Q5_0 {
    const BYTES: usize = 22;
    #[inline(always)]
    unsafe fn unpack(b: *const u8, _: usize) -> Unpacked {
        let d = f16_to_f32(b);
        let u = _mm256_or_si256(nibbles(b.add(6)), fifth_bits(b.add(2)));
        (u, _mm256_setzero_si256(), _mm256_set1_ps(d), -16.0 * d)
    }
}

impl Format for Q5_1 {
    const BYTES: usize = 24;
    #[inline(always)]
    unsafe fn unpack(b: *const u8, _: usize) -> Unpacked {
        let u = _mm256_or_si256(nibbles(b.add(8)), fifth_bits(b.add(4)));
        (
            u,
            _mm256_setzero_si256(),
            _mm256_set1_ps(f16_to_f32(b)),
            f16_to_f32(b.add(2)),
        )
    }
}

impl Format for Q8_0Unsigned {
    const BYTES: usize = 34;
    #[inline(always)]
    unsafe fn unpack(b: *const u8, _: usize) -> Unpacked {
        let d = f16_to_f32(b);
        let w = _mm256_loadu_si256(b.add(2) as *const __m256i);
        // w + 128 as an unsigned byte: its sign bit flipped.
        let u = _mm256_xor_si256(w, _mm256_set1_epi8(i8::MIN));
        (u, _mm256_setzero_si256(), _mm256_set1_ps(d), -128.0 * d)
    }
}

impl Format for Q8_0Signed {
    const BYTES: usize = 34;
    const SIGNED: bool = true;
    #[inline(always)]
    unsafe fn unpack(b: *const u8, _: usize) -> Unpacked {
        let w = _mm256_loadu_si256(b.add(2) as *const __m256i);
        (
            _mm256_sign_epi8(w, w),
            w,
            _mm256_set1_ps(f16_to_f32(b)),
            0.0,
        )
    }
}

/// Q4_K's and Q5_K's sub-block `sub`: its 32 nibbles (low or high halves of 32 bytes at `qs`),
/// scale `d·sc` and offset `−dmin·m`.
#[inline(always)]
unsafe fn k4_nibbles(b: *const u8, qs: *const u8, sub: usize) -> (__m256i, __m256, f32) {
    let scales = std::slice::from_raw_parts(b.add(4), 12);
    let (sc, m) = scale_min_k4(scales, sub);
    let bytes = _mm256_loadu_si256(qs.add(32 * (sub / 2)) as *const __m256i);
    let shifted = if sub.is_multiple_of(2) {
        bytes
    } else {
        _mm256_srli_epi16(bytes, 4)
    };
    let u = _mm256_and_si256(shifted, _mm256_set1_epi8(0x0F));
    let d = f16_to_f32(b) * f32::from(sc);
    (u, _mm256_set1_ps(d), -(f16_to_f32(b.add(2)) * f32::from(m)))
}

impl Format for Q4K {
    const BYTES: usize = 144;
    const SUBS: usize = 8;
    #[inline(always)]
    unsafe fn unpack(b: *const u8, sub: usize) -> Unpacked {
        let (u, d, m) = k4_nibbles(b, b.add(16), sub);
        (u, _mm256_setzero_si256(), d, m)
    }
}

impl Format for Q5K {
    const BYTES: usize = 176;
    const SUBS: usize = 8;
    #[inline(always)]
    unsafe fn unpack(b: *const u8, sub: usize) -> Unpacked {
        let (u, d, m) = k4_nibbles(b, b.add(48), sub);
        // Bit `sub` of each of the 32 `qh` bytes is its element's fifth bit.
        let bit = _mm256_set1_epi8(1 << sub);
        let qh = _mm256_loadu_si256(b.add(16) as *const __m256i);
        let set = _mm256_cmpeq_epi8(_mm256_and_si256(qh, bit), bit);
        let u = _mm256_or_si256(u, _mm256_and_si256(set, _mm256_set1_epi8(0x10)));
        (u, _mm256_setzero_si256(), d, m)
    }
}

impl Format for Q6K {
    const BYTES: usize = 210;
    const SUBS: usize = 8;
    const SIGNED: bool = true;
    #[inline(always)]
    unsafe fn unpack(b: *const u8, sub: usize) -> Unpacked {
        let (half, group) = (sub / 4, sub % 4);
        let ql = _mm256_loadu_si256(b.add(64 * half + 32 * (group % 2)) as *const __m256i);
        let qh = _mm256_loadu_si256(b.add(128 + 32 * half) as *const __m256i);
        let low = if group < 2 {
            ql
        } else {
            _mm256_srli_epi16(ql, 4)
        };
        let low = _mm256_and_si256(low, _mm256_set1_epi8(0x0F));
        let high = match group {
            0 => qh,
            1 => _mm256_srli_epi16(qh, 2),
            2 => _mm256_srli_epi16(qh, 4),
            _ => _mm256_srli_epi16(qh, 6),
        };
        let high = _mm256_slli_epi16(_mm256_and_si256(high, _mm256_set1_epi8(3)), 4);
        let q = _mm256_sub_epi8(_mm256_or_si256(low, high), _mm256_set1_epi8(32));
        let d = f16_to_f32(b.add(208));
        let scale = |k: usize| d * f32::from(*b.add(192 + 8 * half + 2 * group + k) as i8);
        let (first, second) = (_mm_set1_ps(scale(0)), _mm_set1_ps(scale(1)));
        (
            _mm256_sign_epi8(q, q),
            q,
            _mm256_set_m128(second, first),
            0.0,
        )
    }
}

/// Eight partial sums of a block's 32 byte products `(u, signed, x)`.
trait Product {
    unsafe fn ints(u: __m256i, signed: __m256i, x: __m256i) -> __m256i;
}

/// AVX-VNNI's `vpdpbusd`.
struct Vnni;
/// `vpdpbusd` on |w| and x·sign(w).
struct VnniSigned;
/// `vpmaddubsw` and `vpmaddwd`: nibbles are at most 15, so each pair sum stays far inside 16 bits.
struct Madd;
/// The same on |w| and x·sign(w): |w| ≤ 128 and |x| ≤ 127, so 2·128·127 fits in 16 bits.
struct MaddSigned;

impl Product for Vnni {
    #[inline(always)]
    unsafe fn ints(u: __m256i, _: __m256i, x: __m256i) -> __m256i {
        _mm256_dpbusd_avx_epi32(_mm256_setzero_si256(), u, x)
    }
}

impl Product for VnniSigned {
    #[inline(always)]
    unsafe fn ints(abs: __m256i, w: __m256i, x: __m256i) -> __m256i {
        _mm256_dpbusd_avx_epi32(_mm256_setzero_si256(), abs, _mm256_sign_epi8(x, w))
    }
}

impl Product for Madd {
    #[inline(always)]
    unsafe fn ints(u: __m256i, _: __m256i, x: __m256i) -> __m256i {
        _mm256_madd_epi16(_mm256_maddubs_epi16(u, x), _mm256_set1_epi16(1))
    }
}

impl Product for MaddSigned {
    #[inline(always)]
    unsafe fn ints(abs: __m256i, w: __m256i, x: __m256i) -> __m256i {
        let x = _mm256_sign_epi8(x, w);
        _mm256_madd_epi16(_mm256_maddubs_epi16(abs, x), _mm256_set1_epi16(1))
    }
}

/// Eight inputs at most, by groups whose sums the compiler keeps in registers (two sets of four).
#[inline(always)]
unsafe fn by_inputs<F: Format, P: Product>(
    w: *const u8,
    x: &QuantizedRows,
    first: usize,
    out: &mut [f32],
) {
    let mut at = 0;
    while at < out.len() {
        let (i, o) = (first + at, &mut out[at..]);
        at += match o.len() {
            4.. => block_sums::<F, P, 4>(w, x, i, o),
            2..=3 => block_sums::<F, P, 2>(w, x, i, o),
            _ => block_sums::<F, P, 1>(w, x, i, o),
        };
    }
}

/// `N` inputs from `first`: per block, `d_w·d_x·ints + m·s` summed in eight f32 lanes per input,
/// even and odd blocks apart (two dependency chains, which one input alone needs to keep the FMA
/// units busy). Returns `N`. Each input's sums run through the blocks in the same order whatever
/// `N` is, so an input's product does not depend on the inputs beside it.
#[inline(always)]
unsafe fn block_sums<F: Format, P: Product, const N: usize>(
    w: *const u8,
    x: &QuantizedRows,
    first: usize,
    out: &mut [f32],
) -> usize {
    let nb = x.blocks_per_row;
    let (mut even, mut odd) = (Sums::<N>::new(), Sums::<N>::new());
    let mut b = 0;
    while b + 1 < nb {
        even.add::<F, P>(w, b, x, first);
        odd.add::<F, P>(w, b + 1, x, first);
        b += 2;
    }
    if b < nb {
        even.add::<F, P>(w, b, x, first);
    }
    for (k, o) in out.iter_mut().take(N).enumerate() {
        let acc = _mm256_add_ps(even.acc[k], odd.acc[k]);
        *o = horizontal_sum(acc) + (even.offsets[k] + odd.offsets[k]);
    }
    N
}

/// Per input, eight lanes of block products and the sum of the offsets.
struct Sums<const N: usize> {
    acc: [__m256; N],
    offsets: [f32; N],
}

impl<const N: usize> Sums<N> {
    #[inline(always)]
    unsafe fn new() -> Self {
        Sums {
            acc: [_mm256_setzero_ps(); N],
            offsets: [0.0; N],
        }
    }

    /// Weight block `b` against block `b` of inputs `first..first + N`.
    #[inline(always)]
    unsafe fn add<F: Format, P: Product>(
        &mut self,
        w: *const u8,
        b: usize,
        x: &QuantizedRows,
        first: usize,
    ) {
        let nb = x.blocks_per_row;
        let wb = w.add(b / F::SUBS * F::BYTES);
        // Every block of 32 prefetches its share of the unit ahead, so that a K-quant's
        // super-block, several cache lines, is prefetched whole.
        let ahead = PREFETCH + b % F::SUBS * F::BYTES / F::SUBS;
        _mm_prefetch::<_MM_HINT_T0>(wb.wrapping_add(ahead) as *const i8);
        let (u, signed, d, m) = F::unpack(wb, b % F::SUBS);
        for k in 0..N {
            let block = (first + k) * nb + b;
            let xb = _mm256_loadu_si256(x.qs.as_ptr().add(block * BLOCK) as *const __m256i);
            let products = _mm256_cvtepi32_ps(P::ints(u, signed, xb));
            let scale = _mm256_mul_ps(d, _mm256_set1_ps(*x.d.get_unchecked(block)));
            self.acc[k] = _mm256_fmadd_ps(products, scale, self.acc[k]);
            self.offsets[k] += m * *x.s.get_unchecked(block);
        }
    }
}

/// The little-endian f16 at `p`, with F16C. Moved into a vector register with `vmovd`, which
/// writes the whole register: the compiler otherwise loads it with `vpinsrw`, which merges into the
/// register's previous value and so chains every block's scale to the block before (a dependency
/// chain through each block's arithmetic that made the products about twice as slow).
#[inline(always)]
unsafe fn f16_to_f32(p: *const u8) -> f32 {
    let bits = u32::from((p as *const u16).read_unaligned());
    let value: __m128;
    std::arch::asm!(
        "vmovd {v}, {bits:e}",
        "vcvtph2ps {v}, {v}",
        bits = in(reg) bits,
        v = out(xmm_reg) value,
        options(pure, nomem, nostack),
    );
    _mm_cvtss_f32(value)
}

/// 16 packed bytes as 32 nibbles: low nibbles (elements 0–15) then high ones (16–31).
#[inline(always)]
unsafe fn nibbles(p: *const u8) -> __m256i {
    let packed = _mm_loadu_si128(p as *const __m128i);
    let mask = _mm_set1_epi8(0x0F);
    let low = _mm_and_si128(packed, mask);
    let high = _mm_and_si128(_mm_srli_epi16(packed, 4), mask);
    _mm256_set_m128i(high, low)
}

/// Q5_0's and Q5_1's 32 fifth bits (a little-endian u32 at `p`) as 0 or 16 per element byte.
#[inline(always)]
unsafe fn fifth_bits(p: *const u8) -> __m256i {
    let bits = _mm256_set1_epi32((p as *const i32).read_unaligned());
    // Byte i takes byte i / 8 of the bits, then keeps bit i % 8 by setting every other bit.
    let spread = _mm256_shuffle_epi8(
        bits,
        _mm256_setr_epi64x(
            0,
            0x0101_0101_0101_0101,
            0x0202_0202_0202_0202,
            0x0303_0303_0303_0303,
        ),
    );
    let others = _mm256_set1_epi64x(0x7fbf_dfef_f7fb_fdfe);
    let set = _mm256_cmpeq_epi8(_mm256_or_si256(spread, others), _mm256_set1_epi64x(-1));
    _mm256_and_si256(set, _mm256_set1_epi8(0x10))
}

#[inline(always)]
unsafe fn horizontal_sum(v: __m256) -> f32 {
    let quad = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    let pair = _mm_add_ps(quad, _mm_movehl_ps(quad, quad));
    _mm_cvtss_f32(_mm_add_ss(pair, _mm_movehdup_ps(pair)))
}
