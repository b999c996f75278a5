//! Loading a Llama-family decoder from a GGUF file (llama.cpp's format).

use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use candle_core::quantized::gguf_file::{Content, Value};
use candle_core::quantized::{GgmlDType, QTensor};
use candle_core::{Device, Tensor};
use spectra_core::rope::{RopeScaling, RopeSpec};
use spectra_core::{Error, Result};

use super::config::LlamaConfig;
use super::embedding::Embedding;
use super::family::{Family, LayerExtras};
use super::weights::{LayerWeights, LlamaWeights, WeightFormat, WeightMatrix};
use spectra_kernels::quantized_matmul::BlockFormat;

/// An open GGUF file: its metadata and tensor index, read once.
pub struct GgufFile {
    path: PathBuf,
    file: File,
    pub content: Content,
}

/// Every tensor's element count, computed without overflow, and its bytes within the file: candle
/// checks the bytes from a product that can wrap, and then allocates the unwrapped count.
fn check_tensor_sizes(content: &Content, path: &Path, file_len: u64) -> Result<()> {
    for (name, info) in &content.tensor_infos {
        let dims = info.shape.dims();
        let bytes = dims
            .iter()
            .try_fold(1usize, |n, &d| n.checked_mul(d))
            .filter(|&n| n.checked_mul(std::mem::size_of::<f32>()).is_some())
            .map(|n| n / info.ggml_dtype.block_size() * info.ggml_dtype.type_size());
        if bytes.is_none_or(|b| b as u64 > file_len) {
            return Err(Error::file(
                path,
                format!(
                    "tensor `{name}` claims shape {dims:?}, more than the file holds (corrupt or \
                     truncated?)"
                ),
            ));
        }
    }
    Ok(())
}

