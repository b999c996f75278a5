//! spectra: training with enforced Lipschitz bounds and serving with a bounded KV cache.
//!
//! This crate re-exports the workspace's crates; the `spectra` binary is its command line.

pub use spectra_core as core;
pub use spectra_inference as inference;
pub use spectra_kernels as kernels;
pub use spectra_kv as kv_runtime;
pub use spectra_models as models;
pub use spectra_plugins as plugins;
pub use spectra_policies as policies;
pub mod allocator;
pub mod bench;
pub mod chat_template;
pub mod kv_eval;
pub mod output;
pub mod plots;
pub mod serve;
pub mod threads;
pub mod train;
pub mod units;
