//! Conformance of KV eviction policies (docs/kv-policies.md §5): every property the policy's
//! declared contract makes checkable, as proptest properties over random caches (0 to 4× the budget
//! entries per head, head dims 64 and 128, GQA groups 1–8, per-head lengths that differ, random
//! window queries and RoPE when asked for), plus all-equal, few-distinct and NaN/Inf keys, and the
//! config checks.

use proptest::test_runner::TestCaseError;
use spectra_core::conformance::run_cases;

pub use self::fixtures::KvModelShape;
use self::fixtures::{case_spec, smallest_budget, CaseSpec, Values};
mod fixtures;
mod properties;
#[cfg(test)]
mod self_tests;

use spectra_core::KvEvictionPolicy;

/// Cases per kind of values for the selection properties, and for the decode-trigger simulation. Modest,
/// so that one policy's suite runs in seconds.
const SELECTION_CASES: u32 = 12;
const TRIGGER_CASES: u32 = 4;

/// Side inputs for policies the suite cannot configure from their defaults alone.
#[derive(Default)]
pub struct KvSuiteInputs<'a> {
    /// Builds the policy for a random model shape, e.g. with calibration statistics of that shape.
    /// Without it every case uses the policy as given.
    pub policy_for: Option<&'a PolicyFactory>,
}

/// Builds a policy for a model shape.
pub type PolicyFactory = dyn Fn(&KvModelShape) -> Box<dyn KvEvictionPolicy>;

/// One property of one case, given the policy and the budget to use.
type Property = dyn Fn(&dyn KvEvictionPolicy, &CaseSpec, usize) -> Result<(), TestCaseError>;

/// Holds a policy to its declared contract; panics with the violated property.
pub fn check_kv_policy(policy: &dyn KvEvictionPolicy) {
    check_kv_policy_with(policy, &KvSuiteInputs::default());
}

/// [`check_kv_policy`] with side inputs.
pub fn check_kv_policy_with(policy: &dyn KvEvictionPolicy, inputs: &KvSuiteInputs<'_>) {
    let name = policy.typetag_name();
    properties::config(policy);
    let with_policy = |spec: &CaseSpec, property: &Property| {
        let built = inputs.policy_for.map(|make| make(&spec.model()));
        let policy = built.as_deref().unwrap_or(policy);
        let budget = smallest_budget(policy) + spec.budget_extra;
        property(policy, spec, budget)
    };
    for values in [
        Values::Random,
        Values::AllEqual,
        Values::FewDistinct,
        Values::NonFinite,
    ] {
        run(
            name,
            &format!("selection on {values:?} keys"),
            SELECTION_CASES,
            values,
            &|spec| with_policy(spec, &properties::selection),
        );
    }
    run(
        name,
        "decode trigger",
        TRIGGER_CASES,
        Values::Random,
        &|spec| with_policy(spec, &properties::trigger),
    );
}

fn run(
    policy: &str,
    what: &str,
    cases: u32,
    values: Values,
    test: &dyn Fn(&CaseSpec) -> Result<(), TestCaseError>,
) {
    run_cases(
        &format!("{policy} ({what})"),
        cases,
        case_spec(values),
        |spec| test(&spec),
    );
}
