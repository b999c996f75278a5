//! Validation loss, top-1 accuracy, and certified robust accuracy.

use super::config::EvalConfig;
use candle_core::{DType, Device, Tensor};
use spectra_core::Result;
use spectra_models::{Dataset, Model};

pub struct Evaluation {
    pub loss: f64,
    pub accuracy: f64,
    pub targets: u64,
    /// `(radius, fraction)` for each `(radius, margin)` asked for.
    pub certified_accuracy: Vec<(f64, f64)>,
    /// `(radius, fraction)` for each per-input radius asked for: targets the model certifies by
    /// their own input's certificate (`Model::certified_targets`); empty where it has none.
    pub per_input_certified_accuracy: Vec<(f64, f64)>,
}

/// Mean cross-entropy and accuracy over every target of the first `eval.windows` validation items (all
/// of them when absent), weighting each target equally; for each `(radius, margin)` of
/// `robust_margins`, the fraction of targets predicted correctly by more than that margin; and for
/// each of `per_input_radii`, the fraction certified by the model's per-input bounds.
pub fn evaluate(
    model: &dyn Model,
    data: &dyn Dataset,
    eval: &EvalConfig,
    device: &Device,
    robust_margins: &[(f64, f64)],
    per_input_radii: &[f64],
) -> Result<Evaluation> {
    let mut per_input: Option<Vec<u64>> = None;
    let items = eval
        .windows
        .map_or(data.validation_items(), |w| w.min(data.validation_items()));
    let (mut loss_sum, mut correct, mut targets) = (0f64, 0f64, 0u64);
    let mut certified = vec![0u64; robust_margins.len()];
    let mut start = 0;
    while start < items {
        let count = eval.batch_size.min(items - start);
        let batch = data.validation_batch(start, count, device)?;
        let logits = model.logits(&batch.inputs)?.detach();
        let n = batch.targets.dim(0)?;
        loss_sum += candle_nn::loss::cross_entropy(&logits, &batch.targets)?.to_scalar::<f32>()?
            as f64
            * n as f64;
        correct += correct_count(&logits, &batch.targets)?;
        for m in target_margins(&logits, &batch.targets)? {
            for (count, (_, needed)) in certified.iter_mut().zip(robust_margins) {
                *count += u64::from(f64::from(m) > *needed);
            }
        }
        if !per_input_radii.is_empty() {
            if let Some(per_radius) =
                model.certified_targets(&batch.inputs, &batch.targets, per_input_radii)?
            {
                let counts = per_input.get_or_insert_with(|| vec![0; per_input_radii.len()]);
                for (count, certified) in counts.iter_mut().zip(per_radius) {
                    *count += certified.iter().filter(|&&c| c).count() as u64;
                }
            }
        }
        targets += n as u64;
        start += count;
    }
    let n = targets.max(1) as f64;
    Ok(Evaluation {
        loss: loss_sum / n,
        accuracy: correct / n,
        targets,
        certified_accuracy: robust_margins
            .iter()
            .zip(certified)
            .map(|((eps, _), c)| (*eps, c as f64 / n))
            .collect(),
        per_input_certified_accuracy: per_input
            .map(|counts| {
                per_input_radii
                    .iter()
                    .zip(counts)
                    .map(|(eps, c)| (*eps, c as f64 / n))
                    .collect()
            })
            .unwrap_or_default(),
    })
}

/// Per row, the target's logit minus the largest other logit (positive where the prediction is right).
fn target_margins(logits: &Tensor, targets: &Tensor) -> Result<Vec<f32>> {
    let rows = logits.to_dtype(DType::F32)?.to_vec2::<f32>()?;
    let targets = targets.to_dtype(DType::U32)?.to_vec1::<u32>()?;
    Ok(rows
        .iter()
        .zip(targets)
        .map(|(row, t)| {
            let other = row
                .iter()
                .enumerate()
                .filter(|(j, _)| *j != t as usize)
                .map(|(_, z)| *z)
                .fold(f32::NEG_INFINITY, f32::max);
            row[t as usize] - other
        })
        .collect())
}

/// How many rows of `logits` have their largest entry at the target.
pub fn correct_count(logits: &Tensor, targets: &Tensor) -> Result<f64> {
    let hits = logits
        .argmax(1)?
        .eq(targets)?
        .to_dtype(DType::F32)?
        .sum_all()?;
    Ok(hits.to_scalar::<f32>()? as f64)
}
