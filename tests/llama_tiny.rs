//! A tiny random-weight Llama written by the test, in GGUF and in Hugging Face safetensors form: both
//! loaders agree, the KV cache reproduces uncompressed logits, and compaction frees what it promises.

use std::path::Path;
use std::sync::Arc;

use candle_core::{DType, Device};
use spectra::core::config::parse_ron;
use spectra::core::{Budget, KvEvictionPolicy, SideInfoNeeds};
use spectra::inference::{Logits, PrefillCompression, RereadPrompt, Session};
use spectra::models::llama::{Llama, WeightFormat};

mod llama_support;

use llama_support::{all_logits, Tiny, HEAD_DIM, KV_HEADS, LAYERS, VOCAB};

fn tokens(n: usize) -> Vec<u32> {
    (0..n).map(|i| ((i * 17 + 3) % VOCAB) as u32).collect()
}

fn max_diff(a: &[f32], b: &[f32]) -> f32 {
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f32::max)
}

fn policy(text: &str) -> Arc<dyn KvEvictionPolicy> {
    parse_ron(text, Path::new("test.ron")).unwrap()
}

/// Decodes `tokens` one by one after a prefill of `prompt` tokens; returns each position's logits.
fn decode(session: &mut Session<Llama>, tokens: &[u32], prompt: usize) -> Vec<Vec<f32>> {
    let mut out: Vec<Vec<f32>> = session
        .prefill(&tokens[..prompt], 3, Logits::All)
        .unwrap()
        .to_vec2()
        .unwrap();
    for &t in &tokens[prompt..] {
        out.push(
            session
                .step(t)
                .unwrap()
                .squeeze(0)
                .unwrap()
                .to_vec1()
                .unwrap(),
        );
    }
    out
}

/// Steps `forked` through `seq[from..]`, each step's logits within TOL of `own`'s at that position.
fn continues_alike(
    forked: &mut Session<Llama>,
    seq: &[u32],
    from: usize,
    own: &[Vec<f32>],
    what: &str,
) {
    for (i, &t) in seq[from..].iter().enumerate() {
        let got: Vec<f32> = forked
            .step(t)
            .unwrap()
            .squeeze(0)
            .unwrap()
            .to_vec1()
            .unwrap();
        let diff = max_diff(&got, &own[from + i]);
        assert!(diff < TOL, "{what} step {i}: {diff}");
    }
}

/// A stand-in for the request to repeat the prompt, in the tiny model's vocabulary.
fn repeat_request() -> RereadPrompt {
    RereadPrompt {
        first: vec![5, 6, 7],
        next: vec![8],
        suffix: vec![9, 10],
    }
}

/// Both sessions keep the same positions in every layer and head.
fn assert_same_kept(a: &Session<Llama>, b: &Session<Llama>) {
    for l in 0..LAYERS {
        for h in 0..KV_HEADS {
            assert_eq!(
                a.cache().positions(l, h).unwrap(),
                b.cache().positions(l, h).unwrap(),
                "layer {l} head {h}"
            );
        }
    }
}

// Tolerances: the same f32 arithmetic in a different association order (chunks, per-token steps,
// permuted rows) differs by a few ulps of logits of size ~1–10.
const TOL: f32 = 1e-5;

#[test]
fn gguf_with_interleaved_rope_equals_hf_with_half_rope() {
    let tiny = Tiny::new();
    let seq = tokens(12);
    let (a, b) = (all_logits(&tiny.gguf(), &seq), all_logits(&tiny.hf(), &seq));
    for (ra, rb) in a.iter().zip(&b) {
        assert!(max_diff(ra, rb) < TOL, "{}", max_diff(ra, rb));
    }
}

