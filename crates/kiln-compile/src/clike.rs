//! C-family source for scalar expressions, shared by the backends that emit C-like code
//! (C for the CPU, CUDA C for NVIDIA GPUs). The helper functions it calls (`kiln_fmax`,
//! `kiln_f16_to_f32`, ...) are defined by each backend's prelude with the same semantics.

use crate::{Operand, ScalarExpr};
use kiln_ir::ReduceOp;

/// The scalar helper functions every C-family prelude needs (see `clike_helpers.h`).
pub const HELPERS: &str = include_str!("clike_helpers.h");
const HELPERS_MARKER: &str = "/* KILN_CLIKE_HELPERS */";

/// A backend prelude with the shared helpers put in place of its marker.
pub fn prelude(backend_prelude: &str) -> String {
    assert!(
        backend_prelude.contains(HELPERS_MARKER),
        "prelude lacks {HELPERS_MARKER}"
    );
    backend_prelude.replace(HELPERS_MARKER, HELPERS)
}

/// `acc op x` for a reduction in its compute type.
pub fn reduce_combine(op: ReduceOp, d: DType, acc: &str, x: &str) -> String {
    match (op, d) {
        (ReduceOp::Sum, DType::I32) => format!("kiln_iadd({acc}, {x})"),
        (ReduceOp::Sum, _) => format!("{acc} + {x}"),
        (ReduceOp::Max, d) if d.is_float() => format!("kiln_fmax({acc}, {x})"),
        (ReduceOp::Max, _) => format!("kiln_imax({acc}, {x})"),
    }
}

/// Pointer to a matmul operand's batch slice: `in{i} + offset + sum(b_i * stride_i)`, with the
/// batch index variables `v0..` declared by the kernel.
pub fn operand_base(o: &Operand, batch: &[Expr]) -> String {
    let mut off = o.offset.clone();
    for (i, st) in o.batch_strides.iter().enumerate() {
        if !batch[i].is_const(1) {
            off = off.add(Expr::Var(i as u32).mul(st.clone()));
        }
    }
    format!("in{} + {}", o.input, c(&off))
}
use kiln_ir::{contiguous_strides, BinaryOp, DType, Expr, UnaryOp};
use std::fmt::Write;

pub fn sym_name(s: &str) -> String {
    format!("s_{s}")
}
pub fn var_name(v: u32) -> String {
    format!("v{v}")
}
pub fn c(e: &Expr) -> String {
    e.to_c(&sym_name, &var_name)
}

/// C type a dtype is stored as.
pub fn storage_type(d: DType) -> &'static str {
    match d {
        DType::F32 => "float",
        DType::F16 | DType::BF16 => "uint16_t",
        DType::I32 => "int32_t",
        DType::Bool => "uint8_t",
    }
}

/// C type a dtype is computed in.
pub fn compute_type(d: DType) -> &'static str {
    match d {
        DType::F32 | DType::F16 | DType::BF16 => "float",
        DType::I32 => "int32_t",
        DType::Bool => "int",
    }
}

pub fn load(d: DType, x: String) -> String {
    match d {
        DType::F16 => format!("kiln_f16_to_f32({x})"),
        DType::BF16 => format!("kiln_bf16_to_f32({x})"),
        DType::Bool => format!("(int)({x})"),
        _ => x,
    }
}

pub fn store(d: DType, x: String) -> String {
    match d {
        DType::F16 => format!("kiln_f32_to_f16({x})"),
        DType::BF16 => format!("kiln_f32_to_bf16({x})"),
        DType::Bool => format!("(uint8_t)(({x}) != 0)"),
        _ => x,
    }
}

/// Rounds a computed float to f16/bf16 precision where the dtype asks for it.
pub fn round(d: DType, x: String) -> String {
    match d {
        DType::F16 => format!("kiln_round_f16({x})"),
        DType::BF16 => format!("kiln_round_bf16({x})"),
        _ => x,
    }
}

pub fn literal(bits: u64, d: DType) -> String {
    let v = f64::from_bits(bits);
    match d {
        DType::I32 => format!("((int32_t){})", v as i64 as i32),
        DType::Bool => format!("{}", (v != 0.0) as i32),
        _ if v.is_nan() => "NAN".into(),
        _ if v.is_infinite() => {
            if v > 0.0 {
                "INFINITY".into()
            } else {
                "(-INFINITY)".into()
            }
        }
        _ => format!("{:?}f", v as f32),
    }
}

