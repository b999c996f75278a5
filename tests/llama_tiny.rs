//! A tiny random-weight Llama written by the test, in GGUF and in Hugging Face safetensors form: both
//! loaders agree, the KV cache reproduces uncompressed logits, and compaction frees what it promises.

use std::collections::HashMap;
use std::path::Path;

use candle_core::quantized::gguf_file::{self, Value};
use candle_core::quantized::{GgmlDType, QTensor};
use candle_core::{DType, Device, Tensor};
use rand::{Rng, SeedableRng};
use spectra::core::config::parse_ron;
use spectra::core::{Budget, KvEvictionPolicy};
use spectra::models::llama::{Llama, Logits, Session, Taps, WeightFormat};

const VOCAB: usize = 40;
const HIDDEN: usize = 32;
const LAYERS: usize = 2;
const HEADS: usize = 4;
const KV_HEADS: usize = 2;
const HEAD_DIM: usize = 8;
const FFN: usize = 48;

/// Hugging Face names and tensors of a random model.
fn random_weights() -> Vec<(String, Tensor)> {
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(7);
    let mut t = |rows: usize, cols: usize, scale: f32| {
        let data: Vec<f32> = (0..rows * cols)
            .map(|_| rng.random_range(-1.0..1.0) * scale)
            .collect();
        Tensor::from_vec(data, (rows, cols), &Device::Cpu).unwrap()
    };
    let mut w = vec![(
        "model.embed_tokens.weight".to_string(),
        t(VOCAB, HIDDEN, 1.0),
    )];
    let proj = 1.0 / (HIDDEN as f32).sqrt();
    for l in 0..LAYERS {
        let p = format!("model.layers.{l}");
        w.push((
            format!("{p}.self_attn.q_proj.weight"),
            t(HEADS * HEAD_DIM, HIDDEN, proj),
        ));
        w.push((
            format!("{p}.self_attn.k_proj.weight"),
            t(KV_HEADS * HEAD_DIM, HIDDEN, proj),
        ));
        w.push((
            format!("{p}.self_attn.v_proj.weight"),
            t(KV_HEADS * HEAD_DIM, HIDDEN, proj),
        ));
        w.push((
            format!("{p}.self_attn.o_proj.weight"),
            t(HIDDEN, HEADS * HEAD_DIM, proj),
        ));
        w.push((format!("{p}.mlp.gate_proj.weight"), t(FFN, HIDDEN, proj)));
        w.push((format!("{p}.mlp.up_proj.weight"), t(FFN, HIDDEN, proj)));
        w.push((
            format!("{p}.mlp.down_proj.weight"),
            t(HIDDEN, FFN, 1.0 / (FFN as f32).sqrt()),
        ));
        w.push((
            format!("{p}.input_layernorm.weight"),
            (t(1, HIDDEN, 0.2) + 1.0).unwrap().squeeze(0).unwrap(),
        ));
        w.push((
            format!("{p}.post_attention_layernorm.weight"),
            (t(1, HIDDEN, 0.2) + 1.0).unwrap().squeeze(0).unwrap(),
        ));
    }
    w.push((
        "model.norm.weight".into(),
        (t(1, HIDDEN, 0.2) + 1.0).unwrap().squeeze(0).unwrap(),
    ));
    w
}

fn write_hf(dir: &Path, weights: &[(String, Tensor)]) {
    let config = serde_json::json!({
        "vocab_size": VOCAB, "hidden_size": HIDDEN, "num_hidden_layers": LAYERS,
        "num_attention_heads": HEADS, "num_key_value_heads": KV_HEADS, "intermediate_size": FFN,
        "rms_norm_eps": 1e-5, "rope_theta": 10000.0, "max_position_embeddings": 256,
        "tie_word_embeddings": true
    });
    std::fs::write(dir.join("config.json"), config.to_string()).unwrap();
    let map: HashMap<String, Tensor> = weights.iter().cloned().collect();
    candle_core::safetensors::save(&map, dir.join("model.safetensors")).unwrap();
}

/// llama.cpp's converter reorders each head's Q/K rows so that RoPE pairs become adjacent.
fn permute_for_gguf(w: &Tensor, heads: usize) -> Tensor {
    let (rows, cols) = w.dims2().unwrap();
    w.reshape((heads, 2, rows / heads / 2, cols))
        .unwrap()
        .transpose(1, 2)
        .unwrap()
        .reshape((rows, cols))
        .unwrap()
}

