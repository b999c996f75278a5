//! Experiment configs in RON: reading, with errors that name file:line:col and the fix.

use std::path::Path;

use serde::de::DeserializeOwned;

use crate::error::{ConfigError, Location};
use crate::registry::{self, Family};
pub use crate::ron_dialect::ron_options;
use crate::suggest::closest;

/// A config file that checks itself after parsing (values in range, plugins valid for their budgets).
pub trait Validate {
    /// The first problem found; its `near` text lets the error point at the offending line.
    fn validate(&self) -> Result<(), Invalid>;
}

/// A problem found after parsing: what, where (a plugin's name, or a field), and the fix.
#[derive(Debug)]
pub struct Invalid {
    /// Text to look for in the file to find the line: a plugin name or a field name.
    pub near: Option<String>,
    /// Looked for first, then `near` after it: a group's name, for a plugin several groups name.
    pub within: Option<String>,
    pub message: String,
    pub help: Option<String>,
}

impl Invalid {
    pub fn new(message: impl Into<String>) -> Self {
        Invalid {
            near: None,
            within: None,
            message: message.into(),
            help: None,
        }
    }

    pub fn near(mut self, text: impl Into<String>) -> Self {
        self.near = Some(text.into());
        self
    }

    /// `near` is looked for after the first `"anchor"` (quoted, as names are written).
    pub fn within(mut self, anchor: impl Into<String>) -> Self {
        self.within = Some(anchor.into());
        self
    }

    /// Where the problem is in config `text`.
    fn location(&self, text: &str) -> Option<Location> {
        let needle = self.near.as_deref()?;
        self.within
            .as_deref()
            .and_then(|anchor| locate_after(text, &format!("\"{anchor}\""), needle))
            .or_else(|| locate(text, needle))
    }

    pub fn help(mut self, help: impl Into<String>) -> Self {
        self.help = Some(help.into());
        self
    }

    /// The error as it reads for config `text` from `file`, at the line its `near` text is on.
    pub fn in_file(self, text: &str, file: &Path) -> ConfigError {
        ConfigError {
            file: file.to_path_buf(),
            location: self.location(text),
            message: self.message,
            help: self.help,
        }
    }
}

/// Reads and validates a config file.
pub fn load<T: DeserializeOwned + Validate>(path: &Path) -> Result<T, ConfigError> {
    parse(&read(path)?, path)
}

/// A config file's text, or an error saying it cannot be read.
pub fn read(path: &Path) -> Result<String, ConfigError> {
    std::fs::read_to_string(path).map_err(|e| ConfigError {
        file: path.to_path_buf(),
        location: None,
        message: format!("cannot read the config: {e}"),
        help: Some("check the path; the experiments/ folder has examples".into()),
    })
}

/// Parses and validates config text; `file` is used in messages.
pub fn parse<T: DeserializeOwned + Validate>(text: &str, file: &Path) -> Result<T, ConfigError> {
    let value: T = parse_ron(text, file)?;
    value
        .validate()
        .map_err(|invalid| invalid.in_file(text, file))?;
    Ok(value)
}

/// Parses RON with spectra's options (`Some` may be omitted), mapping errors to file:line:col with help.
pub fn parse_ron<T: DeserializeOwned>(text: &str, file: &Path) -> Result<T, ConfigError> {
    // Editors on Windows may start a UTF-8 file with a byte-order mark; it is not RON.
    let text = text.strip_prefix('\u{feff}').unwrap_or(text);
    if text.trim().is_empty() {
        return Err(ConfigError {
            file: file.to_path_buf(),
            location: None,
            message: "the config is empty".into(),
            help: Some("write a RON config; the experiments/ folder has examples".into()),
        });
    }
    ron_options().from_str(text).map_err(|e| {
        let location = Location {
            line: e.span.start.line,
            col: e.span.start.col,
        };
        let before = text_before(text, location);
        let stopped_in_an_integer = ["comma", "integer", "digit"]
            .iter()
            .any(|w| e.code.to_string().to_lowercase().contains(w));
        let (message, help) = stopped_in_an_integer
            .then(|| fraction_of_a_whole_number(before, &text[before.len()..]))
            .flatten()
            .unwrap_or_else(|| describe(&e.code, before));
        ConfigError {
            file: file.to_path_buf(),
            location: Some(location),
            message,
            help,
        }
    })
}

/// A number such as `2.5` or `1e12` where the field counts something: ron stops at the `.`
/// ("expected comma") or at the number ("invalid digit"), naming neither the number nor the fix.
fn fraction_of_a_whole_number(before: &str, after: &str) -> Option<(String, Option<String>)> {
    let digits = before.trim_end_matches(|c: char| c.is_ascii_digit());
    let whole = &before[digits.strip_suffix('-').unwrap_or(digits).len()..];
    let rest = &after[..after
        .find(|c: char| !(c.is_ascii_alphanumeric() || matches!(c, '.' | '+' | '-' | '_')))
        .unwrap_or(after.len())];
    let number = format!("{whole}{rest}");
    let fractional = number
        .trim_start_matches('-')
        .starts_with(|c: char| c.is_ascii_digit())
        && number.contains(['.', 'e', 'E'])
        && number.parse::<f64>().is_ok();
    fractional.then(|| {
        (
            format!("expected a whole number, found `{number}`"),
            Some(
                "this field counts something: write an integer, e.g. `1000000` rather than `1e6`"
                    .into(),
            ),
        )
    })
}

