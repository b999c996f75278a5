//! `spectra fit-kvzap --model M --text FILE --out surrogate.safetensors`: KVzap's surrogate for a
//! model, fitted on the model's own KVzip scores. The text is cut into pieces; the model reads each
//! as a user's message, then re-reads it behind the request to repeat it (KVzip's context
//! reconstruction), which scores every entry. Per layer, a ridge regression maps the layer's
//! normalized input row of each of the piece's tokens to the log of its scores. Every `--hold-out`th
//! piece is kept out of the fit and reports how well the surrogate ranks as KVzip does.

use std::num::NonZeroUsize;
use std::path::PathBuf;
use std::time::Instant;

use clap::Args;
use spectra::kv_eval::{reread_prompt, PromptFormat};
use spectra_core::{Error, Result};
use spectra_inference::{CausalDecoder, Logits, Taps};
use spectra_models::llama::Llama;
use spectra_policies::kv_zap::ridge::RidgeFit;
use spectra_policies::kv_zap::Surrogate;

use super::args::{at_least_one, load_exact_for};

/// KVzip scores below this are taken as this before the log: an entry no query of the re-read
/// attends to at all (an f32 softmax that underflowed to 0) would otherwise have no log.
const SCORE_FLOOR: f32 = 1e-10;

#[derive(Args)]
pub struct FitKvzapArgs {
    /// A GGUF file or a Hugging Face folder.
    #[arg(long)]
    model: PathBuf,
    /// Plain text to read (keep it apart from evaluation text); give it more than once for several.
    #[arg(long, required = true)]
    text: Vec<PathBuf>,
    /// Where to write the surrogate.
    #[arg(long)]
    out: PathBuf,
    /// Tokens per piece the model reads and re-reads (kvpress's samples hold 750–1,250).
    #[arg(long, value_parser = at_least_one, default_value = "1000")]
    piece: NonZeroUsize,
    /// Read at most this many tokens of text in all, an equal share of each file.
    #[arg(long, value_parser = at_least_one, default_value = "60000")]
    max_tokens: NonZeroUsize,
    /// Every this many pieces, one is held out of the fit to measure it.
    #[arg(long, value_parser = at_least_one, default_value = "10")]
    hold_out: NonZeroUsize,
    /// The ridge penalty (scikit-learn's default).
    #[arg(long, default_value = "1.0")]
    ridge: f64,
    /// Tokens per forward chunk.
    #[arg(long, value_parser = at_least_one, default_value = "512")]
    chunk: NonZeroUsize,
    #[arg(long, default_value = "Auto")]
    device: String,
}

/// One piece's layer inputs and log-scores, `[layer]` of `rows × d` and `rows × kv_heads`.
struct Piece {
    inputs: Vec<Vec<f32>>,
    targets: Vec<Vec<f32>>,
}

