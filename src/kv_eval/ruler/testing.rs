//! The generators' test helpers: a seeded generator and a tiny source text.

use rand::SeedableRng;
use spectra_core::SpectraRng;

use super::qa::QaSet;
use super::text::RulerText;

pub fn rng(seed: u64) -> SpectraRng {
    SpectraRng::seed_from_u64(seed)
}

pub fn tiny_text() -> RulerText {
    let words = |s: &str| s.split_whitespace().map(str::to_string).collect::<Vec<_>>();
    RulerText {
        essay_words: words(
            "The best way to get startup ideas is not to try to think of them. Instead look for \
             problems, preferably problems you have yourself. Why? Because ideas that come from \
             working on problems tend to be good ones. Many of the best ideas seem bad at first.",
        ),
        adjectives: words("quick lazy brave calm eager gentle happy jolly kind lively"),
        nouns: words("fox dog cat owl ant bee cow elk gnu hen yak eel"),
        vocabulary: words(
            "ant bee brave calm cat cow dog eager eel elk fox gentle gnu happy hen jolly kind \
             lazy lively owl quick yak apple river stone cloud",
        ),
        squad: Some(QaSet::tiny()),
        hotpot: Some(QaSet::tiny()),
    }
}
