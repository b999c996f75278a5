//! `spectra sweep`: a grid of training runs, each in its own folder, then a summary table and the
//! paper's plot (validation accuracy or loss against the certified Lipschitz bound, one Pareto front per
//! method).
//!
//! A method names an ordinary training config; its grid gives values for config fields by name: every
//! numeric field `NAME` of the parsed config takes each value in turn (so `lr` sets every group's
//! learning rate; see [`set_field`]).

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use ron::ser::PrettyConfig;
use serde::{Deserialize, Serialize};
use spectra_core::config::{self, Invalid, Validate};

use super::config::TrainConfig;
use spectra_core::{ConfigError, Error, Result};
use spectra_models::certificate::ROBUST_RADII;

use super::metrics::{certified_at_radii, certified_columns, EvalRecord};
use super::sweep_grid::set_field;
use crate::plots::{Chart, Series, Style};

/// The sweep file.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SweepConfig {
    /// Each run goes to `output/<method>/<field=value,...>`.
    pub output: PathBuf,
    /// Runs at a time, each its own process.
    #[serde(default = "one")]
    pub parallel: usize,
    /// Replaces every run's `steps`.
    #[serde(default)]
    pub steps: Option<u64>,
    /// The y axis of the summary plot.
    #[serde(default)]
    pub plot: SweepMetric,
    pub methods: Vec<SweepMethod>,
}

