//! Many sequences decoded together: each step, the [`Scheduler`] says which sequences run and with
//! how many tokens, one batched forward pass runs them all (each over its own compacting cache, with
//! its own policy and budget), and each sequence's next token is chosen, checked against its stops
//! and streamed as text. A sequence's KV memory is reserved whole when it is admitted
//! ([`peak_kv_bytes`]) and its cache is freed the moment it finishes or is cancelled.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use spectra_core::{Budget, Error, KvEvictionPolicy, Result};

use crate::decoder::{CausalDecoder, Logits, RereadPrompt};
use crate::generation::{
    Choice, Detokenize, FinishReason, GenerationParams, Sampler, StopStrings, TextStream,
};
use crate::kv_memory::{peak_kv_bytes, SequencePlan};
use crate::scheduler::{Scheduler, SchedulerConfig, SequenceId, Work};
use crate::session::{Feed, Session};

/// One generation: a prompt, how to continue it, and the KV policy and budget it runs under.
#[derive(Clone, Debug)]
pub struct Request {
    pub prompt: Vec<u32>,
    pub params: GenerationParams,
    /// Never evicts when `None`.
    pub policy: Option<Arc<dyn KvEvictionPolicy>>,
    pub budget: Budget,
    /// Seeds policies with randomness of their own.
    pub seed: u64,
}

/// What happened to a sequence in a step.
#[derive(Clone, Debug, PartialEq)]
pub enum Event {
    /// A generated token, and the text it completes (empty while a character or a possible stop
    /// string is still open, and always without a detokenizer).
    Token {
        id: SequenceId,
        token: u32,
        text: String,
        /// The largest logit and its lead over the runner-up.
        top_logit: f32,
        lead: f32,
    },
    /// The sequence ended; its cache is freed.
    Finished {
        id: SequenceId,
        reason: FinishReason,
        /// Text held back until the end (a partial stop string that never completed).
        text: String,
        stats: SequenceStats,
    },
    /// The sequence failed (its policy or a forward pass returned an error) and was dropped.
    Failed { id: SequenceId, error: String },
}

/// A finished sequence's record.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct SequenceStats {
    pub prompt_tokens: usize,
    pub generated_tokens: usize,
    /// From submission to admission, and to the first generated token.
    pub queued: Duration,
    pub time_to_first_token: Option<Duration>,
    /// The largest KV allocation of its cache, bytes, and what was reserved for it.
    pub peak_kv_bytes: usize,
    pub reserved_kv_bytes: usize,
    pub compressions: usize,
    pub eviction_time: Duration,
}

/// What one step ran.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct StepStats {
    /// Prompt tokens read and tokens decoded.
    pub prompt_tokens: usize,
    pub decode_tokens: usize,
    /// Sequences in the pass.
    pub sequences: usize,
    /// Bytes of keys and values the pass's attention read: every entry of the sequences in it.
    pub kv_bytes_read: usize,
}

/// How the engine batches and what it may hold.
#[derive(Clone, Debug)]
pub struct EngineConfig {
    pub scheduler: SchedulerConfig,
    /// The request with which a model re-reads its prompt, for policies that score by that (KVzip).
    pub reread: Option<RereadPrompt>,
}

/// A sequence waiting for room.
struct Queued {
    request: Request,
    submitted: Instant,
    peak: usize,
}

/// An admitted sequence.
struct Active<D> {
    session: Session<D>,
    sampler: Sampler,
    params: GenerationParams,
    text: TextStream,
    stops: StopStrings,
    /// The token the next decode step feeds.
    next: u32,
    stats: SequenceStats,
    submitted: Instant,
}

/// Decodes many sequences together.
pub struct Engine<D> {
    model: Arc<D>,
    config: EngineConfig,
    detokenizer: Option<Arc<dyn Detokenize>>,
    scheduler: Scheduler,
    queued: HashMap<SequenceId, Queued>,
    /// In order of admission.
    active: Vec<(SequenceId, Active<D>)>,
    next_id: SequenceId,
    /// Events of cancellations, handed out by the next step.
    pending: Vec<Event>,
    last_step: StepStats,
    /// The most bytes the caches held together, right after a forward pass (before compression).
    peak_kv_bytes: usize,
}

