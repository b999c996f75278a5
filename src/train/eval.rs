//! Validation loss and top-1 accuracy.

use candle_core::{DType, Device, Tensor};
use spectra_core::config::EvalConfig;
use spectra_core::Result;
use spectra_models::{Dataset, Model};

pub struct Evaluation {
    pub loss: f64,
    pub accuracy: f64,
    pub targets: u64,
}

/// Mean cross-entropy and accuracy over every target of the first `eval.windows` validation items (all
/// of them when absent), weighting each target equally.
pub fn evaluate(
    model: &dyn Model,
    data: &dyn Dataset,
    eval: &EvalConfig,
    device: &Device,
) -> Result<Evaluation> {
    let items = eval
        .windows
        .map_or(data.validation_items(), |w| w.min(data.validation_items()));
    let (mut loss_sum, mut correct, mut targets) = (0f64, 0f64, 0u64);
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
        targets += n as u64;
        start += count;
    }
    let n = targets.max(1) as f64;
    Ok(Evaluation {
        loss: loss_sum / n,
        accuracy: correct / n,
        targets,
    })
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
