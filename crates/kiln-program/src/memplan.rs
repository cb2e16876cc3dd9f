//! A memory plan: intermediate buffers share storage slots when their lifetimes do not
//! overlap. Sizes are symbolic, so the plan (made by the compiler's memory-plan stage) assigns
//! buffers to slots once, and each slot's size is the largest of its buffers, evaluated per
//! run ([`MemoryPlan::slot_bytes`]).
//!
//! A step that writes in place (`Step::writes_into`) gives its output the storage of the
//! buffer it updates: the same slot, or — when that buffer is a graph input — the input's own
//! memory (`input_of`).

use crate::program::Program;
use kiln_ir::{Bindings, IrError};

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
        self.slots
            .iter()
            .map(|bufs| {
                bufs.iter().try_fold(0usize, |m, &buf| {
                    Ok(m.max(p.buffers[buf].bytes().eval(b)?.max(0) as usize))
                })
            })
            .collect()
    }
}
