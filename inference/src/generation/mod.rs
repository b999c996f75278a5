//! The generation API every decode loop shares: how a sequence's tokens are chosen
//! ([`SamplingParams`]), when it ends ([`GenerationParams`], [`FinishReason`]), and its text as it
//! arrives ([`TextStream`], [`StopStrings`]).

mod sampling;
mod text;

use candle_core::{DType, Tensor};
use serde::{Deserialize, Serialize};
use spectra_core::{Error, Result};

use crate::decoder::{CausalDecoder, Logits};
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
    let mut said = continue_sessions(
        &mut [session],
        std::slice::from_ref(logits),
        params,
        |_, tokens| done(tokens),
    )?;
    Ok(said.remove(0))
}

/// [`continue_session`] for several sessions of one model in lockstep: each step, the sessions
/// still going read their chosen tokens in one forward pass ([`Session::extend_together`]), so
/// the weights are read once a step for all of them. Each session's tokens are those it would
/// choose alone; `done(i, tokens)` is asked of session `i`.
pub fn continue_sessions<D: CausalDecoder>(
    sessions: &mut [&mut Session<D>],
    logits: &[Tensor],
    params: &GenerationParams,
    mut done: impl FnMut(usize, &[u32]) -> Result<bool>,
) -> Result<Vec<Vec<u32>>> {
    let row = |logits: &Tensor| -> Result<Vec<f32>> {
        Ok(logits.squeeze(0)?.to_dtype(DType::F32)?.to_vec1()?)
    };
    let mut rows = logits.iter().map(row).collect::<Result<Vec<_>>>()?;
    let mut samplers = (0..sessions.len())
        .map(|_| Sampler::new(params.sampling.clone()))
        .collect::<Result<Vec<_>>>()?;
    let mut said = vec![Vec::new(); sessions.len()];
    let mut going: Vec<usize> = (0..sessions.len()).collect();
    while !going.is_empty() {
        let mut reading = Vec::new();
        for &i in &going {
            if said[i].len() >= params.max_tokens {
                continue;
            }
            let token = samplers[i].sample(&rows[i])?.token;
            if !params.ignore_stop_tokens && params.stop_tokens.contains(&token) {
                continue;
            }
            said[i].push(token);
            if said[i].len() < params.max_tokens && !done(i, &said[i])? {
                reading.push(i);
            }
        }
        let tokens: Vec<[u32; 1]> = reading
            .iter()
            .map(|&i| [*said[i].last().unwrap()])
            .collect();
        let token_rows: Vec<&[u32]> = tokens.iter().map(|t| t.as_slice()).collect();
        let mut batch: Vec<&mut Session<D>> = sessions
            .iter_mut()
            .enumerate()
            .filter(|(i, _)| reading.binary_search(i).is_ok())
            .map(|(_, s)| &mut **s)
            .collect();
        let logits = Session::extend_together(&mut batch, &token_rows, Logits::Last)?;
        for (&i, l) in reading.iter().zip(&logits) {
            rows[i] = row(l)?;
        }
        going = reading;
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
