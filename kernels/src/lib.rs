//! spectra's compute kernels, every CPU one and the CUDA C of the GPU ones:
//! - on raw buffers: the matrix product ([`sgemm`]) that the matrix iterations of `spectra-core`
//!   (Newton–Schulz, the soft cap) and the ops here run on, the GGUF block products
//!   ([`quantized_matmul`]), one new token's attention over a cache ([`decode_attention`]), a
//!   prompt chunk's attention over a cache ([`chunk_attention`]), the vector loops they share
//!   ([`cpu_op`]) and the spinning thread pool decoding runs on ([`spin_pool`]);
//! - the fused CPU ops of training, as candle custom ops on those: the linear layer, the MLP, the
//!   scaled GELU, the residual and causal attention with RoPE;
//! - (feature `cuda`) the CUDA C of every fused GPU kernel; the GPU ops that launch them sit beside
//!   their CPU paths, in the crates that use them.

pub mod activations;
pub mod causal_attention;
pub mod chunk_attention;
pub mod cpu_op;
#[cfg(any(feature = "cuda", test))]
pub mod cuda;
pub mod decode_attention;
pub mod linear;
pub mod mlp;
pub mod quantized_matmul;
pub mod residual;
pub mod rope;
pub mod sgemm;
pub mod spin_pool;
pub mod storage;
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
