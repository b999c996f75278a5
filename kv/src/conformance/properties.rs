//! The properties of docs/kv-policies.md §5.1 that a policy's declared contract makes checkable,
//! each a function of one random case that names the violated property.

use candle_core::{Device, Tensor};
use proptest::prelude::*;
use proptest::test_runner::TestCaseError;
use rand::Rng;

use super::fixtures::{build, CaseSpec, Fixture};
use spectra_core::kv_policy::{
    KeepPlan, KvEvictionPolicy, KvPhase, KvStepContext, PolicyContract, TriggerSchedule,
};
use spectra_core::rng::derived_rng;

fn rank_key(s: f32) -> f32 {
    if s.is_nan() {
        f32::NEG_INFINITY
    } else {
        s
    }
}

/// A.1, A.3, B.4, C.8–11 for one layer's plan.
fn check_plan(
    c: &PolicyContract,
    plan: &KeepPlan,
    fixture: &Fixture,
    layer: usize,
) -> Result<(), TestCaseError> {
    let lens = fixture.cache.lens(layer).expect("lens");
    let b = fixture.ctx.budget;
    if let Err(m) = plan.check(&lens) {
        return Err(TestCaseError::fail(format!(
            "A1 (indices sorted, unique, in range), layer {layer}: {m}"
        )));
    }
    if c.heads_share_budget {
        return check_shared_plan(c, plan, fixture, layer);
    }
    for (h, (keep, &n)) in plan.per_head.iter().zip(&lens).enumerate() {
        if c.trigger == TriggerSchedule::Never || n <= b {
            prop_assert_eq!(
                keep.len(),
                n,
                "B4 (n ≤ budget or trigger Never keeps everything), layer {} head {}",
                layer,
                h
            );
            continue;
        }
        if c.fills_budget {
            prop_assert_eq!(
                keep.len(),
                b,
                "A3 (fills the budget: keeps exactly min(B, n)), layer {} head {}",
                layer,
                h
            );
        } else {
            prop_assert!(
                keep.len() <= b,
                "A3 (never more than the budget), layer {} head {}: {}",
                layer,
                h,
                keep.len()
            );
        }
        check_protected(c, keep, fixture, layer, h)?;
    }
    Ok(())
}

/// A.3 and B.4 over the layer's total where the heads share `kv_heads × budget` entries, and C.8–11
/// per head.
fn check_shared_plan(
    c: &PolicyContract,
    plan: &KeepPlan,
    fixture: &Fixture,
    layer: usize,
) -> Result<(), TestCaseError> {
    let lens = fixture.cache.lens(layer).expect("lens");
    let total: usize = lens.iter().sum();
    let allowed = lens.len() * fixture.ctx.budget;
    let kept: usize = plan.per_head.iter().map(Vec::len).sum();
    if c.trigger == TriggerSchedule::Never || total <= allowed {
        prop_assert_eq!(
            kept,
            total,
            "B4 (everything fits the heads' shared budget {} or trigger Never: keeps everything), layer {}",
            allowed,
            layer
        );
        return Ok(());
    }
    if c.fills_budget {
        prop_assert_eq!(
            kept,
            allowed,
            "A3 (fills the shared budget: keeps exactly kv_heads × B in all), layer {}",
            layer
        );
    } else {
        prop_assert!(
            kept <= allowed,
            "A3 (never more than the shared budget {}), layer {}: {}",
            allowed,
            layer,
            kept
        );
    }
    for (h, keep) in plan.per_head.iter().enumerate() {
        check_protected(c, keep, fixture, layer, h)?;
    }
    Ok(())
}

/// C.8–11: one head keeps the sinks, the prompt where protected, and the recent window.
fn check_protected(
    c: &PolicyContract,
    keep: &[u32],
    fixture: &Fixture,
    layer: usize,
    h: usize,
) -> Result<(), TestCaseError> {
    let positions = fixture.cache.positions(layer, h).expect("positions");
    let n = positions.len();
    let (prefix, window) = c.protected(positions, &fixture.ctx);
    for i in (0..prefix).chain(n - window..n) {
        prop_assert!(
            keep.binary_search(&(i as u32)).is_ok(),
            "C8–C11 (declared sinks {}, window {}, prompt protection {} keep entry {} of {}), layer {} head {}",
            c.sinks, c.recent_window, c.protects_prompt, i, n, layer, h
        );
    }
    Ok(())
}

