//! Tiny random Qwen2 and Qwen3 models written by the test as GGUF (each family's own tensors and
//! keys: Qwen2's q/k/v biases and untied output, Qwen3's per-head query and key norms and wider
//! heads), run by spectra and checked against a forward pass written here in f64 from the
//! definitions (RMSNorm, NEOX RoPE, causal grouped-query attention, SwiGLU); once with f32 matrices,
//! and once with every matrix in a GGUF block format spectra's kernels multiply (Q4_0 … Q6_K); and,
//! where `scripts/llama-cpp.sh llama-logits` has built it, against llama.cpp on the same files.

use candle_core::quantized::gguf_file::{self, Value};
use candle_core::quantized::{GgmlDType, QTensor};
use candle_core::{Device, Tensor};
use rand::{Rng, SeedableRng};
use spectra::kernels::quantized_matmul::BlockFormat;
use spectra::models::llama::{Family, Llama, WeightFormat};

mod llama_support;

const VOCAB: usize = 64;
const HIDDEN: usize = 256;
const LAYERS: usize = 2;
const HEADS: usize = 4;
const KV_HEADS: usize = 2;
const FFN: usize = 512;
const EPS: f64 = 1e-6;
const BASE: f64 = 1e6;

/// A model's tensors by GGUF name, as f64 rows (`[out, in]` for matrices), and the head width.
struct Weights {
    family: Family,
    head_dim: usize,
    tensors: Vec<(String, Vec<usize>, Vec<f64>)>,
}

impl Weights {
    fn random(family: Family) -> Self {
        // Qwen3's heads are wider than hidden / heads, as Qwen3-8B's (128 × 32 > 4096).
        let head_dim = if family == Family::Qwen3 {
            128
        } else {
            HIDDEN / HEADS
        };
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(11);
        let mut tensors = Vec::new();
        let mut add = |name: String, dims: Vec<usize>, scale: f64, around: f64| {
            let n = dims.iter().product();
            let values = (0..n)
                .map(|_| around + rng.random_range(-1.0..1.0) * scale)
                .collect();
            tensors.push((name, dims, values));
        };
        let proj = 1.0 / (HIDDEN as f64).sqrt();
        add("token_embd.weight".into(), vec![VOCAB, HIDDEN], 1.0, 0.0);
        for l in 0..LAYERS {
            let b = |n: &str| format!("blk.{l}.{n}");
            let (q, kv) = (HEADS * head_dim, KV_HEADS * head_dim);
            add(b("attn_norm.weight"), vec![HIDDEN], 0.2, 1.0);
            add(b("attn_q.weight"), vec![q, HIDDEN], proj, 0.0);
            add(b("attn_k.weight"), vec![kv, HIDDEN], proj, 0.0);
            add(b("attn_v.weight"), vec![kv, HIDDEN], proj, 0.0);
            if family.qkv_bias() {
                add(b("attn_q.bias"), vec![q], 0.5, 0.0);
                add(b("attn_k.bias"), vec![kv], 0.5, 0.0);
                add(b("attn_v.bias"), vec![kv], 0.5, 0.0);
            }
            if family.qk_norm() {
                add(b("attn_q_norm.weight"), vec![head_dim], 0.3, 1.0);
                add(b("attn_k_norm.weight"), vec![head_dim], 0.3, 1.0);
            }
            add(
                b("attn_output.weight"),
                vec![HIDDEN, q],
                1.0 / (q as f64).sqrt(),
                0.0,
            );
            add(b("ffn_norm.weight"), vec![HIDDEN], 0.2, 1.0);
            add(b("ffn_gate.weight"), vec![FFN, HIDDEN], proj, 0.0);
            add(b("ffn_up.weight"), vec![FFN, HIDDEN], proj, 0.0);
            add(
                b("ffn_down.weight"),
                vec![HIDDEN, FFN],
                1.0 / (FFN as f64).sqrt(),
                0.0,
            );
        }
        add("output_norm.weight".into(), vec![HIDDEN], 0.2, 1.0);
        // Qwen2 files carry their own output head; this Qwen3 ties it to the embedding.
        if family == Family::Qwen2 {
            add("output.weight".into(), vec![VOCAB, HIDDEN], proj, 0.0);
        }
        Weights {
            family,
            head_dim,
            tensors,
        }
    }

