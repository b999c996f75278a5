//! The plugins are usable from a RON config and pass spectra's conformance suites.

use std::path::Path;

use candle_core::{Device, Tensor, Var};
use spectra_core::config::parse_ron;
use spectra_core::registry::{self, Family};
use spectra_core::{
    ConstraintContext, ConstraintState, KvEvictionPolicy, ParamRole, WeightConstraint,
};
use third_party_plugin as _;

#[test]
fn max_entry_clip_runs_from_ron() {
    let c: Box<dyn WeightConstraint> = parse_ron(
        r#"(type: "MaxEntryClip", cfg: (limit: 0.5))"#,
        Path::new("inline.ron"),
    )
    .unwrap();
    let w = Var::from_tensor(&Tensor::new(&[[2.0f32, -0.25], [-3.0, 0.5]], &Device::Cpu).unwrap())
        .unwrap();
    let mut rng = spectra_core::rng::derived_rng(0, 0);
    let mut state = ConstraintState::new();
    let mut ctx = ConstraintContext {
        step: 0,
        lr: 0.1,
        target_norm: 1.0,
        update_norm_bound: None,
        role: ParamRole::Hidden,
        name: "w",
        rng: &mut rng,
        state: &mut state,
    };
    c.apply(&w, &mut ctx).unwrap();
    assert_eq!(
        w.as_tensor().to_vec2::<f32>().unwrap(),
        vec![vec![0.5, -0.25], vec![-0.5, 0.5]]
    );
}

#[test]
fn value_norm_runs_from_ron_and_is_listed() {
    let p: Box<dyn KvEvictionPolicy> = parse_ron(
        r#"(type: "ValueNorm", cfg: (sinks: 2))"#,
        Path::new("inline.ron"),
    )
    .unwrap();
    assert_eq!(p.contract().sinks, 2);
    assert!(registry::names(Family::KvEvictionPolicy).contains(&"ValueNorm"));
    assert!(registry::names(Family::WeightConstraint).contains(&"MaxEntryClip"));
}

#[test]
fn plugins_pass_the_conformance_suites() {
    spectra_core::conformance::check_weight_constraint(&third_party_plugin::MaxEntryClip {
        limit: 0.5,
    });
    spectra_kv::conformance::check_kv_policy(&third_party_plugin::ValueNorm { sinks: 4 });
}