impl<D: CausalDecoder> Engine<D> {
    pub fn new(
        model: Arc<D>,
        config: EngineConfig,
        detokenizer: Option<Arc<dyn Detokenize>>,
    ) -> Result<Self> {
        let scheduler = Scheduler::new(config.scheduler)?;
        Ok(Engine {
            model,
            config,
            detokenizer,
            scheduler,
            queued: HashMap::new(),
            active: Vec::new(),
            next_id: 0,
            pending: Vec::new(),
            last_step: StepStats::default(),
            peak_kv_bytes: 0,
        })
    }

    pub fn model(&self) -> &Arc<D> {
        &self.model
    }

    /// The KV memory `request` reserves when admitted, bytes.
    pub fn reservation(&self, request: &Request) -> usize {
        let needs_reread = request
            .policy
            .as_ref()
            .is_some_and(|p| p.needs().context_reconstruction);
        let plan = SequencePlan {
            policy: request.policy.as_deref(),
            budget: &request.budget,
            prompt: request.prompt.len(),
            max_tokens: request.params.max_tokens,
            chunk: self.config.scheduler.chunk,
            prefill: if needs_reread {
                crate::PrefillCompression::AtEnd
            } else {
                crate::PrefillCompression::EveryChunk
            },
        };
        peak_kv_bytes(
            self.model.cache_shape(),
            self.model.kv_dtype().size_in_bytes(),
            &plan,
        )
    }

    /// Queues `request`; it runs when its KV memory fits. Refused at once when it is malformed, its
    /// policy does not take its budget, or it could never fit.
    pub fn submit(&mut self, request: Request) -> Result<SequenceId> {
        request
            .params
            .check(request.prompt.len(), self.model.context_len())?;
        let vocab = self.model.vocab();
        if let Some(&bad) = request.prompt.iter().find(|&&t| t as usize >= vocab) {
            return Err(Error::invalid(
                "prompt",
                format!("token id {bad} is outside the vocabulary of {vocab}"),
            ));
        }
        if let Some(policy) = &request.policy {
            policy
                .validate(&request.budget)
                .map_err(|m| Error::invalid(format!("{} policy", policy.typetag_name()), m))?;
            if policy.needs().context_reconstruction && self.config.reread.is_none() {
                return Err(Error::invalid(
                    format!("{} policy", policy.typetag_name()),
                    "scores the prompt by having the model re-read it, and this engine has no \
                     request to repeat it (EngineConfig::reread)",
                ));
            }
        }
        let peak = self.reservation(&request);
        let id = self.next_id;
        self.scheduler.add(id, peak, request.prompt.len())?;
        self.next_id += 1;
        self.queued.insert(
            id,
            Queued {
                request,
                submitted: Instant::now(),
                peak,
            },
        );
        Ok(id)
    }

    /// Stops sequence `id`, waiting or running, and frees its cache; the next step reports it.
    /// Whether it was there.
    pub fn cancel(&mut self, id: SequenceId) -> bool {
        if !self.scheduler.remove(id) {
            return false;
        }
        let stats = if let Some(q) = self.queued.remove(&id) {
            SequenceStats {
                prompt_tokens: q.request.prompt.len(),
                queued: q.submitted.elapsed(),
                ..SequenceStats::default()
            }
        } else {
            let i = self.active.iter().position(|(a, _)| *a == id);
            let (_, active) = self.active.remove(i.expect("a running sequence is active"));
            finished_stats(active)
        };
        self.pending.push(Event::Finished {
            id,
            reason: FinishReason::Cancelled,
            text: String::new(),
            stats,
        });
        true
    }

    /// Whether a sequence is waiting or running.
    pub fn has_work(&self) -> bool {
        !self.scheduler.is_idle() || !self.pending.is_empty()
    }

    /// Sequences running and waiting.
    pub fn running(&self) -> usize {
        self.scheduler.running()
    }

    pub fn waiting(&self) -> usize {
        self.scheduler.waiting()
    }

    /// Bytes the running sequences' caches hold now, and what was reserved for them.
    pub fn kv_bytes(&self) -> usize {
        self.active
            .iter()
            .map(|(_, a)| a.session.cache().bytes())
            .sum()
    }

    pub fn reserved_kv_bytes(&self) -> usize {
        self.scheduler.reserved()
    }