pub fn run(args: FitKvzapArgs) -> Result<()> {
    // Exact products, as `spectra kv` evaluates the model by default.
    let (model, tokenizer) = load_exact_for(&args.model, &args.device, &args.out)?;
    let device = model.device().clone();
    let turn = PromptFormat::Template.turn(&tokenizer)?;
    let reread = reread_prompt(&tokenizer, &turn)?;
    let open = tokenizer.encode(&turn.open)?;
    let piece_len = args.piece.get();
    let share = args.max_tokens.get() / args.text.len();
    let mut pieces: Vec<Vec<u32>> = Vec::new();
    for path in &args.text {
        let text = std::fs::read_to_string(path)
            .map_err(|e| Error::file(path, format!("cannot read: {e}")))?;
        let mut tokens = tokenizer.encode(&text)?;
        tokens.truncate(share);
        pieces.extend(tokens.chunks_exact(piece_len).map(<[u32]>::to_vec));
    }
    let longest = open.len() + 2 * piece_len + reread.first.len() + reread.suffix.len();
    if longest > model.config.max_context {
        return Err(Error::invalid(
            "--piece",
            format!(
                "a piece and its re-read take {longest} positions, over the model's {}; use a \
                 shorter piece",
                model.config.max_context
            ),
        ));
    }
    let held_out = |i: usize| (i + 1).is_multiple_of(args.hold_out.get());
    if pieces.len() < 2 || !(0..pieces.len()).any(held_out) {
        return Err(Error::invalid(
            "--text",
            format!(
                "the text makes {} pieces of {piece_len} tokens; give more text (or a smaller \
                 --piece or --hold-out) so that one piece is held out and the others fitted",
                pieces.len()
            ),
        ));
    }
    let c = &model.config;
    let d_model = c.hidden;
    let mut fits = vec![RidgeFit::new(d_model, c.kv_heads); c.layers];
    let mut tests = Vec::new();
    let started = Instant::now();
    for (i, piece) in pieces.iter().enumerate() {
        let mut prompt = open.clone();
        prompt.extend_from_slice(piece);
        let read = read_and_reread(&model, &prompt, open.len(), &reread, args.chunk.get())?;
        if held_out(i) {
            tests.push(read);
        } else {
            for ((fit, x), y) in fits.iter_mut().zip(&read.inputs).zip(&read.targets) {
                fit.add(x, y).map_err(|m| Error::invalid("fit-kvzap", m))?;
            }
        }
        eprint!(
            "\rfit-kvzap: piece {} of {} ({:.0}s)",
            i + 1,
            pieces.len(),
            started.elapsed().as_secs_f64()
        );
    }
    eprintln!();
    let (weights, biases) = fits
        .iter()
        .map(|f| f.solve(args.ridge))
        .collect::<std::result::Result<(Vec<_>, Vec<_>), String>>()
        .map_err(|m| Error::invalid("fit-kvzap", m))?;
    let surrogate = Surrogate::new(c.kv_heads, d_model, weights, biases)
        .map_err(|m| Error::invalid("fit-kvzap", m))?;
    surrogate.save(&args.out)?;
    println!(
        "wrote {} ({} layers × {} KV heads × {d_model}, fitted on {} tokens in {:.0}s)",
        args.out.display(),
        c.layers,
        c.kv_heads,
        fits[0].rows(),
        started.elapsed().as_secs_f64()
    );
    report_held_out(&surrogate, &tests, &device)
}

/// Reads `prompt` (its first `skip` tokens the turn's opening), re-reads it behind `reread`, and
/// returns the inputs and log-scores of the rows after `skip`.
fn read_and_reread(
    model: &Llama,
    prompt: &[u32],
    skip: usize,
    reread: &spectra_inference::RereadPrompt,
    chunk: usize,
) -> Result<Piece> {
    let c = &model.config;
    let mut cache = model.new_cache(false)?;
    let mut taps = Taps {
        record_layer_inputs: true,
        ..Taps::default()
    };
    let mut inputs = vec![Vec::new(); c.layers];
    for (i, part) in prompt.chunks(chunk).enumerate() {
        model.forward_one(
            part,
            (i * chunk) as u64,
            &mut cache,
            &mut taps,
            Logits::None,
        )?;
        for (all, layer) in inputs.iter_mut().zip(&mut taps.layer_inputs) {
            let rows = layer.take().expect("every layer records its input");
            all.extend(
                rows.to_dtype(candle_core::DType::F32)?
                    .flatten_all()?
                    .to_vec1::<f32>()?,
            );
        }
    }
    let scores = model.reconstruction_scores(&cache, prompt, prompt.len() as u64, reread, chunk)?;
    let d = inputs[0].len() / prompt.len();
    let inputs = inputs.into_iter().map(|x| x[skip * d..].to_vec()).collect();
    let targets = scores
        .iter()
        .map(|heads| {
            (skip..prompt.len())
                .flat_map(|e| heads.iter().map(move |h| h[e].max(SCORE_FLOOR).ln()))
                .collect()
        })
        .collect();
    Ok(Piece { inputs, targets })
}

