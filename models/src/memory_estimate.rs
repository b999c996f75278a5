//! A lower bound on the memory a training run needs, from its config alone. It is checked before
//! anything is allocated, so that an absurd size (`mlp_ratio: 100000000`) is a config error naming
//! the field and the machine's memory, not a process aborted by a failed allocation.

use candle_core::Device;
use spectra_core::config::Invalid;

use crate::config::ModelConfig;
use crate::InputKind;

/// What a training run needs at least, in bytes.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct TrainingMemory {
    /// Weights, their gradients and one optimizer state each (f32).
    pub parameters: f64,
    /// The largest of a training batch's kept activations and an evaluation batch's.
    pub activations: f64,
}

impl TrainingMemory {
    pub fn total(&self) -> f64 {
        self.parameters + self.activations
    }
}

const F32: f64 = 4.0;
/// Weights, gradients and at least one optimizer state per parameter.
const COPIES_PER_PARAMETER: f64 = 3.0;

/// The bound for `model` on `input`, batches of `batch` (training) and `eval_batch` examples.
/// Counted in f64: the sizes it exists to catch overflow `usize` products.
pub fn training_memory(
    model: &ModelConfig,
    input: &InputKind,
    batch: usize,
    eval_batch: usize,
) -> TrainingMemory {
    let (batch, eval_batch) = (batch as f64, eval_batch as f64);
    let (parameters, per_example_train, per_example_eval) = match (model, input) {
        (ModelConfig::LipschitzGpt(shape), InputKind::Tokens { vocab }) => {
            let (d, blocks, t, r, v) = (
                shape.d_model as f64,
                shape.blocks as f64,
                shape.seq_len as f64,
                shape.mlp_ratio as f64,
                *vocab as f64,
            );
            // Embedding and head, and per block q, k, v, o and the MLP's two matrices.
            let parameters = 2.0 * v * d + blocks * (4.0 + 2.0 * r) * d * d;
            // Kept for the backward pass, per token and block: q|k|v, the attention's output, the
            // block's input, and the MLP's hidden pre-activation; then the logits.
            let train = t * (blocks * (5.0 + r) * d + v);
            // Evaluation keeps nothing: one block's widest tensor and the logits at a time.
            let eval = t * (r * d + v);
            (parameters, train, eval)
        }
        (ModelConfig::LipschitzMlp { hidden, layers }, InputKind::Images { pixels, classes }) => {
            let (h, layers, p, c) = (
                *hidden as f64,
                *layers as f64,
                *pixels as f64,
                *classes as f64,
            );
            let parameters = p * h + (layers - 2.0).max(0.0) * h * h + h * c;
            (parameters, p + layers * h + c, p + h + c)
        }
        // A model that does not read this input is refused by `build`, with its own message.
        _ => (0.0, 0.0, 0.0),
    };
    TrainingMemory {
        parameters: COPIES_PER_PARAMETER * F32 * parameters,
        activations: F32 * (batch * per_example_train).max(eval_batch * per_example_eval),
    }
}

/// The machine's memory in bytes (`MemTotal`), where the system says.
pub fn machine_memory() -> Option<f64> {
    let info = std::fs::read_to_string("/proc/meminfo").ok()?;
    let line = info.lines().find(|l| l.starts_with("MemTotal:"))?;
    let kib: f64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024.0)
}

/// Refuses training `model` on `input` with batches of `batch` (training) and `eval_batch` examples
/// where it cannot fit this machine's memory. Only where the tensors live in host memory: a GPU's
/// memory is the device's to refuse.
pub fn check_training_fits(
    model: &ModelConfig,
    input: &InputKind,
    batch: usize,
    eval_batch: usize,
    device: &Device,
) -> Result<(), Invalid> {
    match machine_memory() {
        Some(available) if device.is_cpu() => check_fits(
            training_memory(model, input, batch, eval_batch),
            training_memory(model, input, 1, 1),
            available,
        ),
        _ => Ok(()),
    }
}

