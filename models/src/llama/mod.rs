//! A Llama-family decoder (RMSNorm, SwiGLU, grouped-query attention, RoPE) whose attention reads
//! spectra's compacting KV cache: entries keep their original positions, per-head lengths may differ,
//! and a chunk of new tokens only ever attends over `chunk × cache` scores, never `n × n`.

mod config;
mod decode_attention;
mod gguf;
mod hf;
mod reread;
mod rotary;
mod session;
mod tokenizer;
mod weights;

use std::path::Path;

use candle_core::{DType, Device, Tensor, D};
use spectra_core::ops::cpu_slice;
use spectra_core::{Error, Result};
use spectra_kv::{KvCache, KvCacheShape};

pub use config::LlamaConfig;
pub use gguf::GgufFile;
pub use reread::RereadPrompt;
pub use session::{PrefillCompression, Session};
pub use tokenizer::TextTokenizer;
use weights::Linear;
pub use weights::{LlamaWeights, WeightFormat};

pub struct Llama {
    pub config: LlamaConfig,
    weights: LlamaWeights,
    device: Device,
    /// How the caches it makes store keys and values.
    kv_dtype: DType,
}

/// Which rows of logits a forward pass returns.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Logits {
    /// Only the last token's (decoding).
    Last,
    /// Every token's (scoring a text).
    All,
}

/// Receives a layer's queries exactly as fed to RoPE, `[heads, tokens, head_dim]`.
pub type QueryHook<'a> = &'a mut dyn FnMut(usize, &Tensor) -> Result<()>;

/// What the forward pass hands to KV policies and to calibration besides logits.
#[derive(Default)]
pub struct Taps<'a> {
    /// Keep the post-RoPE queries of this many most recent positions per layer (`[heads, w, head_dim]`).
    pub window: usize,
    pub window_queries: Vec<Option<Tensor>>,
    /// Called per layer with its pre-RoPE queries (calibration).
    pub pre_rope_queries: Option<QueryHook<'a>>,
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

    pub fn device(&self) -> &Device {
        &self.device
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

    /// An empty cache shaped for this model.
    pub fn new_cache(&self, tracks_attention: bool) -> Result<KvCache> {
        let shape = KvCacheShape {
            layers: self.config.layers,
            kv_heads: self.config.kv_heads,
            head_dim: self.config.head_dim,
            group_size: self.config.group_size(),
        };
        KvCache::new(shape, self.kv_dtype, &self.device, tracks_attention)
    }

    /// Runs `tokens` at `positions` (increasing, after everything cached), appending their keys and
    /// values to `cache`, and returns logits `[rows, vocab]`.
    pub fn forward(
        &self,
        tokens: &[u32],
        positions: &[u64],
        cache: &mut KvCache,
        taps: &mut Taps<'_>,
        rows: Logits,
    ) -> Result<Tensor> {
        let c = &self.config;
        if tokens.len() != positions.len() || tokens.is_empty() {
            return Err(Error::invalid(
                "forward",
                format!("{} tokens for {} positions", tokens.len(), positions.len()),
            ));
        }
        if let Some(&bad) = tokens.iter().find(|&&t| t as usize >= c.vocab) {
            return Err(Error::invalid(
                "forward",
                format!("token id {bad} is outside the vocabulary of {}", c.vocab),
            ));
        }
        let t = tokens.len();
        let ids = Tensor::new(tokens, &self.device)?;
        let mut x = self.weights.embed.index_select(&ids, 0)?;
        if taps.window_queries.len() < c.layers {
            taps.window_queries.resize(c.layers, None);
        }
        // Shared by every layer: the rotation tables of these positions, and (for a chunk) the causal
        // triangle over its newest entries.
        let rotary = rotary::Rotary::new(&c.rope, positions, &self.device)?;
        let causal = (t > 1).then(|| causal_mask(t, &self.device)).transpose()?;
        for (l, w) in self.weights.layers.iter().enumerate() {
            let h = candle_nn::ops::rms_norm(&x, &w.attn_norm, c.rms_eps as f32)?;
            let heads = |projected: &Tensor, n: usize| -> Result<Tensor> {
                Ok(projected
                    .reshape((t, n, c.head_dim))?
                    .transpose(0, 1)?
                    .contiguous()?)
            };
            let projected = Linear::forward_all(&[&w.q, &w.k, &w.v], &h)?;
            let q = heads(&projected[0], c.heads)?;
            let k = heads(&projected[1], c.kv_heads)?;
            let v = heads(&projected[2], c.kv_heads)?;
            if let Some(hook) = taps.pre_rope_queries.as_mut() {
                hook(l, &q)?;
            }
            let q = rotary.apply(&q)?;
            let k = rotary.apply(&k)?;
            cache.append(l, &k, &v, positions)?;
            if taps.window > 0 {
                taps.window_queries[l] =
                    Some(recent(taps.window_queries[l].take(), &q, taps.window)?);
            }
            let attended = self.attend(l, &q, cache, causal.as_ref())?;
            x = (x + w.o.forward(&attended)?)?;
            let h = candle_nn::ops::rms_norm(&x, &w.ffn_norm, c.rms_eps as f32)?;
            let gate_up = Linear::forward_all(&[&w.gate, &w.up], &h)?;
            let gated = (candle_nn::ops::silu(&gate_up[0])? * &gate_up[1])?;
            x = (x + w.down.forward(&gated)?)?;
        }
        let x = match rows {
            Logits::Last => x.narrow(0, t - 1, 1)?,
            Logits::All => x,
        };
        let x = candle_nn::ops::rms_norm(&x, &self.weights.norm, c.rms_eps as f32)?;
        self.weights.head.forward(&x)
    }

    /// Attention of `q` (`[heads, t, head_dim]`, the newest `t` tokens) over each KV head's cache, whose
    /// last `t` entries are those tokens. Returns `[t, heads·head_dim]`.
    /// `causal` is [`causal_mask`] of `t`, given when `t > 1`.
    fn attend(
        &self,
        layer: usize,
        q: &Tensor,
        cache: &mut KvCache,
        causal: Option<&Tensor>,
    ) -> Result<Tensor> {
        let c = &self.config;
        let (g, t, d) = (c.group_size(), q.dim(1)?, c.head_dim);
        let scale = 1.0 / (d as f64).sqrt();
        if t == 1
            && q.device().is_cpu()
            && q.dtype() == DType::F32
            && matches!(cache.dtype(), DType::F32 | DType::F16)
        {
            return self.attend_one_token(layer, q, cache, scale as f32);
        }
        let mut outputs = Vec::with_capacity(c.kv_heads);
        for kv in 0..c.kv_heads {
            // An f16 cache is widened for the chunk's products.
            let keys = cache.keys(layer, kv)?.to_dtype(q.dtype())?;
            let values = cache.values(layer, kv)?.to_dtype(q.dtype())?;
            let n = keys.dim(0)?;
            let qg = q.narrow(0, kv * g, g)?.reshape((g * t, d))?;
            let mut scores = (qg.matmul(&keys.t()?)? * scale)?;
            // Only the newest t entries can lie in a query's future: mask those with the triangle.
            if let Some(mask) = causal {
                let old = scores.narrow(1, 0, n - t)?;
                let new = scores
                    .narrow(1, n - t, t)?
                    .reshape((g, t, t))?
                    .broadcast_add(mask)?
                    .reshape((g * t, t))?;
                scores = Tensor::cat(&[old, new], 1)?;
            }
            let probs = candle_nn::ops::softmax_last_dim(&scores)?;
            if cache.tracks_attention() {
                // Summed over the group's queries on the device; nothing comes to the host.
                cache.add_attention(layer, kv, &probs.sum(0)?)?;
            }
            outputs.push(probs.matmul(&values)?.reshape((g, t, d))?);
        }
        Ok(Tensor::cat(&outputs, 0)?
            .transpose(0, 1)?
            .reshape((t, c.heads * d))?)
    }
}

