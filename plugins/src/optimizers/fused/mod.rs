//! The optimizers' fused updates: each one pass over the weight and its state where a chain of candle
//! ops would make several, with a CPU path and (feature `cuda`) a CUDA kernel that agrees with it bit
//! for bit. What they share with the other fused ops is in `spectra_core::ops`.

pub mod adamw;
pub mod muon_momentum;
