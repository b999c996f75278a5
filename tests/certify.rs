//! `spectra certify`: a run's certificate recomputed from its checkpoint and its own config copy
//! agrees with what the run reported; the attacks stay under the bound; bad folders, configs and
//! radii are refused saying what to do.

mod train_support;

use std::path::Path;
use std::process::Command;

use spectra::models::attack::AttackEffort;
use spectra::train::certify::{certify, CertifyOptions};
use spectra::train::TrainSummary;

/// A tiny GPT and MLP trained into `dir/gpt` and `dir/mlp`, with their summaries.
fn trained(dir: &Path) -> [(std::path::PathBuf, TrainSummary); 2] {
    let corpus = train_support::write_cycle_corpus(dir);
    let gpt = dir.join("gpt");
    let text = train_support::gpt_config(&corpus, &gpt, train_support::MUON_SOFT_CAP, 30, "");
    let gpt_summary = train_support::run(&text, &train_support::quiet());
    let images = train_support::write_idx_set(dir, 64);
    let mlp = dir.join("mlp");
    let text = train_support::mlp_config(&images, &mlp, train_support::MLP_MUON_SOFT_CAP, 20, 16);
    let mlp_summary = train_support::run(&text, &train_support::quiet());
    [(gpt, gpt_summary), (mlp, mlp_summary)]
}

#[test]
fn a_runs_certificate_and_robust_accuracy_are_what_the_run_reported() {
    let dir = tempfile::tempdir().unwrap();
    for (run, summary) in trained(dir.path()) {
        let reported = summary.final_eval.unwrap();
        let radii: Vec<f64> = reported
            .certified_accuracy
            .iter()
            .map(|(e, _)| *e)
            .collect();
        let effort = AttackEffort {
            restarts: 3,
            steps: 20,
            batch: 4,
            token_rounds: 10,
        };
        let report = certify(
            &run,
            &CertifyOptions {
                config: None,
                radii,
                attack: Some(effort),
            },
        )
        .unwrap_or_else(|e| panic!("{}: {e}", run.display()));
        // The same weights, data and arithmetic as the run's last evaluation: equal to the bit.
        assert_eq!(report.bound, reported.lipschitz_bound, "{}", run.display());
        assert_eq!(report.body_bound, reported.body_bound);
        assert_eq!(Some(report.published_formula), reported.reference_bound);
        assert_eq!(report.validation_accuracy, reported.val_accuracy);
        let robust: Vec<(f64, f64)> = report
            .robust
            .iter()
            .map(|r| (r.radius, r.accuracy))
            .collect();
        assert_eq!(robust, reported.certified_accuracy);
        // Each input's own certificate is never weaker than the global one; only the GPT has one.
        for r in &report.robust {
            match r.per_input_accuracy {
                Some(own) => assert!(own >= r.accuracy, "{r:?}"),
                None => assert!(run.ends_with("mlp"), "{r:?}"),
            }
        }
        assert_eq!(report.step, summary.steps_done);
        let attack = report.attack.unwrap();
        // Below the bound up to f32 rounding of the forward passes (certificate_attack.rs).
        assert!(
            attack.body_ratio > 0.0 && attack.body_ratio <= 1.001,
            "{}: {attack:?}",
            run.display()
        );
        if let Some(ratio) = attack.input_ratio {
            assert!(ratio > 0.0 && ratio <= 1.001, "{attack:?}");
        }
    }
}

#[test]
fn the_command_prints_the_report_and_refuses_what_it_cannot_certify() {
    let dir = tempfile::tempdir().unwrap();
    let [(gpt, summary), (mlp, _)] = trained(dir.path());
    let spectra = |args: &[&str]| {
        let out = Command::new(env!("CARGO_BIN_EXE_spectra"))
            .args(args)
            .output()
            .unwrap();
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    let gpt_dir = gpt.to_str().unwrap();
    let (code, stdout, stderr) = spectra(&["certify", gpt_dir, "--json", "--eps", "0.002,0.02"]);
    assert_eq!(code, Some(0), "{stderr}");
    let json: serde_json::Value = serde_json::from_str(&stdout).unwrap();
    assert_eq!(
        json["bound"].as_f64(),
        Some(summary.final_eval.unwrap().lipschitz_bound)
    );
    assert_eq!(json["robust"].as_array().unwrap().len(), 2);
    assert_eq!(json["robust"][1]["radius"].as_f64(), Some(0.02));
    assert!(json["attack"].is_null());
    let (code, stdout, _) = spectra(&["certify", gpt_dir]);
    assert_eq!(code, Some(0));
    assert!(
        stdout.contains("certified Lipschitz bound") && stdout.contains("published formula"),
        "{stdout}"
    );

    let refused = |args: &[&str], needles: &[&str]| {
        let (code, _, stderr) = spectra(args);
        assert_eq!(code, Some(1), "{args:?}: {stderr}");
        for n in needles {
            assert!(stderr.contains(n), "{args:?}: no `{n}` in {stderr}");
        }
    };
    refused(&["certify", "/nonexistent/run"], &["not a run folder"]);
    refused(&["certify", gpt_dir, "--eps", "-1"], &["--eps", "positive"]);
    refused(&["certify", gpt_dir, "--eps", "NaN"], &["--eps"]);
    // Training another config into the folder is refused, and leaves the run's config copy alone.
    let kept = std::fs::read_to_string(gpt.join("config.ron")).unwrap();
    let other = std::fs::read_to_string(mlp.join("config.ron"))
        .unwrap()
        .replace(mlp.to_str().unwrap(), gpt_dir);
    let other_file = dir.path().join("other.ron");
    std::fs::write(&other_file, other).unwrap();
    refused(&["train", other_file.to_str().unwrap()], &["earlier run"]);
    assert_eq!(
        std::fs::read_to_string(gpt.join("config.ron")).unwrap(),
        kept
    );
    // Data named relative to the directory training ran in, certified from elsewhere: the error
    // says where the path is taken from and what to do.
    let corpus = dir.path().join("cycle.txt");
    let relative = kept.replace(
        corpus.to_str().unwrap(),
        "data-of-a-run-elsewhere/cycle.txt",
    );
    assert_ne!(relative, kept);
    let relative_file = dir.path().join("relative.ron");
    std::fs::write(&relative_file, relative).unwrap();
    refused(
        &[
            "certify",
            gpt_dir,
            "--config",
            relative_file.to_str().unwrap(),
        ],
        &[
            "data-of-a-run-elsewhere/cycle.txt",
            "directory training ran in",
        ],
    );
    // The MLP's config with the GPT's checkpoint: refused by the fingerprint.
    let mlp_config = mlp.join("config.ron");
    refused(
        &["certify", gpt_dir, "--config", mlp_config.to_str().unwrap()],
        &["different model", "--config"],
    );
    // A folder without its config copy (runs from before it was kept) asks for --config.
    std::fs::remove_file(gpt.join("config.ron")).unwrap();
    refused(&["certify", gpt_dir], &["config.ron", "--config FILE"]);
    std::fs::remove_file(gpt.join("checkpoint.safetensors")).unwrap();
    refused(
        &["certify", gpt_dir, "--config", mlp_config.to_str().unwrap()],
        &["checkpoint.safetensors", "no checkpoint"],
    );
}