/// D.12: every kept unprotected entry ranks at least as high as every evicted one (score, then newer).
/// `tolerance` > 0 only for scores averaged over layers, whose summation order may differ.
fn check_top_k(
    c: &PolicyContract,
    plan: &KeepPlan,
    scores: &[Vec<f32>],
    fixture: &Fixture,
    layer: usize,
    tolerance: f32,
) -> Result<(), TestCaseError> {
    let lens = fixture.cache.lens(layer).expect("lens");
    let fits = |n: usize| {
        if c.heads_share_budget {
            lens.iter().sum::<usize>() <= lens.len() * fixture.ctx.budget
        } else {
            n <= fixture.ctx.budget
        }
    };
    for (h, (keep, s)) in plan.per_head.iter().zip(scores).enumerate() {
        let n = s.len();
        if fits(n) {
            continue;
        }
        let positions = fixture.cache.positions(layer, h).expect("positions");
        prop_assert_eq!(
            positions.len(),
            n,
            "score() gives one score per entry, head {}",
            h
        );
        let (prefix, window) = c.protected(positions, &fixture.ctx);
        let mut kept = vec![false; n];
        keep.iter().for_each(|&i| kept[i as usize] = true);
        // Rank order: score (NaN lowest, as `total_cmp` sees it), then newer.
        let order =
            |a: &usize, b: &usize| rank_key(s[*a]).total_cmp(&rank_key(s[*b])).then(a.cmp(b));
        let candidates = prefix..n - window;
        let worst_kept = candidates.clone().filter(|&i| kept[i]).min_by(order);
        let best_evicted = candidates.clone().filter(|&i| !kept[i]).max_by(order);
        if let (Some(k), Some(e)) = (worst_kept, best_evicted) {
            let (ke, kk) = (rank_key(s[e]), rank_key(s[k]));
            let violated = if tolerance > 0.0 {
                ke > kk + tolerance * (1.0 + kk.abs())
            } else {
                order(&e, &k) == std::cmp::Ordering::Greater
            };
            prop_assert!(
                !violated,
                "D12 (top-k by score, ties to newer, NaN lowest): layer {} head {} evicted entry {} (score {}) \
                 but kept entry {} (score {})",
                layer, h, e, s[e], k, s[k]
            );
        }
    }
    Ok(())
}

