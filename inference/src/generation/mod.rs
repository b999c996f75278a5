//! The generation API every decode loop shares: how a sequence's tokens are chosen
//! ([`SamplingParams`]), when it ends ([`GenerationParams`], [`FinishReason`]), and its text as it
//! arrives ([`TextStream`], [`StopStrings`]).

mod sampling;
mod text;

use candle_core::{DType, Tensor};
use serde::{Deserialize, Serialize};
use spectra_core::{Error, Result};

use crate::decoder::CausalDecoder;
use crate::session::Session;

pub use sampling::{Choice, Sampler, SamplingParams};
pub use text::{Detokenize, StopStrings, TextStream};

/// What a generation asks for besides its prompt.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct GenerationParams {
    /// The most tokens generated after the prompt (0 reads the prompt and generates nothing).
    pub max_tokens: usize,
    pub sampling: SamplingParams,
    /// Texts that end the generation; the text before the first of them is the answer.
    pub stop: Vec<String>,
    /// Tokens that end the generation (the model's end of sequence, usually); not part of the text.
    pub stop_tokens: Vec<u32>,
    /// Keep going past `stop_tokens`, to `max_tokens` (to time decoding).
    pub ignore_stop_tokens: bool,
}

impl Default for GenerationParams {
    fn default() -> Self {
        GenerationParams {
            max_tokens: 64,
            sampling: SamplingParams::default(),
            stop: Vec::new(),
            stop_tokens: Vec::new(),
            ignore_stop_tokens: false,
        }
    }
}

impl GenerationParams {
    /// The settings are usable, and a prompt of `prompt_len` tokens plus `max_tokens` fits a model
    /// trained on `context_len` positions (past them RoPE gives positions the model never saw).
    pub fn check(&self, prompt_len: usize, context_len: usize) -> Result<()> {
        self.sampling.validate()?;
        if prompt_len == 0 {
            return Err(Error::invalid(
                "prompt",
                "is empty; give at least one token",
            ));
        }
        let needed = prompt_len.saturating_add(self.max_tokens);
        if needed > context_len {
            return Err(Error::invalid(
                "max_tokens",
                format!(
                    "the prompt ({prompt_len} tokens) + max_tokens ({}) needs {needed} positions, \
                     but the model was trained on {context_len}; shorten the prompt or ask for at \
                     most {} tokens",
                    self.max_tokens,
                    context_len.saturating_sub(prompt_len)
                ),
            ));
        }
        Ok(())
    }
}

/// Why a generation ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FinishReason {
    /// A stop token or stop string.
    Stop,
    /// `max_tokens` were generated.
    Length,
    /// The caller cancelled it.
    Cancelled,
}

/// Continues one session whose last forward pass gave `logits` (`[1, vocab]`): tokens are chosen as
/// `params.sampling` says until a stop token (unless ignored), `params.max_tokens` tokens, or `done`
/// says the tokens so far are enough. The session reads every chosen token but the last.
pub fn continue_session<D: CausalDecoder>(
    session: &mut Session<D>,
    logits: &Tensor,
    params: &GenerationParams,
    mut done: impl FnMut(&[u32]) -> Result<bool>,
) -> Result<Vec<u32>> {
    let mut sampler = Sampler::new(params.sampling.clone())?;
    let mut row: Vec<f32> = logits.squeeze(0)?.to_dtype(DType::F32)?.to_vec1()?;
    let mut said = Vec::new();
    while said.len() < params.max_tokens {
        let token = sampler.sample(&row)?.token;
        if !params.ignore_stop_tokens && params.stop_tokens.contains(&token) {
            break;
        }
        said.push(token);
        if said.len() == params.max_tokens || done(&said)? {
            break;
        }
        row = session
            .step(token)?
            .squeeze(0)?
            .to_dtype(DType::F32)?
            .to_vec1()?;
    }
    Ok(said)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_prompt_and_max_tokens_past_the_context_are_refused_with_the_room_left() {
        let params = GenerationParams {
            max_tokens: 100,
            ..GenerationParams::default()
        };
        assert!(params.check(924, 1024).is_ok());
        let e = params.check(1000, 1024).unwrap_err().to_string();
        assert!(e.contains("max_tokens") && e.contains("at most 24"), "{e}");
        assert!(params.check(0, 1024).is_err());
    }
}
