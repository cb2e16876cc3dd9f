//! A memory plan: intermediate buffers share storage slots when their lifetimes do not
//! overlap. Sizes are symbolic, so the plan (made by the compiler's memory-plan stage) assigns
//! buffers to slots once, and each slot's size is the largest of its buffers, evaluated per
//! run ([`MemoryPlan::slot_bytes`]).
//!
//! A step that writes in place (`Step::writes_into`) gives its output the storage of the
//! buffer it updates: the same slot, or — when that buffer is a graph input — the input's own
//! memory (`input_of`).

use crate::program::Program;
use kiln_ir::{Bindings, Expr, IrError};

#[derive(Clone, Debug)]
pub struct MemoryPlan {
    /// Slot of each buffer; `None` for graph inputs (the caller's memory) and for outputs
    /// written in place into a graph input.
    pub slot_of: Vec<Option<usize>>,
    /// The buffers of each slot.
    pub slots: Vec<Vec<usize>>,
    /// For a buffer written in place into a graph input: that input's buffer.
    pub input_of: Vec<Option<usize>>,
}

impl MemoryPlan {
    /// Bytes of each slot under `b`.
    pub fn slot_bytes(&self, p: &Program, b: &Bindings) -> Result<Vec<usize>, IrError> {
        self.slot_sizes(p).eval(b)
    }

    /// The size expressions of each slot, made once for many runs ([`SlotSizes::eval`]).
    pub fn slot_sizes(&self, p: &Program) -> SlotSizes {
        let per_slot = self
            .slots
            .iter()
            .map(|bufs| {
                let mut sizes: Vec<Expr> = Vec::new();
                for &buf in bufs {
                    let bytes = p.buffers[buf].bytes();
                    if !sizes.contains(&bytes) {
                        sizes.push(bytes);
                    }
                }
                sizes
            })
            .collect();
        SlotSizes(per_slot)
    }
}

/// Each slot's distinct buffer sizes, as expressions built once: an executor sizes its slots
/// before every run (a decode step), and building each buffer's size expression anew was
/// most of that (hundreds of buffers, a few dozen distinct sizes).
#[derive(Clone, Debug)]
pub struct SlotSizes(Vec<Vec<Expr>>);

impl SlotSizes {
    /// Bytes of each slot under `b`: the largest of its buffers' sizes.
    pub fn eval(&self, b: &Bindings) -> Result<Vec<usize>, IrError> {
        self.0
            .iter()
            .map(|sizes| {
                sizes
                    .iter()
                    .try_fold(0usize, |m, e| Ok(m.max(e.eval(b)?.max(0) as usize)))
            })
            .collect()
    }
}
