//! Fuzzing every reader of untrusted input: the RON config loader (training, sweep and KV configs),
//! the GGUF model reader, the checkpoint reader and the KV query-statistics reader. Each gets valid
//! files mutated at random (bits flipped, bytes and machine words overwritten with boundary values,
//! ranges cut, repeated or spliced between files, text tokens swapped) and must answer every one with
//! a value or an error: a panic fails the test, an abort fails the process.
//!
//! `cargo test` runs a bounded count; `SPECTRA_FUZZ_CASES=N` sets the count per reader
//! (scripts/fuzz.sh runs a million in all).

mod llama_support;

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::Path;
use std::time::Instant;

use candle_core::{Device, Tensor};
use llama_support::Tiny;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use spectra::kv::KvEvalConfig;
use spectra::models::llama::{Llama, WeightFormat};
use spectra::train::checkpoint::{self, Checkpoint};
use spectra::train::sweep::SweepConfig;
use spectra::train::TrainConfig;
use spectra_core::config;
use spectra_core::rope::{RopePairing, RopeScaling, RopeSpec};
use spectra_policies::tri_attention::query_stats::{QueryBandStats, QueryStatsMeta};

/// Inputs per reader in `cargo test`: enough to cover every mutation kind many times in seconds.
const DEFAULT_CASES: usize = 300;

fn cases() -> usize {
    std::env::var("SPECTRA_FUZZ_CASES")
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
            Llama::from_gguf(p, &Device::Cpu, WeightFormat::Quantized).is_ok()
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
        Llama::from_gguf(p, &Device::Cpu, WeightFormat::Quantized)
            .err()
            .expect("a corrupt shape is refused")
            .to_string()
    });
    assert!(err.contains("output_norm.weight"), "{err}");
    assert!(err.contains("more than the file holds"), "{err}");
}
