//! spectra's inference runtime: what a model must offer ([`CausalDecoder`]), one sequence with a
//! bounded KV cache ([`Session`]), many sequences decoded together under a KV memory budget
//! ([`Engine`], [`Scheduler`]), and the generation API they share (sampling, stop tokens and strings,
//! text streamed without splitting a character).

pub mod decoder;
pub mod session;

pub use decoder::{CausalDecoder, Logits, ReconstructionScores, RereadPrompt, SequenceRows, Taps};
pub use session::{Feed, PrefillCompression, Session};
