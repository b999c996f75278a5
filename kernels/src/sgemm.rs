//! f32 matrix products on the CPU: `dst (+)= scale · a · b` with `a` and `b` at any strides.
//!
//! Where the CPU has AVX-512 or AVX2 and FMA, a blocked product in the manner of BLIS (`blocked`)
//! on a 6 × 64 or 6 × 16 register tile (`tiles`). Over the twelve product shapes of a training step
//! of the paper's GPT (16384 tokens × 256–1024 features, forward and both gradients), on 2 cores:
//! - Zen 3 (AVX2): 10–30% faster than the `gemm` crate in back-to-back runs;
//! - Zen 4 (AVX-512): the 6 × 64 tile took 0.93× the time of the `gemm` crate and of the 6 × 16 tile
//!   (208–220 GFLOP/s on the token-major shapes, 166–187 on the weight gradients, against an FMA
//!   peak of 234).
//!
//! Every tile is written once per 256-deep block, and two threads split the larger side of the
//! result once instead of meeting at barriers inside the product (or, for a weight's gradient, its
//! depth). Elsewhere the `gemm` crate computes the same product.

#[cfg(target_arch = "x86_64")]
mod blocked;
#[cfg(target_arch = "x86_64")]
mod tiles;

/// A matrix operand: element `(i, j)` is at `ptr + i·rs + j·cs`.
#[derive(Clone, Copy)]
pub struct Operand {
    pub ptr: *const f32,
    pub rs: isize,
    pub cs: isize,
}

impl Operand {
    /// A contiguous row-major matrix with `cols` columns, or with `transposed` its transpose.
    pub fn of(data: &[f32], cols: usize, transposed: bool) -> Self {
        let (rs, cs) = if transposed {
            (1, cols as isize)
        } else {
            (cols as isize, 1)
        };
        Operand {
            ptr: data.as_ptr(),
            rs,
            cs,
        }
    }

    /// The operand from element `(i, j)` on.
    ///
    /// # Safety
    /// Element `(i, j)` lies in the operand's allocation.
    pub unsafe fn at(self, i: usize, j: usize) -> Self {
        Operand {
            ptr: self.ptr.offset(i as isize * self.rs + j as isize * self.cs),
            ..self
        }
    }
}

/// `a·b` as a new row-major `m × n` buffer, on every thread.
///
/// # Safety
/// `a` and `b` must be the `m × k` and `k × n` matrices their operands describe.
pub unsafe fn matmul(mnk: (usize, usize, usize), a: Operand, b: Operand) -> Vec<f32> {
    matmul_on(mnk, a, b, Threads::All)
}

/// [`matmul`] on the threads `threads` allows (the caller's alone, for a caller already on a rayon
/// thread of its own).
///
/// # Safety
/// As [`matmul`].
pub unsafe fn matmul_on(
    (m, n, k): (usize, usize, usize),
    a: Operand,
    b: Operand,
    threads: Threads,
) -> Vec<f32> {
    // Not zero-filled first: the product writes every element (a memset of the largest tensors of
    // a training step was 2% of it).
    let mut out = Vec::with_capacity(m * n);
    sgemm((m, n, k), out.as_mut_ptr(), n, a, b, 1.0, false, threads);
    // SAFETY: `sgemm` without `accumulate` has written all m·n elements.
    out.set_len(m * n);
    out
}

/// Whether the product may use every rayon thread or runs on the caller's.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Threads {
    One,
    All,
}

/// `dst = scale·a·b`, or `dst += scale·a·b` with `accumulate`, for `a: m × k`, `b: k × n` and a
/// row-major `dst: m × n` whose rows are `dst_rs` apart.
///
/// # Safety
/// Every element the strides reach, `m × k` of `a`, `k × n` of `b` and `m × n` of `dst`, must lie in
/// its allocation, and `dst` must not overlap `a` or `b`.
#[allow(clippy::too_many_arguments)]
pub unsafe fn sgemm(
    (m, n, k): (usize, usize, usize),
    dst: *mut f32,
    dst_rs: usize,
    a: Operand,
    b: Operand,
    scale: f32,
    accumulate: bool,
    threads: Threads,
) {
    if m == 0 || n == 0 {
        return;
    }
    let out = Dst {
        ptr: dst,
        rs: dst_rs,
        scale,
        accumulate,
    };
    Kernel::for_width(n).run((m, n, k), out, a, b, threads);
}

