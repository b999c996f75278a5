//! `spectra list [FAMILY]`.

use spectra_core::registry::{self, Family};
use spectra_core::Error;

pub fn run(family: Option<&str>) -> Result<(), Error> {
    let wanted = match family {
        None => None,
        Some(s) => Some(Family::parse(s).ok_or_else(|| {
            Error::invalid(
                "family",
                format!("unknown plugin family `{s}`; use constraint, optimizer or policy"),
            )
        })?),
    };
    for family in Family::ALL
        .into_iter()
        .filter(|f| wanted.is_none_or(|w| w == *f))
    {
        println!("{} ({}):", family.trait_name(), family.cli_name());
        for p in registry::plugins()
            .into_iter()
            .filter(|p| p.family == family)
        {
            println!("  {:<22} {}", p.name, p.summary);
            println!("  {:<22} default: {}", "", (p.default_config)());
        }
        println!();
    }
    Ok(())
}
