//! Memory plan: intermediate buffers share slots when their lifetimes do not overlap. Sizes are
//! symbolic, so the plan assigns buffers to slots at compile time and each slot's size is the
//! largest of its buffers, evaluated per run.

use crate::extract::Program;
use kiln_ir::{Bindings, IrError};

#[derive(Clone, Debug)]
pub struct MemoryPlan {
    /// Slot of each buffer; `None` for graph inputs (the caller's memory).
    pub slot_of: Vec<Option<usize>>,
    pub slots: Vec<Vec<usize>>,
}

impl MemoryPlan {
    pub fn new(p: &Program) -> MemoryPlan {
        let n = p.buffers.len();
        let mut last_use = vec![0usize; n];
        for (i, s) in p.steps.iter().enumerate() {
            for &b in &s.inputs {
                last_use[b] = i;
            }
        }
        for (_, b) in &p.outputs {
            last_use[*b] = usize::MAX; // outputs live to the end and are never reused
        }
        let mut slot_of = vec![None; n];
        let mut slots: Vec<Vec<usize>> = Vec::new();
        let mut free: Vec<usize> = Vec::new();
        for (i, s) in p.steps.iter().enumerate() {
            // Allocate the output before freeing inputs: a kernel never writes what it reads.
            let slot = free.pop().unwrap_or_else(|| {
                slots.push(Vec::new());
                slots.len() - 1
            });
            slots[slot].push(s.output);
            slot_of[s.output] = Some(slot);
            let mut done: Vec<usize> = s
                .inputs
                .iter()
                .copied()
                .filter(|&b| last_use[b] == i)
                .collect();
            done.sort();
            done.dedup();
            for b in done {
                if let Some(sl) = slot_of[b] {
                    free.push(sl);
                }
            }
        }
        MemoryPlan { slot_of, slots }
    }

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
