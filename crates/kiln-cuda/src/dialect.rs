//! The CUDA kernels' C dialect: the CPU's [`CStyle`] except for index division and remainder,
//! which go through the prelude's `kiln_div` and `kiln_rem` (issue 27).
//!
//! Why: a 64-bit signed division by a run-time value (a kernel's row decomposition by symbolic
//! sizes, a view's reshape) is a long inline subroutine in PTX that ptxas compiles anew at each
//! use — ~12-16 ms of NVRTC's CPU time in a row kernel. `kiln_div` and `kiln_rem` divide in
//! 32-bit unsigned arithmetic, which gives exactly C's `a / b` and `a % b` on `int64_t` while
//! both operands lie in `[0, 2^32)`: what the kernels divide are thread and row indices and
//! flat positions in the kernel's iteration, its output or its buffers, and their sizes, all
//! of which each launch checks against 2^32 (`launch::resolve`, an error naming the kernel
//! otherwise). Only division narrows: sums and products of indices and the byte offsets they
//! make stay 64-bit. (A fallback to 64-bit division past 2^32, in a shared non-inlined
//! function, was measured too: it made NVRTC ~25% slower than inlining it, not faster.)
//!
//! One more difference: a reciprocal square root (`1 / sqrt(x)` in f32, RMSNorm's scale) is
//! `rsqrtf(x)`, one `MUFU.RSQ` within 2 ulp of the correctly rounded result, rather than an
//! IEEE square root and an IEEE division (at most ~1 ulp together), whose slow paths ptxas
//! inlines: they were ~15% of NVRTC's work on a row kernel (issue 27).
//!
//! And a sine is the prelude's `kiln_sinf`, `sinf` in a function called rather than inlined,
//! so that kernels batched into one program share one compiled `sinf` (RoPE's two tables).
//!
//! The CPU backend keeps [`CStyle`] itself: its text (and its artifacts) do not change.

use kiln_ir::{BinaryOp, DType, ReduceOp, UnaryOp};
use kiln_render::cstyle::CStyle;
use kiln_render::{Dialect, IndexOp};

/// [`CStyle`] with index division and remainder through `kiln_div` / `kiln_rem`, `rsqrtf`
/// for the reciprocal of a square root and the prelude's `kiln_sinf` for a sine.
pub struct CudaC;

/// `x`'s argument where `x` is exactly one call `sqrtf(..)` (not, say, `sqrtf(a) * sqrtf(b)`).
fn sqrt_argument(x: &str) -> Option<&str> {
    let inner = x.strip_prefix("sqrtf(")?.strip_suffix(')')?;
    let mut depth = 0i32;
    for c in inner.chars() {
        match c {
            '(' => depth += 1,
            ')' => depth -= 1,
            _ => {}
        }
        if depth < 0 {
            return None;
        }
    }
    (depth == 0).then_some(inner)
}

impl Dialect for CudaC {
    fn index_op(&self, op: IndexOp, a: &str, b: &str) -> String {
        match op {
            IndexOp::Div => format!("kiln_div({a}, {b})"),
            IndexOp::Rem => format!("kiln_rem({a}, {b})"),
            _ => CStyle.index_op(op, a, b),
        }
    }

    fn storage_type(&self, d: DType) -> &'static str {
        CStyle.storage_type(d)
    }
    fn compute_type(&self, d: DType) -> &'static str {
        CStyle.compute_type(d)
    }
    fn index_type(&self) -> &'static str {
        CStyle.index_type()
    }
    fn index_literal(&self, v: i64) -> String {
        CStyle.index_literal(v)
    }
    fn value_to_index(&self, value: &str) -> String {
        CStyle.value_to_index(value)
    }
    fn index_to_value(&self, index: &str, d: DType) -> String {
        CStyle.index_to_value(index, d)
    }
    fn declare_index(&self, name: &str, value: &str) -> String {
        CStyle.declare_index(name, value)
    }
    fn literal(&self, bits: u64, d: DType) -> String {
        CStyle.literal(bits, d)
    }
    fn load(&self, d: DType, buf: &str, index: &str) -> String {
        CStyle.load(d, buf, index)
    }
    fn store(&self, d: DType, buf: &str, index: &str, value: &str) -> String {
        CStyle.store(d, buf, index, value)
    }
    fn select(&self, cond: &str, a: &str, b: &str) -> String {
        CStyle.select(cond, a, b)
    }
    fn unary(&self, op: UnaryOp, d: DType, x: &str) -> String {
        match (op, d, sqrt_argument(x)) {
            (UnaryOp::Recip, DType::F32, Some(arg)) => format!("rsqrtf({arg})"),
            (UnaryOp::Sin, _, _) => self.round(d, &format!("kiln_sinf({x})")),
            _ => CStyle.unary(op, d, x),
        }
    }
    fn binary(&self, op: BinaryOp, operand: DType, a: &str, b: &str) -> String {
        CStyle.binary(op, operand, a, b)
    }
    fn cast(&self, from: DType, to: DType, x: &str) -> String {
        CStyle.cast(from, to, x)
    }
    fn reduce_combine(&self, op: ReduceOp, d: DType, acc: &str, x: &str) -> String {
        CStyle.reduce_combine(op, d, acc, x)
    }
    fn sym_name(&self, s: &str) -> String {
        CStyle.sym_name(s)
    }
    fn var_name(&self, v: u32) -> String {
        CStyle.var_name(v)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_reciprocal_of_one_f32_square_root_is_rsqrtf() {
        let recip = |d, x| CudaC.unary(UnaryOp::Recip, d, x);
        assert_eq!(recip(DType::F32, "sqrtf((a + b))"), "rsqrtf((a + b))");
        assert_eq!(
            recip(DType::F32, "sqrtf(a) * sqrtf(b)"),
            "(1.0f / sqrtf(a) * sqrtf(b))"
        );
        assert_eq!(recip(DType::F32, "(a + b)"), "(1.0f / (a + b))");
        assert_eq!(CudaC.unary(UnaryOp::Sin, DType::F32, "x"), "kiln_sinf(x)");
        // A rounded square root (f16, bf16) keeps its rounding: no match.
        assert_eq!(
            recip(DType::BF16, "sqrtf(a)"),
            CStyle.unary(UnaryOp::Recip, DType::BF16, "sqrtf(a)")
        );
    }
}
