//! The part of a training run that a config's errors come from: its data, the memory it needs, its
//! model and the routing of the model's parameters to the groups. `spectra train` builds its run on
//! it and `spectra check` shows it, so both refuse a config alike, at the same place in the file.

use std::path::Path;

use candle_core::Device;
use spectra_core::rng::derived_rng;
use spectra_core::Result;
use spectra_models::memory_estimate::check_training_fits;
use spectra_models::{data, Dataset, Model};

use super::config::TrainConfig;
use super::config_error::{config_error, model_error};
use super::routing::{route, RoutedParam};

/// The seed stream of the model's initialisation.
pub const INIT_STREAM: u64 = 1;

/// A training config's data, model (initialised from the seed on `device`) and routing.
pub struct Setup {
    pub data: Box<dyn Dataset>,
    pub model: Box<dyn Model>,
    pub routed: Vec<RoutedParam>,
}

/// Opens the data, checks that training fits the machine's memory, builds the model and routes its
/// parameters; errors are placed in `config_file`.
pub fn build(cfg: &TrainConfig, config_file: &Path, device: &Device) -> Result<Setup> {
    let data = data::open(&cfg.data, &cfg.model)?;
    let input = data.input_kind();
    check_training_fits(
        &cfg.model,
        &input,
        cfg.data.batch_size(),
        cfg.eval.batch_size,
        device,
    )
    .map_err(|e| config_error(config_file, e))?;
    let mut init_rng = derived_rng(cfg.seed, INIT_STREAM);
    let model = spectra_models::build(&cfg.model, &input, device, &mut init_rng)
        .map_err(|e| model_error(config_file, e))?;
    let routed = route(model.params(), &cfg.groups, config_file)?;
    Ok(Setup {
        data,
        model,
        routed,
    })
}
