//! The core of spectra: the three plugin traits, the plugin registry, config reading and validation,
//! errors, device selection and (feature `conformance`) the conformance suites that every weight
//! constraint and optimizer, built-in or third-party, is held to (KV policies': `spectra-kv`).

pub mod config;
pub mod constraint;
pub mod device;
pub mod error;
pub mod kv_policy;
pub mod kv_scores;
pub mod linalg;
pub mod ops;
pub mod optimizer;
pub mod param;
pub mod registry;
pub mod rng;
pub mod ron_dialect;
pub mod rope;
pub mod schedule;
pub mod suggest;

#[cfg(feature = "conformance")]
pub mod conformance;

pub use constraint::{ConstraintContext, ConstraintReport, ConstraintState, WeightConstraint};
pub use device::DeviceSpec;
pub use error::{ConfigError, Error, Result};
pub use kv_policy::{
    keep_top_k, Budget, GqaAggregation, KeepPlan, KvEvictionPolicy, KvHeadView, KvLayerView,
    KvPhase, KvSideInfo, KvStepContext, PolicyContract, SideInfoNeeds, TriggerSchedule,
};
pub use kv_scores::{check_scores, keep_best, scores_from_host, scores_to_host};
pub use optimizer::{Optimizer, OptimizerStep};
pub use param::{Param, ParamRole};
pub use registry::{Family, PluginDescriptor};
pub use rng::SpectraRng;
pub use schedule::Schedule;

// Re-exported so that `register_plugin!` works from third-party crates without extra dependencies.
#[doc(hidden)]
pub use inventory;
