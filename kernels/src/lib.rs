//! spectra's compute kernels, every CPU one and the CUDA C of the GPU ones:
//! - on raw buffers: the matrix product ([`sgemm`]) that the matrix iterations of `spectra-core`
//!   (Newton–Schulz, the soft cap) and the ops here run on, the GGUF block products
//!   ([`quantized_matmul`]), one new token's attention over a cache ([`decode_attention`]), a
//!   prompt chunk's attention over a cache ([`chunk_attention`]), the vector loops they share
//!   ([`cpu_op`]) and the spinning thread pool decoding runs on ([`spin_pool`]);
//! - the fused CPU ops of training, as candle custom ops on those: the linear layer, the MLP, the
//!   scaled GELU, the residual and causal attention with RoPE;
//! - the CUDA C of every fused GPU kernel ([`cuda`]), launched under the `cuda` feature by the GPU
//!   ops beside their CPU paths in the crates that use them, and run on the CPU under emulation by
//!   the tests (tests/emulated_kernels.rs).

pub mod activations;
pub mod causal_attention;
pub mod chunk_attention;
pub mod cpu_op;
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
