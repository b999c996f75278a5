//! Every registered KV eviction policy, built from its default configuration, through the conformance
//! suite: new built-in or third-party policies are covered without editing this file.

use spectra_core::registry::{plugins, Family};
use spectra_core::KvEvictionPolicy;
use spectra_kv::conformance::check_kv_policy;
use spectra_policies as _;
use third_party_plugin as _;

#[test]
fn every_registered_policy_conforms() {
    let policies: Vec<_> = plugins()
        .into_iter()
        .filter(|p| p.family == Family::KvEvictionPolicy)
        .collect();
    let names: Vec<&str> = policies.iter().map(|p| p.name).collect();
    for expected in [
        "Full",
        "StreamingLlm",
        "H2o",
        "SnapKv",
        "RKv",
        "KNorm",
        "KeyDiff",
        "Tova",
        "ExpectedAttention",
        "PyramidKv",
        "AdaKv",
        "Random",
        "TriAttention",
        "ValueNorm",
    ] {
        assert!(
            names.contains(&expected),
            "{expected} is not registered; registered: {names:?}"
        );
    }
    for descriptor in policies {
        let text = (descriptor.default_config)();
        let policy: Box<dyn KvEvictionPolicy> = ron::from_str(&text).unwrap_or_else(|e| {
            panic!(
                "{}: default config does not parse: {e}\n{text}",
                descriptor.name
            )
        });
        check_kv_policy(policy.as_ref());
    }
}

#[test]
fn the_third_party_policy_conforms() {
    check_kv_policy(&third_party_plugin::ValueNorm::default());
}
