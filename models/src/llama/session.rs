//! Decoding with a bounded KV cache: prefill in chunks, then token by token, with the KV runtime's
//! compression loop run after each forward pass.

use candle_core::Tensor;
use spectra_core::{Budget, KvEvictionPolicy, KvPhase, Result, SideInfoNeeds};
use spectra_kv::{Compression, CompressionStats, KvCache};

use super::reread::{self, RereadPrompt};
use super::{Llama, Logits, Taps};

/// One sequence being decoded.
pub struct Session<'m> {
    model: &'m Llama,
    cache: KvCache,
    compression: Compression<'m>,
    taps: Taps<'static>,
    position: u64,
    prefill: PrefillCompression,
    /// Tokens to be decoded after the prompt, reserved with it where nothing is evicted.
    decoding: usize,
    /// The request with which the model re-reads its prompt, where a policy scores by that (KVzip).
    reread: Option<RereadPrompt>,
    reconstructs: bool,
}

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

impl<'m> Session<'m> {
    /// A session that evicts with `policy` at `budget`, or never (`None`).
    pub fn new(
        model: &'m Llama,
        policy: Option<&'m dyn KvEvictionPolicy>,
        budget: Budget,
        seed: u64,
    ) -> Result<Self> {
        let compression = Compression::new(policy, budget, seed);
        let needs = compression.needs();
        let mut session = Session::recording(model, needs)?;
        session.compression = compression;
        if needs.context_reconstruction {
            // The re-read scores the whole prompt, so nothing is evicted before it ends.
            session.prefill = PrefillCompression::AtEnd;
        }
        Ok(session)
    }

    /// A session that never evicts but records what `needs` asks for, so that its prefill can be
    /// [forked](Self::fork) by every policy whose needs it covers (see [`SideInfoNeeds::union`]).
    pub fn recording(model: &'m Llama, needs: SideInfoNeeds) -> Result<Self> {
        Ok(Session {
            model,
            cache: model.new_cache(needs.accumulated_attention)?,
            compression: Compression::never(),
            taps: Taps {
                window: needs.window_queries.unwrap_or(0),
                ..Taps::default()
            },
            position: 0,
            prefill: PrefillCompression::default(),
            decoding: 0,
            reread: None,
            reconstructs: needs.context_reconstruction,
        })
    }

    /// This session, with the request to repeat the context that a policy scoring by context
    /// reconstruction (KVzip) has the model read after the prompt.
    pub fn with_reread(mut self, prompt: RereadPrompt) -> Self {
        self.reread = Some(prompt);
        self
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
    pub fn fork_uncompressed(&self) -> Result<Session<'m>> {
        self.fork(None, Budget::Tokens(usize::MAX), self.compression.seed())
    }

