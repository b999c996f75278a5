//! `spectra train` and `spectra sweep`: the training runner, its checkpoints, metrics and reports.

pub mod checkpoint;
pub mod config_error;
mod eval;
pub mod groups;
pub mod metrics;
mod progress;
mod report;
mod runner;
pub mod setup;
mod summary;
pub mod sweep;

pub use runner::{train, train_file, TrainOptions};
pub use summary::{Outcome, TrainSummary};
