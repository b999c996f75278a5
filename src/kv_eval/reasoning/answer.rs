//! A chain of thought's final answer and whether it is the reference: the last `\boxed{…}` (what
//! the prompt asks for), else the last number of the text; both sides normalised the way math
//! graders do for numeric answers (`$1,234.`, `336^\circ` and `\frac{3}{4}` read as the numbers
//! they are).

/// The answer a chain of thought ends on.
pub fn extract(text: &str) -> Option<String> {
    last_boxed(text).or_else(|| last_number(text))
}

/// Whether `answer` and `reference` are the same answer.
pub fn matches(answer: &str, reference: &str) -> bool {
    let (a, r) = (normalise(answer), normalise(reference));
    match (number(&a), number(&r)) {
        (Some(x), Some(y)) => (x - y).abs() <= 1e-9 * y.abs().max(1.0),
        _ => !a.is_empty() && a == r,
    }
}

/// The contents of the last `\boxed{…}` (or `\fbox{…}`), braces balanced.
fn last_boxed(text: &str) -> Option<String> {
    let start = ["\\boxed{", "\\fbox{"]
        .iter()
        .filter_map(|m| text.rfind(m).map(|at| at + m.len()))
        .max()?;
    let mut depth = 1;
    for (i, c) in text[start..].char_indices() {
        match c {
            '{' => depth += 1,
            '}' => {
                depth -= 1;
                if depth == 0 {
                    return Some(text[start..start + i].trim().to_string());
                }
            }
            _ => {}
        }
    }
    None
}

/// The last run of digits in the text, with its sign, thousands commas and decimals.
fn last_number(text: &str) -> Option<String> {
    let bytes = text.as_bytes();
    let end = bytes.iter().rposition(u8::is_ascii_digit)? + 1;
    let mut start = end;
    while start > 0 {
        let b = bytes[start - 1];
        let digit_before = start >= 2 && bytes[start - 2].is_ascii_digit();
        if b.is_ascii_digit() || ((b == b',' || b == b'.') && digit_before) {
            start -= 1;
        } else {
            break;
        }
    }
    if start > 0 && bytes[start - 1] == b'-' {
        start -= 1;
    }
    Some(text[start..end].to_string())
}

/// Marks that do not change a numeric answer: dollars, thousands commas, degrees, percent, spaces,
/// `\text{…}` and `\left`/`\right`, a final full stop.
fn normalise(answer: &str) -> String {
    let mut s = answer.trim().to_string();
    if let Some(inner) = s.strip_prefix("\\text{").and_then(|t| t.strip_suffix('}')) {
        s = inner.to_string();
    }
    for mark in [
        "\\$",
        "$",
        "\\!",
        "\\,",
        "\\%",
        "%",
        "^\\circ",
        "^{\\circ}",
        "\\left",
        "\\right",
        "°",
        " ",
    ] {
        s = s.replace(mark, "");
    }
    // Thousands separators only: "1,234" but not "(1,2)".
    if s.bytes()
        .all(|b| b.is_ascii_digit() || b == b',' || b == b'.' || b == b'-')
    {
        s = s.replace(',', "");
    }
    s.trim_end_matches('.').to_string()
}

/// A plain or `\frac{a}{b}` / `\dfrac{a}{b}` / `a/b` number.
fn number(s: &str) -> Option<f64> {
    if let Ok(x) = s.parse::<f64>() {
        return x.is_finite().then_some(x);
    }
    let frac = s
        .strip_prefix("\\frac{")
        .or_else(|| s.strip_prefix("\\dfrac{"))
        .and_then(|t| t.strip_suffix('}'))
        .and_then(|t| t.split_once("}{"))
        .or_else(|| s.split_once('/'));
    let (a, b) = frac?;
    let (a, b) = (a.parse::<f64>().ok()?, b.parse::<f64>().ok()?);
    (b != 0.0).then(|| a / b)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_last_box_is_the_answer_and_nested_braces_are_kept() {
        assert_eq!(
            extract("so \\boxed{12} no, \\boxed{\\frac{3}{4}}.").unwrap(),
            "\\frac{3}{4}"
        );
        assert_eq!(extract("The answer is \\boxed{ 18 }").unwrap(), "18");
        // An unclosed box falls back to the last number.
        assert_eq!(extract("\\boxed{7 and then 8").unwrap(), "8");
    }

    #[test]
    fn without_a_box_the_last_number_with_its_commas_sign_and_decimals() {
        assert_eq!(extract("She makes 9 * 2 = $18 a day.").unwrap(), "18");
        assert_eq!(extract("a total of 1,234.50 dollars").unwrap(), "1,234.50");
        assert_eq!(extract("it falls to -3").unwrap(), "-3");
        assert_eq!(extract("no digits here"), None);
    }

    #[test]
    fn numbers_match_whatever_marks_they_carry() {
        assert!(matches("$1,234.", "1234"));
        assert!(matches("336^\\circ", "336"));
        assert!(matches("336", "336^\\circ"));
        assert!(matches("\\frac{3}{4}", "0.75"));
        assert!(matches("18.0", "18"));
        assert!(matches("\\text{70}", "70"));
        assert!(matches("50\\%", "50"));
        assert!(!matches("17", "18"));
        assert!(!matches("", ""));
        assert!(matches("x+1", "x + 1"));
        assert!(!matches("(1,2)", "12"));
    }
}
