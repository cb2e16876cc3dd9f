//! WGSL as a [`Dialect`]: how kiln's scalar and index expressions are spelled in the WebGPU
//! shading language.
//!
//! What differs from the C family, and why:
//! - **Index arithmetic is `i32`**: WGSL has no 64-bit integers. Every index a kernel computes
//!   is checked to fit (see [`crate::plan`]): constants when the kernel is generated, symbolic
//!   sizes at each launch.
//! - **No `?:`**: `select(f, t, cond)` evaluates both sides. Both sides are pure expressions
//!   here; a load on the side not taken reads a clamped, in-bounds address (wgpu's bounds
//!   checks) and its value is discarded.
//! - **Booleans are `i32` 0/1** while computing, as kiln's `Bool` is an integer in the
//!   interpreter (comparisons feed `max`, `%`, casts); conditions test `!= 0`.
//! - **Loads and stores go through per-buffer functions** (`ld_in0(i)`, `st_out(i, v)`) that the
//!   kernel template defines for each buffer's dtype and layout: bf16, f16 and bool are packed
//!   two (four) per `u32`, a large weight may span several bindings, and sub-word outputs are
//!   written with atomics so that two invocations never race on one word.
//! - **No infinity or NaN literals**: WGSL rejects constant expressions that evaluate to them,
//!   so they come from bit patterns at run time (`kiln_inf()`, `kiln_nan()`).
//!
//! The helpers the printed code calls are in `prelude.wgsl`, with the reference interpreter's
//! semantics (the same algorithms as `kiln-render`'s `cstyle_helpers.h`).

use kiln_ir::{BinaryOp, DType, ReduceOp, UnaryOp};
use kiln_render::{Dialect, IndexOp};

/// The WGSL dialect.
pub struct Wgsl;

/// Scalar helpers every kernel includes, with the interpreter's semantics.
pub const PRELUDE: &str = include_str!("prelude.wgsl");

