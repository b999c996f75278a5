//! The batching engine on a tiny random Llama: a sequence decoded among others is the sequence decoded
//! alone, under every kind of policy; the KV memory budget holds against the caches' own byte counts
//! while sequences arrive, finish and are cancelled; every admitted sequence finishes.

use std::path::Path;
use std::sync::Arc;

use proptest::prelude::*;
use spectra::core::config::parse_ron;
use spectra::core::{Budget, KvEvictionPolicy};
use spectra::inference::{
    Engine, EngineConfig, Event, FinishReason, GenerationParams, Logits, Request, RereadPrompt,
    SchedulerConfig, SequenceId, Session, StepPriority,
};
use spectra::models::llama::Llama;

mod llama_support;

use llama_support::{Tiny, VOCAB};

fn policy(text: &str) -> Arc<dyn KvEvictionPolicy> {
    parse_ron(text, Path::new("test.ron")).unwrap()
}

/// Full, and one policy of each way of choosing: scored by the keys with a rotation model
/// (TriAttention), by the last queries (SnapKV), with per-head budgets (AdaKV), per step (H2O).
fn policies() -> Vec<(&'static str, Option<Arc<dyn KvEvictionPolicy>>)> {
    vec![
        ("Full", None),
        (
            "TriAttention",
            Some(policy(
                r#"(type: "TriAttention", cfg: (stats: ObservationWindow(8), slack: 4))"#,
            )),
        ),
        (
            "SnapKv",
            Some(policy(
                r#"(type: "SnapKv", cfg: (window: 4, kernel: 1, pooling: Avg, gqa: Mean))"#,
            )),
        ),
        (
            "AdaKv",
            Some(policy(
                r#"(type: "AdaKv", cfg: (policy: (type: "SnapKv", cfg: (window: 4, kernel: 1, pooling: Avg, gqa: Mean)), alpha_safeguard: 0.2))"#,
            )),
        ),
        (
            "H2o",
            Some(policy(r#"(type: "H2o", cfg: (recent_window: 2))"#)),
        ),
    ]
}

fn prompt(len: usize, seed: usize) -> Vec<u32> {
    (0..len)
        .map(|i| ((i * 7 + seed * 13 + 3) % VOCAB) as u32)
        .collect()
}

const CHUNK: usize = 16;

fn engine(model: &Arc<Llama>, kv_memory: usize, priority: StepPriority) -> Engine<Llama> {
    Engine::new(
        model.clone(),
        EngineConfig {
            scheduler: SchedulerConfig {
                kv_memory,
                max_sequences: 8,
                // Room for every sequence's whole chunk: chunks are cut as a session alone cuts them.
                step_tokens: 8 * (CHUNK + 1),
                chunk: CHUNK,
                priority,
            },
            reread: Some(RereadPrompt::default()),
        },
        None,
    )
    .unwrap()
}

/// Greedy tokens and each one's largest logit, decoded by a session of its own.
fn alone(
    model: &Arc<Llama>,
    policy: &Option<Arc<dyn KvEvictionPolicy>>,
    prompt: &[u32],
    max_tokens: usize,
) -> Vec<(u32, f32)> {
    let mut session = Session::new(model.clone(), policy.clone(), Budget::Tokens(12), 0)
        .unwrap()
        .with_decoding(max_tokens);
    let mut logits = session.prefill(prompt, CHUNK, Logits::Last).unwrap();
    let mut out = Vec::new();
    for i in 0..max_tokens {
        let row: Vec<f32> = logits.squeeze(0).unwrap().to_vec1().unwrap();
        let (token, top) =
            row.iter()
                .enumerate()
                .fold((0, f32::NEG_INFINITY), |(bt, bv), (t, &v)| {
                    if v > bv {
                        (t as u32, v)
                    } else {
                        (bt, bv)
                    }
                });
        out.push((token, top));
        if i + 1 < max_tokens {
            logits = session.step(token).unwrap();
        }
    }
    out
}

/// Runs the engine until it is idle; every event, in order.
fn run(engine: &mut Engine<Llama>) -> Vec<Event> {
    let mut events = Vec::new();
    for _ in 0..10_000 {
        if !engine.has_work() {
            return events;
        }
        events.extend(engine.step().unwrap());
    }
    panic!("the engine did not finish in 10,000 steps");
}

fn tokens_of(events: &[Event], id: SequenceId) -> Vec<(u32, f32)> {
    events
        .iter()
        .filter_map(|e| match e {
            Event::Token {
                id: i,
                token,
                top_logit,
                ..
            } if *i == id => Some((*token, *top_logit)),
            _ => None,
        })
        .collect()
}

/// Prompts of 5 to 45 tokens (one chunk, or several of 16 whose rows the linear layers multiply
/// beside other sequences' single decode rows), decoded together, each under the same policy.
#[test]
fn a_sequence_decoded_among_others_is_the_sequence_decoded_alone() {
    let tiny = Tiny::new();
    let model = Arc::new(tiny.gguf());
    let lens = [5usize, 45, 17, 30, 9];
    let max_tokens = 10;
    for (name, policy) in policies() {
        for priority in [StepPriority::DecodeFirst, StepPriority::PrefillFirst] {
            let mut engine = engine(&model, usize::MAX, priority);
            let ids: Vec<SequenceId> = lens
                .iter()
                .enumerate()
                .map(|(i, &len)| {
                    engine
                        .submit(Request {
                            prompt: prompt(len, i),
                            params: GenerationParams {
                                max_tokens,
                                ..GenerationParams::default()
                            },
                            policy: policy.clone(),
                            budget: Budget::Tokens(12),
                            seed: 0,
                        })
                        .unwrap()
                })
                .collect();
            let events = run(&mut engine);
            for (i, &id) in ids.iter().enumerate() {
                let want = alone(&model, &policy, &prompt(lens[i], i), max_tokens);
                let got = tokens_of(&events, id);
                assert_eq!(got.len(), max_tokens, "{name} {priority:?} sequence {i}");
                for (k, ((a, la), (b, lb))) in got.iter().zip(&want).enumerate() {
                    assert_eq!(a, b, "{name} {priority:?} sequence {i} token {k}");
                    // The same f32 arithmetic; candle's f32 product may take another kernel for more
                    // rows, a few ulps of logits of size ~1–10.
                    assert!(
                        (la - lb).abs() < 1e-4,
                        "{name} sequence {i} token {k}: {la} vs {lb}"
                    );
                }
            }
            assert_eq!(engine.kv_bytes(), 0, "every cache is freed");
        }
    }
}

/// Stop tokens end a sequence (without text), max_tokens another; a cancelled sequence is reported
/// and its memory given back.
#[test]
fn sequences_end_by_stop_token_length_or_cancellation() {
    let tiny = Tiny::new();
    let model = Arc::new(tiny.gguf());
    let free = alone(&model, &None, &prompt(8, 0), 6);
    let mut engine = engine(&model, usize::MAX, StepPriority::DecodeFirst);
    let request = |stop_tokens: Vec<u32>| Request {
        prompt: prompt(8, 0),
        params: GenerationParams {
            max_tokens: 6,
            stop_tokens,
            ..GenerationParams::default()
        },
        policy: None,
        budget: Budget::Tokens(usize::MAX),
        seed: 0,
    };
    let stopped = engine.submit(request(vec![free[2].0])).unwrap();
    let long = engine.submit(request(vec![])).unwrap();
    let cancelled = engine.submit(request(vec![])).unwrap();
    let mut events = engine.step().unwrap();
    assert!(engine.kv_bytes() > 0);
    let before = engine.reserved_kv_bytes();
    assert!(engine.cancel(cancelled));
    assert!(engine.reserved_kv_bytes() < before);
    events.extend(run(&mut engine));
    let finished = |id| {
        events.iter().find_map(|e| match e {
            Event::Finished {
                id: i,
                reason,
                stats,
                ..
            } if *i == id => Some((*reason, stats.generated_tokens)),
            _ => None,
        })
    };
    let first_stop = free.iter().position(|t| t.0 == free[2].0).unwrap();
    assert_eq!(
        finished(stopped),
        Some((FinishReason::Stop, first_stop + 1))
    );
    assert_eq!(finished(long), Some((FinishReason::Length, 6)));
    assert_eq!(
        finished(cancelled).map(|f| f.0),
        Some(FinishReason::Cancelled)
    );
    assert!(!engine.cancel(cancelled), "a sequence is cancelled once");
}

#[test]
fn requests_that_cannot_run_are_refused_with_the_reason() {
    let tiny = Tiny::new();
    let model = Arc::new(tiny.gguf());
    let mut engine = engine(&model, 4096, StepPriority::DecodeFirst);
    let request = |prompt: Vec<u32>, max_tokens| Request {
        prompt,
        params: GenerationParams {
            max_tokens,
            ..GenerationParams::default()
        },
        policy: None,
        budget: Budget::Tokens(usize::MAX),
        seed: 0,
    };
    let too_big = engine.submit(request(prompt(200, 0), 10)).unwrap_err();
    assert!(too_big.to_string().contains("KV memory"), "{too_big}");
    let too_long = engine.submit(request(prompt(1000, 0), 100)).unwrap_err();
    assert!(too_long.to_string().contains("max_tokens"), "{too_long}");
    let bad_token = engine.submit(request(vec![VOCAB as u32], 1)).unwrap_err();
    assert!(bad_token.to_string().contains("vocabulary"), "{bad_token}");
    let zero_budget = Request {
        policy: Some(policy(r#"(type: "StreamingLlm", cfg: (sinks: 4))"#)),
        budget: Budget::Tokens(0),
        ..request(prompt(5, 0), 1)
    };
    let e = engine.submit(zero_budget).unwrap_err();
    assert!(e.to_string().contains("StreamingLlm"), "{e}");
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(12))]

    /// Sequences under every policy arrive while others run, some are cancelled: after every step the
    /// caches hold no more than the KV memory budget, each sequence's peak stays within what was
    /// reserved for it, and every sequence ends.
    #[test]
    fn the_kv_memory_budget_holds_and_every_sequence_ends(
        requests in prop::collection::vec(
            (1usize..50, 1usize..12, 0usize..5, 6usize..24, any::<bool>()),
            1..8,
        ),
        memory in 1usize..4,
        priority in prop_oneof![Just(StepPriority::DecodeFirst), Just(StepPriority::PrefillFirst)],
    ) {
        let tiny = Tiny::new();
        let model = Arc::new(tiny.gguf());
        let policies = policies();
        let built: Vec<Request> = requests
            .iter()
            .enumerate()
            .map(|(i, &(len, max_tokens, p, budget, _))| Request {
                prompt: prompt(len, i),
                params: GenerationParams { max_tokens, ..GenerationParams::default() },
                policy: policies[p].1.clone(),
                budget: Budget::Tokens(budget),
                seed: i as u64,
            })
            .collect();
        // From the largest single reservation (every request fits alone) to a few of them.
        let probe = engine(&model, usize::MAX, priority);
        let largest = built.iter().map(|r| probe.reservation(r)).max().unwrap();
        let kv_memory = largest * memory;
        let mut engine = engine(&model, kv_memory, priority);
        let mut ids = Vec::new();
        let mut ended = std::collections::HashSet::new();
        let mut arrivals = built.into_iter();
        for step in 0..10_000 {
            if step % 3 == 0 {
                if let Some(r) = arrivals.next() {
                    ids.push(engine.submit(r).unwrap());
                }
            }
            if step == 4 {
                for (&id, &(.., cancel)) in ids.iter().zip(&requests) {
                    if cancel {
                        engine.cancel(id);
                    }
                }
            }
            for event in engine.step().unwrap() {
                match event {
                    Event::Finished { id, stats, .. } => {
                        prop_assert!(stats.peak_kv_bytes <= stats.reserved_kv_bytes,
                            "sequence {}: peak {} over its reservation {}",
                            id, stats.peak_kv_bytes, stats.reserved_kv_bytes);
                        prop_assert!(ended.insert(id));
                    }
                    Event::Failed { error, .. } => prop_assert!(false, "{}", error),
                    Event::Token { .. } => {}
                }
            }
            prop_assert!(engine.kv_bytes() <= kv_memory);
            prop_assert!(engine.reserved_kv_bytes() <= kv_memory);
            if !engine.has_work() && arrivals.len() == 0 {
                break;
            }
        }
        prop_assert_eq!(ended.len(), requests.len(), "every sequence ends");
        prop_assert_eq!(engine.kv_bytes(), 0);
        prop_assert_eq!(engine.reserved_kv_bytes(), 0);
    }
}

/// The generation API's loop over one session chooses what a plain greedy loop does, and stops at a
/// stop token or when asked.
#[test]
fn continuing_a_session_is_plain_greedy_decoding() {
    use spectra::inference::continue_session;
    let tiny = Tiny::new();
    let model = Arc::new(tiny.gguf());
    let want: Vec<u32> = alone(&model, &None, &prompt(12, 1), 9)
        .iter()
        .map(|t| t.0)
        .collect();
    let run = |params: &GenerationParams, stop_after: usize| {
        let mut session = Session::new(model.clone(), None, Budget::Tokens(usize::MAX), 0).unwrap();
        let logits = session
            .prefill(&prompt(12, 1), CHUNK, Logits::Last)
            .unwrap();
        continue_session(&mut session, &logits, params, |said| {
            Ok(said.len() == stop_after)
        })
        .unwrap()
    };
    let params = GenerationParams {
        max_tokens: 9,
        ..GenerationParams::default()
    };
    assert_eq!(run(&params, usize::MAX), want);
    assert_eq!(run(&params, 4), want[..4]);
    let stop = GenerationParams {
        stop_tokens: vec![want[5]],
        ..params
    };
    let first = want.iter().position(|&t| t == want[5]).unwrap();
    assert_eq!(run(&stop, usize::MAX), want[..first]);
}

/// A session and the engine move to another thread whole (a server runs the engine on its own).
#[test]
fn sessions_and_the_engine_are_send() {
    fn send<T: Send>() {}
    send::<Session<Llama>>();
    send::<Engine<Llama>>();
}

/// `max_tokens: 0` reads the prompt and ends without a token (to time or fill a prefill).
#[test]
fn zero_max_tokens_reads_the_prompt_only() {
    let tiny = Tiny::new();
    let model = Arc::new(tiny.gguf());
    let mut engine = engine(&model, usize::MAX, StepPriority::DecodeFirst);
    engine
        .submit(Request {
            prompt: prompt(20, 0),
            params: GenerationParams {
                max_tokens: 0,
                ..GenerationParams::default()
            },
            policy: None,
            budget: Budget::Tokens(usize::MAX),
            seed: 0,
        })
        .unwrap();
    let events = run(&mut engine);
    assert_eq!(events.len(), 1, "{events:?}");
    let Event::Finished { reason, stats, .. } = &events[0] else {
        panic!("{events:?}")
    };
    assert_eq!((*reason, stats.generated_tokens), (FinishReason::Length, 0));
    assert!(stats.peak_kv_bytes > 0);
}
