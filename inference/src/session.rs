//! One sequence with a bounded KV cache: its prompt read in chunks, then token by token, with the KV
//! runtime's compression loop run after each forward pass. A session runs its own forward passes
//! ([`prefill`](Session::prefill), [`step`](Session::step)), or lends its rows to a batched pass that
//! the engine runs for many sessions ([`Session::feed`], [`Session::fed`]).

use std::sync::Arc;

use candle_core::Tensor;
use spectra_core::{Budget, Error, KvEvictionPolicy, KvPhase, Result, SideInfoNeeds};
use spectra_kv::{Compression, CompressionStats, KvCache};

use crate::decoder::{CausalDecoder, Logits, RereadPrompt, SequenceRows, Taps};

/// When a session compresses while it reads a prompt.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum PrefillCompression {
    /// After every chunk, as the policy's prefill trigger says: the cache never holds more than the
    /// budget plus one chunk per head during prefill (or the budget plus the [`headroom`] a
    /// compaction leaves, where that is more than a chunk).
    ///
    /// [`headroom`]: spectra_kv::headroom
    #[default]
    EveryChunk,
    /// Once, after the whole prompt (what a [fork](Session::fork) of an uncompressed prefill holds):
    /// the policy sees the whole prompt at once, and the cache holds all of it until then.
    AtEnd,
}

/// The prompt a session is reading.
#[derive(Clone, Debug, Default)]
struct Prompt {
    tokens: Vec<u32>,
    /// Tokens read so far.
    read: usize,
    /// The longest chunk read: the re-read of a policy that scores by it runs in passes of that size.
    pass: usize,
}

/// One sequence being decoded.
pub struct Session<D> {
    model: Arc<D>,
    cache: KvCache,
    compression: Compression,
    taps: Taps,
    position: u64,
    prefill: PrefillCompression,
    /// Tokens to be decoded after the prompt, reserved with it where nothing is evicted.
    decoding: usize,
    /// The request with which the model re-reads its prompt, where a policy scores by that (KVzip).
    reread: Option<RereadPrompt>,
    reconstructs: bool,
    /// A whole prompt read but not yet re-read, where the re-read waits for [`reread`](Self::reread).
    unread: Option<Prompt>,
    /// Whether a re-read waits for [`reread`](Self::reread) instead of following the prompt.
    defers_reread: bool,
    /// Per layer, the input rows of every pass so far, where this session records them for forks
    /// whose policies score entries as they are written.
    recorded_inputs: Option<Vec<Vec<Tensor>>>,
    prompt: Prompt,
}

/// What a session feeds to a forward pass.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Feed {
    /// The next `len` tokens of its prompt.
    Prompt { len: usize },
    /// Tokens after the prompt, given by the caller.
    Decode,
}

impl<D: CausalDecoder> Session<D> {
    /// A session that evicts with `policy` at `budget`, or never (`None`).
    pub fn new(
        model: Arc<D>,
        policy: Option<Arc<dyn KvEvictionPolicy>>,
        budget: Budget,
        seed: u64,
    ) -> Result<Self> {
        let compression = Compression::new(policy, budget, seed);
        let needs = compression.needs();
        let mut session = Session::recording(model, needs)?;
        session.compression = compression;
        // The policy scores each pass's rows itself; nothing needs to be kept for forks.
        session.recorded_inputs = None;
        if needs.context_reconstruction {
            // The re-read scores the whole prompt, so nothing is evicted before it ends.
            session.prefill = PrefillCompression::AtEnd;
        }
        Ok(session)
    }

    /// A session that never evicts but records what `needs` asks for, so that its prefill can be
    /// [forked](Self::fork) by every policy whose needs it covers (see [`SideInfoNeeds::union`]).
    /// Layer inputs are kept whole (`tokens × d_model` floats per layer), for the forks to score.
    pub fn recording(model: Arc<D>, needs: SideInfoNeeds) -> Result<Self> {
        let layers = model.cache_shape().layers;
        Ok(Session {
            cache: model.new_cache(needs.accumulated_attention)?,
            model,
            compression: Compression::never(),
            taps: Taps {
                window: needs.window_queries.unwrap_or(0),
                record_layer_inputs: needs.layer_inputs,
                ..Taps::default()
            },
            position: 0,
            prefill: PrefillCompression::default(),
            decoding: 0,
            reread: None,
            reconstructs: needs.context_reconstruction,
            unread: None,
            defers_reread: false,
            recorded_inputs: needs.layer_inputs.then(|| vec![Vec::new(); layers]),
            prompt: Prompt::default(),
        })
    }

