//! The token embedding, rows looked up by token id. A GGUF table in a block format spectra's kernels
//! read stays in its blocks on the CPU, and each looked-up row is expanded alone: Qwen2.5-Coder's
//! 151,936 × 896 Q5_0 table holds 94 MB so, against 545 MB expanded to f32 at load.

use std::sync::Arc;

use candle_core::quantized::QTensor;
use candle_core::{Device, Tensor};
use spectra_core::Result;
use spectra_kernels::quantized_matmul::QuantizedMatrix;

pub enum Embedding {
    /// `[vocab, hidden]` as a tensor (f32, or the Hugging Face file's own type).
    Dense(Tensor),
    /// `[vocab, hidden]` in GGUF blocks (shared with a tied output head).
    Blocks(Arc<QuantizedMatrix>),
}

impl Embedding {
    /// A GGUF table: kept in its blocks where the device is the CPU and the format one spectra's
    /// kernels read, expanded onto the device otherwise.
    pub fn from_qtensor(t: &QTensor, device: &Device) -> Result<Self> {
        if device.is_cpu() {
            if let Some(m) = QuantizedMatrix::from_qtensor(t)? {
                return Ok(Embedding::Blocks(Arc::new(m)));
            }
        }
        Ok(Embedding::Dense(t.dequantize(device)?))
    }

    /// `[vocab, hidden]`.
    pub fn dims(&self) -> Vec<usize> {
        match self {
            Embedding::Dense(t) => t.dims().to_vec(),
            Embedding::Blocks(m) => {
                let (rows, cols) = m.dims();
                vec![rows, cols]
            }
        }
    }

    /// The rows of `tokens`, `[tokens, hidden]`, on `device`. The caller has checked each id
    /// against the vocabulary.
    pub fn rows(&self, tokens: &[u32], device: &Device) -> Result<Tensor> {
        Ok(match self {
            Embedding::Dense(t) => t.index_select(&Tensor::new(tokens, device)?, 0)?,
            Embedding::Blocks(m) => {
                let values: Vec<f32> = tokens.iter().flat_map(|&id| m.row(id as usize)).collect();
                Tensor::from_vec(values, (tokens.len(), m.dims().1), device)?
            }
        })
    }
}
