//! The engine: executes the scheduler's steps on the compiled model, on the one thread that
//! owns it (`Model` and its `Executable` are `Send` but not `Sync`).
//!
//! [`Engine`] is the seam between batching decisions and execution. Phase 1 of continuous
//! batching is [`SequentialEngine`]: it runs a step's sequences one after another through the
//! single-sequence `Model::forward`, each with its own KV cache, which it saves out of the
//! executor when it switches to another sequence and restores when it comes back
//! (`Model::save_cache` / `restore_cache`, a download and an upload of that sequence's keys
//! and values). Phase 2 replaces only this type: a model graph with a batch dimension runs
//! all of a step's decodes (and prefill chunks) in one forward over a pool of KV slots, and
//! the scheduler, driver and HTTP layer stay as they are.

use crate::scheduler::{SeqId, SlotId, Step};
use kiln_models::{KvCache, Model, Sampler, SavedCache};
use std::panic::{catch_unwind, AssertUnwindSafe};

/// The token an engine chose for a sequence in a step (after the last chunk of its prompt,
/// or after a decode), or why it could not.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TokenEvent {
    pub seq: SeqId,
    pub outcome: Result<u32, String>,
}

/// Executes scheduler steps. `step` releases the slots of `finished` sequences, sets up the
/// `admitted` ones (with their sampling), and returns a token for every decode and for every
/// prefill chunk marked `last` (none for other chunks). A failure (an error or a panic) in one
/// sequence's work is an `Err` event for that sequence, whatever its work was; the others go
/// on.
pub trait Engine {
    fn step(&mut self, step: &Step) -> Vec<TokenEvent>;
}

/// A sequence in a slot: its cache's length, its keys and values while another sequence
/// runs, and its sampler.
struct SlotState {
    seq: SeqId,
    cache: KvCache,
    /// The keys and values saved out of the executor (None while it is the resident one,
    /// before its first forward, or after they were lost to a failure).
    saved: Option<SavedCache>,
    sampler: Sampler,
}

/// Phase 1: one sequence at a time on the existing single-sequence model (see the module
/// documentation).
pub struct SequentialEngine {
    model: Model,
    slots: Vec<Option<SlotState>>,
    /// The slot whose keys and values the executor holds now.
    resident: Option<SlotId>,
}

impl SequentialEngine {
    pub fn new(model: Model, slots: usize) -> SequentialEngine {
        SequentialEngine {
            model,
            slots: (0..slots).map(|_| None).collect(),
            resident: None,
        }
    }

    pub fn model(&self) -> &Model {
        &self.model
    }

    /// Makes the executor hold `slot`'s keys and values: saves the resident sequence's and
    /// restores this one's (a sequence that has not run yet needs nothing: its first
    /// forward starts from an empty cache).
    fn switch_to(&mut self, slot: SlotId) -> Result<(), String> {
        if self.resident == Some(slot) {
            return Ok(());
        }
        if let Some(r) = self.resident.take() {
            if let Some(state) = self.slots[r].as_mut() {
                if !state.cache.is_empty() {
                    // On failure its keys and values are lost: it fails when it runs next.
                    state.saved = self.model.save_cache(&state.cache).ok();
                }
            }
        }
        let state = self.slots[slot]
            .as_mut()
            .ok_or("no sequence in this slot")?;
        if !state.cache.is_empty() {
            let saved = state.saved.take().ok_or(
                "its keys and values were lost when the sequence that ran before it failed",
            )?;
            self.model
                .restore_cache(&state.cache, saved)
                .map_err(|e| e.to_string())?;
        }
        self.resident = Some(slot);
        Ok(())
    }

    /// Runs `tokens` at `position` of `slot`'s sequence; samples the next token if `sample`.
    fn run(
        &mut self,
        slot: SlotId,
        position: usize,
        tokens: &[u32],
        sample: bool,
    ) -> Result<Option<u32>, String> {
        self.switch_to(slot)?;
        let state = self.slots[slot]
            .as_mut()
            .ok_or("no sequence in this slot")?;
        if state.cache.len() != position {
            return Err(format!(
                "the scheduler asked for position {position}, the sequence is at {}",
                state.cache.len()
            ));
        }
        let logits = self
            .model
            .forward(tokens, &mut state.cache)
            .map_err(|e| e.to_string())?;
        if !sample {
            return Ok(None);
        }
        let vocab = self.model.config.vocab_size;
        let row = logits.as_f32();
        Ok(Some(state.sampler.sample(&row[row.len() - vocab..])))
    }

    /// [`SequentialEngine::run`] with a panic turned into that sequence's error. After a
    /// panic nothing is known of the executor's kept cache: the resident sequence loses its
    /// keys and values (it is the one that failed, unless the panic came from saving the
    /// previous one, which then fails when it runs next).
    fn run_guarded(
        &mut self,
        slot: SlotId,
        position: usize,
        tokens: &[u32],
        sample: bool,
    ) -> Result<Option<u32>, String> {
        match catch_unwind(AssertUnwindSafe(|| {
            self.run(slot, position, tokens, sample)
        })) {
            Ok(r) => r,
            Err(panic) => {
                self.resident = None;
                Err(format!("the engine panicked: {}", panic_message(&panic)))
            }
        }
    }
}

/// The message of a caught panic.
pub fn panic_message(panic: &Box<dyn std::any::Any + Send>) -> String {
    panic
        .downcast_ref::<String>()
        .cloned()
        .or_else(|| panic.downcast_ref::<&str>().map(|s| s.to_string()))
        .unwrap_or_else(|| "(no message)".into())
}

impl Engine for SequentialEngine {
    fn step(&mut self, step: &Step) -> Vec<TokenEvent> {
        for f in &step.finished {
            if let Some(slot) = f.slot {
                self.slots[slot] = None;
                if self.resident == Some(slot) {
                    self.resident = None;
                }
            }
        }
        for a in &step.admitted {
            self.slots[a.slot] = Some(SlotState {
                seq: a.seq,
                cache: KvCache::new(&self.model.config),
                saved: None,
                sampler: Sampler::new(a.sampling.clone()),
            });
        }
        let mut events = Vec::with_capacity(step.batch_size());
        // The resident sequence first (no switch), then the others in the step's order.
        let mut work: Vec<(SeqId, SlotId, usize, &[u32], bool)> = step
            .decode
            .iter()
            .map(|d| {
                (
                    d.seq,
                    d.slot,
                    d.position,
                    std::slice::from_ref(&d.token),
                    true,
                )
            })
            .chain(
                step.prefill
                    .iter()
                    .map(|p| (p.seq, p.slot, p.position, p.tokens.as_slice(), p.last)),
            )
            .collect();
        if let Some(i) = work.iter().position(|w| Some(w.1) == self.resident) {
            let w = work.remove(i);
            work.insert(0, w);
        }
        for (seq, slot, position, tokens, sample) in work {
            let outcome = match self.slots[slot].as_ref().map(|s| s.seq) {
                Some(s) if s == seq => self.run_guarded(slot, position, tokens, sample),
                _ => Err(format!("slot {slot} does not hold sequence {seq}")),
            };
            match outcome {
                Ok(Some(token)) => events.push(TokenEvent {
                    seq,
                    outcome: Ok(token),
                }),
                Ok(None) => {}
                Err(e) => events.push(TokenEvent {
                    seq,
                    outcome: Err(e),
                }),
            }
        }
        events
    }
}
