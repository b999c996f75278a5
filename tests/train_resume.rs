//! Resuming: a run stopped halfway and resumed ends bit for bit where an uninterrupted run ends —
//! weights, optimizer moments, constraint state and the metrics. The groups use every kind of state:
//! Muon momentum, AdamW moments, the spectral hammer's random power-iteration starts (the RNG),
//! spectral normalization's persistent vector (constraint state).

mod train_support;

use std::sync::atomic::AtomicBool;
use std::sync::Arc;

use candle_core::Device;
use spectra::train::checkpoint;
use spectra::train::{Outcome, TrainOptions};
use train_support::*;

const GROUPS: &str = r#"
    (name: "hidden", params: [Role(Hidden)],
     optimizer: (type: "Muon", cfg: (lr: 0.3)),
     constraints: [(type: "SpectralHammer", cfg: (w_max: 1.5))]),
    (name: "head", params: [Role(Head)],
     optimizer: (type: "AdamW", cfg: (lr: 0.01)),
     constraints: [(type: "SpectralNormalize", cfg: (w_max: 1.0, persistent_vector: true))]),
    (name: "embedding", params: [Role(Embedding)],
     optimizer: (type: "Muon", cfg: (lr: 0.3)),
     constraints: [(type: "EmbeddingColumnCap", cfg: (max_rms: 1.0))]),
"#;

#[test]
fn stopped_and_resumed_equals_uninterrupted_bit_for_bit() {
    let dir = tempfile::tempdir().unwrap();
    let corpus = write_cycle_corpus(dir.path());
    let straight = dir.path().join("straight");
    let pieces = dir.path().join("pieces");
    // Checkpoint only at the end, so the halfway stop is the only other checkpoint.
    let extra = "checkpoint_every: 1000,";
    let s = run(&gpt_config(&corpus, &straight, GROUPS, 24, extra), &quiet());
    assert_eq!(s.outcome, Outcome::Finished);

    let first = run(
        &gpt_config(&corpus, &pieces, GROUPS, 24, extra),
        &TrainOptions {
            stop_at: Some(12),
            ..quiet()
        },
    );
    assert_eq!((first.outcome, first.steps_done), (Outcome::Stopped, 12));
    let second = run(
        &gpt_config(&corpus, &pieces, GROUPS, 24, extra),
        &TrainOptions {
            resume: true,
            ..quiet()
        },
    );
    assert_eq!((second.outcome, second.steps_done), (Outcome::Finished, 24));

    let a = checkpoint::load(&checkpoint::path_in(&straight), &Device::Cpu).unwrap();
    let b = checkpoint::load(&checkpoint::path_in(&pieces), &Device::Cpu).unwrap();
    assert_eq!(a.step, b.step);
    let mut names: Vec<&String> = a.tensors.keys().collect();
    names.sort();
    assert_eq!(names, {
        let mut n: Vec<&String> = b.tensors.keys().collect();
        n.sort();
        n
    });
    assert!(
        names.iter().any(|n| n.starts_with("optim/head/")),
        "AdamW state is saved: {names:?}"
    );
    assert!(
        names
            .iter()
            .any(|n| n.starts_with("constraint/head/0/head/")),
        "persistent vectors are saved: {names:?}"
    );
    for name in names {
        let bits = |t: &candle_core::Tensor| -> Vec<u32> {
            t.flatten_all()
                .unwrap()
                .to_dtype(candle_core::DType::F32)
                .unwrap()
                .to_vec1::<f32>()
                .unwrap()
                .iter()
                .map(|x| x.to_bits())
                .collect()
        };
        assert_eq!(
            bits(&a.tensors[name]),
            bits(&b.tensors[name]),
            "{name} differs"
        );
    }
    // The per-step losses agree too, and the resumed metrics hold each step once.
    let losses = |dir: &std::path::Path| -> Vec<String> {
        std::fs::read_to_string(dir.join("train.csv"))
            .unwrap()
            .lines()
            .map(|l| l.split(',').take(2).collect::<Vec<_>>().join(","))
            .collect()
    };
    assert_eq!(losses(&straight), losses(&pieces));
    assert_eq!(losses(&pieces).len(), 25);
}

