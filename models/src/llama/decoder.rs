//! The Llama decoder's forward pass over a batch of sequences: every linear layer takes all of the
//! batch's rows at once, so its weights are read once per pass however many sequences decode;
//! attention reads each sequence's own compacting cache.

use candle_core::{DType, Device, Tensor};
use spectra_core::rope::RopeSpec;
use spectra_core::{Error, Result};
use spectra_inference::{CausalDecoder, Logits, ReconstructionScores, RereadPrompt, SequenceRows};
use spectra_kv::{KvCache, KvCacheShape};

use super::attention::{attend, causal_mask, rows_of, BatchRows};
use super::rotary::rope_at;
use super::weights::{RowKinds, WeightMatrix};
use super::Llama;

impl CausalDecoder for Llama {
    fn cache_shape(&self) -> KvCacheShape {
        KvCacheShape {
            layers: self.config.layers,
            kv_heads: self.config.kv_heads,
            head_dim: self.config.head_dim,
            group_size: self.config.group_size(),
        }
    }

    fn kv_dtype(&self) -> DType {
        self.kv_dtype
    }

    fn device(&self) -> &Device {
        &self.device
    }

    fn rope(&self) -> &RopeSpec {
        &self.config.rope
    }

    fn context_len(&self) -> usize {
        self.config.max_context
    }

    fn vocab(&self) -> usize {
        self.config.vocab
    }

    fn weight_bytes(&self) -> usize {
        self.weights.bytes()
    }

