//! Which parameters a group selects: a role, a name pattern, or all of them.

use serde::{Deserialize, Serialize};
use spectra_core::ParamRole;

/// Picks parameters for a group.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum ParamSelector {
    /// Every parameter.
    All,
    /// Parameters of one role.
    Role(ParamRole),
    /// Parameters whose name matches a glob (`*` matches any run of characters), e.g. `"blocks.*.attn.q"`.
    Name(String),
}

impl ParamSelector {
    pub fn matches(&self, name: &str, role: ParamRole) -> bool {
        match self {
            ParamSelector::All => true,
            ParamSelector::Role(r) => *r == role,
            ParamSelector::Name(pattern) => glob_match(pattern, name),
        }
    }
}

impl std::fmt::Display for ParamSelector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ParamSelector::All => write!(f, "All"),
            ParamSelector::Role(r) => write!(f, "Role({r})"),
            ParamSelector::Name(p) => write!(f, "Name({p:?})"),
        }
    }
}

/// `*` matches any (possibly empty) run of characters; everything else matches itself.
pub(super) fn glob_match(pattern: &str, name: &str) -> bool {
    let parts: Vec<&str> = pattern.split('*').collect();
    if parts.len() == 1 {
        return pattern == name;
    }
    let (first, last) = (parts[0], parts[parts.len() - 1]);
    if !name.starts_with(first) || name.len() < first.len() + last.len() || !name.ends_with(last) {
        return false;
    }
    let mut rest = &name[first.len()..name.len() - last.len()];
    for part in &parts[1..parts.len() - 1] {
        match rest.find(part) {
            Some(i) => rest = &rest[i + part.len()..],
            None => return false,
        }
    }
    true
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn globs_match_like_shells() {
        assert!(glob_match("blocks.*.attn.q", "blocks.2.attn.q"));
        assert!(!glob_match("blocks.*.attn.q", "blocks.2.attn.k"));
        assert!(glob_match("*", ""));
        assert!(glob_match("a*b*c", "aXbYc"));
        assert!(!glob_match("a*b*c", "acb"));
        assert!(glob_match("embed", "embed"));
        assert!(!glob_match("ab*ba", "aba"));
    }
}
