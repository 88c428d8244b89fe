//! Device selection. CPU is the default and needs no GPU toolchain; the
//! `cuda` and `metal` cargo features compile in candle's GPU backends, and the
//! device is then chosen by configuration (`cpu`, `cuda`, `cuda:1`, `metal`).

use std::fmt;
use std::str::FromStr;

use candle_core::Device;
use serde::{Deserialize, Serialize};

use crate::error::ModelError;

/// Which device a model runs on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub enum DeviceConfig {
    /// The CPU (always available).
    #[default]
    Cpu,
    /// A CUDA GPU by ordinal; needs the `cuda` feature.
    Cuda(usize),
    /// A Metal GPU by ordinal; needs the `metal` feature.
    Metal(usize),
}

impl DeviceConfig {
    /// Opens the device; an error says which feature is missing.
    pub fn open(self) -> Result<Device, ModelError> {
        match self {
            Self::Cpu => Ok(Device::Cpu),
            #[cfg(feature = "cuda")]
            Self::Cuda(ordinal) => {
                Device::new_cuda(ordinal).map_err(|e| ModelError::Device(format!("cuda:{ordinal}: {e}")))
            }
            #[cfg(not(feature = "cuda"))]
            Self::Cuda(_) => {
                Err(ModelError::Device("this build has no CUDA support; rebuild with `--features cuda`".to_owned()))
            }
            #[cfg(feature = "metal")]
            Self::Metal(ordinal) => {
                Device::new_metal(ordinal).map_err(|e| ModelError::Device(format!("metal:{ordinal}: {e}")))
            }
            #[cfg(not(feature = "metal"))]
            Self::Metal(_) => {
                Err(ModelError::Device("this build has no Metal support; rebuild with `--features metal`".to_owned()))
            }
        }
    }
}

impl FromStr for DeviceConfig {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let (name, ordinal) = match text.split_once(':') {
            Some((name, ordinal)) => {
                (name, ordinal.parse::<usize>().map_err(|_| format!("bad device ordinal in `{text}`"))?)
            }
            None => (text, 0),
        };
        match name.to_ascii_lowercase().as_str() {
            "cpu" => Ok(Self::Cpu),
            "cuda" | "gpu" => Ok(Self::Cuda(ordinal)),
            "metal" => Ok(Self::Metal(ordinal)),
            _ => Err(format!("unknown device `{text}` (expected cpu, cuda[:N] or metal[:N])")),
        }
    }
}

impl TryFrom<String> for DeviceConfig {
    type Error = String;

    fn try_from(text: String) -> Result<Self, Self::Error> {
        text.parse()
    }
}

impl From<DeviceConfig> for String {
    fn from(device: DeviceConfig) -> Self {
        device.to_string()
    }
}

impl fmt::Display for DeviceConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Cpu => write!(f, "cpu"),
            Self::Cuda(ordinal) => write!(f, "cuda:{ordinal}"),
            Self::Metal(ordinal) => write!(f, "metal:{ordinal}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_prints() {
        assert_eq!("cpu".parse::<DeviceConfig>(), Ok(DeviceConfig::Cpu));
        assert_eq!("cuda:1".parse::<DeviceConfig>(), Ok(DeviceConfig::Cuda(1)));
        assert_eq!("metal".parse::<DeviceConfig>(), Ok(DeviceConfig::Metal(0)));
        assert!("tpu".parse::<DeviceConfig>().is_err());
        assert_eq!(DeviceConfig::Cuda(2).to_string(), "cuda:2");
    }

    #[test]
    fn cpu_always_opens() {
        assert!(DeviceConfig::Cpu.open().is_ok());
    }
}
