//! Aggregation: the ten most common words of a numbered list (cwe), and the three most frequent coded
//! words of a text whose word frequencies follow Zipf's law (fwe). Both come with RULER's settings,
//! which depend on the prompt's length.

use rand::seq::{index, SliceRandom};
use rand::Rng;

use super::sample::Sample;
use super::text::RulerText;

/// The common words asked for.
const COMMON: usize = 10;

/// A list of `words` distinct words (ten common, the rest uncommon), preceded by a worked example.
pub fn common_words(words: usize, length: usize, rng: &mut impl Rng, text: &RulerText) -> Sample {
    // RULER's repetitions: (example words, common, uncommon) and (common, uncommon) for the task.
    let ((ex_words, ex_common, ex_uncommon), (common, uncommon)) = if length < 4096 {
        ((20, 3, 1), (6, 1))
    } else {
        ((40, 10, 3), (30, 3))
    };
    let example = word_list(ex_words, ex_common, ex_uncommon, rng, text);
    let numbered_answer: Vec<String> = example
        .references
        .iter()
        .enumerate()
        .map(|(i, w)| format!("{}. {w}", i + 1))
        .collect();
    let example = format!(
        "{}{}{} {}",
        example.context,
        example.question,
        example.answer_prefix,
        numbered_answer.join(" ")
    );
    let mut s = word_list(words, common, uncommon, rng, text);
    s.context = format!("{example}\n{}", s.context);
    s
}

fn word_list(
    words: usize,
    common: usize,
    uncommon: usize,
    rng: &mut impl Rng,
    text: &RulerText,
) -> Sample {
    let pool = &text.vocabulary;
    let chosen: Vec<&str> = index::sample(rng, pool.len(), words.min(pool.len()))
        .into_iter()
        .map(|i| pool[i].as_str())
        .collect();
    let mut list: Vec<&str> = Vec::new();
    for (i, w) in chosen.iter().enumerate() {
        let times = if i < COMMON { common } else { uncommon };
        list.extend(std::iter::repeat_n(*w, times));
    }
    list.shuffle(rng);
    let numbered: Vec<String> = list
        .iter()
        .enumerate()
        .map(|(i, w)| format!("{}. {w}", i + 1))
        .collect();
    Sample {
        context: format!(
            "Below is a numbered list of words. In these words, some appear more often than others. \
             Memorize the ones that appear most often.\n{}\n",
            numbered.join(" ")
        ),
        question: "Question: What are the 10 most common words in the above list?".into(),
        answer_prefix: " Answer: The top 10 words that appear most often in the list are:".into(),
        references: chosen[..COMMON.min(chosen.len())]
            .iter()
            .map(|w| w.to_string())
            .collect(),
    }
}

/// Zipf's exponent, as RULER's.
const ALPHA: f64 = 2.0;

/// About `words` coded words over a vocabulary of `(length − 50) / 50`, the word of rank k appearing
/// `⌊words · k^−α / ζ(α)⌋` times; the most frequent is `...` (noise, not asked for), the answer the
/// next three.
pub fn frequent_words(words: usize, length: usize, rng: &mut impl Rng) -> Sample {
    let vocabulary_size = (length.saturating_sub(50) / 50).max(4);
    let mut vocabulary: Vec<String> = Vec::new();
    while vocabulary.len() < vocabulary_size {
        let w: String = (0..6)
            .map(|_| char::from(b'a' + rng.random_range(0..26u8)))
            .collect();
        if !vocabulary.contains(&w) {
            vocabulary.push(w);
        }
    }
    vocabulary[0] = "...".into();
    let zeta: f64 = std::f64::consts::PI.powi(2) / 6.0;
    let mut text: Vec<&str> = Vec::new();
    for (rank, w) in vocabulary.iter().enumerate() {
        let times = (words as f64 * ((rank + 1) as f64).powf(-ALPHA) / zeta) as usize;
        text.extend(std::iter::repeat_n(w.as_str(), times));
    }
    text.shuffle(rng);
    Sample {
        context: format!(
            "Read the following coded text and track the frequency of each coded word. Find the \
             three most frequently appeared coded words. {}\n",
            text.join(" ")
        ),
        question: "Question: Do not provide any explanation. Please ignore the dots '....'. What are \
                   the three most frequently appeared words in the above coded text?"
            .into(),
        answer_prefix:
            " Answer: According to the coded text above, the three most frequently appeared words are:"
                .into(),
        references: vocabulary[1..4].to_vec(),
    }
}

#[cfg(test)]
mod tests {
    use super::super::testing::{rng, tiny_text};
    use super::*;

    fn count(text: &str, word: &str) -> usize {
        text.split_whitespace().filter(|w| *w == word).count()
    }

    #[test]
    fn common_words_appear_thirty_times_and_the_rest_three_at_4k() {
        let text = tiny_text();
        let s = common_words(20, 4096, &mut rng(1), &text);
        let task = s.context.rsplit("Below is a numbered list").next().unwrap();
        assert_eq!(s.references.len(), 10);
        for w in &s.references {
            assert_eq!(count(task, w), 30, "{w}");
        }
        let numbered = task.split_whitespace().filter(|w| w.ends_with('.')).count();
        assert!(numbered >= 10 * 30 + 10 * 3);
        let short = common_words(20, 2048, &mut rng(1), &text);
        let task = short
            .context
            .rsplit("Below is a numbered list")
            .next()
            .unwrap();
        assert_eq!(count(task, &short.references[0]), 6);
    }

    #[test]
    fn frequent_words_follow_zipf_and_the_answer_is_ranks_two_to_four() {
        let s = frequent_words(10_000, 4096, &mut rng(2));
        let zeta = std::f64::consts::PI.powi(2) / 6.0;
        assert_eq!(count(&s.context, "..."), (10_000.0 / zeta) as usize);
        for (rank, w) in s.references.iter().enumerate() {
            let k = (rank + 2) as f64;
            assert_eq!(
                count(&s.context, w),
                (10_000.0 / (k * k) / zeta) as usize,
                "{w}"
            );
        }
    }
}
