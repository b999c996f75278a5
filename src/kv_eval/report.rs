//! `spectra kv`'s output: `report.md` (a summary table per policy × budget and one table per task),
//! `results.json` (everything, answers included) and SVG charts of ΔNLL and passkey accuracy against the
//! budget.

use std::fmt::Write;
use std::path::Path;

use spectra_core::{Error, Result};

use super::ruler::leaderboard as ruler;
use super::{KvReport, FULL};
use crate::plots::{Chart, Series, Style};
use crate::units::mib;

/// Writes the report files into `dir` (created if needed).
pub fn write_report(dir: &Path, config_file: &Path, report: &KvReport) -> Result<()> {
    std::fs::create_dir_all(dir).map_err(|e| Error::file(dir, format!("cannot create: {e}")))?;
    let json = serde_json::to_string_pretty(report)
        .map_err(|e| Error::invalid("results.json", e.to_string()))?;
    let mut files = vec![
        ("results.json".to_string(), json),
        ("report.md".to_string(), markdown(config_file, report)),
    ];
    for (i, lm) in report.language_modelling.iter().enumerate() {
        let points = lm
            .rows
            .iter()
            .map(|r| (r.policy.as_str(), r.budget_tokens, r.delta_nll));
        files.push((
            numbered("delta_nll", i),
            chart(
                &format!("ΔNLL vs Full, last {} of {} tokens", lm.scored, lm.context),
                "ΔNLL (nats / token)",
                points,
            ),
        ));
    }
    for (i, pk) in report.passkey.iter().enumerate() {
        let points = pk
            .rows
            .iter()
            .map(|r| (r.policy.as_str(), r.budget_tokens, 100.0 * r.accuracy));
        files.push((
            numbered("passkey", i),
            chart(
                &format!("Passkey accuracy, lengths {:?}", pk.lengths_used()),
                "accuracy (%)",
                points,
            ),
        ));
    }
    for (i, r) in report.ruler.iter().enumerate() {
        let (ratios, points) = ruler::points(r);
        let x_axis = if ratios {
            ("compression ratio (share of the context removed)", false)
        } else {
            ("budget (KV entries per head, log scale)", true)
        };
        let protocol = if r.query_aware {
            "query-aware"
        } else {
            "question-agnostic"
        };
        files.push((
            numbered("ruler", i),
            chart_over(
                &format!("RULER-style average score, {} tokens, {protocol}", r.length),
                x_axis,
                "average score (%)",
                points.into_iter(),
            ),
        ));
    }
    for r in &report.reasoning {
        files.push((
            format!("reasoning-{}.svg", r.set),
            chart(
                &format!("{} accuracy, at most {} tokens", r.set, r.max_new_tokens),
                "accuracy (%)",
                super::reasoning::table::points(r),
            ),
        ));
    }
    for (name, body) in files {
        let path = dir.join(name);
        std::fs::write(&path, body)
            .map_err(|e| Error::file(&path, format!("cannot write: {e}")))?;
    }
    Ok(())
}

fn numbered(stem: &str, i: usize) -> String {
    if i == 0 {
        format!("{stem}.svg")
    } else {
        format!("{stem}_{}.svg", i + 1)
    }
}

/// One line per policy through its (budget, value) points.
fn chart<'a>(
    title: &str,
    y_label: &str,
    points: impl Iterator<Item = (&'a str, f64, f64)>,
) -> String {
    chart_over(
        title,
        ("budget (KV entries per head, log scale)", true),
        y_label,
        points,
    )
}

/// One line per policy through its (x, value) points, x labelled and log-scaled as `x_axis` says.
fn chart_over<'a>(
    title: &str,
    (x_label, log_x): (&str, bool),
    y_label: &str,
    points: impl Iterator<Item = (&'a str, f64, f64)>,
) -> String {
    let mut series: Vec<Series> = Vec::new();
    for (policy, x, y) in points {
        match series.iter_mut().find(|s| s.name == policy) {
            Some(s) => s.points.push((x, y)),
            None => series.push(Series {
                name: policy.to_string(),
                points: vec![(x, y)],
                style: Style::LineAndPoints,
                color: series.len(),
            }),
        }
    }
    Chart {
        title: title.into(),
        x_label: x_label.into(),
        y_label: y_label.into(),
        log_x,
        log_y: false,
        series,
    }
    .to_svg()
}

