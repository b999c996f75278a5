//! `spectra generate --model M [--policy RON --budget N] "prompt"`: greedy decoding, streamed, with the
//! cache's size and the prefill and decoding speeds at the end.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use candle_core::DType;
use clap::Args;
use spectra_core::config::parse_ron;
use spectra_core::{Budget, DeviceSpec, Error, KvEvictionPolicy};
use spectra_inference::{Logits, Session};
use spectra_models::llama::{Llama, WeightFormat};

#[derive(Args)]
pub struct GenerateArgs {
    /// A GGUF file or a Hugging Face folder (config.json, *.safetensors, tokenizer.json).
    #[arg(long, default_value = "data/models/SmolLM2-135M-Instruct.Q4_1.gguf")]
    model: PathBuf,
    /// A KV eviction policy as RON, inline or a file, e.g. '(type: "StreamingLlm", cfg: (sinks: 4))'.
    #[arg(long)]
    policy: Option<String>,
    /// KV entries kept per head (with --policy).
    #[arg(long, default_value_t = 512)]
    budget: usize,
    /// Tokens to generate.
    #[arg(long, default_value_t = 64)]
    max_tokens: usize,
    /// Prompt tokens per prefill chunk.
    #[arg(long, default_value_t = 256)]
    chunk: usize,
    /// Expand quantized weights to f32 when loading: exact products, 4–7× the memory, slower.
    #[arg(long)]
    f32_weights: bool,
    /// Read the prompt from this file instead of the command line.
    #[arg(long, conflicts_with = "prompt")]
    prompt_file: Option<PathBuf>,
    /// Use only the first N tokens of the prompt (to time a given context length).
    #[arg(long)]
    prompt_tokens: Option<usize>,
    /// How the KV cache stores keys and values: f16 or bf16 halve its bytes.
    #[arg(long, value_enum, default_value_t = KvDtype::F32)]
    kv_dtype: KvDtype,
    /// Keep decoding past the end-of-sequence token, to --max-tokens (to time decoding).
    #[arg(long)]
    ignore_eos: bool,
    /// Write each generated token's id, text, logit and lead over the runner-up to this file, one
    /// JSON line per token (to tell a near-tie from a real disagreement with another engine).
    #[arg(long)]
    margins: Option<PathBuf>,
    #[arg(long, default_value = "Auto")]
    device: String,
    #[arg(required_unless_present = "prompt_file")]
    prompt: Option<String>,
}

#[derive(Clone, Copy, clap::ValueEnum)]
enum KvDtype {
    F32,
    F16,
    Bf16,
}

fn read_policy(text: &str) -> Result<Arc<dyn KvEvictionPolicy>, Error> {
    let path = Path::new(text);
    if path.is_dir() {
        return Err(Error::file(
            path,
            "is a folder; --policy takes a RON file or inline RON, e.g. '(type: \"StreamingLlm\", cfg: (sinks: 4))'",
        ));
    }
    if path.is_file() {
        let body = std::fs::read_to_string(path).map_err(|e| Error::file(path, e.to_string()))?;
        Ok(parse_ron(&body, path)?)
    } else {
        Ok(parse_ron(text, Path::new("--policy"))?)
    }
}