    /// This session, with the request to repeat the context that a policy scoring by context
    /// reconstruction (KVzip) has the model read after the prompt.
    pub fn with_reread(mut self, prompt: RereadPrompt) -> Self {
        self.reread = Some(prompt);
        self
    }

    /// This recording session, re-reading its prompt (for KVzip's forks) only when [`reread`]
    /// (Self::reread) asks, so that a prompt no fork needs re-read costs nothing.
    pub fn with_deferred_reread(mut self) -> Self {
        self.defers_reread = true;
        self
    }

    /// Has the model re-read the prompt now, where that was deferred and has not happened yet.
    pub fn reread(&mut self) -> Result<()> {
        match self.unread.take() {
            Some(prompt) => self.reconstruct(&prompt),
            None => Ok(()),
        }
    }

    /// This session, compressing its prompt as `prefill` says.
    pub fn with_prefill_compression(mut self, prefill: PrefillCompression) -> Self {
        self.prefill = prefill;
        self
    }

    /// This session, told that `tokens` tokens will be decoded after the prompt: where nothing is
    /// ever evicted, the prefill reserves room for them too, so that the cache never grows (and never
    /// copies itself) while decoding.
    pub fn with_decoding(mut self, tokens: usize) -> Self {
        self.decoding = tokens;
        self
    }

    /// This session's state continued without eviction: the reference every policy is compared with.
    pub fn fork_uncompressed(&self) -> Result<Session<D>> {
        self.fork(None, Budget::Tokens(usize::MAX), self.compression.seed())
    }

    /// This session's state continued with `policy` at `budget`, compressed now as after prefill: what a
    /// session of its own would hold at this point, without running the prompt again. The cache is
    /// copied, so both sessions go on independently; the copy's stats start after that compression.
    /// Fails when this session did not record what the policy needs.
    pub fn fork(
        &self,
        policy: Option<Arc<dyn KvEvictionPolicy>>,
        budget: Budget,
        seed: u64,
    ) -> Result<Session<D>> {
        let mut compression = self.compression.fork(policy, budget, seed);
        let needs = compression.needs();
        let window = needs.window_queries.unwrap_or(0);
        if needs.context_reconstruction && self.unread.is_some() {
            return Err(Error::invalid(
                "Session::fork",
                "the policy scores by a re-read of the prompt, which this session deferred; call \
                 Session::reread before forking",
            ));
        }
        if window > self.taps.window
            || (needs.accumulated_attention && !self.cache.tracks_attention())
            || (needs.context_reconstruction && !compression.has_reconstruction())
            || (needs.layer_inputs && self.recorded_inputs.is_none())
        {
            return Err(Error::invalid(
                "Session::fork",
                format!(
                    "the policy needs {needs:?}, which this session did not record; create it with \
                     Session::recording and the union of the policies' needs"
                ),
            ));
        }
        let window_queries = self
            .taps
            .window_queries
            .iter()
            .map(|q| {
                q.as_ref()
                    .map(|q| {
                        let len = q.dim(1)?;
                        q.narrow(1, len - window.min(len), window.min(len))?
                            .contiguous()
                    })
                    .transpose()
            })
            .collect::<candle_core::Result<Vec<_>>>()?;
        if let Some(recorded) = self.recorded_inputs.as_ref().filter(|_| needs.layer_inputs) {
            let inputs = recorded
                .iter()
                .map(|rows| {
                    Ok((!rows.is_empty())
                        .then(|| Tensor::cat(rows, 0))
                        .transpose()?)
                })
                .collect::<Result<Vec<_>>>()?;
            compression.write(&self.cache, &inputs)?;
        }
        let mut forked = Session {
            model: self.model.clone(),
            cache: self.cache.deep_copy()?,
            compression,
            taps: Taps {
                window,
                window_queries,
                record_layer_inputs: needs.layer_inputs,
                ..Taps::default()
            },
            position: self.position,
            prefill: self.prefill,
            decoding: self.decoding,
            // A fork never reads a prompt, so it never re-reads one.
            reread: None,
            reconstructs: false,
            unread: None,
            defers_reread: false,
            recorded_inputs: None,
            prompt: Prompt::default(),
        };
        forked.compress(KvPhase::Prefill)?;
        forked.compression.stats = CompressionStats::default();
        forked.compression.record_peak(&forked.cache);
        Ok(forked)
    }

    pub fn model(&self) -> &Arc<D> {
        &self.model
    }

    pub fn cache(&self) -> &KvCache {
        &self.cache
    }

