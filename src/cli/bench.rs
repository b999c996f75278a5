//! `spectra bench`: many sequences decoded together, as llama-batched-bench measures llama.cpp, for
//! every combination of `--prompt-tokens` and `--parallel`; a table, or one JSON object per line.

use std::path::PathBuf;

use clap::Args;
use spectra::bench::{memory_read_rate, BenchCase, BenchRow};
use spectra_core::Error;
use spectra_inference::StepPriority;

use super::args::{parse_bytes, ModelArgs, PolicyArgs};
use spectra::units::human_bytes;

#[derive(Args)]
pub struct BenchArgs {
    #[command(flatten)]
    model: ModelArgs,
    #[command(flatten)]
    policy: PolicyArgs,
    /// Prompt tokens per sequence, one configuration each (llama-batched-bench's -npp).
    #[arg(long, value_delimiter = ',', default_value = "512")]
    prompt_tokens: Vec<usize>,
    /// Tokens each sequence generates (-ntg).
    #[arg(long, default_value_t = 64)]
    gen: usize,
    /// Sequences submitted together, one configuration each (-npl).
    #[arg(long, value_delimiter = ',', default_value = "1,8")]
    parallel: Vec<usize>,
    /// KV memory all sequences may hold together (bytes, or with KiB, MiB, GiB); a sequence waits
    /// until its peak fits. Unlimited when not given.
    #[arg(long, value_parser = parse_bytes)]
    kv_memory: Option<usize>,
    /// The most tokens one forward pass carries (llama.cpp's -ub).
    #[arg(long, default_value_t = 512)]
    step_tokens: usize,
    /// The most prompt tokens of one sequence per pass.
    #[arg(long, default_value_t = 256)]
    chunk: usize,
    /// Decode running sequences while prompts are read (continuous batching as served), instead of
    /// reading every prompt first (llama-batched-bench's order).
    #[arg(long)]
    mixed: bool,
    /// The text the prompts are cut from.
    #[arg(long, default_value = "data/kv/eval.txt")]
    prompt_file: PathBuf,
    /// One JSON object per line and configuration, instead of a table.
    #[arg(long)]
    json: bool,
}

pub fn run(args: BenchArgs) -> Result<(), Error> {
    let (model, tokenizer) = args.model.load()?;
    let (policy, budget) = args.policy.read()?;
    let text = std::fs::read_to_string(&args.prompt_file).map_err(|e| {
        Error::file(
            &args.prompt_file,
            format!("cannot read ({e}); scripts/get-data.sh puts the evaluation text in data/kv/"),
        )
    })?;
    let text = tokenizer.encode(&text)?;
    let reread = spectra::kv_eval::reread_prompt(&tokenizer, &spectra::kv_eval::Turn::default())?;
    for (name, values) in [
        ("--prompt-tokens", &args.prompt_tokens),
        ("--parallel", &args.parallel),
    ] {
        if values.is_empty() || values.contains(&0) {
            return Err(Error::invalid(
                name,
                "give one or more counts of at least 1",
            ));
        }
    }
    let memory_read = memory_read_rate();
    if !args.json {
        println!(
            "memory read rate, all threads: {:.1} GB/s; weights read per pass: {}",
            memory_read / 1e9,
            human_bytes(spectra_inference::CausalDecoder::weight_bytes(
                model.as_ref()
            ))
        );
        println!();
        println!("| prompt | gen | parallel | admitted | prefill tok/s | decode tok/s | TTFT mean / max s | peak KV | decode bytes/pass | of roofline |");
        println!("|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|");
    }
    for &prompt_tokens in &args.prompt_tokens {
        for &parallel in &args.parallel {
            let case = BenchCase {
                prompt_tokens,
                parallel,
                gen: args.gen,
                policy: policy.clone(),
                budget: budget.clone(),
                kv_memory: args.kv_memory,
                step_tokens: args.step_tokens,
                chunk: args.chunk,
                priority: if args.mixed {
                    StepPriority::DecodeFirst
                } else {
                    StepPriority::PrefillFirst
                },
            };
            let row = spectra::bench::run(&model, &text, &case, reread.clone(), memory_read)?;
            if args.json {
                println!(
                    "{}",
                    serde_json::to_string(&row)
                        .map_err(|e| Error::invalid("--json", e.to_string()))?
                );
            } else {
                print_row(&row);
            }
        }
    }
    Ok(())
}

fn print_row(r: &BenchRow) {
    println!(
        "| {} | {} | {} | {} | {:.1} | {:.1} | {:.2} / {:.2} | {} | {} | {:.0}% |",
        r.prompt_tokens,
        r.gen,
        r.parallel,
        r.admitted,
        r.prefill_tokens_per_s,
        r.decode_tokens_per_s,
        r.ttft_s,
        r.ttft_max_s,
        human_bytes(r.peak_kv_bytes),
        human_bytes(r.decode_bytes_per_pass as usize),
        100.0 * r.decode_roofline
    );
}
