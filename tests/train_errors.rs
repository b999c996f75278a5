//! Bad configurations and bad runs stop with errors that say what is wrong and what to do.

mod train_support;

use std::path::Path;

use candle_core::{Device, Tensor, Var};
use spectra::plugins::{Muon, SpectralSoftCap};
use spectra::train::routing::{route, ParamSelector};
use spectra::train::ParamGroupConfig;
use spectra::train::{train, TrainOptions};
use spectra_core::{Param, ParamRole};
use train_support::*;

fn train_error(text: &str, options: &TrainOptions) -> String {
    match train(parse(text), Path::new("test.ron"), options) {
        Ok(_) => panic!("training succeeded"),
        Err(e) => e.to_string(),
    }
}

#[test]
fn a_group_that_selects_no_parameter_is_named() {
    let dir = tempfile::tempdir().unwrap();
    let corpus = write_cycle_corpus(dir.path());
    let groups = format!(
        r#"{MUON_SOFT_CAP}
        (name: "gains", params: [Name("blocks.*.norm.gain")], optimizer: (type: "AdamW", cfg: (lr: 0.01)))"#
    );
    let err = train_error(
        &gpt_config(&corpus, &dir.path().join("o"), &groups, 5, ""),
        &quiet(),
    );
    assert!(err.contains("group `gains` matches no parameter"), "{err}");
    assert!(
        err.contains("blocks.0.attn.q"),
        "the help lists the model's parameters: {err}"
    );
}

/// A name selector with a typo is pointed at, with the name it was probably meant to be; it used to
/// be reported as the parameter it failed to pick ("parameter `embed` matches no group").
#[test]
fn a_name_selector_that_matches_nothing_is_pointed_at_with_the_likely_name() {
    let dir = tempfile::tempdir().unwrap();
    let corpus = write_cycle_corpus(dir.path());
    let groups = format!(
        r#"{MUON_SOFT_CAP}
        (name: "embeddings", params: [Name("embedd")], optimizer: (type: "Muon", cfg: (lr: 0.1)))"#
    );
    let err = train_error_in_file(
        dir.path(),
        &gpt_config(&corpus, &dir.path().join("o"), &groups, 5, ""),
    );
    assert!(
        err.contains("group `embeddings` matches no parameter: no parameter's name is `embedd`"),
        "{err}"
    );
    assert!(err.contains("did you mean `embed`?"), "{err}");
    assert!(err.contains("cfg.ron:"), "{err}");
}

#[test]
fn a_parameter_no_group_takes_is_named() {
    let dir = tempfile::tempdir().unwrap();
    let corpus = write_cycle_corpus(dir.path());
    let groups =
        r#"(name: "hidden", params: [Role(Hidden)], optimizer: (type: "Muon", cfg: (lr: 0.1)))"#;
    let err = train_error(
        &gpt_config(&corpus, &dir.path().join("o"), groups, 5, ""),
        &quiet(),
    );
    assert!(
        err.contains("parameter `embed` (Embedding) matches no group"),
        "{err}"
    );
}

#[test]
fn a_matrix_constraint_on_a_1d_parameter_is_refused_before_training() {
    let gain = Param::new(
        "norm.gain",
        Var::from_tensor(&Tensor::ones(8, candle_core::DType::F32, &Device::Cpu).unwrap()).unwrap(),
        ParamRole::Vector,
    );
    let groups = vec![ParamGroupConfig {
        name: "everything".into(),
        params: vec![ParamSelector::All],
        optimizer: Box::new(Muon::new(0.1)),
        constraints: vec![Box::new(SpectralSoftCap {
            w_max: 1.0,
            ..SpectralSoftCap::default()
        })],
    }];
    let err = route(&[gain], &groups, Path::new("exp.ron"))
        .expect_err("refused")
        .to_string();
    assert!(
        err.contains("SpectralSoftCap") && err.contains("norm.gain") && err.contains("Vector"),
        "{err}"
    );
    assert!(err.contains("exp.ron"), "{err}");
}

#[test]
fn missing_data_says_how_to_get_it() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("nowhere/tinyshakespeare.txt");
    let err = train_error(
        &gpt_config(&missing, &dir.path().join("o"), MUON_SOFT_CAP, 5, ""),
        &quiet(),
    );
    assert!(
        err.contains("not found") && err.contains("scripts/get-data.sh"),
        "{err}"
    );
    let groups = r#"(name: "all", params: [All], optimizer: (type: "Muon", cfg: (lr: 0.1)))"#;
    let err = train_error(
        &mlp_config(
            &dir.path().join("no-images"),
            &dir.path().join("o2"),
            groups,
            5,
            8,
        ),
        &quiet(),
    );
    assert!(err.contains("dataset-fashion-mnist"), "{err}");
}

