//! `spectra perplexity --model M --text FILE [--context N]`: a text's perplexity as llama.cpp's
//! `llama-perplexity` measures it, so that the two decoders can be checked against each other.
//!
//! The text is tokenized whole and cut into consecutive `context`-token chunks, each read from an
//! empty cache; the predictions of the second half of each chunk (positions `context/2` to
//! `context − 2`, each for the next token) are scored. The perplexity is `exp` of their mean negative
//! log-likelihood. llama.cpp also puts a BOS token first in every chunk for models whose GGUF sets
//! `add_bos_token`; spectra does not, so compare the two on models that do not (SmolLM2).

use std::num::NonZeroUsize;
use std::path::PathBuf;

use clap::Args;
use spectra_core::Error;
use spectra_inference::{Logits, Session};
use spectra_models::llama::score_targets;

use super::args::{at_least_one, ModelArgs};

#[derive(Args)]
pub struct PerplexityArgs {
    #[command(flatten)]
    model: ModelArgs,
    /// The plain text to score.
    #[arg(long)]
    text: PathBuf,
    /// Tokens per chunk (llama-perplexity's `-c`).
    #[arg(long, default_value_t = 512)]
    context: usize,
    /// Score at most this many chunks (llama-perplexity's `--chunks`).
    #[arg(long, value_parser = at_least_one)]
    chunks: Option<NonZeroUsize>,
}

pub fn run(args: PerplexityArgs) -> Result<(), Error> {
    let (model, tokenizer) = args.model.load()?;
    let text = std::fs::read_to_string(&args.text)
        .map_err(|e| Error::file(&args.text, format!("cannot read: {e}")))?;
    let n = args.context;
    if n < 4 || n > model.config.max_context {
        return Err(Error::invalid(
            "--context",
            format!(
                "is {n}; give 4 to {} (the model's context)",
                model.config.max_context
            ),
        ));
    }
    let tokens = tokenizer.encode(&text)?;
    let available = tokens.len() / n;
    if available < 2 {
        return Err(Error::file(
            &args.text,
            format!(
                "tokenizes to {} tokens; a context of {n} needs at least {} (as llama-perplexity)",
                tokens.len(),
                2 * n
            ),
        ));
    }
    let chunks = args.chunks.map_or(available, |c| c.get().min(available));
    let first = n / 2;
    let (mut nll, mut count) = (0f64, 0usize);
    for (i, chunk) in tokens.chunks_exact(n).take(chunks).enumerate() {
        let mut session = Session::new(
            model.clone(),
            None,
            spectra_core::Budget::Tokens(usize::MAX),
            0,
        )?;
        let logits = session.prefill(chunk, n, Logits::All)?;
        let scored = logits.narrow(0, first, n - 1 - first)?;
        let (losses, _) = score_targets(&scored, &chunk[first + 1..])?;
        if !losses.iter().all(|l| l.is_finite()) {
            return Err(Error::invalid(
                "--model",
                format!(
                    "chunk {} scores NaN or Inf: the model's logits are not finite, so its weights \
                     are damaged; fetch the file again",
                    i + 1
                ),
            ));
        }
        nll += losses.iter().sum::<f64>();
        count += losses.len();
        eprint!(
            "\r[{}/{chunks}] perplexity so far {:.4}",
            i + 1,
            (nll / count as f64).exp()
        );
    }
    eprintln!();
    println!(
        "perplexity {:.4} over {chunks} chunks of {n} tokens ({count} predictions)",
        (nll / count as f64).exp()
    );
    Ok(())
}
