//! A long task's answers as they complete, one JSON line each in a file of the output folder, so
//! that a killed run continues where it stopped: an answer already there is not asked again, and
//! more samples can be added to a finished run. The first line holds the settings the answers depend
//! on; a run with other settings is refused.

use std::collections::HashMap;
use std::fmt::Debug;
use std::io::Write;
use std::path::{Path, PathBuf};

use serde::de::DeserializeOwned;
use serde::Serialize;
use spectra_core::{Error, Result};

/// An answer as stored: where it belongs (task, sample, arm…) is its key.
pub trait Stored: Serialize + DeserializeOwned {
    fn key(&self) -> String;
}

/// The answers stored so far, and the file new ones are appended to.
pub struct Progress<A> {
    path: PathBuf,
    file: std::fs::File,
    done: HashMap<String, A>,
}

impl<A: Stored> Progress<A> {
    /// Opens `output/name`, reading the answers in it, or starts it with `settings`.
    pub fn open<S>(output: &Path, name: &str, settings: &S) -> Result<Self>
    where
        S: Serialize + DeserializeOwned + PartialEq + Debug,
    {
        let path = output.join(name);
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
                let stored: S = serde_json::from_slice(header).map_err(|e| {
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
                    match serde_json::from_slice::<A>(line) {
                        Ok(a) => {
                            done.insert(a.key(), a);
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
                        "{} answers already in {}; continuing",
                        done.len(),
                        path.display()
                    );
                }
            }
        }
        Ok(Progress { path, file, done })
    }

    /// The stored answer under `key`.
    pub fn get(&self, key: &str) -> Option<&A> {
        self.done.get(key)
    }

    /// Stores `answer`, on disk before it is counted.
    pub fn record(&mut self, answer: A) -> Result<()> {
        let line =
            serde_json::to_string(&answer).map_err(|e| Error::file(&self.path, e.to_string()))?;
        writeln!(self.file, "{line}")
            .and_then(|()| self.file.flush())
            .map_err(|e| Error::file(&self.path, format!("cannot store an answer: {e}")))?;
        self.done.insert(answer.key(), answer);
        Ok(())
    }
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
    use serde::Deserialize;

    #[derive(Debug, PartialEq, Serialize, Deserialize)]
    struct Answer {
        sample: usize,
        arm: String,
        score: f64,
    }

    impl Stored for Answer {
        fn key(&self) -> String {
            format!("{} {}", self.sample, self.arm)
        }
    }

    const NAME: &str = "answers.jsonl";

    fn answer(sample: usize, arm: &str) -> Answer {
        Answer {
            sample,
            arm: arm.into(),
            score: 100.0,
        }
    }

    #[test]
    fn answers_survive_a_restart_and_a_torn_last_line_is_asked_again() {
        let dir = tempfile::tempdir().unwrap();
        let mut p = Progress::open(dir.path(), NAME, &"settings".to_string()).unwrap();
        p.record(answer(0, "Full")).unwrap();
        p.record(answer(1, "Full")).unwrap();
        drop(p);
        let path = dir.path().join(NAME);
        let mut text = std::fs::read_to_string(&path).unwrap();
        text.push_str("{\"sample\": 2, \"arm");
        std::fs::write(&path, text).unwrap();
        let p: Progress<Answer> =
            Progress::open(dir.path(), NAME, &"settings".to_string()).unwrap();
        assert_eq!(p.get("1 Full"), Some(&answer(1, "Full")));
        assert!(p.get("2 Full").is_none());
        assert!(p.get("0 SnapKv").is_none());
    }

    #[test]
    fn other_settings_are_refused_naming_the_file() {
        let dir = tempfile::tempdir().unwrap();
        Progress::<Answer>::open(dir.path(), NAME, &"seed 0".to_string()).unwrap();
        let err = Progress::<Answer>::open(dir.path(), NAME, &"seed 1".to_string())
            .err()
            .unwrap()
            .to_string();
        assert!(
            err.contains(NAME) && err.contains("other settings"),
            "{err}"
        );
        assert!(err.contains("another --output"), "{err}");
    }
}
