//! The suite's tasks (RULER's thirteen) and what a generated sample is.

use rand::Rng;
use serde::{Deserialize, Serialize};

use spectra_core::{Error, Result};

use super::niah::{self, Haystack, Kind, Niah};
use super::qa::QaSet;
use super::sample::Sample;
use super::text::RulerText;
use super::{variable_tracking, word_counts};

/// A task, by RULER's name.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum RulerTask {
    /// One 7-digit number in filler.
    #[serde(rename = "niah_single_1")]
    NiahSingle1,
    /// One 7-digit number in essays.
    #[serde(rename = "niah_single_2")]
    NiahSingle2,
    /// One UUID in essays.
    #[serde(rename = "niah_single_3")]
    NiahSingle3,
    /// One of four keys' numbers, in essays.
    #[serde(rename = "niah_multikey_1")]
    NiahMultikey1,
    /// One number among needles of other word keys.
    #[serde(rename = "niah_multikey_2")]
    NiahMultikey2,
    /// One UUID among needles of other UUID keys.
    #[serde(rename = "niah_multikey_3")]
    NiahMultikey3,
    /// Four numbers of one key, in essays.
    #[serde(rename = "niah_multivalue")]
    NiahMultivalue,
    /// The numbers of four keys asked at once, in essays.
    #[serde(rename = "niah_multiquery")]
    NiahMultiquery,
    /// The five variables a chain of four assignments gives one value, in filler.
    #[serde(rename = "vt")]
    VariableTracking,
    /// The ten most common words of a numbered list.
    #[serde(rename = "cwe")]
    CommonWords,
    /// The three most frequent coded words of a Zipf-distributed text.
    #[serde(rename = "fwe")]
    FrequentWords,
    /// A SQuAD question among its article's paragraphs and others.
    #[serde(rename = "qa_1")]
    QaSquad,
    /// A HotpotQA question (two hops) among its documents and others.
    #[serde(rename = "qa_2")]
    QaHotpot,
}

impl RulerTask {
    #[cfg(test)]
    pub const ALL: [RulerTask; 13] = [
        RulerTask::NiahSingle1,
        RulerTask::NiahSingle2,
        RulerTask::NiahSingle3,
        RulerTask::NiahMultikey1,
        RulerTask::NiahMultikey2,
        RulerTask::NiahMultikey3,
        RulerTask::NiahMultivalue,
        RulerTask::NiahMultiquery,
        RulerTask::VariableTracking,
        RulerTask::CommonWords,
        RulerTask::FrequentWords,
        RulerTask::QaSquad,
        RulerTask::QaHotpot,
    ];