    /// The GGUF file, every matrix (but the embedding) stored as `formats` gives for its index, and
    /// the weights as the file holds them (matrices rounded to their format).
    fn write(&self, path: &std::path::Path, formats: &[GgmlDType]) -> Weights {
        let mut stored = Vec::new();
        let mut matrices = 0;
        let qtensors: Vec<(String, QTensor)> = self
            .tensors
            .iter()
            .map(|(name, dims, values)| {
                let f32s: Vec<f32> = values.iter().map(|&v| v as f32).collect();
                let t = Tensor::from_vec(f32s, dims.as_slice(), &Device::Cpu).unwrap();
                let dtype = if dims.len() == 2 && name != "token_embd.weight" {
                    matrices += 1;
                    formats[(matrices - 1) % formats.len()]
                } else {
                    GgmlDType::F32
                };
                let q = QTensor::quantize(&t, dtype).unwrap();
                let back = q.dequantize(&Device::Cpu).unwrap().flatten_all().unwrap();
                let back: Vec<f64> = back
                    .to_vec1::<f32>()
                    .unwrap()
                    .into_iter()
                    .map(f64::from)
                    .collect();
                stored.push((name.clone(), dims.clone(), back));
                (name.clone(), q)
            })
            .collect();
        let arch = self.family.name();
        let u32v = |v: usize| Value::U32(v as u32);
        let key = |k: &str| format!("{arch}.{k}");
        // One merge, of tokens the vocabulary holds: llama.cpp refuses an empty list of merges.
        let tokens: Vec<Value> = ["a", "b", "ab"]
            .map(String::from)
            .into_iter()
            .chain((3..VOCAB).map(|i| format!("t{i}")))
            .map(Value::String)
            .collect();
        let metadata: Vec<(String, Value)> = vec![
            ("general.architecture".into(), Value::String(arch.into())),
            (key("embedding_length"), u32v(HIDDEN)),
            (key("block_count"), u32v(LAYERS)),
            (key("attention.head_count"), u32v(HEADS)),
            (key("attention.head_count_kv"), u32v(KV_HEADS)),
            (key("attention.key_length"), u32v(self.head_dim)),
            (key("attention.value_length"), u32v(self.head_dim)),
            (key("feed_forward_length"), u32v(FFN)),
            (
                key("attention.layer_norm_rms_epsilon"),
                Value::F32(EPS as f32),
            ),
            (key("rope.freq_base"), Value::F32(BASE as f32)),
            (key("context_length"), u32v(4096)),
            ("tokenizer.ggml.model".into(), Value::String("gpt2".into())),
            ("tokenizer.ggml.pre".into(), Value::String("qwen2".into())),
            ("tokenizer.ggml.tokens".into(), Value::Array(tokens)),
            (
                "tokenizer.ggml.merges".into(),
                Value::Array(vec![Value::String("a b".into())]),
            ),
        ];
        let metadata: Vec<(&str, &Value)> = metadata.iter().map(|(k, v)| (k.as_str(), v)).collect();
        let tensors: Vec<(&str, &QTensor)> =
            qtensors.iter().map(|(k, v)| (k.as_str(), v)).collect();
        let mut file = std::fs::File::create(path).unwrap();
        gguf_file::write(&mut file, &metadata, &tensors).unwrap();
        Weights {
            family: self.family,
            head_dim: self.head_dim,
            tensors: stored,
        }
    }

    fn get(&self, name: &str) -> &[f64] {
        &self
            .tensors
            .iter()
            .find(|(n, _, _)| n == name)
            .unwrap_or_else(|| panic!("{name}"))
            .2
    }

