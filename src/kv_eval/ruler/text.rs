//! The suite's source text: essays for the haystacks, English words for keys and word lists, and
//! the QA sets, read from the folder `scripts/get-ruler-data.sh` fills.

use std::collections::HashSet;
use std::path::Path;

use spectra_core::{Error, Result};

use super::qa::QaSet;

/// Essays and words, as the generators use them.
pub struct RulerText {
    /// The essays of NVIDIA's `PaulGrahamEssays.json`, split at whitespace as RULER splits them.
    pub essay_words: Vec<String>,
    /// Lower-case single words: adjectives, then nouns (for `adjective-noun` keys).
    pub adjectives: Vec<String>,
    pub nouns: Vec<String>,
    /// Nouns, adjectives and verbs together, each once, sorted (the common-words pool).
    pub vocabulary: Vec<String>,
    /// qa_1's and qa_2's questions and documents, where their files are there.
    pub squad: Option<QaSet>,
    pub hotpot: Option<QaSet>,
}

/// The fewest adjectives and nouns the key pairs are drawn from.
const MIN_WORDS: usize = 10;

const HOW_TO_GET: &str =
    "scripts/get-ruler-data.sh downloads the essays, QA sets and word lists into data/kv/ruler";

impl RulerText {
    /// Reads `dir/json/PaulGrahamEssays.json`, `dir/words/{adjective,noun,verb,profanity}list.txt`
    /// and, where asked for (`squad` for qa_1, `hotpot` for qa_2) and there,
    /// `dir/json/{squad,hotpotqa}.json` (46 MB of JSON for HotpotQA, not read for a suite without
    /// qa_2).
    pub fn read(dir: &Path, squad: bool, hotpot: bool) -> Result<Self> {
        let essays = dir.join("json/PaulGrahamEssays.json");
        let json: serde_json::Value = serde_json::from_str(&read_lossy(&essays)?)
            .map_err(|e| Error::file(&essays, format!("not JSON ({e}); {HOW_TO_GET}")))?;
        let text = json["text"]
            .as_str()
            .ok_or_else(|| Error::file(&essays, format!("has no `text` string; {HOW_TO_GET}")))?;
        let essay_words: Vec<String> = clean(text).split_whitespace().map(str::to_string).collect();
        if essay_words.is_empty() {
            return Err(Error::file(
                &essays,
                format!("holds no essays; {HOW_TO_GET}"),
            ));
        }
        let words = dir.join("words");
        let profane: HashSet<String> = word_list(&words.join("profanitylist.txt"))?
            .into_iter()
            .collect();
        let list = |name: &str| -> Result<Vec<String>> {
            let mut seen = HashSet::new();
            Ok(word_list(&words.join(name))?
                .into_iter()
                .filter(|w| w.bytes().all(|b| b.is_ascii_lowercase()))
                .filter(|w| !profane.contains(w) && seen.insert(w.clone()))
                .collect())
        };
        let adjectives = list("adjectivelist.txt")?;
        let nouns = list("nounlist.txt")?;
        let verbs = list("verblist.txt")?;
        // Keys are distinct `adjective-noun` pairs drawn at random, and a list of needles needs many.
        for (name, kept) in [("adjectivelist", &adjectives), ("nounlist", &nouns)] {
            if kept.len() < MIN_WORDS {
                return Err(Error::file(
                    words.join(format!("{name}.txt")),
                    format!(
                        "holds {} plain lower-case words; the suite needs at least {MIN_WORDS}; {HOW_TO_GET}",
                        kept.len()
                    ),
                ));
            }
        }
        let mut vocabulary: Vec<String> = nouns
            .iter()
            .chain(&adjectives)
            .chain(&verbs)
            .cloned()
            .collect();
        vocabulary.sort();
        vocabulary.dedup();
        let qa = |wanted: bool, name: &str, read: fn(&Path) -> Result<QaSet>| {
            let path = dir.join("json").join(name);
            (wanted && path.exists()).then(|| read(&path)).transpose()
        };
        Ok(RulerText {
            essay_words,
            adjectives,
            nouns,
            vocabulary,
            squad: qa(squad, "squad.json", QaSet::squad)?,
            hotpot: qa(hotpot, "hotpotqa.json", QaSet::hotpot)?,
        })
    }
}

/// A file's text; bytes that are not UTF-8 are replaced rather than refused (the essays are old
/// web pages).
fn read_lossy(path: &Path) -> Result<String> {
    let bytes = std::fs::read(path)
        .map_err(|e| Error::file(path, format!("cannot read ({e}); {HOW_TO_GET}")))?;
    Ok(String::from_utf8_lossy(&bytes).into_owned())
}

fn word_list(path: &Path) -> Result<Vec<String>> {
    Ok(read_lossy(path)?
        .lines()
        .map(|l| l.trim().to_string())
        .filter(|l| !l.is_empty())
        .collect())
}

/// The essays carry a few Windows-1252 punctuation marks decoded as C1 controls: made the marks
/// they stand for (RULER keeps the controls, which tokenize as noise).
fn clean(text: &str) -> String {
    text.chars()
        .map(|c| match c {
            '\u{0097}' => '—',
            '\u{0092}' => '\'',
            '\u{00a0}' => ' ',
            c => c,
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn words_are_plain_lower_case_and_not_profane() {
        let dir = tempfile::tempdir().unwrap();
        let json = dir.path().join("json");
        let words = dir.path().join("words");
        std::fs::create_dir_all(&json).unwrap();
        std::fs::create_dir_all(&words).unwrap();
        std::fs::write(
            json.join("PaulGrahamEssays.json"),
            r#"{"text": "First\u0097one\n\nhere second  essay"}"#,
        )
        .unwrap();
        let ten = |first: &str| {
            format!(
                "{first}\n{}",
                "abcdefghi"
                    .chars()
                    .map(|c| format!("{c}{c}\n"))
                    .collect::<String>()
            )
        };
        std::fs::write(words.join("adjectivelist.txt"), ten("quick\nbad\nquick")).unwrap();
        std::fs::write(words.join("nounlist.txt"), ten("fox\nATM\nice cream\nbad")).unwrap();
        std::fs::write(words.join("verblist.txt"), "jump\n").unwrap();
        std::fs::write(words.join("profanitylist.txt"), "bad\n").unwrap();
        let text = RulerText::read(dir.path(), true, false).unwrap();
        assert_eq!(text.essay_words, ["First—one", "here", "second", "essay"]);
        assert_eq!(text.adjectives[..2], ["quick", "aa"]);
        assert_eq!(text.adjectives.len(), 10);
        assert_eq!(text.nouns[..2], ["fox", "aa"]);
        // aa–ii, fox, jump and quick, each once, sorted.
        assert_eq!(text.vocabulary.len(), 12);
        assert!(text.vocabulary.windows(2).all(|w| w[0] < w[1]));
        assert_eq!(text.vocabulary[9..], ["ii", "jump", "quick"]);
        assert!(text.squad.is_none() && text.hotpot.is_none());
        std::fs::write(words.join("nounlist.txt"), "fox\n").unwrap();
        let err = RulerText::read(dir.path(), false, false)
            .err()
            .unwrap()
            .to_string();
        assert!(
            err.contains("nounlist.txt") && err.contains("at least 10"),
            "{err}"
        );
    }

    #[test]
    fn a_missing_folder_says_how_to_get_it() {
        let err = RulerText::read(Path::new("/nonexistent/ruler"), false, false)
            .err()
            .unwrap()
            .to_string();
        assert!(err.contains("get-ruler-data.sh"), "{err}");
    }
}