#[test]
fn a_stop_request_writes_a_checkpoint_and_a_fresh_start_refuses_to_overwrite_it() {
    let dir = tempfile::tempdir().unwrap();
    let corpus = write_cycle_corpus(dir.path());
    let out = dir.path().join("run");
    let text = gpt_config(&corpus, &out, MUON_SOFT_CAP, 10, "");
    let stop = Arc::new(AtomicBool::new(true));
    let s = run(
        &text,
        &TrainOptions {
            stop: Some(stop),
            ..quiet()
        },
    );
    assert_eq!((s.outcome, s.steps_done), (Outcome::Stopped, 0));
    assert!(checkpoint::path_in(&out).exists());
    let err = spectra::train::train(parse(&text), std::path::Path::new("test.ron"), &quiet())
        .unwrap_err()
        .to_string();
    assert!(err.contains("--resume"), "{err}");
}

/// A run of 4 steps stopped after 2 with a checkpoint in `dir/run`: its config text and folder.
fn stopped_after_two_steps(dir: &std::path::Path) -> (String, std::path::PathBuf) {
    let corpus = write_cycle_corpus(dir);
    let out = dir.join("run");
    let text = gpt_config(&corpus, &out, MUON_SOFT_CAP, 4, "");
    let s = run(
        &text,
        &TrainOptions {
            stop_at: Some(2),
            ..quiet()
        },
    );
    assert_eq!((s.outcome, s.steps_done), (Outcome::Stopped, 2));
    (text, out)
}

fn resume_error(text: &str) -> String {
    resume_error_with(text, None)
}

/// Resuming `text`'s run with `steps` in place of the config's: the error.
fn resume_error_with(text: &str, steps: Option<u64>) -> String {
    let resume = TrainOptions {
        resume: true,
        steps,
        ..quiet()
    };
    spectra::train::train(parse(text), std::path::Path::new("test.ron"), &resume)
        .unwrap_err()
        .to_string()
}

#[test]
fn a_changed_seed_is_refused_on_resume() {
    let dir = tempfile::tempdir().unwrap();
    let (text, _) = stopped_after_two_steps(dir.path());
    let err = resume_error(&text.replace("seed: 3", "seed: 4"));
    assert!(err.contains("seed"), "{err}");
}

/// Resuming a checkpoint past the steps asked for is refused, naming both; it used to print
/// "finished after 2 of 1 steps" with the first evaluation's numbers as the result.
#[test]
fn resuming_past_the_steps_asked_for_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let (text, _) = stopped_after_two_steps(dir.path());
    let err = resume_error_with(&text, Some(1));
    assert!(
        err.contains("spans 4 steps") && err.contains("asks for 1"),
        "{err}"
    );
}

/// Resuming with other steps would change the learning-rate schedule mid-run, and with other
/// evaluation windows make evaluations before and after incomparable: both are refused, naming what
/// the checkpoint's run had. Both used to be spliced in silently.
#[test]
fn a_changed_plan_is_refused_on_resume_naming_the_one_to_keep() {
    let dir = tempfile::tempdir().unwrap();
    let (text, _) = stopped_after_two_steps(dir.path());
    let err = resume_error_with(&text, Some(8));
    assert!(
        err.contains("`steps`") && err.contains("spans 4 steps") && err.contains("--steps 4"),
        "{err}"
    );
    let err = resume_error(&text.replace("windows: 8", "windows: 5"));
    assert!(
        err.contains("`eval.windows`")
            && err.contains("8 validation windows, and this config on 5")
            && err.contains("set eval.windows to 8"),
        "{err}"
    );
    let err = resume_error(&text.replace(", windows: 8", ""));
    assert!(err.contains("on the whole validation split"), "{err}");
    // The plan kept, the run resumes.
    let resume = TrainOptions {
        resume: true,
        steps: Some(4),
        ..quiet()
    };
    let s = spectra::train::train(parse(&text), std::path::Path::new("test.ron"), &resume).unwrap();
    assert_eq!((s.outcome, s.steps_done), (Outcome::Finished, 4));
}

/// A save interrupted between its two renames leaves only the checkpoint before it: `--resume`
/// names it rather than saying there is nothing.
#[test]
fn resume_with_only_the_previous_checkpoint_names_it() {
    let dir = tempfile::tempdir().unwrap();
    let (text, out) = stopped_after_two_steps(dir.path());
    let latest = checkpoint::path_in(&out);
    std::fs::rename(&latest, checkpoint::previous_of(&latest)).unwrap();
    let err = resume_error(&text);
    assert!(err.contains(checkpoint::PREVIOUS_FILE_NAME), "{err}");
}