    /// This session's state continued with `policy` at `budget`, compressed now as after prefill: what a
    /// session of its own would hold at this point, without running the prompt again. The cache is
    /// copied, so both sessions go on independently; the copy's stats start after that compression.
    /// Fails when this session did not record what the policy needs.
    pub fn fork(
        &self,
        policy: Option<&'m dyn KvEvictionPolicy>,
        budget: Budget,
        seed: u64,
    ) -> Result<Session<'m>> {
        let compression = self.compression.fork(policy, budget, seed);
        let needs = compression.needs();
        let window = needs.window_queries.unwrap_or(0);
        if window > self.taps.window
            || (needs.accumulated_attention && !self.cache.tracks_attention())
            || (needs.context_reconstruction && !compression.has_reconstruction())
        {
            return Err(spectra_core::Error::invalid(
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
        let mut forked = Session {
            model: self.model,
            cache: self.cache.deep_copy()?,
            compression,
            taps: Taps {
                window,
                window_queries,
                ..Taps::default()
            },
            position: self.position,
            prefill: self.prefill,
            decoding: self.decoding,
            // A fork never reads a prompt, so it never re-reads one.
            reread: None,
            reconstructs: false,
        };
        forked.compress(KvPhase::Prefill)?;
        forked.compression.stats = CompressionStats::default();
        forked.compression.record_peak(&forked.cache);
        Ok(forked)
    }

    pub fn cache(&self) -> &KvCache {
        &self.cache
    }

    /// What compression has cost and saved so far.
    pub fn stats(&self) -> &CompressionStats {
        &self.compression.stats
    }

    /// Absolute position of the next token.
    pub fn position(&self) -> u64 {
        self.position
    }

    /// Runs the prompt in chunks of `chunk` tokens (so attention scores are at most `chunk × n`),
    /// compressing as [`PrefillCompression`] says. Returns the last token's logits, or every token's
    /// with `Logits::All`.
    pub fn prefill(&mut self, tokens: &[u32], chunk: usize, rows: Logits) -> Result<Tensor> {
        if tokens.is_empty() {
            return Err(spectra_core::Error::invalid(
                "prompt",
                "is empty; give at least one token",
            ));
        }
        let pieces: Vec<&[u32]> = tokens.chunks(chunk.max(1)).collect();
        let last = pieces.len() - 1;
        let compresses_between_chunks =
            self.compression.evicts() && self.prefill == PrefillCompression::EveryChunk;
        let never_evicts = self.compression.never_evicts();
        let mut outputs = Vec::new();
        let mut read = 0;
        for (i, piece) in pieces.into_iter().enumerate() {
            // Room for exactly what arrives before the next compression, so that the peak is the
            // budget plus one chunk, or the whole prompt when nothing is evicted on the way (and the
            // decoded tokens when nothing is evicted at all).
            self.cache.reserve(if compresses_between_chunks {
                piece.len()
            } else if never_evicts {
                tokens.len() - read + self.decoding
            } else {
                tokens.len() - read
            })?;
            read += piece.len();
            // With `Logits::Last` an earlier chunk computes one row, which is dropped.
            let logits = self.run(piece, rows)?;
            if rows == Logits::All || i == last {
                outputs.push(logits);
            }
            if i == last && self.reconstructs {
                self.reconstruct(tokens, chunk)?;
            }
            if i == last || self.prefill == PrefillCompression::EveryChunk {
                // What has been read so far is the prompt, for policies that protect or score it.
                self.compression.end_prompt(self.position);
                self.compress(KvPhase::Prefill)?;
            }
        }
        Ok(Tensor::cat(&outputs, 0)?)
    }

    /// Has the model re-read `prompt`, which the cache holds whole, and keeps the scores.
    fn reconstruct(&mut self, prompt: &[u32], pass: usize) -> Result<()> {
        let request = self.reread.as_ref().ok_or_else(|| {
            spectra_core::Error::invalid(
                "Session",
                "a policy scores the prompt by having the model re-read it (KVzip); give the \
                 session the request to repeat it with `with_reread`",
            )
        })?;
        let scores = reread::reconstruction_scores(
            self.model,
            &self.cache,
            prompt,
            self.position,
            request,
            pass,
        )?;
        self.compression.set_reconstruction(scores);
        Ok(())
    }

    /// Feeds one token, then compresses if the policy's trigger fires. Returns its logits `[1, vocab]`.
    pub fn step(&mut self, token: u32) -> Result<Tensor> {
        self.extend(&[token], Logits::Last)
    }

    /// Feeds `tokens` in one forward pass (teacher forcing), then compresses if the policy's trigger
    /// fires, as a decode step would. The trigger is checked once per call, so a policy that fires at
    /// given positions (`Interval`) sees only the positions at which calls end.
    pub fn extend(&mut self, tokens: &[u32], rows: Logits) -> Result<Tensor> {
        let logits = self.run(tokens, rows)?;
        self.compress(KvPhase::Decode)?;
        Ok(logits)
    }

    fn run(&mut self, tokens: &[u32], rows: Logits) -> Result<Tensor> {
        let positions: Vec<u64> = (self.position..self.position + tokens.len() as u64).collect();
        let logits =
            self.model
                .forward(tokens, &positions, &mut self.cache, &mut self.taps, rows)?;
        self.position += tokens.len() as u64;
        self.compression.record_peak(&self.cache);
        Ok(logits)
    }

    fn compress(&mut self, phase: KvPhase) -> Result<()> {
        self.compression.compress(
            &mut self.cache,
            phase,
            self.position,
            &self.taps.window_queries,
            Some(&self.model.config.rope),
        )
    }
}