fn one() -> usize {
    1
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum SweepMetric {
    #[default]
    ValAccuracy,
    ValLoss,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SweepMethod {
    /// The legend entry, e.g. "Muon + SpectralSoftCap".
    pub name: String,
    /// A training config (relative to the working folder, like the configs' own paths).
    pub config: PathBuf,
    /// Field name → values; the runs are every combination.
    #[serde(default)]
    pub grid: BTreeMap<String, Vec<f64>>,
}

impl Validate for SweepConfig {
    fn validate(&self) -> std::result::Result<(), Invalid> {
        if self.parallel == 0 {
            return Err(Invalid::new("parallel is 0")
                .near("parallel")
                .help("run 1 or more at a time"));
        }
        if self.output.as_os_str().is_empty() {
            return Err(Invalid::new(
                "output is empty: every run's folder would land in the current folder",
            )
            .near("output")
            .help("name a folder, e.g. `output: \"runs/sweep\"`"));
        }
        if self.steps == Some(0) {
            return Err(Invalid::new("steps is 0")
                .near("steps")
                .help("use 1 or more, or leave it out"));
        }
        if self.methods.is_empty() {
            return Err(Invalid::new("no methods").near("methods").help(
                "add one, e.g. `methods: [(name: \"soft cap\", config: \"experiments/fashion_mnist_softcap.ron\", grid: {\"w_max\": [2.0, 4.0]})]`",
            ));
        }
        for (i, m) in self.methods.iter().enumerate() {
            if self.methods[..i]
                .iter()
                .any(|o| slug(&o.name) == slug(&m.name))
            {
                return Err(
                    Invalid::new(format!("two methods are named like `{}`", m.name))
                        .near(m.name.clone()),
                );
            }
            if let Some((field, _)) = m.grid.iter().find(|(_, v)| v.is_empty()) {
                return Err(Invalid::new(format!(
                    "method `{}`: grid field `{field}` has no values",
                    m.name
                ))
                .near(field.clone()));
            }
        }
        Ok(())
    }
}

/// One run of the grid.
#[derive(Clone, Debug)]
pub struct PlannedRun {
    pub method: String,
    pub settings: Vec<(String, f64)>,
    pub folder: PathBuf,
    pub config_text: String,
}

/// One finished (or failed) run's results.
#[derive(Clone, Debug, Serialize)]
pub struct SweepRow {
    pub method: String,
    pub settings: String,
    pub folder: PathBuf,
    pub status: String,
    pub steps: u64,
    pub val_loss: Option<f64>,
    pub val_accuracy: Option<f64>,
    pub lipschitz_bound: Option<f64>,
    /// The paper code's formula on the same weights (not a certificate).
    pub reference_bound: Option<f64>,
    /// `(radius, fraction)`: certified robust accuracy.
    pub certified_accuracy: Vec<(f64, f64)>,
}

/// An error in method `method`'s grid, at its field `field` in the sweep file `file` (its text
/// `text`), or at the method when no field is named.
fn grid_error(
    (file, text): (&Path, &str),
    method: &SweepMethod,
    field: Option<&str>,
    message: String,
    help: Option<String>,
) -> Error {
    let anchor = format!("\"{}\"", method.name);
    let location = field
        .and_then(|f| config::locate_after(text, &anchor, &format!("\"{f}\"")))
        .or_else(|| config::locate_after(text, &anchor, &anchor));
    Error::Config(ConfigError {
        file: file.to_path_buf(),
        location,
        message: format!("method `{}`: {message}", method.name),
        help: Some(help.unwrap_or_else(|| "change the grid's values".to_string())),
    })
}

/// Every run of the sweep, with its config text (checked to parse and validate); `at` is the sweep
/// file and its text, where a grid value a run's config refuses is an error at its grid field.
pub fn plan(sweep: &SweepConfig, at: (&Path, &str)) -> Result<Vec<PlannedRun>> {
    let mut runs = Vec::new();
    for m in &sweep.methods {
        let text = std::fs::read_to_string(&m.config).map_err(|e| {
            Error::file(
                &m.config,
                format!("method `{}`: cannot read its training config: {e}", m.name),
            )
        })?;
        let base: TrainConfig = config::parse(&text, &m.config)?;
        let fields: Vec<(&String, &Vec<f64>)> = m.grid.iter().collect();
        let combinations: usize = fields.iter().map(|(_, v)| v.len()).product();
        for mut index in 0..combinations {
            let mut settings = Vec::new();
            let mut run_config = None;
            for (field, values) in &fields {
                let value = values[index % values.len()];
                index /= values.len();
                let set = set_field(run_config.as_ref().unwrap_or(&base), field, value)
                    .map_err(|msg| grid_error(at, m, Some(field), msg, None))?;
                run_config = Some(set);
                settings.push(((*field).clone(), value));
            }
            let name = if settings.is_empty() {
                "default".to_string()
            } else {
                settings
                    .iter()
                    .map(|(k, v)| format!("{k}={v}"))
                    .collect::<Vec<_>>()
                    .join(",")
            };
            let folder = sweep.output.join(slug(&m.name)).join(&name);
            let config_text = match run_config {
                Some(c) => config::ron_options()
                    .to_string_pretty(&c, PrettyConfig::default())
                    .map_err(|e| {
                        Error::file(&m.config, format!("cannot write a run's config: {e}"))
                    })?,
                None => text.clone(),
            };
            config::parse::<TrainConfig>(&config_text, &folder.join("config.ron")).map_err(
                |e| {
                    let field = settings
                        .iter()
                        .map(|(f, _)| f.as_str())
                        .find(|f| e.message.contains(f));
                    grid_error(
                        at,
                        m,
                        field,
                        format!("the run `{name}`: {}", e.message),
                        e.help,
                    )
                },
            )?;
            runs.push(PlannedRun {
                method: m.name.clone(),
                settings,
                folder,
                config_text,
            });
        }
    }
    Ok(runs)
}

fn slug(name: &str) -> String {
    let s: String = name
        .chars()
        .map(|c| {
            if c.is_alphanumeric() {
                c.to_ascii_lowercase()
            } else {
                '-'
            }
        })
        .collect();
    s.split('-')
        .filter(|p| !p.is_empty())
        .collect::<Vec<_>>()
        .join("-")
}

/// Runs the sweep read from `at` (file and text) with `exe` (the `spectra` binary), skipping runs that already finished, then writes
/// `summary.md`, `summary.csv` and `pareto.svg` into the sweep's output folder.
pub fn run(
    sweep: &SweepConfig,
    at: (&Path, &str),
    exe: &Path,
    quiet: bool,
) -> Result<Vec<SweepRow>> {
    let runs = plan(sweep, at)?;
    crate::output::prepare(&sweep.output)?;
    let _writing = crate::output::lock(&sweep.output)?;
    let todo: Vec<&PlannedRun> = runs.iter().filter(|r| !finished(&r.folder)).collect();
    if !quiet {
        println!(
            "sweep: {} runs, {} already finished, {} at a time",
            runs.len(),
            runs.len() - todo.len(),
            sweep.parallel
        );
    }
    let mut running: Vec<(Child, &PlannedRun)> = Vec::new();
    let mut queue = todo.into_iter();
    loop {
        while running.len() < sweep.parallel {
            let Some(r) = queue.next() else { break };
            running.push((start(r, exe, sweep.steps)?, r));
            if !quiet {
                println!("started  {}", r.folder.display());
            }
        }
        if running.is_empty() {
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
        let mut i = 0;
        while i < running.len() {
            match running[i].0.try_wait() {
                Ok(Some(status)) => {
                    let (_, r) = running.swap_remove(i);
                    if !quiet {
                        let how = if status.success() {
                            "finished"
                        } else if status.code() == Some(super::STOPPED_EXIT_STATUS.into()) {
                            "stopped "
                        } else {
                            "FAILED  "
                        };
                        println!(
                            "{how} {} (log: {})",
                            r.folder.display(),
                            r.folder.join("log.txt").display()
                        );
                    }
                }
                Ok(None) => i += 1,
                Err(e) => {
                    return Err(Error::file(
                        &running[i].1.folder,
                        format!("cannot wait for the run: {e}"),
                    ))
                }
            }
        }
    }
    let rows: Vec<SweepRow> = runs.iter().map(row).collect();
    write_summary(sweep, &rows)?;
    Ok(rows)
}

fn finished(folder: &Path) -> bool {
    read_summary(folder).is_some_and(|s| s.outcome == "Finished")
}

fn start(r: &PlannedRun, exe: &Path, steps: Option<u64>) -> Result<Child> {
    std::fs::create_dir_all(&r.folder)
        .map_err(|e| Error::file(&r.folder, format!("cannot create the run folder: {e}")))?;
    let config = r.folder.join("config.ron");
    std::fs::write(&config, &r.config_text).map_err(|e| Error::file(&config, e.to_string()))?;
    // A run interrupted earlier continues from its checkpoint.
    let resume = r.folder.join(super::checkpoint::FILE_NAME).exists();
    let log_path = r.folder.join("log.txt");
    let log =
        std::fs::File::create(&log_path).map_err(|e| Error::file(&log_path, e.to_string()))?;
    let err = log
        .try_clone()
        .map_err(|e| Error::file(&log_path, e.to_string()))?;
    let mut cmd = Command::new(exe);
    cmd.arg("train")
        .arg(&config)
        .arg("--output")
        .arg(&r.folder)
        .arg("--quiet");
    if resume {
        cmd.arg("--resume");
    }
    if let Some(s) = steps {
        cmd.arg("--steps").arg(s.to_string());
    }
    cmd.stdin(Stdio::null()).stdout(log).stderr(err);
    cmd.spawn()
        .map_err(|e| Error::file(exe, format!("cannot start a run: {e}")))
}

#[derive(Deserialize)]
struct SummaryFile {
    outcome: String,
    steps_done: u64,
    final_eval: Option<EvalRecord>,
}

fn read_summary(folder: &Path) -> Option<SummaryFile> {
    serde_json::from_str(&std::fs::read_to_string(folder.join("summary.json")).ok()?).ok()
}

fn row(r: &PlannedRun) -> SweepRow {
    let settings = r
        .settings
        .iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect::<Vec<_>>()
        .join(", ");
    let summary = read_summary(&r.folder);
    let eval = summary.as_ref().and_then(|s| s.final_eval.clone());
    SweepRow {
        method: r.method.clone(),
        settings,
        folder: r.folder.clone(),
        status: summary
            .as_ref()
            .map_or("failed (see log.txt)".into(), |s| s.outcome.clone()),
        steps: summary.as_ref().map_or(0, |s| s.steps_done),
        val_loss: eval.as_ref().map(|e| e.val_loss),
        val_accuracy: eval.as_ref().map(|e| e.val_accuracy),
        lipschitz_bound: eval.as_ref().map(|e| e.lipschitz_bound),
        reference_bound: eval.as_ref().and_then(|e| e.reference_bound),
        certified_accuracy: eval.map(|e| e.certified_accuracy).unwrap_or_default(),
    }
}

/// The points no other point of the method beats on both axes: lower bound and better metric.
pub fn pareto_front(points: &[(f64, f64)], higher_is_better: bool) -> Vec<(f64, f64)> {
    let mut sorted: Vec<(f64, f64)> = points
        .iter()
        .copied()
        .filter(|(x, y)| x.is_finite() && y.is_finite())
        .collect();
    sorted.sort_by(|a, b| {
        a.0.total_cmp(&b.0).then(if higher_is_better {
            b.1.total_cmp(&a.1)
        } else {
            a.1.total_cmp(&b.1)
        })
    });
    let mut front: Vec<(f64, f64)> = Vec::new();
    for p in sorted {
        let better = |q: &(f64, f64)| {
            if higher_is_better {
                p.1 > q.1
            } else {
                p.1 < q.1
            }
        };
        if front.last().is_none_or(better) {
            front.push(p);
        }
    }
    front
}

fn write_summary(sweep: &SweepConfig, rows: &[SweepRow]) -> Result<()> {
    let fmt =
        |v: Option<f64>, digits: usize| v.map_or("–".to_string(), |v| format!("{v:.digits$}"));
    let mut md = String::new();
    let _ = writeln!(md, "# Sweep summary\n");
    let radii: Vec<String> = ROBUST_RADII.iter().map(|e| e.to_string()).collect();
    let _ = writeln!(
        md,
        "| method | settings | status | steps | val loss | val accuracy | certified Lipschitz bound | published formula | certified robust accuracy at ε = {} | folder |",
        radii.join(" / ")
    );
    let _ = writeln!(md, "|---|---|---|---:|---:|---:|---:|---:|---:|---|");
    let mut csv = format!(
        "method,settings,status,steps,val_loss,val_accuracy,lipschitz_bound,reference_bound,{},folder\n",
        certified_columns().join(",")
    );
    for r in rows {
        let robust = |digits: fn(f64) -> String, empty: &str| -> Vec<String> {
            certified_at_radii(&r.certified_accuracy)
                .into_iter()
                .map(|a| a.map_or(empty.to_string(), digits))
                .collect()
        };
        let _ = writeln!(
            md,
            "| {} | {} | {} | {} | {} | {} | {} | {} | {} | {} |",
            r.method,
            r.settings,
            r.status,
            r.steps,
            fmt(r.val_loss, 4),
            r.val_accuracy
                .map_or("–".into(), |a| format!("{:.2}%", 100.0 * a)),
            fmt(r.lipschitz_bound, 4),
            fmt(r.reference_bound, 4),
            robust(|a| format!("{:.2}%", 100.0 * a), "–").join(" / "),
            r.folder.display()
        );
        let opt = |v: Option<f64>| v.map_or(String::new(), |v| v.to_string());
        let _ = writeln!(
            csv,
            "\"{}\",\"{}\",{},{},{},{},{},{},{},\"{}\"",
            r.method,
            r.settings,
            r.status,
            r.steps,
            opt(r.val_loss),
            opt(r.val_accuracy),
            opt(r.lipschitz_bound),
            opt(r.reference_bound),
            robust(|a| a.to_string(), "").join(","),
            r.folder.display()
        );
    }
    let (y_label, higher) = match sweep.plot {
        SweepMetric::ValAccuracy => ("validation accuracy", true),
        SweepMetric::ValLoss => ("validation loss", false),
    };
    let mut series = Vec::new();
    for (color, m) in sweep.methods.iter().enumerate() {
        let points: Vec<(f64, f64)> = rows
            .iter()
            .filter(|r| r.method == m.name)
            .filter_map(|r| {
                let y = if higher { r.val_accuracy } else { r.val_loss };
                Some((r.lipschitz_bound?, y?))
            })
            .collect();
        series.push(Series {
            name: String::new(),
            points: points.clone(),
            style: Style::Points,
            color,
        });
        series.push(Series {
            name: m.name.clone(),
            points: pareto_front(&points, higher),
            style: Style::LineAndPoints,
            color,
        });
    }
    let chart = Chart {
        title: format!("{y_label} against the certified Lipschitz bound (lines: Pareto fronts)"),
        x_label: "certified Lipschitz bound (log scale)".into(),
        y_label: y_label.into(),
        log_x: true,
        log_y: false,
        series,
    };
    let _ = writeln!(md, "\n![{y_label} against the Lipschitz bound](pareto.svg)");
    for (name, body) in [
        ("summary.md", md),
        ("summary.csv", csv),
        ("pareto.svg", chart.to_svg()),
    ] {
        let path = sweep.output.join(name);
        std::fs::write(&path, body)
            .map_err(|e| Error::file(&path, format!("cannot write: {e}")))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pareto_front_keeps_points_nothing_beats() {
        let pts = [(1.0, 0.5), (2.0, 0.4), (3.0, 0.7), (4.0, 0.6), (5.0, 0.8)];
        assert_eq!(
            pareto_front(&pts, true),
            vec![(1.0, 0.5), (3.0, 0.7), (5.0, 0.8)]
        );
        assert_eq!(pareto_front(&pts, false), vec![(1.0, 0.5), (2.0, 0.4)]);
    }

    #[test]
    fn slugs_are_folder_safe() {
        assert_eq!(slug("Muon + SpectralSoftCap"), "muon-spectralsoftcap");
    }
}
