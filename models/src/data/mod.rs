//! Training and validation data: character-level text windows and IDX images.
//!
//! A training batch is a pure function of the run's seed and the step number, so a resumed run sees
//! exactly the batches an uninterrupted one would, with no loader state to checkpoint.

mod idx;
mod text;

use std::path::Path;

use crate::config::{DataConfig, ModelConfig};
use candle_core::{Device, Tensor};
use rand::SeedableRng;
use spectra_core::{Error, Result, SpectraRng};

pub use idx::{read_idx_images, read_idx_labels, IdxImages};
pub use text::TextCorpus;

/// What the model reads.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum InputKind {
    /// Windows of token ids.
    Tokens { vocab: usize },
    /// Flattened images with pixel values in [0, 1].
    Images { pixels: usize, classes: usize },
}

impl InputKind {
    /// How many logits the model gives per target: the vocabulary, or the image classes.
    pub fn classes(&self) -> usize {
        match self {
            InputKind::Tokens { vocab } => *vocab,
            InputKind::Images { classes, .. } => *classes,
        }
    }
}

/// Inputs and their targets: `targets` is `[examples]` (u32), one per image or per window position.
#[derive(Clone, Debug)]
pub struct Batch {
    pub inputs: Tensor,
    pub targets: Tensor,
}

/// A training set and a validation set.
pub trait Dataset: Send + Sync {
    fn input_kind(&self) -> InputKind;

    /// The batch of training step `step` (0-based).
    fn train_batch(
        &self,
        seed: u64,
        step: u64,
        batch_size: usize,
        device: &Device,
    ) -> Result<Batch>;

    /// Validation items (windows or images) available.
    fn validation_items(&self) -> usize;

    /// Validation items `start..start + count`.
    fn validation_batch(&self, start: usize, count: usize, device: &Device) -> Result<Batch>;

    /// Targets per item: the window length for text, 1 for images.
    fn targets_per_item(&self) -> usize;

    /// What a validation item is, for reports ("non-overlapping 256-character windows", ...).
    fn describe_validation(&self) -> String;
}

/// Opens the configured data; the GPT's `seq_len` sets the text window length.
pub fn open(data: &DataConfig, model: &ModelConfig) -> Result<Box<dyn Dataset>> {
    match data {
        DataConfig::Text { path, .. } => {
            let seq_len = match model {
                ModelConfig::LipschitzGpt(shape) => shape.seq_len,
                ModelConfig::LipschitzMlp { .. } => {
                    return Err(Error::invalid(
                        "data",
                        "text data needs a sequence model; use `model: LipschitzGpt(...)` or `data: Idx(...)`",
                    ))
                }
            };
            Ok(Box::new(TextCorpus::open(path, seq_len)?))
        }
        DataConfig::Idx { dir, .. } => Ok(Box::new(IdxImages::open(dir)?)),
    }
}

/// A generator for one step's batch: its own ChaCha stream, far from the streams other consumers use.
fn step_rng(seed: u64, step: u64) -> SpectraRng {
    let mut rng = SpectraRng::seed_from_u64(seed);
    rng.set_stream((1 << 48) + step);
    rng
}

/// Reads a whole file, with an error that says how to get it when it is missing.
fn read_data_file(path: &Path, how_to_get: &str) -> Result<Vec<u8>> {
    std::fs::read(path).map_err(|e| match e.kind() {
        std::io::ErrorKind::NotFound => {
            Error::file(path, format!("data file not found; {how_to_get}"))
        }
        _ => Error::file(
            path,
            format!("cannot read the data file: {e}; {how_to_get}"),
        ),
    })
}
