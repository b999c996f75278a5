//! Fuzzing every reader of untrusted input: the RON config loader (training, sweep and KV configs),
//! the GGUF model reader, the checkpoint reader, the KV query-statistics reader and `spectra serve`'s
//! requests. Each gets valid inputs mutated at random (bits flipped, bytes and machine words
//! overwritten with boundary values, ranges cut, repeated or spliced between inputs, text tokens
//! swapped) and must answer every one with a value or an error: a panic fails the test, an abort
//! fails the process, and the server must answer each request below 500 and keep answering. The
//! generation API gets hostile requests (arbitrary prompt bytes and token ids, settings out of
//! range, stop strings) and must refuse each or stream exactly its tokens' text.
//!
//! `cargo test` runs a bounded count; `SPECTRA_FUZZ_CASES=N` sets the count per file reader and
//! `SPECTRA_FUZZ_REQUESTS=N` the generation API's and the server's (scripts/fuzz.sh runs a million
//! files and 20,000 requests to each).

mod llama_support;
mod serve_support;

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::Path;
use std::sync::Arc;
use std::time::Instant;

use candle_core::{Device, Tensor};
use llama_support::Tiny;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use spectra::core::{Budget, KvEvictionPolicy};
use spectra::inference::{
    CausalDecoder, Engine, EngineConfig, Event, FinishReason, GenerationParams, Request,
    RereadPrompt, SamplingParams, SchedulerConfig, StepPriority,
};
use spectra::kv_eval::KvEvalConfig;
use spectra::models::llama::{Llama, TextTokenizer, WeightFormat};
use spectra::train::checkpoint::{self, Checkpoint};
use spectra::train::sweep::SweepConfig;
use spectra::train::TrainConfig;
use spectra_core::config;
use spectra_core::rope::{RopePairing, RopeScaling, RopeSpec};
use spectra_policies::tri_attention::query_stats::{QueryBandStats, QueryStatsMeta};

/// Inputs per reader in `cargo test`: enough to cover every mutation kind many times in seconds.
const DEFAULT_CASES: usize = 300;

fn cases() -> usize {
    count_from("SPECTRA_FUZZ_CASES")
}

fn requests() -> usize {
    count_from("SPECTRA_FUZZ_REQUESTS")
}

fn count_from(variable: &str) -> usize {
    std::env::var(variable)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(DEFAULT_CASES)
}

/// Machine words a corrupt length or count field tends to hold.
const WORDS: [u64; 8] = [
    0,
    1,
    0x7f,
    0xffff_ffff,
    1 << 32,
    1 << 62,
    i64::MAX as u64,
    u64::MAX,
];

/// Tokens a mistyped config tends to hold.
const TOKENS: [&str; 14] = [
    "0",
    "-1",
    "1e308",
    "NaN",
    "inf",
    "18446744073709551616",
    "2.5",
    "\"\"",
    "()",
    "[]",
    "Some(",
    ")",
    "//",
    "/*",
];

