//! The C family: C for the CPU and CUDA C for NVIDIA GPUs spell scalars the same way (64-bit
//! index arithmetic, `?:`, `float` compute, 16-bit storage for f16/bf16). They differ only in
//! their preludes (function qualifiers, headers, bit casts) and their kernel structure, which
//! their backends own. The helper functions the printed code calls (`kiln_fmax`,
//! `kiln_bf16_to_f32`, ...) are defined once, in `cstyle_helpers.h`, with the reference
//! interpreter's semantics.

use crate::dialect::{Dialect, IndexOp};
use crate::parts::{AttentionParts, MatOperand};
use crate::printer::Printer;
use kiln_ir::{BinaryOp, DType, ReduceOp, UnaryOp};

/// The C-family dialect.
pub struct CStyle;

/// The scalar helpers every C-family prelude includes (after defining `KILN_FN` and the bit
/// casts `kiln_f2u` / `kiln_u2f`).
pub const HELPERS: &str = include_str!("cstyle_helpers.h");
const HELPERS_MARKER: &str = "/* KILN_CSTYLE_HELPERS */";

/// A backend prelude with the shared helpers put in place of its `/* KILN_CSTYLE_HELPERS */`
/// marker.
pub fn prelude(backend_prelude: &str) -> String {
    assert!(
        backend_prelude.contains(HELPERS_MARKER),
        "prelude lacks {HELPERS_MARKER}"
    );
    backend_prelude.replace(HELPERS_MARKER, HELPERS)
}

/// `const T *name = inN + base;`: a pointer to the start of a matmul operand's batch slice;
/// for a block-quantized operand the buffer itself (its elements are not bytes: the element
/// index adds the base, see [`MatOperand::at`]).
pub fn slice_pointer(name: &str, o: &MatOperand) -> String {
    if o.dtype.is_quantized() {
        return format!("const uint8_t *{name} = {};", o.buf);
    }
    format!(
        "const {} *{name} = {} + {};",
        CStyle.storage_type(o.dtype),
        o.buf,
        o.base
    )
}

/// An attention's batch slice once its batch index `kiln_b` is known: the batch's loop
/// variables, then the pointers to the Q, K^T and V slices (`pq`, `pk`, `pv`).
pub fn attention_slices(p: &Printer, a: &AttentionParts) -> Vec<String> {
    let mut s = p.unflatten(&a.batch, "kiln_b", None);
    s.extend([
        slice_pointer("pq", &a.q),
        slice_pointer("pk", &a.kt),
        slice_pointer("pv", &a.v),
    ]);
    s
}

