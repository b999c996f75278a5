//! The final report: `report.md` with the configuration, a results table, the certificate's per-matrix
//! norms, and SVG charts of loss, accuracy and the certified Lipschitz bound over training.

use std::fmt::Write;
use std::path::Path;

use super::config::TrainConfig;
use spectra_core::registry::to_ron;
use spectra_core::{Error, Result};

use spectra_models::certificate::ROBUST_RADII;

use super::groups::Group;
use super::metrics::{EvalRecord, Record, TrainRecord};
use super::summary::TrainSummary;
use crate::plots::{Chart, Series, Style};

pub struct RunDescription<'a> {
    pub config_file: &'a Path,
    pub config: &'a TrainConfig,
    pub groups: &'a [Group],
    pub validation: String,
    pub validation_items: usize,
    pub parameters: usize,
}

/// Writes `report.md`, `loss.svg`, `accuracy.svg` and `lipschitz.svg` into `dir`.
pub fn write(
    dir: &Path,
    run: &RunDescription<'_>,
    history: &[Record],
    summary: &TrainSummary,
) -> Result<()> {
    let train: Vec<&TrainRecord> = history
        .iter()
        .filter_map(|r| {
            if let Record::Train(t) = r {
                Some(t)
            } else {
                None
            }
        })
        .collect();
    let evals: Vec<&EvalRecord> = history
        .iter()
        .filter_map(|r| {
            if let Record::Eval(e) = r {
                Some(e)
            } else {
                None
            }
        })
        .collect();
    let charts = [
        (
            "loss.svg",
            chart(
                "Cross-entropy loss",
                "loss",
                &train,
                &evals,
                |t| t.loss,
                |e| e.val_loss,
            ),
        ),
        (
            "accuracy.svg",
            chart(
                "Top-1 accuracy",
                "accuracy",
                &train,
                &evals,
                |t| t.accuracy,
                |e| e.val_accuracy,
            ),
        ),
        (
            "lipschitz.svg",
            Chart {
                title: "Certified Lipschitz bound".into(),
                x_label: "step".into(),
                y_label: "bound (log scale)".into(),
                log_x: false,
                log_y: true,
                series: vec![Series {
                    name: "certificate".into(),
                    points: evals
                        .iter()
                        .map(|e| (e.step as f64, e.lipschitz_bound))
                        .collect(),
                    style: Style::LineAndPoints,
                    color: 0,
                }],
            },
        ),
    ];
    for (name, c) in &charts {
        let path = dir.join(name);
        std::fs::write(&path, c.to_svg())
            .map_err(|e| Error::file(&path, format!("cannot write the chart: {e}")))?;
    }
    let path = dir.join("report.md");
    std::fs::write(&path, markdown(run, &evals, summary))
        .map_err(|e| Error::file(&path, format!("cannot write the report: {e}")))
}

/// Training values smoothed over a window of 1% of the run (at least 1 step) against validation points.
fn chart(
    title: &str,
    y_label: &str,
    train: &[&TrainRecord],
    evals: &[&EvalRecord],
    train_value: impl Fn(&TrainRecord) -> f64,
    eval_value: impl Fn(&EvalRecord) -> f64,
) -> Chart {
    let window = (train.len() / 100).max(1);
    let smoothed = train
        .chunks(window)
        .map(|c| {
            (
                c.last().map_or(0.0, |t| t.step as f64),
                c.iter().map(|t| train_value(t)).sum::<f64>() / c.len() as f64,
            )
        })
        .collect();
    Chart {
        title: title.into(),
        x_label: "step".into(),
        y_label: y_label.into(),
        log_x: false,
        log_y: false,
        series: vec![
            Series {
                name: format!("train (mean of {window})"),
                points: smoothed,
                style: Style::Line,
                color: 0,
            },
            Series {
                name: "validation".into(),
                points: evals
                    .iter()
                    .map(|e| (e.step as f64, eval_value(e)))
                    .collect(),
                style: Style::LineAndPoints,
                color: 1,
            },
        ],
    }
}