    /// The most bytes the caches held together so far, counted right after each forward pass, when
    /// every cache is at its largest (compaction's momentary copy aside).
    pub fn peak_kv_bytes(&self) -> usize {
        self.peak_kv_bytes
    }

    /// What the last step ran.
    pub fn last_step(&self) -> StepStats {
        self.last_step
    }

    /// Admits what fits and runs one batched forward pass. Returns what happened, in order.
    pub fn step(&mut self) -> Result<Vec<Event>> {
        let mut events = std::mem::take(&mut self.pending);
        for id in self.scheduler.admit() {
            let queued = self
                .queued
                .remove(&id)
                .expect("an admitted sequence was queued");
            match self.start(queued) {
                Ok(active) => self.active.push((id, active)),
                Err(e) => {
                    self.scheduler.remove(id);
                    events.push(Event::Failed {
                        id,
                        error: e.to_string(),
                    });
                }
            }
        }
        let plan = self.scheduler.plan();
        self.last_step = StepStats::default();
        if plan.is_empty() {
            return Ok(events);
        }
        let work: HashMap<SequenceId, Work> = plan.iter().copied().collect();
        let outcome = self.forward(&work);
        match outcome {
            Ok(logits) => {
                self.record(&work);
                self.advance(&work, logits, &mut events)?
            }
            Err(e) => {
                // One pass ran them all: every sequence in it failed with it.
                for (id, _) in &plan {
                    self.scheduler.remove(*id);
                    self.active.retain(|(a, _)| a != id);
                    events.push(Event::Failed {
                        id: *id,
                        error: e.to_string(),
                    });
                }
            }
        }
        Ok(events)
    }

    fn start(&self, queued: Queued) -> Result<Active<D>> {
        let Queued {
            request,
            submitted,
            peak,
        } = queued;
        let mut session = Session::new(
            self.model.clone(),
            request.policy.clone(),
            request.budget.clone(),
            request.seed,
        )?
        .with_decoding(request.params.max_tokens);
        if let Some(reread) = &self.config.reread {
            session = session.with_reread(reread.clone());
        }
        session.start_prompt(&request.prompt)?;
        Ok(Active {
            session,
            sampler: Sampler::new(request.params.sampling.clone())?,
            stops: StopStrings::new(request.params.stop.clone()),
            params: request.params,
            text: TextStream::default(),
            next: 0,
            stats: SequenceStats {
                prompt_tokens: request.prompt.len(),
                queued: submitted.elapsed(),
                reserved_kv_bytes: peak,
                ..SequenceStats::default()
            },
            submitted,
        })
    }

    /// One forward pass over the planned sequences; their logits, in admission order.
    fn forward(&mut self, work: &HashMap<SequenceId, Work>) -> Result<Vec<candle_core::Tensor>> {
        let mut rows = Vec::with_capacity(work.len());
        for (id, active) in self.active.iter_mut() {
            let Some(&w) = work.get(id) else { continue };
            let Active { session, next, .. } = active;
            let (feed, logits) = match w {
                Work::Prompt { len } => {
                    let last = len == session.prompt_left();
                    (
                        Feed::Prompt { len },
                        if last { Logits::Last } else { Logits::None },
                    )
                }
                Work::Decode => (Feed::Decode, Logits::Last),
            };
            session.feed(feed)?;
            rows.push(session.rows(feed, std::slice::from_ref(next), logits));
        }
        self.model.forward(&mut rows)
    }

    /// The pass's counts, and the caches' bytes while they are largest.
    fn record(&mut self, work: &HashMap<SequenceId, Work>) {
        let shape = self.model.cache_shape();
        let row = 2 * shape.head_dim * self.model.kv_dtype().size_in_bytes();
        let mut step = StepStats::default();
        for (id, active) in &self.active {
            match work.get(id) {
                Some(Work::Prompt { len }) => step.prompt_tokens += len,
                Some(Work::Decode) => step.decode_tokens += 1,
                None => continue,
            }
            step.sequences += 1;
            step.kv_bytes_read += active.session.cache().entries() * row;
        }
        self.last_step = step;
        self.peak_kv_bytes = self.peak_kv_bytes.max(self.kv_bytes());
    }