    /// Every position's logits, from the definitions, in f64.
    fn reference_logits(&self, tokens: &[u32]) -> Vec<Vec<f64>> {
        let d = self.head_dim;
        let group = HEADS / KV_HEADS;
        let mut xs: Vec<Vec<f64>> = tokens
            .iter()
            .map(|&t| self.get("token_embd.weight")[t as usize * HIDDEN..][..HIDDEN].to_vec())
            .collect();
        for l in 0..LAYERS {
            let w = |n: &str| self.get(&format!("blk.{l}.{n}"));
            let (mut qs, mut ks, mut vs) = (Vec::new(), Vec::new(), Vec::new());
            for (pos, x) in xs.iter().enumerate() {
                let h = rms_norm(x, w("attn_norm.weight"));
                let mut q = matvec(w("attn_q.weight"), &h);
                let mut k = matvec(w("attn_k.weight"), &h);
                let mut v = matvec(w("attn_v.weight"), &h);
                if self.family.qkv_bias() {
                    add(&mut q, w("attn_q.bias"));
                    add(&mut k, w("attn_k.bias"));
                    add(&mut v, w("attn_v.bias"));
                }
                for (p, norm) in [
                    (&mut q, "attn_q_norm.weight"),
                    (&mut k, "attn_k_norm.weight"),
                ] {
                    for head in p.chunks_mut(d) {
                        if self.family.qk_norm() {
                            let normed = rms_norm(head, w(norm));
                            head.copy_from_slice(&normed);
                        }
                        rope_neox(head, pos);
                    }
                }
                qs.push(q);
                ks.push(k);
                vs.push(v);
            }
            for (i, x) in xs.iter_mut().enumerate() {
                let mut attended = vec![0.0; HEADS * d];
                for h in 0..HEADS {
                    let kv = h / group;
                    let q = &qs[i][h * d..][..d];
                    let scores: Vec<f64> = (0..=i)
                        .map(|j| dot(q, &ks[j][kv * d..][..d]) / (d as f64).sqrt())
                        .collect();
                    let top = scores.iter().cloned().fold(f64::MIN, f64::max);
                    let e: Vec<f64> = scores.iter().map(|s| (s - top).exp()).collect();
                    let total: f64 = e.iter().sum();
                    for (j, p) in e.iter().enumerate() {
                        for c in 0..d {
                            attended[h * d + c] += p / total * vs[j][kv * d + c];
                        }
                    }
                }
                add(x, &matvec(w("attn_output.weight"), &attended));
                let h = rms_norm(x, w("ffn_norm.weight"));
                let gate = matvec(w("ffn_gate.weight"), &h);
                let up = matvec(w("ffn_up.weight"), &h);
                let gated: Vec<f64> = gate
                    .iter()
                    .zip(&up)
                    .map(|(g, u)| g / (1.0 + (-g).exp()) * u)
                    .collect();
                add(x, &matvec(w("ffn_down.weight"), &gated));
            }
        }
        let head = if self.family == Family::Qwen2 {
            "output.weight"
        } else {
            "token_embd.weight"
        };
        xs.iter()
            .map(|x| matvec(self.get(head), &rms_norm(x, self.get("output_norm.weight"))))
            .collect()
    }
}

fn rms_norm(x: &[f64], weight: &[f64]) -> Vec<f64> {
    let mean = x.iter().map(|v| v * v).sum::<f64>() / x.len() as f64;
    let scale = 1.0 / (mean + EPS).sqrt();
    x.iter().zip(weight).map(|(v, w)| v * scale * w).collect()
}

fn matvec(w: &[f64], x: &[f64]) -> Vec<f64> {
    w.chunks(x.len()).map(|row| dot(row, x)).collect()
}

fn dot(a: &[f64], b: &[f64]) -> f64 {
    a.iter().zip(b).map(|(x, y)| x * y).sum()
}

fn add(x: &mut [f64], y: &[f64]) {
    x.iter_mut().zip(y).for_each(|(a, b)| *a += b);
}

/// RoPE as Qwen's (and GPT-NeoX's) checkpoints pair coordinates: `i` with `i + d/2`.
fn rope_neox(head: &mut [f64], pos: usize) {
    let half = head.len() / 2;
    for i in 0..half {
        let angle = pos as f64 / BASE.powf(2.0 * i as f64 / head.len() as f64);
        let (a, b) = (head[i], head[i + half]);
        head[i] = a * angle.cos() - b * angle.sin();
        head[i + half] = b * angle.cos() + a * angle.sin();
    }
}

