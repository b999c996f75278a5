//! The suite's source text: essays for the haystacks and English words for keys and word lists, read
//! from the folder `scripts/get-ruler-data.sh` fills.

use std::collections::HashSet;
use std::path::{Path, PathBuf};

use spectra_core::{Error, Result};

/// Essays and words, as the generators use them.
pub struct RulerText {
    /// Every essay, in file-name order, whitespace runs made single spaces, split into words.
    pub essay_words: Vec<String>,
    /// Lower-case single words: adjectives, then nouns (for `adjective-noun` keys).
    pub adjectives: Vec<String>,
    pub nouns: Vec<String>,
    /// Nouns, adjectives and verbs together, each once, sorted (the common-words pool).
    pub vocabulary: Vec<String>,
}

/// The fewest adjectives and nouns the key pairs are drawn from.
const MIN_WORDS: usize = 10;

const HOW_TO_GET: &str =
    "scripts/get-ruler-data.sh downloads the essays and word lists into data/kv/ruler";

impl RulerText {
    /// Reads `dir/essays/*.txt` and `dir/words/{adjective,noun,verb,profanity}list.txt`.
    pub fn read(dir: &Path) -> Result<Self> {
        let essays = dir.join("essays");
        let mut files: Vec<PathBuf> = std::fs::read_dir(&essays)
            .map_err(|e| Error::file(&essays, format!("cannot read ({e}); {HOW_TO_GET}")))?
            .filter_map(|entry| entry.ok().map(|e| e.path()))
            .filter(|p| p.extension().is_some_and(|x| x == "txt"))
            .collect();
        files.sort();
        if files.is_empty() {
            return Err(Error::file(
                &essays,
                format!("holds no .txt essays; {HOW_TO_GET}"),
            ));
        }
        let mut essay_words = Vec::new();
        for file in &files {
            let text = read_lossy(file)?;
            essay_words.extend(clean(&text).split_whitespace().map(str::to_string));
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
        Ok(RulerText {
            essay_words,
            adjectives,
            nouns,
            vocabulary,
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
/// they stand for.
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
        let essays = dir.path().join("essays");
        let words = dir.path().join("words");
        std::fs::create_dir_all(&essays).unwrap();
        std::fs::create_dir_all(&words).unwrap();
        std::fs::write(essays.join("b.txt"), "second  essay").unwrap();
        std::fs::write(essays.join("a.txt"), "First\u{0097}one\n\nhere").unwrap();
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
        let text = RulerText::read(dir.path()).unwrap();
        assert_eq!(text.essay_words, ["First—one", "here", "second", "essay"]);
        assert_eq!(text.adjectives[..2], ["quick", "aa"]);
        assert_eq!(text.adjectives.len(), 10);
        assert_eq!(text.nouns[..2], ["fox", "aa"]);
        // aa–ii, fox, jump and quick, each once, sorted.
        assert_eq!(text.vocabulary.len(), 12);
        assert!(text.vocabulary.windows(2).all(|w| w[0] < w[1]));
        assert_eq!(text.vocabulary[9..], ["ii", "jump", "quick"]);
        std::fs::write(words.join("nounlist.txt"), "fox\n").unwrap();
        let err = RulerText::read(dir.path()).err().unwrap().to_string();
        assert!(
            err.contains("nounlist.txt") && err.contains("at least 10"),
            "{err}"
        );
    }

    #[test]
    fn a_missing_folder_says_how_to_get_it() {
        let err = RulerText::read(Path::new("/nonexistent/ruler"))
            .err()
            .unwrap()
            .to_string();
        assert!(err.contains("get-ruler-data.sh"), "{err}");
    }
}
