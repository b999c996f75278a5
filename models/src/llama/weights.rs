//! A Llama decoder's weights, however they were loaded.

use std::path::Path;
use std::sync::Arc;

use candle_core::quantized::{QMatMul, QTensor};
use candle_core::{Device, Module, Tensor};
use serde::{Deserialize, Serialize};
use spectra_core::{Error, Result};

use super::config::LlamaConfig;
use super::embedding::Embedding;
use spectra_kernels::quantized_matmul::{QuantizedMatrix, PREFILL_ROWS};

/// How quantized matrices are held.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum WeightFormat {
    /// As stored. On the CPU, Q4_0, Q4_1 and Q8_0 are multiplied by spectra's integer block kernels
    /// (activations quantized to 8 bits per block of 32, as llama.cpp does); other formats, and every
    /// format on a GPU, by candle's quantized kernels.
    #[default]
    AsStored,
    /// Expanded to f32 when loaded: the exact products, at 4–7× the memory.
    F32,
}

impl WeightFormat {
    pub(crate) fn matmul(self, t: QTensor, device: &Device) -> Result<WeightMatrix> {
        Ok(match self {
            WeightFormat::AsStored if device.is_cpu() => match QuantizedMatrix::from_qtensor(&t)? {
                Some(blocks) => WeightMatrix::Blocks(Arc::new(blocks)),
                None => WeightMatrix::Candle(QMatMul::from_qtensor(t)?),
            },
            WeightFormat::AsStored => WeightMatrix::Candle(QMatMul::from_qtensor(t)?),
            WeightFormat::F32 => WeightMatrix::Candle(QMatMul::Tensor(t.dequantize(device)?)),
        })
    }
}

/// A weight matrix `W: [out, in]` as the decoder applies it, `x ↦ x·Wᵀ`.
pub(crate) enum WeightMatrix {
    /// GGUF blocks, multiplied by spectra's kernels (shared with the embedding where they are tied).
    Blocks(Arc<QuantizedMatrix>),
    /// candle's matmul: f32 or f16 tensors, or quantized formats spectra's kernels do not cover.
    Candle(QMatMul),
}

/// Which rows of a batch are multiplied as decoding multiplies them and which as a prompt chunk is,
/// so that every sequence's rows get the products they would get alone: a sequence feeding fewer
/// than [`PREFILL_ROWS`] rows has its inputs quantized per block and multiplied on the GGUF blocks,
/// one feeding more has them multiplied by the matrix expanded to f32.
#[derive(Clone, Debug, Default)]
pub(crate) struct RowKinds {
    few: Vec<u32>,
    many: Vec<u32>,
}

impl RowKinds {
    /// The rows of sequences feeding `counts` rows each, laid end to end.
    pub(crate) fn of(counts: impl IntoIterator<Item = usize>) -> Self {
        let mut kinds = RowKinds::default();
        let mut at = 0u32;
        for n in counts {
            let rows = at..at + n as u32;
            if n < PREFILL_ROWS {
                kinds.few.extend(rows);
            } else {
                kinds.many.extend(rows);
            }
            at += n as u32;
        }
        kinds
    }
}

impl WeightMatrix {
    pub(crate) fn forward(&self, x: &Tensor, kinds: &RowKinds) -> Result<Tensor> {
        Ok(WeightMatrix::forward_all(&[self], x, kinds)?.remove(0))
    }

    /// Each matrix applied to `x`, its rows multiplied as `kinds` says: GGUF blocks in one parallel
    /// section per kind of row when every matrix is in blocks.
    pub(crate) fn forward_all(
        matrices: &[&WeightMatrix],
        x: &Tensor,
        kinds: &RowKinds,
    ) -> Result<Vec<Tensor>> {
        let blocks: Option<Vec<&QuantizedMatrix>> = matrices
            .iter()
            .map(|l| match l {
                WeightMatrix::Blocks(m) => Some(&**m),
                WeightMatrix::Candle(_) => None,
            })
            .collect();
        if let Some(blocks) = blocks {
            return blocks_by_kind(&blocks, x, kinds);
        }
        matrices
            .iter()
            .map(|l| match l {
                WeightMatrix::Blocks(m) => Ok(blocks_by_kind(&[&**m], x, kinds)?.remove(0)),
                WeightMatrix::Candle(m) => Ok(m.forward(x)?),
            })
            .collect()
    }

