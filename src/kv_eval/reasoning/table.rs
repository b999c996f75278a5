//! The reasoning task's table in `report.md` and its chart: accuracy against the budget per policy.

use std::fmt::Write;

use super::ReasoningResult;
use crate::units::mib;

/// The Markdown section for one problem set.
pub fn markdown(md: &mut String, r: &ReasoningResult) {
    let _ = writeln!(
        md,
        "\n## Reasoning under decode-time compression: {}\n\n{} problems, chain of thought in the \
         model's chat template, greedy, at most {} tokens, {} sequences at a time; the cache is bounded \
         while the answer is written. Accuracy with its 95% interval (percentile bootstrap over the \
         problems); cut: answers that reached the token limit unfinished; tokens/s: generated tokens \
         per second of this run's part (— where every answer was stored by an earlier run).\n\n\
         | policy | budget | accuracy (%) | correct | mean tokens | cut | tokens/s | peak KV (MiB) |\n\
         |---|---|---|---|---|---|---|---|",
        r.set,
        r.problems,
        r.max_new_tokens,
        r.batch
    );
    for row in &r.rows {
        let interval = row
            .interval
            .map_or(String::new(), |[lo, hi]| format!(" ({lo:.1}–{hi:.1})"));
        let _ = writeln!(
            md,
            "| {} | {} | {:.1}{interval} | {}/{} | {:.0} | {} | {} | {:.1} |",
            row.policy,
            row.budget,
            row.accuracy,
            row.correct,
            r.problems,
            row.mean_tokens,
            row.cut,
            row.tokens_per_second
                .map_or("—".into(), |t| format!("{t:.1}")),
            mib(row.peak_kv_bytes)
        );
    }
}

/// (policy, entries kept per head, accuracy) of the rows whose budget is a number of entries.
pub fn points(r: &ReasoningResult) -> impl Iterator<Item = (&str, f64, f64)> {
    r.rows.iter().filter_map(|row| {
        let tokens: f64 = row.budget.parse().ok()?;
        Some((row.policy.as_str(), tokens, row.accuracy))
    })
}
