//! spectra's inference runtime: what a model must offer ([`CausalDecoder`]), one sequence with a
//! bounded KV cache ([`Session`]), many sequences decoded together under a KV memory budget
//! ([`Engine`], [`Scheduler`]), and the generation API they share (sampling, stop tokens and strings,
//! text streamed without splitting a character).

pub mod decoder;
pub mod engine;
pub mod generation;
pub mod kv_memory;
pub mod scheduler;
pub mod session;

pub use decoder::{CausalDecoder, Logits, ReconstructionScores, RereadPrompt, SequenceRows, Taps};
pub use engine::{Engine, EngineConfig, Event, Request, SequenceStats, StepStats};
pub use generation::{
    continue_session, continue_sessions, Choice, Detokenize, FinishReason, GenerationParams,
    Sampler, SamplingParams, StopStrings, TextStream,
};
pub use kv_memory::{peak_kv_bytes, SequencePlan};
pub use scheduler::{Scheduler, SchedulerConfig, SequenceId, StepPriority, Work};
pub use session::{Feed, PrefillCompression, Session};