/// One mutation of `input`; `others` are the other seeds, for splicing.
fn mutate(input: &[u8], others: &[Vec<u8>], rng: &mut ChaCha8Rng, text: bool) -> Vec<u8> {
    let mut b = input.to_vec();
    for _ in 0..rng.random_range(1..=4) {
        let len = b.len().max(1);
        let at = rng.random_range(0..len);
        match rng.random_range(0..if text { 9 } else { 8 }) {
            0 => {
                if let Some(x) = b.get_mut(at) {
                    *x ^= 1 << rng.random_range(0..8);
                }
            }
            1 => {
                if let Some(x) = b.get_mut(at) {
                    *x = rng.random();
                }
            }
            2 => {
                // A boundary word over a 4- or 8-byte field, aligned as headers align them.
                let word = WORDS[rng.random_range(0..WORDS.len())].to_le_bytes();
                let width = if rng.random() { 8 } else { 4 };
                let at = at / width * width;
                for (i, w) in word.iter().take(width).enumerate() {
                    if let Some(x) = b.get_mut(at + i) {
                        *x = *w;
                    }
                }
            }
            3 => b.truncate(at),
            4 => {
                let end = (at + rng.random_range(1..64)).min(b.len());
                b.drain(at.min(end)..end);
            }
            5 => {
                let end = (at + rng.random_range(1..64)).min(b.len());
                let piece = b[at.min(end)..end].to_vec();
                b.splice(at.min(b.len())..at.min(b.len()), piece);
            }
            6 => {
                let other = &others[rng.random_range(0..others.len())];
                if !other.is_empty() {
                    let from = rng.random_range(0..other.len());
                    let end = (from + rng.random_range(1..256)).min(other.len());
                    let cut = at.min(b.len());
                    b.splice(cut..cut, other[from..end].iter().copied());
                }
            }
            7 => {
                let n = rng.random_range(1..16);
                let cut = at.min(b.len());
                b.splice(cut..cut, (0..n).map(|_| rng.random::<u8>()));
            }
            _ => {
                // Text: a token in place of the one at `at`.
                let start = at.min(b.len());
                let end = b[start..]
                    .iter()
                    .position(|c| !c.is_ascii_alphanumeric() && *c != b'.' && *c != b'_')
                    .map_or(b.len(), |p| start + p.max(1).min(b.len() - start));
                let token = TOKENS[rng.random_range(0..TOKENS.len())].as_bytes();
                b.splice(start..end, token.iter().copied());
            }
        }
    }
    b
}

/// Runs `read` on `cases` mutations of the seeds; every panic is reported with its case number.
fn fuzz(name: &str, seeds: &[Vec<u8>], text: bool, mut read: impl FnMut(&[u8]) -> bool) {
    assert!(!seeds.is_empty());
    let mut rng = ChaCha8Rng::seed_from_u64(name.bytes().map(u64::from).sum());
    let n = cases();
    let (mut accepted, mut panics) = (0, Vec::new());
    let started = Instant::now();
    for case in 0..n {
        let seed = &seeds[case % seeds.len()];
        let input = mutate(seed, seeds, &mut rng, text);
        match catch_unwind(AssertUnwindSafe(|| read(&input))) {
            Ok(true) => accepted += 1,
            Ok(false) => {}
            Err(_) => {
                // Kept to reproduce: the reader fed this file's bytes panics again.
                let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join("fuzz-failures");
                std::fs::create_dir_all(&dir).unwrap();
                let file = dir.join(format!("{}-{case}", name.replace(' ', "-")));
                std::fs::write(&file, &input).unwrap();
                eprintln!(
                    "fuzz {name}: case {case} panicked; its input is {}",
                    file.display()
                );
                panics.push(case);
            }
        }
    }
    eprintln!(
        "fuzz {name}: {n} inputs in {:.1} s, {accepted} accepted, {} refused, {} panics",
        started.elapsed().as_secs_f64(),
        n - accepted - panics.len(),
        panics.len()
    );
    assert!(
        panics.is_empty(),
        "{name}: {} of {n} inputs panicked (cases {:?})",
        panics.len(),
        &panics[..panics.len().min(10)]
    );
}

fn experiment_files() -> Vec<Vec<u8>> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("experiments");
    let mut files: Vec<_> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "ron"))
        .collect();
    files.sort();
    files.iter().map(|p| std::fs::read(p).unwrap()).collect()
}

#[test]
fn ron_configs_never_panic() {
    let file = Path::new("fuzz.ron");
    fuzz("RON configs", &experiment_files(), true, |bytes| {
        let text = String::from_utf8_lossy(bytes);
        let train = config::parse::<TrainConfig>(&text, file).is_ok();
        let sweep = config::parse::<SweepConfig>(&text, file).is_ok();
        let kv = config::parse::<KvEvalConfig>(&text, file).is_ok();
        train || sweep || kv
    });
}

/// Readers that take a path get each input through this file.
fn through_file<T>(dir: &Path, bytes: &[u8], read: impl FnOnce(&Path) -> T) -> T {
    let path = dir.join("input");
    std::fs::write(&path, bytes).unwrap();
    read(&path)
}