impl Dialect for Wgsl {
    fn storage_type(&self, d: DType) -> &'static str {
        match d {
            DType::F32 => "f32",
            DType::I32 => "i32",
            // Packed: two f16/bf16 or four bools per word.
            DType::F16 | DType::BF16 | DType::Bool => "u32",
            // GGML blocks in words, read a byte at a time by `ld_<buf>` (codegen.rs).
            DType::Q8_0 | DType::Q4_0 | DType::Q4_K | DType::Q5_K | DType::Q6_K => "u32",
        }
    }

    fn compute_type(&self, d: DType) -> &'static str {
        match d {
            DType::F32 | DType::F16 | DType::BF16 => "f32",
            DType::Q8_0 | DType::Q4_0 | DType::Q4_K | DType::Q5_K | DType::Q6_K => "f32",
            DType::I32 | DType::Bool => "i32",
        }
    }

    fn index_type(&self) -> &'static str {
        "i32"
    }

    fn index_literal(&self, v: i64) -> String {
        if v == i32::MIN as i64 {
            // `2147483648i` does not exist.
            "(-2147483647i - 1i)".into()
        } else if v < 0 {
            format!("({v}i)")
        } else {
            // A value past i32 is rejected by the plan's checks before naga sees it.
            format!("{v}i")
        }
    }

    fn index_op(&self, op: IndexOp, a: &str, b: &str) -> String {
        // WGSL's i32 `/` and `%` truncate, like C.
        op.c_like(a, b, "min", "max")
    }

    fn value_to_index(&self, value: &str) -> String {
        format!("i32({value})")
    }

    fn index_to_value(&self, index: &str, d: DType) -> String {
        self.cast(DType::I32, d, index)
    }

    fn declare_index(&self, name: &str, value: &str) -> String {
        format!("let {name}: i32 = {value};")
    }

    fn literal(&self, bits: u64, d: DType) -> String {
        let v = f64::from_bits(bits);
        match d {
            DType::I32 => self.index_literal(v as i64 as i32 as i64),
            DType::Bool => format!("{}i", (v != 0.0) as i32),
            _ if v.is_nan() => "kiln_nan()".into(),
            _ if v.is_infinite() => {
                if v > 0.0 {
                    "kiln_inf()".into()
                } else {
                    "(-kiln_inf())".into()
                }
            }
            _ => {
                let f = v as f32;
                if f.is_infinite() {
                    // An f64 constant beyond f32's range rounds to infinity, as in C.
                    return self.literal(f64::from(f).to_bits(), d);
                }
                let s = format!("{f:?}f");
                if f.is_sign_negative() {
                    format!("({s})")
                } else {
                    s
                }
            }
        }
    }

    fn load(&self, _d: DType, buf: &str, index: &str) -> String {
        format!("ld_{buf}({index})")
    }

    fn store(&self, _d: DType, buf: &str, index: &str, value: &str) -> String {
        format!("st_{buf}({index}, {value});")
    }

    fn select(&self, cond: &str, a: &str, b: &str) -> String {
        format!("select({b}, {a}, ({cond}) != 0i)")
    }

    fn unary(&self, op: UnaryOp, d: DType, x: &str) -> String {
        let v = match op {
            UnaryOp::Exp2 => format!("exp2({x})"),
            UnaryOp::Log2 => format!("log2({x})"),
            UnaryOp::Sin => format!("sin({x})"),
            UnaryOp::Sqrt => format!("sqrt({x})"),
            UnaryOp::Recip => format!("(1.0f / {x})"),
            // i32 negation wraps in WGSL (the most negative value stays itself).
            UnaryOp::Neg => format!("(-{x})"),
            UnaryOp::Cast => unreachable!("casts go through Dialect::cast"),
        };
        self.round(d, &v)
    }

    fn binary(&self, op: BinaryOp, operand: DType, a: &str, b: &str) -> String {
        let int = matches!(operand, DType::I32 | DType::Bool);
        match op {
            // i32 `+` and `*` wrap in WGSL, as kiln's i32 arithmetic does.
            BinaryOp::Add => format!("({a} + {b})"),
            BinaryOp::Mul => format!("({a} * {b})"),
            BinaryOp::Mod if int => format!("kiln_imod({a}, {b})"),
            BinaryOp::Mod => format!("kiln_fmod({a}, {b})"),
            BinaryOp::Max if int => format!("max({a}, {b})"),
            BinaryOp::Max => format!("kiln_fmax({a}, {b})"),
            BinaryOp::Lt => format!("select(0i, 1i, {a} < {b})"),
        }
    }

    fn cast(&self, from: DType, to: DType, x: &str) -> String {
        let from_float = from.is_float();
        match to {
            // `bool(x)` is an unordered comparison (NaN is true, as in C); `x != 0.0` is not.
            DType::Bool if from_float => format!("select(0i, 1i, bool({x}))"),
            DType::Bool => format!("select(0i, 1i, ({x}) != 0i)"),
            DType::I32 if from_float => format!("kiln_f2i({x})"),
            // Bool and i32 are both i32 while computing.
            DType::I32 => x.to_string(),
            t => self.round(t, &format!("f32({x})")),
        }
    }

    fn reduce_combine(&self, op: ReduceOp, d: DType, acc: &str, x: &str) -> String {
        match op {
            ReduceOp::Sum => format!("{acc} + {x}"),
            ReduceOp::Max if d.is_float() => format!("kiln_fmax({acc}, {x})"),
            ReduceOp::Max => format!("max({acc}, {x})"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn literals_are_wgsl() {
        let d = Wgsl;
        assert_eq!(d.literal(1.5f64.to_bits(), DType::F32), "1.5f");
        assert_eq!(d.literal((-2.0f64).to_bits(), DType::F32), "(-2.0f)");
        assert_eq!(d.literal(1e-6f64.to_bits(), DType::F32), "1e-6f");
        assert_eq!(
            d.literal(f64::NEG_INFINITY.to_bits(), DType::F32),
            "(-kiln_inf())"
        );
        assert_eq!(d.literal(1e300f64.to_bits(), DType::F32), "kiln_inf()");
        assert_eq!(d.literal(f64::NAN.to_bits(), DType::BF16), "kiln_nan()");
        assert_eq!(
            d.literal((i32::MIN as f64).to_bits(), DType::I32),
            "(-2147483647i - 1i)"
        );
        assert_eq!(d.literal((-3.0f64).to_bits(), DType::I32), "(-3i)");
        assert_eq!(d.literal(2.0f64.to_bits(), DType::Bool), "1i");
    }
}
