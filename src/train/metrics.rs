//! Metrics: every record as a JSON line in `metrics.jsonl`, and the same as two CSV tables,
//! `train.csv` (one row per step) and `eval.csv` (one row per evaluation).

use std::fs::{File, OpenOptions};
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use spectra_core::{Error, Result};
use spectra_models::certificate::ROBUST_RADII;

/// One optimizer step. `step` counts completed steps (the first step's record has step 1).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct TrainRecord {
    pub step: u64,
    pub loss: f64,
    /// Top-1 accuracy on the step's batch, from the forward pass before the update.
    pub accuracy: f64,
    pub lr_factor: f64,
    pub step_seconds: f64,
    /// Time spent in the weight constraints, part of `step_seconds`.
    pub constraint_seconds: f64,
    pub targets_per_second: f64,
}

/// One evaluation on the validation data, with the certificate of the weights at that step.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct EvalRecord {
    pub step: u64,
    pub val_loss: f64,
    pub val_accuracy: f64,
    /// Targets scored (characters or images).
    pub val_targets: u64,
    pub lipschitz_bound: f64,
    pub body_bound: f64,
    /// The paper code's formula on the same weights: a published figure to compare with, not a
    /// certificate. Absent from records written before it was kept.
    #[serde(default)]
    pub reference_bound: Option<f64>,
    /// `(radius ε, fraction of validation targets)` predicted correctly with a logit margin that no
    /// body-input perturbation of norm ≤ ε can overturn (`Certificate::robust_margins`).
    #[serde(default)]
    pub certified_accuracy: Vec<(f64, f64)>,
    /// `(parameter, RMS→RMS norm)`, the embedding's entry its largest column RMS.
    pub norms: Vec<(String, f64)>,
}

/// The CSV column names of certified robust accuracy, one per radius of [`ROBUST_RADII`].
pub fn certified_columns() -> Vec<String> {
    ROBUST_RADII
        .iter()
        .map(|eps| format!("certified_accuracy@{eps}"))
        .collect()
}

/// Certified robust accuracy at each radius of [`ROBUST_RADII`], `None` where `certified` (from an
/// older record) has none.
pub fn certified_at_radii(certified: &[(f64, f64)]) -> Vec<Option<f64>> {
    ROBUST_RADII
        .iter()
        .map(|eps| certified.iter().find(|(e, _)| e == eps).map(|(_, a)| *a))
        .collect()
}

impl EvalRecord {
    /// `, certified robust accuracy A% / B% at ε = a / b (the paper's formula gives X)`, from what the
    /// record has.
    pub fn certified_summary(&self) -> String {
        let mut s = String::new();
        if !self.certified_accuracy.is_empty() {
            let (radii, acc): (Vec<String>, Vec<String>) = self
                .certified_accuracy
                .iter()
                .map(|(eps, a)| (eps.to_string(), format!("{:.2}%", 100.0 * a)))
                .unzip();
            s += &format!(
                ", certified robust accuracy {} at ε = {}",
                acc.join(" / "),
                radii.join(" / ")
            );
        }
        if let Some(r) = self.reference_bound {
            s += &format!(" (the paper's formula gives {r:.4})");
        }
        s
    }
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "lowercase")]
pub enum Record {
    Train(TrainRecord),
    Eval(EvalRecord),
}

impl Record {
    fn step(&self) -> u64 {
        match self {
            Record::Train(r) => r.step,
            Record::Eval(r) => r.step,
        }
    }
}

const TRAIN_HEADER: &str =
    "step,loss,accuracy,lr_factor,step_seconds,constraint_seconds,targets_per_second";

/// Appends records to the three files.
pub struct MetricsWriter {
    dir: PathBuf,
    jsonl: BufWriter<File>,
    train_csv: BufWriter<File>,
    eval_csv: BufWriter<File>,
    norm_names: Option<Vec<String>>,
}

impl MetricsWriter {
    /// Starts afresh, or (resuming) keeps the records up to `keep_until` and continues after them;
    /// records a stopped run wrote after its last checkpoint are dropped, as the resumed run redoes them.
    pub fn open(dir: &Path, keep_until: Option<u64>) -> Result<(Self, Vec<Record>)> {
        let kept: Vec<Record> = match keep_until {
            Some(step) => read(dir)?
                .into_iter()
                .filter(|r| r.step() <= step)
                .collect(),
            None => Vec::new(),
        };
        // The tables are rewritten from the records: with the records gone, that would empty them.
        let rows = table_rows(&dir.join("train.csv"));
        if keep_until.is_some_and(|step| step > 0) && kept.is_empty() && rows > 0 {
            return Err(Error::file(
                dir.join("metrics.jsonl"),
                format!(
                    "is missing or holds no records up to the checkpoint, while train.csv holds \
                     {rows} rows that resuming would discard; restore metrics.jsonl, or move \
                     train.csv and eval.csv out of the folder to resume without that history"
                ),
            ));
        }
        let create = |name: &str| -> Result<BufWriter<File>> {
            let path = dir.join(name);
            let f = OpenOptions::new()
                .create(true)
                .write(true)
                .truncate(true)
                .open(&path)
                .map_err(|e| Error::file(&path, format!("cannot write metrics: {e}")))?;
            Ok(BufWriter::new(f))
        };
        let mut w = MetricsWriter {
            dir: dir.to_path_buf(),
            jsonl: create("metrics.jsonl")?,
            train_csv: create("train.csv")?,
            eval_csv: create("eval.csv")?,
            norm_names: None,
        };
        writeln!(w.train_csv, "{TRAIN_HEADER}").map_err(|e| w.io(e))?;
        for r in &kept {
            w.write_record(r)?;
        }
        w.flush()?;
        Ok((w, kept))
    }

