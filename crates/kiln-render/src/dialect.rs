//! What a kernel language spells differently: types, literals, index arithmetic, loads and
//! stores, select, math, casts, declarations. Everything above this trait (the printers in
//! [`crate::printer`] and the shared kernel pieces in [`crate::parts`]) is written once.

use kiln_ir::{BinaryOp, DType, ReduceOp, UnaryOp};

/// An integer operation of index arithmetic (symbolic dimensions, strides, loop variables).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum IndexOp {
    Add,
    Sub,
    Mul,
    /// Truncating, like C.
    Div,
    /// Truncating remainder, like C.
    Rem,
    Min,
    Max,
}

impl IndexOp {
    /// `a op b` in a language with C's infix arithmetic (C, CUDA C and WGSL: `/` and `%`
    /// truncate in each) whose minimum and maximum are the functions `min_fn` and `max_fn`.
    pub fn c_like(self, a: &str, b: &str, min_fn: &str, max_fn: &str) -> String {
        let sym = match self {
            IndexOp::Add => "+",
            IndexOp::Sub => "-",
            IndexOp::Mul => "*",
            IndexOp::Div => "/",
            IndexOp::Rem => "%",
            IndexOp::Min => return format!("{min_fn}({a}, {b})"),
            IndexOp::Max => return format!("{max_fn}({a}, {b})"),
        };
        format!("({a} {sym} {b})")
    }
}

/// The spelling of one kernel language. Methods return source text; statements carry no
/// trailing newline or indentation (the caller lays them out).
pub trait Dialect: Sync {
    /// Type an element of `d` is stored as in a buffer.
    fn storage_type(&self, d: DType) -> &'static str;
    /// Type a value of `d` is computed in.
    fn compute_type(&self, d: DType) -> &'static str;
    /// Type of index arithmetic (`int64_t` in C, `i32` in WGSL).
    fn index_type(&self) -> &'static str;

    /// An index-typed integer literal.
    fn index_literal(&self, v: i64) -> String;
    /// `a op b` on indices.
    fn index_op(&self, op: IndexOp, a: &str, b: &str) -> String;
    /// An index clamped to `[lo, hi]` (a gathered row id): every language's prelude defines
    /// `kiln_clamp`.
    fn index_clamp(&self, v: &str, lo: &str, hi: &str) -> String {
        format!("kiln_clamp({v}, {lo}, {hi})")
    }
    /// A computed value (an id read from a buffer) converted to an index.
    fn value_to_index(&self, value: &str) -> String;
    /// An index converted to a value of `d` (an iota).
    fn index_to_value(&self, index: &str, d: DType) -> String;
    /// A statement declaring an immutable index variable.
    fn declare_index(&self, name: &str, value: &str) -> String;

    /// A literal of `d` in its compute type; `bits` holds an f64.
    fn literal(&self, bits: u64, d: DType) -> String;
    /// Element `index` of buffer `buf` holding `d`, converted to its compute type.
    fn load(&self, d: DType, buf: &str, index: &str) -> String;
    /// A statement storing `value` (in `d`'s compute type) as element `index` of `buf`.
    fn store(&self, d: DType, buf: &str, index: &str, value: &str) -> String;
    /// `cond ? a : b`, with `cond` a boolean or integer value.
    fn select(&self, cond: &str, a: &str, b: &str) -> String;
    /// A unary op (not `Cast`) on a value of `d`.
    fn unary(&self, op: UnaryOp, d: DType, x: &str) -> String;
    /// A binary op on operands of `operand`; `Lt` gives a boolean/int, the rest `operand`.
    fn binary(&self, op: BinaryOp, operand: DType, a: &str, b: &str) -> String;
    /// Converts a computed value of `from` to `to`.
    fn cast(&self, from: DType, to: DType, x: &str) -> String;
    /// Rounds an f32 computation to `d`'s precision where `d` is narrower (f16, bf16): every
    /// language's prelude defines `kiln_round_f16` and `kiln_round_bf16`.
    fn round(&self, d: DType, x: &str) -> String {
        match d {
            DType::F16 => format!("kiln_round_f16({x})"),
            DType::BF16 => format!("kiln_round_bf16({x})"),
            _ => x.to_string(),
        }
    }
    /// `acc op x` for a reduction computed in `d`'s compute type.
    fn reduce_combine(&self, op: ReduceOp, d: DType, acc: &str, x: &str) -> String;

    /// The name a kernel gives symbol `s` (a run-time dimension).
    fn sym_name(&self, s: &str) -> String {
        format!("s_{s}")
    }
    /// The name a kernel gives loop variable `v`.
    fn var_name(&self, v: u32) -> String {
        format!("v{v}")
    }
}
