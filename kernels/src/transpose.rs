//! `dst = srcᵀ` for f32 matrices: eight rows at a time shuffled into eight columns where the CPU has
//! AVX2, element by element elsewhere and at the edges.

/// `dst: [cols, rows]` (row-major) `= srcᵀ` for `src: [rows, cols]` with rows `src_rs` apart.
#[inline]
pub fn transpose((rows, cols): (usize, usize), src: &[f32], src_rs: usize, dst: &mut [f32]) {
    let (mut r0, mut c0) = (0, 0);
    #[cfg(target_arch = "x86_64")]
    if crate::has_avx2_fma() {
        // SAFETY: the CPU has AVX2; the full 8 × 8 blocks lie inside both matrices.
        unsafe { transpose_blocks_avx2((rows, cols), src, src_rs, dst) };
        (r0, c0) = (rows / 8 * 8, cols / 8 * 8);
    }
    // What the 8 × 8 blocks leave: the last rows, then the last columns of the block rows.
    for r in 0..rows {
        let from = if r < r0 { c0 } else { 0 };
        for c in from..cols {
            dst[c * rows + r] = src[r * src_rs + c];
        }
    }
}

/// The full 8 × 8 blocks of [`transpose`], eight rows loaded and shuffled into eight columns.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
unsafe fn transpose_blocks_avx2(
    (rows, cols): (usize, usize),
    src: &[f32],
    src_rs: usize,
    dst: &mut [f32],
) {
    use std::arch::x86_64::*;
    assert!(rows == 0 || cols == 0 || (rows - 1) * src_rs + cols <= src.len());
    assert!(rows * cols <= dst.len());
    for r in (0..rows / 8 * 8).step_by(8) {
        for c in (0..cols / 8 * 8).step_by(8) {
            let at = |i: usize| _mm256_loadu_ps(src.as_ptr().add((r + i) * src_rs + c));
            let (r0, r1, r2, r3) = (at(0), at(1), at(2), at(3));
            let (r4, r5, r6, r7) = (at(4), at(5), at(6), at(7));
            // Pairs, then quadruples, then halves across the two 128-bit lanes.
            let (t0, t1) = (_mm256_unpacklo_ps(r0, r1), _mm256_unpackhi_ps(r0, r1));
            let (t2, t3) = (_mm256_unpacklo_ps(r2, r3), _mm256_unpackhi_ps(r2, r3));
            let (t4, t5) = (_mm256_unpacklo_ps(r4, r5), _mm256_unpackhi_ps(r4, r5));
            let (t6, t7) = (_mm256_unpacklo_ps(r6, r7), _mm256_unpackhi_ps(r6, r7));
            let (u0, u1) = (
                _mm256_shuffle_ps::<0x44>(t0, t2),
                _mm256_shuffle_ps::<0xEE>(t0, t2),
            );
            let (u2, u3) = (
                _mm256_shuffle_ps::<0x44>(t1, t3),
                _mm256_shuffle_ps::<0xEE>(t1, t3),
            );
            let (u4, u5) = (
                _mm256_shuffle_ps::<0x44>(t4, t6),
                _mm256_shuffle_ps::<0xEE>(t4, t6),
            );
            let (u6, u7) = (
                _mm256_shuffle_ps::<0x44>(t5, t7),
                _mm256_shuffle_ps::<0xEE>(t5, t7),
            );
            let columns = [
                _mm256_permute2f128_ps::<0x20>(u0, u4),
                _mm256_permute2f128_ps::<0x20>(u1, u5),
                _mm256_permute2f128_ps::<0x20>(u2, u6),
                _mm256_permute2f128_ps::<0x20>(u3, u7),
                _mm256_permute2f128_ps::<0x31>(u0, u4),
                _mm256_permute2f128_ps::<0x31>(u1, u5),
                _mm256_permute2f128_ps::<0x31>(u2, u6),
                _mm256_permute2f128_ps::<0x31>(u3, u7),
            ];
            for (i, column) in columns.into_iter().enumerate() {
                _mm256_storeu_ps(dst.as_mut_ptr().add((c + i) * rows + r), column);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn transposes_every_size_around_the_8_by_8_blocks() {
        for (rows, cols, src_rs) in [(1, 1, 1), (8, 8, 8), (9, 17, 20), (256, 64, 768), (7, 3, 3)] {
            let src: Vec<f32> = (0..rows * src_rs).map(|i| i as f32).collect();
            let mut dst = vec![f32::NAN; rows * cols];
            transpose((rows, cols), &src, src_rs, &mut dst);
            for r in 0..rows {
                for c in 0..cols {
                    assert_eq!(
                        dst[c * rows + r],
                        src[r * src_rs + c],
                        "{rows}×{cols} ({r}, {c})"
                    );
                }
            }
        }
    }
}
