//! Element types and the scalar conversions every backend and the interpreter share.
//!
//! Besides the element types, five block-quantized storage types (GGML's `Q8_0`, `Q4_0`,
//! `Q4_K`, `Q5_K` and `Q6_K`, in GGUF's byte layout: [`crate::quant`]) that only weights may have: a tensor of
//! one is a graph input of rank 2 whose rows are whole blocks, read by nothing but matrix
//! products as their `b` operand (through views) and gathers as their table (an embedding
//! lookup, whose result is f32), and every value it holds is its ggml dequantization to f32.
//! Backends read the blocks inside their matmul and gather kernels; the interpreter
//! dequantizes them (the oracle).

use crate::quant::QuantType;
use half::{bf16, f16};
use serde::Serialize;
use std::fmt;

/// The element type of a tensor.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[allow(non_camel_case_types)]
pub enum DType {
    F32,
    F16,
    BF16,
    I32,
    /// One byte, 0 or 1: the result of comparisons.
    Bool,
    /// GGML Q8_0 blocks (32 values: f16 scale, 32 x i8), a weight's storage only.
    Q8_0,
    /// GGML Q4_0 blocks (32 values: f16 scale, 16 bytes of 4-bit values), a weight's only.
    Q4_0,
    /// GGML Q4_K super-blocks (256 values in 8 sub-blocks with 6-bit scales and mins), a
    /// weight's only.
    Q4_K,
    /// GGML Q5_K super-blocks (Q4_K's scales and mins, 5-bit values: a plane of fifth bits),
    /// a weight's only.
    Q5_K,
    /// GGML Q6_K super-blocks (256 values of 6 bits in 16 sub-blocks with i8 scales), a
    /// weight's only.
    Q6_K,
}

impl DType {
    /// The block-quantized storage types, in the order [`DType::name`] lists them.
    pub const QUANTIZED: [DType; 5] = [
        DType::Q8_0,
        DType::Q4_0,
        DType::Q4_K,
        DType::Q5_K,
        DType::Q6_K,
    ];

    /// Bytes of one element. Block-quantized types have no per-element size (see
    /// [`DType::storage_bytes`]): asking is a bug in the caller.
    pub fn size_bytes(self) -> usize {
        match self {
            DType::F32 | DType::I32 => 4,
            DType::F16 | DType::BF16 => 2,
            DType::Bool => 1,
            DType::Q8_0 | DType::Q4_0 | DType::Q4_K | DType::Q5_K | DType::Q6_K => {
                panic!("{self} is block-quantized: it has no per-element size")
            }
        }
    }

    /// The GGML format of a block-quantized type.
    pub fn quant(self) -> Option<QuantType> {
        match self {
            DType::Q8_0 => Some(QuantType::Q8_0),
            DType::Q4_0 => Some(QuantType::Q4_0),
            DType::Q4_K => Some(QuantType::Q4_K),
            DType::Q5_K => Some(QuantType::Q5_K),
            DType::Q6_K => Some(QuantType::Q6_K),
            _ => None,
        }
    }

    /// The block-quantized dtype of a GGML format, where kiln has one.
    pub fn from_quant(q: QuantType) -> Option<DType> {
        DType::QUANTIZED.into_iter().find(|d| d.quant() == Some(q))
    }

    pub fn is_quantized(self) -> bool {
        self.quant().is_some()
    }

    /// Values per storage block: 1 for element types.
    pub fn block_elems(self) -> usize {
        self.quant().map_or(1, |q| q.block_elems())
    }

    /// Bytes of `numel` values (rounded up to whole blocks for the quantized types).
    pub fn storage_bytes(self, numel: usize) -> usize {
        match self.quant() {
            Some(q) => numel.div_ceil(q.block_elems()) * q.block_bytes(),
            None => numel * self.size_bytes(),
        }
    }

    /// [`DType::storage_bytes`] of a symbolic element count.
    pub fn storage_bytes_expr(self, numel: crate::Expr) -> crate::Expr {
        match self.quant() {
            Some(q) => numel
                .add(q.block_elems() as i64 - 1)
                .div(q.block_elems() as i64)
                .mul(q.block_bytes() as i64),
            None => numel.mul(self.size_bytes() as i64),
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
            DType::Q8_0 => "q8_0",
            DType::Q4_0 => "q4_0",
            DType::Q4_K => "q4_k",
            DType::Q5_K => "q5_k",
            DType::Q6_K => "q6_k",
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
            // Values of a quantized weight are read whole (Tensor::to_f64_vec) and never
            // computed: nothing rounds to these types.
            DType::Q8_0 | DType::Q4_0 | DType::Q4_K | DType::Q5_K | DType::Q6_K => v,
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
            DType::Q8_0 | DType::Q4_0 | DType::Q4_K | DType::Q5_K | DType::Q6_K => {
                panic!("{self} is block-quantized: values are written a block at a time (kiln_ir::quant)")
            }
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
            DType::Q8_0 | DType::Q4_0 | DType::Q4_K | DType::Q5_K | DType::Q6_K => {
                panic!(
                    "{self} is block-quantized: values are read a block at a time (kiln_ir::quant)"
                )
            }
        }
    }
}

impl fmt::Display for DType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}