    pub fn name(self) -> &'static str {
        match self {
            RulerTask::NiahSingle1 => "niah_single_1",
            RulerTask::NiahSingle2 => "niah_single_2",
            RulerTask::NiahSingle3 => "niah_single_3",
            RulerTask::NiahMultikey1 => "niah_multikey_1",
            RulerTask::NiahMultikey2 => "niah_multikey_2",
            RulerTask::NiahMultikey3 => "niah_multikey_3",
            RulerTask::NiahMultivalue => "niah_multivalue",
            RulerTask::NiahMultiquery => "niah_multiquery",
            RulerTask::VariableTracking => "vt",
            RulerTask::CommonWords => "cwe",
            RulerTask::FrequentWords => "fwe",
            RulerTask::QaSquad => "qa_1",
            RulerTask::QaHotpot => "qa_2",
        }
    }

    /// RULER's answer length for the task, in tokens.
    pub fn max_new_tokens(self) -> usize {
        match self {
            RulerTask::VariableTracking => 30,
            RulerTask::CommonWords => 120,
            RulerTask::FrequentWords => 50,
            RulerTask::QaSquad | RulerTask::QaHotpot => 32,
            _ => 128,
        }
    }

    /// The fewest units (lines, words) a sample is generated with.
    pub fn min_units(self) -> usize {
        match self {
            RulerTask::CommonWords => 11,
            RulerTask::FrequentWords => 100,
            // A question's own documents, whatever the count asked.
            RulerTask::QaSquad | RulerTask::QaHotpot => 1,
            _ => 4,
        }
    }

    fn niah(self) -> Option<Niah> {
        let spec = |haystack, keys, values, num_keys, values_per_key, queries| Niah {
            haystack,
            keys,
            values,
            num_keys,
            values_per_key,
            queries,
        };
        use Haystack::{Essay, Needles, Noise};
        use Kind::{Numbers, Uuids, Words};
        Some(match self {
            RulerTask::NiahSingle1 => spec(Noise, Words, Numbers, 1, 1, 1),
            RulerTask::NiahSingle2 => spec(Essay, Words, Numbers, 1, 1, 1),
            RulerTask::NiahSingle3 => spec(Essay, Words, Uuids, 1, 1, 1),
            RulerTask::NiahMultikey1 => spec(Essay, Words, Numbers, 4, 1, 1),
            RulerTask::NiahMultikey2 => spec(Needles, Words, Numbers, 1, 1, 1),
            RulerTask::NiahMultikey3 => spec(Needles, Uuids, Uuids, 1, 1, 1),
            RulerTask::NiahMultivalue => spec(Essay, Words, Numbers, 1, 4, 1),
            RulerTask::NiahMultiquery => spec(Essay, Words, Numbers, 4, 1, 4),
            _ => return None,
        })
    }

    /// A sample of `units` haystack units (lines, words or documents) for a prompt of about
    /// `length` tokens (the common- and frequent-words tasks scale their repetitions and vocabulary
    /// with it).
    pub fn sample(
        self,
        units: usize,
        length: usize,
        rng: &mut impl Rng,
        text: &RulerText,
    ) -> Result<Sample> {
        let units = units.max(self.min_units());
        if let Some(spec) = self.niah() {
            return Ok(niah::sample(&spec, units, rng, text));
        }
        Ok(match self {
            RulerTask::VariableTracking => variable_tracking::sample(units, rng),
            RulerTask::CommonWords => word_counts::common_words(units, length, rng, text),
            RulerTask::QaSquad => self.qa_set(&text.squad, "squad.json")?.sample(units, rng),
            RulerTask::QaHotpot => self
                .qa_set(&text.hotpot, "hotpotqa.json")?
                .sample(units, rng),
            _ => word_counts::frequent_words(units, length, rng),
        })
    }

    fn qa_set<'a>(self, set: &'a Option<QaSet>, file: &str) -> Result<&'a QaSet> {
        set.as_ref().ok_or_else(|| {
            Error::invalid(
                "Ruler.tasks",
                format!(
                    "{} needs data/kv/ruler/json/{file}; scripts/get-ruler-data.sh fetches it",
                    self.name()
                ),
            )
        })
    }

    /// RULER's metric for the task, in percent: for QA whether any reference answer is in the
    /// answer (`string_match_part`), otherwise the share of the references found.
    pub fn score(self, answer: &str, references: &[String]) -> f64 {
        match self {
            RulerTask::QaSquad | RulerTask::QaHotpot => string_match_part(answer, references),
            _ => string_match_all(answer, references),
        }
    }
}

/// 100 when any reference is in the answer, case aside; else 0.
fn string_match_part(answer: &str, references: &[String]) -> f64 {
    let answer = answer.to_lowercase();
    if references
        .iter()
        .any(|r| answer.contains(&r.to_lowercase()))
    {
        100.0
    } else {
        0.0
    }
}

/// The share of the references found in the answer, case aside, in percent.
fn string_match_all(answer: &str, references: &[String]) -> f64 {
    let answer = answer.to_lowercase();
    let found = references
        .iter()
        .filter(|r| answer.contains(&r.to_lowercase()))
        .count();
    100.0 * found as f64 / references.len().max(1) as f64
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kv_eval::ruler::testing::{rng, tiny_text};

    #[test]
    fn names_are_those_configs_use() {
        for task in RulerTask::ALL {
            assert_eq!(ron::to_string(&task).unwrap(), task.name());
        }
    }

    #[test]
    fn the_metric_is_the_share_of_references_found() {
        let refs = ["a".to_string(), "B".to_string()];
        assert_eq!(string_match_all("b or c", &refs), 50.0);
        // A plain substring, as RULER's: "a" is found inside "and".
        assert_eq!(string_match_all("b and c", &refs), 100.0);
        assert_eq!(string_match_all("A, B", &refs), 100.0);
        assert_eq!(string_match_all("", &refs), 0.0);
        // QA scores whether any reference answer is there.
        assert_eq!(RulerTask::QaSquad.score("b or c", &refs), 100.0);
        assert_eq!(RulerTask::QaHotpot.score("c", &refs), 0.0);
        assert_eq!(RulerTask::NiahSingle1.score("b or c", &refs), 50.0);
    }

    #[test]
    fn the_same_seed_gives_the_same_sample_and_another_seed_another() {
        let text = tiny_text();
        for task in RulerTask::ALL {
            let sample = |seed| task.sample(40, 4096, &mut rng(seed), &text).unwrap();
            let a = sample(9);
            assert_eq!(a, sample(9), "{task:?}");
            assert_ne!(a, sample(10), "{task:?}");
            assert!(!a.references.is_empty(), "{task:?}");
            assert!(a.answer_prefix.starts_with(' '), "{task:?}");
        }
    }
}
