//! Continuous batching: which sequences run in the next forward pass, and with how many tokens.
//!
//! Sequences wait in arrival order and are admitted from the front only, when the KV memory their
//! peak needs (reserved whole, [`crate::kv_memory`]) fits beside what the running ones reserved: the
//! running sequences together never exceed the KV memory budget, and none is overtaken by later
//! ones, so none starves. Each step carries at most `step_tokens` tokens: one for every sequence
//! that is decoding and prompt chunks of at most `chunk` tokens, as the step priority says. A
//! sequence that finishes or is cancelled gives its reservation back at once.

use std::collections::VecDeque;

use spectra_core::{Error, Result};

/// A sequence's handle.
pub type SequenceId = u64;

/// Which work a step takes first.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum StepPriority {
    /// Every decoding sequence's next token, then prompt chunks in the room left (vLLM's chunked
    /// prefill): decoding never stalls while prompts arrive.
    #[default]
    DecodeFirst,
    /// Prompt chunks while any prompt is unread, and decoding only then (llama-batched-bench's
    /// order): the shortest time to every sequence's first token.
    PrefillFirst,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SchedulerConfig {
    /// Bytes of KV cache all running sequences may hold together.
    pub kv_memory: usize,
    /// The most sequences running at once.
    pub max_sequences: usize,
    /// The most tokens one forward pass carries.
    pub step_tokens: usize,
    /// The most prompt tokens of one sequence in one pass.
    pub chunk: usize,
    pub priority: StepPriority,
}

impl SchedulerConfig {
    pub fn validate(&self) -> Result<()> {
        for (field, value) in [
            ("kv_memory", self.kv_memory),
            ("max_sequences", self.max_sequences),
            ("step_tokens", self.step_tokens),
            ("chunk", self.chunk),
        ] {
            if value == 0 {
                return Err(Error::invalid(field, "is 0; give at least 1"));
            }
        }
        Ok(())
    }
}

/// One sequence's part of a step.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Work {
    /// The next `len` tokens of its prompt.
    Prompt { len: usize },
    /// Its next token.
    Decode,
}

#[derive(Clone, Debug)]
struct Waiting {
    id: SequenceId,
    peak: usize,
    prompt: usize,
}

#[derive(Clone, Debug)]
struct Running {
    id: SequenceId,
    peak: usize,
    /// Prompt tokens not yet planned.
    prompt_left: usize,
}

/// The scheduler's books; it runs nothing itself.
#[derive(Clone, Debug)]
pub struct Scheduler {
    config: SchedulerConfig,
    waiting: VecDeque<Waiting>,
    /// In order of admission.
    running: Vec<Running>,
    reserved: usize,
}

impl Scheduler {
    pub fn new(config: SchedulerConfig) -> Result<Self> {
        config.validate()?;
        Ok(Scheduler {
            config,
            waiting: VecDeque::new(),
            running: Vec::new(),
            reserved: 0,
        })
    }

    pub fn config(&self) -> &SchedulerConfig {
        &self.config
    }

    /// Queues sequence `id`, whose prompt has `prompt` tokens and whose KV cache needs at most
    /// `peak` bytes. A sequence that could never fit is refused at once.
    pub fn add(&mut self, id: SequenceId, peak: usize, prompt: usize) -> Result<()> {
        if peak > self.config.kv_memory {
            return Err(Error::invalid(
                "request",
                format!(
                    "its KV cache may need {peak} bytes, more than the whole KV memory budget of {} \
                     bytes; give a shorter prompt, fewer max_tokens, a smaller KV budget or a \
                     policy that evicts, or a larger --kv-memory",
                    self.config.kv_memory
                ),
            ));
        }
        if prompt == 0 {
            return Err(Error::invalid(
                "prompt",
                "is empty; give at least one token",
            ));
        }
        self.waiting.push_back(Waiting { id, peak, prompt });
        Ok(())
    }

    /// Forgets sequence `id`, waiting or running, and frees its reservation. Whether it was there.
    pub fn remove(&mut self, id: SequenceId) -> bool {
        if let Some(i) = self.running.iter().position(|r| r.id == id) {
            self.reserved -= self.running.remove(i).peak;
            return true;
        }
        let before = self.waiting.len();
        self.waiting.retain(|w| w.id != id);
        self.waiting.len() < before
    }

    /// Admits waiting sequences from the front while they fit; returns those admitted.
    pub fn admit(&mut self) -> Vec<SequenceId> {
        let mut admitted = Vec::new();
        while let Some(front) = self.waiting.front() {
            let fits = self.reserved + front.peak <= self.config.kv_memory
                && self.running.len() < self.config.max_sequences;
            if !fits {
                break;
            }
            let w = self.waiting.pop_front().expect("the front exists");
            self.reserved += w.peak;
            self.running.push(Running {
                id: w.id,
                peak: w.peak,
                prompt_left: w.prompt,
            });
            admitted.push(w.id);
        }
        admitted
    }