    /// The memory it holds: its cache, and the layer inputs it recorded for forks.
    pub fn bytes(&self) -> usize {
        let recorded: usize = self
            .recorded_inputs
            .iter()
            .flatten()
            .flatten()
            .map(|t| t.elem_count() * t.dtype().size_in_bytes())
            .sum();
        self.cache.bytes() + recorded
    }

    /// The policy and budget it evicts with.
    pub fn compression(&self) -> &Compression {
        &self.compression
    }

    /// What compression has cost and saved so far.
    pub fn stats(&self) -> &CompressionStats {
        &self.compression.stats
    }

    /// Absolute position of the next token.
    pub fn position(&self) -> u64 {
        self.position
    }

    /// How this session compresses its prompt.
    pub fn prefill_compression(&self) -> PrefillCompression {
        self.prefill
    }

    /// Runs the prompt in chunks of `chunk` tokens (so attention scores are at most `chunk × n`),
    /// compressing as [`PrefillCompression`] says. Returns the last token's logits, or every token's
    /// with `Logits::All`.
    pub fn prefill(&mut self, tokens: &[u32], chunk: usize, rows: Logits) -> Result<Tensor> {
        self.start_prompt(tokens)?;
        let mut outputs = Vec::new();
        while self.prompt_left() > 0 {
            let len = self.prompt_left().min(chunk.max(1));
            let last = len == self.prompt_left();
            let logits = match (rows, last) {
                (Logits::All, _) => Logits::All,
                (_, true) => rows,
                (_, false) => Logits::None,
            };
            let feed = Feed::Prompt { len };
            self.feed(feed)?;
            let (start, at) = (self.position, self.prompt.read);
            let piece = &self.prompt.tokens[at..at + len];
            let out =
                self.model
                    .forward_one(piece, start, &mut self.cache, &mut self.taps, logits)?;
            if logits != Logits::None {
                outputs.push(out);
            }
            self.fed(feed, len)?;
        }
        Ok(Tensor::cat(&outputs, 0)?)
    }

    /// Takes `tokens` as the prompt to read, chunk by chunk ([`Feed::Prompt`]).
    pub fn start_prompt(&mut self, tokens: &[u32]) -> Result<()> {
        if tokens.is_empty() {
            return Err(Error::invalid(
                "prompt",
                "is empty; give at least one token",
            ));
        }
        if self.prompt_left() > 0 {
            return Err(Error::invalid(
                "Session::start_prompt",
                "the previous prompt is still being read",
            ));
        }
        self.prompt = Prompt {
            tokens: tokens.to_vec(),
            ..Prompt::default()
        };
        Ok(())
    }

    /// Prompt tokens not yet read.
    pub fn prompt_left(&self) -> usize {
        self.prompt.tokens.len() - self.prompt.read
    }

    /// Feeds one token, then compresses if the policy's trigger fires. Returns its logits `[1, vocab]`.
    pub fn step(&mut self, token: u32) -> Result<Tensor> {
        self.extend(&[token], Logits::Last)
    }

    /// Feeds `tokens` in one forward pass (teacher forcing), then compresses if the policy's trigger
    /// fires, as a decode step would. The trigger is checked once per call, so a policy that fires at
    /// given positions (`Interval`) sees only the positions at which calls end.
    pub fn extend(&mut self, tokens: &[u32], rows: Logits) -> Result<Tensor> {
        self.feed(Feed::Decode)?;
        let logits =
            self.model
                .forward_one(tokens, self.position, &mut self.cache, &mut self.taps, rows)?;
        self.fed(Feed::Decode, tokens.len())?;
        Ok(logits)
    }

    /// [`extend`](Self::extend) for several sessions of one model in one forward pass: session `i`
    /// reads `tokens[i]` after what it holds and compresses as its policy says. Every linear layer
    /// reads its weights once for all of them. Returns each session's logits as `rows` asks.
    pub fn extend_together(
        sessions: &mut [&mut Session<D>],
        tokens: &[&[u32]],
        rows: Logits,
    ) -> Result<Vec<Tensor>> {
        let Some(first) = sessions.first() else {
            return Ok(Vec::new());
        };
        if tokens.len() != sessions.len() {
            return Err(Error::invalid(
                "Session::extend_together",
                format!(
                    "{} token lists for {} sessions; give one per session",
                    tokens.len(),
                    sessions.len()
                ),
            ));
        }
        let model = first.model.clone();
        if sessions.iter().any(|s| !Arc::ptr_eq(&s.model, &model)) {
            return Err(Error::invalid(
                "Session::extend_together",
                "the sessions run different models; one forward pass runs one",
            ));
        }
        for s in sessions.iter_mut() {
            s.feed(Feed::Decode)?;
        }
        let mut batch: Vec<SequenceRows<'_>> = sessions
            .iter_mut()
            .zip(tokens)
            .map(|(s, t)| s.rows(Feed::Decode, t, rows))
            .collect();
        let logits = model.forward(&mut batch)?;
        drop(batch);
        for (s, t) in sessions.iter_mut().zip(tokens) {
            s.fed(Feed::Decode, t.len())?;
        }
        Ok(logits)
    }