impl Dialect for CStyle {
    fn storage_type(&self, d: DType) -> &'static str {
        match d {
            DType::F32 => "float",
            DType::F16 | DType::BF16 => "uint16_t",
            DType::I32 => "int32_t",
            DType::Bool => "uint8_t",
            // Blocks: the matmul kernels that know their layout read them, other loads (the
            // GPU matmuls, a gather) through `kiln_q*_at`.
            DType::Q8_0 | DType::Q4_0 | DType::Q4_K | DType::Q5_K | DType::Q6_K => "uint8_t",
        }
    }

    fn compute_type(&self, d: DType) -> &'static str {
        match d {
            DType::F32 | DType::F16 | DType::BF16 => "float",
            DType::Q8_0 | DType::Q4_0 | DType::Q4_K | DType::Q5_K | DType::Q6_K => "float",
            DType::I32 => "int32_t",
            DType::Bool => "int",
        }
    }

    fn index_type(&self) -> &'static str {
        "int64_t"
    }

    fn index_literal(&self, v: i64) -> String {
        if v < 0 {
            format!("({v}LL)")
        } else {
            format!("{v}LL")
        }
    }

    fn index_op(&self, op: IndexOp, a: &str, b: &str) -> String {
        op.c_like(a, b, "kiln_min", "kiln_max")
    }

    fn value_to_index(&self, value: &str) -> String {
        format!("(int64_t)({value})")
    }

    fn index_to_value(&self, index: &str, d: DType) -> String {
        self.cast(DType::I32, d, &format!("(int32_t)({index})"))
    }

    fn declare_index(&self, name: &str, value: &str) -> String {
        format!("const int64_t {name} = {value};")
    }

    fn literal(&self, bits: u64, d: DType) -> String {
        let v = f64::from_bits(bits);
        // Float constants are f32 in the kernel: an f64 past f32's range is an infinity there
        // (as an f32 buffer would store it), which C spells INFINITY, never `inff`.
        let f = v as f32;
        match d {
            DType::I32 => format!("((int32_t){})", v as i64 as i32),
            DType::Bool => format!("{}", (v != 0.0) as i32),
            _ if f.is_nan() => "NAN".into(),
            _ if f.is_infinite() => {
                if f > 0.0 {
                    "INFINITY".into()
                } else {
                    "(-INFINITY)".into()
                }
            }
            _ => format!("{f:?}f"),
        }
    }

    fn load(&self, d: DType, buf: &str, index: &str) -> String {
        let x = format!("{buf}[{index}]");
        match d {
            DType::F16 => format!("kiln_f16_to_f32({x})"),
            DType::BF16 => format!("kiln_bf16_to_f32({x})"),
            DType::Bool => format!("(int)({x})"),
            // Element `index` of a tensor of GGML blocks, dequantized as ggml does (a GPU
            // matmul's weight, a gather's table).
            DType::Q8_0 => format!("kiln_q8_0_at({buf}, {index})"),
            DType::Q4_0 => format!("kiln_q4_0_at({buf}, {index})"),
            DType::Q4_K => format!("kiln_q4_k_at({buf}, {index})"),
            DType::Q5_K => format!("kiln_q5_k_at({buf}, {index})"),
            DType::Q6_K => format!("kiln_q6_k_at({buf}, {index})"),
            _ => x,
        }
    }

    fn store(&self, d: DType, buf: &str, index: &str, value: &str) -> String {
        let v = match d {
            DType::F16 => format!("kiln_f32_to_f16({value})"),
            DType::BF16 => format!("kiln_f32_to_bf16({value})"),
            DType::Bool => format!("(uint8_t)(({value}) != 0)"),
            _ => value.to_string(),
        };
        format!("{buf}[{index}] = {v};")
    }

    fn select(&self, cond: &str, a: &str, b: &str) -> String {
        format!("(({cond}) ? {a} : {b})")
    }

    fn unary(&self, op: UnaryOp, d: DType, x: &str) -> String {
        let v = match op {
            UnaryOp::Exp2 => format!("exp2f({x})"),
            UnaryOp::Log2 => format!("log2f({x})"),
            UnaryOp::Sin => format!("sinf({x})"),
            UnaryOp::Sqrt => format!("sqrtf({x})"),
            UnaryOp::Recip => format!("(1.0f / {x})"),
            UnaryOp::Neg if d == DType::I32 => format!("kiln_ineg({x})"),
            UnaryOp::Neg => format!("(-{x})"),
            UnaryOp::Cast => unreachable!("casts go through Dialect::cast"),
        };
        self.round(d, &v)
    }

    fn binary(&self, op: BinaryOp, operand: DType, a: &str, b: &str) -> String {
        let int = operand == DType::I32;
        match op {
            BinaryOp::Add if int => format!("kiln_iadd({a}, {b})"),
            BinaryOp::Mul if int => format!("kiln_imul({a}, {b})"),
            BinaryOp::Mod if int || operand == DType::Bool => format!("kiln_imod({a}, {b})"),
            BinaryOp::Max if operand.is_float() => format!("kiln_fmax({a}, {b})"),
            BinaryOp::Max => format!("kiln_imax({a}, {b})"),
            BinaryOp::Add => format!("({a} + {b})"),
            BinaryOp::Mul => format!("({a} * {b})"),
            BinaryOp::Mod => format!("fmodf({a}, {b})"),
            BinaryOp::Lt => format!("({a} < {b})"),
        }
    }

    fn cast(&self, from: DType, to: DType, x: &str) -> String {
        match (from.is_float(), to) {
            (_, DType::Bool) => format!("(({x}) != 0)"),
            (true, DType::I32) => format!("kiln_f2i({x})"),
            (false, DType::I32) => format!("(int32_t)({x})"),
            (_, t) => self.round(t, &format!("(float)({x})")),
        }
    }

    fn reduce_combine(&self, op: ReduceOp, d: DType, acc: &str, x: &str) -> String {
        match (op, d) {
            (ReduceOp::Sum, DType::I32) => format!("kiln_iadd({acc}, {x})"),
            (ReduceOp::Sum, _) => format!("{acc} + {x}"),
            (ReduceOp::Max, d) if d.is_float() => format!("kiln_fmax({acc}, {x})"),
            (ReduceOp::Max, _) => format!("kiln_imax({acc}, {x})"),
        }
    }
}

/// `const int64_t M = .., N = ..;`: a kernel's sizes ([`crate::parts::MatMul::sizes`],
/// [`crate::parts::AttentionParts::sizes`]) in one C declaration.
pub fn declare_sizes(sizes: &[(&str, &str)]) -> String {
    let list: Vec<String> = sizes.iter().map(|(n, v)| format!("{n} = {v}")).collect();
    format!("const int64_t {};", list.join(", "))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn non_finite_and_out_of_range_constants_are_valid_c() {
        let lit = |v: f64, d| CStyle.literal(v.to_bits(), d);
        assert_eq!(lit(1.5, DType::F32), "1.5f");
        assert_eq!(lit(1e39, DType::F32), "INFINITY");
        assert_eq!(lit(-1e39, DType::BF16), "(-INFINITY)");
        assert_eq!(lit(f64::INFINITY, DType::F16), "INFINITY");
        assert_eq!(lit(f64::NEG_INFINITY, DType::F32), "(-INFINITY)");
        assert_eq!(lit(f64::NAN, DType::F32), "NAN");
        assert_eq!(lit(1e-50, DType::F32), "0.0f");
        assert_eq!(lit(3.0e38, DType::F32), "3e38f");
        for v in [1e39, -1e300, f64::MAX] {
            assert!(!lit(v, DType::F32).contains("inf"), "{v}");
        }
    }
}
