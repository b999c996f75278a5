//! Target norms from modular mass bookkeeping (docs/lipschitz.md §3.2; the models' trees, §6.4).
//!
//! A network is a tree of atoms (weight matrices, mass 1, sensitivity 1), bonds (no weights, mass 0,
//! a sensitivity of their own) and the ways they combine. A parameter's target norm is the share of the
//! network's unit "update budget" its mass earns, divided by the sensitivity of everything that runs
//! after it. Optimizers scale a unit update to the target norm, so each layer moves the output by an
//! amount proportional to its mass.

/// A module in the bookkeeping tree.
#[derive(Clone, Debug)]
pub enum Module {
    /// A weight matrix, named like the model's parameter.
    Atom(String),
    /// A weightless map with a Lipschitz constant (sensitivity); mass 0.
    Bond(f64),
    /// Children applied in order: `Sequence([first, second, ...])`.
    Sequence(Vec<Module>),
    /// Children applied to the same input, their outputs combined; the combined sensitivity is given
    /// explicitly because it depends on how they are combined (a sum adds, attention weighs by score).
    Parallel {
        children: Vec<Module>,
        sensitivity: f64,
    },
    /// The subtree's masses rescaled so that they total this.
    Tare(f64, Box<Module>),
}

impl Module {
    /// `(1 − a)·x + a·f(x)`: a convex residual around `f`.
    pub fn residual(a: f64, f: Module) -> Module {
        let identity_mass = Module::Bond(1.0 - a);
        let branch = Module::Sequence(vec![f, Module::Bond(a)]);
        let sensitivity = (1.0 - a) + branch.sensitivity();
        Module::Parallel {
            children: vec![identity_mass, branch],
            sensitivity,
        }
    }

    pub fn mass(&self) -> f64 {
        match self {
            Module::Atom(_) => 1.0,
            Module::Bond(_) => 0.0,
            Module::Sequence(children) | Module::Parallel { children, .. } => {
                children.iter().map(Module::mass).sum()
            }
            Module::Tare(total, _) => *total,
        }
    }

    pub fn sensitivity(&self) -> f64 {
        match self {
            Module::Atom(_) => 1.0,
            Module::Bond(s) => *s,
            Module::Sequence(children) => children.iter().map(Module::sensitivity).product(),
            Module::Parallel { sensitivity, .. } => *sensitivity,
            Module::Tare(_, child) => child.sensitivity(),
        }
    }

    /// Each atom's target norm when the whole tree has target `target`, in tree order.
    pub fn target_norms(&self, target: f64) -> Vec<(String, f64)> {
        let mut out = Vec::new();
        self.collect(target, 1.0, &mut out);
        out
    }

    /// `mass_scale` converts this subtree's raw masses into tared ones.
    fn collect(&self, target: f64, mass_scale: f64, out: &mut Vec<(String, f64)>) {
        match self {
            Module::Atom(name) => out.push((name.clone(), target)),
            Module::Bond(_) => {}
            Module::Tare(total, child) => {
                let raw = child.mass();
                if raw > 0.0 {
                    child.collect(target, total / raw, out);
                }
            }
            Module::Parallel { children, .. } => {
                let mass = self.mass();
                for c in children.iter().filter(|c| c.mass() > 0.0) {
                    c.collect(target * c.mass() / mass, mass_scale, out);
                }
            }
            Module::Sequence(children) => {
                // A child's share of the target, divided by the sensitivity of what runs after it: a
                // change in its output is amplified by that much on the way to the network's output.
                let mass: f64 = children.iter().map(|c| c.tared_mass(mass_scale)).sum();
                for (i, c) in children.iter().enumerate() {
                    let child_mass = c.tared_mass(mass_scale);
                    if child_mass == 0.0 {
                        continue;
                    }
                    let after: f64 = children[i + 1..].iter().map(Module::sensitivity).product();
                    c.collect(target * child_mass / mass / after, mass_scale, out);
                }
            }
        }
    }

    fn tared_mass(&self, mass_scale: f64) -> f64 {
        match self {
            Module::Tare(total, _) => *total,
            _ => self.mass() * mass_scale,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_chain_of_atoms_shares_the_target_equally() {
        let mlp = Module::Sequence(vec![
            Module::Atom("a".into()),
            Module::Bond(1.0),
            Module::Atom("b".into()),
            Module::Atom("c".into()),
        ]);
        for (_, t) in mlp.target_norms(1.0) {
            assert!((t - 1.0 / 3.0).abs() < 1e-15);
        }
    }

    #[test]
    fn a_sensitive_successor_shrinks_the_predecessors_target() {
        let m = Module::Sequence(vec![
            Module::Atom("a".into()),
            Module::Bond(4.0),
            Module::Atom("b".into()),
        ]);
        let t = m.target_norms(1.0);
        assert_eq!(t[0], ("a".into(), 0.5 / 4.0));
        assert_eq!(t[1], ("b".into(), 0.5));
    }
}