/// The error's message, and help naming the valid choices and the likeliest intended one.
/// `before` is the config text up to the error, to tell a plugin's `type:` from other enums.
fn describe(code: &ron::Error, before: &str) -> (String, Option<String>) {
    use ron::Error as E;
    match code {
        E::NoSuchEnumVariant {
            expected, found, ..
        } if names_a_plugin(before) => describe_unknown_plugin(expected, found, before),
        E::NoSuchEnumVariant {
            expected, found, ..
        } => {
            let mut help = format!("valid variants: {}", expected.join(", "));
            if let Some(best) = closest(found, expected.iter().copied()) {
                help = format!("did you mean `{best}`? {help}");
            }
            (format!("unknown variant `{found}`"), Some(help))
        }
        E::NoSuchStructField {
            expected,
            found,
            outer,
        } => {
            let owner = outer
                .as_deref()
                .map(|o| format!(" in `{o}`"))
                .unwrap_or_default();
            let mut help = format!("valid fields: {}", expected.join(", "));
            if let Some(best) = closest(found, expected.iter().copied()) {
                help = format!("did you mean `{best}`? {help}");
            }
            (format!("unknown field `{found}`{owner}"), Some(help))
        }
        E::MissingStructField { field, outer } => {
            let owner = outer
                .as_deref()
                .map(|o| format!(" in `{o}`"))
                .unwrap_or_default();
            (
                format!("missing field `{field}`{owner}"),
                Some(format!("add `{field}: ...`")),
            )
        }
        E::InvalidValueForType { expected, found } => {
            (format!("expected {expected}, found {found}"), None)
        }
        // Errors inside a plugin's `cfg` reach us through typetag as text; recover the same help.
        E::Message(text) => describe_message(text),
        other => (other.to_string(), None),
    }
}

/// The backticked names of a message: for ron's field errors, the field found then those expected.
fn backticked(text: &str) -> Vec<&str> {
    text.split('`').skip(1).step_by(2).collect()
}

fn describe_message(text: &str) -> (String, Option<String>) {
    let names = backticked(text);
    if text.starts_with("Unexpected missing field named") {
        if let Some(field) = names.first() {
            let owner = names
                .get(1)
                .map(|o| format!(" in `{o}`"))
                .unwrap_or_default();
            return (
                format!("missing field `{field}`{owner}"),
                Some(format!("add `{field}: ...`")),
            );
        }
    }
    if text.starts_with("Unexpected field named") {
        if let Some((found, expected)) = names.split_first() {
            let mut help = format!("valid fields: {}", expected.join(", "));
            if let Some(best) = closest(found, expected.iter().copied()) {
                help = format!("did you mean `{best}`? {help}");
            }
            return (format!("unknown field `{found}`"), Some(help));
        }
    }
    (text.to_string(), None)
}

/// A plugin entry reads `(type: "Name", cfg: ...)`: the error sits just after `type:`.
fn names_a_plugin(before: &str) -> bool {
    before.trim_end_matches('"').trim_end().ends_with("type:")
}

/// typetag does not say which trait it was deserializing, so the family comes from the names it
/// expected, else from the field holding the entry (`optimizer:`, `constraints:`, `policies:`).
fn describe_unknown_plugin(
    expected: &[&str],
    found: &str,
    before: &str,
) -> (String, Option<String>) {
    let family = Family::ALL
        .into_iter()
        .find(|f| {
            expected
                .first()
                .is_some_and(|e| registry::names(*f).contains(e))
        })
        .or_else(|| family_from_context(before));
    let families: Vec<Family> = family.map_or(Family::ALL.to_vec(), |f| vec![f]);
    let valid: Vec<&str> = families.iter().flat_map(|f| registry::names(*f)).collect();
    let what = family.map_or("plugin".to_string(), |f| f.trait_name().to_string());
    let mut help = String::new();
    if let Some(best) = closest(found, valid.iter().copied()) {
        help.push_str(&format!("did you mean `{best}`? "));
    }
    let lists: Vec<String> = families
        .iter()
        .map(|f| format!("{}: {}", f.trait_name(), registry::names(*f).join(", ")))
        .collect();
    help.push_str(&format!(
        "valid names ({}); `spectra list` shows each with its default config",
        lists.join("; ")
    ));
    (format!("unknown {what} `{found}`"), Some(help))
}

