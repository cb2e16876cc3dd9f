//! The engine: executes the scheduler's steps on the compiled model, on the one thread that
//! owns it (`BatchedModel` and its `Executable` are `Send` but not `Sync`).
//!
//! [`Engine`] is the seam between batching decisions and execution. [`BatchedEngine`] runs
//! all of a step's work — every decode and every prefill chunk — in one forward of the
//! batched graph (`kiln_models::BatchedModel`): each scheduler slot is a KV cache slot of
//! the model, and the weights are read once for all the step's rows.

use crate::scheduler::{SeqId, Step};
use kiln_models::{BatchedModel, Sampler, SlotWork};
use std::panic::{catch_unwind, AssertUnwindSafe};

/// The token an engine chose for a sequence in a step (after the last chunk of its prompt,
/// or after a decode), or why it could not.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TokenEvent {
    pub seq: SeqId,
    pub outcome: Result<u32, StepError>,
}

/// Why a sequence got no token from a step.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum StepError {
    /// Its own work was wrong (a slot it does not hold, a position past its cache): it fails
    /// alone, before the forward.
    #[error("{0}")]
    Refused(String),
    /// The forward it ran in failed or panicked: every sequence of that forward fails.
    #[error("{0}")]
    Forward(String),
}

/// Executes scheduler steps. `step` releases the slots of `finished` sequences, sets up the
/// `admitted` ones (with their sampling), and returns a token for every decode and for every
/// prefill chunk marked `last` (none for other chunks). A failure (an error or a panic) is an
/// `Err` event for each sequence whose work it touched, whatever that work was: work that is
/// wrong in itself fails that sequence alone; a forward that fails fails the sequences that
/// ran in it. The others go on.
pub trait Engine {
    fn step(&mut self, step: &Step) -> Vec<TokenEvent>;
}

/// One forward per step over a pool of KV cache slots (see the module documentation).
pub struct BatchedEngine {
    model: BatchedModel,
    /// The sequence in each slot and its sampler.
    slots: Vec<Option<(SeqId, Sampler)>>,
}

impl BatchedEngine {
    /// `model`'s pool must have a slot for every scheduler slot.
    pub fn new(model: BatchedModel) -> BatchedEngine {
        let slots = (0..model.slots()).map(|_| None).collect();
        BatchedEngine { model, slots }
    }

