//! Reading a CPU tensor's storage in place, and the errors of the fused ops built on it.

use candle_core::{CpuStorage, Layout, WithDType};

/// An error of the op named `op`, as candle's custom ops return them.
pub fn op_error(op: &str, what: impl std::fmt::Display) -> candle_core::Error {
    candle_core::Error::Msg(format!("{op}: {what}"))
}

/// `x` as the `i32` a kernel takes, or an error naming `op` and `what` `x` is.
pub fn kernel_int(op: &str, what: &str, x: usize) -> candle_core::Result<i32> {
    i32::try_from(x).map_err(|_| op_error(op, format!("{what} {x} exceeds the kernel's i32 range")))
}

/// The elements of a contiguous CPU storage of element type `T`; `op` names the op in the error.
pub fn contiguous_cpu<'a, T: WithDType>(
    storage: &'a CpuStorage,
    layout: &Layout,
    op: &str,
) -> candle_core::Result<&'a [T]> {
    let (start, end) = layout
        .contiguous_offsets()
        .ok_or_else(|| op_error(op, "expects contiguous operands"))?;
    let elements = storage
        .as_slice::<T>()
        .map_err(|e| op_error(op, format!("an operand has the wrong dtype: {e}")))?;
    Ok(&elements[start..end])
}