    /// After the pass: each sequence moves on, compresses, and chooses its next token; those that
    /// end leave, and their caches are freed.
    fn advance(
        &mut self,
        work: &HashMap<SequenceId, Work>,
        logits: Vec<candle_core::Tensor>,
        events: &mut Vec<Event>,
    ) -> Result<()> {
        let mut logits = logits.into_iter();
        let mut leaving = Vec::new();
        let detokenizer = self.detokenizer.as_deref();
        for (id, active) in self.active.iter_mut() {
            let Some(&w) = work.get(id) else { continue };
            let row = logits.next().ok_or_else(|| {
                Error::invalid("forward", "the model returned fewer logits than sequences")
            })?;
            let (feed, fed) = match w {
                Work::Prompt { len } => (Feed::Prompt { len }, len),
                Work::Decode => (Feed::Decode, 1),
            };
            let chosen = active.session.fed(feed, fed).and_then(|()| {
                if row.dim(0)? == 0 {
                    return Ok(None);
                }
                if active.params.max_tokens == 0 {
                    // Asked to read the prompt only.
                    return Ok(Some((None, Some((FinishReason::Length, String::new())))));
                }
                let values = row
                    .squeeze(0)?
                    .to_dtype(candle_core::DType::F32)?
                    .to_vec1()?;
                let choice = active.sampler.sample(&values)?;
                let (token, end) = active.take(*id, choice, detokenizer)?;
                Ok(Some((Some(token), end)))
            });
            match chosen {
                Ok(None) => {}
                Ok(Some((token, end))) => {
                    events.extend(token);
                    if let Some(end) = end {
                        leaving.push((*id, Some(end)));
                    }
                }
                Err(e) => {
                    events.push(Event::Failed {
                        id: *id,
                        error: e.to_string(),
                    });
                    leaving.push((*id, None));
                }
            }
        }
        for (id, end) in leaving {
            self.scheduler.remove(id);
            let i = self.active.iter().position(|(a, _)| *a == id);
            let (_, active) = self.active.remove(i.expect("a leaving sequence is active"));
            if let Some((reason, text)) = end {
                events.push(Event::Finished {
                    id,
                    reason,
                    text,
                    stats: finished_stats(active),
                });
            }
        }
        Ok(())
    }
}

impl<D> Active<D> {
    /// Takes the chosen token: counts it, streams its text, and says whether the sequence ends
    /// (why, and the text held back until then).
    fn take(
        &mut self,
        id: SequenceId,
        choice: Choice,
        detokenizer: Option<&dyn Detokenize>,
    ) -> Result<(Event, Option<(FinishReason, String)>)> {
        if self.stats.time_to_first_token.is_none() {
            self.stats.time_to_first_token = Some(self.submitted.elapsed());
        }
        self.stats.generated_tokens += 1;
        self.next = choice.token;
        let params = &self.params;
        let stop_token = !params.ignore_stop_tokens && params.stop_tokens.contains(&choice.token);
        let (mut text, mut stopped) = (String::new(), stop_token);
        if let (Some(d), false) = (detokenizer, stop_token) {
            let piece = self.text.push(d, choice.token)?;
            (text, stopped) = self.stops.push(&piece);
        }
        let end = if stopped && !stop_token {
            Some((FinishReason::Stop, String::new()))
        } else if stopped || self.stats.generated_tokens >= params.max_tokens {
            let mut reason = if stopped {
                FinishReason::Stop
            } else {
                FinishReason::Length
            };
            let mut rest = String::new();
            if let Some(d) = detokenizer {
                // Text held for an unfinished character comes out now and may complete a stop string.
                let (released, hit) = self.stops.push(&self.text.finish(d)?);
                rest = released;
                if hit {
                    reason = FinishReason::Stop;
                } else {
                    rest.push_str(&self.stops.finish());
                }
            }
            Some((reason, rest))
        } else {
            None
        };
        let event = Event::Token {
            id,
            token: choice.token,
            text,
            top_logit: choice.top_logit,
            lead: choice.lead,
        };
        Ok((event, end))
    }
}

/// The record of a sequence that leaves.
fn finished_stats<D: CausalDecoder>(active: Active<D>) -> SequenceStats {
    let compression = active.session.stats();
    SequenceStats {
        peak_kv_bytes: compression.peak_kv_bytes,
        compressions: compression.compressions,
        eviction_time: compression.eviction_time,
        ..active.stats
    }
}
