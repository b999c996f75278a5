//! What a training run did, as `spectra train` prints it and `summary.json` and the report keep it.

use std::path::PathBuf;

use serde::Serialize;

use super::metrics::EvalRecord;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub enum Outcome {
    Finished,
    /// Stopped on request; the checkpoint holds the state after `steps_done` steps.
    Stopped,
}

/// `spectra train`'s exit status when a run stopped with a checkpoint before its last step
/// (sysexits' EX_TEMPFAIL: not done, try again), so that a script tells it from a finished run (0)
/// and from a failure (1).
pub const STOPPED_EXIT_STATUS: u8 = 75;

/// What a run did; also written to `summary.json`.
#[derive(Clone, Debug, Serialize)]
pub struct TrainSummary {
    pub outcome: Outcome,
    pub output: PathBuf,
    pub steps_done: u64,
    pub steps: u64,
    pub final_eval: Option<EvalRecord>,
    /// Wall time of this invocation's training steps.
    pub seconds: f64,
    pub mean_step_seconds: f64,
    pub mean_constraint_seconds: f64,
    /// Training targets (tokens or images) per second over this invocation's steps.
    pub targets_per_second: f64,
}