pub fn run(args: GenerateArgs) -> Result<(), Error> {
    let device: DeviceSpec = parse_ron(&args.device, Path::new("--device"))?;
    let device = device.resolve()?;
    let format = if args.f32_weights {
        WeightFormat::Dequantized
    } else {
        WeightFormat::Quantized
    };
    let text = match (&args.prompt, &args.prompt_file) {
        (_, Some(path)) => {
            std::fs::read_to_string(path).map_err(|e| Error::file(path, e.to_string()))?
        }
        (Some(text), None) => text.clone(),
        (None, None) => unreachable!("clap requires a prompt or --prompt-file"),
    };
    let (model, tokenizer) = Llama::load(&args.model, &device, format)?;
    let model = model.with_kv_dtype(match args.kv_dtype {
        KvDtype::F32 => DType::F32,
        KvDtype::F16 => DType::F16,
        KvDtype::Bf16 => DType::BF16,
    })?;
    let model = Arc::new(model);
    let policy = args.policy.as_deref().map(read_policy).transpose()?;
    let budget = Budget::Tokens(args.budget);
    if let Some(p) = &policy {
        p.validate(&budget)
            .map_err(|m| Error::invalid(format!("--policy at --budget {}", args.budget), m))?;
    }
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
    // As `spectra kv` checks its tasks: past the trained context, RoPE positions the model never saw.
    spectra::kv::check_context(
        &model,
        prompt.len() + args.max_tokens,
        &format!(
            "the prompt ({} tokens) + --max-tokens {}",
            prompt.len(),
            args.max_tokens
        ),
    )?;
    let reread = spectra::kv::reread_prompt(&tokenizer, spectra::kv::PromptFormat::Plain)?;
    let mut session = Session::new(model.clone(), policy.clone(), budget, 0)?
        .with_decoding(args.max_tokens)
        .with_reread(reread);
    let started = Instant::now();
    let mut logits = session.prefill(&prompt, args.chunk, Logits::Last)?;
    let prefill_time = started.elapsed();
    print!("{}", tokenizer.decode(&prompt)?);
    let decode_started = Instant::now();
    let mut generated = 0;
    let mut margins = match &args.margins {
        Some(path) => Some(std::io::BufWriter::new(
            std::fs::File::create(path)
                .map_err(|e| Error::file(path, format!("cannot write the margins: {e}")))?,
        )),
        None => None,
    };
    for _ in 0..args.max_tokens {
        let next = logits.squeeze(0)?.argmax(0)?.to_scalar::<u32>()?;
        if Some(next) == tokenizer.eos && !args.ignore_eos {
            break;
        }
        let piece = tokenizer.decode(&[next])?;
        if let (Some(out), Some(path)) = (margins.as_mut(), &args.margins) {
            let (top, lead) = lead_over_runner_up(&logits.flatten_all()?.to_vec1::<f32>()?);
            let line =
                serde_json::json!({"token": next, "text": piece, "logit": top, "lead": lead});
            writeln!(out, "{line}")
                .map_err(|e| Error::file(path, format!("cannot write the margins: {e}")))?;
        }
        print!("{piece}");
        std::io::stdout().flush().ok();
        generated += 1;
        logits = session.step(next)?;
    }
    let decode_time = decode_started.elapsed();
    if let (Some(mut out), Some(path)) = (margins, &args.margins) {
        out.flush()
            .map_err(|e| Error::file(path, format!("cannot write the margins: {e}")))?;
    }
    println!();
    let stats = session.stats();
    eprintln!(
        "prompt {} tokens in {:.2}s ({:.1} tokens/s); {} tokens at {:.1} tokens/s; KV cache {} now, \
         {} at peak; {} compressions took {:.1}% of the time",
        prompt.len(),
        prefill_time.as_secs_f64(),
        prompt.len() as f64 / prefill_time.as_secs_f64().max(1e-9),
        generated,
        generated as f64 / decode_time.as_secs_f64().max(1e-9),
        human_bytes(session.cache().bytes()),
        human_bytes(stats.peak_kv_bytes),
        stats.compressions,
        100.0 * stats.eviction_time.as_secs_f64() / started.elapsed().as_secs_f64().max(1e-9),
    );
    Ok(())
}

/// The largest logit and how far it lies above the second largest.
fn lead_over_runner_up(logits: &[f32]) -> (f32, f32) {
    let (mut first, mut second) = (f32::NEG_INFINITY, f32::NEG_INFINITY);
    for &x in logits {
        if x > first {
            second = first;
            first = x;
        } else if x > second {
            second = x;
        }
    }
    (first, first - second)
}

fn human_bytes(bytes: usize) -> String {
    if bytes >= 1 << 20 {
        format!("{:.1} MiB", bytes as f64 / f64::from(1 << 20))
    } else {
        format!("{:.1} KiB", bytes as f64 / 1024.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_lead_is_over_the_runner_up_wherever_they_stand() {
        assert_eq!(lead_over_runner_up(&[1.0, 4.0, 2.5, 3.0]), (4.0, 1.0));
        assert_eq!(lead_over_runner_up(&[5.0, 1.0, 4.5]), (5.0, 0.5));
        assert_eq!(lead_over_runner_up(&[2.0, 2.0]), (2.0, 0.0));
    }
}