    /// Bytes held, as stored.
    fn bytes(&self) -> usize {
        match self {
            WeightMatrix::Blocks(m) => m.bytes(),
            WeightMatrix::Candle(QMatMul::QTensor(t)) => t.storage_size_in_bytes(),
            WeightMatrix::Candle(QMatMul::Tensor(t) | QMatMul::TensorF16(t)) => {
                t.elem_count() * t.dtype().size_in_bytes()
            }
        }
    }

    fn dims(&self) -> Vec<usize> {
        match self {
            WeightMatrix::Blocks(m) => {
                let (rows, cols) = m.dims();
                vec![rows, cols]
            }
            WeightMatrix::Candle(QMatMul::QTensor(t)) => t.shape().dims().to_vec(),
            WeightMatrix::Candle(QMatMul::Tensor(t) | QMatMul::TensorF16(t)) => t.dims().to_vec(),
        }
    }
}

/// `x·Wᵀ` for GGUF block matrices, the few rows of `kinds` on the blocks and the many expanded.
fn blocks_by_kind(
    blocks: &[&QuantizedMatrix],
    x: &Tensor,
    kinds: &RowKinds,
) -> Result<Vec<Tensor>> {
    let few = |x: &Tensor| QuantizedMatrix::forward_all_quantized(blocks, x);
    let many = |x: &Tensor| -> candle_core::Result<Vec<Tensor>> {
        blocks.iter().map(|m| m.forward_expanded(x)).collect()
    };
    if kinds.many.is_empty() {
        return Ok(few(x)?);
    }
    if kinds.few.is_empty() {
        return Ok(many(x)?);
    }
    let pick = |rows: &[u32]| x.index_select(&Tensor::new(rows, x.device())?, 0);
    let (a, b) = (few(&pick(&kinds.few)?)?, many(&pick(&kinds.many)?)?);
    // Row r of the result is row `back[r]` of the few rows' results followed by the many's.
    let mut back = vec![0u32; kinds.few.len() + kinds.many.len()];
    for (i, &r) in kinds.few.iter().chain(&kinds.many).enumerate() {
        back[r as usize] = i as u32;
    }
    let back = Tensor::new(back.as_slice(), x.device())?;
    a.iter()
        .zip(&b)
        .map(|(a, b)| Ok(Tensor::cat(&[a, b], 0)?.index_select(&back, 0)?))
        .collect()
}

pub(crate) struct LayerWeights {
    pub attn_norm: Tensor,
    pub q: WeightMatrix,
    pub k: WeightMatrix,
    pub v: WeightMatrix,
    /// Qwen2's biases of the q, k and v projections.
    pub qkv_bias: Option<[Tensor; 3]>,
    /// Qwen3's RMSNorm weights of each query head and each key head (`[head_dim]`).
    pub qk_norm: Option<[Tensor; 2]>,
    pub o: WeightMatrix,
    pub ffn_norm: Tensor,
    pub gate: WeightMatrix,
    pub up: WeightMatrix,
    pub down: WeightMatrix,
}

pub struct LlamaWeights {
    /// `[vocab, hidden]`.
    pub(crate) embed: Embedding,
    pub(crate) layers: Vec<LayerWeights>,
    pub(crate) norm: Tensor,
    /// `[vocab, hidden]`, the embedding itself when tied.
    pub(crate) head: WeightMatrix,
}

impl LlamaWeights {
    /// The bytes of the matrices one forward pass reads: every layer's and the output head's (the
    /// embedding gives only the rows of its tokens).
    pub fn bytes(&self) -> usize {
        let layers: usize = self
            .layers
            .iter()
            .flat_map(|w| [&w.q, &w.k, &w.v, &w.o, &w.gate, &w.up, &w.down])
            .map(WeightMatrix::bytes)
            .sum();
        layers + self.head.bytes()
    }

