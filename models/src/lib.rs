//! spectra's models and data loaders: the Lipschitz paper's MLP and GPT (docs/lipschitz.md §6), the
//! Lipschitz certificate (docs/certificate.md; the paper's formula, docs/lipschitz.md §7), the
//! Llama-family decoder, character-level text and IDX image data (docs/lipschitz.md §8). Their
//! compute runs on `spectra-kernels`.

pub mod attack;
pub mod certificate;
pub mod config;
pub mod data;
pub mod init;
pub mod lipschitz_gpt;
pub mod lipschitz_mlp;
pub mod llama;
pub mod mass;
pub mod memory_estimate;

use candle_core::{Device, Tensor};
use spectra_core::{Error, Param, Result, SpectraRng};

pub use certificate::Certificate;
pub use config::{DataConfig, DecoderConfig, ModelConfig};
pub use data::{Batch, Dataset, InputKind};
pub use lipschitz_gpt::{GptShape, LipschitzGpt};
pub use lipschitz_mlp::LipschitzMlp;

/// A classifier the training runner can drive: parameters in, logits out, and a Lipschitz certificate.
pub trait Model: Send {
    /// Every trainable parameter, with its role and target norm, in a fixed order.
    fn params(&self) -> &[Param];

    /// Logits `[examples, classes]` for a batch's inputs; examples are images, or every position of
    /// every window, in the order of the batch's targets.
    fn logits(&self, inputs: &Tensor) -> Result<Tensor>;

    /// The whole-network Lipschitz bound from exact per-matrix norms of the current weights, with
    /// the body's bound at each of `radii` around its domain (`Certificate::robust_bounds`).
    fn certificate_at(&self, radii: &[f64]) -> Result<Certificate>;

    /// [`certificate_at`](Self::certificate_at) the reports' radii, [`certificate::ROBUST_RADII`].
    fn certificate(&self) -> Result<Certificate> {
        self.certificate_at(&certificate::ROBUST_RADII)
    }

    /// For each of `radii`, per target of `inputs` (in the order of [`logits`](Self::logits)' rows),
    /// whether it is predicted correctly and no perturbation of norm ≤ that radius of the body's
    /// input can overturn it, by a certificate of that input's own (the GPT's, from the stream's
    /// measured size and the head's rows); `None` where the model has only its global certificate.
    fn certified_targets(
        &self,
        _inputs: &Tensor,
        _targets: &Tensor,
        _radii: &[f64],
    ) -> Result<Option<Vec<Vec<bool>>>> {
        Ok(None)
    }

    /// Lower bounds on the Lipschitz constants `certificate` bounds, found by attacking the network
    /// (`attack.rs`) on inputs of its domain.
    fn lower_bounds(
        &self,
        certificate: &Certificate,
        effort: &attack::AttackEffort,
        rng: &mut SpectraRng,
    ) -> Result<attack::LowerBounds>;
}

/// Builds the configured model for a dataset; its weights are drawn from `rng`.
pub fn build(
    config: &ModelConfig,
    input: &InputKind,
    device: &Device,
    rng: &mut SpectraRng,
) -> Result<Box<dyn Model>> {
    match (config, input) {
        (ModelConfig::LipschitzGpt(shape), InputKind::Tokens { vocab }) => {
            let shape = GptShape {
                vocab: *vocab,
                ..shape.clone()
            };
            Ok(Box::new(LipschitzGpt::new(shape, device, rng)?))
        }
        (ModelConfig::LipschitzMlp { hidden, layers }, InputKind::Images { pixels, classes }) => {
            Ok(Box::new(LipschitzMlp::new(*pixels, *hidden, *classes, *layers, device, rng)?))
        }
        (ModelConfig::LipschitzGpt(_), InputKind::Images { .. }) => Err(Error::invalid(
            "model",
            "LipschitzGpt reads token windows, but the data are images; use `data: Text(...)` or `model: LipschitzMlp(...)`",
        )),
        (ModelConfig::LipschitzMlp { .. }, InputKind::Tokens { .. }) => Err(Error::invalid(
            "model",
            "LipschitzMlp classifies images, but the data are text; use `data: Idx(...)` or `model: LipschitzGpt(...)`",
        )),
    }
}