fn markdown(run: &RunDescription<'_>, evals: &[&EvalRecord], summary: &TrainSummary) -> String {
    let mut md = String::new();
    let w = &mut md;
    let cfg = run.config;
    let _ = writeln!(w, "# Training report: {}\n", run.config_file.display());
    let _ = writeln!(
        w,
        "- model: `{}` ({} parameters)",
        to_ron(&cfg.model),
        run.parameters
    );
    let _ = writeln!(w, "- data: `{}`", to_ron(&cfg.data));
    let _ = writeln!(
        w,
        "- validation: {} of {} items of {} (every target of each item scored)",
        if cfg.eval.windows.is_some() {
            "the first"
        } else {
            "all"
        },
        run.validation_items,
        run.validation
    );
    let _ = writeln!(
        w,
        "- steps: {} of {} ({:?} schedule), seed {}",
        summary.steps_done, summary.steps, cfg.schedule, cfg.seed
    );
    let _ = writeln!(
        w,
        "- time: {:.1} s for this invocation's steps; {:.3} s per step, of which {:.4} s ({:.1}%) in the constraints; {:.0} training targets/s",
        summary.seconds,
        summary.mean_step_seconds,
        summary.mean_constraint_seconds,
        100.0 * summary.mean_constraint_seconds / summary.mean_step_seconds.max(1e-12),
        summary.targets_per_second
    );
    let _ = writeln!(w, "\n## Parameter groups\n");
    for g in run.groups {
        let names: Vec<&str> = g.params.iter().map(|p| p.name.as_str()).collect();
        let _ = writeln!(w, "- **{}**: {}", g.name, names.join(", "));
        let _ = writeln!(w, "  - optimizer `{}`", to_ron(&g.optimizer));
        for c in &g.constraints {
            let _ = writeln!(w, "  - constraint `{}`", to_ron(c));
        }
    }
    let _ = writeln!(w, "\n## Results\n");
    let radii: Vec<String> = ROBUST_RADII.iter().map(|e| format!("ε = {e}")).collect();
    let _ = writeln!(
        w,
        "| step | val loss | val accuracy | certified Lipschitz bound | bound after the embedding | published formula | certified robust accuracy at {} |",
        radii.join(" / ")
    );
    let _ = writeln!(w, "|---:|---:|---:|---:|---:|---:|---:|");
    for e in evals {
        let robust: Vec<String> = e
            .certified_accuracy
            .iter()
            .map(|(_, a)| format!("{:.2}%", 100.0 * a))
            .collect();
        let _ = writeln!(
            w,
            "| {} | {:.4} | {:.2}% | {:.4} | {:.4} | {} | {} |",
            e.step,
            e.val_loss,
            100.0 * e.val_accuracy,
            e.lipschitz_bound,
            e.body_bound,
            e.reference_bound.map_or("–".into(), |b| format!("{b:.4}")),
            if robust.is_empty() {
                "–".into()
            } else {
                robust.join(" / ")
            }
        );
    }
    let _ = writeln!(
        w,
        "\nThe certified bound is sound: every factor is derived in `docs/certificate.md`. The published formula \
         is the paper code's (`docs/lipschitz.md` §7) on the same weights, for comparison with published figures; it is not a \
         certificate. Scaling the logits leaves accuracy unchanged and scales the bound; certified robust \
         accuracy is invariant to it: a target counts at radius ε when it is predicted correctly with a logit margin \
         above √(2·classes)·L_ε·ε, so that no perturbation of the body's input (the embedding output, or the \
         image) of norm ≤ ε (largest per-position RMS) can change the prediction. L_ε is the body's bound on \
         inputs within ε of those the certificate covers."
    );
    if let Some(last) = evals.last() {
        let _ = writeln!(w, "\n## Certificate at step {}\n", last.step);
        let _ = writeln!(
            w,
            "Exact RMS→RMS norms (`sqrt(fan_in/fan_out)·σ_max` from an SVD); the embedding's entry is its largest \
             column RMS.\n"
        );
        let _ = writeln!(w, "| parameter | norm |");
        let _ = writeln!(w, "|---|---:|");
        for (name, n) in &last.norms {
            let _ = writeln!(w, "| {name} | {n:.6} |");
        }
    }
    let _ = writeln!(w, "\n## Charts\n");
    let _ = writeln!(
        w,
        "![loss](loss.svg)\n\n![accuracy](accuracy.svg)\n\n![Lipschitz bound](lipschitz.svg)"
    );
    md
}
