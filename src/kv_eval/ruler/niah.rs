//! Needle in a haystack, RULER's eight variants: one needle or several (distractor keys, several values
//! for one key, several keys asked at once), hidden in repeated filler, in essays, or among needles.
//!
//! The needle reads "One of the special magic {numbers} for {key} is: {value}." (always plural, as in
//! RULER); the instruction, question and answer prefix are singular when one value is asked for.

use rand::seq::index;
use rand::seq::SliceRandom;
use rand::Rng;

use super::sample::{render_lines, Sample, NOISE};
use super::text::RulerText;

/// Where the needles are hidden.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Haystack {
    /// Lines of [`NOISE`].
    Noise,
    /// The essays' first words (the same text for every sample), needles between sentences.
    Essay,
    /// Lines that are needles themselves, of other keys.
    Needles,
}

/// What keys and values are.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    /// `adjective-noun`.
    Words,
    /// Seven digits.
    Numbers,
    /// Random version-4 UUIDs.
    Uuids,
}

impl Kind {
    fn plural(self) -> &'static str {
        match self {
            Kind::Words => "words",
            Kind::Numbers => "numbers",
            Kind::Uuids => "uuids",
        }
    }

    fn draw(self, rng: &mut impl Rng, text: &RulerText) -> String {
        match self {
            Kind::Words => {
                let adjective = &text.adjectives[rng.random_range(0..text.adjectives.len())];
                let noun = &text.nouns[rng.random_range(0..text.nouns.len())];
                format!("{adjective}-{noun}")
            }
            Kind::Numbers => rng.random_range(1_000_000..10_000_000u32).to_string(),
            Kind::Uuids => uuid4(rng.random()),
        }
    }
}

/// One variant: the haystack, the kinds, and how many keys, values per key and asked keys.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Niah {
    pub haystack: Haystack,
    pub keys: Kind,
    pub values: Kind,
    pub num_keys: usize,
    pub values_per_key: usize,
    pub queries: usize,
}

/// RULER's essay depths: 40 evenly spaced percentages, rounded.
fn depths() -> Vec<usize> {
    (0..40)
        .map(|i| (100.0 * i as f64 / 39.0).round() as usize)
        .collect()
}

/// A sample with `units` lines of filler or needles, or `units` essay words.
pub fn sample(spec: &Niah, units: usize, rng: &mut impl Rng, text: &RulerText) -> Sample {
    let mut keys: Vec<String> = Vec::new();
    while keys.len() < spec.num_keys.max(spec.queries) {
        let key = spec.keys.draw(rng, text);
        if !keys.contains(&key) {
            keys.push(key);
        }
    }
    let plural = spec.values.plural();
    let needle = |key: &str, value: &str| {
        format!("One of the special magic {plural} for {key} is: {value}.")
    };
    let values: Vec<Vec<String>> = keys
        .iter()
        .map(|_| {
            (0..spec.values_per_key)
                .map(|_| spec.values.draw(rng, text))
                .collect()
        })
        .collect();
    let mut needles: Vec<String> = keys
        .iter()
        .zip(&values)
        .flat_map(|(k, vs)| vs.iter().map(move |v| needle(k, v)))
        .collect();
    needles.shuffle(rng);
    let haystack = match spec.haystack {
        Haystack::Noise => render_lines(vec![NOISE.to_string(); units], needles, rng),
        Haystack::Needles => {
            let distractors = (0..units)
                .map(|_| loop {
                    let key = spec.keys.draw(rng, text);
                    if !keys.contains(&key) {
                        break needle(&key, &spec.values.draw(rng, text));
                    }
                })
                .collect();
            render_lines(distractors, needles, rng)
        }
        Haystack::Essay => in_essay(&text.essay_words, units, needles, rng),
    };
    let asked: Vec<usize> = index::sample(rng, keys.len(), spec.queries).into_vec();
    let asked_keys: Vec<&str> = asked.iter().map(|&i| keys[i].as_str()).collect();
    let query = match asked_keys.as_slice() {
        [one] => one.to_string(),
        [rest @ .., last] => format!("{}, and {last}", rest.join(", ")),
        [] => String::new(),
    };
    let references = asked.iter().flat_map(|&i| values[i].clone()).collect();
    let (instruction, question, answer_prefix) = if spec.queries * spec.values_per_key == 1 {
        let one = &plural[..plural.len() - 1];
        (
            format!(
                "A special magic {one} is hidden within the following text. Make sure to memorize \
                 it. I will quiz you about the {one} afterwards."
            ),
            format!("What is the special magic {one} for {query} mentioned in the provided text?"),
            format!(" The special magic {one} for {query} mentioned in the provided text is"),
        )
    } else {
        (
            format!(
                "Some special magic {plural} are hidden within the following text. Make sure to \
                 memorize it. I will quiz you about the {plural} afterwards."
            ),
            format!(
                "What are all the special magic {plural} for {query} mentioned in the provided text?"
            ),
            format!(" The special magic {plural} for {query} mentioned in the provided text are"),
        )
    };
    Sample {
        context: format!("{instruction}\n{haystack}\n"),
        question,
        answer_prefix,
        references,
    }
}

