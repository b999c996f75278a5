//! `spectra calibrate --model M --text FILE --out stats.safetensors`: TriAttention's query statistics,
//! from the vectors the model feeds to RoPE while it reads plain text.

use std::num::NonZeroUsize;
use std::path::PathBuf;

use clap::Args;
use spectra_core::Error;
use spectra_inference::{CausalDecoder, Logits, Taps};
use spectra_policies::tri_attention::query_stats::{QueryStatsAccumulator, QueryStatsMeta};

use super::args::{at_least_one, load_exact_for};

#[derive(Args)]
pub struct CalibrateArgs {
    /// A GGUF file or a Hugging Face folder.
    #[arg(long, default_value = "data/models/SmolLM2-135M-Instruct.Q4_1.gguf")]
    model: PathBuf,
    /// Plain text to read (keep it disjoint from evaluation text).
    #[arg(long)]
    text: PathBuf,
    /// Where to write the statistics.
    #[arg(long)]
    out: PathBuf,
    /// Read at most this many tokens of the text (the reference reads up to 32K).
    #[arg(long, value_parser = at_least_one, default_value = "32768")]
    max_tokens: NonZeroUsize,
    /// Tokens per forward chunk.
    #[arg(long, value_parser = at_least_one, default_value = "512")]
    chunk: NonZeroUsize,
    #[arg(long, default_value = "Auto")]
    device: String,
}

pub fn run(args: CalibrateArgs) -> Result<(), Error> {
    let (model, tokenizer) = load_exact_for(&args.model, &args.device, &args.out)?;
    let text = std::fs::read_to_string(&args.text)
        .map_err(|e| Error::file(&args.text, format!("cannot read: {e}")))?;
    let mut tokens = tokenizer.encode(&text)?;
    tokens.truncate(args.max_tokens.get().min(model.config.max_context));
    if tokens.is_empty() {
        return Err(Error::file(&args.text, "holds no text to calibrate on"));
    }
    let config = &model.config;
    let mut stats = QueryStatsAccumulator::new(QueryStatsMeta::for_rope(
        &config.rope,
        config.layers,
        config.heads,
    ))?;
    let mut cache = model.new_cache(false)?;
    let mut taps = Taps {
        record_pre_rope: true,
        ..Taps::default()
    };
    for (i, piece) in tokens.chunks(args.chunk.get()).enumerate() {
        let start = (i * args.chunk.get()) as u64;
        model.forward_one(piece, start, &mut cache, &mut taps, Logits::None)?;
        for (layer, queries) in taps.pre_rope_queries.iter_mut().enumerate() {
            let queries = queries.take().expect("every layer records its queries");
            for head in 0..queries.dim(0)? {
                stats.add_queries(layer, head, &queries.get(head)?)?;
            }
        }
        eprint!(
            "\rcalibrating: {} of {} tokens",
            start as usize + piece.len(),
            tokens.len()
        );
    }
    eprintln!();
    stats.finish()?.save(&args.out)?;
    println!(
        "wrote {} ({} layers x {} query heads x {} bands, from {} tokens)",
        args.out.display(),
        config.layers,
        config.heads,
        config.rope.bands(),
        tokens.len()
    );
    Ok(())
}
