//! A compiled model that runs several sequences in one forward: the batched graph
//! ([`build_batched_graph`]) over a pool of KV cache slots, one per sequence.
//!
//! Each slot's keys and values stay in the executor as carried values between forwards (no
//! switching, no save and restore); a slot's cache starts small and doubles, copying the
//! positions it holds, up to the pool's `positions` per slot.

use crate::config::QwenConfig;
use crate::model::{build_batched_graph, kv_cache_dtype, slot_symbols};
use crate::runtime::{grown_cache, load_executable, LoadOptions, MappedReads};
use crate::{ModelError, ModelSource};
use kiln_compile::CompileReport;
use kiln_ir::{DType, Tensor};
use kiln_runtime::Executable;
use std::collections::HashMap;

/// The first positions a slot's cache is given room for; it doubles when it is full.
const MIN_SLOT_CAPACITY: usize = 64;

/// One slot's work in a forward: `tokens` at `position` of the sequence in `slot` (which must
/// hold exactly `position` positions), and whether to return the logits of its last token.
#[derive(Clone, Copy, Debug)]
pub struct SlotWork<'a> {
    pub slot: usize,
    pub position: usize,
    pub tokens: &'a [u32],
    pub logits: bool,
}

/// What the executor holds for one slot.
#[derive(Clone, Copy, Debug, Default)]
struct SlotCache {
    /// Positions of the slot's sequence in its cache.
    len: usize,
    /// Positions its cache tensors have room for.
    capacity: usize,
}

pub struct BatchedModel {
    pub config: QwenConfig,
    pub exe: Box<dyn Executable>,
    pub report: CompileReport,
    slots: Vec<SlotCache>,
    /// Positions one slot holds at most (`kiln serve --ctx`).
    positions: usize,
    /// The dtype every slot's cache holds keys and values in ([`kv_cache_dtype`]).
    pub kv_dtype: DType,
    /// What the device reads of a mapped file: released after each forward.
    mapped: MappedReads,
}

impl BatchedModel {
    /// Compiles the batched graph for `slots` sequences of up to `positions` positions each,
    /// binds the weights and gives every slot an empty cache.
    pub fn load(
        source: &ModelSource,
        opts: &LoadOptions<'_>,
        slots: usize,
        positions: usize,
    ) -> Result<BatchedModel, ModelError> {
        if slots == 0 || positions == 0 {
            return Err(ModelError::Input(format!(
                "a batched model needs at least one slot of one position (got {slots} slots of \
                 {positions} positions)"
            )));
        }
        let build = |c: &QwenConfig, g| build_batched_graph(c, g, slots);
        let (config, exe, report, mapped) = load_executable(source, opts, &build)?;
        let positions = positions.min(config.max_position_embeddings);
        let kv_dtype = kv_cache_dtype(&config, &opts.graph);
        let mut model = BatchedModel {
            kv_dtype,
            mapped,
            config,
            exe,
            report,
            slots: vec![SlotCache::default(); slots],
            positions,
        };
        for slot in 0..slots {
            model.grow(slot, MIN_SLOT_CAPACITY.min(positions))?;
        }
        Ok(model)
    }

    /// Slots in the pool.
    pub fn slots(&self) -> usize {
        self.slots.len()
    }

    /// Positions the sequence in `slot` holds.
    pub fn slot_len(&self, slot: usize) -> usize {
        self.slots[slot].len
    }

    /// Empties `slot` for a new sequence. Its cache keeps its room; what it holds is never
    /// read again (attention reads the positions a sequence wrote, and the next sequence
    /// writes from position 0).
    pub fn clear_slot(&mut self, slot: usize) {
        self.slots[slot].len = 0;
    }

    /// Gives `slot`'s cache room for `capacity` positions, keeping the ones it holds.
    fn grow(&mut self, slot: usize, capacity: usize) -> Result<(), ModelError> {
        let c = &self.config;
        let (kv, d) = (c.num_kv_heads, c.head_dim);
        let SlotCache { len, .. } = self.slots[slot];
        for l in 0..c.num_layers {
            for name in ["k", "v"] {
                let input = format!("{name}_cache.{l}.{slot}");
                let new = if len > 0 {
                    grown_cache(&self.exe.carried(&input)?, capacity, len)
                } else {
                    Tensor::zeros(self.kv_dtype, &[kv, capacity, d])
                };
                self.exe
                    .carry(&format!("{name}_cache_out.{l}.{slot}"), &input, new)?;
            }
        }
        self.slots[slot].capacity = capacity;
        Ok(())
    }