/// The first `words` essay words (cycled if the essays are shorter), the needles placed between
/// sentences at distinct depths drawn from RULER's forty.
fn in_essay(essay: &[String], words: usize, needles: Vec<String>, rng: &mut impl Rng) -> String {
    let text: Vec<&str> = essay
        .iter()
        .cycle()
        .take(words)
        .map(String::as_str)
        .collect();
    let text = text.join(" ");
    let sentences = sentences(&text);
    let all = depths();
    let mut cuts: Vec<usize> = index::sample(rng, all.len(), needles.len().min(all.len()))
        .into_iter()
        .map(|i| sentences.len() * all[i] / 100)
        .collect();
    cuts.sort_unstable();
    let mut pieces: Vec<String> = Vec::new();
    let mut from = 0;
    for (cut, needle) in cuts.into_iter().zip(needles) {
        pieces.extend(sentences[from..cut].iter().map(|s| s.to_string()));
        pieces.push(needle);
        from = cut;
    }
    pieces.extend(sentences[from..].iter().map(|s| s.to_string()));
    pieces.join(" ")
}

/// `text` cut after every `.`, `?` or `!` that a space follows.
fn sentences(text: &str) -> Vec<&str> {
    let mut out = Vec::new();
    let mut start = 0;
    let bytes = text.as_bytes();
    for i in 0..bytes.len().saturating_sub(1) {
        if matches!(bytes[i], b'.' | b'?' | b'!') && bytes[i + 1] == b' ' {
            out.push(&text[start..=i]);
            start = i + 2;
        }
    }
    if start < text.len() {
        out.push(&text[start..]);
    }
    out
}

/// A version-4 UUID from 128 random bits, lower-case hex.
fn uuid4(bits: u128) -> String {
    let mut b = bits.to_be_bytes();
    b[6] = (b[6] & 0x0f) | 0x40;
    b[8] = (b[8] & 0x3f) | 0x80;
    let hex: String = b.iter().map(|x| format!("{x:02x}")).collect();
    format!(
        "{}-{}-{}-{}-{}",
        &hex[..8],
        &hex[8..12],
        &hex[12..16],
        &hex[16..20],
        &hex[20..]
    )
}

#[cfg(test)]
mod tests {
    use super::super::testing::{rng, tiny_text};
    use super::*;

    fn spec(haystack: Haystack, num_keys: usize, values_per_key: usize, queries: usize) -> Niah {
        Niah {
            haystack,
            keys: Kind::Words,
            values: Kind::Numbers,
            num_keys,
            values_per_key,
            queries,
        }
    }

    #[test]
    fn one_needle_reads_as_rulers_singular_template() {
        let text = tiny_text();
        let s = sample(&spec(Haystack::Noise, 1, 1, 1), 5, &mut rng(1), &text);
        let value = &s.references[0];
        assert_eq!(value.len(), 7);
        let key = s.question["What is the special magic number for ".len()..]
            .strip_suffix(" mentioned in the provided text?")
            .unwrap();
        assert!(s.context.starts_with(
            "A special magic number is hidden within the following text. Make sure to memorize it. \
             I will quiz you about the number afterwards.\n"
        ));
        let needle = format!("One of the special magic numbers for {key} is: {value}.");
        assert_eq!(s.context.matches(&needle).count(), 1);
        assert_eq!(s.context.matches(NOISE).count(), 5);
        assert_eq!(
            s.answer_prefix,
            format!(" The special magic number for {key} mentioned in the provided text is")
        );
    }

    #[test]
    fn several_keys_values_and_queries_are_all_hidden_and_asked() {
        let text = tiny_text();
        let multi_value = sample(&spec(Haystack::Essay, 1, 4, 1), 200, &mut rng(2), &text);
        assert_eq!(multi_value.references.len(), 4);
        assert!(multi_value
            .question
            .starts_with("What are all the special magic numbers for "));
        let multi_query = sample(&spec(Haystack::Essay, 4, 1, 4), 200, &mut rng(3), &text);
        assert_eq!(multi_query.references.len(), 4);
        assert_eq!(multi_query.question.matches(", ").count(), 3);
        assert!(multi_query.question.contains(", and "));
        let multi_key = sample(&spec(Haystack::Essay, 4, 1, 1), 200, &mut rng(4), &text);
        assert_eq!(multi_key.references.len(), 1);
        assert_eq!(
            multi_key
                .context
                .matches("One of the special magic")
                .count(),
            4
        );
        for s in [&multi_value, &multi_query, &multi_key] {
            for v in &s.references {
                assert_eq!(s.context.matches(v.as_str()).count(), 1, "{v}");
            }
        }
    }

    #[test]
    fn a_haystack_of_needles_hides_the_asked_one_among_others() {
        let text = tiny_text();
        let mut s = spec(Haystack::Needles, 1, 1, 1);
        s.keys = Kind::Uuids;
        s.values = Kind::Uuids;
        let s = sample(&s, 30, &mut rng(5), &text);
        assert_eq!(
            s.context
                .matches("One of the special magic uuids for ")
                .count(),
            31
        );
        assert_eq!(s.context.matches(s.references[0].as_str()).count(), 1);
    }

    #[test]
    fn uuids_are_version_4() {
        let u = uuid4(u128::MAX);
        assert_eq!(u, "ffffffff-ffff-4fff-bfff-ffffffffffff");
        let u = uuid4(0);
        assert_eq!(u, "00000000-0000-4000-8000-000000000000");
    }

    #[test]
    fn sentences_end_at_stops_followed_by_a_space() {
        assert_eq!(
            sentences("One. Two? Three! 3.5 is a number. Last"),
            ["One.", "Two?", "Three!", "3.5 is a number.", "Last"]
        );
        assert_eq!(depths()[..4], [0, 3, 5, 8]);
        assert_eq!(depths()[39], 100);
    }
}
