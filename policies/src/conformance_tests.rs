//! Every policy, in its default and its main alternative configurations, through the conformance suite.

use crate::tri_attention::query_stats::{QueryBandStats, QueryStatsMeta};
use spectra_core::{GqaAggregation, KvEvictionPolicy, TriggerSchedule};
use spectra_kv::conformance::{check_kv_policy, check_kv_policy_with, KvModelShape, KvSuiteInputs};

use crate::tri_attention::{OffsetAggregation, TriAttention, TriAttentionMode};
use crate::{
    AdaKv, ExpectedAttention, Full, H2o, KNorm, KeyDiff, KvZap, KvZip, Pooling, PyramidKv, RKv,
    Random, SnapKv, StreamingLlm, Tova,
};

#[test]
fn full() {
    check_kv_policy(&Full::default());
}

#[test]
fn streaming_llm() {
    check_kv_policy(&StreamingLlm::default());
}

#[test]
fn h2o() {
    check_kv_policy(&H2o::default());
    check_kv_policy(&H2o { recent_window: 3 });
}

#[test]
fn snap_kv() {
    check_kv_policy(&SnapKv::default());
    check_kv_policy(&SnapKv {
        window: 4,
        kernel: 1,
        pooling: Pooling::Max,
        gqa: GqaAggregation::Max,
    });
}

#[test]
fn r_kv() {
    check_kv_policy(&RKv::default());
}

#[test]
fn kv_zip() {
    check_kv_policy(&KvZip::default());
    check_kv_policy(&AdaKv {
        policy: Box::new(KvZip::default()),
        ..AdaKv::default()
    });
}

#[test]
fn kv_zap() {
    // The suite gives the written scores itself; the surrogate only has to load.
    let surrogate =
        || crate::kv_zap::Surrogate::new(1, 1, vec![vec![1.0]], vec![vec![0.0]]).unwrap();
    check_kv_policy(&KvZap::default().with_surrogate(surrogate()));
    check_kv_policy(
        &KvZap {
            sinks: 2,
            recent_window: 3,
            trigger: TriggerSchedule::EveryStep,
            ..KvZap::default()
        }
        .with_surrogate(surrogate()),
    );
}

#[test]
fn k_norm_and_random() {
    check_kv_policy(&KNorm::default());
    check_kv_policy(&KNorm {
        trigger: TriggerSchedule::Slack { slack: 4 },
    });
    check_kv_policy(&Random::default());
    check_kv_policy(&Random {
        trigger: TriggerSchedule::Interval { every: 3 },
    });
}

#[test]
fn key_diff() {
    check_kv_policy(&KeyDiff::default());
    check_kv_policy(&KeyDiff {
        trigger: TriggerSchedule::EveryStep,
    });
}

#[test]
fn tova() {
    check_kv_policy(&Tova::default());
    check_kv_policy(&Tova {
        trigger: TriggerSchedule::PrefillOnly,
    });
}

#[test]
fn expected_attention() {
    check_kv_policy(&ExpectedAttention::default());
    check_kv_policy(&ExpectedAttention {
        window: 3,
        sinks: 0,
        use_covariance: false,
        use_value_norm: false,
        trigger: TriggerSchedule::Slack { slack: 4 },
        ..ExpectedAttention::default()
    });
}

#[test]
fn pyramid_kv() {
    check_kv_policy(&PyramidKv::default());
    check_kv_policy(&PyramidKv {
        policy: Box::new(KeyDiff::default()),
        beta: 2.0,
    });
}

#[test]
fn ada_kv() {
    check_kv_policy(&AdaKv::default());
    check_kv_policy(&AdaKv {
        policy: Box::new(ExpectedAttention::default()),
        alpha_safeguard: 0.5,
    });
    check_kv_policy(&AdaKv {
        policy: Box::new(KNorm {
            trigger: TriggerSchedule::EveryStep,
        }),
        alpha_safeguard: 0.0,
    });
}

#[test]
fn tri_attention_estimating_centres_from_the_window() {
    check_kv_policy(&TriAttention::default());
}

/// Calibrated statistics of the suite's random model shape (random centres with m ≥ |q̄|).
fn calibrated(config: TriAttention) -> impl Fn(&KvModelShape) -> Box<dyn KvEvictionPolicy> {
    move |shape: &KvModelShape| {
        let heads = shape.kv_heads * shape.group_size;
        let mut rng = spectra_core::rng::derived_rng(
            shape.head_dim as u64,
            (shape.layers * 64 + heads) as u64,
        );
        let meta = QueryStatsMeta::for_rope(&shape.rope, shape.layers, heads);
        Box::new(
            config
                .clone()
                .with_stats(QueryBandStats::random(meta, 0.5, &mut rng).unwrap()),
        )
    }
}

#[test]
fn tri_attention_calibrated_shared_across_layers() {
    let make = calibrated(TriAttention::default());
    check_kv_policy_with(
        &TriAttention::default(),
        &KvSuiteInputs {
            policy_for: Some(&make),
        },
    );
}

#[test]
fn tri_attention_calibrated_per_layer_with_window() {
    let config = TriAttention {
        mode: TriAttentionMode::PerLayer,
        aggregation: OffsetAggregation::Max,
        gqa: GqaAggregation::Mean,
        protect_prompt: false,
        recent_window: 5,
        slack: 16,
        ..TriAttention::default()
    };
    let make = calibrated(config.clone());
    check_kv_policy_with(
        &config,
        &KvSuiteInputs {
            policy_for: Some(&make),
        },
    );
}
