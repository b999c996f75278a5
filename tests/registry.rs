//! The registry: every plugin's default config round-trips, third-party plugins are listed, names are unique.

use std::path::Path;

use spectra::core::config::parse_ron;
use spectra::core::registry::{self, Family};
use spectra::core::{KvEvictionPolicy, Optimizer, WeightConstraint};
use third_party_plugin as _;

/// Parses a default config back and prints it again: the text must be a fixed point.
fn round_trip(family: Family, text: &str) -> String {
    let file = Path::new("default.ron");
    match family {
        Family::WeightConstraint => {
            registry::to_ron(&parse_ron::<Box<dyn WeightConstraint>>(text, file).unwrap())
        }
        Family::Optimizer => {
            registry::to_ron(&parse_ron::<Box<dyn Optimizer>>(text, file).unwrap())
        }
        Family::KvEvictionPolicy => {
            registry::to_ron(&parse_ron::<Box<dyn KvEvictionPolicy>>(text, file).unwrap())
        }
    }
}

#[test]
fn every_default_config_serializes_and_parses_back() {
    let plugins = registry::plugins();
    assert!(!plugins.is_empty());
    for p in plugins {
        let text = (p.default_config)();
        assert!(
            text.starts_with(&format!("(type:\"{}\",cfg:", p.name)),
            "{}: {text}",
            p.name
        );
        assert_eq!(
            round_trip(p.family, &text),
            text,
            "{} does not round-trip",
            p.name
        );
    }
}

#[test]
fn third_party_plugins_are_listed() {
    assert!(registry::names(Family::WeightConstraint).contains(&"MaxEntryClip"));
    assert!(registry::names(Family::KvEvictionPolicy).contains(&"ValueNorm"));
    let clip = registry::plugins()
        .into_iter()
        .find(|p| p.name == "MaxEntryClip")
        .unwrap();
    assert!(
        clip.module.starts_with("third_party_plugin"),
        "{}",
        clip.module
    );
}

#[test]
fn registered_names_are_unique() {
    registry::check_unique().unwrap();
}

#[test]
fn every_plugin_has_a_summary() {
    for p in registry::plugins() {
        assert!(!p.summary.trim().is_empty(), "{} has no summary", p.name);
    }
}