/// Everything one selection on a random cache must satisfy.
pub fn selection(
    policy: &dyn KvEvictionPolicy,
    spec: &CaseSpec,
    budget: usize,
) -> Result<(), TestCaseError> {
    let c = policy.contract();
    let needs = policy.needs();
    let fixture = build(spec, policy, budget, None);
    let (views, sides, ctxs) = (fixture.views(), fixture.sides(needs.rope), fixture.ctxs());
    let plans = policy.select_layers(&views, &sides, &ctxs).map_err(|e| {
        TestCaseError::fail(format!(
            "E17 (select must succeed on valid input, NaN/Inf keys included): {e}"
        ))
    })?;
    prop_assert_eq!(plans.len(), views.len(), "one plan per layer");
    for (l, plan) in plans.iter().enumerate() {
        check_plan(&c, plan, &fixture, l)?;
    }
    // E16: same inputs, same seed → identical plans.
    let again = policy
        .select_layers(&views, &sides, &ctxs)
        .expect("second select");
    prop_assert_eq!(
        &again,
        &plans,
        "E16 (deterministic: the same inputs give the same plans)"
    );
    if c.shares_across_layers {
        prop_assert!(
            plans.windows(2).all(|w| w[0] == w[1]),
            "declared shares_across_layers but layers' plans differ"
        );
    } else {
        for (l, plan) in plans.iter().enumerate() {
            let single = policy
                .select(&views[l], &sides[l], &ctxs[l])
                .expect("select");
            prop_assert_eq!(
                &single,
                plan,
                "select_layers must equal per-layer select, layer {}",
                l
            );
        }
    }
    if c.top_k_by_score && c.trigger != TriggerSchedule::Never {
        let per_layer: Vec<Vec<Vec<f32>>> = views
            .iter()
            .zip(&sides)
            .zip(&ctxs)
            .map(|((v, s), x)| {
                let scores = policy
                    .score(v, s, x)
                    .expect("score")
                    .expect("top_k_by_score policies implement score()");
                spectra_core::scores_to_host(&scores).expect("scores on the host")
            })
            .collect();
        if c.shares_across_layers {
            let layers = per_layer.len() as f32;
            let mut mean: Vec<Vec<f32>> = per_layer[0].iter().map(|s| vec![0.0; s.len()]).collect();
            for scores in &per_layer {
                for (m, s) in mean.iter_mut().zip(scores) {
                    m.iter_mut().zip(s).for_each(|(a, x)| *a += x / layers);
                }
            }
            check_top_k(&c, &plans[0], &mean, &fixture, 0, 1e-6)?;
        } else {
            for (l, scores) in per_layer.iter().enumerate() {
                check_top_k(&c, &plans[l], scores, &fixture, l, 0.0)?;
            }
        }
        // D13: a larger budget keeps a superset.
        let larger: Vec<KvStepContext> = ctxs
            .iter()
            .map(|x| KvStepContext {
                budget: x.budget + 1,
                ..*x
            })
            .collect();
        let bigger = policy
            .select_layers(&views, &sides, &larger)
            .expect("select");
        for (l, (small, large)) in plans.iter().zip(&bigger).enumerate() {
            for (h, (s, g)) in small.per_head.iter().zip(&large.per_head).enumerate() {
                prop_assert!(
                    s.iter().all(|i| g.binary_search(i).is_ok()),
                    "D13 (nested: keep(B) ⊆ keep(B+1)), layer {} head {}",
                    l,
                    h
                );
            }
        }
    }
    // G22: redrawing one head's keys changes no other head's plan (cross-layer sharing is per KV head).
    // Heads that share a budget compete for it, so there a redrawn head may move the others' shares.
    if spec.kv_heads >= 2 && !c.heads_share_budget {
        let other = build(spec, policy, budget, Some(0));
        let perturbed = policy
            .select_layers(&other.views(), &other.sides(needs.rope), &other.ctxs())
            .expect("select");
        for (l, (a, b)) in plans.iter().zip(&perturbed).enumerate() {
            prop_assert_eq!(
                &a.per_head[1..],
                &b.per_head[1..],
                "G22 (heads are independent): layer {}",
                l
            );
        }
    }
    Ok(())
}

/// B.5: during decoding the policy fires exactly as its trigger declares, and compression brings every
/// head back within the budget.
pub fn trigger(
    policy: &dyn KvEvictionPolicy,
    spec: &CaseSpec,
    budget: usize,
) -> Result<(), TestCaseError> {
    let c = policy.contract();
    let needs = policy.needs();
    let mut fixture = build(spec, policy, budget, None);
    fixture.ctx.phase = KvPhase::Decode;
    let steps = match c.trigger {
        TriggerSchedule::Slack { slack } => 2 * slack + 2,
        TriggerSchedule::Interval { every } => 2 * every + 2,
        _ => 8,
    };
    let shape = fixture.cache.shape();
    let mut rng = derived_rng(spec.seed, 1 << 44);
    for _ in 0..steps {
        let at = fixture.ctx.position;
        for layer in 0..shape.layers {
            let k: Vec<f32> = (0..shape.kv_heads * shape.head_dim)
                .map(|_| rng.random_range(-1.0..1.0))
                .collect();
            let k = Tensor::from_vec(k, (shape.kv_heads, 1, shape.head_dim), &Device::Cpu)
                .expect("key");
            fixture.cache.append(layer, &k, &k, &[at]).expect("append");
            for head in fixture.written[layer].iter_mut().flatten() {
                head.push(rng.random_range(0.0..1.0));
            }
        }
        fixture.ctx.position = at + 1;
        let len = (0..shape.layers)
            .map(|l| c.cache_len(&fixture.cache.lens(l).expect("lens")))
            .max()
            .unwrap_or(0);
        let fires = policy.should_compress(len, &fixture.ctx);
        let expected = match c.trigger {
            TriggerSchedule::Never | TriggerSchedule::PrefillOnly => false,
            TriggerSchedule::EveryStep => len > budget,
            TriggerSchedule::Slack { slack } => len >= budget + slack,
            TriggerSchedule::Interval { every } => {
                len > budget && fixture.ctx.position.is_multiple_of(every as u64)
            }
        };
        prop_assert_eq!(
            fires,
            expected,
            "B5 (trigger {:?} fires as declared at cache length {})",
            c.trigger,
            len
        );
        if !fires {
            if let TriggerSchedule::EveryStep = c.trigger {
                prop_assert!(
                    len <= budget,
                    "B5 (EveryStep keeps the cache within the budget)"
                );
            }
            continue;
        }
        let plans = policy
            .select_layers(
                &fixture.views(),
                &fixture.sides(needs.rope),
                &fixture.ctxs(),
            )
            .map_err(|e| TestCaseError::fail(format!("select during decoding failed: {e}")))?;
        for (layer, plan) in plans.iter().enumerate() {
            fixture.cache.compact(layer, plan).expect("compact");
            if let Some(written) = &mut fixture.written[layer] {
                crate::compression::keep_scores(written, plan);
            }
            let lens = fixture.cache.lens(layer).expect("lens");
            prop_assert!(
                c.cache_len(&lens) <= budget,
                "B5 (compression returns within the budget): {:?}",
                lens
            );
        }
    }
    Ok(())
}