    /// Readies the cache for a forward pass that feeds `feed`: a prompt chunk reserves room for exactly
    /// what arrives before the next compression, so that the peak is the budget plus one chunk, or the
    /// whole prompt when nothing is evicted on the way (and the decoded tokens too when nothing is
    /// evicted at all).
    pub fn feed(&mut self, feed: Feed) -> Result<()> {
        let Feed::Prompt { len } = feed else {
            return Ok(());
        };
        let left = self.prompt_left();
        if len == 0 || len > left {
            return Err(Error::invalid(
                "Session::feed",
                format!("{len} prompt tokens asked for, {left} left to read"),
            ));
        }
        let reserve = if self.compresses_between_chunks() {
            len
        } else if self.compression.never_evicts() {
            left + self.decoding
        } else {
            left
        };
        self.cache.reserve(reserve)
    }

    /// The rows this session lends to a batched forward pass: the next `len` prompt tokens, or
    /// `tokens` after the prompt.
    pub fn rows<'a>(
        &'a mut self,
        feed: Feed,
        tokens: &'a [u32],
        logits: Logits,
    ) -> SequenceRows<'a> {
        let tokens = match feed {
            Feed::Prompt { len } => {
                let at = self.prompt.read;
                &self.prompt.tokens[at..at + len]
            }
            Feed::Decode => tokens,
        };
        SequenceRows {
            tokens,
            start: self.position,
            cache: &mut self.cache,
            taps: &mut self.taps,
            logits,
        }
    }

    /// After a forward pass that fed `feed` (`tokens` tokens): moves on, re-reads a whole prompt for a
    /// policy that scores by that, and compresses as the policy says.
    pub fn fed(&mut self, feed: Feed, tokens: usize) -> Result<()> {
        self.position += tokens as u64;
        self.compression
            .write(&self.cache, &self.taps.layer_inputs)?;
        if let Some(recorded) = &mut self.recorded_inputs {
            for (rows, input) in recorded.iter_mut().zip(&self.taps.layer_inputs) {
                rows.extend(input.clone());
            }
        }
        self.compression.record_peak(&self.cache);
        match feed {
            Feed::Decode => self.compress(KvPhase::Decode),
            Feed::Prompt { len } => {
                self.prompt.read += len;
                self.prompt.pass = self.prompt.pass.max(len);
                let last = self.prompt_left() == 0;
                if last && self.reconstructs {
                    if self.defers_reread {
                        self.unread = Some(self.prompt.clone());
                    } else {
                        self.reconstruct(&self.prompt.clone())?;
                    }
                }
                if last || self.prefill == PrefillCompression::EveryChunk {
                    // What has been read so far is the prompt, for policies that protect or score it.
                    self.compression.end_prompt(self.position);
                    self.compress(KvPhase::Prefill)?;
                }
                if last {
                    self.prompt = Prompt::default();
                }
                Ok(())
            }
        }
    }

    fn compresses_between_chunks(&self) -> bool {
        self.compression.evicts() && self.prefill == PrefillCompression::EveryChunk
    }

    /// Has the model re-read `prompt`, which the cache holds whole, and keeps the scores.
    fn reconstruct(&mut self, prompt: &Prompt) -> Result<()> {
        let request = self.reread.as_ref().ok_or_else(|| {
            Error::invalid(
                "Session",
                "a policy scores the prompt by having the model re-read it (KVzip); give the \
                 session the request to repeat it with `with_reread`",
            )
        })?;
        let scores = self.model.reconstruction_scores(
            &self.cache,
            &prompt.tokens,
            self.position,
            request,
            prompt.pass,
        )?;
        self.compression.set_reconstruction(scores);
        Ok(())
    }

    fn compress(&mut self, phase: KvPhase) -> Result<()> {
        self.compression.compress(
            &mut self.cache,
            phase,
            self.position,
            &self.taps.window_queries,
            Some(self.model.rope()),
        )
    }
}
