//! A RULER run's answers as they complete, one JSON line each in the output folder's
//! `ruler-answers.jsonl`, so that a killed run continues where it stopped: an answer already there
//! is not asked again, and more samples can be added to a finished run. The first line holds the
//! settings the answers depend on; a run with other settings is refused.

use std::collections::HashMap;
use std::io::Write;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use spectra_core::{Error, Result};

use super::{PromptFormat, RulerAnswer};

pub const FILE_NAME: &str = "ruler-answers.jsonl";

/// What every stored answer depends on besides its task, length, sample and arm.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Settings {
    pub model: String,
    pub seed: u64,
    pub format: PromptFormat,
    pub query_aware: bool,
    pub max_new_tokens: Option<usize>,
}

/// Where an answer belongs: length, task, sample and arm.
type Key = (usize, String, usize, String);

/// The answers stored so far, and the file new ones are appended to.
pub struct Progress {
    path: PathBuf,
    file: std::fs::File,
    done: HashMap<Key, RulerAnswer>,
}

impl Progress {
    /// Opens `output/ruler-answers.jsonl`, reading the answers in it, or starts it with `settings`.
    pub fn open(output: &Path, settings: &Settings) -> Result<Self> {
        let path = output.join(FILE_NAME);
        let io = |e: std::io::Error| Error::file(&path, e.to_string());
        std::fs::create_dir_all(output).map_err(io)?;
        let mut done = HashMap::new();
        let existing = match std::fs::read(&path) {
            Ok(bytes) => Some(bytes),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
            Err(e) => return Err(io(e)),
        };
        let mut file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path)
            .map_err(io)?;
        match existing.filter(|b| !b.is_empty()) {
            None => {
                let header = serde_json::to_string(settings)
                    .map_err(|e| Error::file(&path, e.to_string()))?;
                writeln!(file, "{header}").map_err(io)?;
            }
            Some(bytes) => {
                let mut lines = bytes.split(|&b| b == b'\n');
                let header = lines.next().unwrap_or_default();
                let stored: Settings = serde_json::from_slice(header).map_err(|e| {
                    Error::file(
                        &path,
                        format!("line 1 is not the run's settings ({e}); {}", afresh(&path)),
                    )
                })?;
                if stored != *settings {
                    return Err(Error::file(
                        &path,
                        format!(
                            "holds answers given with other settings ({stored:?}; this run: \
                             {settings:?}); {}",
                            afresh(&path)
                        ),
                    ));
                }
                for (i, line) in lines.enumerate() {
                    if line.is_empty() {
                        continue;
                    }
                    match serde_json::from_slice::<RulerAnswer>(line) {
                        Ok(a) => {
                            done.insert(key(&a), a);
                        }
                        // A run killed mid-write leaves a torn last line: that answer is asked again.
                        Err(e) => eprintln!(
                            "{}:{}: skipped, not an answer ({e}); it is asked again",
                            path.display(),
                            i + 2
                        ),
                    }
                }
                if !done.is_empty() {
                    eprintln!(
                        "ruler: {} answers already in {}; continuing",
                        done.len(),
                        path.display()
                    );
                }
            }
        }
        Ok(Progress { path, file, done })
    }

    /// The stored answer of `arm` to `sample` of `task` at `length`.
    pub fn get(&self, length: usize, task: &str, sample: usize, arm: &str) -> Option<&RulerAnswer> {
        self.done
            .get(&(length, task.to_string(), sample, arm.to_string()))
    }

    /// Stores `answer`, on disk before it is counted.
    pub fn record(&mut self, answer: RulerAnswer) -> Result<()> {
        let line =
            serde_json::to_string(&answer).map_err(|e| Error::file(&self.path, e.to_string()))?;
        writeln!(self.file, "{line}")
            .and_then(|()| self.file.flush())
            .map_err(|e| Error::file(&self.path, format!("cannot store an answer: {e}")))?;
        self.done.insert(key(&answer), answer);
        Ok(())
    }
}

fn key(a: &RulerAnswer) -> Key {
    (a.length, a.task.clone(), a.sample, a.arm.clone())
}

fn afresh(path: &Path) -> String {
    format!(
        "run with another --output, or move {} away to start afresh",
        path.display()
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings() -> Settings {
        Settings {
            model: "m.gguf".into(),
            seed: 0,
            format: PromptFormat::ChatMl,
            query_aware: false,
            max_new_tokens: Some(64),
        }
    }

    fn answer(sample: usize, arm: &str) -> RulerAnswer {
        RulerAnswer {
            length: 4096,
            task: "vt".into(),
            sample,
            arm: arm.into(),
            policy: arm.into(),
            budget: "—".into(),
            answer: "x y".into(),
            references: vec!["x".into()],
            score: 100.0,
            peak_kv_bytes: 7,
            compressed_tokens: 3000,
        }
    }

    #[test]
    fn answers_survive_a_restart_and_a_torn_last_line_is_asked_again() {
        let dir = tempfile::tempdir().unwrap();
        let mut p = Progress::open(dir.path(), &settings()).unwrap();
        p.record(answer(0, "Full")).unwrap();
        p.record(answer(1, "Full")).unwrap();
        drop(p);
        let path = dir.path().join(FILE_NAME);
        let mut text = std::fs::read_to_string(&path).unwrap();
        text.push_str("{\"length\": 40");
        std::fs::write(&path, text).unwrap();
        let p = Progress::open(dir.path(), &settings()).unwrap();
        assert_eq!(p.get(4096, "vt", 1, "Full").unwrap().score, 100.0);
        assert!(p.get(4096, "vt", 2, "Full").is_none());
        assert!(p.get(4096, "vt", 0, "SnapKv").is_none());
    }

    #[test]
    fn other_settings_are_refused_naming_the_file() {
        let dir = tempfile::tempdir().unwrap();
        Progress::open(dir.path(), &settings()).unwrap();
        let other = Settings {
            seed: 1,
            ..settings()
        };
        let err = Progress::open(dir.path(), &other)
            .err()
            .unwrap()
            .to_string();
        assert!(
            err.contains(FILE_NAME) && err.contains("other settings"),
            "{err}"
        );
        assert!(err.contains("another --output"), "{err}");
    }
}
