//! One odd polynomial step, shared by the tensor path and the CPU kernel that apply it.

/// One odd polynomial step, σ ↦ aσ + bσ³ + cσ⁵ (a cubic step has c = 0).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct OddStep {
    pub a: f64,
    pub b: f64,
    pub c: f64,
}

impl OddStep {
    pub const fn new(a: f64, b: f64, c: f64) -> Self {
        OddStep { a, b, c }
    }

    /// The step applied to one singular value.
    pub fn eval(&self, sigma: f64) -> f64 {
        let s2 = sigma * sigma;
        sigma * (self.a + s2 * (self.b + s2 * self.c))
    }
}
