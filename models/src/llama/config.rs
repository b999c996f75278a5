//! Hyper-parameters of a Llama-family decoder, read from GGUF metadata or a Hugging Face config.json.

use std::path::Path;

use serde::Deserialize;
use spectra_core::rope::{RopePairing, RopeScaling, RopeSpec};
use spectra_core::{Error, Result};

use super::family::Family;

#[derive(Clone, Debug, PartialEq)]
pub struct LlamaConfig {
    pub family: Family,
    pub vocab: usize,
    pub hidden: usize,
    pub layers: usize,
    pub heads: usize,
    pub kv_heads: usize,
    pub head_dim: usize,
    /// Width of the SwiGLU hidden layer.
    pub ffn: usize,
    pub rms_eps: f64,
    pub rope: RopeSpec,
    pub max_context: usize,
    pub tied_embeddings: bool,
}

impl LlamaConfig {
    /// Query heads per KV head.
    pub fn group_size(&self) -> usize {
        self.heads / self.kv_heads
    }

    pub fn check(&self, source: &Path) -> Result<()> {
        let bad = |m: String| Err(Error::file(source, m));
        if self.heads == 0 || self.kv_heads == 0 || !self.heads.is_multiple_of(self.kv_heads) {
            return bad(format!(
                "{} query heads cannot share {} KV heads evenly",
                self.heads, self.kv_heads
            ));
        }
        if self.head_dim == 0 || !self.head_dim.is_multiple_of(2) {
            return bad(format!(
                "head dimension {} must be even for RoPE",
                self.head_dim
            ));
        }
        for (name, size) in [
            ("layers", self.layers),
            ("vocabulary", self.vocab),
            ("hidden size", self.hidden),
            ("feed-forward size", self.ffn),
        ] {
            if size == 0 {
                return bad(format!("the {name} is 0; the model's config is damaged"));
            }
        }
        Ok(())
    }
}

/// The fields of a Hugging Face `config.json` that a Llama decoder needs.
#[derive(Debug, Deserialize)]
struct HfConfig {
    #[serde(default = "default_model_type")]
    model_type: String,
    vocab_size: usize,
    hidden_size: usize,
    num_hidden_layers: usize,
    num_attention_heads: usize,
    num_key_value_heads: Option<usize>,
    head_dim: Option<usize>,
    intermediate_size: usize,
    rms_norm_eps: f64,
    #[serde(default = "default_rope_theta")]
    rope_theta: f64,
    rope_scaling: Option<HfRopeScaling>,
    #[serde(default = "default_context")]
    max_position_embeddings: usize,
    #[serde(default)]
    tie_word_embeddings: bool,
}

#[derive(Debug, Deserialize)]
struct HfRopeScaling {
    #[serde(alias = "type")]
    rope_type: String,
    factor: Option<f64>,
    low_freq_factor: Option<f64>,
    high_freq_factor: Option<f64>,
    original_max_position_embeddings: Option<f64>,
    beta_fast: Option<f64>,
    beta_slow: Option<f64>,
}

fn default_model_type() -> String {
    "llama".into()
}

fn default_rope_theta() -> f64 {
    10000.0
}

fn default_context() -> usize {
    2048
}

impl LlamaConfig {
    /// Parses a Hugging Face `config.json` (Hugging Face checkpoints pair RoPE coordinates by halves).
    pub fn from_hf_json(text: &str, source: &Path) -> Result<Self> {
        let hf: HfConfig = serde_json::from_str(text)
            .map_err(|e| Error::file(source, format!("not a Llama config.json: {e}")))?;
        let head_dim = hf
            .head_dim
            .unwrap_or(hf.hidden_size / hf.num_attention_heads.max(1));
        let scaling = match &hf.rope_scaling {
            None => RopeScaling::None,
            Some(s) => hf_scaling(s).map_err(|m| Error::file(source, m))?,
        };
        let family = Family::from_name(&hf.model_type).ok_or_else(|| {
            Error::file(
                source,
                format!(
                    "model_type `{}` is not a decoder spectra runs (known: {})",
                    hf.model_type,
                    Family::names()
                ),
            )
        })?;
        let config = LlamaConfig {
            family,
            vocab: hf.vocab_size,
            hidden: hf.hidden_size,
            layers: hf.num_hidden_layers,
            heads: hf.num_attention_heads,
            kv_heads: hf.num_key_value_heads.unwrap_or(hf.num_attention_heads),
            head_dim,
            ffn: hf.intermediate_size,
            rms_eps: hf.rms_norm_eps,
            rope: RopeSpec::new(head_dim, hf.rope_theta, RopePairing::Half, scaling),
            max_context: hf.max_position_embeddings,
            tied_embeddings: hf.tie_word_embeddings,
        };
        config.check(source)?;
        Ok(config)
    }
}

fn hf_scaling(s: &HfRopeScaling) -> std::result::Result<RopeScaling, String> {
    let need = |v: Option<f64>, name: &str| {
        v.ok_or(format!("rope_scaling `{}` needs `{name}`", s.rope_type))
    };
    Ok(match s.rope_type.as_str() {
        "default" => RopeScaling::None,
        "linear" => RopeScaling::Linear {
            factor: need(s.factor, "factor")?,
        },
        "llama3" => RopeScaling::Llama3 {
            factor: need(s.factor, "factor")?,
            low_freq_factor: need(s.low_freq_factor, "low_freq_factor")?,
            high_freq_factor: need(s.high_freq_factor, "high_freq_factor")?,
            original_max_position: need(
                s.original_max_position_embeddings,
                "original_max_position_embeddings",
            )?,
        },
        "yarn" => RopeScaling::Yarn {
            factor: need(s.factor, "factor")?,
            original_max_position: need(
                s.original_max_position_embeddings,
                "original_max_position_embeddings",
            )?,
            beta_fast: s.beta_fast.unwrap_or(32.0),
            beta_slow: s.beta_slow.unwrap_or(1.0),
        },
        other => {
            return Err(format!(
                "rope_scaling type `{other}` is not supported (default, linear, llama3, yarn are)"
            ))
        }
    })
}
