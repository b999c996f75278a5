//! What a generated sample is, and the pieces the generators share.

use rand::seq::index;
use rand::Rng;

/// RULER's filler line.
pub const NOISE: &str =
    "The grass is green. The sky is blue. The sun is yellow. Here we go. There and back again.";

/// One generated prompt, split where the question begins: what is compressed without knowing the
/// question, the question, and the start of the answer; and the strings a correct answer contains.
#[derive(Clone, Debug, PartialEq)]
pub struct Sample {
    pub context: String,
    pub question: String,
    /// Starts with a space, as RULER's.
    pub answer_prefix: String,
    pub references: Vec<String>,
}

/// `lines` with `inserted` placed among them at random, in their order, joined by newlines.
pub fn render_lines(mut lines: Vec<String>, inserted: Vec<String>, rng: &mut impl Rng) -> String {
    let n = inserted.len().min(lines.len() + 1);
    let mut at: Vec<usize> = index::sample(rng, lines.len() + 1, n).into_vec();
    at.sort_unstable();
    for (j, (position, line)) in at.into_iter().zip(inserted).enumerate() {
        lines.insert(position + j, line);
    }
    lines.join("\n")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kv_eval::ruler::testing::rng;

    #[test]
    fn inserted_lines_keep_their_order() {
        let lines = vec!["x".to_string(); 5];
        let out = render_lines(lines, vec!["1".into(), "2".into(), "3".into()], &mut rng(7));
        let kept: Vec<&str> = out.lines().filter(|l| *l != "x").collect();
        assert_eq!(kept, ["1", "2", "3"]);
        assert_eq!(out.lines().count(), 8);
    }
}
