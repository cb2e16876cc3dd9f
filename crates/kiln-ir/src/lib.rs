//! kiln's intermediate representation.
//!
//! A [`Graph`] is a DAG of a few primitive ops ([`Op`]) over tensors whose dimensions are
//! symbolic expressions ([`Expr`]). Views (reshape, permute, slice, expand) are ops too but cost
//! no kernel: the compiler folds them into index arithmetic. Everything richer (softmax, RMSNorm,
//! RoPE, ...) is built from primitives in [`composite`]. [`interpret`] is the plain reference
//! implementation that every backend is tested against.

pub mod composite;
pub mod dtype;
pub mod expr;
pub mod graph;
pub mod interp;
pub mod quant;
pub mod tensor;
#[cfg(any(test, feature = "testing"))]
pub mod testing;

pub use dtype::DType;
pub use expr::{contiguous_strides, numel, shape_str, Bindings, Expr};
pub use graph::{BinaryOp, Graph, Node, NodeId, Op, ReduceOp, UnaryOp, ViewOp};
pub use interp::interpret;
pub use quant::QuantType;
pub use tensor::Tensor;

/// Errors from building or running a graph. Each names the op or input and the shapes involved.
#[derive(Debug, thiserror::Error, Clone, PartialEq)]
pub enum IrError {
    #[error("{op}: {detail}")]
    Shape { op: String, detail: String },
    #[error("{op}: {detail}")]
    DType { op: String, detail: String },
    #[error("symbol '{symbol}' is not bound (bound symbols: {bound:?}); pass it as an input dimension or a binding")]
    UnboundSymbol { symbol: String, bound: Vec<String> },
    #[error("input '{name}': {detail}")]
    Input { name: String, detail: String },
    #[error("{what}")]
    Invalid { what: String },
}

pub type Result<T, E = IrError> = std::result::Result<T, E>;