/// B.5 at prefill, B.6/C.11/E.17 at config time, and the RON round trip; panics naming the property.
pub fn config(policy: &dyn KvEvictionPolicy) {
    let name = policy.typetag_name();
    let text = spectra_core::registry::to_ron(&policy);
    let back: Box<dyn KvEvictionPolicy> = spectra_core::config::ron_options()
        .from_str(&text)
        .unwrap_or_else(|e| panic!("{name}: config does not round-trip through RON: {e}\n{text}"));
    assert_eq!(
        spectra_core::registry::to_ron(&back),
        text,
        "{name}: RON round trip changes the config"
    );
    assert_eq!(
        back.contract(),
        policy.contract(),
        "{name}: contract changes through RON"
    );
    let c = policy.contract();
    // H23: a policy may split the budget unevenly over the layers, never change its total.
    for (layers, budget, context) in [
        (1, 16, 64),
        (4, 100, 1000),
        (12, 512, 600),
        (30, 1024, 8192),
    ] {
        let split = policy.layer_budgets(vec![budget; layers], context);
        assert!(
            split.len() == layers
                && split.iter().all(|&b| b >= 1)
                && split.iter().sum::<usize>() == layers * budget,
            "{name}: H23 (layer budgets: one per layer, each ≥ 1, summing to the configured total): \
             {layers} layers of {budget} at context {context} became {split:?}"
        );
    }
    let budget_zero = policy.validate(&spectra_core::Budget::Tokens(0));
    if c.trigger != TriggerSchedule::Never {
        assert!(
            budget_zero.is_err(),
            "{name}: E17 (budget 0 must be rejected at config time)"
        );
        if c.recent_window > 0 {
            assert!(
                policy
                    .validate(&spectra_core::Budget::Tokens(c.recent_window))
                    .is_err(),
                "{name}: C11 (a window ≥ the budget must be rejected at config time)"
            );
        }
        if c.sinks + c.recent_window >= 2 {
            assert!(
                policy
                    .validate(&spectra_core::Budget::Tokens(c.sinks + c.recent_window - 1))
                    .is_err(),
                "{name}: C11 (sinks + window > budget must be rejected at config time)"
            );
        }
        let ctx = |n: u64| KvStepContext {
            phase: KvPhase::Prefill,
            position: n,
            prompt_len: n,
            budget: 10,
            seed: 0,
        };
        for n in [9usize, 10, 11] {
            assert_eq!(
                policy.should_compress(n, &ctx(n as u64)),
                n > 10,
                "{name}: B5 (after prefill the policy compresses exactly when the prompt exceeds the budget)"
            );
        }
    } else {
        let ctx = KvStepContext {
            phase: KvPhase::Prefill,
            position: 100,
            prompt_len: 100,
            budget: 10,
            seed: 0,
        };
        assert!(
            !policy.should_compress(100, &ctx),
            "{name}: B5 (trigger Never never fires)"
        );
    }
}
