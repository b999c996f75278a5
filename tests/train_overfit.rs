//! Small models learn what they can memorise, through the whole runner: a GPT learns a 9-character
//! cycle, and the zero-initialised MLP (ReLU′(0) = ½) separates four image classes. Every evaluation
//! carries the certificate, and the report shows it with the per-matrix norms.

mod train_support;

use train_support::*;

#[test]
fn a_tiny_gpt_memorises_a_cycle_with_muon_and_the_soft_cap() {
    let dir = tempfile::tempdir().unwrap();
    let corpus = write_cycle_corpus(dir.path());
    let out = dir.path().join("run");
    let summary = run(&gpt_config(&corpus, &out, MUON_SOFT_CAP, 60, ""), &quiet());
    let e = summary
        .final_eval
        .expect("an evaluation after the last step");
    // Only the first position of each window is uncertain (1 of 8 targets can still be predicted from
    // a single character here, so all are learnable); chance is 1/9.
    assert!(
        e.val_accuracy > 0.95,
        "validation accuracy {}",
        e.val_accuracy
    );
    // The soft cap keeps every matrix's RMS→RMS norm at most w_max = 2 (its guarantee,
    // docs/lipschitz.md §2.4); the certificate's norms are exact, so allow only f32 rounding.
    for (name, n) in &e.norms {
        let cap = if name == "embed" { 1.0 } else { 2.0 };
        assert!(*n <= cap * (1.0 + 1e-4), "{name}: {n}");
    }
    assert!(e.lipschitz_bound.is_finite() && e.lipschitz_bound > 0.0);
    assert!(e.reference_bound.is_some_and(|b| b > 0.0));
    // Certified robust accuracy counts a subset of the correct targets, fewer at larger radii.
    let radii: Vec<f64> = e.certified_accuracy.iter().map(|(r, _)| *r).collect();
    assert_eq!(radii, [0.001, 0.01, 0.1]);
    let robust: Vec<f64> = e.certified_accuracy.iter().map(|(_, a)| *a).collect();
    assert!(
        robust[0] <= e.val_accuracy && robust.windows(2).all(|w| w[1] <= w[0]),
        "{robust:?}"
    );
    let report = std::fs::read_to_string(out.join("report.md")).unwrap();
    assert!(
        report.contains("| blocks.0.attn.q |") && report.contains("certified Lipschitz bound"),
        "{report}"
    );
    for file in [
        "loss.svg",
        "accuracy.svg",
        "lipschitz.svg",
        "metrics.jsonl",
        "train.csv",
        "eval.csv",
        "summary.json",
    ] {
        assert!(out.join(file).exists(), "{file}");
    }
    // Evaluations at 0, 10, ..., 60: seven rows after the header.
    let eval_csv = std::fs::read_to_string(out.join("eval.csv")).unwrap();
    assert_eq!(eval_csv.lines().count(), 8, "{eval_csv}");
    assert!(eval_csv
        .lines()
        .next()
        .unwrap()
        .contains("lipschitz_bound,body_bound,reference_bound,certified_accuracy@0.001,certified_accuracy@0.01,certified_accuracy@0.1,norm:embed"));
}

#[test]
fn the_zero_initialised_mlp_trains_with_muon() {
    let dir = tempfile::tempdir().unwrap();
    let data = write_idx_set(dir.path(), 64);
    let out = dir.path().join("run");
    let summary = run(
        &mlp_config(&data, &out, MLP_MUON_SOFT_CAP, 40, 16),
        &quiet(),
    );
    let e = summary.final_eval.unwrap();
    assert_eq!(e.val_accuracy, 1.0, "val loss {}", e.val_loss);
    // The input layer left zero: ReLU′(0) = ½ let the first gradient through.
    let input_norm = e.norms.iter().find(|(n, _)| n == "layers.0").unwrap().1;
    assert!(input_norm > 0.1, "{input_norm}");
    // The MLP's bound is the product of its layers' norms.
    let product: f64 = e.norms.iter().map(|(_, n)| n).product();
    assert!((e.lipschitz_bound - product).abs() <= 1e-12 * product);
}
