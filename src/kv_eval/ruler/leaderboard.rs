//! The suite's tables: a leaderboard (each policy's average score at each budget, best first) and
//! every policy × budget's score per task, with the KV memory it held.

use std::fmt::Write;

use super::{RulerResult, RulerRow, PASS};
use crate::kv_eval::FULL;
use crate::units::mib;

fn score(v: Option<f64>) -> String {
    v.map_or("—".into(), |v| format!("{v:.1}"))
}

/// A score and its 95% interval, `72.3 (64.0–80.1)`.
fn with_interval(v: Option<f64>, interval: Option<[f64; 2]>, digits: usize) -> String {
    match (v, interval) {
        (Some(v), Some([lo, hi])) => format!("{v:.digits$} ({lo:.digits$}–{hi:.digits$})"),
        (v, _) => v.map_or("—".into(), |v| format!("{v:.digits$}")),
    }
}

/// A budget's column heading: kvpress's compression ratio where the budget is a ratio.
fn heading(row: &RulerRow) -> String {
    match row.compression {
        // Rounded: 1 − 0.7 is 0.30000000000000004 in binary.
        Some(c) => format!("compression {}", (c * 1e6).round() / 1e6),
        None => format!("budget {}", row.budget),
    }
}

/// The Markdown section for one result.
pub fn markdown(md: &mut String, r: &RulerResult) {
    let protocol = if r.query_aware {
        "**query-aware** (the question compressed with the context)"
    } else {
        "question-agnostic (the context compressed before the question is seen)"
    };
    let _ = writeln!(
        md,
        "\n## RULER-style suite, {} tokens, {protocol}\n\n{} sample(s) per task, {:?} prompts; {:.0} \
         tokens compressed on average. Scores are RULER's (the share of the expected strings in the \
         answer, %). Averages are over the tasks {FULL} scores at least {PASS} on: {}.\n",
        r.length,
        r.samples,
        r.format,
        r.compressed_tokens,
        used_tasks(r)
    );
    let budgets: Vec<String> = distinct(r.rows.iter().map(heading));
    type Cell = (Option<f64>, Option<[f64; 2]>);
    let mut policies: Vec<(String, Vec<Cell>, Option<f64>)> =
        distinct(r.rows.iter().map(|row| row.policy.clone()))
            .into_iter()
            .map(|policy| {
                let cells: Vec<Cell> = budgets
                    .iter()
                    .map(|b| {
                        r.rows
                            .iter()
                            .find(|row| row.policy == policy && heading(row) == *b)
                            .map_or((None, None), |row| (row.average, row.average_interval))
                    })
                    .collect();
                let known: Vec<f64> = cells.iter().filter_map(|c| c.0).collect();
                let mean =
                    (!known.is_empty()).then(|| known.iter().sum::<f64>() / known.len() as f64);
                (policy, cells, mean)
            })
            .collect();
    // Best first; a policy with no average (no task passed) last.
    policies.sort_by(|a, b| {
        let key = |m: Option<f64>| m.unwrap_or(f64::NEG_INFINITY);
        key(b.2).total_cmp(&key(a.2))
    });
    let _ = writeln!(
        md,
        "### Leaderboard\n\n| rank | policy | {} | mean | behind the best |\n|---|---|{}---|---|",
        budgets.join(" | "),
        "---|".repeat(budgets.len())
    );
    let full = with_interval(r.full.average, r.full.average_interval, 1);
    let _ = writeln!(
        md,
        "| | {FULL} (no compression) | {} | {} | |",
        vec![full; budgets.len()].join(" | "),
        score(r.full.average)
    );
    let best = policies.first().and_then(|p| p.2);
    for (i, (policy, cells, mean)) in policies.iter().enumerate() {
        let cells: Vec<String> = cells.iter().map(|c| with_interval(c.0, c.1, 1)).collect();
        let behind = match (best, mean) {
            (Some(b), Some(m)) if i > 0 => format!("{:.1}", b - m),
            _ => String::new(),
        };
        let _ = writeln!(
            md,
            "| {} | {policy} | {} | {} | {behind} |",
            i + 1,
            cells.join(" | "),
            score(*mean)
        );
    }
    let _ = writeln!(
        md,
        "\n### Per task\n\nPeak KV: the largest cache allocation while answering (compressed context, \
         question and answer), all layers; KVzip's re-read, on a copy of the prefilled cache, is not \
         counted.\n\n| policy | budget | {} | average | peak KV (MiB) |\n|---|---|{}---|---|",
        r.tasks.join(" | "),
        "---|".repeat(r.tasks.len())
    );
    for row in std::iter::once(&r.full).chain(&r.rows) {
        let scores: Vec<String> = row
            .scores
            .iter()
            .zip(&row.intervals)
            .zip(&r.used)
            .map(|((s, i), used)| match (s, used) {
                (Some(_), true) => with_interval(*s, *i, 0),
                (Some(s), false) => format!("({s:.0})"),
                (None, _) => "—".into(),
            })
            .collect();
        let _ = writeln!(
            md,
            "| {} | {} | {} | {} | {:.1} |",
            row.policy,
            row.budget,
            scores.join(" | "),
            with_interval(row.average, row.average_interval, 1),
            mib(row.peak_kv_bytes)
        );
    }
    let _ = writeln!(
        md,
        "\nAfter each score, its 95% interval (percentile bootstrap over the samples, 2,000 \
         resamples; an average's resamples each task's samples). In parentheses alone: {FULL}'s score \
         on a task it fails (under {PASS}); the policies are not run there (—) and the task is left \
         out of the averages."
    );
}

fn used_tasks(r: &RulerResult) -> String {
    let used: Vec<&str> = r
        .tasks
        .iter()
        .zip(&r.used)
        .filter(|(_, u)| **u)
        .map(|(t, _)| t.as_str())
        .collect();
    if used.is_empty() {
        "none".into()
    } else {
        used.join(", ")
    }
}

fn distinct(items: impl Iterator<Item = String>) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    for item in items {
        if !out.contains(&item) {
            out.push(item);
        }
    }
    out
}

/// (policy, x, average) for the chart: x is the compression ratio where every budget is a ratio,
/// else the entries kept per head.
pub fn points(r: &RulerResult) -> (bool, Vec<(&str, f64, f64)>) {
    let ratios = r.rows.iter().all(|row| row.compression.is_some());
    let points = r
        .rows
        .iter()
        .filter_map(|row| {
            let x = if ratios {
                row.compression?
            } else {
                row.budget_tokens
            };
            Some((row.policy.as_str(), x, row.average?))
        })
        .collect();
    (ratios, points)
}
