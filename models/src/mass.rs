//! Target norms from modular mass bookkeeping (docs/lipschitz.md §3.2; the models' trees, §6.4).
//!
//! A network is a tree of atoms (weight matrices, mass 1, sensitivity 1), bonds (no weights, mass 0,
//! a sensitivity of their own) and the ways they combine. A parameter's target norm is the share of the
//! network's unit "update budget" its mass earns, divided by the sensitivity of everything that runs
//! after it. Optimizers scale a unit update to the target norm, so each layer moves the output by an
//! amount proportional to its mass.

use spectra_core::{Error, Param, Result};

/// A node of the bookkeeping tree.
#[derive(Clone, Debug)]
pub enum MassTree {
    /// A weight matrix: the index of its parameter in the model's list.
    Atom(usize),
    /// A weightless map with a Lipschitz constant (sensitivity); mass 0.
    Bond(f64),
    /// Children applied in order: `Sequence([first, second, ...])`.
    Sequence(Vec<MassTree>),
    /// Children applied to the same input, their outputs combined; the combined sensitivity is given
    /// explicitly because it depends on how they are combined (a sum adds, attention weighs by score).
    Parallel {
        children: Vec<MassTree>,
        sensitivity: f64,
    },
    /// The subtree's masses rescaled so that they total this.
    Tare(f64, Box<MassTree>),
}

impl MassTree {
    /// `(1 − a)·x + a·f(x)`: a convex residual around `f`.
    pub fn residual(a: f64, f: MassTree) -> MassTree {
        let identity_mass = MassTree::Bond(1.0 - a);
        let branch = MassTree::Sequence(vec![f, MassTree::Bond(a)]);
        let sensitivity = (1.0 - a) + branch.sensitivity();
        MassTree::Parallel {
            children: vec![identity_mass, branch],
            sensitivity,
        }
    }

    pub fn mass(&self) -> f64 {
        match self {
            MassTree::Atom(_) => 1.0,
            MassTree::Bond(_) => 0.0,
            MassTree::Sequence(children) | MassTree::Parallel { children, .. } => {
                children.iter().map(MassTree::mass).sum()
            }
            MassTree::Tare(total, _) => *total,
        }
    }

    pub fn sensitivity(&self) -> f64 {
        match self {
            MassTree::Atom(_) => 1.0,
            MassTree::Bond(s) => *s,
            MassTree::Sequence(children) => children.iter().map(MassTree::sensitivity).product(),
            MassTree::Parallel { sensitivity, .. } => *sensitivity,
            MassTree::Tare(_, child) => child.sensitivity(),
        }
    }

    /// Each atom's target norm when the whole tree has target 1: every parameter of `params` must be
    /// exactly one atom of the tree, and gets that atom's target norm.
    pub fn assign_target_norms(&self, params: &mut [Param]) -> Result<()> {
        let mut assigned = vec![false; params.len()];
        for (i, target) in self.target_norms(1.0) {
            let Some(param) = params.get_mut(i) else {
                return Err(Error::invalid(
                    "mass tree",
                    format!(
                        "an atom names parameter {i}, but the model has {}",
                        assigned.len()
                    ),
                ));
            };
            if std::mem::replace(&mut assigned[i], true) {
                return Err(Error::invalid(&param.name, "is two atoms of the mass tree"));
            }
            param.target_norm = target;
        }
        match assigned.iter().position(|&a| !a) {
            Some(i) => Err(Error::invalid(
                &params[i].name,
                "is no atom of the mass tree, so it has no target norm",
            )),
            None => Ok(()),
        }
    }

    /// Each atom's `(parameter index, target norm)` when the whole tree has target `target`, in
    /// tree order.
    pub fn target_norms(&self, target: f64) -> Vec<(usize, f64)> {
        let mut out = Vec::new();
        self.collect(target, 1.0, &mut out);
        out
    }

    /// `mass_scale` converts this subtree's raw masses into tared ones.
    fn collect(&self, target: f64, mass_scale: f64, out: &mut Vec<(usize, f64)>) {
        match self {
            MassTree::Atom(index) => out.push((*index, target)),
            MassTree::Bond(_) => {}
            MassTree::Tare(total, child) => {
                let raw = child.mass();
                if raw > 0.0 {
                    child.collect(target, total / raw, out);
                }
            }
            MassTree::Parallel { children, .. } => {
                let mass = self.mass();
                for c in children.iter().filter(|c| c.mass() > 0.0) {
                    c.collect(target * c.mass() / mass, mass_scale, out);
                }
            }
            MassTree::Sequence(children) => {
                // A child's share of the target, divided by the sensitivity of what runs after it: a
                // change in its output is amplified by that much on the way to the network's output.
                let mass: f64 = children.iter().map(|c| c.tared_mass(mass_scale)).sum();
                for (i, c) in children.iter().enumerate() {
                    let child_mass = c.tared_mass(mass_scale);
                    if child_mass == 0.0 {
                        continue;
                    }
                    let after: f64 = children[i + 1..]
                        .iter()
                        .map(MassTree::sensitivity)
                        .product();
                    c.collect(target * child_mass / mass / after, mass_scale, out);
                }
            }
        }
    }

    fn tared_mass(&self, mass_scale: f64) -> f64 {
        match self {
            MassTree::Tare(total, _) => *total,
            _ => self.mass() * mass_scale,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_chain_of_atoms_shares_the_target_equally() {
        let mlp = MassTree::Sequence(vec![
            MassTree::Atom(0),
            MassTree::Bond(1.0),
            MassTree::Atom(1),
            MassTree::Atom(2),
        ]);
        for (_, t) in mlp.target_norms(1.0) {
            assert!((t - 1.0 / 3.0).abs() < 1e-15);
        }
    }

    #[test]
    fn a_sensitive_successor_shrinks_the_predecessors_target() {
        let m = MassTree::Sequence(vec![
            MassTree::Atom(0),
            MassTree::Bond(4.0),
            MassTree::Atom(1),
        ]);
        let t = m.target_norms(1.0);
        assert_eq!(t[0], (0, 0.5 / 4.0));
        assert_eq!(t[1], (1, 0.5));
    }

    fn params(n: usize) -> Vec<Param> {
        (0..n)
            .map(|i| {
                let w = candle_core::Var::zeros(
                    (2, 2),
                    candle_core::DType::F32,
                    &candle_core::Device::Cpu,
                );
                Param::new(format!("w{i}"), w.unwrap(), spectra_core::ParamRole::Hidden)
            })
            .collect()
    }

    #[test]
    fn every_parameter_must_be_exactly_one_atom() {
        let chain = |atoms: &[usize]| {
            MassTree::Sequence(atoms.iter().map(|&i| MassTree::Atom(i)).collect())
        };
        let mut p = params(2);
        chain(&[0, 1]).assign_target_norms(&mut p).unwrap();
        assert_eq!((p[0].target_norm, p[1].target_norm), (0.5, 0.5));
        let missing = chain(&[0]).assign_target_norms(&mut params(2)).unwrap_err();
        assert!(
            missing.to_string().contains("w1") && missing.to_string().contains("no atom"),
            "{missing}"
        );
        let twice = chain(&[0, 0, 1])
            .assign_target_norms(&mut params(2))
            .unwrap_err();
        assert!(
            twice.to_string().contains("w0") && twice.to_string().contains("two atoms"),
            "{twice}"
        );
        let beyond = chain(&[0, 1, 2])
            .assign_target_norms(&mut params(2))
            .unwrap_err();
        assert!(beyond.to_string().contains("parameter 2"), "{beyond}");
    }
}