fn write_gguf(path: &Path, weights: &[(String, Tensor)]) {
    let rename = |hf: &str| -> String {
        let hf = hf
            .replace("model.layers.", "blk.")
            .replace("model.embed_tokens", "token_embd")
            .replace("model.norm", "output_norm");
        hf.replace("self_attn.q_proj", "attn_q")
            .replace("self_attn.k_proj", "attn_k")
            .replace("self_attn.v_proj", "attn_v")
            .replace("self_attn.o_proj", "attn_output")
            .replace("mlp.gate_proj", "ffn_gate")
            .replace("mlp.up_proj", "ffn_up")
            .replace("mlp.down_proj", "ffn_down")
            .replace("post_attention_layernorm", "ffn_norm")
            .replace("input_layernorm", "attn_norm")
    };
    let tensors: Vec<(String, QTensor)> = weights
        .iter()
        .map(|(name, t)| {
            let t = if name.ends_with("q_proj.weight") {
                permute_for_gguf(t, HEADS)
            } else if name.ends_with("k_proj.weight") {
                permute_for_gguf(t, KV_HEADS)
            } else {
                t.clone()
            };
            (rename(name), QTensor::quantize(&t, GgmlDType::F32).unwrap())
        })
        .collect();
    let tokens: Vec<Value> = (0..VOCAB).map(|i| Value::String(format!("t{i}"))).collect();
    let u32v = |v: usize| Value::U32(v as u32);
    let metadata: Vec<(&str, Value)> = vec![
        ("general.architecture", Value::String("llama".into())),
        ("llama.embedding_length", u32v(HIDDEN)),
        ("llama.block_count", u32v(LAYERS)),
        ("llama.attention.head_count", u32v(HEADS)),
        ("llama.attention.head_count_kv", u32v(KV_HEADS)),
        ("llama.feed_forward_length", u32v(FFN)),
        ("llama.attention.layer_norm_rms_epsilon", Value::F32(1e-5)),
        ("llama.rope.freq_base", Value::F32(10000.0)),
        ("llama.context_length", u32v(256)),
        ("tokenizer.ggml.model", Value::String("gpt2".into())),
        ("tokenizer.ggml.tokens", Value::Array(tokens)),
        ("tokenizer.ggml.merges", Value::Array(vec![])),
    ];
    let metadata: Vec<(&str, &Value)> = metadata.iter().map(|(k, v)| (*k, v)).collect();
    let tensors: Vec<(&str, &QTensor)> = tensors.iter().map(|(k, v)| (k.as_str(), v)).collect();
    let mut file = std::fs::File::create(path).unwrap();
    gguf_file::write(&mut file, &metadata, &tensors).unwrap();
}

struct Tiny {
    dir: tempfile::TempDir,
}

impl Tiny {
    fn new() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let weights = random_weights();
        write_hf(dir.path(), &weights);
        write_gguf(&dir.path().join("tiny.gguf"), &weights);
        Tiny { dir }
    }

    fn gguf(&self) -> Llama {
        Llama::from_gguf(
            &self.dir.path().join("tiny.gguf"),
            &Device::Cpu,
            WeightFormat::Quantized,
        )
        .unwrap()
        .0
    }

    fn hf(&self) -> Llama {
        Llama::from_hf(self.dir.path(), &Device::Cpu).unwrap()
    }
}

fn tokens(n: usize) -> Vec<u32> {
    (0..n).map(|i| ((i * 17 + 3) % VOCAB) as u32).collect()
}

/// Every position's logits from one uncached pass over the whole sequence.
fn reference_logits(model: &Llama, tokens: &[u32]) -> Vec<Vec<f32>> {
    let positions: Vec<u64> = (0..tokens.len() as u64).collect();
    let mut cache = model.new_cache(false).unwrap();
    model
        .forward(
            tokens,
            &positions,
            &mut cache,
            &mut Taps::default(),
            Logits::All,
        )
        .unwrap()
        .to_vec2()
        .unwrap()
}

fn max_diff(a: &[f32], b: &[f32]) -> f32 {
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f32::max)
}

fn policy(text: &str) -> Box<dyn KvEvictionPolicy> {
    parse_ron(text, Path::new("test.ron")).unwrap()
}

/// Decodes `tokens` one by one after a prefill of `prompt` tokens; returns each position's logits.
fn decode(session: &mut Session<'_>, tokens: &[u32], prompt: usize) -> Vec<Vec<f32>> {
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

// Tolerances: the same f32 arithmetic in a different association order (chunks, per-token steps,
// permuted rows) differs by a few ulps of logits of size ~1–10.
const TOL: f32 = 1e-5;

#[test]
fn gguf_with_interleaved_rope_equals_hf_with_half_rope() {
    let tiny = Tiny::new();
    let seq = tokens(12);
    let (a, b) = (
        reference_logits(&tiny.gguf(), &seq),
        reference_logits(&tiny.hf(), &seq),
    );
    for (ra, rb) in a.iter().zip(&b) {
        assert!(max_diff(ra, rb) < TOL, "{}", max_diff(ra, rb));
    }
}

#[test]
fn full_policy_reproduces_uncompressed_logits() {
    let tiny = Tiny::new();
    let model = tiny.gguf();
    let seq = tokens(20);
    let reference = reference_logits(&model, &seq);
    let full = policy(r#"(type: "Full", cfg: ())"#);
    let mut session = Session::new(&model, Some(full.as_ref()), Budget::Tokens(4), 0).unwrap();
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
    let model = tiny.gguf();
    let seq = tokens(16);
    let reference = reference_logits(&model, &seq);
    let streaming = policy(r#"(type: "StreamingLlm", cfg: (sinks: 2))"#);
    let mut session =
        Session::new(&model, Some(streaming.as_ref()), Budget::Tokens(16), 0).unwrap();
    let decoded = decode(&mut session, &seq, 5);
    for (got, want) in decoded.iter().zip(&reference) {
        assert!(max_diff(got, want) < TOL);
    }
    assert_eq!(session.stats.compressions, 0);
}

#[test]
fn compaction_frees_memory_and_keeps_positions() {
    let tiny = Tiny::new();
    let model = tiny.gguf();
    let streaming = policy(r#"(type: "StreamingLlm", cfg: (sinks: 4))"#);
    let mut session = Session::new(&model, Some(streaming.as_ref()), Budget::Tokens(8), 0).unwrap();
    session.prefill(&tokens(20), 6, Logits::Last).unwrap();
    let row_bytes = 2 * HEAD_DIM * DType::F32.size_in_bytes();
    assert_eq!(session.cache().bytes(), LAYERS * KV_HEADS * 8 * row_bytes);
    assert!(session.stats.peak_kv_bytes >= LAYERS * KV_HEADS * 20 * row_bytes);
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
        let err = Llama::from_gguf(&path, &Device::Cpu, WeightFormat::Quantized)
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
        WeightFormat::Quantized,
    )
    .err()
    .unwrap();
    assert!(
        missing.to_string().contains("scripts/get-model.sh"),
        "{missing}"
    );
}