fn family_from_context(before: &str) -> Option<Family> {
    [
        ("optimizer:", Family::Optimizer),
        ("constraints:", Family::WeightConstraint),
        ("policies:", Family::KvEvictionPolicy),
        ("policy:", Family::KvEvictionPolicy),
    ]
    .into_iter()
    .filter_map(|(key, family)| before.rfind(key).map(|at| (at, family)))
    .max_by_key(|(at, _)| *at)
    .map(|(_, family)| family)
}

/// The text from the start up to a 1-based line:col.
fn text_before(text: &str, at: Location) -> &str {
    let line_start: usize = text
        .split_inclusive('\n')
        .take(at.line.saturating_sub(1))
        .map(str::len)
        .sum();
    let line = &text[line_start..];
    let col_bytes: usize = line
        .chars()
        .take(at.col.saturating_sub(1))
        .map(char::len_utf8)
        .sum();
    &text[..(line_start + col_bytes).min(text.len())]
}

/// The 1-based line:col of the first occurrence of `needle` (a plugin name is looked up as `"Name"`).
fn locate(text: &str, needle: &str) -> Option<Location> {
    let quoted = format!("\"{needle}\"");
    let offset = text.find(&quoted).or_else(|| text.find(needle))?;
    Some(location_of(text, offset))
}

/// The 1-based line:col of the first `needle` after the first `anchor`: a sweep's grid field within
/// its method, where several methods have fields of that name.
pub fn locate_after(text: &str, anchor: &str, needle: &str) -> Option<Location> {
    let start = text.find(anchor)?;
    let offset = start + text[start..].find(needle)?;
    Some(location_of(text, offset))
}

fn location_of(text: &str, offset: usize) -> Location {
    let before = &text[..offset];
    let line = before.matches('\n').count() + 1;
    let col = before.rfind('\n').map_or(offset, |nl| offset - nl - 1) + 1;
    Location { line, col }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn locate_counts_lines_and_columns_from_one() {
        let text = "(\n  a: 1,\n  type: \"Muon\",\n)";
        assert_eq!(locate(text, "Muon"), Some(Location { line: 3, col: 9 }));
        assert_eq!(locate(text, "a:"), Some(Location { line: 2, col: 3 }));
        assert_eq!(locate(text, "zzz"), None);
        let two = "(name: \"a\", lr: 1),\n(name: \"b\", lr: 2)";
        assert_eq!(
            locate_after(two, "\"b\"", "lr"),
            Some(Location { line: 2, col: 13 })
        );
        assert_eq!(locate_after(two, "\"c\"", "lr"), None);
    }

    #[test]
    fn typetag_messages_get_the_same_help() {
        let (m, h) = describe_message("Unexpected missing field named `limit` in `MaxEntryClip`");
        assert_eq!(m, "missing field `limit` in `MaxEntryClip`");
        assert_eq!(h.unwrap(), "add `limit: ...`");
        let (m, h) =
            describe_message("Unexpected field named `limt`, expected `limit` or `sinks` instead");
        assert_eq!(m, "unknown field `limt`");
        assert_eq!(
            h.unwrap(),
            "did you mean `limit`? valid fields: limit, sinks"
        );
        assert_eq!(describe_message("something else").0, "something else");
    }

    #[test]
    fn a_fraction_where_a_count_belongs_names_the_number() {
        let (message, help) = fraction_of_a_whole_number("(\n  steps: 2", ".5,\n)").unwrap();
        assert_eq!(message, "expected a whole number, found `2.5`");
        assert!(help.unwrap().contains("integer"));
        let (message, _) = fraction_of_a_whole_number("batch_size: 1", "e12)").unwrap();
        assert_eq!(message, "expected a whole number, found `1e12`");
        let (message, _) = fraction_of_a_whole_number("batch_size: ", "1e12)").unwrap();
        assert_eq!(message, "expected a whole number, found `1e12`");
        let (message, _) = fraction_of_a_whole_number("seed: -1", ".5").unwrap();
        assert_eq!(message, "expected a whole number, found `-1.5`");
        assert!(fraction_of_a_whole_number("lr: ", ".5").is_none());
        assert!(fraction_of_a_whole_number("name: ", "\"a.b\"").is_none());
        assert!(fraction_of_a_whole_number("steps: 2", ", eval").is_none());
    }

    #[test]
    fn text_before_stops_at_the_position() {
        let text = "(\n  a: 1,\n  type: \"Muon\",\n)";
        let before = text_before(text, Location { line: 3, col: 10 });
        assert_eq!(before, "(\n  a: 1,\n  type: \"");
        assert!(names_a_plugin(before));
        assert!(!names_a_plugin("model: "));
    }

    #[test]
    fn plugin_family_comes_from_the_enclosing_field() {
        assert_eq!(
            family_from_context("groups: [(optimizer: (type: \""),
            Some(Family::Optimizer)
        );
        assert_eq!(
            family_from_context("(optimizer: (type: \"Sgd\"), constraints: [(type: \""),
            Some(Family::WeightConstraint)
        );
        assert_eq!(family_from_context("(type: \""), None);
    }
}