pub fn cast(from: DType, to: DType, x: String) -> String {
    match (from.is_float(), to) {
        (_, DType::Bool) => format!("(({x}) != 0)"),
        (true, DType::I32) => format!("kiln_f2i({x})"),
        (false, DType::I32) => format!("(int32_t)({x})"),
        (_, t) => round(t, format!("(float)({x})")),
    }
}

/// The C expression computing `e` (in its compute type).
pub fn scalar(e: &ScalarExpr) -> String {
    match e {
        ScalarExpr::Load {
            input,
            offset,
            dtype,
        } => load(*dtype, format!("in{input}[{}]", c(offset))),
        ScalarExpr::Const { bits, dtype } => literal(*bits, *dtype),
        ScalarExpr::Index { expr, dtype } => {
            cast(DType::I32, *dtype, format!("(int32_t)({})", c(expr)))
        }
        ScalarExpr::Unary { op, x, dtype } => {
            let xs = scalar(x);
            let int = *dtype == DType::I32;
            let v = match op {
                UnaryOp::Exp2 => format!("exp2f({xs})"),
                UnaryOp::Log2 => format!("log2f({xs})"),
                UnaryOp::Sin => format!("sinf({xs})"),
                UnaryOp::Sqrt => format!("sqrtf({xs})"),
                UnaryOp::Recip => format!("(1.0f / {xs})"),
                UnaryOp::Neg if int => format!("kiln_ineg({xs})"),
                UnaryOp::Neg => format!("(-{xs})"),
                UnaryOp::Cast => return cast(x.dtype(), *dtype, xs),
            };
            round(*dtype, v)
        }
        ScalarExpr::Binary { op, a, b, dtype } => {
            let (x, y) = (scalar(a), scalar(b));
            let int = a.dtype() == DType::I32;
            let v = match op {
                BinaryOp::Add if int => format!("kiln_iadd({x}, {y})"),
                BinaryOp::Mul if int => format!("kiln_imul({x}, {y})"),
                BinaryOp::Mod if int => format!("kiln_imod({x}, {y})"),
                BinaryOp::Max if int => format!("kiln_imax({x}, {y})"),
                BinaryOp::Add => format!("({x} + {y})"),
                BinaryOp::Mul => format!("({x} * {y})"),
                BinaryOp::Mod if a.dtype() == DType::Bool => format!("kiln_imod({x}, {y})"),
                BinaryOp::Mod => format!("fmodf({x}, {y})"),
                BinaryOp::Max if a.dtype().is_float() => format!("kiln_fmax({x}, {y})"),
                BinaryOp::Max => format!("kiln_imax({x}, {y})"),
                BinaryOp::Lt => return format!("({x} < {y})"),
            };
            round(*dtype, v)
        }
        ScalarExpr::Where { cond, a, b, .. } => {
            format!("(({}) ? {} : {})", scalar(cond), scalar(a), scalar(b))
        }
        ScalarExpr::Select {
            lhs,
            rhs,
            then,
            otherwise,
            ..
        } => {
            format!(
                "(({}) < ({}) ? {} : {})",
                c(lhs),
                c(rhs),
                scalar(then),
                scalar(otherwise)
            )
        }
    }
}

/// Declares `v{i}` for each axis of `shape` (except `skip`) from a flat index `flat`.
pub fn unflatten(shape: &[Expr], flat: &str, skip: Option<usize>, indent: &str, out: &mut String) {
    let strides = contiguous_strides(shape);
    for (i, d) in shape.iter().enumerate() {
        if Some(i) == skip || d.is_const(1) {
            continue;
        }
        let q = if strides[i].is_const(1) {
            flat.to_string()
        } else {
            format!("({flat} / {})", c(&strides[i]))
        };
        let v = if i == 0 { q } else { format!("{q} % {}", c(d)) };
        writeln!(out, "{indent}const int64_t {} = {v};", var_name(i as u32)).unwrap();
    }
}
