//! The checks of a plugin config's numbers, shared by the constraints and the optimizers: each names
//! the field and the value it refused.

/// `Ok` for a finite number > 0, else a message naming the field.
pub(crate) fn positive(field: &str, value: f64) -> Result<(), String> {
    if value > 0.0 && value.is_finite() {
        Ok(())
    } else {
        Err(format!("{field} must be a positive number, got {value}"))
    }
}

/// `Ok` for a finite number ≥ 0, else a message naming the field.
pub(crate) fn nonnegative(field: &str, value: f64) -> Result<(), String> {
    if value >= 0.0 && value.is_finite() {
        Ok(())
    } else {
        Err(format!("{field} must be a finite number ≥ 0, got {value}"))
    }
}

/// `Ok` for a number in [lo, hi], else a message naming the field.
pub(crate) fn in_range(field: &str, value: f64, lo: f64, hi: f64) -> Result<(), String> {
    if (lo..=hi).contains(&value) {
        Ok(())
    } else {
        Err(format!("{field} must be in [{lo}, {hi}], got {value}"))
    }
}

/// `Ok` for a number in [0, 1), the range of momentum and moment decay rates.
pub(crate) fn decay_rate(field: &str, value: f64) -> Result<(), String> {
    if (0.0..1.0).contains(&value) {
        Ok(())
    } else {
        Err(format!("{field} must be in [0, 1), got {value}"))
    }
}
