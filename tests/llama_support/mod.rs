//! A tiny random-weight Llama written by the tests, as GGUF (Q/K rows permuted like llama.cpp's
//! converter) and as a Hugging Face folder.

#![allow(dead_code)] // each test file uses a different subset

use std::collections::HashMap;
use std::path::Path;

use candle_core::quantized::gguf_file::{self, Value};
use candle_core::quantized::{GgmlDType, QTensor};
use candle_core::{Device, Tensor};
use rand::{Rng, SeedableRng};
use spectra::inference::{CausalDecoder, Logits, Taps};
use spectra::models::llama::{Llama, WeightFormat};

/// The vocabulary of [`Tiny::new`]: tokens `t0`…`t39`, enough for token-level tests.
pub const VOCAB: usize = 40;
pub const HIDDEN: usize = 32;
pub const LAYERS: usize = 2;
pub const HEADS: usize = 4;
pub const KV_HEADS: usize = 2;
pub const HEAD_DIM: usize = 8;
pub const FFN: usize = 48;

/// Hugging Face names and tensors of a random model.
fn random_weights(vocab: usize) -> Vec<(String, Tensor)> {
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(7);
    let mut t = |rows: usize, cols: usize, scale: f32| {
        let data: Vec<f32> = (0..rows * cols)
            .map(|_| rng.random_range(-1.0..1.0) * scale)
            .collect();
        Tensor::from_vec(data, (rows, cols), &Device::Cpu).unwrap()
    };
    let mut w = vec![(
        "model.embed_tokens.weight".to_string(),
        t(vocab, HIDDEN, 1.0),
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

fn write_hf(dir: &Path, weights: &[(String, Tensor)], vocab: usize) {
    let config = serde_json::json!({
        "vocab_size": vocab, "hidden_size": HIDDEN, "num_hidden_layers": LAYERS,
        "num_attention_heads": HEADS, "num_key_value_heads": KV_HEADS, "intermediate_size": FFN,
        "rms_norm_eps": 1e-5, "rope_theta": 10000.0, "max_position_embeddings": 1024,
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

fn write_gguf(path: &Path, weights: &[(String, Tensor)], vocab: &[String]) {
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
    let tokens: Vec<Value> = vocab.iter().cloned().map(Value::String).collect();
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
        ("llama.context_length", u32v(1024)),
        ("tokenizer.ggml.model", Value::String("gpt2".into())),
        ("tokenizer.ggml.tokens", Value::Array(tokens)),
        ("tokenizer.ggml.merges", Value::Array(vec![])),
    ];
    let metadata: Vec<(&str, &Value)> = metadata.iter().map(|(k, v)| (*k, v)).collect();
    let tensors: Vec<(&str, &QTensor)> = tensors.iter().map(|(k, v)| (k.as_str(), v)).collect();
    let mut file = std::fs::File::create(path).unwrap();
    gguf_file::write(&mut file, &metadata, &tensors).unwrap();
}

/// Every position's logits from one uncached pass over the whole sequence.
pub fn all_logits(model: &Llama, tokens: &[u32]) -> Vec<Vec<f32>> {
    let mut cache = model.new_cache(false).unwrap();
    model
        .forward_one(tokens, 0, &mut cache, &mut Taps::default(), Logits::All)
        .unwrap()
        .to_vec2()
        .unwrap()
}

/// The 256 byte-level BPE symbols of GPT-2's tokenizer (printable bytes stand for themselves, the rest
/// are shifted past U+0100), so that without merges every byte of any text is one token.
pub fn byte_level_vocab() -> Vec<String> {
    let printable =
        |b: u32| (33..=126).contains(&b) || (161..=172).contains(&b) || (174..=255).contains(&b);
    let mut shifted = 0;
    (0u32..256)
        .map(|b| {
            let c = if printable(b) {
                b
            } else {
                shifted += 1;
                255 + shifted
            };
            char::from_u32(c).unwrap().to_string()
        })
        .collect()
}

/// A random model written to a temporary folder as `tiny.gguf` and as a Hugging Face folder.
pub struct Tiny {
    pub dir: tempfile::TempDir,
}

impl Tiny {
    /// Tokens `t0`…`t39` (no text can be encoded).
    pub fn new() -> Self {
        Tiny::with_vocab(&(0..VOCAB).map(|i| format!("t{i}")).collect::<Vec<_>>())
    }

    /// A byte-level vocabulary: any text encodes, one token per byte.
    pub fn byte_level() -> Self {
        Tiny::with_vocab(&byte_level_vocab())
    }

    fn with_vocab(vocab: &[String]) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let weights = random_weights(vocab.len());
        write_hf(dir.path(), &weights, vocab.len());
        write_gguf(&dir.path().join("tiny.gguf"), &weights, vocab);
        Tiny { dir }
    }

    pub fn gguf_path(&self) -> std::path::PathBuf {
        self.dir.path().join("tiny.gguf")
    }

    pub fn gguf(&self) -> Llama {
        Llama::from_gguf(&self.gguf_path(), &Device::Cpu, WeightFormat::AsStored)
            .unwrap()
            .0
    }

    pub fn hf(&self) -> Llama {
        Llama::from_hf(self.dir.path(), &Device::Cpu).unwrap()
    }
}
