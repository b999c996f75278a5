//! Fused kernels: work that a chain of candle ops would do in several passes over memory, done in
//! one, with a CPU path and (feature `cuda`) a CUDA path compiled at run time by NVRTC (`nvrtc`).
//! Here: what every fused op shares (operand checks, storage access, launch geometry, the CUDA
//! prelude) and the per-head top-k the KV policies rank with; each training op sits with the one
//! optimizer that uses it (`spectra_plugins::optimizers::fused`).
//!
//! The training ops read several tensors and write several (AdamW: weight, gradient and both
//! moments in, weight and moments out), which candle's `CustomOp1/2/3` cannot express (one output
//! each): they read their operands' storage directly and wrap freshly written storage in new
//! tensors. Their outputs carry no backward op; optimizer updates are never differentiated.
//!
//! CPU and CUDA paths evaluate the same expression with the same correctly rounded IEEE operations in
//! the same order (the CUDA code uses `__fmul_rn`-style intrinsics, which the compiler never fuses
//! into an FMA), so the two devices agree bit for bit.

pub mod grid;
#[cfg(feature = "cuda")]
pub mod nvrtc;
pub mod top_k;

use candle_core::op::BackpropOp;
use candle_core::{DType, Layout, Shape, Storage, StorageRef, Tensor, WithDType};

use crate::{Error, Result};

/// A floating-point element type the fused ops run on (f32, f64).
pub trait Float: WithDType {
    fn sqrt(self) -> Self;
}

impl Float for f32 {
    fn sqrt(self) -> Self {
        f32::sqrt(self)
    }
}

impl Float for f64 {
    fn sqrt(self) -> Self {
        f64::sqrt(self)
    }
}

/// Checks the operands of an elementwise op (same shape, dtype and device; dtype f32 or f64) and
/// returns them contiguous (a non-contiguous one is copied).
pub fn elementwise_operands<const N: usize>(
    op: &str,
    operands: [(&str, &Tensor); N],
) -> Result<[Tensor; N]> {
    let (first_name, first) = operands[0];
    for (name, t) in &operands[1..] {
        let mismatch = if t.dims() != first.dims() {
            Some(format!("shape {:?} vs {:?}", t.dims(), first.dims()))
        } else if t.dtype() != first.dtype() {
            Some(format!("dtype {:?} vs {:?}", t.dtype(), first.dtype()))
        } else if !t.device().same_device(first.device()) {
            Some(format!(
                "device {:?} vs {:?}",
                t.device().location(),
                first.device().location()
            ))
        } else {
            None
        };
        if let Some(what) = mismatch {
            return Err(Error::invalid(
                op,
                format!("`{name}` and `{first_name}` differ in {what}; every operand must match"),
            ));
        }
    }
    if !matches!(first.dtype(), DType::F32 | DType::F64) {
        return Err(Error::invalid(
            op,
            format!(
                "runs on f32 or f64 tensors, got {:?}; keep parameters and optimizer state in f32",
                first.dtype()
            ),
        ));
    }
    let contiguous: Vec<Tensor> = operands
        .iter()
        .map(|(_, t)| t.contiguous())
        .collect::<candle_core::Result<_>>()?;
    Ok(contiguous
        .try_into()
        .unwrap_or_else(|_| unreachable!("one tensor per operand")))
}

pub use spectra_kernels::storage::{contiguous_cpu, kernel_int, op_error};

/// The elements of a contiguous CPU tensor's storage; `op` names the op in the error.
pub fn cpu_slice<'a, T: WithDType>(
    storage: &'a StorageRef<'_>,
    layout: &Layout,
    op: &str,
) -> Result<&'a [T]> {
    let Storage::Cpu(cpu) = &**storage else {
        return Err(Error::Device(format!(
            "{op}: the CPU path was given a tensor on another device"
        )));
    };
    Ok(contiguous_cpu(cpu, layout, op)?)
}

/// A new tensor (no backward op) owning `storage`, laid out contiguously as `shape`.
pub fn tensor_from(storage: Storage, shape: &Shape) -> Tensor {
    Tensor::from_storage(storage, shape.clone(), BackpropOp::none(), false)
}