#[test]
fn gguf_models_never_panic() {
    let tiny = Tiny::byte_level();
    let seed = std::fs::read(tiny.gguf_path()).unwrap();
    let dir = tempfile::tempdir().unwrap();
    fuzz("GGUF models", &[seed], false, |bytes| {
        through_file(dir.path(), bytes, |p| {
            Llama::from_gguf(p, &Device::Cpu, WeightFormat::AsStored).is_ok()
        })
    });
}

#[test]
fn checkpoints_never_panic() {
    let dir = tempfile::tempdir().unwrap();
    let path = checkpoint::path_in(dir.path());
    let values: Vec<f32> = (0..96).map(|i| (i as f32 * 0.37).sin()).collect();
    let ck = Checkpoint {
        step: 42,
        tensors: [
            (
                "param/w".to_string(),
                Tensor::from_vec(values, (8, 12), &Device::Cpu).unwrap(),
            ),
            (
                "optim/g/m".to_string(),
                Tensor::new(&[0.5f32, 0.25], &Device::Cpu).unwrap(),
            ),
        ]
        .into_iter()
        .collect(),
        rng: spectra_core::rng::derived_rng(3, 1),
        fingerprint: "model".into(),
        plan: Some(checkpoint::RunPlan {
            steps: 100,
            eval_windows: Some(8),
        }),
    };
    checkpoint::save(&path, &ck).unwrap();
    let seed = std::fs::read(&path).unwrap();
    // A checksum catches nearly every mutation; a file of the format written before checksums is
    // read without them, so it takes the mutations through the rest of the reader.
    let legacy = safetensors::serialize(
        [("param/w", ck.tensors["param/w"].clone())],
        Some(
            [
                ("format", "spectra-train-checkpoint-1".to_string()),
                ("step", "42".into()),
                ("rng_seed", "ab".repeat(32)),
                ("rng_stream", "1".into()),
                ("rng_word_pos", "7".into()),
                ("fingerprint", "model".into()),
            ]
            .into_iter()
            .map(|(k, v)| (k.to_string(), v))
            .collect(),
        ),
    )
    .unwrap();
    assert_eq!(
        through_file(dir.path(), &legacy, |p| checkpoint::load(p, &Device::Cpu))
            .unwrap()
            .step,
        42
    );
    fuzz("checkpoints", &[seed, legacy], false, |bytes| {
        through_file(dir.path(), bytes, |p| {
            checkpoint::load(p, &Device::Cpu).is_ok()
        })
    });
}

#[test]
fn kv_query_stats_never_panic() {
    let rope = RopeSpec::new(8, 10_000.0, RopePairing::Half, RopeScaling::None);
    let (layers, heads) = (2, 4);
    let n = layers * heads * 4;
    let band = |k: usize| (0..n).map(|i| ((i * k) as f32 * 0.1).cos()).collect();
    let stats = QueryBandStats::new(
        QueryStatsMeta::for_rope(&rope, layers, heads),
        band(1),
        band(2),
        // Above every mean's modulus (at most √2), as a mean modulus must be.
        (0..n).map(|i| 2.0 + i as f32).collect(),
    )
    .unwrap();
    let seed = stats.to_bytes().unwrap();
    fuzz("KV query stats", &[seed], false, |bytes| {
        QueryBandStats::from_bytes(bytes).is_ok()
    });
}

/// What the GGUF fuzzing found: a shape whose element count overflows (`2⁶² + 1` × 4 wraps to 4)
/// passed candle's size check, which multiplies the same way, and then failed to allocate.
#[test]
fn a_gguf_tensor_shape_past_the_file_is_refused() {
    let tiny = Tiny::byte_level();
    let mut bytes = std::fs::read(tiny.gguf_path()).unwrap();
    let name = b"output_norm.weight";
    let at = bytes
        .windows(name.len())
        .position(|w| w == name)
        .expect("the tensor's entry")
        + name.len();
    // After the name: the number of dimensions (u32), then each dimension (u64).
    assert_eq!(&bytes[at..at + 4], &1u32.to_le_bytes());
    bytes[at + 4..at + 12].copy_from_slice(&((1u64 << 62) + 1).to_le_bytes());
    let dir = tempfile::tempdir().unwrap();
    let err = through_file(dir.path(), &bytes, |p| {
        Llama::from_gguf(p, &Device::Cpu, WeightFormat::AsStored)
            .err()
            .expect("a corrupt shape is refused")
            .to_string()
    });
    assert!(err.contains("output_norm.weight"), "{err}");
    assert!(err.contains("more than the file holds"), "{err}");
}