/// How the surrogate ranks the held-out pieces' entries against KVzip's own scores.
fn report_held_out(
    surrogate: &Surrogate,
    tests: &[Piece],
    device: &candle_core::Device,
) -> Result<()> {
    let (layers, heads, d) = (surrogate.layers, surrogate.kv_heads, surrogate.d_model);
    let mut r2 = vec![0.0; layers];
    let keeps = [0.5, 0.25, 0.125];
    let mut overlap = vec![0.0; keeps.len()];
    let mut cases = 0.0;
    for test in tests {
        for (l, layer_r2) in r2.iter_mut().enumerate() {
            let rows = test.inputs[l].len() / d;
            let x = candle_core::Tensor::from_slice(&test.inputs[l], (rows, d), device)?;
            let predicted = surrogate.predict(l, &x)?.flatten_all()?.to_vec1::<f32>()?;
            *layer_r2 += r_squared(&predicted, &test.targets[l]) / tests.len() as f64;
            for h in 0..heads {
                let column =
                    |v: &[f32]| v.iter().skip(h).step_by(heads).copied().collect::<Vec<_>>();
                let (p, t) = (column(&predicted), column(&test.targets[l]));
                for (o, &keep) in overlap.iter_mut().zip(&keeps) {
                    *o += kept_in_common(&p, &t, keep);
                }
                cases += 1.0;
            }
        }
    }
    let mean_r2 = r2.iter().sum::<f64>() / layers as f64;
    println!(
        "held out: {} pieces; R² of the log-scores {mean_r2:.3} (layers {:.3} to {:.3})",
        tests.len(),
        r2.iter().copied().fold(f64::INFINITY, f64::min),
        r2.iter().copied().fold(f64::NEG_INFINITY, f64::max)
    );
    for (o, keep) in overlap.iter().zip(keeps) {
        println!(
            "  keeping {:>4.1}%: {:.1}% of KVzip's kept entries kept (random: {:.1}%)",
            keep * 100.0,
            100.0 * o / cases,
            keep * 100.0
        );
    }
    Ok(())
}

/// The coefficient of determination of `predicted` for `truth`: 1 − SSE / Σ(truth − mean)².
fn r_squared(predicted: &[f32], truth: &[f32]) -> f64 {
    let n = truth.len() as f64;
    let mean = truth.iter().map(|&t| f64::from(t)).sum::<f64>() / n;
    let total: f64 = truth.iter().map(|&t| (f64::from(t) - mean).powi(2)).sum();
    let error: f64 = predicted
        .iter()
        .zip(truth)
        .map(|(&p, &t)| (f64::from(p) - f64::from(t)).powi(2))
        .sum();
    1.0 - error / total
}

/// Of the `keep` fraction of entries `truth` ranks highest, the fraction `predicted` also ranks in
/// its highest `keep` fraction.
fn kept_in_common(predicted: &[f32], truth: &[f32], keep: f64) -> f64 {
    let k = ((truth.len() as f64 * keep).ceil() as usize).clamp(1, truth.len());
    let top = |v: &[f32]| {
        let mut order: Vec<usize> = (0..v.len()).collect();
        order.sort_by(|&a, &b| v[b].total_cmp(&v[a]));
        let mut chosen = vec![false; v.len()];
        for &i in &order[..k] {
            chosen[i] = true;
        }
        chosen
    };
    let (p, t) = (top(predicted), top(truth));
    p.iter().zip(&t).filter(|(a, b)| **a && **b).count() as f64 / k as f64
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn r_squared_by_hand() {
        // Truth 1, 2, 3 (mean 2, total 2); predictions 1, 2, 4: error 1, so R² = 1/2.
        assert_eq!(r_squared(&[1.0, 2.0, 4.0], &[1.0, 2.0, 3.0]), 0.5);
        assert_eq!(r_squared(&[1.0, 2.0, 3.0], &[1.0, 2.0, 3.0]), 1.0);
    }

    #[test]
    fn kept_in_common_by_hand() {
        let truth = [4.0, 3.0, 2.0, 1.0];
        assert_eq!(kept_in_common(&truth, &truth, 0.5), 1.0);
        // Keeping 2 of 4: the prediction's best are entries 0 and 3, truth's 0 and 1.
        assert_eq!(kept_in_common(&[9.0, 0.0, 1.0, 5.0], &truth, 0.5), 0.5);
        assert_eq!(kept_in_common(&[1.0, 2.0, 3.0, 4.0], &truth, 0.5), 0.0);
    }
}