impl Llama {
    /// [`Llama::attend`] for one new token on the CPU, fused ([`decode_attention`]), over an f32 or
    /// f16 cache.
    fn attend_one_token(
        &self,
        layer: usize,
        q: &Tensor,
        cache: &mut KvCache,
        scale: f32,
    ) -> Result<Tensor> {
        let c = &self.config;
        let stores = (0..c.kv_heads)
            .map(|kv| {
                Ok((
                    cache.keys(layer, kv)?.storage_and_layout(),
                    cache.values(layer, kv)?.storage_and_layout(),
                ))
            })
            .collect::<Result<Vec<_>>>()?;
        let mut received = cache
            .tracks_attention()
            .then(|| vec![Vec::new(); c.kv_heads]);
        let out = crate::cpu_op::with_f32(q, "decode attention", |q| -> Result<Vec<f32>> {
            let received = received.as_deref_mut();
            macro_rules! attend_as {
                ($element:ty) => {{
                    let heads = stores
                        .iter()
                        .map(|((ks, kl), (vs, vl))| {
                            Ok(decode_attention::HeadEntries {
                                keys: cpu_slice::<$element>(ks, kl, "decode attention")?,
                                values: cpu_slice::<$element>(vs, vl, "decode attention")?,
                            })
                        })
                        .collect::<Result<Vec<_>>>()?;
                    decode_attention::attend_one_token(
                        q,
                        &heads,
                        c.group_size(),
                        c.head_dim,
                        scale,
                        received,
                    )
                }};
            }
            Ok(match cache.dtype() {
                DType::F16 => attend_as!(half::f16),
                _ => attend_as!(f32),
            })
        })??;
        drop(stores);
        if let Some(received) = received {
            for (kv, r) in received.into_iter().enumerate() {
                let n = r.len();
                cache.add_attention(layer, kv, &Tensor::from_vec(r, n, &self.device)?)?;
            }
        }
        Ok(Tensor::from_vec(
            out,
            (1, c.heads * c.head_dim),
            &self.device,
        )?)
    }
}

/// `[t, t]`: 0 on and below the diagonal, −∞ above.
fn causal_mask(t: usize, device: &Device) -> Result<Tensor> {
    let mask: Vec<f32> = (0..t)
        .flat_map(|i| (0..t).map(move |j| if j > i { f32::NEG_INFINITY } else { 0.0 }))
        .collect();
    Ok(Tensor::from_vec(mask, (t, t), device)?)
}

/// The last `window` rows (along dim 1) of `previous` followed by `new`.
fn recent(previous: Option<Tensor>, new: &Tensor, window: usize) -> Result<Tensor> {
    let all = match previous {
        Some(p) => Tensor::cat(&[&p, new], 1)?,
        None => new.clone(),
    };
    let len = all.dim(1)?;
    Ok(all
        .narrow(1, len.saturating_sub(window), len.min(window))?
        .contiguous()?)
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