/// The code that computes a product.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kernel {
    /// The blocked product on the 6 × 64 AVX-512 tile.
    Avx512,
    /// The blocked product on the 6 × 16 AVX2 tile.
    Avx2,
    /// The `gemm` crate.
    Portable,
}

impl Kernel {
    /// The fastest this CPU has for a product `n` columns wide: 64-column tiles only where they pad
    /// the columns by at most an eighth (a 65-column product would compute 128).
    fn for_width(n: usize) -> Kernel {
        #[cfg(target_arch = "x86_64")]
        {
            if crate::has_avx512f() && n.div_ceil(64) * 64 - n <= n / 8 {
                return Kernel::Avx512;
            }
            if crate::has_avx2_fma() {
                return Kernel::Avx2;
            }
        }
        Kernel::Portable
    }

    /// # Safety
    /// As [`sgemm`]'s, and the CPU has the kernel's instructions.
    unsafe fn run(
        self,
        shape: (usize, usize, usize),
        out: Dst,
        a: Operand,
        b: Operand,
        threads: Threads,
    ) {
        match self {
            #[cfg(target_arch = "x86_64")]
            Kernel::Avx512 => blocked::run::<tiles::Avx512>(shape, out, a, b, threads),
            #[cfg(target_arch = "x86_64")]
            Kernel::Avx2 => blocked::run::<tiles::Avx2>(shape, out, a, b, threads),
            _ => portable(shape, out, a, b, threads),
        }
    }
}

/// The product on the `gemm` crate.
unsafe fn portable(
    (m, n, k): (usize, usize, usize),
    out: Dst,
    a: Operand,
    b: Operand,
    threads: Threads,
) {
    let parallelism = match threads {
        Threads::One => gemm::Parallelism::None,
        Threads::All => gemm::Parallelism::Rayon(rayon::current_num_threads()),
    };
    gemm::gemm(
        m,
        n,
        k,
        out.ptr,
        1,
        out.rs as isize,
        out.accumulate,
        a.ptr,
        a.cs,
        a.rs,
        b.ptr,
        b.cs,
        b.rs,
        if out.accumulate { 1.0 } else { 0.0 },
        out.scale,
        false,
        false,
        false,
        parallelism,
    );
}

/// Where and how a product is written.
#[derive(Clone, Copy)]
struct Dst {
    ptr: *mut f32,
    rs: usize,
    scale: f32,
    accumulate: bool,
}

// SAFETY: the operands and the destination are only read and written inside `sgemm`'s call, whose
// caller guarantees they are valid; the threads write disjoint parts of the destination.
unsafe impl Send for Operand {}
unsafe impl Sync for Operand {}
unsafe impl Send for Dst {}
unsafe impl Sync for Dst {}

#[cfg(test)]
mod tests {
    use super::*;

    /// The product in f64 from the same f32 inputs.
    fn reference(a: &[f32], b: &[f32], (m, n, k): (usize, usize, usize)) -> Vec<f64> {
        let mut c = vec![0f64; m * n];
        for i in 0..m {
            for p in 0..k {
                let x = a[i * k + p] as f64;
                for j in 0..n {
                    c[i * n + j] += x * b[p * n + j] as f64;
                }
            }
        }
        c
    }

    fn values(len: usize, seed: u64) -> Vec<f32> {
        let mut s = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
        (0..len)
            .map(|_| {
                s ^= s << 13;
                s ^= s >> 7;
                s ^= s << 17;
                (s >> 40) as f32 / (1u64 << 24) as f32 - 0.5
            })
            .collect()
    }

