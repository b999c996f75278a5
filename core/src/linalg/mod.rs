//! Matrix routines shared by constraints, optimizers, certificates and tests. Everything a plugin does
//! to a spectrum goes through here: power iteration, odd polynomial iterations (Newton–Schulz, soft
//! cap, hard cap, msign), the soft-cap coupling, and exact SVDs through faer.
//!
//! The iterations run on candle tensors in the weight's dtype and on its device, except that f32
//! polynomial steps on the CPU run on `spectra-kernels`' matrix product over plain buffers; only the
//! faer routines in [`svd`] copy to the CPU in f64.

pub mod checks;
pub mod msign;
mod odd_step;
pub mod orthogonalize;
pub mod polynomial;
mod polynomial_cpu;
pub mod power_iteration;
pub mod soft_cap;
pub mod svd;

pub use checks::{
    all_finite, column_rms, ensure_finite, frobenius_norm, matrix_dims, rms_scale, scalar_f64,
};
pub use msign::{clip_singular_values, msign};
pub use orthogonalize::{
    orthogonalize, orthogonalize_normalized_by, OrthogonalizeDtype, Orthogonalizer,
    BF16_SIGMA_SLACK,
};
pub use polynomial::{apply_odd_steps, composite, max_on_unit_interval, OddStep};
pub use power_iteration::{iterate_len, power_iterate, StartVector, TopSingular};
pub use soft_cap::{soft_cap_alpha, soft_cap_steps};
