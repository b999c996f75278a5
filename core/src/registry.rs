//! The plugin registry. typetag (de)serializes trait objects by name; beside it an `inventory` list of
//! descriptors lets `spectra list` print every plugin and lets start-up find duplicate names, which
//! typetag alone would only report when a config happens to use one.

use std::collections::BTreeMap;

use crate::{Error, Result};

/// The three plugin traits.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Family {
    WeightConstraint,
    Optimizer,
    KvEvictionPolicy,
}

impl Family {
    pub const ALL: [Family; 3] = [
        Family::WeightConstraint,
        Family::Optimizer,
        Family::KvEvictionPolicy,
    ];

    /// The name used on the command line (`spectra list constraint`).
    pub fn cli_name(self) -> &'static str {
        match self {
            Family::WeightConstraint => "constraint",
            Family::Optimizer => "optimizer",
            Family::KvEvictionPolicy => "policy",
        }
    }

    pub fn trait_name(self) -> &'static str {
        match self {
            Family::WeightConstraint => "WeightConstraint",
            Family::Optimizer => "Optimizer",
            Family::KvEvictionPolicy => "KvEvictionPolicy",
        }
    }

    fn cli_plural(self) -> &'static str {
        match self {
            Family::WeightConstraint => "constraints",
            Family::Optimizer => "optimizers",
            Family::KvEvictionPolicy => "policies",
        }
    }

    /// Accepts the CLI name (singular or plural) or the trait name, any case.
    pub fn parse(s: &str) -> Option<Family> {
        Family::ALL.into_iter().find(|f| {
            [f.cli_name(), f.cli_plural(), f.trait_name()]
                .iter()
                .any(|n| s.eq_ignore_ascii_case(n))
        })
    }
}

impl std::fmt::Display for Family {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.trait_name())
    }
}

/// What `spectra list` shows of a plugin.
#[derive(Debug)]
pub struct PluginDescriptor {
    pub family: Family,
    /// The name a config uses in `type: "..."`; equal to the Rust type's name.
    pub name: &'static str,
    pub summary: &'static str,
    /// The module that registered it, to tell two registrations of one name apart.
    pub module: &'static str,
    /// The default configuration as a RON entry, `(type: "...", cfg: (...))`.
    pub default_config: fn() -> String,
}

inventory::collect!(PluginDescriptor);

/// Registers a plugin type for `spectra list` and the duplicate check. The type must implement the
/// family's trait with `#[typetag::serde]` and `Default` (its default configuration).
///
/// ```ignore
/// spectra_core::register_plugin!(WeightConstraint, MaxEntryClip, "Clips every entry to ±limit.");
/// ```
#[macro_export]
macro_rules! register_plugin {
    ($family:ident, $ty:ident, $summary:expr) => {
        $crate::inventory::submit! {
            $crate::registry::PluginDescriptor {
                family: $crate::registry::Family::$family,
                name: stringify!($ty),
                summary: $summary,
                module: module_path!(),
                default_config: || {
                    let boxed: Box<dyn $crate::$family> = Box::new(<$ty as Default>::default());
                    $crate::registry::to_ron(&boxed)
                },
            }
        }
    };
}

/// One-line RON, the form configs use.
pub fn to_ron<T: serde::Serialize + ?Sized>(value: &T) -> String {
    crate::ron_dialect::ron_options()
        .to_string(value)
        .unwrap_or_else(|e| format!("<cannot print as RON: {e}>"))
}

/// `value` as RON in spectra's dialect, laid out over lines (a config file `spectra` reads back),
/// or why it cannot be printed.
pub fn to_ron_pretty<T: serde::Serialize + ?Sized>(value: &T) -> Result<String, String> {
    crate::ron_dialect::ron_options()
        .to_string_pretty(value, ron::ser::PrettyConfig::default())
        .map_err(|e| format!("cannot print as RON: {e}"))
}

/// Every registered plugin, by family then name.
pub fn plugins() -> Vec<&'static PluginDescriptor> {
    let mut all: Vec<_> = inventory::iter::<PluginDescriptor>.into_iter().collect();
    all.sort_by(|a, b| (a.family, a.name, a.module).cmp(&(b.family, b.name, b.module)));
    all
}

/// The registered names of one family, sorted.
pub fn names(family: Family) -> Vec<&'static str> {
    plugins()
        .into_iter()
        .filter(|p| p.family == family)
        .map(|p| p.name)
        .collect()
}

/// Fails on the first name registered twice in one family, naming both registrations. Run at start-up.
pub fn check_unique() -> Result<()> {
    check_unique_in(plugins())
}

fn check_unique_in(plugins: Vec<&PluginDescriptor>) -> Result<()> {
    let mut seen: BTreeMap<(Family, &str), &PluginDescriptor> = BTreeMap::new();
    for p in plugins {
        if let Some(first) = seen.insert((p.family, p.name), p) {
            return Err(Error::DuplicatePlugin {
                family: p.family.trait_name(),
                name: p.name,
                first: first.module,
                second: p.module,
            });
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn descriptor(name: &'static str, module: &'static str) -> PluginDescriptor {
        PluginDescriptor {
            family: Family::WeightConstraint,
            name,
            summary: "",
            module,
            default_config: String::new,
        }
    }

    #[test]
    fn duplicate_names_are_reported_with_both_modules() {
        let a = descriptor("Clip", "crate_a::clip");
        let b = descriptor("Clip", "crate_b::clip");
        let c = descriptor("Other", "crate_b::other");
        let err = check_unique_in(vec![&a, &c, &b]).unwrap_err().to_string();
        assert!(
            err.contains("`Clip`")
                && err.contains("crate_a::clip")
                && err.contains("crate_b::clip"),
            "{err}"
        );
        assert!(check_unique_in(vec![&a, &c]).is_ok());
    }

    #[test]
    fn families_parse_from_cli_and_trait_names() {
        assert_eq!(Family::parse("constraint"), Some(Family::WeightConstraint));
        assert_eq!(Family::parse("Policies"), Some(Family::KvEvictionPolicy));
        assert_eq!(Family::parse("optimizer"), Some(Family::Optimizer));
        assert_eq!(Family::parse("gpu"), None);
    }
}