    impl Kernel {
        /// Every kernel this CPU can run.
        fn available() -> Vec<Kernel> {
            let mut kernels = vec![Kernel::Portable];
            #[cfg(target_arch = "x86_64")]
            {
                if crate::has_avx2_fma() {
                    kernels.push(Kernel::Avx2);
                }
                if crate::has_avx512f() {
                    kernels.push(Kernel::Avx512);
                }
            }
            kernels
        }
    }

    /// Every layout the models use (row-major, either operand transposed), edge tiles in both
    /// directions, depths across a block boundary and split between threads, one and all threads,
    /// scale and accumulate, on every kernel the CPU runs.
    #[test]
    fn matches_f64_products_at_every_layout_and_edge() {
        let shapes = [
            (1, 1, 1),
            (5, 7, 3),
            (6, 16, 256),
            (37, 65, 53),
            (130, 33, 300),
            (12, 200, 513),
            (300, 40, 0),
            // Deep enough to be split along the depth between the threads.
            (5, 7, 700),
            (13, 70, 1100),
        ];
        for &(m, n, k) in &shapes {
            let a = values(m * k, 1);
            let b = values(k * n, 2);
            let exact = reference(&a, &b, (m, n, k));
            // The transposed copies, read through swapped strides.
            let at: Vec<f32> = (0..k * m).map(|x| a[(x % m) * k + x / m]).collect();
            let bt: Vec<f32> = (0..n * k).map(|x| b[(x % k) * n + x / k]).collect();
            let layouts = [
                (
                    Operand {
                        ptr: a.as_ptr(),
                        rs: k as isize,
                        cs: 1,
                    },
                    Operand {
                        ptr: b.as_ptr(),
                        rs: n as isize,
                        cs: 1,
                    },
                ),
                (
                    Operand {
                        ptr: at.as_ptr(),
                        rs: 1,
                        cs: m as isize,
                    },
                    Operand {
                        ptr: b.as_ptr(),
                        rs: n as isize,
                        cs: 1,
                    },
                ),
                (
                    Operand {
                        ptr: a.as_ptr(),
                        rs: k as isize,
                        cs: 1,
                    },
                    Operand {
                        ptr: bt.as_ptr(),
                        rs: 1,
                        cs: k as isize,
                    },
                ),
            ];
            for (l, &(oa, ob)) in layouts.iter().enumerate() {
                for (kernel, threads) in Kernel::available()
                    .into_iter()
                    .flat_map(|k| [(k, Threads::One), (k, Threads::All)])
                {
                    for (scale, accumulate) in [(1.0f32, false), (0.5, false), (-2.0, true)] {
                        // Row stride wider than n: the padding must stay untouched.
                        let rs = n + 3;
                        let mut dst = vec![7f32; m * rs];
                        let out = Dst {
                            ptr: dst.as_mut_ptr(),
                            rs,
                            scale,
                            accumulate,
                        };
                        unsafe { kernel.run((m, n, k), out, oa, ob, threads) };
                        for i in 0..m {
                            for j in 0..rs {
                                let got = dst[i * rs + j] as f64;
                                let want = if j >= n {
                                    7.0
                                } else {
                                    scale as f64 * exact[i * n + j]
                                        + if accumulate { 7.0 } else { 0.0 }
                                };
                                // f32 accumulation over k terms of size ≤ 1/4: k·2⁻²⁴ relative to
                                // the sum of magnitudes, bounded here by k/4 (plus the 7 added).
                                let tol = 4.0 * (k as f64 / 4.0 + 8.0) * f32::EPSILON as f64;
                                assert!(
                                    (got - want).abs() <= tol,
                                    "{kernel:?} {m}×{n}×{k} layout {l} scale {scale} accumulate {accumulate} at ({i},{j}): {got} vs {want}"
                                );
                            }
                        }
                    }
                }
            }
        }
    }
}
