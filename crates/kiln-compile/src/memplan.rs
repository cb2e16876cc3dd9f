//! Memory plan: intermediate buffers share slots when their lifetimes do not overlap. Sizes are
//! symbolic, so the plan ([`kiln_program::MemoryPlan`]) assigns buffers to slots at compile
//! time and each slot's size is the largest of its buffers, evaluated per run.
//!
//! A step that writes in place (`Step::writes_into`) gives its output the storage of the
//! buffer it updates: the same slot, or — when that buffer is a graph input — the input's own
//! memory (`input_of`).

use kiln_program::{MemoryPlan, Program};

/// The plan of `p`: slots handed out in step order, an output's slot taken before the
/// step's last-read inputs give theirs back (a kernel never writes what it reads).
pub fn plan(p: &Program) -> MemoryPlan {
    let n = p.buffers.len();
    let mut last_use = vec![0usize; n];
    for (i, s) in p.steps.iter().enumerate() {
        for &b in s.inputs.iter().chain(&s.writes_into) {
            last_use[b] = i;
        }
    }
    for (_, b) in &p.outputs {
        last_use[*b] = usize::MAX; // outputs live to the end and are never reused
    }
    let mut slot_of: Vec<Option<usize>> = vec![None; n];
    let mut input_of: Vec<Option<usize>> = vec![None; n];
    let mut slots: Vec<Vec<usize>> = Vec::new();
    let mut free: Vec<usize> = Vec::new();
    // Slots are chosen by size: sizes are symbolic, so each buffer is ranked by its bytes
    // with every symbol at a nominal value (a 128-token prefill's rows). Taking whichever
    // slot was freed last let one wide buffer after another grow a different slot (a
    // 128-row prefill of the qwen3-0.6b shape held three 2 MiB slots where one suffices).
    let nominal = nominal_bytes(p);
    let mut slot_size: Vec<i64> = Vec::new();
    for (i, s) in p.steps.iter().enumerate() {
        match s.writes_into {
            // In place: the output takes over the updated buffer's storage.
            Some(dst) => match slot_of[dst] {
                Some(slot) => {
                    slots[slot].push(s.output);
                    slot_of[s.output] = Some(slot);
                }
                None => input_of[s.output] = Some(input_of[dst].unwrap_or(dst)),
            },
            // Allocate the output before freeing inputs: a kernel never writes what it reads.
            None => {
                let slot = match pick_free_slot(&free, &slot_size, nominal[s.output]) {
                    Some(k) => free.remove(k),
                    None => {
                        slots.push(Vec::new());
                        slot_size.push(0);
                        slots.len() - 1
                    }
                };
                slot_size[slot] = slot_size[slot].max(nominal[s.output]);
                slots[slot].push(s.output);
                slot_of[s.output] = Some(slot);
            }
        }
        let mut done: Vec<usize> = s
            .inputs
            .iter()
            .copied()
            .filter(|&b| last_use[b] == i && Some(b) != s.writes_into)
            .collect();
        done.sort();
        done.dedup();
        for b in done {
            if let Some(sl) = slot_of[b] {
                free.push(sl);
            }
        }
    }
    MemoryPlan {
        slot_of,
        slots,
        input_of,
    }
}

/// Symbol value at which buffer sizes are compared ([`nominal_bytes`]).
const NOMINAL_SYMBOL: i64 = 128;

/// Each buffer's bytes with every symbol at [`NOMINAL_SYMBOL`] (0 where that does not
/// evaluate): a ranking for slot choice only; the slots are sized per run from the true sizes.
fn nominal_bytes(p: &Program) -> Vec<i64> {
    let mut symbols = std::collections::BTreeSet::new();
    let sizes: Vec<_> = p.buffers.iter().map(|b| b.bytes()).collect();
    for e in &sizes {
        e.symbols(&mut symbols);
    }
    let b: kiln_ir::Bindings = symbols.into_iter().map(|s| (s, NOMINAL_SYMBOL)).collect();
    sizes
        .iter()
        .map(|e| e.eval(&b).unwrap_or(0).max(0))
        .collect()
}

/// Which free slot (its index in `free`) a buffer of `bytes` (nominal) takes: the smallest
/// that holds it already, else the largest (it grows the least), the latest freed among
/// equals; `None` when none is free.
fn pick_free_slot(free: &[usize], slot_size: &[i64], bytes: i64) -> Option<usize> {
    let covering = (0..free.len())
        .rev()
        .filter(|&k| slot_size[free[k]] >= bytes)
        .min_by_key(|&k| slot_size[free[k]]);
    covering.or_else(|| (0..free.len()).max_by_key(|&k| slot_size[free[k]]))
}

