//! The model and data sections of an experiment config. The GPT's fields are [`GptShape`]'s, declared
//! once; its vocabulary comes from the data.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::lipschitz_gpt::{d256, three, GptShape};

/// The model to train. Defaults are the Lipschitz paper's (docs/lipschitz.md §6).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub enum ModelConfig {
    /// The Lipschitz transformer: no norms, convex residuals, 1/d attention, GELU/1.1289.
    LipschitzGpt(GptShape),
    /// The ReLU MLP: `layers` linear layers of width `hidden`, the input layer zero-initialised.
    LipschitzMlp {
        #[serde(default = "d256")]
        hidden: usize,
        #[serde(default = "three")]
        layers: usize,
    },
}

/// Training data.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub enum DataConfig {
    /// Character-level text: vocabulary from the corpus, first 90% train, last 10% validation.
    Text { path: PathBuf, batch_size: usize },
    /// IDX image files (Fashion-MNIST's layout: `train-images-idx3-ubyte.gz` and friends).
    Idx { dir: PathBuf, batch_size: usize },
}

impl DataConfig {
    /// The file or folder the data is read from.
    pub fn path(&self) -> &Path {
        match self {
            DataConfig::Text { path, .. } => path,
            DataConfig::Idx { dir, .. } => dir,
        }
    }

    /// Examples per training batch.
    pub fn batch_size(&self) -> usize {
        match self {
            DataConfig::Text { batch_size, .. } | DataConfig::Idx { batch_size, .. } => *batch_size,
        }
    }
}

/// A pretrained decoder's files.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub enum DecoderConfig {
    /// A GGUF file (weights, tokenizer and hyper-parameters in one).
    Gguf { path: PathBuf },
    /// A Hugging Face folder: `config.json`, `*.safetensors`, `tokenizer.json`.
    Safetensors { dir: PathBuf },
}

impl DecoderConfig {
    /// The file or folder to load.
    pub fn path(&self) -> &Path {
        match self {
            DecoderConfig::Gguf { path } => path,
            DecoderConfig::Safetensors { dir } => dir,
        }
    }
}