fn spectra_logits(path: &std::path::Path, tokens: &[u32]) -> Vec<Vec<f32>> {
    let (model, _) = Llama::from_gguf(path, &Device::Cpu, WeightFormat::AsStored).unwrap();
    llama_support::all_logits(&model, tokens)
}

const TOKENS: [u32; 7] = [3, 17, 42, 8, 8, 63, 0];

#[test]
fn qwen2_and_qwen3_match_the_definitions_in_f64() {
    for family in [Family::Qwen2, Family::Qwen3] {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("tiny.gguf");
        let stored = Weights::random(family).write(&path, &[GgmlDType::F32]);
        let want = stored.reference_logits(&TOKENS);
        let got = spectra_logits(&path, &TOKENS);
        for (p, (g, w)) in got.iter().zip(&want).enumerate() {
            for (a, b) in g.iter().zip(w) {
                // f32 arithmetic over sums of a few hundred terms of size ~1: 1e-4 leaves room
                // for rounding, and is far below what a missing bias or norm changes (~1).
                assert!(
                    (f64::from(*a) - b).abs() < 1e-4,
                    "{family:?} position {p}: {a} vs {b}"
                );
            }
        }
    }
}

/// Each matrix in one of the block formats (the embedding stays f32 and is looked up): spectra's
/// integer products quantize each activation block of 32 to 8 bits, a relative rounding of at most
/// 1/254 per element, so the logits may differ by a few hundredths of their spread from the f64
/// pass on the same (rounded) weights, and the most likely token must not change.
#[test]
fn every_block_format_matches_the_definitions_within_the_activation_rounding() {
    let formats = BlockFormat::ALL.map(BlockFormat::dtype);
    for family in [Family::Qwen2, Family::Qwen3] {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("tiny.gguf");
        let stored = Weights::random(family).write(&path, &formats);
        let want = stored.reference_logits(&TOKENS);
        let got = spectra_logits(&path, &TOKENS);
        for (p, (g, w)) in got.iter().zip(&want).enumerate() {
            let spread = w.iter().cloned().fold(f64::MIN, f64::max)
                - w.iter().cloned().fold(f64::MAX, f64::min);
            let worst = g
                .iter()
                .zip(w)
                .map(|(a, b)| (f64::from(*a) - b).abs())
                .fold(0.0, f64::max);
            assert!(
                worst < 0.03 * spread,
                "{family:?} position {p}: {worst} of {spread}"
            );
            let argmax = |v: Vec<f64>| (0..v.len()).max_by(|&a, &b| v[a].total_cmp(&v[b])).unwrap();
            assert_eq!(
                argmax(g.iter().map(|&v| f64::from(v)).collect()),
                argmax(w.clone()),
                "{family:?} position {p}"
            );
        }
    }
}

#[test]
fn an_unknown_architecture_is_refused_naming_it_and_the_known_ones() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("tiny.gguf");
    Weights::random(Family::Qwen2).write(&path, &[GgmlDType::F32]);
    // The same file under another architecture's name (same length, so the offsets hold).
    let bytes = std::fs::read(&path).unwrap();
    let at = bytes.windows(5).position(|w| w == b"qwen2").unwrap();
    let mut renamed = bytes.clone();
    renamed[at..at + 5].copy_from_slice(b"gemma");
    std::fs::write(&path, renamed).unwrap();
    let err = Llama::from_gguf(&path, &Device::Cpu, WeightFormat::AsStored)
        .err()
        .expect("an unknown architecture is refused")
        .to_string();
    assert!(err.contains("`gemma`"), "{err}");
    assert!(err.contains("llama, qwen2, qwen3"), "{err}");
}