#[cfg(test)]
mod tests {
    use super::*;
    use kiln_ir::{DType, Expr, Graph};
    use kiln_program::{Buffer, Kernel, KernelKind, ScalarExpr, Step};

    #[test]
    fn a_chain_reuses_two_slots_and_outputs_keep_theirs() {
        // x -> a -> b -> c -> d (each a reduction, so each is its own kernel), output d.
        let mut g = Graph::new();
        let mut h = g
            .input("x", DType::F32, &[Expr::Const(4), Expr::Const(4)])
            .unwrap();
        for _ in 0..4 {
            let e = g.exp2(h).unwrap();
            let s = g.sum(e, 1).unwrap();
            h = g.mul(h, s).unwrap(); // broadcast back: a second kernel per round
        }
        g.output("y", h);
        // Unfused: each reduction in a kernel of its own (fused, each round is one kernel).
        let p = crate::extract::extract_with(&g, false);
        let plan = super::plan(&p);
        assert!(p.steps.len() >= 8);
        // Intermediates alternate between a few slots instead of one each.
        assert!(plan.slots.len() <= 3, "{} slots", plan.slots.len());
        // The output's slot holds nothing else after it.
        let out = p.outputs[0].1;
        let slot = plan.slot_of[out].unwrap();
        assert_eq!(*plan.slots[slot].last().unwrap(), out);
        // No two buffers whose lifetimes overlap share a slot: a step's inputs and output
        // are in different slots.
        for s in &p.steps {
            for &i in &s.inputs {
                if let (Some(a), Some(b)) = (plan.slot_of[i], plan.slot_of[s.output]) {
                    assert_ne!(a, b, "a kernel would overwrite what it reads");
                }
            }
        }
    }

    #[test]
    fn a_buffer_takes_the_smallest_free_slot_that_holds_it_else_the_largest() {
        // Slots 0..4 of 2 MiB, 0.5 MiB, 1 MiB, 0.5 MiB (nominal bytes), all free, slot 3
        // freed last.
        let sizes = [2 << 20, 1 << 19, 1 << 20, 1 << 19];
        let free = [0, 1, 2, 3];
        let at = |bytes| free[pick_free_slot(&free, &sizes, bytes).unwrap()];
        // A 2 MiB buffer goes where 2 MiB buffers were, not into a slot it would grow.
        assert_eq!(at(2 << 20), 0);
        assert_eq!(at(3 << 19), 0);
        assert_eq!(at(1 << 20), 2);
        // Among equals, the latest freed.
        assert_eq!(at(1 << 18), 3);
        // Wider than every slot: the largest grows the least.
        assert_eq!(at(4 << 20), 0);
        assert_eq!(pick_free_slot(&[], &sizes, 1), None);
    }

    fn buffer(input: Option<&str>) -> Buffer {
        Buffer {
            dtype: DType::F32,
            shape: vec![Expr::Const(8)],
            input: input.map(String::from),
        }
    }

    fn step(output: usize, inputs: Vec<usize>, writes_into: Option<usize>) -> Step {
        Step {
            kernel: Kernel {
                kind: KernelKind::Elementwise {
                    lets: vec![],
                    body: ScalarExpr::Const {
                        bits: 0f64.to_bits(),
                        dtype: DType::F32,
                    },
                },
                out_dtype: DType::F32,
                out_shape: vec![Expr::Const(8)],
                inputs: vec![DType::F32; inputs.len()],
            },
            output,
            inputs,
            writes_into,
        }
    }

    #[test]
    fn writes_in_place_share_storage_with_what_they_update() {
        // b0: input "cache"; b1: input "x"; b2 = f(x); b3 = b0 updated in place from b2;
        // b4 = f(b1); b5 = b4 updated in place from b1.
        let p = Program {
            graph: Graph::new(),
            buffers: (0..6)
                .map(|i| buffer(["cache", "x"].get(i).copied()))
                .collect(),
            steps: vec![
                step(2, vec![1], None),
                step(3, vec![2], Some(0)),
                step(4, vec![1], None),
                step(5, vec![1], Some(4)),
            ],
            outputs: vec![("cache_out".into(), 3), ("y".into(), 5)],
        };
        let plan = super::plan(&p);
        // Into an input: no slot, the input's storage.
        assert_eq!(plan.slot_of[3], None);
        assert_eq!(plan.input_of[3], Some(0));
        // Into an intermediate: the same slot.
        assert!(plan.slot_of[4].is_some());
        assert_eq!(plan.slot_of[5], plan.slot_of[4]);
        // b2 is dead after step 1; its slot may be reused by b4, but never b4's by anything.
        assert_ne!(plan.slot_of[2], None);
    }
}
