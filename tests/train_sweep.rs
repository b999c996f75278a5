//! `spectra sweep`: a grid of runs in parallel processes, each in its own folder, then the summary
//! table and the Pareto plot; run again, finished runs are skipped.

mod train_support;

use std::path::Path;

use spectra::train::sweep::{self, SweepConfig};
use spectra_core::config;
use train_support::*;

#[test]
fn a_two_method_grid_runs_in_parallel_and_is_summarised() {
    let dir = tempfile::tempdir().unwrap();
    let data = write_idx_set(dir.path(), 32);
    let soft_cap = r#"(name: "all", params: [All], optimizer: (type: "Muon", cfg: (lr: 0.3)),
                       constraints: [(type: "SpectralSoftCap", cfg: (w_max: 2.0))])"#;
    let decay = r#"(name: "all", params: [All], optimizer: (type: "AdamW", cfg: (lr: 0.01)),
                    constraints: [(type: "WeightDecay", cfg: (wd: 0.1))])"#;
    let a = dir.path().join("softcap.ron");
    let b = dir.path().join("decay.ron");
    // The runs' own `output` is replaced by the sweep's folders.
    std::fs::write(
        &a,
        mlp_config(&data, &dir.path().join("unused"), soft_cap, 100, 8),
    )
    .unwrap();
    std::fs::write(
        &b,
        mlp_config(&data, &dir.path().join("unused"), decay, 100, 8),
    )
    .unwrap();
    let out = dir.path().join("sweep");
    let text = format!(
        r#"(output: "{}", parallel: 2, steps: 6, methods: [
            (name: "Muon + soft cap", config: "{}", grid: {{"w_max": [1.0, 3.0], "lr": [0.1, 0.2]}}),
            (name: "AdamW + wd", config: "{}", grid: {{"wd": [0.5]}}),
        ])"#,
        out.display(),
        a.display(),
        b.display()
    );
    let cfg: SweepConfig =
        config::parse(&text, Path::new("sweep.ron")).unwrap_or_else(|e| panic!("{e}"));
    let rows = sweep::run(
        &cfg,
        (Path::new("sweep.ron"), &text),
        Path::new(env!("CARGO_BIN_EXE_spectra")),
        true,
    )
    .unwrap();
    assert_eq!(rows.len(), 5);
    for r in &rows {
        assert_eq!(
            r.status,
            "Finished",
            "{} {}: see {}",
            r.method,
            r.settings,
            r.folder.join("log.txt").display()
        );
        assert_eq!(r.steps, 6);
        assert!(r.lipschitz_bound.is_some_and(|b| b > 0.0));
    }
    let run_config =
        std::fs::read_to_string(out.join("muon-soft-cap/lr=0.2,w_max=3/config.ron")).unwrap();
    assert!(
        run_config.contains("w_max: 3.0") && run_config.contains("lr: 0.2"),
        "{run_config}"
    );
    let summary = std::fs::read_to_string(out.join("summary.md")).unwrap();
    assert_eq!(
        summary.matches("| Muon + soft cap |").count(),
        4,
        "{summary}"
    );
    let svg = std::fs::read_to_string(out.join("pareto.svg")).unwrap();
    assert!(svg.contains(">Muon + soft cap<") && svg.contains(">AdamW + wd<"));
    // Everything finished: a second invocation starts nothing and writes the same table.
    let again = sweep::run(
        &cfg,
        (Path::new("sweep.ron"), &text),
        Path::new(env!("CARGO_BIN_EXE_spectra")),
        true,
    )
    .unwrap();
    assert_eq!(again.len(), 5);
    assert_eq!(
        std::fs::read_to_string(out.join("summary.md")).unwrap(),
        summary
    );
}

#[test]
fn a_grid_field_missing_from_the_config_is_an_error_before_anything_runs() {
    let dir = tempfile::tempdir().unwrap();
    let data = write_idx_set(dir.path(), 16);
    let cfg_path = dir.path().join("m.ron");
    let groups = r#"(name: "all", params: [All], optimizer: (type: "Muon", cfg: (lr: 0.3)))"#;
    std::fs::write(
        &cfg_path,
        mlp_config(&data, &dir.path().join("unused"), groups, 5, 8),
    )
    .unwrap();
    let text = format!(
        r#"(output: "{}", methods: [(name: "m", config: "{}", grid: {{"w_max": [1.0]}})])"#,
        dir.path().join("s").display(),
        cfg_path.display()
    );
    let cfg: SweepConfig = config::parse(&text, Path::new("sweep.ron")).unwrap();
    let err = sweep::plan(&cfg, (Path::new("sweep.ron"), &text))
        .unwrap_err()
        .to_string();
    assert!(
        err.starts_with("sweep.ron:1:")
            && err.contains("grid field `w_max` is not a field with a number"),
        "{err}"
    );
    assert!(!dir.path().join("s").exists());
}

/// A grid value that a run's config refuses is an error at the grid field in the sweep file, naming
/// the run; it used to point at the run's config, a generated file that does not exist.
#[test]
fn a_grid_value_a_run_refuses_is_an_error_at_the_grid_field() {
    let dir = tempfile::tempdir().unwrap();
    let data = write_idx_set(dir.path(), 16);
    let cfg_path = dir.path().join("m.ron");
    let groups = r#"(name: "all", params: [All], optimizer: (type: "Muon", cfg: (lr: 0.3)),
                     constraints: [(type: "SpectralSoftCap", cfg: (w_max: 2.0))])"#;
    std::fs::write(
        &cfg_path,
        mlp_config(&data, &dir.path().join("unused"), groups, 5, 8),
    )
    .unwrap();
    let text = format!(
        "(output: \"{}\", methods: [\n  (name: \"a\", config: \"{}\", grid: {{\"w_max\": [1.0]}}),\n  \
         (name: \"b\", config: \"{}\", grid: {{\"lr\": [0.1], \"w_max\": [2.0, -1.0]}}),\n])",
        dir.path().join("s").display(),
        cfg_path.display(),
        cfg_path.display()
    );
    let cfg: SweepConfig = config::parse(&text, Path::new("sweep.ron")).unwrap();
    let err = sweep::plan(&cfg, (Path::new("sweep.ron"), &text))
        .unwrap_err()
        .to_string();
    // Method b's `"w_max"` on line 3, not method a's on line 2.
    let col = text.lines().nth(2).unwrap().find("\"w_max\"").unwrap() + 1;
    assert!(
        err.starts_with(&format!(
            "sweep.ron:3:{col}: method `b`: the run `lr=0.1,w_max=-1`"
        )),
        "{err}"
    );
    assert!(err.contains("w_max must be a positive number"), "{err}");
    assert!(!err.contains("config.ron"), "{err}");
}
