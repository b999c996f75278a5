//! Variable tracking: `VAR ABCDE = 12345`, then four assignments each copying the last (`VAR FGHIJ =
//! VAR ABCDE`), spread in order among filler lines; the answer names all five variables. As in RULER, a
//! worked example of the same form comes first.

use rand::Rng;

use super::sample::{render_lines, Sample, NOISE};

/// Assignments after the first, as RULER's default.
const HOPS: usize = 4;
/// Filler lines in the worked example.
const EXAMPLE_LINES: usize = 12;

/// A sample with `lines` filler lines.
pub fn sample(lines: usize, rng: &mut impl Rng) -> Sample {
    let (example, names) = task(EXAMPLE_LINES, rng);
    let example = format!(
        "{}{}{}{}\n",
        example.context,
        example.question,
        example.answer_prefix,
        names.join(" ")
    );
    let (mut s, _) = task(lines, rng);
    s.context = format!("{example}\n{}", s.context);
    s
}

/// The task without its example, and the chain's variable names.
fn task(lines: usize, rng: &mut impl Rng) -> (Sample, Vec<String>) {
    let mut names: Vec<String> = Vec::new();
    while names.len() < HOPS + 1 {
        let name: String = (0..5)
            .map(|_| char::from(b'A' + rng.random_range(0..26u8)))
            .collect();
        if !names.contains(&name) {
            names.push(name);
        }
    }
    let value = rng.random_range(10_000..100_000u32);
    // RULER's copies end with a space; kept, since the answer's tokens follow the text's.
    let chain: Vec<String> = std::iter::once(format!("VAR {} = {value}", names[0]))
        .chain(
            names
                .windows(2)
                .map(|p| format!("VAR {} = VAR {} ", p[1], p[0])),
        )
        .collect();
    let haystack = render_lines(vec![NOISE.to_string(); lines], chain, rng);
    let sample = Sample {
        context: format!(
            "Memorize and track the chain(s) of variable assignment hidden in the following \
             text.\n\n{haystack}\n"
        ),
        question: format!(
            "Question: Find all variables that are assigned the value {value} in the text above."
        ),
        answer_prefix: format!(
            " Answer: According to the chain(s) of variable assignment in the text above, {} \
             variables are assigned the value {value}, they are: ",
            HOPS + 1
        ),
        references: names.clone(),
    };
    (sample, names)
}

#[cfg(test)]
mod tests {
    use super::super::testing::rng;
    use super::*;

    #[test]
    fn the_chain_runs_in_order_from_the_value_to_the_last_copy() {
        let s = sample(30, &mut rng(3));
        let names = &s.references;
        assert_eq!(names.len(), 5);
        let task = s.context.rsplit("Memorize and track").next().unwrap();
        let value: String = s.question.chars().filter(char::is_ascii_digit).collect();
        let first = task.find(&format!("VAR {} = {value}", names[0])).unwrap();
        let mut at = first;
        for p in names.windows(2) {
            let next = task.find(&format!("VAR {} = VAR {} ", p[1], p[0])).unwrap();
            assert!(next > at);
            at = next;
        }
        assert_eq!(task.matches(NOISE).count(), 30);
        // The worked example comes first and ends with its answer.
        assert!(s.context.starts_with("Memorize and track the chain(s)"));
        assert_eq!(s.context.matches("Memorize and track").count(), 2);
        assert!(s
            .answer_prefix
            .contains(&format!("assigned the value {value}, they are: ")));
    }
}
