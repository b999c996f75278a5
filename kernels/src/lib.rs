//! spectra's compute kernels: routines on raw buffers that the tensor ops of `spectra-models` and the
//! matrix iterations of `spectra-core` (Newton–Schulz, the soft cap) call, and (feature `cuda`) the
//! CUDA C of every fused GPU kernel. No tensors here, no candle: each CPU kernel takes slices or
//! strided pointers and says what it needs of them; the GPU ops that launch the CUDA modules sit
//! beside their CPU paths, in the crates that use them.

#[cfg(any(feature = "cuda", test))]
pub mod cuda;
pub mod sgemm;
pub mod transpose;

/// Whether the CPU has AVX2 and FMA (detected once; later calls read a cached flag).
#[cfg(target_arch = "x86_64")]
#[inline(always)]
pub fn has_avx2_fma() -> bool {
    std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("fma")
}

/// Whether the CPU has AVX-512F (detected once; later calls read a cached flag).
#[cfg(target_arch = "x86_64")]
#[inline(always)]
pub fn has_avx512f() -> bool {
    std::arch::is_x86_feature_detected!("avx512f")
}