#[test]
fn a_model_that_does_not_fit_the_data_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let data = write_idx_set(dir.path(), 16);
    let text = gpt_config(&data, &dir.path().join("o"), MUON_SOFT_CAP, 5, "")
        .replace("Text(path", "Idx(dir");
    let err = train_error(&text, &quiet());
    assert!(err.contains("LipschitzGpt reads token windows"), "{err}");
}

#[test]
fn a_diverging_loss_stops_with_a_clear_error_and_keeps_the_last_good_checkpoint() {
    let dir = tempfile::tempdir().unwrap();
    let data = write_idx_set(dir.path(), 32);
    let out = dir.path().join("o");
    // Plain SGD with an absurd rate and no constraint: the weights overflow within a few steps.
    let groups = r#"(name: "all", params: [All], optimizer: (type: "Sgd", cfg: (lr: 1e30)))"#;
    let text = mlp_config(&data, &out, groups, 50, 8)
        .replace("eval: (every: 20)", "eval: (every: 1), checkpoint_every: 1");
    let err = train_error(&text, &quiet());
    assert!(
        err.contains("NaN or Inf") && err.contains("training stopped and the last good checkpoint"),
        "{err}"
    );
    let ck =
        spectra::train::checkpoint::load(&spectra::train::checkpoint::path_in(&out), &Device::Cpu)
            .unwrap();
    for (name, t) in &ck.tensors {
        let values = t
            .flatten_all()
            .unwrap()
            .to_dtype(candle_core::DType::F64)
            .unwrap()
            .to_vec1::<f64>()
            .unwrap();
        let finite = values.iter().all(|x| x.is_finite());
        assert!(finite, "{name} in the kept checkpoint is finite");
    }
}

#[test]
fn resuming_without_a_checkpoint_says_so_and_makes_no_folder() {
    let dir = tempfile::tempdir().unwrap();
    let corpus = write_cycle_corpus(dir.path());
    let output = dir.path().join("typo");
    let options = TrainOptions {
        resume: true,
        ..quiet()
    };
    let err = train_error(
        &gpt_config(&corpus, &output, MUON_SOFT_CAP, 5, ""),
        &options,
    );
    assert!(err.contains("no checkpoint to resume from"), "{err}");
    assert!(!output.exists(), "the output folder was made");
}

/// Errors found after parsing carry the config's line and column, in `train` as in `check`.
fn train_error_in_file(dir: &Path, text: &str) -> String {
    let file = dir.join("cfg.ron");
    std::fs::write(&file, text).unwrap();
    match train(parse(text), &file, &quiet()) {
        Ok(_) => panic!("training succeeded"),
        Err(e) => e.to_string(),
    }
}

/// `mlp_ratio: 100000000000` aborted the process on a failed allocation; it is a config error at
/// the model's line, with the estimate and the machine's memory.
#[test]
fn an_absurd_size_is_refused_before_anything_is_allocated() {
    let dir = tempfile::tempdir().unwrap();
    let corpus = write_cycle_corpus(dir.path());
    let text = gpt_config(&corpus, &dir.path().join("o"), MUON_SOFT_CAP, 5, "")
        .replace("seq_len: 8)", "seq_len: 8, mlp_ratio: 100000000000)");
    let err = train_error_in_file(dir.path(), &text);
    assert!(err.contains("cfg.ron:2:"), "{err}");
    assert!(err.contains("more than this machine's"), "{err}");
    assert!(err.contains("make the model smaller"), "{err}");
}

#[test]
fn a_routing_error_in_train_names_its_line() {
    let dir = tempfile::tempdir().unwrap();
    let corpus = write_cycle_corpus(dir.path());
    let groups = format!(
        r#"{MUON_SOFT_CAP}
        (name: "gains", params: [Name("blocks.*.norm.gain")], optimizer: (type: "AdamW", cfg: (lr: 0.01)))"#
    );
    let err = train_error_in_file(
        dir.path(),
        &gpt_config(&corpus, &dir.path().join("o"), &groups, 5, ""),
    );
    assert!(err.contains("group `gains` matches no parameter"), "{err}");
    assert!(err.contains("cfg.ron:"), "{err}");
}

/// A zero size was reported as a debug dump of the whole shape, without a location.
#[test]
fn a_zero_size_is_named_at_its_field() {
    let dir = tempfile::tempdir().unwrap();
    let corpus = write_cycle_corpus(dir.path());
    let text = gpt_config(&corpus, &dir.path().join("o"), MUON_SOFT_CAP, 5, "")
        .replace("blocks: 1", "blocks: 0");
    let err = train_error_in_file(dir.path(), &text);
    assert!(err.contains("cfg.ron:2:"), "{err}");
    assert!(err.contains("blocks is 0"), "{err}");
    assert!(!err.contains("GptShape"), "{err}");
}