    /// The next step's work, sequence by sequence in admission order. The prompt tokens planned are
    /// taken as read.
    pub fn plan(&mut self) -> Vec<(SequenceId, Work)> {
        let mut room = self.config.step_tokens;
        let mut work = Vec::new();
        let prefilling = self.running.iter().any(|r| r.prompt_left > 0);
        let decode = match self.config.priority {
            StepPriority::DecodeFirst => true,
            StepPriority::PrefillFirst => !prefilling,
        };
        if decode {
            for r in self.running.iter().filter(|r| r.prompt_left == 0) {
                if room == 0 {
                    break;
                }
                work.push((r.id, Work::Decode));
                room -= 1;
            }
        }
        for r in self.running.iter_mut().filter(|r| r.prompt_left > 0) {
            let len = r.prompt_left.min(self.config.chunk).min(room);
            if len == 0 {
                break;
            }
            r.prompt_left -= len;
            room -= len;
            work.push((r.id, Work::Prompt { len }));
        }
        // In admission order, whatever order the work was chosen in.
        let order = |id: SequenceId| self.running.iter().position(|r| r.id == id);
        work.sort_by_key(|&(id, _)| order(id));
        work
    }

    /// Bytes reserved by the running sequences.
    pub fn reserved(&self) -> usize {
        self.reserved
    }

    pub fn running(&self) -> usize {
        self.running.len()
    }

    pub fn waiting(&self) -> usize {
        self.waiting.len()
    }

    /// Nothing is waiting or running.
    pub fn is_idle(&self) -> bool {
        self.running.is_empty() && self.waiting.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn config(kv_memory: usize, priority: StepPriority) -> SchedulerConfig {
        SchedulerConfig {
            kv_memory,
            max_sequences: 8,
            step_tokens: 10,
            chunk: 4,
            priority,
        }
    }

    #[test]
    fn admission_is_in_arrival_order_and_within_the_budget() {
        let mut s = Scheduler::new(config(100, StepPriority::DecodeFirst)).unwrap();
        s.add(1, 60, 3).unwrap();
        s.add(2, 50, 3).unwrap();
        s.add(3, 10, 3).unwrap();
        // 2 does not fit beside 1, and 3 may not overtake it.
        assert_eq!(s.admit(), [1]);
        assert_eq!(s.waiting(), 2);
        assert!(s.remove(1));
        assert_eq!(s.admit(), [2, 3]);
        assert_eq!(s.reserved(), 60);
        assert!(s
            .add(4, 101, 3)
            .unwrap_err()
            .to_string()
            .contains("KV memory"));
    }

    #[test]
    fn decode_first_fills_the_room_left_with_prompt_chunks() {
        let mut s = Scheduler::new(config(1000, StepPriority::DecodeFirst)).unwrap();
        s.add(1, 1, 2).unwrap();
        s.admit();
        assert_eq!(s.plan(), [(1, Work::Prompt { len: 2 })]);
        s.add(2, 1, 20).unwrap();
        s.add(3, 1, 20).unwrap();
        s.admit();
        // One decode token, then chunks of at most 4 in the 9 tokens left.
        assert_eq!(
            s.plan(),
            [
                (1, Work::Decode),
                (2, Work::Prompt { len: 4 }),
                (3, Work::Prompt { len: 4 })
            ]
        );
    }

    #[test]
    fn prefill_first_holds_decoding_until_every_prompt_is_read() {
        let mut s = Scheduler::new(config(1000, StepPriority::PrefillFirst)).unwrap();
        s.add(1, 1, 2).unwrap();
        s.add(2, 1, 6).unwrap();
        s.admit();
        assert_eq!(
            s.plan(),
            [(1, Work::Prompt { len: 2 }), (2, Work::Prompt { len: 4 })]
        );
        assert_eq!(s.plan(), [(2, Work::Prompt { len: 2 })]);
        assert_eq!(s.plan(), [(1, Work::Decode), (2, Work::Decode)]);
    }

    proptest! {
        /// Sequences arriving, running for a while and leaving: the reservations never exceed the
        /// budget, a step never exceeds its tokens, every prompt is planned exactly, and every
        /// sequence is admitted (none starves).
        #[test]
        fn reservations_and_steps_stay_within_their_limits(
            arrivals in prop::collection::vec((1usize..60, 1usize..30, 1usize..6), 1..20),
            priority in prop_oneof![Just(StepPriority::DecodeFirst), Just(StepPriority::PrefillFirst)],
        ) {
            let mut s = Scheduler::new(config(100, priority)).unwrap();
            let mut next = arrivals.iter().enumerate();
            let mut read = vec![0usize; arrivals.len()];
            let mut decoded = vec![0usize; arrivals.len()];
            let mut admitted = vec![false; arrivals.len()];
            for _ in 0..10_000 {
                if let Some((i, &(peak, prompt, _))) = next.next() {
                    s.add(i as u64, peak, prompt).unwrap();
                }
                for id in s.admit() {
                    admitted[id as usize] = true;
                }
                prop_assert!(s.reserved() <= 100);
                let plan = s.plan();
                let tokens: usize = plan.iter().map(|(_, w)| match w {
                    Work::Prompt { len } => *len,
                    Work::Decode => 1,
                }).sum();
                prop_assert!(tokens <= 10);
                for (id, w) in plan {
                    let i = id as usize;
                    match w {
                        Work::Prompt { len } => read[i] += len,
                        Work::Decode => {
                            prop_assert_eq!(read[i], arrivals[i].1);
                            decoded[i] += 1;
                            if decoded[i] == arrivals[i].2 {
                                prop_assert!(s.remove(id));
                            }
                        }
                    }
                }
                if s.is_idle() && next.len() == 0 {
                    break;
                }
            }
            prop_assert!(s.is_idle());
            prop_assert!(admitted.iter().all(|&a| a));
            prop_assert_eq!(s.reserved(), 0);
        }
    }
}