/// Refuses a run whose lower bound `need` exceeds `available` bytes. The field to shrink is the
/// model's when even one example at a time (`need_per_example`) cannot fit, else the batch size.
pub fn check_fits(
    need: TrainingMemory,
    need_per_example: TrainingMemory,
    available: f64,
) -> Result<(), Invalid> {
    if need.total() <= available {
        return Ok(());
    }
    let (near, fix) = if need_per_example.total() > available {
        (
            "model",
            "make the model smaller (d_model, blocks, mlp_ratio, seq_len; hidden or layers)",
        )
    } else {
        (
            "batch_size",
            "make data.batch_size or eval.batch_size smaller",
        )
    };
    Err(Invalid::new(format!(
        "training this model needs at least {} ({} for the parameters with their gradients and \
         optimizer state, {} for one batch's activations), more than this machine's {}",
        human(need.total()),
        human(need.parameters),
        human(need.activations),
        human(available)
    ))
    .near(near)
    .help(fix))
}

fn human(bytes: f64) -> String {
    const UNITS: [&str; 7] = ["B", "KiB", "MiB", "GiB", "TiB", "PiB", "EiB"];
    let mut value = bytes;
    let mut unit = 0;
    while value >= 1024.0 && unit + 1 < UNITS.len() {
        value /= 1024.0;
        unit += 1;
    }
    if unit + 1 == UNITS.len() && value >= 1024.0 {
        return format!("{bytes:.2e} B");
    }
    format!("{value:.1} {}", UNITS[unit])
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::GptShape;

    fn gpt(d_model: usize, mlp_ratio: usize) -> ModelConfig {
        ModelConfig::LipschitzGpt(GptShape {
            vocab: 0,
            d_model,
            blocks: 3,
            heads: 4,
            seq_len: 256,
            mlp_ratio,
            blocks_mass: 16.0,
            softmax_scale: 1.0,
            final_scale: 1.0,
        })
    }

    const TEXT: InputKind = InputKind::Tokens { vocab: 65 };

    /// The paper's Shakespeare GPT by hand: 2·65·256 + 3·(4 + 8)·256² = 33,280 + 2,359,296 = 2,392,576 parameters, three
    /// f32 copies; 64 windows of 256 tokens keeping 3·(5 + 4)·256 + 65 floats per token.
    #[test]
    fn the_papers_gpt_counts_as_worked_out_by_hand() {
        let m = training_memory(&gpt(256, 4), &TEXT, 64, 32);
        assert_eq!(m.parameters, 12.0 * 2_392_576.0);
        assert_eq!(m.activations, 4.0 * 64.0 * 256.0 * (27.0 * 256.0 + 65.0));
        // About 140 MiB: it fits any machine this runs on.
        assert!(check_fits(m, m, 1e9).is_ok());
    }

    #[test]
    fn an_absurd_mlp_ratio_is_refused_at_the_model() {
        let m = training_memory(&gpt(256, 100_000_000), &TEXT, 64, 32);
        let one = training_memory(&gpt(256, 100_000_000), &TEXT, 1, 1);
        let err = check_fits(m, one, 16.0 * 1024f64.powi(3)).unwrap_err();
        assert_eq!(err.near.as_deref(), Some("model"));
        assert!(err.message.contains("16.0 GiB"), "{}", err.message);
        assert!(err.message.contains("TiB"), "{}", err.message);
    }

    #[test]
    fn an_absurd_batch_is_refused_at_the_batch_size() {
        let mlp = ModelConfig::LipschitzMlp {
            hidden: 64,
            layers: 3,
        };
        let images = InputKind::Images {
            pixels: 784,
            classes: 10,
        };
        let m = training_memory(&mlp, &images, 1_000_000_000_000, 64);
        let one = training_memory(&mlp, &images, 1, 1);
        let err = check_fits(m, one, 16.0 * 1024f64.powi(3)).unwrap_err();
        assert_eq!(err.near.as_deref(), Some("batch_size"));
    }

    #[test]
    fn sizes_past_every_unit_stay_readable() {
        assert_eq!(human(1536.0), "1.5 KiB");
        assert_eq!(human(1e30), "1.00e30 B");
        assert_eq!(human(3.0 * 1024f64.powi(6)), "3.0 EiB");
    }
}