/// A CPU tensor of `shape` holding `data`.
pub fn cpu_tensor<T: WithDType>(data: Vec<T>, shape: &Shape) -> Tensor {
    tensor_from(Storage::Cpu(T::to_cpu_storage_owned(data)), shape)
}

#[cfg(feature = "cuda")]
pub mod cuda {
    //! What the CUDA paths of the fused ops share: typed views of input storage, output allocation
    //! and the launch configuration of a [`Grid`](super::grid::Grid).

    use candle_core::cuda_backend::cudarc::driver::{
        CudaSlice, CudaView, DeviceRepr, LaunchConfig,
    };
    use candle_core::cuda_backend::CudaDType;
    use candle_core::{CudaDevice, CudaStorage, Layout, Shape, Storage, StorageRef, Tensor};

    use super::{op_error, tensor_from};
    use crate::{Error, Result};

    impl super::grid::Grid {
        /// The launch configuration cudarc takes.
        pub fn config(self) -> LaunchConfig {
            LaunchConfig {
                grid_dim: (self.blocks, 1, 1),
                block_dim: (self.threads, 1, 1),
                shared_mem_bytes: 0,
            }
        }
    }

    /// The elements of a contiguous CUDA tensor's storage, and its device; `op` names the op in
    /// the error.
    pub fn view<'a, T: CudaDType + DeviceRepr>(
        storage: &'a StorageRef<'_>,
        layout: &Layout,
        op: &str,
    ) -> Result<(CudaView<'a, T>, &'a CudaDevice)> {
        let Storage::Cuda(cuda) = &**storage else {
            return Err(Error::Device(format!(
                "{op}: the CUDA path was given a tensor on another device"
            )));
        };
        Ok((contiguous_cuda(cuda, layout, op)?, &cuda.device))
    }

    /// The elements of a contiguous CUDA storage of element type `T`; `op` names the op in the
    /// error.
    pub fn contiguous_cuda<'a, T: CudaDType>(
        storage: &'a CudaStorage,
        layout: &Layout,
        op: &str,
    ) -> candle_core::Result<CudaView<'a, T>> {
        let (start, end) = layout
            .contiguous_offsets()
            .ok_or_else(|| op_error(op, "expects contiguous operands"))?;
        let elements = storage
            .as_cuda_slice::<T>()
            .map_err(|e| op_error(op, format!("an operand has the wrong dtype: {e}")))?;
        Ok(elements.slice(start..end))
    }

    /// Uninitialized device memory for `n` elements, to be written entirely by a kernel.
    pub fn output<T: DeviceRepr>(device: &CudaDevice, n: usize) -> Result<CudaSlice<T>> {
        // SAFETY: every caller launches a kernel that writes all n elements before the buffer is
        // read.
        Ok(unsafe { device.alloc::<T>(n) }?)
    }

    /// A tensor of `shape` owning a kernel's output.
    pub fn tensor<T: CudaDType>(slice: CudaSlice<T>, device: &CudaDevice, shape: &Shape) -> Tensor {
        tensor_from(
            Storage::Cuda(candle_core::CudaStorage::wrap_cuda_slice(
                slice,
                device.clone(),
            )),
            shape,
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    #[test]
    fn storage_access_names_the_op_in_its_errors() {
        let t = Tensor::arange(0f32, 6.0, &Device::Cpu)
            .unwrap()
            .reshape((2, 3))
            .unwrap();
        let (storage, layout) = t.storage_and_layout();
        assert_eq!(cpu_slice::<f32>(&storage, layout, "op").unwrap()[4], 4.0);
        let err = cpu_slice::<f64>(&storage, layout, "Widget").unwrap_err();
        assert!(
            err.to_string()
                .contains("Widget: an operand has the wrong dtype"),
            "{err}"
        );
        let transposed = t.t().unwrap();
        let (storage, layout) = transposed.storage_and_layout();
        let err = cpu_slice::<f32>(&storage, layout, "Widget").unwrap_err();
        assert!(
            err.to_string()
                .contains("Widget: expects contiguous operands"),
            "{err}"
        );
        assert!(kernel_int("Widget", "a size", 1 << 31)
            .unwrap_err()
            .to_string()
            .contains("Widget: a size 2147483648 exceeds"));
    }
}
