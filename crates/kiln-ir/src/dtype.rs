//! Element types and the scalar conversions every backend and the interpreter share.

use half::{bf16, f16};
use serde::Serialize;
use std::fmt;

/// The element type of a tensor.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
pub enum DType {
    F32,
    F16,
    BF16,
    I32,
    /// One byte, 0 or 1: the result of comparisons.
    Bool,
}

impl DType {
    pub fn size_bytes(self) -> usize {
        match self {
            DType::F32 | DType::I32 => 4,
            DType::F16 | DType::BF16 => 2,
            DType::Bool => 1,
        }
    }

    pub fn is_float(self) -> bool {
        matches!(self, DType::F32 | DType::F16 | DType::BF16)
    }

    pub fn name(self) -> &'static str {
        match self {
            DType::F32 => "f32",
            DType::F16 => "f16",
            DType::BF16 => "bf16",
            DType::I32 => "i32",
            DType::Bool => "bool",
        }
    }

    /// Rounds an f64 value to what this dtype can hold (the interpreter's per-op rounding).
    /// f32 values are kept in f64: the interpreter is the more precise oracle there.
    pub fn round(self, v: f64) -> f64 {
        match self {
            DType::F32 => v,
            DType::F16 => f16::from_f32(v as f32).to_f64(),
            DType::BF16 => bf16::from_f32(v as f32).to_f64(),
            DType::I32 => {
                if v.is_nan() {
                    0.0
                } else {
                    (v.trunc() as i64 as i32) as f64
                }
            }
            DType::Bool => (v != 0.0) as u8 as f64,
        }
    }

    /// Encodes one value in this dtype's little-endian byte layout.
    pub fn write(self, v: f64, out: &mut [u8]) {
        match self {
            DType::F32 => out[..4].copy_from_slice(&(v as f32).to_le_bytes()),
            DType::F16 => out[..2].copy_from_slice(&f16::from_f32(v as f32).to_le_bytes()),
            DType::BF16 => out[..2].copy_from_slice(&bf16::from_f32(v as f32).to_le_bytes()),
            DType::I32 => out[..4].copy_from_slice(&(self.round(v) as i32).to_le_bytes()),
            DType::Bool => out[0] = (v != 0.0) as u8,
        }
    }

    /// Decodes one value from this dtype's little-endian byte layout.
    pub fn read(self, b: &[u8]) -> f64 {
        match self {
            DType::F32 => f32::from_le_bytes([b[0], b[1], b[2], b[3]]) as f64,
            DType::F16 => f16::from_le_bytes([b[0], b[1]]).to_f64(),
            DType::BF16 => bf16::from_le_bytes([b[0], b[1]]).to_f64(),
            DType::I32 => i32::from_le_bytes([b[0], b[1], b[2], b[3]]) as f64,
            DType::Bool => (b[0] != 0) as u8 as f64,
        }
    }
}

impl fmt::Display for DType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}
