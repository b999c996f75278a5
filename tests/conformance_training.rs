//! Every registered weight constraint and optimizer, built-in or third-party, held to the conformance
//! suites. Plugins are found through the registry, so a new one is covered without editing this file.

use spectra::plugins as _;
use spectra_core::conformance::{check_optimizer, check_weight_constraint};
use spectra_core::registry::{plugins, Family};
use spectra_core::{Optimizer, WeightConstraint};
use third_party_plugin as _;

fn default_configs(family: Family) -> Vec<(&'static str, String)> {
    plugins()
        .into_iter()
        .filter(|p| p.family == family)
        .map(|p| (p.name, (p.default_config)()))
        .collect()
}

#[test]
fn every_weight_constraint_conforms() {
    let all = default_configs(Family::WeightConstraint);
    for expected in ["SpectralSoftCap", "SvdClip", "MaxEntryClip"] {
        assert!(
            all.iter().any(|(n, _)| *n == expected),
            "{expected} is not registered: {all:?}"
        );
    }
    for (name, config) in all {
        let constraint: Box<dyn WeightConstraint> = ron::from_str(&config)
            .unwrap_or_else(|e| panic!("{name}'s default config `{config}` does not parse: {e}"));
        check_weight_constraint(&*constraint);
    }
}

#[test]
fn every_optimizer_conforms() {
    let all = default_configs(Family::Optimizer);
    for expected in ["AdamW", "Muon", "Sgd"] {
        assert!(
            all.iter().any(|(n, _)| *n == expected),
            "{expected} is not registered: {all:?}"
        );
    }
    for (name, config) in all {
        let make = || -> Box<dyn Optimizer> {
            ron::from_str(&config).unwrap_or_else(|e| {
                panic!("{name}'s default config `{config}` does not parse: {e}")
            })
        };
        check_optimizer(&make);
    }
}