fn markdown(config_file: &Path, report: &KvReport) -> String {
    let mut md = String::new();
    let _ = writeln!(
        md,
        "# KV-cache evaluation\n\nModel `{}` on {}; config `{}`. In language modelling, passkey \
         retrieval and RULER every policy × budget continues from the same prefill as `{FULL}` (the \
         uncompressed cache); decoding and reasoning run every arm from its own prompt.\n",
        report.model,
        report.device,
        config_file.display()
    );
    summary(&mut md, report);
    for lm in &report.language_modelling {
        let _ = writeln!(
            md,
            "\n## Language modelling\n\n`{}`: {} passage(s) of {} tokens; the last {} tokens scored, fed {} \
             at a time with compression between chunks. {FULL}: NLL {:.4}, perplexity {:.3}, peak KV \
             {:.1} MiB.\n",
            lm.text,
            lm.passages,
            lm.context,
            lm.scored,
            lm.chunk,
            lm.full.nll,
            lm.full.perplexity,
            mib(lm.full.peak_kv_bytes)
        );
        let _ = writeln!(
            md,
            "| policy | budget | NLL | ΔNLL | perplexity | top-1 agreement | peak KV (MiB) | compressions |\n|---|---|---|---|---|---|---|---|"
        );
        for r in &lm.rows {
            let _ = writeln!(
                md,
                "| {} | {} | {:.4} | {:+.4} | {:.3} | {:.1}% | {:.1} | {} |",
                r.policy,
                r.budget,
                r.nll,
                r.delta_nll,
                r.perplexity,
                100.0 * r.agreement,
                mib(r.peak_kv_bytes),
                r.compressions
            );
        }
    }
    for pk in &report.passkey {
        let _ = writeln!(
            md,
            "\n## Passkey retrieval\n\nDepths {:?}, {} trial(s) each. Policies are scored on the samples {FULL} \
             answers, at the lengths where it answers at least half.\n\n| length | {FULL} | used |\n|---|---|---|",
            pk.depths, pk.trials
        );
        for l in &pk.lengths {
            let _ = writeln!(
                md,
                "| {} | {}/{} | {} |",
                l.length,
                l.full_correct,
                l.samples,
                if l.used { "yes" } else { "no" }
            );
        }
        let _ = writeln!(
            md,
            "\n| policy | budget | correct | accuracy |\n|---|---|---|---|"
        );
        for r in &pk.rows {
            let _ = writeln!(
                md,
                "| {} | {} | {}/{} | {:.0}% |",
                r.policy,
                r.budget,
                r.correct,
                r.total,
                100.0 * r.accuracy
            );
        }
    }
    for d in &report.decode {
        let _ = writeln!(
            md,
            "\n## Decoding\n\n{} tokens decoded greedily after a prompt from `{}`, each policy running \
             the prompt itself (compressed between chunks); peak KV is the whole run's.\n\n| context | \
             policy | budget | prefill tokens/s | tokens/s | eviction share | peak KV (MiB) | \
             compressions |\n|---|---|---|---|---|---|---|---|",
            d.tokens, d.text
        );
        for r in &d.rows {
            let _ = writeln!(
                md,
                "| {} | {} | {} | {:.1} | {:.2} | {:.1}% | {:.1} | {} |",
                r.context,
                r.policy,
                r.budget,
                r.prefill_tokens_per_second,
                r.tokens_per_second,
                100.0 * r.eviction_share,
                mib(r.peak_kv_bytes),
                r.compressions
            );
        }
    }
    for r in &report.reasoning {
        super::reasoning::table::markdown(&mut md, r);
    }
    for r in &report.ruler {
        ruler::markdown(&mut md, r);
    }
    md
}

/// One row per policy × budget joining the first task of each kind.
fn summary(md: &mut String, report: &KvReport) {
    let lm = report.language_modelling.first();
    let pk = report.passkey.first();
    let decode = report.decode.first();
    let keys: Vec<(String, String)> = lm
        .map(|t| {
            t.rows
                .iter()
                .map(|r| (r.policy.clone(), r.budget.clone()))
                .collect()
        })
        .or_else(|| {
            pk.map(|t| {
                t.rows
                    .iter()
                    .map(|r| (r.policy.clone(), r.budget.clone()))
                    .collect()
            })
        })
        .or_else(|| {
            decode.map(|t| {
                t.rows
                    .iter()
                    .filter(|r| r.policy != FULL)
                    .map(|r| (r.policy.clone(), r.budget.clone()))
                    .collect()
            })
        })
        .unwrap_or_default();
    if keys.is_empty() {
        return;
    }
    let decode_context = decode.and_then(|d| d.rows.first()).map(|r| r.context);
    let _ = writeln!(
        md,
        "## Summary\n\nΔNLL and agreement: language modelling; passkey: exact match on the samples {FULL} \
         answers; tokens/s and peak KV: decoding{}.\n\n| policy | budget | ΔNLL | top-1 agreement | passkey | tokens/s | peak KV (MiB) |\n|---|---|---|---|---|---|---|",
        decode_context
            .map(|c| format!(" after {c} tokens"))
            .unwrap_or_default()
    );
    let cell = |v: Option<String>| v.unwrap_or_else(|| "—".into());
    let decode_row = |policy: &str, budget: &str| {
        decode.and_then(|d| {
            d.rows.iter().find(|r| {
                Some(r.context) == decode_context && r.policy == policy && r.budget == budget
            })
        })
    };
    let full_decode = decode_row(FULL, "—");
    let _ = writeln!(
        md,
        "| {FULL} | — | {} | {} | {} | {} | {} |",
        cell(lm.map(|_| "0".into())),
        cell(lm.map(|_| "100%".into())),
        cell(pk.map(|_| "100% (reference)".into())),
        cell(full_decode.map(|r| format!("{:.2}", r.tokens_per_second))),
        cell(full_decode.map(|r| format!("{:.1}", mib(r.peak_kv_bytes)))),
    );
    for (policy, budget) in keys {
        let l = lm.and_then(|t| {
            t.rows
                .iter()
                .find(|r| r.policy == policy && r.budget == budget)
        });
        let p = pk.and_then(|t| {
            t.rows
                .iter()
                .find(|r| r.policy == policy && r.budget == budget)
        });
        let d = decode_row(&policy, &budget);
        let _ = writeln!(
            md,
            "| {policy} | {budget} | {} | {} | {} | {} | {} |",
            cell(l.map(|r| format!("{:+.4}", r.delta_nll))),
            cell(l.map(|r| format!("{:.1}%", 100.0 * r.agreement))),
            cell(p.map(|r| format!("{:.0}% ({}/{})", 100.0 * r.accuracy, r.correct, r.total))),
            cell(d.map(|r| format!("{:.2}", r.tokens_per_second))),
            cell(d.map(|r| format!("{:.1}", mib(r.peak_kv_bytes)))),
        );
    }
}
