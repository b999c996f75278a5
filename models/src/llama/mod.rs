//! A Llama-family decoder (RMSNorm, SwiGLU, grouped-query attention, RoPE; with Qwen2's and Qwen3's
//! additions, [`Family`]) whose attention reads spectra's compacting KV cache: entries keep their
//! original positions, per-head lengths may differ, and a chunk of new tokens only ever attends over
//! `chunk × cache` scores, never `n × n`.

mod attention;
mod config;
mod decoder;
mod embedding;
mod family;
mod gguf;
mod hf;
mod reread;
mod rotary;
mod tokenizer;
mod weights;

use std::path::Path;

use candle_core::{DType, Device, Tensor, D};
use spectra_core::{Error, Result};

pub use config::LlamaConfig;
pub use family::Family;
pub use gguf::GgufFile;
pub use tokenizer::TextTokenizer;
pub use weights::{LlamaWeights, WeightFormat};

pub struct Llama {
    pub config: LlamaConfig,
    weights: LlamaWeights,
    device: Device,
    /// How the caches it makes store keys and values.
    kv_dtype: DType,
}

impl Llama {
    /// Loads a GGUF file with its tokenizer.
    pub fn from_gguf(
        path: &Path,
        device: &Device,
        format: WeightFormat,
    ) -> Result<(Self, TextTokenizer)> {
        let mut file = GgufFile::open(path)?;
        let config = file.config()?;
        let weights = file.weights(&config, device, format)?;
        let tokenizer = TextTokenizer::from_gguf(&file)?;
        Ok((
            Llama {
                config,
                weights,
                device: device.clone(),
                kv_dtype: DType::F32,
            },
            tokenizer,
        ))
    }

    /// Loads a Hugging Face folder (`config.json`, `*.safetensors`).
    pub fn from_hf(dir: &Path, device: &Device) -> Result<Self> {
        let (config, weights) = hf::load(dir, device)?;
        Ok(Llama {
            config,
            weights,
            device: device.clone(),
            kv_dtype: DType::F32,
        })
    }

    /// Loads a GGUF file, or a Hugging Face folder with its `tokenizer.json`.
    pub fn load(
        path: &Path,
        device: &Device,
        format: WeightFormat,
    ) -> Result<(Self, TextTokenizer)> {
        if path.is_dir() {
            let tokenizer = TextTokenizer::from_file(&path.join("tokenizer.json"))?;
            Ok((Llama::from_hf(path, device)?, tokenizer))
        } else {
            Llama::from_gguf(path, device, format)
        }
    }

    /// This model, making caches that store keys and values as `dtype` (f32, the default; f16 or bf16
    /// halve the bytes a decoding step reads and eviction then divides).
    pub fn with_kv_dtype(mut self, dtype: DType) -> Result<Self> {
        if !matches!(dtype, DType::F32 | DType::F16 | DType::BF16) {
            return Err(Error::invalid(
                "KV cache dtype",
                format!("{dtype:?} is not one of f32, f16, bf16"),
            ));
        }
        self.kv_dtype = dtype;
        Ok(self)
    }
}

/// Per row of `logits` (`[rows, vocab]`): the negative log-likelihood of that row's target, in nats
/// (log-softmax in f32), and the row's most likely token.
pub fn score_targets(logits: &Tensor, targets: &[u32]) -> Result<(Vec<f64>, Vec<u32>)> {
    let logits = logits.to_dtype(DType::F32)?;
    let log_probs = candle_nn::ops::log_softmax(&logits, D::Minus1)?;
    let ids = Tensor::new(targets, logits.device())?.unsqueeze(1)?;
    let picked = log_probs.gather(&ids, 1)?.squeeze(1)?.to_vec1::<f32>()?;
    let top = logits.argmax(D::Minus1)?.to_vec1::<u32>()?;
    Ok((picked.iter().map(|&p| -f64::from(p)).collect(), top))
}