#[test]
fn full_policy_reproduces_uncompressed_logits() {
    let tiny = Tiny::new();
    let model = Arc::new(tiny.gguf());
    let seq = tokens(20);
    let reference = all_logits(&model, &seq);
    let full = policy(r#"(type: "Full", cfg: ())"#);
    let mut session =
        Session::new(model.clone(), Some(full.clone()), Budget::Tokens(4), 0).unwrap();
    let decoded = decode(&mut session, &seq, 7);
    for (step, (got, want)) in decoded.iter().zip(&reference).enumerate() {
        assert!(
            max_diff(got, want) < TOL,
            "position {step}: {}",
            max_diff(got, want)
        );
    }
    assert_eq!(session.cache().entries(), LAYERS * KV_HEADS * 20);
}

#[test]
fn a_budget_at_least_the_sequence_is_the_identity() {
    let tiny = Tiny::new();
    let model = Arc::new(tiny.gguf());
    let seq = tokens(16);
    let reference = all_logits(&model, &seq);
    let streaming = policy(r#"(type: "StreamingLlm", cfg: (sinks: 2))"#);
    let mut session = Session::new(
        model.clone(),
        Some(streaming.clone()),
        Budget::Tokens(16),
        0,
    )
    .unwrap();
    let decoded = decode(&mut session, &seq, 5);
    for (got, want) in decoded.iter().zip(&reference) {
        assert!(max_diff(got, want) < TOL);
    }
    assert_eq!(session.stats().compressions, 0);
}

#[test]
fn compaction_frees_memory_and_keeps_positions() {
    let tiny = Tiny::new();
    let model = Arc::new(tiny.gguf());
    let streaming = policy(r#"(type: "StreamingLlm", cfg: (sinks: 4))"#);
    let mut session =
        Session::new(model.clone(), Some(streaming.clone()), Budget::Tokens(8), 0).unwrap();
    session.prefill(&tokens(20), 6, Logits::Last).unwrap();
    let row_bytes = 2 * HEAD_DIM * DType::F32.size_in_bytes();
    // The 8 kept entries per head and the cache's headroom of 16 rows, nothing of the evicted 12.
    assert_eq!(
        session.cache().bytes(),
        LAYERS * KV_HEADS * (8 + 16) * row_bytes
    );
    assert!(session.stats().peak_kv_bytes >= LAYERS * KV_HEADS * 20 * row_bytes);
    for l in 0..LAYERS {
        for h in 0..KV_HEADS {
            assert_eq!(
                session.cache().positions(l, h).unwrap(),
                &[0, 1, 2, 3, 16, 17, 18, 19]
            );
        }
    }
    // A decoded token lands at its absolute position, not at the cache's length.
    session.step(5).unwrap();
    assert_eq!(
        *session.cache().positions(0, 0).unwrap().last().unwrap(),
        20
    );
}

#[test]
fn an_f16_cache_decodes_like_the_f32_cache_at_half_the_bytes() {
    let tiny = Tiny::new();
    let seq = tokens(24);
    let reference = all_logits(&tiny.gguf(), &seq);
    let model = Arc::new(tiny.gguf().with_kv_dtype(DType::F16).unwrap());
    let h2o = policy(r#"(type: "H2o", cfg: (recent_window: 2))"#);
    let full = policy(r#"(type: "Full", cfg: ())"#);
    let mut session =
        Session::new(model.clone(), Some(full.clone()), Budget::Tokens(4), 0).unwrap();
    let decoded = decode(&mut session, &seq, 9);
    for (got, want) in decoded.iter().zip(&reference) {
        // Keys and values rounded to f16 (2⁻¹¹ relative) move logits of size ~1–10 by ~10⁻³.
        assert!(max_diff(got, want) < 2e-2, "{}", max_diff(got, want));
    }
    let f32_model = Arc::new(tiny.gguf());
    let mut f32_session =
        Session::new(f32_model.clone(), Some(full.clone()), Budget::Tokens(4), 0).unwrap();
    decode(&mut f32_session, &seq, 9);
    assert_eq!(2 * session.cache().bytes(), f32_session.cache().bytes());
    // H2O's received attention comes out of the fused f16 pass too.
    let mut evicting =
        Session::new(model.clone(), Some(h2o.clone()), Budget::Tokens(6), 0).unwrap();
    decode(&mut evicting, &seq, 9);
    assert!(evicting.cache().lens(0).unwrap().iter().all(|&n| n <= 6));
}

#[test]
fn compressing_after_every_prefill_chunk_bounds_the_peak_cache() {
    let tiny = Tiny::new();
    let model = Arc::new(tiny.gguf());
    let seq = tokens(60);
    let streaming = policy(r#"(type: "StreamingLlm", cfg: (sinks: 1))"#);
    let peak = |prefill: PrefillCompression, chunk: usize| {
        let mut session =
            Session::new(model.clone(), Some(streaming.clone()), Budget::Tokens(6), 0)
                .unwrap()
                .with_prefill_compression(prefill);
        session.prefill(&seq, chunk, Logits::Last).unwrap();
        for l in 0..LAYERS {
            assert!(session.cache().lens(l).unwrap().iter().all(|&n| n <= 6));
        }
        session.stats().peak_kv_bytes
    };
    // Rows of keys and values in every head.
    let rows = 2 * KV_HEADS * LAYERS * HEAD_DIM * 4;
    // A chunk larger than the 16 rows of headroom a compaction leaves: the peak is exactly the
    // budget plus one chunk (growing by an eighth would have added 16 rows to that).
    assert_eq!(peak(PrefillCompression::EveryChunk, 20), (6 + 20) * rows);
    // A smaller chunk fits into that headroom: the 6 kept entries and 16 free rows.
    assert_eq!(peak(PrefillCompression::EveryChunk, 4), (6 + 16) * rows);
    // Compressing once holds the whole prompt, reserved at once rather than grown chunk by chunk.
    assert_eq!(peak(PrefillCompression::AtEnd, 4), 60 * rows);
}

#[test]
fn a_session_that_never_evicts_reserves_the_prompt_and_the_decoded_tokens_at_once() {
    let tiny = Tiny::new();
    let model = Arc::new(tiny.gguf());
    let rows = 2 * KV_HEADS * LAYERS * HEAD_DIM * 4;
    let run = |decoding: usize| {
        let mut session = Session::new(model.clone(), None, Budget::Tokens(usize::MAX), 0)
            .unwrap()
            .with_decoding(decoding);
        session.prefill(&tokens(20), 6, Logits::Last).unwrap();
        for t in 0..5 {
            session.step(t).unwrap();
        }
        session.stats().peak_kv_bytes
    };
    // Told of the 5 decoded tokens, the cache is allocated once, 25 rows long.
    assert_eq!(run(5), 25 * rows);
    // Not told, the prompt is reserved exactly and the first decoded token grows it by the 16 rows
    // of headroom.
    assert_eq!(run(0), (21 + 16) * rows);
}

#[test]
fn a_forked_session_continues_like_a_session_of_its_own() {
    let tiny = Tiny::new();
    let model = Arc::new(tiny.gguf());
    let seq = tokens(18);
    let policies = [
        policy(r#"(type: "H2o", cfg: (recent_window: 2))"#),
        policy(r#"(type: "SnapKv", cfg: (window: 3, kernel: 1, pooling: Avg, gqa: Mean))"#),
        policy(r#"(type: "StreamingLlm", cfg: (sinks: 1))"#),
    ];
    let needs = policies
        .iter()
        .fold(SideInfoNeeds::default(), |n, p| n.union(p.needs()));
    let mut shared = Session::recording(model.clone(), needs).unwrap();
    shared.prefill(&seq[..10], 3, Logits::Last).unwrap();
    for p in &policies {
        let mut own = Session::new(model.clone(), Some(p.clone()), Budget::Tokens(6), 0)
            .unwrap()
            .with_prefill_compression(PrefillCompression::AtEnd);
        let own_logits = decode(&mut own, &seq, 10);
        let mut forked = shared.fork(Some(p.clone()), Budget::Tokens(6), 0).unwrap();
        continues_alike(&mut forked, &seq, 10, &own_logits, p.typetag_name());
        assert_same_kept(&forked, &own);
    }
    // The shared session is untouched by its forks.
    assert_eq!(shared.cache().entries(), LAYERS * KV_HEADS * 10);
    let bare = Session::recording(model.clone(), SideInfoNeeds::default()).unwrap();
    let err = bare
        .fork(Some(policies[0].clone()), Budget::Tokens(6), 0)
        .err()
        .expect("H2O needs attention the bare session did not record");
    assert!(err.to_string().contains("did not record"), "{err}");
}

/// KVzip's re-read: it leaves the cache as it found it, a fork keeps the sinks and fills the budget as
/// a session of its own does, and without the request to repeat the prompt the error says so.
#[test]
fn kv_zip_rereads_on_a_copy_and_compresses_like_a_session_of_its_own() {
    let tiny = Tiny::new();
    let model = Arc::new(tiny.gguf());
    let seq = tokens(12);
    let kv_zip = policy(r#"(type: "KvZip", cfg: (sinks: 1))"#);
    let reread = repeat_request();
    let mut plain = Session::recording(model.clone(), SideInfoNeeds::default()).unwrap();
    plain.prefill(&seq[..10], 3, Logits::Last).unwrap();
    let mut shared = Session::recording(model.clone(), kv_zip.needs())
        .unwrap()
        .with_reread(reread.clone());
    shared.prefill(&seq[..10], 3, Logits::Last).unwrap();
    let step = |s: &mut Session<Llama>| -> Vec<f32> {
        s.step(seq[10])
            .unwrap()
            .squeeze(0)
            .unwrap()
            .to_vec1()
            .unwrap()
    };
    let after_reread = step(&mut shared.fork_uncompressed().unwrap());
    assert!(max_diff(&after_reread, &step(&mut plain)) < TOL);
    let forked = shared
        .fork(Some(kv_zip.clone()), Budget::Tokens(5), 0)
        .unwrap();
    let mut own = Session::new(model.clone(), Some(kv_zip.clone()), Budget::Tokens(5), 0)
        .unwrap()
        .with_reread(reread);
    own.prefill(&seq[..10], 3, Logits::Last).unwrap();
    for l in 0..LAYERS {
        for h in 0..KV_HEADS {
            let kept = forked.cache().positions(l, h).unwrap();
            assert_eq!(kept.len(), 5);
            assert_eq!(kept[0], 0, "the sink is kept");
            assert_eq!(kept, own.cache().positions(l, h).unwrap());
        }
    }
    let mut missing =
        Session::new(model.clone(), Some(kv_zip.clone()), Budget::Tokens(5), 0).unwrap();
    let err = missing.prefill(&seq[..10], 3, Logits::Last).unwrap_err();
    assert!(err.to_string().contains("with_reread"), "{err}");
    assert!(shared
        .fork(Some(kv_zip.clone()), Budget::Tokens(5), 0)
        .is_ok());
    assert!(plain
        .fork(Some(kv_zip.clone()), Budget::Tokens(5), 0)
        .is_err());
}

/// A context longer than one re-read chunk (2048 tokens) is re-read in chunks, each scored.
#[test]
fn kv_zip_scores_a_long_context_chunk_by_chunk() {
    let tiny = Tiny::new();
    let model = Arc::new(tiny.gguf());
    let seq = tokens(2100);
    let kv_zip = policy(r#"(type: "KvZip", cfg: ())"#);
    let mut session = Session::new(model.clone(), Some(kv_zip.clone()), Budget::Tokens(1000), 0)
        .unwrap()
        .with_reread(RereadPrompt {
            first: vec![1, 2],
            next: vec![3],
            suffix: vec![4],
        });
    session.prefill(&seq, 256, Logits::Last).unwrap();
    for l in 0..LAYERS {
        for h in 0..KV_HEADS {
            let kept = session.cache().positions(l, h).unwrap();
            assert_eq!(kept.len(), 1000);
            // Entries of the second chunk compete like the first's: some are kept.
            assert!(kept.iter().any(|&p| p >= 2048), "layer {l} head {h}");
            assert!(
                kept.iter().any(|&p| (4..2048).contains(&p)),
                "layer {l} head {h}"
            );
        }
    }
}

#[test]
fn corrupt_or_truncated_files_are_errors() {
    let tiny = Tiny::new();
    let gguf = tiny.dir.path().join("tiny.gguf");
    let bytes = std::fs::read(&gguf).unwrap();
    for (name, data) in [
        ("truncated.gguf", &bytes[..bytes.len() / 2]),
        ("garbage.gguf", &b"GGUF\x03\0\0\0garbage"[..]),
    ] {
        let path = tiny.dir.path().join(name);
        std::fs::write(&path, data).unwrap();
        let err = Llama::from_gguf(&path, &Device::Cpu, WeightFormat::AsStored)
            .err()
            .expect("an error");
        assert!(err.to_string().contains(name), "{err}");
    }
    let st = tiny.dir.path().join("model.safetensors");
    let bytes = std::fs::read(&st).unwrap();
    std::fs::write(&st, &bytes[..bytes.len() - 100]).unwrap();
    let err = Llama::from_hf(tiny.dir.path(), &Device::Cpu)
        .err()
        .expect("an error");
    assert!(err.to_string().contains("model.safetensors"), "{err}");
    let missing = Llama::from_gguf(
        Path::new("no/such.gguf"),
        &Device::Cpu,
        WeightFormat::AsStored,
    )
    .err()
    .unwrap();
    assert!(
        missing.to_string().contains("scripts/get-model.sh"),
        "{missing}"
    );
}

/// KVzap scores each entry once, as it is written, from the layer's input: a fork of a recording
/// session holds what a session of its own holds, and while decoding (trigger EveryStep) the scores
/// follow their entries through every compaction. At layer 0 the input is the normalized embedding,
/// which no eviction changes, so the kept entries there are the window and the best by the surrogate's
/// prediction recomputed from a plain forward pass.
#[test]
fn kv_zap_scores_entries_as_written_and_keeps_the_best_predicted() {
    use spectra::inference::{CausalDecoder, Taps};
    use spectra::policies::kv_zap::Surrogate;

    let tiny = Tiny::new();
    let model = Arc::new(tiny.gguf());
    let seq = tokens(18);
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("surrogate.safetensors");
    let weight = |l: usize, i: usize| ((l * 131 + i * 37) % 19) as f32 / 9.0 - 1.0;
    Surrogate::new(
        KV_HEADS,
        llama_support::HIDDEN,
        (0..LAYERS)
            .map(|l| {
                (0..KV_HEADS * llama_support::HIDDEN)
                    .map(|i| weight(l, i))
                    .collect()
            })
            .collect(),
        vec![vec![0.5; KV_HEADS]; LAYERS],
    )
    .unwrap()
    .save(&path)
    .unwrap();
    let kv_zap = policy(&format!(
        r#"(type: "KvZap", cfg: (surrogate: "{}", recent_window: 2, trigger: EveryStep))"#,
        path.display()
    ));
    let budget = Budget::Tokens(6);
    let mut shared = Session::recording(model.clone(), kv_zap.needs()).unwrap();
    shared.prefill(&seq[..10], 3, Logits::Last).unwrap();
    // It holds the 10 tokens' f32 inputs of every layer for its forks, beside its cache.
    let inputs = LAYERS * 10 * llama_support::HIDDEN * 4;
    assert_eq!(shared.bytes(), shared.cache().bytes() + inputs);
    let mut own = Session::new(model.clone(), Some(kv_zap.clone()), budget.clone(), 0)
        .unwrap()
        .with_prefill_compression(PrefillCompression::AtEnd);
    let own_logits = decode(&mut own, &seq, 10);
    let mut forked = shared.fork(Some(kv_zap.clone()), budget, 0).unwrap();
    continues_alike(&mut forked, &seq, 10, &own_logits, "KvZap");
    let mut taps = Taps {
        record_layer_inputs: true,
        ..Taps::default()
    };
    let mut cache = model.new_cache(false).unwrap();
    model
        .forward_one(&seq, 0, &mut cache, &mut taps, Logits::None)
        .unwrap();
    let surrogate = Surrogate::load(&path).unwrap();
    // Per KV head, the 18 entries' predicted scores.
    let predicted = surrogate
        .predict(0, taps.layer_inputs[0].as_ref().unwrap())
        .unwrap()
        .t()
        .unwrap()
        .to_vec2::<f32>()
        .unwrap();
    for (h, scores) in predicted.iter().enumerate() {
        // The newest 2 are kept; of the 16 older entries, the 4 best predicted.
        let mut older: Vec<u64> = (0..16).collect();
        older.sort_by(|&a, &b| scores[b as usize].total_cmp(&scores[a as usize]));
        let mut want: Vec<u64> = older[..4].iter().copied().chain([16, 17]).collect();
        want.sort_unstable();
        for session in [&own, &forked] {
            assert_eq!(session.cache().positions(0, h).unwrap(), want, "head {h}");
        }
    }
    assert_same_kept(&forked, &own);
    let bare = Session::recording(model.clone(), SideInfoNeeds::default()).unwrap();
    let err = bare.fork(Some(kv_zap), Budget::Tokens(6), 0).err().unwrap();
    assert!(err.to_string().contains("did not record"), "{err}");
}

/// Sessions answering together, one forward pass a step for all (`continue_sessions`), choose the
/// tokens each would choose alone, stop on their own stop tokens and lengths, and leave their caches
/// as they would alone.
#[test]
fn sessions_answering_together_answer_as_each_alone() {
    use spectra::inference::{continue_session, continue_sessions, GenerationParams};

    let tiny = Tiny::new();
    let model = Arc::new(tiny.gguf());
    let seq = tokens(14);
    let policies = [
        None,
        Some(policy(r#"(type: "StreamingLlm", cfg: (sinks: 1))"#)),
        Some(policy(r#"(type: "H2o", cfg: (recent_window: 2))"#)),
    ];
    let needs = policies
        .iter()
        .flatten()
        .fold(SideInfoNeeds::default(), |n, p| n.union(p.needs()));
    let mut shared = Session::recording(model.clone(), needs).unwrap();
    shared.prefill(&seq[..10], 4, Logits::Last).unwrap();
    let fork = |p: &Option<Arc<dyn KvEvictionPolicy>>| {
        shared.fork(p.clone(), Budget::Tokens(7), 0).unwrap()
    };
    let question = &seq[10..];
    let params = GenerationParams {
        max_tokens: 9,
        stop_tokens: vec![7],
        ..GenerationParams::default()
    };
    // Session i stops after i + 3 tokens, so the lockstep loses members on the way.
    let enough = |i: usize, said: &[u32]| Ok(said.len() >= i + 3);
    let next = |s: &mut Session<Llama>| -> Vec<f32> {
        s.step(3).unwrap().squeeze(0).unwrap().to_vec1().unwrap()
    };
    // Per session: its answer, the positions layer 1 keeps per head, the next step's logits.
    type Alone = (Vec<u32>, Vec<Vec<u64>>, Vec<f32>);
    let alone: Vec<Alone> = policies
        .iter()
        .enumerate()
        .map(|(i, p)| {
            let mut s = fork(p);
            let logits = s.extend(question, Logits::Last).unwrap();
            let said = continue_session(&mut s, &logits, &params, |t| enough(i, t)).unwrap();
            let kept = (0..KV_HEADS)
                .map(|h| s.cache().positions(1, h).unwrap().to_vec())
                .collect();
            (said, kept, next(&mut s))
        })
        .collect();
    let mut sessions: Vec<Session<Llama>> = policies.iter().map(fork).collect();
    let mut together: Vec<&mut Session<Llama>> = sessions.iter_mut().collect();
    let logits = Session::extend_together(&mut together, &[question; 3], Logits::Last).unwrap();
    let said = continue_sessions(&mut together, &logits, &params, enough).unwrap();
    for ((said, session), (want, positions, logits)) in said.iter().zip(&mut sessions).zip(&alone) {
        assert_eq!(said, want);
        for (h, kept) in positions.iter().enumerate() {
            assert_eq!(session.cache().positions(1, h).unwrap(), kept.as_slice());
        }
        assert!(max_diff(&next(session), logits) < TOL);
    }
    let lengths: Vec<usize> = said.iter().map(Vec::len).collect();
    assert_eq!(lengths, [3, 4, 5]);
}

/// A recording session may put off KVzip's re-read until a fork needs it: forking before
/// `reread` is refused, and afterwards the fork holds what a re-read at the prompt's end gives.
#[test]
fn a_deferred_reread_gives_the_same_forks() {
    let tiny = Tiny::new();
    let model = Arc::new(tiny.gguf());
    let seq = tokens(12);
    let kv_zip = policy(r#"(type: "KvZip", cfg: (sinks: 1))"#);
    let reread = repeat_request();
    let recording = || {
        Session::recording(model.clone(), kv_zip.needs())
            .unwrap()
            .with_reread(reread.clone())
    };
    let mut at_once = recording();
    at_once.prefill(&seq[..10], 3, Logits::Last).unwrap();
    let mut deferred = recording().with_deferred_reread();
    deferred.prefill(&seq[..10], 3, Logits::Last).unwrap();
    let err = deferred
        .fork(Some(kv_zip.clone()), Budget::Tokens(5), 0)
        .err()
        .unwrap();
    assert!(err.to_string().contains("Session::reread"), "{err}");
    deferred.reread().unwrap();
    let want = at_once
        .fork(Some(kv_zip.clone()), Budget::Tokens(5), 0)
        .unwrap();
    let got = deferred
        .fork(Some(kv_zip.clone()), Budget::Tokens(5), 0)
        .unwrap();
    assert_same_kept(&got, &want);
}
