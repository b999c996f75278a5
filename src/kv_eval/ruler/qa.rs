//! RULER's question answering over documents: qa_1 asks SQuAD v2's answerable dev questions, qa_2
//! HotpotQA's dev questions (distractor setting), each among documents from the whole set, with
//! RULER's template (`long_context_eval/data/synthetic/qa.py` in nvidia-long-context-eval 26.3).

use std::path::Path;

use rand::seq::{IndexedRandom, SliceRandom};
use rand::Rng;
use serde_json::Value;
use spectra_core::{Error, Result};

use super::sample::Sample;

const INSTRUCTION: &str = "Answer the question based on the given documents. Only give me the \
                           answer and do not output any other words.";

/// A QA set as RULER reads it: every distinct document, sorted, and the questions.
pub struct QaSet {
    docs: Vec<String>,
    questions: Vec<Question>,
}

struct Question {
    query: String,
    answers: Vec<String>,
    /// The documents that hold the answer, and (SQuAD) the other paragraphs of its article, which
    /// RULER draws the distractors from first.
    docs: Vec<usize>,
    more: Vec<usize>,
}

impl QaSet {
    /// SQuAD v2 (`squad.json`): one document per paragraph; the questions that have answers.
    pub fn squad(path: &Path) -> Result<Self> {
        let json = read_json(path)?;
        let bad = |what: &str| Error::file(path, format!("not SQuAD v2 as RULER ships it: {what}"));
        let articles = json["data"]
            .as_array()
            .ok_or_else(|| bad("no `data` list"))?;
        let paragraphs = |article: &Value| -> Vec<Value> {
            article["paragraphs"]
                .as_array()
                .cloned()
                .unwrap_or_default()
        };
        let mut docs: Vec<String> = articles
            .iter()
            .flat_map(paragraphs)
            .filter_map(|p| p["context"].as_str().map(str::to_string))
            .collect();
        docs.sort();
        docs.dedup();
        let index = |text: &str| docs.binary_search_by(|d| d.as_str().cmp(text)).ok();
        let mut questions = Vec::new();
        for article in articles {
            let here: Vec<usize> = paragraphs(article)
                .iter()
                .filter_map(|p| p["context"].as_str().and_then(index))
                .collect();
            for paragraph in paragraphs(article) {
                let Some(doc) = paragraph["context"].as_str().and_then(index) else {
                    continue;
                };
                for qa in paragraph["qas"].as_array().into_iter().flatten() {
                    if qa["is_impossible"].as_bool() != Some(false) {
                        continue;
                    }
                    questions.push(Question {
                        query: text_of(&qa["question"])
                            .ok_or_else(|| bad("a question without text"))?,
                        answers: qa["answers"]
                            .as_array()
                            .into_iter()
                            .flatten()
                            .filter_map(|a| text_of(&a["text"]))
                            .collect(),
                        docs: vec![doc],
                        more: here.iter().copied().filter(|&d| d != doc).collect(),
                    });
                }
            }
        }
        QaSet::checked(docs, questions, path)
    }