    fn forward(&self, batch: &mut [SequenceRows<'_>]) -> Result<Vec<Tensor>> {
        let c = &self.config;
        let rows = BatchRows::of(batch, c.vocab, &self.device)?;
        let mut x = self.weights.embed.rows(&rows.tokens, &self.device)?;
        for s in batch.iter_mut() {
            for recorded in [
                &mut s.taps.window_queries,
                &mut s.taps.pre_rope_queries,
                &mut s.taps.layer_inputs,
            ] {
                if recorded.len() < c.layers {
                    recorded.resize(c.layers, None);
                }
            }
        }
        // Shared by every layer: the rotation tables of every row's position.
        let rotary = rope_at(&c.rope, &rows.positions, &self.device)?;
        let t = rows.tokens.len();
        let kinds = RowKinds::of(rows.ranges.iter().map(|r| r.len()));
        for (l, w) in self.weights.layers.iter().enumerate() {
            let h = candle_nn::ops::rms_norm(&x, &w.attn_norm, c.rms_eps as f32)?;
            for (s, range) in batch.iter_mut().zip(&rows.ranges) {
                if s.taps.record_layer_inputs {
                    s.taps.layer_inputs[l] = Some(h.narrow(0, range.start, range.len())?);
                }
            }
            let heads = |projected: &Tensor, n: usize| -> Result<Tensor> {
                Ok(projected
                    .reshape((t, n, c.head_dim))?
                    .transpose(0, 1)?
                    .contiguous()?)
            };
            let mut projected = WeightMatrix::forward_all(&[&w.q, &w.k, &w.v], &h, &kinds)?;
            if let Some(biases) = &w.qkv_bias {
                for (p, b) in projected.iter_mut().zip(biases) {
                    *p = p.broadcast_add(b)?;
                }
            }
            if let Some([q_norm, k_norm]) = &w.qk_norm {
                // Each head's vector normalized on its own: RMSNorm over the last of [t, heads, d].
                let per_head = |p: &Tensor, n: usize, weight: &Tensor| -> Result<Tensor> {
                    let p = p.reshape((t, n, c.head_dim))?;
                    Ok(candle_nn::ops::rms_norm(&p, weight, c.rms_eps as f32)?
                        .reshape((t, n * c.head_dim))?)
                };
                projected[0] = per_head(&projected[0], c.heads, q_norm)?;
                projected[1] = per_head(&projected[1], c.kv_heads, k_norm)?;
            }
            let q = heads(&projected[0], c.heads)?;
            let k = heads(&projected[1], c.kv_heads)?;
            let v = heads(&projected[2], c.kv_heads)?;
            for (s, range) in batch.iter_mut().zip(&rows.ranges) {
                if s.taps.record_pre_rope {
                    s.taps.pre_rope_queries[l] = Some(rows_of(&q, range)?);
                }
            }
            let q = rotary.apply_fused(&q)?;
            let k = rotary.apply_fused(&k)?;
            for (s, range) in batch.iter_mut().zip(&rows.ranges) {
                let positions = &rows.positions[range.clone()];
                s.cache
                    .append(l, &rows_of(&k, range)?, &rows_of(&v, range)?, positions)?;
                if s.taps.window > 0 {
                    let previous = s.taps.window_queries[l].take();
                    s.taps.window_queries[l] =
                        Some(recent(previous, &rows_of(&q, range)?, s.taps.window)?);
                }
            }
            let attended = attend(c, l, &q, batch, &rows)?;
            x = (x + w.o.forward(&attended, &kinds)?)?;
            let h = candle_nn::ops::rms_norm(&x, &w.ffn_norm, c.rms_eps as f32)?;
            let gate_up = WeightMatrix::forward_all(&[&w.gate, &w.up], &h, &kinds)?;
            let gated = (candle_nn::ops::silu(&gate_up[0])? * &gate_up[1])?;
            x = (x + w.down.forward(&gated, &kinds)?)?;
        }
        self.logits(&x, batch, &rows)
    }

    fn reconstruction_scores(
        &self,
        cache: &KvCache,
        context: &[u32],
        position: u64,
        prompt: &RereadPrompt,
        pass: usize,
    ) -> Result<ReconstructionScores> {
        super::reread::reconstruction_scores(self, cache, context, position, prompt, pass)
    }
}

impl Llama {
    /// Each sequence's logits as its [`Logits`] asks: the rows it wants go through the final norm and
    /// the output head together.
    fn logits(
        &self,
        x: &Tensor,
        batch: &[SequenceRows<'_>],
        rows: &BatchRows,
    ) -> Result<Vec<Tensor>> {
        let c = &self.config;
        let wanted: Vec<std::ops::Range<usize>> = batch
            .iter()
            .zip(&rows.ranges)
            .map(|(s, r)| match s.logits {
                Logits::All => r.clone(),
                Logits::Last => r.end - 1..r.end,
                Logits::None => r.end..r.end,
            })
            .collect();
        let picked: Vec<u32> = wanted
            .iter()
            .flat_map(|r| r.clone())
            .map(|i| i as u32)
            .collect();
        if picked.is_empty() {
            let none = Tensor::zeros((0, c.vocab), DType::F32, &self.device)?;
            return Ok(vec![none; batch.len()]);
        }
        let x = if picked.len() == x.dim(0)? {
            x.clone()
        } else {
            x.index_select(&Tensor::new(picked.as_slice(), &self.device)?, 0)?
        };
        let x = candle_nn::ops::rms_norm(&x, &self.weights.norm, c.rms_eps as f32)?;
        let logits = self
            .weights
            .head
            .forward(&x, &RowKinds::of(wanted.iter().map(|r| r.len())))?;
        let mut at = 0;
        wanted
            .iter()
            .map(|r| {
                let part = logits.narrow(0, at, r.len())?;
                at += r.len();
                Ok(part)
            })
            .collect()
    }
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

impl BatchRows {
    /// The batch's rows, checked: every sequence has tokens, inside the vocabulary, at positions the
    /// model can represent.
    fn of(batch: &[SequenceRows<'_>], vocab: usize, device: &Device) -> Result<Self> {
        if batch.is_empty() {
            return Err(Error::invalid("forward", "the batch holds no sequence"));
        }
        let mut rows = BatchRows::default();
        for (i, s) in batch.iter().enumerate() {
            if s.tokens.is_empty() {
                return Err(Error::invalid(
                    "forward",
                    format!("sequence {i} of the batch has no tokens"),
                ));
            }
            if let Some(&bad) = s.tokens.iter().find(|&&t| t as usize >= vocab) {
                return Err(Error::invalid(
                    "forward",
                    format!("token id {bad} is outside the vocabulary of {vocab}"),
                ));
            }
            let at = rows.tokens.len();
            rows.ranges.push(at..at + s.tokens.len());
            rows.tokens.extend_from_slice(s.tokens);
            rows.positions
                .extend((0..s.tokens.len() as u64).map(|j| s.start + j));
            let t = s.tokens.len();
            rows.causal
                .push((t > 1).then(|| causal_mask(t, device)).transpose()?);
        }
        Ok(rows)
    }
}