/// llama.cpp's logits on the same files, from `scripts/llama-logits.c` (built by
/// `scripts/llama-cpp.sh llama-logits`). llama.cpp is written independently of spectra and of the
/// f64 pass above, so its agreement checks the definitions that pass encodes (NEOX RoPE, the norms
/// of queries and keys before RoPE, the biases) as well as spectra's kernels. Skipped, saying why,
/// where the tool has not been built (it needs llama.cpp's sources and cmake).
#[test]
fn llama_cpp_gives_the_same_logits_on_the_same_files() {
    let tool = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("data/llama-cpp/build/bin/llama-logits");
    if !tool.exists() {
        eprintln!(
            "skipped: {} is absent; `scripts/llama-cpp.sh llama-logits` builds it",
            tool.display()
        );
        return;
    }
    let all = BlockFormat::ALL.map(BlockFormat::dtype);
    for family in [Family::Qwen2, Family::Qwen3] {
        for formats in [&[GgmlDType::F32][..], &all[..]] {
            let dir = tempfile::tempdir().unwrap();
            let path = dir.path().join("tiny.gguf");
            let stored = Weights::random(family).write(&path, formats);
            let want = stored.reference_logits(&TOKENS);
            let ours = spectra_logits(&path, &TOKENS);
            let output = std::process::Command::new(&tool)
                .arg(&path)
                .args(TOKENS.iter().map(|t| t.to_string()))
                .output()
                .unwrap();
            assert!(
                output.status.success(),
                "llama-logits: {}",
                String::from_utf8_lossy(&output.stderr)
            );
            let theirs: Vec<Vec<f64>> = String::from_utf8(output.stdout)
                .unwrap()
                .lines()
                .map(|l| l.split(' ').map(|v| v.parse().unwrap()).collect())
                .collect();
            assert_eq!(theirs.len(), TOKENS.len());
            assert!(
                theirs.iter().all(|l| l.len() == VOCAB),
                "llama-logits: rows of {VOCAB}"
            );
            for (p, ((l, s), w)) in theirs.iter().zip(&ours).zip(&want).enumerate() {
                let spread = w.iter().cloned().fold(f64::MIN, f64::max)
                    - w.iter().cloned().fold(f64::MAX, f64::min);
                let worst = |a: &mut dyn Iterator<Item = f64>, b: &[f64]| {
                    a.zip(b).map(|(a, b)| (a - b).abs()).fold(0.0, f64::max)
                };
                let to_definition = worst(&mut l.iter().copied(), w);
                let to_spectra = worst(&mut s.iter().map(|&v| f64::from(v)), l);
                // With f32 matrices llama.cpp is 1.5·10⁻⁴ of the spread from the f64 pass at most
                // here (its RoPE angles and exponentials are f32 approximations); in block formats
                // both engines round activations to 8 bits (llama.cpp per 256 elements for the
                // K-quants, spectra per 32), within 1% of the spread of each other here. A wrong
                // convention (RoPE's pairing, a norm or bias left out) moves logits by a large part
                // of the spread.
                let tolerance = if formats.len() == 1 { 5e-4 } else { 0.03 } * spread;
                assert!(
                    to_definition < tolerance && to_spectra < tolerance,
                    "{family:?} {formats:?} position {p}: llama.cpp is {to_definition} from the \
                     f64 pass and {to_spectra} from spectra, spread {spread}"
                );
                let argmax = |v: Vec<f64>| (0..v.len()).max_by(|&a, &b| v[a].total_cmp(&v[b]));
                assert_eq!(
                    argmax(l.clone()),
                    argmax(s.iter().map(|&v| f64::from(v)).collect()),
                    "{family:?} {formats:?} position {p}"
                );
            }
        }
    }
}

/// A NaN in a weight is refused at load, naming the tensor: a NaN in a norm's weight used to be
/// rounded away by the 8-bit activations (an i8 cast of NaN is 0), and the model then generated
/// text from silently wrong numbers. (Block scales are checked by the kernels' tests.)
#[test]
fn a_nan_in_a_weight_is_refused_at_load_naming_the_tensor() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("tiny.gguf");
    let mut weights = Weights::random(Family::Qwen2);
    let norm = weights
        .tensors
        .iter_mut()
        .find(|(name, _, _)| name == "blk.0.attn_norm.weight")
        .unwrap();
    norm.2[3] = f64::NAN;
    weights.write(&path, &[GgmlDType::Q8_0]);
    let err = Llama::from_gguf(&path, &Device::Cpu, WeightFormat::AsStored)
        .err()
        .expect("a NaN weight is refused")
        .to_string();
    assert!(
        err.contains("`blk.0.attn_norm.weight` holds NaN or Inf (element 3)"),
        "{err}"
    );
}
