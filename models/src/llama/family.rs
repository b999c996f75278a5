//! The decoder families spectra runs, as llama.cpp's `src/models/` tells them apart: one block
//! (RMSNorm, grouped-query attention with RoPE, SwiGLU) and what each family adds to it.

use candle_core::Tensor;
use serde::{Deserialize, Serialize};
use spectra_core::rope::RopePairing;
use spectra_core::Result;

/// What [`Family::layer_extras`] reads: the fields of [`super::weights::LayerWeights`] of the same
/// names.
pub(super) struct LayerExtras {
    pub qkv_bias: Option<[Tensor; 3]>,
    pub qk_norm: Option<[Tensor; 2]>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Family {
    /// Llama, SmolLM, Mistral: the plain block.
    Llama,
    /// Qwen2 and Qwen2.5: biases on the query, key and value projections.
    Qwen2,
    /// Qwen3: each head's query and key RMS-normalized (their own weights) before RoPE; no biases.
    Qwen3,
}

impl Family {
    pub const ALL: [Family; 3] = [Family::Llama, Family::Qwen2, Family::Qwen3];

    /// The name GGUF's `general.architecture` and Hugging Face's `model_type` give it; GGUF keys
    /// sit under it (`qwen2.block_count`).
    pub fn name(self) -> &'static str {
        match self {
            Family::Llama => "llama",
            Family::Qwen2 => "qwen2",
            Family::Qwen3 => "qwen3",
        }
    }

    pub fn from_name(name: &str) -> Option<Family> {
        Family::ALL.into_iter().find(|f| f.name() == name)
    }

    /// Every known name, for an error that lists them.
    pub fn names() -> String {
        Family::ALL.map(Family::name).join(", ")
    }

    pub fn qkv_bias(self) -> bool {
        self == Family::Qwen2
    }

    pub fn qk_norm(self) -> bool {
        self == Family::Qwen3
    }

    /// A layer's tensors this family adds, where it has them: the q, k and v biases (`bias`, by the
    /// file's names) and the query and key norms (`norm`), each read by `read`.
    pub(super) fn layer_extras(
        self,
        bias: [&str; 3],
        norm: [&str; 2],
        mut read: impl FnMut(&str) -> Result<Tensor>,
    ) -> Result<LayerExtras> {
        Ok(LayerExtras {
            qkv_bias: if self.qkv_bias() {
                Some([read(bias[0])?, read(bias[1])?, read(bias[2])?])
            } else {
                None
            },
            qk_norm: if self.qk_norm() {
                Some([read(norm[0])?, read(norm[1])?])
            } else {
                None
            },
        })
    }

    /// How a GGUF file's query and key rows pair RoPE's coordinates: llama.cpp's converter permutes
    /// Llama's rows to pair neighbours, and leaves Qwen's in Hugging Face's halves (its NEOX rope).
    pub fn gguf_rope_pairing(self) -> RopePairing {
        match self {
            Family::Llama => RopePairing::Interleaved,
            Family::Qwen2 | Family::Qwen3 => RopePairing::Half,
        }
    }
}
