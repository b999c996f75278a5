//! `spectra train` and `spectra sweep`: the training runner, its checkpoints, metrics and reports.

pub mod certify;
pub mod checkpoint;
mod config;
pub mod config_error;
mod eval;
pub mod groups;
pub mod metrics;
mod param_selector;
mod progress;
mod report;
pub mod routing;
mod runner;
pub mod setup;
mod summary;
pub mod sweep;
mod sweep_grid;

pub use config::{EvalConfig, ParamGroupConfig, TrainConfig};
pub use runner::{train, train_file, TrainOptions, CONFIG_COPY};
pub use summary::{Outcome, TrainSummary, STOPPED_EXIT_STATUS};
