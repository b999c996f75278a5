//! Device selection: `Cpu`, `Cuda(n)` or `Auto`.

use candle_core::Device;
use serde::{Deserialize, Serialize};

use crate::{Error, Result};

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum DeviceSpec {
    Cpu,
    Cuda(usize),
    /// The first GPU when spectra is built with `cuda` and one is present, else the CPU.
    #[default]
    Auto,
}

impl DeviceSpec {
    /// The candle device, or an error saying why the GPU cannot be had and what to do instead.
    /// `Auto` never fails: without a usable GPU it says so on stderr and takes the CPU.
    pub fn resolve(&self) -> Result<Device> {
        match *self {
            DeviceSpec::Cpu => Ok(Device::Cpu),
            DeviceSpec::Cuda(ordinal) => cuda(ordinal),
            DeviceSpec::Auto if !cfg!(feature = "cuda") => {
                eprintln!("spectra: device Auto: using the CPU (built without the `cuda` feature)");
                Ok(Device::Cpu)
            }
            DeviceSpec::Auto => match cuda(0) {
                Ok(device) => Ok(device),
                Err(reason) => {
                    eprintln!("spectra: device Auto: using the CPU ({reason})");
                    Ok(Device::Cpu)
                }
            },
        }
    }
}

impl std::fmt::Display for DeviceSpec {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            DeviceSpec::Cpu => write!(f, "Cpu"),
            DeviceSpec::Cuda(n) => write!(f, "Cuda({n})"),
            DeviceSpec::Auto => write!(f, "Auto"),
        }
    }
}

#[cfg(feature = "cuda")]
fn cuda(ordinal: usize) -> Result<Device> {
    // The driver library is loaded lazily; a missing driver or GPU must be an error, not a panic.
    match std::panic::catch_unwind(|| Device::new_cuda(ordinal)) {
        Ok(Ok(device)) => Ok(device),
        Ok(Err(e)) => Err(Error::Device(format!(
            "CUDA device {ordinal} is not available: {e}; check `nvidia-smi`, or use device: Cpu"
        ))),
        Err(_) => Err(Error::Device(format!(
            "CUDA device {ordinal}: the NVIDIA driver could not be loaded; install it, or use device: Cpu"
        ))),
    }
}

#[cfg(not(feature = "cuda"))]
fn cuda(ordinal: usize) -> Result<Device> {
    Err(Error::Device(format!(
        "Cuda({ordinal}) asked for, but this spectra was built without the `cuda` feature; \
         rebuild with `cargo build --release --features cuda`, or use device: Cpu"
    )))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cpu_and_auto_always_resolve() {
        assert!(DeviceSpec::Cpu.resolve().unwrap().is_cpu());
        assert!(DeviceSpec::Auto.resolve().is_ok());
    }

    #[cfg(not(feature = "cuda"))]
    #[test]
    fn cuda_without_the_feature_is_a_clear_error() {
        let err = DeviceSpec::Cuda(0).resolve().unwrap_err().to_string();
        assert!(err.contains("--features cuda"), "{err}");
    }
}
