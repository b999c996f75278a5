//! Conformance suites: one public call holds a plugin, built-in or third-party, to its trait's contract.

#[cfg(test)]
mod constraint_self_tests;
mod constraints;
mod kv;
mod kv_fixtures;
mod kv_properties;
#[cfg(test)]
mod kv_self_tests;
mod optimizers;
mod tensors;

pub use constraints::{check_optimizer, check_weight_constraint};
pub use kv::{check_kv_policy, check_kv_policy_with, KvModelShape, KvSuiteInputs, PolicyFactory};