impl GgufFile {
    pub fn open(path: &Path) -> Result<Self> {
        let mut file = File::open(path).map_err(|e| {
            Error::file(
                path,
                format!("cannot open the model: {e}; scripts/get-model.sh fetches SmolLM2-135M"),
            )
        })?;
        let content = Content::read(&mut file).map_err(|e| {
            Error::file(
                path,
                format!("not a readable GGUF file (corrupt or truncated?): {e}"),
            )
        })?;
        check_tensor_sizes(
            &content,
            path,
            file.metadata().map_or(u64::MAX, |m| m.len()),
        )?;
        Ok(GgufFile {
            path: path.to_path_buf(),
            file,
            content,
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn metadata(&self, key: &str) -> Result<&Value> {
        self.content
            .metadata
            .get(key)
            .ok_or_else(|| Error::file(&self.path, format!("GGUF metadata `{key}` is missing")))
    }

    fn usize(&self, key: &str) -> Result<usize> {
        let v = self.metadata(key)?;
        v.to_u64()
            .map(|x| x as usize)
            .or_else(|_| v.to_u32().map(|x| x as usize))
            .map_err(|e| Error::file(&self.path, format!("GGUF metadata `{key}`: {e}")))
    }

    fn f64(&self, key: &str) -> Result<f64> {
        let v = self.metadata(key)?;
        v.to_f32()
            .map(f64::from)
            .or_else(|_| v.to_f64())
            .map_err(|e| Error::file(&self.path, format!("GGUF metadata `{key}`: {e}")))
    }

    pub fn tensor(&mut self, name: &str, device: &Device) -> Result<QTensor> {
        if !self.content.tensor_infos.contains_key(name) {
            return Err(Error::file(
                &self.path,
                format!("tensor `{name}` is missing"),
            ));
        }
        let t = self
            .content
            .tensor(&mut self.file, name, device)
            .map_err(|e| {
                Error::file(
                    &self.path,
                    format!("tensor `{name}` cannot be read (truncated file?): {e}"),
                )
            })?;
        if let Some(place) = non_finite(&t)? {
            return Err(Error::file(
                &self.path,
                format!(
                    "tensor `{name}` holds NaN or Inf ({place}), which would spread to every \
                     logit: the file is damaged; fetch it again"
                ),
            ));
        }
        Ok(t)
    }

    fn has_tensor(&self, name: &str) -> bool {
        self.content.tensor_infos.contains_key(name)
    }

    /// Refuses a file whose tensor `name` is missing or is not shaped `want` (candle's order).
    fn expect_shape(&self, name: &str, want: &[usize]) -> Result<()> {
        let info = self
            .content
            .tensor_infos
            .get(name)
            .ok_or_else(|| Error::file(&self.path, format!("tensor `{name}` is missing")))?;
        if info.shape.dims() != want {
            return Err(Error::file(
                &self.path,
                format!(
                    "tensor `{name}` has shape {:?}, but the metadata's sizes make it {want:?} \
                     (corrupt or inconsistent file?)",
                    info.shape.dims()
                ),
            ));
        }
        Ok(())
    }

    /// The decoder's hyper-parameters, read under the file's own architecture (`qwen2.block_count`).
    pub fn config(&self) -> Result<LlamaConfig> {
        let arch = self
            .metadata("general.architecture")?
            .to_string()
            .map_err(|e| Error::file(&self.path, e.to_string()))?;
        let family = Family::from_name(arch).ok_or_else(|| {
            Error::file(
                &self.path,
                format!(
                    "architecture `{arch}` is not a decoder spectra runs (known: {})",
                    Family::names()
                ),
            )
        })?;
        let key = |name: &str| format!("{arch}.{name}");
        let hidden = self.usize(&key("embedding_length"))?;
        let heads = self.usize(&key("attention.head_count"))?;
        let kv_heads = self.usize(&key("attention.head_count_kv")).unwrap_or(heads);
        // Qwen3's heads are wider than hidden / heads; its files say so in `key_length`.
        let head_dim = self
            .usize(&key("attention.key_length"))
            .or_else(|_| self.usize(&key("rope.dimension_count")))
            .unwrap_or(hidden / heads.max(1));
        let base = self.f64(&key("rope.freq_base")).unwrap_or(10000.0);
        let scaling = self.rope_scaling(arch)?;
        let vocab = match self.metadata("tokenizer.ggml.tokens") {
            Ok(Value::Array(tokens)) => tokens.len(),
            _ => self.usize(&key("vocab_size"))?,
        };
        let layers = self.usize(&key("block_count"))?;
        let ffn = self.usize(&key("feed_forward_length"))?;
        // Sizes from the metadata are trusted only as far as the tensors bear them out: a corrupt
        // count would otherwise size allocations (RoPE's tables, the layer list) before any
        // tensor is read.
        let rows = usize::saturating_mul;
        for (name, want) in [
            ("token_embd.weight", [vocab, hidden]),
            ("blk.0.attn_q.weight", [rows(heads, head_dim), hidden]),
            ("blk.0.attn_k.weight", [rows(kv_heads, head_dim), hidden]),
            ("blk.0.ffn_up.weight", [ffn, hidden]),
        ] {
            self.expect_shape(name, &want)?;
        }
        let last = format!("blk.{}.attn_norm.weight", layers.max(1) - 1);
        if layers == 0 || !self.has_tensor(&last) {
            return Err(Error::file(
                &self.path,
                format!("{arch}.block_count says {layers} layers, but the file has no `{last}`"),
            ));
        }
        let config = LlamaConfig {
            family,
            vocab,
            hidden,
            layers,
            heads,
            kv_heads,
            head_dim,
            ffn,
            rms_eps: self.f64(&key("attention.layer_norm_rms_epsilon"))?,
            rope: RopeSpec::new(head_dim, base, family.gguf_rope_pairing(), scaling),
            max_context: self.usize(&key("context_length")).unwrap_or(2048),
            tied_embeddings: !self.has_tensor("output.weight"),
        };
        config.check(&self.path)?;
        Ok(config)
    }

    fn rope_scaling(&self, arch: &str) -> Result<RopeScaling> {
        let key = |name: &str| format!("{arch}.rope.scaling.{name}");
        let Ok(kind) = self.metadata(&key("type")) else {
            return Ok(RopeScaling::None);
        };
        let kind = kind
            .to_string()
            .map_err(|e| Error::file(&self.path, e.to_string()))?;
        Ok(match kind.as_str() {
            "none" => RopeScaling::None,
            "linear" => RopeScaling::Linear {
                factor: self.f64(&key("factor"))?,
            },
            "yarn" => RopeScaling::Yarn {
                factor: self.f64(&key("factor"))?,
                original_max_position: self.f64(&key("original_context_length"))?,
                beta_fast: 32.0,
                beta_slow: 1.0,
            },
            other => {
                return Err(Error::file(
                    &self.path,
                    format!("RoPE scaling `{other}` is not supported (linear, yarn are)"),
                ))
            }
        })
    }

    /// Reads every weight. Matrices stay quantized, or are expanded to f32 ([`WeightFormat`]).
    pub fn weights(
        &mut self,
        config: &LlamaConfig,
        device: &Device,
        format: WeightFormat,
    ) -> Result<LlamaWeights> {
        let embed_q = self.tensor("token_embd.weight", device)?;
        let embed = Embedding::from_qtensor(&embed_q, device)?;
        let mut layers = Vec::new();
        for l in 0..config.layers {
            let mut matrix = |name: &str| -> Result<WeightMatrix> {
                let t = self.tensor(&format!("blk.{l}.{name}.weight"), device)?;
                format.matmul(t, device)
            };
            let (q, k, v, o) = (
                matrix("attn_q")?,
                matrix("attn_k")?,
                matrix("attn_v")?,
                matrix("attn_output")?,
            );
            let (gate, up, down) = (matrix("ffn_gate")?, matrix("ffn_up")?, matrix("ffn_down")?);
            let mut vector = |name: &str| -> Result<Tensor> {
                Ok(self
                    .tensor(&format!("blk.{l}.{name}"), device)?
                    .dequantize(device)?)
            };
            let LayerExtras { qkv_bias, qk_norm } = config.family.layer_extras(
                ["attn_q.bias", "attn_k.bias", "attn_v.bias"],
                ["attn_q_norm.weight", "attn_k_norm.weight"],
                &mut vector,
            )?;
            layers.push(LayerWeights {
                attn_norm: vector("attn_norm.weight")?,
                q,
                k,
                v,
                qkv_bias,
                qk_norm,
                o,
                ffn_norm: vector("ffn_norm.weight")?,
                gate,
                up,
                down,
            });
        }
        let head = match (&embed, config.tied_embeddings, format) {
            // A tied head multiplies the very blocks the embedding looks its rows up in.
            (Embedding::Blocks(m), true, WeightFormat::AsStored) => {
                WeightMatrix::Blocks(Arc::clone(m))
            }
            (_, true, _) => format.matmul(embed_q, device)?,
            (_, false, _) => format.matmul(self.tensor("output.weight", device)?, device)?,
        };
        let norm = self
            .tensor("output_norm.weight", device)?
            .dequantize(device)?;
        let weights = LlamaWeights {
            embed,
            layers,
            norm,
            head,
        };
        weights.check(config, &self.path)?;
        Ok(weights)
    }
}

/// Where a tensor first holds NaN or Inf: an element of an f32, f16 or bf16 tensor, or a block's
/// scale in the block formats spectra reads (their quantized values are integers). Other formats
/// are not looked into.
fn non_finite(t: &QTensor) -> Result<Option<String>> {
    let data = t.data()?;
    let element = |bytes: usize, bad: &dyn Fn(&[u8]) -> bool| {
        data.chunks_exact(bytes)
            .position(bad)
            .map(|i| format!("element {i}"))
    };
    Ok(match t.dtype() {
        GgmlDType::F32 => element(4, &|b| {
            !f32::from_le_bytes([b[0], b[1], b[2], b[3]]).is_finite()
        }),
        GgmlDType::F16 => element(2, &|b| !half::f16::from_le_bytes([b[0], b[1]]).is_finite()),
        GgmlDType::BF16 => element(2, &|b| !half::bf16::from_le_bytes([b[0], b[1]]).is_finite()),
        dtype => BlockFormat::of(dtype).and_then(|f| {
            f.first_non_finite_unit(&data)
                .map(|u| format!("the scales of block {u} of {f:?}"))
        }),
    })
}
