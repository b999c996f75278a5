//! Conformance suites: one public call holds a plugin, built-in or third-party, to its trait's contract.

#[cfg(test)]
mod constraint_self_tests;
mod constraints;
mod optimizers;
mod tensors;

pub use constraints::{check_optimizer, check_weight_constraint};
pub use tensors::run_cases;
