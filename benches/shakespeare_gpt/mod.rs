//! The paper's Shakespeare GPT and its parameter groups, as `experiments/shakespeare_softcap.ron`
//! trains it, shared by the CPU and GPU training-step benchmarks.

use std::path::Path;

use spectra::models::{GptShape, LipschitzGpt, Model};
use spectra::plugins::{EmbeddingColumnCap, Muon, SpectralSoftCap};
use spectra::train::groups::{assemble, Group};
use spectra::train::routing::route;
use spectra::train::routing::ParamSelector;
use spectra::train::ParamGroupConfig;
use spectra_core::ParamRole;

pub const SEQ: usize = 256;

/// Vocab 65, d 256, 3 blocks, 4 heads, MLP 1024.
pub fn shape() -> GptShape {
    GptShape {
        vocab: 65,
        d_model: 256,
        blocks: 3,
        heads: 4,
        seq_len: SEQ,
        mlp_ratio: 4,
        blocks_mass: 16.0,
        softmax_scale: 1.0,
        final_scale: 1.0,
    }
}

/// Muon with the spectral soft cap on every matrix; the embedding with Muon's column dualize and a
/// column cap.
pub fn groups(model: &LipschitzGpt, origin: &Path) -> Vec<Group> {
    let configs = vec![
        ParamGroupConfig {
            name: "matrices".into(),
            params: vec![
                ParamSelector::Role(ParamRole::Hidden),
                ParamSelector::Role(ParamRole::Head),
            ],
            optimizer: Box::new(Muon::new(0.1)),
            constraints: vec![Box::new(SpectralSoftCap {
                w_max: 1.2,
                ..SpectralSoftCap::default()
            })],
        },
        ParamGroupConfig {
            name: "embedding".into(),
            params: vec![ParamSelector::Role(ParamRole::Embedding)],
            optimizer: Box::new(Muon::new(0.1)),
            constraints: vec![Box::new(EmbeddingColumnCap { max_rms: 1.0 })],
        },
    ];
    let routed = route(model.params(), &configs, origin).unwrap();
    assemble(model.params(), configs, &routed)
}
