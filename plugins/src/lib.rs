//! spectra's built-in weight constraints and optimizers: every method of "Training Transformers with
//! Enforced Lipschitz Constants" (docs/lipschitz.md §2–§3), plus AdamW, Muon and SGD.
//!
//! Constraints work in RMS→RMS units: a weight W of shape (fan_out, fan_in) is seen as
//! N = W/scale with scale = sqrt(fan_out/fan_in), so that σ_max(N) = ‖W‖_RMS→RMS. Every plugin
//! registers itself; a config names it as `(type: "SpectralSoftCap", cfg: (w_max: 2.0))`.

pub mod constraints;
mod field_checks;
pub mod optimizers;

pub use constraints::{
    EmbeddingColumnCap, HardCapMode, SpectralHammer, SpectralHardCap, SpectralNormalize,
    SpectralSoftCap, SpectralWeightDecay, Stiefel, SvdClip, WeightDecay,
};
pub use optimizers::{AdamW, MomentumWarmup, Muon, Sgd, UpdateScale};