    fn io(&self, e: std::io::Error) -> Error {
        Error::file(&self.dir, format!("cannot write metrics: {e}"))
    }

    /// Writes and flushes, so that a long run can be followed (and survives a kill) line by line.
    pub fn write(&mut self, record: &Record) -> Result<()> {
        self.write_record(record)?;
        self.flush()
    }

    fn write_record(&mut self, record: &Record) -> Result<()> {
        let line =
            serde_json::to_string(record).map_err(|e| Error::invalid("metrics", e.to_string()))?;
        writeln!(self.jsonl, "{line}").map_err(|e| self.io(e))?;
        match record {
            Record::Train(r) => writeln!(
                self.train_csv,
                "{},{},{},{},{},{},{}",
                r.step,
                r.loss,
                r.accuracy,
                r.lr_factor,
                r.step_seconds,
                r.constraint_seconds,
                r.targets_per_second
            )
            .map_err(|e| self.io(e)),
            Record::Eval(r) => {
                if self.norm_names.is_none() {
                    let names: Vec<String> = r.norms.iter().map(|(n, _)| n.clone()).collect();
                    let header = format!(
                        "step,val_loss,val_accuracy,val_targets,lipschitz_bound,body_bound,reference_bound,{},{}",
                        certified_columns().join(","),
                        names
                            .iter()
                            .map(|n| format!("norm:{n}"))
                            .collect::<Vec<_>>()
                            .join(",")
                    );
                    writeln!(self.eval_csv, "{header}").map_err(|e| self.io(e))?;
                    self.norm_names = Some(names);
                }
                let norms: Vec<String> = r.norms.iter().map(|(_, v)| v.to_string()).collect();
                // One column per radius, empty where a record (from an older run) has none.
                let robust: Vec<String> = certified_at_radii(&r.certified_accuracy)
                    .into_iter()
                    .map(|a| a.map_or(String::new(), |a| a.to_string()))
                    .collect();
                let reference = r.reference_bound.map_or(String::new(), |b| b.to_string());
                writeln!(
                    self.eval_csv,
                    "{},{},{},{},{},{},{},{},{}",
                    r.step,
                    r.val_loss,
                    r.val_accuracy,
                    r.val_targets,
                    r.lipschitz_bound,
                    r.body_bound,
                    reference,
                    robust.join(","),
                    norms.join(",")
                )
                .map_err(|e| self.io(e))
            }
        }
    }

    pub fn flush(&mut self) -> Result<()> {
        for f in [&mut self.jsonl, &mut self.train_csv, &mut self.eval_csv] {
            f.flush()
                .map_err(|e| Error::file(&self.dir, format!("cannot write metrics: {e}")))?;
        }
        Ok(())
    }
}

/// The data rows of a CSV table (none when it cannot be read).
fn table_rows(path: &Path) -> usize {
    std::fs::read_to_string(path).map_or(0, |t| {
        t.lines()
            .filter(|l| !l.trim().is_empty())
            .count()
            .saturating_sub(1)
    })
}

