//! What the runtime needs of a model: a causal decoder whose forward pass takes the rows of several
//! sequences at once, each sequence with its own compacting cache, positions and recordings.

use candle_core::{DType, Device, Tensor};
use spectra_core::rope::RopeSpec;
use spectra_core::Result;
use spectra_kv::{KvCache, KvCacheShape};

/// Which rows of logits a forward pass returns for a sequence.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Logits {
    /// Only the last token's (decoding, or the end of a prompt).
    Last,
    /// Every token's (scoring a text).
    All,
    /// None (a prompt chunk that is not the last).
    None,
}

/// What a forward pass records for one sequence besides its logits, for KV policies and calibration.
#[derive(Clone, Debug, Default)]
pub struct Taps {
    /// Keep the post-RoPE queries of this many most recent positions per layer (`[heads, w, head_dim]`).
    pub window: usize,
    pub window_queries: Vec<Option<Tensor>>,
    /// Record each layer's queries as fed to RoPE (`[heads, tokens, head_dim]`, this pass's tokens
    /// only) in `pre_rope_queries`, for calibration.
    pub record_pre_rope: bool,
    pub pre_rope_queries: Vec<Option<Tensor>>,
    /// Record each layer's normalized input (`[tokens, d_model]`, this pass's tokens only) in
    /// `layer_inputs`, for a policy that scores entries as they are written.
    pub record_layer_inputs: bool,
    pub layer_inputs: Vec<Option<Tensor>>,
}

/// One sequence's part of a forward pass: its new tokens, at positions `start..`, after everything
/// its cache holds.
pub struct SequenceRows<'a> {
    pub tokens: &'a [u32],
    /// The absolute position of the first token; the others follow one by one.
    pub start: u64,
    pub cache: &'a mut KvCache,
    pub taps: &'a mut Taps,
    pub logits: Logits,
}

/// The tokens of the request to repeat the context, with which a policy scoring by context
/// reconstruction (KVzip) has the model re-read its prompt.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RereadPrompt {
    /// Before the first chunk: "Repeat the previous context exactly."
    pub first: Vec<u32>,
    /// Before a later chunk, followed by the previous chunk's last tokens: "Repeat the part of the
    /// previous context exactly, starting with".
    pub next: Vec<u32>,
    /// After the request: the end of the user's turn and the assistant's opening, in the prompt's
    /// own format.
    pub suffix: Vec<u32>,
}

/// `[layer][kv_head][entry]` scores of a re-read of the prompt.
pub type ReconstructionScores = Vec<Vec<Vec<f32>>>;

/// A causal decoder over spectra's compacting KV cache.
pub trait CausalDecoder: Send + Sync {
    /// The shape of the caches it writes.
    fn cache_shape(&self) -> KvCacheShape;

    /// How its caches store keys and values.
    fn kv_dtype(&self) -> DType;

    fn device(&self) -> &Device;

    /// An empty cache for one sequence.
    fn new_cache(&self, tracks_attention: bool) -> Result<KvCache> {
        KvCache::new(
            self.cache_shape(),
            self.kv_dtype(),
            self.device(),
            tracks_attention,
        )
    }

    /// How its queries and keys are rotated.
    fn rope(&self) -> &RopeSpec;

    /// The positions it was trained on.
    fn context_len(&self) -> usize;

    fn vocab(&self) -> usize;

    /// The bytes of weights one forward pass reads, as stored.
    fn weight_bytes(&self) -> usize;

    /// Runs every sequence's rows, appending their keys and values to their caches, and returns each
    /// sequence's logits as its [`Logits`] asks (`[rows, vocab]`; `[0, vocab]` for `Logits::None`).
    /// Every linear layer reads its weights once for all the rows; attention reads each sequence's
    /// own cache.
    fn forward(&self, batch: &mut [SequenceRows<'_>]) -> Result<Vec<Tensor>>;

    /// [`forward`](Self::forward) of one sequence.
    fn forward_one(
        &self,
        tokens: &[u32],
        start: u64,
        cache: &mut KvCache,
        taps: &mut Taps,
        logits: Logits,
    ) -> Result<Tensor> {
        let mut rows = [SequenceRows {
            tokens,
            start,
            cache,
            taps,
            logits,
        }];
        Ok(self.forward(&mut rows)?.remove(0))
    }

    /// KVzip's scores: `cache` holds exactly `context`, read at positions `0..position`; the model
    /// re-reads it behind `prompt` on a copy of the cache, in passes of at most `pass` tokens.
    fn reconstruction_scores(
        &self,
        cache: &KvCache,
        context: &[u32],
        position: u64,
        prompt: &RereadPrompt,
        pass: usize,
    ) -> Result<ReconstructionScores>;
}