    /// Every tensor has the shape the config implies; a mismatch names the tensor.
    pub(crate) fn check(&self, c: &LlamaConfig, source: &Path) -> Result<()> {
        let expect = |name: String, got: Vec<usize>, want: Vec<usize>| {
            if got == want {
                Ok(())
            } else {
                Err(Error::file(
                    source,
                    format!("tensor `{name}` has shape {got:?}, the config implies {want:?}"),
                ))
            }
        };
        let (q_dim, kv_dim) = (c.heads * c.head_dim, c.kv_heads * c.head_dim);
        expect(
            "embedding".into(),
            self.embed.dims(),
            vec![c.vocab, c.hidden],
        )?;
        expect(
            "output head".into(),
            self.head.dims(),
            vec![c.vocab, c.hidden],
        )?;
        expect(
            "final norm".into(),
            self.norm.dims().to_vec(),
            vec![c.hidden],
        )?;
        if self.layers.len() != c.layers {
            return Err(Error::file(
                source,
                format!("{} layers, the config says {}", self.layers.len(), c.layers),
            ));
        }
        for (l, w) in self.layers.iter().enumerate() {
            expect(format!("layer {l} q"), w.q.dims(), vec![q_dim, c.hidden])?;
            expect(format!("layer {l} k"), w.k.dims(), vec![kv_dim, c.hidden])?;
            expect(format!("layer {l} v"), w.v.dims(), vec![kv_dim, c.hidden])?;
            expect(format!("layer {l} o"), w.o.dims(), vec![c.hidden, q_dim])?;
            if w.qkv_bias.is_some() != c.family.qkv_bias()
                || w.qk_norm.is_some() != c.family.qk_norm()
            {
                return Err(Error::file(
                    source,
                    format!(
                        "layer {l}'s tensors are not those of a {:?} block",
                        c.family
                    ),
                ));
            }
            for (name, bias, want) in w.qkv_bias.iter().flat_map(|[q, k, v]| {
                [
                    ("q bias", q, q_dim),
                    ("k bias", k, kv_dim),
                    ("v bias", v, kv_dim),
                ]
            }) {
                expect(
                    format!("layer {l} {name}"),
                    bias.dims().to_vec(),
                    vec![want],
                )?;
            }
            for (name, norm) in w
                .qk_norm
                .iter()
                .flat_map(|[q, k]| [("q norm", q), ("k norm", k)])
            {
                expect(
                    format!("layer {l} {name}"),
                    norm.dims().to_vec(),
                    vec![c.head_dim],
                )?;
            }
            expect(
                format!("layer {l} gate"),
                w.gate.dims(),
                vec![c.ffn, c.hidden],
            )?;
            expect(format!("layer {l} up"), w.up.dims(), vec![c.ffn, c.hidden])?;
            expect(
                format!("layer {l} down"),
                w.down.dims(),
                vec![c.hidden, c.ffn],
            )?;
            expect(
                format!("layer {l} attn norm"),
                w.attn_norm.dims().to_vec(),
                vec![c.hidden],
            )?;
            expect(
                format!("layer {l} ffn norm"),
                w.ffn_norm.dims().to_vec(),
                vec![c.hidden],
            )?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::quantized::GgmlDType;

    /// A batch of three sequences' rows (1, 20 and 3 rows: two decoded on the blocks, one multiplied
    /// expanded) gives every sequence exactly the products it gets alone.
    #[test]
    fn every_sequence_of_a_batch_gets_the_products_it_gets_alone() {
        let w = Tensor::randn(0f32, 0.1, (64, 96), &Device::Cpu).unwrap();
        let linear = WeightMatrix::Blocks(Arc::new(
            QuantizedMatrix::from_qtensor(&QTensor::quantize(&w, GgmlDType::Q4_1).unwrap())
                .unwrap()
                .unwrap(),
        ));
        let counts = [1usize, 20, 3];
        let x = Tensor::randn(0f32, 1.0, (24, 96), &Device::Cpu).unwrap();
        let batch = linear.forward(&x, &RowKinds::of(counts)).unwrap();
        let mut at = 0;
        for n in counts {
            let rows = x.narrow(0, at, n).unwrap();
            let alone = linear.forward(&rows, &RowKinds::of([n])).unwrap();
            let together = batch.narrow(0, at, n).unwrap();
            assert_eq!(
                alone.to_vec2::<f32>().unwrap(),
                together.to_vec2::<f32>().unwrap(),
                "the sequence of {n} rows"
            );
            at += n;
        }
    }
}
