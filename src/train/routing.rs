//! Parameter-group routing: which parameters a group's optimizer and constraints apply to.

use std::path::Path;

use spectra_core::config::Invalid;
use spectra_core::{Error, Param, ParamRole, Result};

use super::config::ParamGroupConfig;
use super::config_error::config_error;
use super::param_selector::glob_match;
pub use super::param_selector::ParamSelector;

/// A parameter and the group it was routed to.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RoutedParam {
    pub name: String,
    pub role: ParamRole,
    pub group: usize,
}

/// Routes each parameter to the first group with a matching selector. Every parameter must land in a
/// group, every group must receive a parameter, no matrix constraint may land on a 1-D parameter and
/// every parameter but a gain must be a matrix; config errors are placed in `config_file`.
pub fn route(
    params: &[Param],
    groups: &[ParamGroupConfig],
    config_file: &Path,
) -> Result<Vec<RoutedParam>> {
    let named: Vec<_> = params.iter().map(|p| (p.name.clone(), p.role)).collect();
    let routed = assign(&named, groups).map_err(|e| config_error(config_file, e))?;
    for p in params {
        if p.role != ParamRole::Vector && p.var.as_tensor().rank() != 2 {
            return Err(Error::invalid(
                &p.name,
                format!(
                    "a parameter with role {} must be a 2-D matrix; this one has shape {:?}",
                    p.role,
                    p.var.shape()
                ),
            ));
        }
    }
    Ok(routed)
}

/// The group of each named parameter, or what in the config is wrong.
fn assign(
    params: &[(String, ParamRole)],
    groups: &[ParamGroupConfig],
) -> std::result::Result<Vec<RoutedParam>, Invalid> {
    let all_names = || {
        params
            .iter()
            .map(|(n, r)| format!("{n} ({r})"))
            .collect::<Vec<_>>()
            .join(", ")
    };
    // A name pattern that matches nothing is a typo to point at before the parameter it failed to
    // pick is reported (which names the parameter, not the pattern).
    for g in groups {
        for s in &g.params {
            if let ParamSelector::Name(pattern) = s {
                if !params.iter().any(|(n, _)| glob_match(pattern, n)) {
                    let names = params.iter().map(|(n, _)| n.as_str());
                    let help = match spectra_core::suggest::closest(pattern, names) {
                        Some(best) => format!("did you mean `{best}`?"),
                        None => format!("the model's parameters are: {}", all_names()),
                    };
                    return Err(Invalid::new(format!(
                        "group `{}` matches no parameter: no parameter's name is `{pattern}`",
                        g.name
                    ))
                    .near(format!("{pattern:?}"))
                    .help(help));
                }
            }
        }
    }
    let mut routed = Vec::with_capacity(params.len());
    for (name, role) in params {
        let group = groups
            .iter()
            .position(|g| g.params.iter().any(|s| s.matches(name, *role)))
            .ok_or_else(|| {
                Invalid::new(format!("parameter `{name}` ({role}) matches no group"))
                    .near("groups")
                    .help("add a group for it, e.g. `params: [Role(Hidden)]`, or a catch-all `params: [All]` last")
            })?;
        if let Some(c) = groups[group].constraints.iter().find(|c| !c.accepts(*role)) {
            let cname = c.typetag_name();
            return Err(Invalid::new(format!(
                "group `{}` applies {cname} to `{name}` (role {role}), which it cannot constrain",
                groups[group].name
            ))
            .near(cname)
            .help(
                "route that parameter to a group without the constraint (groups match in order)",
            ));
        }
        routed.push(RoutedParam {
            name: name.clone(),
            role: *role,
            group,
        });
    }
    for (i, g) in groups.iter().enumerate() {
        if !routed.iter().any(|r| r.group == i) {
            return Err(
                Invalid::new(format!("group `{}` matches no parameter", g.name))
                    .near(g.name.clone())
                    .help(format!("the model's parameters are: {}", all_names())),
            );
        }
    }
    Ok(routed)
}