    pub fn model(&self) -> &BatchedModel {
        &self.model
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

impl Engine for BatchedEngine {
    fn step(&mut self, step: &Step) -> Vec<TokenEvent> {
        for f in &step.finished {
            if let Some(slot) = f.slot.filter(|&s| s < self.slots.len()) {
                self.slots[slot] = None;
                self.model.clear_slot(slot);
            }
        }
        let mut events = Vec::with_capacity(step.batch_size());
        for a in &step.admitted {
            match self.slots.get_mut(a.slot) {
                Some(s) => {
                    *s = Some((a.seq, Sampler::new(a.sampling.clone())));
                    self.model.clear_slot(a.slot);
                }
                None => events.push(TokenEvent {
                    seq: a.seq,
                    outcome: Err(StepError::Refused(format!(
                        "slot {} is outside the model's pool of {}",
                        a.slot,
                        self.slots.len()
                    ))),
                }),
            }
        }
        // (sequence, its work): decodes, then prefill chunks; a sequence not in the slot
        // the step names fails alone, before the forward.
        let mut work: Vec<(SeqId, SlotWork<'_>)> = Vec::with_capacity(step.batch_size());
        let decodes = step.decode.iter().map(|d| {
            (
                d.seq,
                SlotWork {
                    slot: d.slot,
                    position: d.position,
                    tokens: std::slice::from_ref(&d.token),
                    logits: true,
                },
            )
        });
        let chunks = step.prefill.iter().map(|p| {
            (
                p.seq,
                SlotWork {
                    slot: p.slot,
                    position: p.position,
                    tokens: p.tokens.as_slice(),
                    logits: p.last,
                },
            )
        });
        for (seq, w) in decodes.chain(chunks) {
            let checked = match self.slots.get(w.slot).and_then(|s| s.as_ref()) {
                Some((s, _)) if *s == seq => self
                    .model
                    .check_work(&w)
                    .map_err(|e| StepError::Refused(e.to_string())),
                _ => Err(StepError::Refused(format!(
                    "slot {} does not hold sequence {seq}",
                    w.slot
                ))),
            };
            match checked {
                Ok(()) => work.push((seq, w)),
                Err(e) => events.push(TokenEvent {
                    seq,
                    outcome: Err(e),
                }),
            }
        }
        if work.is_empty() {
            return events;
        }
        let items: Vec<SlotWork<'_>> = work.iter().map(|(_, w)| *w).collect();
        let ran = match catch_unwind(AssertUnwindSafe(|| self.model.forward(&items))) {
            Ok(r) => r.map_err(|e| StepError::Forward(e.to_string())),
            Err(p) => Err(StepError::Forward(format!(
                "the engine panicked: {}",
                panic_message(&p)
            ))),
        };
        match ran {
            Ok(logits) => {
                let mut rows = logits.into_iter();
                for (seq, w) in &work {
                    if !w.logits {
                        continue;
                    }
                    let outcome = match (rows.next(), self.slots[w.slot].as_mut()) {
                        (Some(row), Some((_, sampler))) => Ok(sampler.sample(&row)),
                        _ => Err(StepError::Forward(
                            "the forward returned fewer logits than asked for".into(),
                        )),
                    };
                    events.push(TokenEvent { seq: *seq, outcome });
                }
            }
            // One forward ran them all: all of them fail (the scheduler frees their slots).
            Err(e) => events.extend(work.iter().map(|(seq, _)| TokenEvent {
                seq: *seq,
                outcome: Err(e.clone()),
            })),
        }
        events
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::scheduler::{Admitted, Decode, Prefill};
    use kiln_models::{LoadOptions, ModelSource, Sampling};

    fn engine() -> BatchedEngine {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../../tests/fixtures/tiny-qwen3");
        let cpu = kiln_cpu::CpuBackend::default().with_run_threads(1);
        let model =
            BatchedModel::load(&ModelSource::Dir(dir), &LoadOptions::new(&cpu), 2, 64).unwrap();
        BatchedEngine::new(model)
    }

    fn admit(seq: SeqId, slot: usize) -> Admitted {
        Admitted {
            seq,
            slot,
            sampling: Sampling::default(),
        }
    }

    /// Work that is wrong in itself fails its sequence alone; the others in the same step
    /// get their tokens, and the same tokens as without it.
    #[test]
    fn bad_work_fails_its_sequence_alone() {
        let prefill = |seq, slot, tokens: Vec<u32>| Prefill {
            seq,
            slot,
            position: 0,
            tokens,
            last: true,
        };
        let run = |bad: bool| {
            let mut e = engine();
            let first = e.step(&Step {
                admitted: vec![admit(1, 0), admit(2, 1)],
                prefill: vec![prefill(1, 0, vec![5, 6, 7]), prefill(2, 1, vec![9, 10])],
                ..Default::default()
            });
            assert_eq!(first.len(), 2);
            assert!(first.iter().all(|t| t.outcome.is_ok()), "{first:?}");
            let token = |seq| first.iter().find(|t| t.seq == seq).unwrap().outcome.clone();
            let mut decode = vec![Decode {
                seq: 1,
                slot: 0,
                position: 3,
                token: token(1).unwrap(),
            }];
            if bad {
                // Sequence 2 at a position it is not at, and a sequence in a slot not its own.
                decode.push(Decode {
                    seq: 2,
                    slot: 1,
                    position: 7,
                    token: token(2).unwrap(),
                });
                decode.push(Decode {
                    seq: 3,
                    slot: 1,
                    position: 2,
                    token: 1,
                });
            }
            e.step(&Step {
                decode,
                ..Default::default()
            })
        };
        let good = run(false);
        let bad = run(true);
        assert_eq!(bad[..2].iter().filter(|t| t.outcome.is_err()).count(), 2);
        let err = |seq| {
            bad.iter()
                .find(|t| t.seq == seq)
                .unwrap()
                .outcome
                .clone()
                .unwrap_err()
                .to_string()
        };
        assert!(err(2).contains("position 7"), "{}", err(2));
        assert!(err(3).contains("does not hold sequence 3"), "{}", err(3));
        let ok: Vec<_> = bad.iter().filter(|t| t.outcome.is_ok()).collect();
        assert_eq!(ok.len(), 1);
        assert_eq!(*ok[0], good[0]);
    }
}
