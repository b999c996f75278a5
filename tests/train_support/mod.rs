//! Tiny data sets and configs for the training tests.

#![allow(dead_code)] // each test file uses a different subset

use std::path::{Path, PathBuf};

use spectra::train::TrainConfig;
use spectra::train::{train, TrainOptions, TrainSummary};
use spectra_core::config;

/// A text whose next character is a function of the current one: a 9-character cycle.
pub fn write_cycle_corpus(dir: &Path) -> PathBuf {
    let path = dir.join("cycle.txt");
    let text: String = "abcdefgh\n".repeat(300);
    std::fs::write(&path, text).unwrap();
    path
}

/// IDX files of `n` 4×4 training images (and `n/2` test images) in 4 classes; class c lights row c
/// (plus a little per-image noise).
pub fn write_idx_set(dir: &Path, n: usize) -> PathBuf {
    let idx = |rank: u8, dims: &[u32], body: &[u8]| {
        let mut v = vec![0, 0, 8, rank];
        for d in dims {
            v.extend(d.to_be_bytes());
        }
        v.extend_from_slice(body);
        v
    };
    let images = |count: usize, salt: usize| {
        let mut pixels = Vec::new();
        let mut labels = Vec::new();
        for i in 0..count {
            let class = i % 4;
            labels.push(class as u8);
            for p in 0..16 {
                let on = p / 4 == class;
                pixels.push(if on {
                    200 + ((i + salt + p) % 50) as u8
                } else {
                    ((i * 7 + salt + p * 3) % 40) as u8
                });
            }
        }
        (pixels, labels)
    };
    let (train_x, train_y) = images(n, 0);
    let (test_x, test_y) = images(n / 2, 5);
    std::fs::write(
        dir.join("train-images-idx3-ubyte"),
        idx(3, &[n as u32, 4, 4], &train_x),
    )
    .unwrap();
    std::fs::write(
        dir.join("train-labels-idx1-ubyte"),
        idx(1, &[n as u32], &train_y),
    )
    .unwrap();
    std::fs::write(
        dir.join("t10k-images-idx3-ubyte"),
        idx(3, &[(n / 2) as u32, 4, 4], &test_x),
    )
    .unwrap();
    std::fs::write(
        dir.join("t10k-labels-idx1-ubyte"),
        idx(1, &[(n / 2) as u32], &test_y),
    )
    .unwrap();
    dir.to_path_buf()
}

/// A tiny GPT on `corpus` with the given groups (RON text).
pub fn gpt_config(corpus: &Path, output: &Path, groups: &str, steps: u64, extra: &str) -> String {
    format!(
        r#"(
    model: LipschitzGpt(d_model: 16, blocks: 1, heads: 2, seq_len: 8),
    data: Text(path: "{}", batch_size: 8),
    groups: [{groups}],
    steps: {steps},
    eval: (every: 10, windows: 8),
    device: Cpu,
    seed: 3,
    output: "{}",
    {extra}
)"#,
        corpus.display(),
        output.display()
    )
}

/// A tiny MLP on the IDX set in `dir`.
pub fn mlp_config(dir: &Path, output: &Path, groups: &str, steps: u64, batch: usize) -> String {
    format!(
        r#"(
    model: LipschitzMlp(hidden: 16, layers: 3),
    data: Idx(dir: "{}", batch_size: {batch}),
    groups: [{groups}],
    steps: {steps},
    eval: (every: 20),
    device: Cpu,
    output: "{}",
)"#,
        dir.display(),
        output.display()
    )
}

pub fn parse(text: &str) -> TrainConfig {
    config::parse(text, Path::new("test.ron")).unwrap_or_else(|e| panic!("{e}"))
}

pub fn run(text: &str, options: &TrainOptions) -> TrainSummary {
    train(parse(text), Path::new("test.ron"), options).unwrap_or_else(|e| panic!("{e}"))
}

pub fn quiet() -> TrainOptions {
    TrainOptions {
        quiet: true,
        ..TrainOptions::default()
    }
}

/// Muon with the soft cap on the matrices, Muon with the column cap on the embedding.
/// Every MLP parameter under Muon and the soft cap at w_max 4.
pub const MLP_MUON_SOFT_CAP: &str = r#"(name: "all", params: [All], optimizer: (type: "Muon", cfg: (lr: 0.3)),
                     constraints: [(type: "SpectralSoftCap", cfg: (w_max: 4.0))])"#;

pub const MUON_SOFT_CAP: &str = r#"
    (name: "matrices", params: [Role(Hidden), Role(Head)],
     optimizer: (type: "Muon", cfg: (lr: 0.5)),
     constraints: [(type: "SpectralSoftCap", cfg: (w_max: 2.0))]),
    (name: "embedding", params: [Role(Embedding)],
     optimizer: (type: "Muon", cfg: (lr: 0.5)),
     constraints: [(type: "EmbeddingColumnCap", cfg: (max_rms: 1.0))]),
"#;
