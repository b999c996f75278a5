//! CUDA C kernels compiled at run time with NVRTC (through candle's cudarc) and loaded on a candle
//! [`CudaDevice`].
//!
//! A module's source is compiled once per process for each GPU architecture that asks for it (the
//! PTX is kept), and loaded once per device (candle keeps the loaded module under its name).
//! Compilation targets the device's own compute capability, so kernels may use anything that GPU
//! supports (double-precision `atomicAdd`, `__shfl_down_sync`, ...).

use std::collections::HashMap;
use std::sync::{Arc, Mutex, OnceLock};

use candle_core::cuda_backend::cudarc::driver::{CudaFunction, CudaStream, LaunchArgs};
use candle_core::cuda_backend::cudarc::nvrtc::{
    compile_ptx_with_opts, CompileError, CompileOptions,
};
use candle_core::CudaDevice;

use crate::{Error, Result};

/// The CUDA C source of one kernel module: a process-wide unique name and the code, whose kernels
/// are `extern "C" __global__` functions (so their names are not mangled). The code must not
/// `#include` anything: NVRTC is given no include path.
#[derive(Clone, Copy, Debug)]
pub struct KernelModule {
    pub name: &'static str,
    pub source: &'static str,
}

impl KernelModule {
    pub const fn new(name: &'static str, source: &'static str) -> Self {
        KernelModule { name, source }
    }
}

/// A loaded kernel and the stream of the device it was loaded for (candle's, so that it is ordered
/// with candle's own work on that device).
pub struct CudaKernel {
    function: CudaFunction,
    stream: Arc<CudaStream>,
}

impl CudaKernel {
    /// Collects the kernel's arguments (`.arg(&x)` in the kernel's parameter order), then
    /// `unsafe { .launch(config) }`.
    pub fn builder(&self) -> LaunchArgs<'_> {
        self.stream.launch_builder(&self.function)
    }
}

/// PTX (or the compiler's error) per (module name, architecture).
type PtxCache = Mutex<HashMap<(&'static str, String), Arc<OnceLock<Result<String, String>>>>>;

fn ptx_cache() -> &'static PtxCache {
    static CACHE: OnceLock<PtxCache> = OnceLock::new();
    CACHE.get_or_init(PtxCache::default)
}

/// The kernel `function` of `module`, ready to launch on `device`'s stream.
///
/// The first call for a module compiles it with NVRTC for the device's compute capability (later
/// calls, from any thread, reuse the PTX; a failed compilation is reported again without retrying),
/// and the first call per device loads the module there. Every failure is an [`Error::Device`]
/// naming the module and function: NVRTC's log for a compile error, the driver's error otherwise.
///
/// ```ignore
/// use candle_core::cuda_backend::cudarc::driver::{LaunchConfig, PushKernelArg};
///
/// static SCALE: KernelModule = KernelModule::new(
///     "spectra_scale",
///     r#"extern "C" __global__ void scale_f32(unsigned long long n, const float* x, float* y, float a) {
///            for (unsigned long long i = blockIdx.x * (unsigned long long)blockDim.x + threadIdx.x; i < n;
///                 i += (unsigned long long)blockDim.x * gridDim.x) y[i] = a * x[i];
///        }"#,
/// );
///
/// let func = cuda_function(device, &SCALE, "scale_f32")?;
/// let out = unsafe { device.alloc::<f32>(n) }?;
/// let (n_arg, factor) = (n as u64, 2.0f32); // arguments are borrowed until the launch
/// let mut launch = func.builder();
/// launch.arg(&n_arg).arg(&input_view).arg(&out).arg(&factor);
/// // SAFETY: the argument list matches the kernel's signature and every buffer holds n elements.
/// unsafe { launch.launch(LaunchConfig::for_num_elems(n as u32)) }
///     .map_err(|e| launch_error(&SCALE, "scale_f32", e))?;
/// ```
pub fn cuda_function(
    device: &CudaDevice,
    module: &KernelModule,
    function: &str,
) -> Result<CudaKernel> {
    let arch = compute_arch(device).map_err(|e| {
        failed(
            module,
            function,
            format!("cannot read the GPU's compute capability: {e}"),
        )
    })?;
    let slot = ptx_cache()
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
        .entry((module.name, arch.clone()))
        .or_default()
        .clone();
    let ptx = slot
        .get_or_init(|| compile(module, &arch))
        .as_ref()
        .map_err(|log| failed(module, function, log.clone()))?;
    // candle keeps the loaded modules of each device under their names.
    let function_on_device = device
        .get_or_load_custom_func(function, module.name, ptx)
        .map_err(|e| {
            failed(
                module,
                function,
                format!("loading the compiled module (or finding the function in it) failed: {e}"),
            )
        })?;
    Ok(CudaKernel {
        function: function_on_device.into_cuda_function(),
        stream: device.cuda_stream(),
    })
}

/// An [`Error::Device`] for a kernel launch that the driver refused.
pub fn launch_error(module: &KernelModule, function: &str, error: impl std::fmt::Display) -> Error {
    failed(module, function, format!("the launch failed: {error}"))
}

fn failed(module: &KernelModule, function: &str, what: impl std::fmt::Display) -> Error {
    Error::Device(format!(
        "CUDA kernel `{function}` of module `{}`: {what}",
        module.name
    ))
}

/// `compute_XY` for the device's compute capability X.Y.
fn compute_arch(device: &CudaDevice) -> std::result::Result<String, String> {
    let (major, minor) = device
        .cuda_stream()
        .context()
        .compute_capability()
        .map_err(|e| e.to_string())?;
    Ok(format!("compute_{major}{minor}"))
}

fn compile(module: &KernelModule, arch: &str) -> Result<String, String> {
    let options = CompileOptions {
        options: vec![format!("--gpu-architecture={arch}")],
        name: Some(format!("{}.cu", module.name)),
        ..CompileOptions::default()
    };
    compile_ptx_with_opts(module.source, options)
        .map(|ptx| ptx.to_src())
        .map_err(|e| match e {
            CompileError::CompileError { log, options, .. } => format!(
                "NVRTC could not compile it (options {options:?}):\n{}",
                log.to_string_lossy()
            ),
            other => format!("NVRTC failed: {other:?}"),
        })
}