    /// HotpotQA (`hotpotqa.json`): one document per title and its sentences; each question's own
    /// ten documents (its supporting facts and distractors) are the ones that must be in the prompt.
    pub fn hotpot(path: &Path) -> Result<Self> {
        let json = read_json(path)?;
        let bad = |what: &str| Error::file(path, format!("not HotpotQA as RULER ships it: {what}"));
        let items = json.as_array().ok_or_else(|| bad("not a list"))?;
        let doc_of = |pair: &Value| -> Option<String> {
            let title = pair.get(0)?.as_str()?;
            let sentences: String = pair
                .get(1)?
                .as_array()?
                .iter()
                .filter_map(Value::as_str)
                .collect();
            Some(format!("{title}\n{sentences}"))
        };
        let contexts = |item: &Value| -> Vec<String> {
            item["context"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(doc_of)
                .collect()
        };
        let mut docs: Vec<String> = items.iter().flat_map(contexts).collect();
        docs.sort();
        docs.dedup();
        let index = |text: &String| docs.binary_search(text).ok();
        let questions = items
            .iter()
            .map(|item| {
                Ok(Question {
                    query: text_of(&item["question"])
                        .ok_or_else(|| bad("a question without text"))?,
                    answers: text_of(&item["answer"]).into_iter().collect(),
                    docs: contexts(item).iter().filter_map(index).collect(),
                    more: Vec::new(),
                })
            })
            .collect::<Result<Vec<_>>>()?;
        QaSet::checked(docs, questions, path)
    }

    fn checked(docs: Vec<String>, questions: Vec<Question>, path: &Path) -> Result<Self> {
        let questions: Vec<Question> = questions
            .into_iter()
            .filter(|q| !q.answers.is_empty())
            .collect();
        if questions.is_empty() || docs.is_empty() {
            return Err(Error::file(
                path,
                "holds no answerable questions; scripts/get-ruler-data.sh fetches it",
            ));
        }
        Ok(QaSet { docs, questions })
    }

    /// The documents a question's prompt holds at least.
    pub fn min_docs(&self) -> usize {
        self.questions
            .iter()
            .map(|q| q.docs.len())
            .max()
            .unwrap_or(1)
    }

    /// A question drawn at random among `docs` documents: its own, then (SQuAD) other paragraphs of
    /// its article, then documents drawn from the whole set, shuffled, as RULER builds them.
    pub fn sample(&self, docs: usize, rng: &mut impl Rng) -> Sample {
        let q = &self.questions[rng.random_range(0..self.questions.len())];
        let docs = docs.clamp(q.docs.len(), self.docs.len());
        let mut chosen = q.docs.clone();
        let wanted = docs - chosen.len();
        if wanted <= q.more.len() {
            chosen.extend(q.more.choose_multiple(rng, wanted).copied());
        } else {
            chosen.extend(&q.more);
            let others: Vec<usize> = (0..self.docs.len())
                .filter(|d| !chosen.contains(d))
                .collect();
            let missing = docs - chosen.len();
            chosen.extend(others.choose_multiple(rng, missing).copied());
        }
        chosen.shuffle(rng);
        let documents: Vec<String> = chosen
            .iter()
            .enumerate()
            .map(|(i, &d)| format!("Document {}:\n{}", i + 1, self.docs[d]))
            .collect();
        Sample {
            context: format!(
                "{INSTRUCTION}\n\nThe following are given documents.\n\n{}\n\n",
                documents.join("\n\n")
            ),
            question: format!("{INSTRUCTION}\n\nQuestion: {}", q.query),
            answer_prefix: " Answer:".into(),
            references: q.answers.clone(),
        }
    }
}

#[cfg(test)]
impl QaSet {
    /// Three questions over twelve documents, for the generators' tests.
    pub fn tiny() -> Self {
        QaSet {
            docs: (0..12).map(|i| format!("Document text {i}.")).collect(),
            questions: (0..3)
                .map(|i| Question {
                    query: format!("What is {i}?"),
                    answers: vec![format!("{i}")],
                    docs: vec![i],
                    more: vec![i + 3],
                })
                .collect(),
        }
    }
}

fn text_of(value: &Value) -> Option<String> {
    value.as_str().map(str::to_string)
}

fn read_json(path: &Path) -> Result<Value> {
    let bytes = std::fs::read(path).map_err(|e| {
        Error::file(
            path,
            format!("cannot read ({e}); scripts/get-ruler-data.sh fetches RULER's QA sets"),
        )
    })?;
    serde_json::from_slice(&bytes).map_err(|e| Error::file(path, format!("not JSON: {e}")))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kv_eval::ruler::testing::rng;

    fn squad_file(dir: &Path) -> std::path::PathBuf {
        let path = dir.join("squad.json");
        let json = serde_json::json!({"version": "v2.0", "data": [
            {"title": "A", "paragraphs": [
                {"context": "Paris is the capital of France.", "qas": [
                    {"question": "What is the capital of France?", "is_impossible": false,
                     "answers": [{"text": "Paris", "answer_start": 0}]},
                    {"question": "What is the capital of Mars?", "is_impossible": true, "answers": []}]},
                {"context": "France is in Europe.", "qas": []}]},
            {"title": "B", "paragraphs": [
                {"context": "Rome is in Italy.", "qas": []},
                {"context": "Bern is in Switzerland.", "qas": []}]}
        ]});
        std::fs::write(&path, json.to_string()).unwrap();
        path
    }

    #[test]
    fn squad_questions_come_with_their_paragraph_first_and_their_article_next() {
        let dir = tempfile::tempdir().unwrap();
        let set = QaSet::squad(&squad_file(dir.path())).unwrap();
        assert_eq!(set.docs.len(), 4);
        assert_eq!(
            set.questions.len(),
            1,
            "the impossible question is left out"
        );
        let two = set.sample(2, &mut rng(1));
        assert!(
            two.context.contains("Paris is the capital")
                && two.context.contains("France is in Europe")
        );
        assert!(!two.context.contains("Rome") && !two.context.contains("Bern"));
        assert!(two.context.contains("Document 1:\n") && two.context.contains("Document 2:\n"));
        assert!(!two.context.contains("Document 3:"));
        assert_eq!(
            two.question,
            format!("{INSTRUCTION}\n\nQuestion: What is the capital of France?")
        );
        assert_eq!(two.references, ["Paris"]);
        let all = set.sample(99, &mut rng(1));
        assert!(all.context.contains("Document 4:\nRome") || all.context.contains("Bern"));
        assert!(!all.context.contains("Document 5:"));
        // One document is still the question's own.
        assert!(set.sample(1, &mut rng(2)).context.contains("Paris"));
    }

    #[test]
    fn hotpot_documents_are_title_and_sentences_and_all_its_own_are_kept() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("hotpotqa.json");
        let json = serde_json::json!([
            {"_id": "1", "question": "Which is older?", "answer": "Rome",
             "context": [["Rome", ["Rome is old.", " Very old."]], ["Bern", ["Bern is younger."]]]},
            {"_id": "2", "question": "Where is Oslo?", "answer": "Norway",
             "context": [["Oslo", ["Oslo is in Norway."]], ["Lima", ["Lima is in Peru."]]]}
        ]);
        std::fs::write(&path, json.to_string()).unwrap();
        let set = QaSet::hotpot(&path).unwrap();
        assert_eq!(set.docs.len(), 4);
        assert_eq!(set.min_docs(), 2);
        for seed in 0..8 {
            let s = set.sample(1, &mut rng(seed));
            let own = if s.references == ["Rome"] {
                ["Rome\nRome is old. Very old.", "Bern\nBern is younger."]
            } else {
                ["Oslo\nOslo is in Norway.", "Lima\nLima is in Peru."]
            };
            assert!(own.iter().all(|d| s.context.contains(d)), "{}", s.context);
        }
    }

    #[test]
    fn a_missing_or_empty_set_says_how_to_get_it() {
        let dir = tempfile::tempdir().unwrap();
        let err = QaSet::squad(&dir.path().join("squad.json"))
            .err()
            .unwrap()
            .to_string();
        assert!(err.contains("get-ruler-data.sh"), "{err}");
        std::fs::write(dir.path().join("h.json"), "[]").unwrap();
        let err = QaSet::hotpot(&dir.path().join("h.json"))
            .err()
            .unwrap()
            .to_string();
        assert!(err.contains("no answerable questions"), "{err}");
    }
}