/// Requests the server gets, mutated: each seed is a path and a body.
fn request_seeds() -> Vec<(&'static str, Vec<u8>)> {
    let completion = "/v1/completions";
    let chat = "/v1/chat/completions";
    [
        (completion, r#"{"prompt": "hello", "max_tokens": 3, "temperature": 0}"#),
        (completion, r#"{"prompt": [5, 6, 7], "max_tokens": 2, "stream": true, "stream_options": {"include_usage": true}}"#),
        (completion, r#"{"prompt": "abc", "max_tokens": 4, "temperature": 0.8, "top_p": 0.9, "top_k": 5, "min_p": 0.1, "seed": 3, "stop": ["x", "yz"]}"#),
        (completion, r#"{"prompt": "a b c d e f g", "max_tokens": 2, "kv": {"policy": {"type": "StreamingLlm", "cfg": {"sinks": 2}}, "budget": 4}}"#),
        (completion, r#"{"prompt": "q", "max_tokens": 2, "kv": {"policy": {"type": "SnapKv", "cfg": {"window": 2}}, "budget": 3}}"#),
        (chat, r#"{"messages": [{"role": "system", "content": "be brief"}, {"role": "user", "content": "hi"}], "max_completion_tokens": 3}"#),
        (chat, r#"{"messages": [{"role": "user", "content": [{"type": "text", "text": "hi"}]}], "max_tokens": 2, "stream": true, "n": 1}"#),
        (chat, r#"{"model": "tiny", "messages": [{"role": "user", "content": "x"}], "max_tokens": 2, "kv": {"policy": "Full"}, "user": "u"}"#),
    ]
    .into_iter()
    .map(|(path, body)| (path, body.as_bytes().to_vec()))
    .collect()
}

/// Values a mistyped or hostile request tends to hold.
fn odd_json(rng: &mut ChaCha8Rng) -> serde_json::Value {
    use serde_json::json;
    let deep = (0..200).fold(json!(0), |inner, _| json!([inner]));
    let choices = [
        json!(null),
        json!(true),
        json!(-1),
        json!(0),
        json!(1),
        json!(2.5),
        json!(1e308),
        json!(-1e308),
        json!(u64::MAX),
        json!(i64::MIN),
        json!(""),
        json!("NaN"),
        json!("\u{0}\u{7f}\u{ffff}é😀"),
        json!("x".repeat(5000)),
        json!([]),
        json!({}),
        json!([1, 2, 3]),
        json!({"type": "TriAttention", "cfg": {}}),
        json!({"type": "Full"}),
        json!({"role": "tool", "content": null}),
        deep,
    ];
    choices[rng.random_range(0..choices.len())].clone()
}

/// A structural mutation of a JSON body: a value replaced, a key dropped or added, an array item
/// repeated; the result is valid JSON.
fn mutate_json(seed: &[u8], rng: &mut ChaCha8Rng) -> Vec<u8> {
    use serde_json::Value;
    fn count(v: &Value) -> usize {
        1 + match v {
            Value::Array(items) => items.iter().map(count).sum(),
            Value::Object(map) => map.values().map(count).sum(),
            _ => 0,
        }
    }
    /// The `k`-th node in preorder.
    fn nth<'a>(v: &'a mut Value, k: &mut usize) -> Option<&'a mut Value> {
        if *k == 0 {
            return Some(v);
        }
        *k -= 1;
        match v {
            Value::Array(items) => items.iter_mut().find_map(|i| nth(i, k)),
            Value::Object(map) => map.values_mut().find_map(|i| nth(i, k)),
            _ => None,
        }
    }
    let mut value: Value = serde_json::from_slice(seed).expect("seeds are JSON");
    for _ in 0..rng.random_range(1..=3) {
        let mut k = rng.random_range(0..count(&value));
        let node = nth(&mut value, &mut k).expect("k is below the node count");
        match (rng.random_range(0..4), node) {
            (0, Value::Object(map)) if !map.is_empty() => {
                let key = map
                    .keys()
                    .nth(rng.random_range(0..map.len()))
                    .unwrap()
                    .clone();
                map.remove(&key);
            }
            (1, Value::Object(map)) => {
                let keys = [
                    "kv",
                    "max_tokens",
                    "stop",
                    "n",
                    "logprobs",
                    "seed",
                    "budget",
                    "tools",
                ];
                map.insert(keys[rng.random_range(0..keys.len())].into(), odd_json(rng));
            }
            (2, Value::Array(items)) if !items.is_empty() => {
                let item = items[rng.random_range(0..items.len())].clone();
                items.extend(std::iter::repeat_n(item, rng.random_range(1..100)));
            }
            (_, node) => *node = odd_json(rng),
        }
    }
    serde_json::to_vec(&value).unwrap()
}

/// The server answers every mutated request with a status below 500 within the client's timeout,
/// and still answers afterwards; `SPECTRA_FUZZ_REQUESTS=N` sets the count (scripts/fuzz.sh: 20,000).
#[test]
fn the_server_answers_every_mutated_request() {
    let tiny = Tiny::byte_level();
    let config = tiny.gguf_path().with_file_name("fuzz-serve.ron");
    // A short default answer keeps each request fast; a mutated max_tokens may still ask for more.
    std::fs::write(
        &config,
        "(default_max_tokens: Some(4), max_body_bytes: 65536)",
    )
    .unwrap();
    let server =
        serve_support::Server::start(&tiny.gguf_path(), &["--config", config.to_str().unwrap()]);
    let n = requests();
    let seeds = request_seeds();
    let bodies: Vec<Vec<u8>> = seeds.iter().map(|(_, b)| b.clone()).collect();
    let mut rng = ChaCha8Rng::seed_from_u64(30);
    let mut by_status = std::collections::BTreeMap::new();
    let started = Instant::now();
    for case in 0..n {
        let (path, seed) = &seeds[case % seeds.len()];
        // Most cases stay JSON and reach the checks behind the parser; the rest test the parser.
        let input = match case % 4 {
            0 => mutate(seed, &bodies, &mut rng, true),
            _ => mutate_json(seed, &mut rng),
        };
        let reply = server.post(path, &input);
        assert!(
            reply.status < 500,
            "case {case}: {} to {path} with {:?}: {}",
            reply.status,
            String::from_utf8_lossy(&input),
            reply.text()
        );
        *by_status.entry(reply.status).or_insert(0) += 1;
    }
    eprintln!(
        "fuzz requests: {n} in {:.1} s, by status {by_status:?}",
        started.elapsed().as_secs_f64()
    );
    assert_eq!(server.get("/health").status, 200);
    let reply = server.post(
        "/v1/completions",
        br#"{"prompt": "still", "max_tokens": 2}"#,
    );
    assert_eq!(reply.status, 200, "{}", reply.text());
    assert!(by_status.contains_key(&200) && by_status.contains_key(&400));
}

/// Settings a hostile or careless caller of the generation API passes.
struct Hostile {
    rng: ChaCha8Rng,
    policies: Vec<Option<Arc<dyn KvEvictionPolicy>>>,
    texts: Vec<Vec<u8>>,
}

impl Hostile {
    fn pick<T: Clone>(&mut self, items: &[T]) -> T {
        items[self.rng.random_range(0..items.len())].clone()
    }

    /// Mostly a usable value, one time in eight one that should be refused.
    fn odd<T: Clone>(&mut self, usable: &[T], hostile: &[T]) -> T {
        if self.rng.random_ratio(1, 8) {
            self.pick(hostile)
        } else {
            self.pick(usable)
        }
    }

    /// A prompt of arbitrary bytes (through the tokenizer, as the server reads a string) or of
    /// arbitrary token ids, the vocabulary's edge and the empty prompt among them.
    fn prompt(&mut self, tokenizer: &TextTokenizer, vocab: u32) -> Vec<u32> {
        match self.rng.random_range(0..8) {
            0..=3 => {
                let seed = self.pick(&self.texts.clone());
                let bytes = mutate(&seed, &self.texts, &mut self.rng, true);
                let text = String::from_utf8_lossy(&bytes);
                let tokens = tokenizer.encode(&text).unwrap();
                // Byte-level tokens: every string comes back whole.
                assert_eq!(tokenizer.decode(&tokens).unwrap(), text);
                tokens
            }
            4..=6 => {
                let len = self.odd(&[1, 2, 5, 17, 64, 300], &[0]);
                (0..len).map(|_| self.rng.random_range(0..vocab)).collect()
            }
            _ => {
                let mut tokens: Vec<u32> =
                    (0..4).map(|_| self.rng.random_range(0..vocab)).collect();
                let at = self.rng.random_range(0..tokens.len());
                tokens[at] = self.pick(&[vocab, vocab + 1, u32::MAX]);
                tokens
            }
        }
    }

    fn sampling(&mut self) -> SamplingParams {
        SamplingParams {
            temperature: self.odd(
                &[0.0, 0.0, 0.7, 1.0, 100.0, 1e-30],
                &[-1.0, f32::NAN, f32::INFINITY],
            ),
            top_k: self.pick(&[0, 0, 1, 3, usize::MAX]),
            top_p: self.odd(&[1.0, 1.0, 0.5, 1e-9], &[0.0, 1.5, f32::NAN]),
            min_p: self.odd(&[0.0, 0.0, 0.1, 0.999], &[1.0, -0.5, f32::NAN]),
            seed: self.pick(&[None, Some(0), Some(u64::MAX)]),
        }
    }

    /// Stop strings: pieces of a text the model may say (most), arbitrary bytes, the empty string.
    fn stops(&mut self, said: &str) -> Vec<String> {
        let n = self.rng.random_range(0..4);
        (0..n)
            .map(|_| match self.rng.random_range(0..5) {
                0 => String::new(),
                1 => {
                    let n = self.rng.random_range(1..6);
                    let bytes: Vec<u8> = (0..n).map(|_| self.rng.random()).collect();
                    String::from_utf8_lossy(&bytes).into_owned()
                }
                _ => {
                    let chars: Vec<char> = said.chars().collect();
                    if chars.is_empty() {
                        return "\u{FFFD}".to_string();
                    }
                    let from = self.rng.random_range(0..chars.len());
                    let len = self.rng.random_range(1..=3).min(chars.len() - from);
                    chars[from..from + len].iter().collect()
                }
            })
            .collect()
    }

    fn request(&mut self, tokenizer: &TextTokenizer, vocab: u32, said: &str) -> Request {
        let max_tokens = self.odd(&[0, 1, 2, 3, 8, 20, 40], &[1000, usize::MAX]);
        let stop_tokens = (0..self.rng.random_range(0..3))
            .map(|_| {
                let inside = self.rng.random_range(0..vocab);
                self.pick(&[inside, vocab, u32::MAX])
            })
            .collect();
        Request {
            prompt: self.prompt(tokenizer, vocab),
            params: GenerationParams {
                max_tokens,
                sampling: self.sampling(),
                stop: self.stops(said),
                stop_tokens,
                ignore_stop_tokens: self.rng.random_ratio(1, 4),
            },
            policy: self.pick(&self.policies.clone()),
            budget: self.odd(
                &[
                    Budget::Tokens(1),
                    Budget::Tokens(4),
                    Budget::Tokens(usize::MAX),
                    Budget::Ratio(0.5),
                    Budget::PerLayer(vec![3; 5]),
                ],
                &[
                    Budget::Tokens(0),
                    Budget::Ratio(0.0),
                    Budget::Ratio(f64::NAN),
                    Budget::Ratio(1.5),
                    Budget::PerLayer(vec![]),
                    Budget::PerLayer(vec![2, 0]),
                ],
            ),
            seed: self.rng.random(),
        }
    }
}

/// What a sequence streamed: its tokens, its text, and how it ended.
#[derive(Default)]
struct Streamed {
    tokens: Vec<u32>,
    text: String,
    end: Option<FinishReason>,
}

/// A sequence's stream is its tokens' text, cut just before the first stop string, ended by the
/// token that completed it (or by a stop token, or at `max_tokens`); a cancelled one streamed a
/// prefix of that.
fn check_stream(request: &Request, got: &Streamed, tokenizer: &TextTokenizer) {
    let params = &request.params;
    let n = got.tokens.len();
    assert!(
        n <= params.max_tokens,
        "{n} tokens past max_tokens {}",
        params.max_tokens
    );
    let is_stop = |t: &u32| !params.ignore_stop_tokens && params.stop_tokens.contains(t);
    let by_token = got.tokens.last().is_some_and(is_stop);
    let text_tokens = &got.tokens[..n - usize::from(by_token)];
    assert!(
        !text_tokens.iter().any(is_stop),
        "went on past a stop token"
    );
    let first_stop = |text: &str| {
        params
            .stop
            .iter()
            .filter(|s| !s.is_empty())
            .filter_map(|s| text.find(s.as_str()))
            .min()
    };
    let full = tokenizer.decode(text_tokens).unwrap();
    let expected = &full[..first_stop(&full).unwrap_or(full.len())];
    let context = || format!("tokens {:?}, stops {:?}", got.tokens, params.stop);
    let reason = got.end.expect("every sequence ends");
    if reason == FinishReason::Cancelled {
        assert!(expected.starts_with(&got.text), "{}", context());
        return;
    }
    assert_eq!(got.text, expected, "{}", context());
    if by_token || first_stop(&full).is_some() {
        assert_eq!(reason, FinishReason::Stop, "{}", context());
    } else {
        assert_eq!(
            (reason, n),
            (FinishReason::Length, params.max_tokens),
            "{}",
            context()
        );
    }
    if !by_token && n > 0 {
        // Without an unfinished character the text before the last token was all seen: a stop
        // string in it should have ended the sequence a token earlier.
        let before = tokenizer.decode(&text_tokens[..n - 1]).unwrap();
        if !before.contains('\u{FFFD}') {
            assert_eq!(first_stop(&before), None, "stopped late: {}", context());
        }
    }
}

/// The generation API under hostile requests: prompts of arbitrary bytes and token ids, any
/// `max_tokens`, sampling settings, budgets, policies and stop strings, some cancelled midway.
/// Each request is refused with an error or runs to its end with exactly its tokens' text (as
/// [`check_stream`] says); nothing panics or fails after admission. A second pass asks each
/// request again with stop strings cut from what the first pass said, so that most stops are met.
#[test]
fn generation_requests_are_refused_or_stream_exactly_their_text() {
    let tiny = Tiny::byte_level();
    let (model, tokenizer) =
        Llama::from_gguf(&tiny.gguf_path(), &Device::Cpu, WeightFormat::AsStored).unwrap();
    let (model, tokenizer) = (Arc::new(model), Arc::new(tokenizer));
    let vocab = model.vocab() as u32;
    let policy = |text: &str| Some(config::parse_ron(text, Path::new("fuzz.ron")).unwrap());
    let dir = tempfile::tempdir().unwrap();
    let surrogate = dir.path().join("kvzap.safetensors");
    let (layers, width) = (llama_support::LAYERS, llama_support::HIDDEN);
    let heads = llama_support::KV_HEADS;
    spectra_policies::kv_zap::Surrogate::new(
        heads,
        width,
        (0..layers)
            .map(|l| {
                (0..heads * width)
                    .map(|i| ((l + i) % 5) as f32 - 2.0)
                    .collect()
            })
            .collect(),
        vec![vec![0.0; heads]; layers],
    )
    .unwrap()
    .save(&surrogate)
    .unwrap();
    let mut hostile = Hostile {
        rng: ChaCha8Rng::seed_from_u64(33),
        policies: vec![
            None,
            policy(r#"(type: "StreamingLlm", cfg: (sinks: 2))"#),
            policy(r#"(type: "SnapKv", cfg: (window: 4, kernel: 1, pooling: Avg, gqa: Mean))"#),
            policy(r#"(type: "H2o", cfg: (recent_window: 2))"#),
            policy(r#"(type: "TriAttention", cfg: (stats: ObservationWindow(8), slack: 4))"#),
            policy(r#"(type: "KvZip", cfg: ())"#),
            policy(&format!(
                r#"(type: "KvZap", cfg: (surrogate: "{}", recent_window: 2, trigger: EveryStep))"#,
                surrogate.display()
            )),
        ],
        texts: [
            "The capital of France is",
            "日本の首都は東京です。中国の首都は",
            "emoji 😀👍🏽 and é, tab\tnewline\n",
        ]
        .iter()
        .map(|t| t.as_bytes().to_vec())
        .chain([b"\xe6\x97 cut \xff\xfe\x00".to_vec()])
        .collect(),
    };
    let (mut refused, mut streamed, mut stopped, mut cancelled) = (0, 0, 0, 0);
    let started = Instant::now();
    let rounds = requests() / 10;
    for round in 0..rounds {
        let mut engine = Engine::new(
            model.clone(),
            EngineConfig {
                scheduler: SchedulerConfig {
                    kv_memory: hostile.pick(&[usize::MAX, 1 << 20, 40_000]),
                    max_sequences: 4,
                    step_tokens: 48,
                    chunk: hostile.pick(&[1, 7, 16]),
                    priority: hostile
                        .pick(&[StepPriority::DecodeFirst, StepPriority::PrefillFirst]),
                },
                reread: Some(RereadPrompt::default()),
            },
            Some(tokenizer.clone()),
        )
        .unwrap();
        // The second half of each round repeats the first half's requests with stops from their text.
        let mut said: Vec<(Request, String)> = Vec::new();
        for half in 0..2 {
            let requests: Vec<Request> = (0..5)
                .map(|i| match (half, said.get(i)) {
                    (1, Some((request, text))) => Request {
                        params: GenerationParams {
                            stop: hostile.stops(text),
                            ..request.params.clone()
                        },
                        ..request.clone()
                    },
                    _ => hostile.request(&tokenizer, vocab, ""),
                })
                .collect();
            let mut ids = Vec::new();
            for request in requests {
                match engine.submit(request.clone()) {
                    Ok(id) => ids.push((id, request)),
                    Err(e) => {
                        assert!(!e.to_string().is_empty());
                        refused += 1;
                    }
                }
            }
            let mut got: std::collections::HashMap<_, Streamed> = ids
                .iter()
                .map(|(id, _)| (*id, Streamed::default()))
                .collect();
            let cancel_at = hostile.rng.random_range(0..60);
            for step in 0.. {
                assert!(step < 100_000, "round {round}: the engine did not finish");
                if !engine.has_work() {
                    break;
                }
                if step == cancel_at && !ids.is_empty() {
                    let (id, _) = &ids[hostile.rng.random_range(0..ids.len())];
                    engine.cancel(*id);
                }
                for event in engine.step().unwrap() {
                    match event {
                        Event::Token {
                            id, token, text, ..
                        } => {
                            let g = got.get_mut(&id).unwrap();
                            g.tokens.push(token);
                            g.text.push_str(&text);
                        }
                        Event::Finished {
                            id, reason, text, ..
                        } => {
                            let g = got.get_mut(&id).unwrap();
                            assert!(g.end.is_none(), "sequence {id} ended twice");
                            g.end = Some(reason);
                            g.text.push_str(&text);
                        }
                        Event::Failed { id, error } => {
                            panic!("round {round}: sequence {id} failed after admission: {error}")
                        }
                    }
                }
            }
            assert_eq!(engine.reserved_kv_bytes(), 0);
            said.clear();
            for (id, request) in ids {
                let g = &got[&id];
                check_stream(&request, g, &tokenizer);
                streamed += 1;
                stopped += usize::from(g.end == Some(FinishReason::Stop));
                cancelled += usize::from(g.end == Some(FinishReason::Cancelled));
                said.push((request, g.text.clone()));
            }
        }
    }
    eprintln!(
        "fuzz generation: {} requests in {:.1} s, {refused} refused, {streamed} streamed \
         ({stopped} stopped, {cancelled} cancelled)",
        rounds * 10,
        started.elapsed().as_secs_f64()
    );
    assert!(refused > 0 && stopped > 0 && streamed > refused / 4);
}