/// The records of `dir/metrics.jsonl` (none when the file does not exist).
pub fn read(dir: &Path) -> Result<Vec<Record>> {
    let path = dir.join("metrics.jsonl");
    let bytes = match std::fs::read(&path) {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(Error::file(&path, format!("cannot read metrics: {e}"))),
    };
    // Line by line, so that bytes that are not UTF-8 lose only their line.
    let lines: Vec<&[u8]> = bytes.split(|&b| b == b'\n').collect();
    let last = lines.iter().rposition(|l| !l.trim_ascii().is_empty());
    let mut out = Vec::new();
    let mut seen = std::collections::HashSet::new();
    let mut skipped = 0;
    for (i, line) in lines.iter().enumerate() {
        let line = line.trim_ascii();
        if line.is_empty() {
            continue;
        }
        // A line written twice (a copy, a merge) is one record, not two rows.
        if !seen.insert(line) {
            skipped += 1;
            eprintln!(
                "spectra: {}:{}: ignoring a repeated line",
                path.display(),
                i + 1
            );
            continue;
        }
        match serde_json::from_slice(line) {
            Ok(r) => out.push(r),
            Err(e) => {
                skipped += 1;
                // A run killed mid-write leaves a torn last line; a damaged line elsewhere loses
                // only itself.
                let what = if Some(i) == last {
                    "a torn last line (a run stopped while writing it)"
                } else {
                    "an unreadable line"
                };
                eprintln!(
                    "spectra: {}:{}: ignoring {what}: {e}",
                    path.display(),
                    i + 1
                );
            }
        }
    }
    if skipped > 0 {
        eprintln!(
            "spectra: {}: kept {} records, ignored {skipped} line{}",
            path.display(),
            out.len(),
            if skipped == 1 { "" } else { "s" }
        );
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn train(step: u64) -> Record {
        Record::Train(TrainRecord {
            step,
            loss: 1.5,
            accuracy: 0.25,
            lr_factor: 1.0,
            step_seconds: 0.1,
            constraint_seconds: 0.01,
            targets_per_second: 100.0,
        })
    }

    #[test]
    fn a_damaged_line_loses_only_itself_and_a_torn_last_line_is_dropped() {
        let dir = tempfile::tempdir().unwrap();
        let line = |step| serde_json::to_string(&train(step)).unwrap();
        let mut text: Vec<String> = (1..=5).map(line).collect();
        text.push("{\"kind\":\"train\",\"step\":6,\"lo".into());
        text.extend((7..=10).map(line));
        text.push(String::new());
        text.push(line(11)[..20].to_string());
        std::fs::write(dir.path().join("metrics.jsonl"), text.join("\n")).unwrap();
        let steps: Vec<u64> = read(dir.path()).unwrap().iter().map(Record::step).collect();
        assert_eq!(steps, [1, 2, 3, 4, 5, 7, 8, 9, 10]);
    }

    /// Resuming with the records gone (metrics.jsonl deleted or emptied) is refused while the tables
    /// hold rows, which it would have discarded; the tables are left as they were.
    #[test]
    fn resuming_without_the_records_is_refused_while_the_tables_hold_rows() {
        let dir = tempfile::tempdir().unwrap();
        let (mut w, _) = MetricsWriter::open(dir.path(), None).unwrap();
        for s in 1..=3 {
            w.write(&train(s)).unwrap();
        }
        drop(w);
        let csv = std::fs::read_to_string(dir.path().join("train.csv")).unwrap();
        std::fs::write(dir.path().join("metrics.jsonl"), "").unwrap();
        let err = MetricsWriter::open(dir.path(), Some(3))
            .err()
            .unwrap()
            .to_string();
        assert!(err.contains("train.csv holds 3 rows"), "{err}");
        assert_eq!(
            std::fs::read_to_string(dir.path().join("train.csv")).unwrap(),
            csv
        );
        std::fs::remove_file(dir.path().join("metrics.jsonl")).unwrap();
        assert!(MetricsWriter::open(dir.path(), Some(3)).is_err());
        // Moving the tables aside, as the message says, resumes.
        std::fs::remove_file(dir.path().join("train.csv")).unwrap();
        assert!(MetricsWriter::open(dir.path(), Some(3)).is_ok());
    }

    /// Bytes that are not UTF-8 lose only their line (they refused the whole resume, without a line
    /// number), and a line written twice is one record (it was kept twice).
    #[test]
    fn a_line_that_is_not_utf8_loses_only_itself_and_a_repeated_line_counts_once() {
        let dir = tempfile::tempdir().unwrap();
        let line = |step| serde_json::to_string(&train(step)).unwrap().into_bytes();
        let mut text = Vec::new();
        for part in [line(1), vec![0xFF, 0xFE, b'{'], line(2), line(2), line(3)] {
            text.extend(part);
            text.push(b'\n');
        }
        std::fs::write(dir.path().join("metrics.jsonl"), text).unwrap();
        let steps: Vec<u64> = read(dir.path()).unwrap().iter().map(Record::step).collect();
        assert_eq!(steps, [1, 2, 3]);
    }

    #[test]
    fn resuming_drops_records_after_the_checkpoint() {
        let dir = tempfile::tempdir().unwrap();
        let (mut w, _) = MetricsWriter::open(dir.path(), None).unwrap();
        for s in 1..=5 {
            w.write(&train(s)).unwrap();
        }
        w.write(&Record::Eval(EvalRecord {
            step: 5,
            val_loss: 2.0,
            val_accuracy: 0.5,
            val_targets: 10,
            lipschitz_bound: 3.0,
            body_bound: 3.0,
            reference_bound: Some(2.0),
            certified_accuracy: vec![(0.01, 0.25)],
            norms: vec![("w".into(), 1.5)],
        }))
        .unwrap();
        drop(w);
        let (_, kept) = MetricsWriter::open(dir.path(), Some(3)).unwrap();
        assert_eq!(kept, vec![train(1), train(2), train(3)]);
        assert_eq!(read(dir.path()).unwrap().len(), 3);
        let csv = std::fs::read_to_string(dir.path().join("train.csv")).unwrap();
        assert_eq!(csv.lines().count(), 4, "{csv}");
    }
}
