//! `spectra generate --model M [--policy RON --budget N] "prompt"`: a continuation, streamed, with
//! the cache's size and the prefill and decoding speeds at the end. It runs on the batching engine
//! with one sequence, as `spectra serve` and `spectra bench` run many.

use std::io::Write;
use std::num::NonZeroUsize;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Instant;

use clap::Args;
use spectra_core::Error;
use spectra_inference::{
    Engine, EngineConfig, Event, GenerationParams, Request, SamplingParams, SchedulerConfig,
    StepPriority,
};

use super::args::{at_least_one, ModelArgs, PolicyArgs};
use spectra::units::human_bytes;

#[derive(Args)]
pub struct GenerateArgs {
    #[command(flatten)]
    model: ModelArgs,
    #[command(flatten)]
    policy: PolicyArgs,
    /// Tokens to generate.
    #[arg(long, default_value_t = 64)]
    max_tokens: usize,
    /// Prompt tokens per prefill chunk.
    #[arg(long, value_parser = at_least_one, default_value = "256")]
    chunk: NonZeroUsize,
    /// 0 decodes greedily; above 0 samples (with --top-k, --top-p, --min-p, --seed).
    #[arg(long, default_value_t = 0.0)]
    temperature: f32,
    #[arg(long, default_value_t = 0)]
    top_k: usize,
    #[arg(long, default_value_t = 1.0)]
    top_p: f32,
    #[arg(long, default_value_t = 0.0)]
    min_p: f32,
    #[arg(long)]
    seed: Option<u64>,
    /// Stop at this text (repeatable); the text before it is the answer.
    #[arg(long)]
    stop: Vec<String>,
    /// Read the prompt from this file instead of the command line.
    #[arg(long, conflicts_with = "prompt")]
    prompt_file: Option<PathBuf>,
    /// Use only the first N tokens of the prompt (to time a given context length).
    #[arg(long)]
    prompt_tokens: Option<usize>,
    /// Keep decoding past the end-of-sequence token, to --max-tokens (to time decoding).
    #[arg(long)]
    ignore_eos: bool,
    /// Write each generated token's id, text, logit and lead over the runner-up to this file, one
    /// JSON line per token (to tell a near-tie from a real disagreement with another engine).
    #[arg(long)]
    margins: Option<PathBuf>,
    /// Send the prompt as a user's chat message, through the model's chat template (ChatML where
    /// its file has none), as `spectra serve` does.
    #[arg(long)]
    chat: bool,
    #[arg(required_unless_present = "prompt_file")]
    prompt: Option<String>,
}

pub fn run(args: GenerateArgs) -> Result<(), Error> {
    let text = match (&args.prompt, &args.prompt_file) {
        (_, Some(path)) => {
            std::fs::read_to_string(path).map_err(|e| Error::file(path, e.to_string()))?
        }
        (Some(text), None) => text.clone(),
        (None, None) => unreachable!("clap requires a prompt or --prompt-file"),
    };
    // The policy before the model: a bad one is refused without waiting for the load.
    let (policy, budget) = args.policy.read()?;
    let (model, tokenizer) = args.model.load()?;
    let text = if args.chat {
        spectra::chat_template::ChatTemplate::of(&tokenizer)?.render(&[
            spectra::chat_template::Message {
                role: "user".into(),
                content: text,
            },
        ])?
    } else {
        text
    };
    let mut prompt = tokenizer.encode(&text)?;
    if let Some(n) = args.prompt_tokens {
        if n == 0 || n > prompt.len() {
            return Err(Error::invalid(
                "--prompt-tokens",
                format!(
                    "is {n}, the prompt has {} tokens; give 1 to {}, or a longer prompt",
                    prompt.len(),
                    prompt.len()
                ),
            ));
        }
        prompt.truncate(n);
    }
    let params = GenerationParams {
        max_tokens: args.max_tokens,
        sampling: SamplingParams {
            temperature: args.temperature,
            top_k: args.top_k,
            top_p: args.top_p,
            min_p: args.min_p,
            seed: args.seed,
        },
        stop: args.stop.clone(),
        stop_tokens: tokenizer.eos.into_iter().collect(),
        ignore_stop_tokens: args.ignore_eos,
    };
    let reread = spectra::kv_eval::reread_prompt(&tokenizer, &spectra::kv_eval::Turn::default())?;
    let prompt_text = tokenizer.decode(&prompt)?;
    let tokenizer = Arc::new(tokenizer);
    let mut engine = Engine::new(
        model,
        EngineConfig {
            scheduler: SchedulerConfig {
                kv_memory: usize::MAX,
                max_sequences: 1,
                step_tokens: args.chunk.get(),
                chunk: args.chunk.get(),
                priority: StepPriority::DecodeFirst,
            },
            reread: Some(reread),
        },
        Some(tokenizer.clone()),
    )?;
    engine.submit(Request {
        prompt: prompt.clone(),
        params,
        policy,
        budget,
        seed: 0,
    })?;
    let mut margins = match &args.margins {
        Some(path) => Some(std::io::BufWriter::new(
            std::fs::File::create(path)
                .map_err(|e| Error::file(path, format!("cannot write the margins: {e}")))?,
        )),
        None => None,
    };
    let margins_error = |e: std::io::Error| {
        let path = args
            .margins
            .as_deref()
            .unwrap_or(std::path::Path::new("--margins"));
        Error::file(path, format!("cannot write the margins: {e}"))
    };
    print!("{prompt_text}");
    let started = Instant::now();
    let mut first_token = None;
    let mut finished = None;
    while engine.has_work() {
        for event in engine.step()? {
            match event {
                Event::Token {
                    token,
                    text,
                    top_logit,
                    lead,
                    ..
                } => {
                    first_token.get_or_insert_with(Instant::now);
                    if let Some(out) = margins.as_mut() {
                        let piece = tokenizer.decode(&[token])?;
                        let line = serde_json::json!(
                            {"token": token, "text": piece, "logit": top_logit, "lead": lead}
                        );
                        writeln!(out, "{line}").map_err(margins_error)?;
                    }
                    print!("{text}");
                    std::io::stdout().flush().ok();
                }
                Event::Finished { text, stats, .. } => {
                    print!("{text}");
                    finished = Some((stats, Instant::now()));
                }
                Event::Failed { error, .. } => return Err(Error::invalid("generation", error)),
            }
        }
    }
    if let Some(mut out) = margins {
        out.flush().map_err(margins_error)?;
    }
    println!();
    let (stats, ended) = finished.ok_or_else(|| Error::invalid("generation", "did not finish"))?;
    let first = first_token.unwrap_or(ended);
    let prefill = first.duration_since(started).as_secs_f64().max(1e-9);
    let decoding = ended.duration_since(first).as_secs_f64().max(1e-9);
    // The first token comes from the prompt's pass; each later one from a decoding pass.
    let passes = stats.generated_tokens.saturating_sub(1);
    eprintln!(
        "prompt {} tokens in {prefill:.2}s ({:.1} tokens/s); {} tokens at {:.1} tokens/s; KV cache \
         {} at peak; {} compressions took {:.1}% of the time",
        prompt.len(),
        prompt.len() as f64 / prefill,
        stats.generated_tokens,
        passes as f64 / decoding,
        human_bytes(stats.peak_kv_bytes),
        stats.compressions,
        100.0 * stats.eviction_time.as_secs_f64() / started.elapsed().as_secs_f64().max(1e-9),
    );
    Ok(())
}