    /// Checks one item of a forward's work: its slot exists, its position is where the
    /// sequence is, its tokens are in the vocabulary and fit in a slot.
    pub fn check_work(&self, w: &SlotWork<'_>) -> Result<(), ModelError> {
        let Some(state) = self.slots.get(w.slot) else {
            return Err(ModelError::Input(format!(
                "slot {} does not exist (the pool has {})",
                w.slot,
                self.slots.len()
            )));
        };
        if w.tokens.is_empty() {
            return Err(ModelError::Input(format!("slot {}: no tokens", w.slot)));
        }
        if w.position != state.len {
            return Err(ModelError::Input(format!(
                "slot {}: asked to run at position {}, the sequence is at {}",
                w.slot, w.position, state.len
            )));
        }
        if w.position + w.tokens.len() > self.positions {
            return Err(ModelError::Input(format!(
                "slot {}: {} positions exceed the {} a slot holds",
                w.slot,
                w.position + w.tokens.len(),
                self.positions
            )));
        }
        self.config.check_ids(w.tokens)
    }

    /// Checks `work` before anything runs: every item ([`BatchedModel::check_work`]), each
    /// slot once.
    fn check(&self, work: &[SlotWork<'_>]) -> Result<(), ModelError> {
        if work.is_empty() {
            return Err(ModelError::Input("no sequence to run".into()));
        }
        let mut seen = vec![false; self.slots.len()];
        for w in work {
            self.check_work(w)?;
            if std::mem::replace(&mut seen[w.slot], true) {
                return Err(ModelError::Input(format!(
                    "slot {} is given work twice in one forward",
                    w.slot
                )));
            }
        }
        Ok(())
    }

    /// Runs every slot's work in one forward and returns the logits (`vocab` floats) of each
    /// item that asked for them, in `work`'s order.
    pub fn forward(&mut self, work: &[SlotWork<'_>]) -> Result<Vec<Vec<f32>>, ModelError> {
        self.check(work)?;
        for w in work {
            let need = w.position + w.tokens.len();
            let state = self.slots[w.slot];
            if need > state.capacity {
                let capacity = need.max(2 * state.capacity).min(self.positions);
                self.grow(w.slot, capacity)?;
            }
        }
        // The graph takes the slots' tokens one after another in slot order.
        let mut by_slot: Vec<Option<&SlotWork<'_>>> = vec![None; self.slots.len()];
        for w in work {
            by_slot[w.slot] = Some(w);
        }
        let mut ids = Vec::new();
        let mut symbols = kiln_ir::Bindings::new();
        let mut last_row = vec![0usize; self.slots.len()];
        for (slot, w) in by_slot.iter().enumerate() {
            let [n, p, _, o] = slot_symbols(slot);
            symbols.insert(o, ids.len() as i64);
            let (len, position) = match w {
                Some(w) => (w.tokens.len(), w.position),
                None => (0, self.slots[slot].len),
            };
            if let Some(w) = w {
                ids.extend(w.tokens.iter().map(|&t| t as i32));
            }
            last_row[slot] = ids.len().saturating_sub(1);
            symbols.insert(n, len as i64);
            symbols.insert(p, position as i64);
        }
        let rows: Vec<i32> = work
            .iter()
            .filter(|w| w.logits)
            .map(|w| last_row[w.slot] as i32)
            .collect();
        let mut inputs = HashMap::new();
        inputs.insert("ids".to_string(), Tensor::from_i32(&[ids.len()], &ids));
        inputs.insert("rows".to_string(), Tensor::from_i32(&[rows.len()], &rows));
        self.mapped.prepare(&ids);
        let out = self.exe.run_with(&inputs, &symbols);
        self.mapped.release();
        let out = out?;
        for w in work {
            self.slots[w.slot].len += w.tokens.len();
        }
        let logits = out.get("logits").expect("graph output");
        let v = self.config.vocab_size;
        Ok(logits.as_f32().chunks(v).map(|r| r.to_vec()).collect())
    }
}
