//! Loading a Llama-family decoder from a Hugging Face folder: `config.json` and `*.safetensors`.

use std::collections::HashMap;
use std::path::Path;

use candle_core::quantized::QMatMul;
use candle_core::{DType, Device, Tensor};
use spectra_core::{Error, Result};

use super::config::LlamaConfig;
use super::embedding::Embedding;
use super::family::LayerExtras;
use super::weights::{LayerWeights, LlamaWeights, WeightMatrix};

pub fn load(dir: &Path, device: &Device) -> Result<(LlamaConfig, LlamaWeights)> {
    let config_path = dir.join("config.json");
    let text = std::fs::read_to_string(&config_path)
        .map_err(|e| Error::file(&config_path, format!("cannot read the model config: {e}")))?;
    let config = LlamaConfig::from_hf_json(&text, &config_path)?;
    let mut files: Vec<_> = std::fs::read_dir(dir)
        .map_err(|e| Error::file(dir, format!("cannot list the model folder: {e}")))?
        .filter_map(|entry| entry.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "safetensors"))
        .collect();
    files.sort();
    if files.is_empty() {
        return Err(Error::file(
            dir,
            "no *.safetensors file in the model folder",
        ));
    }
    let mut tensors = HashMap::new();
    for file in &files {
        let loaded = candle_core::safetensors::load(file, device).map_err(|e| {
            Error::file(
                file,
                format!("not a readable safetensors file (corrupt or truncated?): {e}"),
            )
        })?;
        tensors.extend(loaded);
    }
    let mut take = |name: &str| -> Result<Tensor> {
        let t = tensors
            .remove(name)
            .ok_or_else(|| Error::file(dir, format!("tensor `{name}` is missing")))?;
        Ok(t.to_dtype(DType::F32)?)
    };
    let embed = take("model.embed_tokens.weight")?;
    let mut layers = Vec::with_capacity(config.layers);
    for l in 0..config.layers {
        let mut tensor = |name: &str| take(&format!("model.layers.{l}.{name}"));
        let mut matrix = |name: &str| -> Result<WeightMatrix> {
            Ok(WeightMatrix::Candle(QMatMul::Tensor(tensor(&format!(
                "{name}.weight"
            ))?)))
        };
        let (q, k, v, o) = (
            matrix("self_attn.q_proj")?,
            matrix("self_attn.k_proj")?,
            matrix("self_attn.v_proj")?,
            matrix("self_attn.o_proj")?,
        );
        let (gate, up, down) = (
            matrix("mlp.gate_proj")?,
            matrix("mlp.up_proj")?,
            matrix("mlp.down_proj")?,
        );
        let LayerExtras { qkv_bias, qk_norm } = config.family.layer_extras(
            [
                "self_attn.q_proj.bias",
                "self_attn.k_proj.bias",
                "self_attn.v_proj.bias",
            ],
            ["self_attn.q_norm.weight", "self_attn.k_norm.weight"],
            &mut tensor,
        )?;
        layers.push(LayerWeights {
            attn_norm: take(&format!("model.layers.{l}.input_layernorm.weight"))?,
            q,
            k,
            v,
            qkv_bias,
            qk_norm,
            o,
            ffn_norm: take(&format!("model.layers.{l}.post_attention_layernorm.weight"))?,
            gate,
            up,
            down,
        });
    }
    let norm = take("model.norm.weight")?;
    let head = match take("lm_head.weight") {
        Ok(t) => WeightMatrix::Candle(QMatMul::Tensor(t)),
        Err(_) if config.tied_embeddings => WeightMatrix::Candle(QMatMul::Tensor(embed.clone())),
        Err(e) => return Err(e),
    };
    let weights = LlamaWeights {
        embed: Embedding::Dense(embed),
        layers,
        norm,
        head,
    };
    weights.check(&config, dir)?;
    Ok((config, weights))
}
