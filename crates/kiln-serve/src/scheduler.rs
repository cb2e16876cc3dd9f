//! Continuous batching, as decisions only: which sequences run at each step and what each
//! does. No I/O, no model, no clock: the driver feeds it requests, sampled tokens and
//! cancellations, and asks it for the next [`Step`], which the engine executes.
//!
//! A step is built in this order:
//! 1. sequences that finished since the last step (end of sequence, `max_tokens`, the
//!    context, a stop string, a cancellation, a failure) leave and free their KV slot;
//! 2. waiting requests are admitted first come, first served while a slot is free and the
//!    batch has room (`max_batch`): they join this step, nobody waits for the batch to drain;
//! 3. every running sequence past its prompt decodes one token;
//! 4. sequences still reading their prompt prefill the next chunk of it, in admission order,
//!    up to a budget of prompt tokens for the whole step ([`Scheduler::prefill_budget`]):
//!    - `prefill_chunk` when no sequence decodes in the step, or when at least as many
//!      sequences read their prompt as decode (the batch is filling: a long step then starts
//!      more streams than it delays, and a prompt read a few tokens a step would hold its
//!      first token for dozens of steps);
//!    - otherwise (a few new prompts beside a busy batch) as many tokens as keep the step's
//!      expected time within `prefill_stretch` times that of the decodes alone, from the
//!      engine's own recent step times ([`StepTimes`], fed by [`Scheduler::observe`]); never
//!      fewer than `prefill_while_decoding` (so a prompt always advances), which is also the
//!      budget until the times say more. On a CPU a prompt token costs about as much as a
//!      decode row, so a 1024-token chunk beside 8 decoding streams would hold each one's
//!      next token for seconds; the stretch bounds that gap to a small multiple of a decode
//!      step on any machine, and a GPU, where rows are nearly free, gets large chunks.
//!
//! The KV-slot pool: `kv_slots` slots of `slot_positions` positions each (`--max-batch`
//! slots of `--ctx` positions). A slot is a sequence's KV cache from admission to finish.

use crate::step_times::StepTimes;
use kiln_models::Sampling;
use std::collections::VecDeque;
use std::time::Duration;

/// A sequence (one request) for the whole of its life.
pub type SeqId = u64;
/// A KV-cache slot of the pool.
pub type SlotId = usize;

#[derive(Clone, Copy, Debug, PartialEq)]
pub struct SchedulerConfig {
    /// Sequences running at once.
    pub max_batch: usize,
    /// KV-cache slots in the pool.
    pub kv_slots: usize,
    /// Positions one slot holds (prompt and generated tokens): the context of a sequence.
    pub slot_positions: usize,
    /// Prompt tokens prefilled per step, over all sequences, when no sequence decodes or at
    /// least as many read their prompt as decode.
    pub prefill_chunk: usize,
    /// Prompt tokens a step beside decoding sequences prefills at least (over all sequences,
    /// at most `prefill_chunk`), and its budget until step times are known.
    pub prefill_while_decoding: usize,
    /// A step that prefills beside decoding sequences (fewer sequences reading a prompt than
    /// decoding) is expected to take at most this many times as long as their decodes alone
    /// (at least 1).
    pub prefill_stretch: f64,
}

/// A request as the scheduler sees it: token ids and limits.
#[derive(Clone, Debug, PartialEq)]
pub struct SeqRequest {
    pub id: SeqId,
    pub prompt: Vec<u32>,
    /// Tokens to generate at most.
    pub max_tokens: usize,
    /// Tokens that end the sequence (end of sequence; `<|im_end|>`), included in its output.
    pub stop_ids: Vec<u32>,
    /// How the engine chooses its tokens (passed on at admission, never read here).
    pub sampling: Sampling,
}

/// Why a sequence left the batch.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Finish {
    /// It sampled one of its stop ids.
    Eos,
    /// It generated `max_tokens`.
    MaxTokens,
    /// Prompt and output fill its slot (the context).
    ContextFull,
    /// Its text reached a stop string (decided by the driver, which sees the text).
    StopString,
    /// Its client went away, or the server is shutting down.
    Cancelled,
    /// The engine failed on it (the message says how).
    Failed(String),
}

impl Finish {
    /// OpenAI's `finish_reason`: `stop` or `length` (None: the request did not complete).
    pub fn openai_reason(&self) -> Option<&'static str> {
        match self {
            Finish::Eos | Finish::StopString => Some("stop"),
            Finish::MaxTokens | Finish::ContextFull => Some("length"),
            Finish::Cancelled | Finish::Failed(_) => None,
        }
    }

    /// A short name for logs and metrics.
    pub fn label(&self) -> &'static str {
        match self {
            Finish::Eos => "eos",
            Finish::MaxTokens => "max_tokens",
            Finish::ContextFull => "context",
            Finish::StopString => "stop_string",
            Finish::Cancelled => "cancelled",
            Finish::Failed(_) => "failed",
        }
    }
}

/// A sequence admitted into the batch at this step, with the slot it holds until it finishes.
#[derive(Clone, Debug, PartialEq)]
pub struct Admitted {
    pub seq: SeqId,
    pub slot: SlotId,
    pub sampling: Sampling,
}

/// Prompt tokens `position..position + tokens.len()` of a sequence to run into its slot.
/// After the `last` chunk the engine samples the sequence's first token.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Prefill {
    pub seq: SeqId,
    pub slot: SlotId,
    pub position: usize,
    pub tokens: Vec<u32>,
    pub last: bool,
}

/// The sequence's last sampled `token`, to run at `position`; the engine samples the next.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Decode {
    pub seq: SeqId,
    pub slot: SlotId,
    pub position: usize,
    pub token: u32,
}

/// A sequence that left; its slot (None: it never got one) is free from this step on.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Finished {
    pub seq: SeqId,
    pub slot: Option<SlotId>,
    pub reason: Finish,
}

/// What one step does. The engine releases `finished` slots, sets up `admitted` ones, then
/// runs `decode` and `prefill` (in any order: they touch different slots).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Step {
    pub finished: Vec<Finished>,
    pub admitted: Vec<Admitted>,
    pub decode: Vec<Decode>,
    pub prefill: Vec<Prefill>,
    /// The most prompt tokens this step could prefill (step 4 of the module's
    /// documentation); it prefills fewer when the prompts end first.
    pub prefill_budget: usize,
}

impl Step {
    /// Whether the model runs at all in this step.
    pub fn has_work(&self) -> bool {
        !self.decode.is_empty() || !self.prefill.is_empty()
    }

    /// Sequences the model runs in this step.
    pub fn batch_size(&self) -> usize {
        self.decode.len() + self.prefill.len()
    }

    /// Rows the model runs in this step: a decode is one, a prefill chunk one per token.
    pub fn rows(&self) -> usize {
        self.decode.len() + self.prefill_tokens()
    }

    /// Prompt tokens this step prefills, over all sequences.
    pub fn prefill_tokens(&self) -> usize {
        self.prefill.iter().map(|p| p.tokens.len()).sum()
    }
}

#[derive(Debug)]
struct Running {
    req: SeqRequest,
    slot: SlotId,
    /// Prompt tokens already run into the slot (scheduled, counting this step's chunk).
    prefilled: usize,
    /// Tokens sampled so far.
    generated: usize,
    last_token: Option<u32>,
    /// Set when it finished; it leaves at the next step.
    finish: Option<Finish>,
    /// A token is expected from the engine for it (it was in the last step's work).
    awaiting_token: bool,
}

/// A request refused at [`Scheduler::submit`].
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum SubmitError {
    #[error("the prompt is empty")]
    EmptyPrompt,
    #[error(
        "the prompt has {prompt} tokens; a sequence holds {positions} positions and must \
         leave room for at least one new token"
    )]
    PromptTooLong { prompt: usize, positions: usize },
    #[error("max_tokens must be at least 1")]
    NoTokens,
    #[error("sequence {0} is already known")]
    Duplicate(SeqId),
}

pub struct Scheduler {
    cfg: SchedulerConfig,
    waiting: VecDeque<SeqRequest>,
    /// Waiting requests cancelled before admission: they leave at the next step.
    cancelled_waiting: Vec<SeqId>,
    /// In admission order.
    running: Vec<Running>,
    free_slots: Vec<SlotId>,
    /// How long the engine's recent steps took, by rows ([`Scheduler::observe`]).
    step_times: StepTimes,
}

impl Scheduler {
    pub fn new(cfg: SchedulerConfig) -> Scheduler {
        assert!(
            cfg.max_batch >= 1
                && cfg.kv_slots >= 1
                && cfg.prefill_chunk >= 1
                && cfg.prefill_while_decoding >= 1
                && cfg.prefill_stretch >= 1.0,
            "a scheduler needs a batch, a slot, prefill budgets of at least 1 and a stretch of \
             at least 1: {cfg:?}"
        );
        Scheduler {
            cfg,
            waiting: VecDeque::new(),
            cancelled_waiting: Vec::new(),
            running: Vec::new(),
            // Popped from the end: slot 0 is handed out first.
            free_slots: (0..cfg.kv_slots).rev().collect(),
            step_times: StepTimes::new(),
        }
    }

    pub fn config(&self) -> SchedulerConfig {
        self.cfg
    }

    /// Queues a request; it is admitted at a step with a free slot.
    pub fn submit(&mut self, req: SeqRequest) -> Result<(), SubmitError> {
        if req.prompt.is_empty() {
            return Err(SubmitError::EmptyPrompt);
        }
        if req.prompt.len() >= self.cfg.slot_positions {
            return Err(SubmitError::PromptTooLong {
                prompt: req.prompt.len(),
                positions: self.cfg.slot_positions,
            });
        }
        if req.max_tokens == 0 {
            return Err(SubmitError::NoTokens);
        }
        if self.knows(req.id) {
            return Err(SubmitError::Duplicate(req.id));
        }
        self.waiting.push_back(req);
        Ok(())
    }

    fn knows(&self, seq: SeqId) -> bool {
        self.waiting.iter().any(|r| r.id == seq) || self.running.iter().any(|r| r.req.id == seq)
    }

    /// The client of `seq` went away (or the server stops): it leaves at the next step,
    /// freeing its slot. Unknown or finished sequences are ignored.
    pub fn cancel(&mut self, seq: SeqId) {
        self.end(seq, Finish::Cancelled);
    }

    /// Ends `seq` for a reason found outside the scheduler (a stop string in its text, an
    /// engine failure); it leaves at the next step. A sequence that already finished keeps
    /// its first reason.
    pub fn end(&mut self, seq: SeqId, reason: Finish) {
        if let Some(i) = self.waiting.iter().position(|r| r.id == seq) {
            self.waiting.remove(i);
            self.cancelled_waiting.push(seq);
        } else if let Some(r) = self.running.iter_mut().find(|r| r.req.id == seq) {
            r.finish.get_or_insert(reason);
        }
    }

    /// A token the engine sampled for `seq` (after its prompt's last chunk or a decode).
    /// Returns why the sequence finishes if this token ends it; it then leaves at the next
    /// step. The finishing token is part of the output.
    pub fn record(&mut self, seq: SeqId, token: u32) -> Option<Finish> {
        let positions = self.cfg.slot_positions;
        let r = self.running.iter_mut().find(|r| r.req.id == seq)?;
        if !r.awaiting_token || r.finish.is_some() {
            return None;
        }
        r.awaiting_token = false;
        r.generated += 1;
        r.last_token = Some(token);
        // The order of `Model::generate`: a stop id, then the count, then the context (the
        // sampled token would take the position after the ones the slot holds).
        let reason = if r.req.stop_ids.contains(&token) {
            Some(Finish::Eos)
        } else if r.generated >= r.req.max_tokens {
            Some(Finish::MaxTokens)
        } else if r.req.prompt.len() + r.generated >= positions {
            Some(Finish::ContextFull)
        } else {
            None
        };
        r.finish = reason.clone();
        reason
    }

    /// The engine ran `step` in `took`: the step times the prefill budget is drawn from
    /// learn it (a step without work is ignored).
    pub fn observe(&mut self, step: &Step, took: Duration) {
        self.step_times.observe(step.rows(), took.as_secs_f64());
    }

    /// What the scheduler has learned of the engine's step times.
    pub fn step_times(&self) -> &StepTimes {
        &self.step_times
    }

    /// The next step (see the module's documentation for the order of decisions).
    pub fn plan(&mut self) -> Step {
        let mut step = Step::default();
        for seq in self.cancelled_waiting.drain(..) {
            step.finished.push(Finished {
                seq,
                slot: None,
                reason: Finish::Cancelled,
            });
        }
        let mut i = 0;
        while i < self.running.len() {
            if let Some(reason) = self.running[i].finish.clone() {
                let r = self.running.remove(i);
                self.free_slots.push(r.slot);
                step.finished.push(Finished {
                    seq: r.req.id,
                    slot: Some(r.slot),
                    reason,
                });
            } else {
                i += 1;
            }
        }
        while self.running.len() < self.cfg.max_batch && !self.waiting.is_empty() {
            let Some(slot) = self.free_slots.pop() else {
                break;
            };
            let req = self.waiting.pop_front().expect("not empty");
            step.admitted.push(Admitted {
                seq: req.id,
                slot,
                sampling: req.sampling.clone(),
            });
            self.running.push(Running {
                req,
                slot,
                prefilled: 0,
                generated: 0,
                last_token: None,
                finish: None,
                awaiting_token: false,
            });
        }
        let mut budget = self.prefill_budget();
        step.prefill_budget = budget;
        for r in &mut self.running {
            if r.awaiting_token {
                // The engine did not report a token for it last step (it failed and the
                // driver ended it, or the driver lost track): never schedule it twice.
                continue;
            }
            if r.prefilled == r.req.prompt.len() {
                let token = r
                    .last_token
                    .expect("a sequence past its prompt has a token");
                step.decode.push(Decode {
                    seq: r.req.id,
                    slot: r.slot,
                    position: r.req.prompt.len() + r.generated - 1,
                    token,
                });
                r.awaiting_token = true;
            } else if budget > 0 {
                let n = budget.min(r.req.prompt.len() - r.prefilled);
                let last = r.prefilled + n == r.req.prompt.len();
                step.prefill.push(Prefill {
                    seq: r.req.id,
                    slot: r.slot,
                    position: r.prefilled,
                    tokens: r.req.prompt[r.prefilled..r.prefilled + n].to_vec(),
                    last,
                });
                r.prefilled += n;
                r.awaiting_token = last;
                budget -= n;
            }
        }
        step
    }

    /// Prompt tokens the next step may prefill, over all sequences (step 4 of the module's
    /// documentation): the full `prefill_chunk` when nobody decodes or when at least as many
    /// sequences read their prompt as decode; otherwise the most tokens that keep the step's
    /// expected time within `prefill_stretch` times that of its decodes alone, and at least
    /// `prefill_while_decoding` (that alone until the step times give an estimate).
    fn prefill_budget(&self) -> usize {
        let ready = |r: &&Running| !r.awaiting_token;
        let reading = |r: &&Running| r.prefilled < r.req.prompt.len();
        let decoding = self
            .running
            .iter()
            .filter(ready)
            .filter(|r| !reading(r))
            .count();
        let prefilling = self.running.iter().filter(ready).filter(reading).count();
        let chunk = self.cfg.prefill_chunk;
        if decoding == 0 || prefilling >= decoding {
            return chunk;
        }
        let least = self.cfg.prefill_while_decoding.min(chunk);
        let Some(alone) = self.step_times.estimate(decoding) else {
            return least;
        };
        let limit = alone * self.cfg.prefill_stretch;
        let rows = self
            .step_times
            .rows_within(decoding, chunk, limit)
            .unwrap_or(decoding);
        (rows - decoding).max(least)
    }

    /// Requests waiting for a slot.
    pub fn waiting(&self) -> usize {
        self.waiting.len()
    }

    /// Sequences holding a slot (finished ones until the next step frees them).
    pub fn running(&self) -> usize {
        self.running.len()
    }

    pub fn free_slots(&self) -> usize {
        self.free_slots.len()
    }

    /// Nothing waits, runs, or has to be reported as finished.
    pub fn is_idle(&self) -> bool {
        self.waiting.is_empty() && self.running.is_empty() && self.cancelled_waiting.is_empty()
    }

    /// Ids of every sequence the scheduler holds (waiting or running).
    pub fn sequences(&self) -> Vec<SeqId> {
        self.waiting
            .iter()
            .map(|r| r.id)
            .chain(self.running.iter().map(|r| r.req.id))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg(max_batch: usize, positions: usize, chunk: usize) -> SchedulerConfig {
        SchedulerConfig {
            max_batch,
            kv_slots: max_batch,
            slot_positions: positions,
            prefill_chunk: chunk,
            prefill_while_decoding: chunk,
            prefill_stretch: 2.0,
        }
    }

    fn req(id: SeqId, prompt_len: usize, max_tokens: usize) -> SeqRequest {
        SeqRequest {
            id,
            prompt: (0..prompt_len as u32).map(|i| 10 + i).collect(),
            max_tokens,
            stop_ids: vec![2],
            sampling: Sampling::default(),
        }
    }

    fn admitted(seq: SeqId, slot: SlotId) -> Admitted {
        Admitted {
            seq,
            slot,
            sampling: Sampling::default(),
        }
    }

    /// Feeds a token to every sequence the step ran to the end of its prompt or decoded.
    fn sample_all(s: &mut Scheduler, step: &Step, token: u32) -> Vec<(SeqId, Finish)> {
        let mut done = vec![];
        let sampled = step
            .decode
            .iter()
            .map(|d| d.seq)
            .chain(step.prefill.iter().filter(|p| p.last).map(|p| p.seq));
        for seq in sampled.collect::<Vec<_>>() {
            if let Some(f) = s.record(seq, token) {
                done.push((seq, f));
            }
        }
        done
    }

    #[test]
    fn a_request_prefills_then_decodes_until_max_tokens() {
        let mut s = Scheduler::new(cfg(4, 64, 16));
        s.submit(req(1, 5, 3)).unwrap();
        let st = s.plan();
        assert_eq!(st.admitted, vec![admitted(1, 0)]);
        assert_eq!(
            st.prefill,
            vec![Prefill {
                seq: 1,
                slot: 0,
                position: 0,
                tokens: vec![10, 11, 12, 13, 14],
                last: true
            }]
        );
        assert!(st.decode.is_empty());
        assert_eq!(sample_all(&mut s, &st, 7), vec![]);
        let st = s.plan();
        assert_eq!(
            st.decode,
            vec![Decode {
                seq: 1,
                slot: 0,
                position: 5,
                token: 7
            }]
        );
        assert_eq!(sample_all(&mut s, &st, 8), vec![]);
        let st = s.plan();
        assert_eq!(st.decode[0].position, 6);
        assert_eq!(sample_all(&mut s, &st, 9), vec![(1, Finish::MaxTokens)]);
        let st = s.plan();
        assert_eq!(
            st.finished,
            vec![Finished {
                seq: 1,
                slot: Some(0),
                reason: Finish::MaxTokens
            }]
        );
        assert!(!st.has_work());
        assert!(s.is_idle());
        assert_eq!(s.free_slots(), 4);
    }

    #[test]
    fn a_stop_id_ends_the_sequence_and_counts_as_output() {
        let mut s = Scheduler::new(cfg(1, 64, 16));
        s.submit(req(1, 3, 10)).unwrap();
        let st = s.plan();
        assert_eq!(s.record(1, 2), Some(Finish::Eos));
        assert_eq!(s.record(1, 5), None, "no token after the end");
        assert_eq!(st.batch_size(), 1);
        assert_eq!(s.plan().finished[0].reason, Finish::Eos);
    }

    #[test]
    fn the_context_ends_a_sequence_with_its_last_token() {
        // 8 positions: a 5-token prompt leaves room for 3 new tokens (the third is sampled
        // but never run), as `Model::generate` does.
        let mut s = Scheduler::new(cfg(1, 8, 16));
        s.submit(req(1, 5, 100)).unwrap();
        let mut got = vec![];
        loop {
            let st = s.plan();
            if !st.finished.is_empty() {
                assert_eq!(st.finished[0].reason, Finish::ContextFull);
                break;
            }
            for d in &st.decode {
                assert!(d.position < 8, "position {} past the slot", d.position);
            }
            got.extend(sample_all(&mut s, &st, 20 + got.len() as u32));
        }
        assert_eq!(got, vec![(1, Finish::ContextFull)]);
    }

    #[test]
    fn long_prompts_are_prefilled_in_chunks_beside_decoding_sequences() {
        let mut s = Scheduler::new(cfg(4, 256, 8));
        s.submit(req(1, 3, 100)).unwrap();
        let st = s.plan();
        sample_all(&mut s, &st, 5);
        // A 20-token prompt arrives while 1 decodes: it joins the next step at once, is read
        // 8 tokens per step, and 1 decodes at every one of those steps.
        s.submit(req(2, 20, 100)).unwrap();
        let mut chunks = vec![];
        for _ in 0..3 {
            let st = s.plan();
            assert_eq!(st.decode.len(), 1, "sequence 1 decodes every step: {st:?}");
            assert_eq!(st.decode[0].seq, 1);
            let p = &st.prefill[0];
            chunks.push((p.position, p.tokens.len(), p.last));
            sample_all(&mut s, &st, 5);
        }
        assert_eq!(chunks, vec![(0, 8, false), (8, 8, false), (16, 4, true)]);
        let st = s.plan();
        assert_eq!(st.decode.len(), 2, "both decode once 2's prompt is in");
        assert_eq!(st.decode[1].position, 20);
    }

    #[test]
    fn a_step_with_decodes_prefills_at_most_the_smaller_budget() {
        let mut s = Scheduler::new(SchedulerConfig {
            prefill_while_decoding: 3,
            ..cfg(4, 256, 16)
        });
        s.submit(req(1, 20, 100)).unwrap();
        s.submit(req(2, 4, 100)).unwrap();
        // Nobody decodes yet: the whole chunk (16 of 1's prompt), 2 waits for budget.
        let st = s.plan();
        assert_eq!(chunks(&st), vec![(1, 0, 16)]);
        sample_all(&mut s, &st, 5);
        // Still nobody decodes: 1's last 4 and 2's whole prompt share the 16.
        let st = s.plan();
        assert_eq!(chunks(&st), vec![(1, 16, 4), (2, 0, 4)]);
        sample_all(&mut s, &st, 5);
        // A new prompt while 1 and 2 decode: 3 tokens a step, both decode every step.
        s.submit(req(3, 7, 100)).unwrap();
        let mut got = vec![];
        for _ in 0..3 {
            let st = s.plan();
            assert_eq!(st.decode.len(), 2, "{st:?}");
            got.extend(chunks(&st));
            sample_all(&mut s, &st, 5);
        }
        assert_eq!(got, vec![(3, 0, 3), (3, 3, 3), (3, 6, 1)]);
        let st = s.plan();
        assert_eq!((st.decode.len(), st.prefill.len()), (3, 0));
    }

    /// A step's prefill chunks: (sequence, position, tokens).
    type Chunks = Vec<(SeqId, usize, usize)>;

    fn chunks(st: &Step) -> Chunks {
        st.prefill
            .iter()
            .map(|p| (p.seq, p.position, p.tokens.len()))
            .collect()
    }

    #[test]
    fn while_as_many_read_as_decode_a_step_prefills_the_whole_chunk() {
        let mut s = Scheduler::new(SchedulerConfig {
            prefill_while_decoding: 2,
            ..cfg(8, 256, 16)
        });
        s.submit(req(1, 4, 100)).unwrap();
        let st = s.plan();
        sample_all(&mut s, &st, 5);
        // Four prompts arrive while 1 alone decodes: the batch is filling, so steps read the
        // whole chunk beside the decodes while at least as many read their prompt as decode;
        // once 2, 3 and 4 decode and outnumber 5, the rest of 5's prompt goes at the budget
        // beside decodes (no step times known: `prefill_while_decoding`).
        for id in 2..=5 {
            s.submit(req(id, 10, 100)).unwrap();
        }
        let mut got = vec![];
        let mut decodes = vec![];
        loop {
            let st = s.plan();
            if st.prefill.is_empty() {
                assert_eq!(st.decode.len(), 5);
                break;
            }
            decodes.push(st.decode.len());
            got.push(chunks(&st));
            sample_all(&mut s, &st, 5);
        }
        let want = vec![
            vec![(2, 0, 10), (3, 0, 6)],
            vec![(3, 6, 4), (4, 0, 10), (5, 0, 2)],
            vec![(5, 2, 2)],
            vec![(5, 4, 2)],
            vec![(5, 6, 2)],
            vec![(5, 8, 2)],
        ];
        assert_eq!(got, want);
        assert_eq!(decodes, vec![1, 2, 4, 4, 4, 4]);
    }

    /// Plans a step, tells the scheduler it took `cost(rows)` seconds and records a token for
    /// each decode and last chunk; returns the step.
    fn timed_step(s: &mut Scheduler, cost: impl Fn(usize) -> f64) -> Step {
        let st = s.plan();
        s.observe(&st, Duration::from_secs_f64(cost(st.rows())));
        sample_all(s, &st, 5);
        st
    }

    /// The step time of the machine of the stretch tests: 30 ms plus 5 ms a row (8 rows
    /// decode alone in 70 ms).
    fn cost(rows: usize) -> f64 {
        0.030 + 0.005 * rows as f64
    }

    /// Runs [`timed_step`]s until none prefills. Returns each step's (decodes, prefill chunks).
    fn run_prefills(s: &mut Scheduler, cost: impl Fn(usize) -> f64) -> Vec<(usize, Chunks)> {
        let mut steps = vec![];
        loop {
            let st = timed_step(s, &cost);
            if st.prefill.is_empty() {
                return steps;
            }
            steps.push((st.decode.len(), chunks(&st)));
        }
    }

    #[test]
    fn beside_a_busy_batch_a_step_stays_within_the_stretch_of_its_decodes() {
        let mut s = Scheduler::new(SchedulerConfig {
            prefill_while_decoding: 4,
            prefill_stretch: 2.05,
            ..cfg(16, 512, 1024)
        });
        for id in 1..=8 {
            s.submit(req(id, 8, 1000)).unwrap();
        }
        // Nobody decodes: the 8 prompts (64 rows) in one step; then the 8 decode alone: the
        // scheduler has seen two sizes of step and can estimate the rest.
        let first = run_prefills(&mut s, cost);
        assert_eq!((first.len(), first[0].0, first[0].1.len()), (1, 0, 8));
        assert!(s.step_times().estimate(8).is_some());
        // A 100-token prompt beside the 8: 2.05 x 70 ms allows 8 + 14 rows a step (140 ms).
        s.submit(req(9, 100, 1000)).unwrap();
        let steps = run_prefills(&mut s, cost);
        let sizes: Vec<usize> = steps.iter().map(|(_, c)| c[0].2).collect();
        assert_eq!(sizes, vec![14, 14, 14, 14, 14, 14, 14, 2]);
        for (decodes, c) in &steps {
            assert_eq!(*decodes, 8, "the 8 decode at every step");
            assert!(cost(decodes + c[0].2) <= 2.05 * cost(8));
        }
        // With a larger stretch, larger chunks; 9 decode now.
        s.cfg.prefill_stretch = 4.05;
        s.submit(req(10, 100, 1000)).unwrap();
        let sizes: Vec<usize> = run_prefills(&mut s, cost)
            .iter()
            .map(|(_, c)| c[0].2)
            .collect();
        // 9 decode alone in 75 ms; 4.05 x 75 = 304 ms >= 30 + 5 x 54 rows: 45 prompt tokens.
        assert_eq!(sizes, vec![45, 45, 10]);
    }

    #[test]
    fn without_decodes_a_step_prefills_the_whole_chunk() {
        let mut s = Scheduler::new(SchedulerConfig {
            prefill_while_decoding: 4,
            ..cfg(4, 512, 100)
        });
        s.submit(req(1, 8, 3)).unwrap();
        s.submit(req(2, 8, 3)).unwrap();
        run_prefills(&mut s, cost);
        while !s.is_idle() {
            timed_step(&mut s, cost);
        }
        // Step times are known, nobody decodes: a 250-token prompt goes 100 tokens a step.
        assert!(s.step_times().estimate(2).is_some());
        s.submit(req(3, 250, 3)).unwrap();
        let steps = run_prefills(&mut s, cost);
        assert_eq!(
            steps,
            vec![
                (0, vec![(3, 0, 100)]),
                (0, vec![(3, 100, 100)]),
                (0, vec![(3, 200, 50)])
            ]
        );
    }

    #[test]
    fn a_long_prompt_advances_every_step_however_slow_the_steps() {
        // A stretch of 1 leaves no room beside the decodes: the prompt still gets
        // `prefill_while_decoding` tokens at every step, ahead of prompts admitted after it.
        let mut s = Scheduler::new(SchedulerConfig {
            prefill_while_decoding: 8,
            prefill_stretch: 1.0,
            ..cfg(16, 512, 1024)
        });
        for id in 1..=6 {
            s.submit(req(id, 4, 1000)).unwrap();
        }
        run_prefills(&mut s, cost);
        s.submit(req(7, 300, 1000)).unwrap();
        let mut read = 0;
        let mut steps = 0;
        let mut next = 100;
        while read < 300 {
            // A short prompt arrives at every other step (3 at most wait at once: fewer
            // read than decode).
            if steps % 2 == 0 && s.running() < 9 {
                s.submit(req(next, 4, 2)).unwrap();
                next += 1;
            }
            let st = timed_step(&mut s, cost);
            let mine: Vec<_> = st.prefill.iter().filter(|p| p.seq == 7).collect();
            assert_eq!(mine.len(), 1, "7 reads at every step: {st:?}");
            assert_eq!(mine[0].position, read);
            assert_eq!(st.prefill[0].seq, 7, "the earliest admitted reads first");
            read += mine[0].tokens.len();
            steps += 1;
            assert!(st.decode.len() >= 6);
        }
        assert_eq!(steps, 300usize.div_ceil(8));
    }

    #[test]
    fn the_prefill_budget_is_shared_in_admission_order() {
        let mut s = Scheduler::new(cfg(4, 256, 10));
        s.submit(req(1, 6, 5)).unwrap();
        s.submit(req(2, 6, 5)).unwrap();
        s.submit(req(3, 6, 5)).unwrap();
        let st = s.plan();
        assert_eq!(st.admitted.len(), 3);
        assert_eq!(chunks(&st), vec![(1, 0, 6), (2, 0, 4)]);
        sample_all(&mut s, &st, 5);
        let st = s.plan();
        assert_eq!(chunks(&st), vec![(2, 4, 2), (3, 0, 6)]);
        assert_eq!(st.decode.len(), 1);
    }

    #[test]
    fn requests_wait_for_a_slot_and_join_when_one_frees() {
        let mut s = Scheduler::new(cfg(2, 64, 64));
        for id in 1..=4 {
            s.submit(req(id, 4, 2)).unwrap();
        }
        let st = s.plan();
        assert_eq!(st.admitted.len(), 2);
        assert_eq!((s.running(), s.waiting(), s.free_slots()), (2, 2, 0));
        sample_all(&mut s, &st, 5);
        let st = s.plan();
        assert!(st.admitted.is_empty(), "no slot is free yet");
        // Both reach max_tokens = 2; their slots free at the next step, where 3 and 4 join.
        assert_eq!(sample_all(&mut s, &st, 5).len(), 2);
        let st = s.plan();
        assert_eq!(st.finished.len(), 2);
        let slots: Vec<SlotId> = st.admitted.iter().map(|a| a.slot).collect();
        let mut freed: Vec<SlotId> = st.finished.iter().filter_map(|f| f.slot).collect();
        freed.sort();
        let mut slots_sorted = slots.clone();
        slots_sorted.sort();
        assert_eq!(slots_sorted, freed, "the new ones take the freed slots");
        assert_eq!(st.prefill.len(), 2);
    }

    #[test]
    fn the_batch_is_capped_by_max_batch_and_by_the_slots() {
        // Five requests waiting: how many the first step admits.
        let admitted = |max_batch, kv_slots| {
            let mut s = Scheduler::new(SchedulerConfig {
                kv_slots,
                ..cfg(max_batch, 64, 64)
            });
            for id in 1..=5 {
                s.submit(req(id, 4, 50)).unwrap();
            }
            s.plan().admitted.len()
        };
        assert_eq!(admitted(3, 2), 2, "two slots");
        assert_eq!(admitted(1, 4), 1, "a batch of one");
    }

    #[test]
    fn a_cancelled_sequence_frees_its_slot_at_the_next_step() {
        let mut s = Scheduler::new(cfg(1, 64, 64));
        s.submit(req(1, 4, 50)).unwrap();
        s.submit(req(2, 4, 50)).unwrap();
        let st = s.plan();
        sample_all(&mut s, &st, 5);
        s.cancel(1);
        assert_eq!(
            s.record(1, 5),
            None,
            "a cancelled sequence takes no more tokens"
        );
        let st = s.plan();
        assert_eq!(
            st.finished,
            vec![Finished {
                seq: 1,
                slot: Some(0),
                reason: Finish::Cancelled
            }]
        );
        assert_eq!(st.admitted, vec![admitted(2, 0)]);
        assert!(st.decode.is_empty(), "1 no longer runs");
    }

    #[test]
    fn a_cancelled_waiting_request_leaves_without_a_slot() {
        let mut s = Scheduler::new(cfg(1, 64, 64));
        s.submit(req(1, 4, 50)).unwrap();
        s.submit(req(2, 4, 50)).unwrap();
        s.submit(req(3, 4, 50)).unwrap();
        let st = s.plan();
        sample_all(&mut s, &st, 5);
        s.cancel(2);
        assert_eq!(s.waiting(), 1);
        let st = s.plan();
        assert_eq!(
            st.finished,
            vec![Finished {
                seq: 2,
                slot: None,
                reason: Finish::Cancelled
            }]
        );
        assert_eq!(st.decode.len(), 1);
        s.cancel(99); // unknown: ignored
        assert!(s.plan().finished.is_empty());
    }

    #[test]
    fn a_stop_string_or_a_failure_ends_a_sequence_with_that_reason() {
        let mut s = Scheduler::new(cfg(2, 64, 64));
        s.submit(req(1, 4, 50)).unwrap();
        s.submit(req(2, 4, 50)).unwrap();
        let st = s.plan();
        sample_all(&mut s, &st, 5);
        s.end(1, Finish::StopString);
        s.end(1, Finish::Cancelled); // the first reason stays
        s.end(2, Finish::Failed("boom".into()));
        let st = s.plan();
        let reasons: Vec<Finish> = st.finished.iter().map(|f| f.reason.clone()).collect();
        assert_eq!(
            reasons,
            vec![Finish::StopString, Finish::Failed("boom".into())]
        );
        assert!(s.is_idle());
    }

    #[test]
    fn a_sequence_without_its_token_is_not_scheduled_again() {
        // The engine reported nothing for 1 (the driver will end it): 1 must not decode a
        // stale token; 2 goes on.
        let mut s = Scheduler::new(cfg(2, 64, 64));
        s.submit(req(1, 4, 50)).unwrap();
        s.submit(req(2, 4, 50)).unwrap();
        s.plan();
        s.record(2, 5);
        let st = s.plan();
        assert_eq!(st.decode.len(), 1);
        assert_eq!(st.decode[0].seq, 2);
        assert!(st.prefill.is_empty());
    }

    #[test]
    fn bad_requests_are_refused_at_submit() {
        let mut s = Scheduler::new(cfg(1, 8, 8));
        assert_eq!(s.submit(req(1, 0, 5)), Err(SubmitError::EmptyPrompt));
        assert_eq!(
            s.submit(req(1, 8, 5)),
            Err(SubmitError::PromptTooLong {
                prompt: 8,
                positions: 8
            })
        );
        assert_eq!(s.submit(req(1, 4, 0)), Err(SubmitError::NoTokens));
        s.submit(req(1, 7, 5)).unwrap();
        assert_eq!(s.submit(req(1, 2, 5)), Err(SubmitError::Duplicate(1)));
    }

    #[test]
    fn every_request_finishes_exactly_once_under_random_traffic() {
        // A deterministic pseudo-random mix of arrivals, lengths, cancellations, stop ids and
        // step times: each request is admitted once, finishes once, never runs twice in a
        // step, never shares a slot, positions always advance by what ran, and no step
        // prefills past its budget.
        let mut state = 0x9E37_79B9_7F4A_7C15u64;
        let mut rand = move |n: u64| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state % n
        };
        let mut s = Scheduler::new(SchedulerConfig {
            max_batch: 4,
            kv_slots: 4,
            slot_positions: 48,
            prefill_chunk: 10,
            prefill_while_decoding: 3,
            prefill_stretch: 2.0,
        });
        let (mut next, mut admitted, mut finished) = (0u64, vec![], vec![]);
        let mut positions = std::collections::HashMap::new();
        for _ in 0..2000 {
            if next < 300 && rand(3) == 0 {
                s.submit(req(next, 1 + rand(40) as usize, 1 + rand(20) as usize))
                    .unwrap();
                next += 1;
            }
            if rand(20) == 0 {
                let ids = s.sequences();
                if !ids.is_empty() {
                    s.cancel(ids[rand(ids.len() as u64) as usize]);
                }
            }
            let st = s.plan();
            let mut slots = std::collections::HashSet::new();
            let mut seqs = std::collections::HashSet::new();
            for a in &st.admitted {
                admitted.push(a.seq);
            }
            for f in &st.finished {
                finished.push(f.seq);
            }
            for (seq, slot, pos, len) in st
                .decode
                .iter()
                .map(|d| (d.seq, d.slot, d.position, 1))
                .chain(
                    st.prefill
                        .iter()
                        .map(|p| (p.seq, p.slot, p.position, p.tokens.len())),
                )
            {
                assert!(slots.insert(slot), "slot {slot} twice in a step");
                assert!(seqs.insert(seq), "sequence {seq} twice in a step");
                let at = positions.entry(seq).or_insert(0);
                assert_eq!(*at, pos, "sequence {seq} runs at the position it reached");
                *at += len;
                assert!(*at <= 48);
            }
            // The budget: the whole chunk without decodes; beside decodes the minimum, or a
            // step expected within the stretch of its decodes alone; never exceeded.
            let (decodes, tokens) = (st.decode.len(), st.prefill_tokens());
            assert!(tokens <= st.prefill_budget, "{st:?}");
            let times = s.step_times();
            if decodes == 0 {
                assert_eq!(st.prefill_budget, 10);
            } else if st.prefill_budget != 10 && st.prefill_budget > 3 {
                let (alone, with) = (times.estimate(decodes), times.estimate(decodes + tokens));
                assert!(with.unwrap() <= 2.0 * alone.unwrap(), "{st:?}");
            }
            // A machine whose steps cost 20 ms plus 4 ms a row, give or take 10%.
            let secs = (0.020 + 0.004 * st.rows() as f64) * (0.9 + rand(21) as f64 / 100.0);
            s.observe(&st, Duration::from_secs_f64(secs));
            let stop = if rand(30) == 0 { 2 } else { 3 };
            sample_all(&mut s, &st, stop);
        }
        while !s.is_idle() {
            let st = s.plan();
            finished.extend(st.finished.iter().map(|f| f.seq));
            sample_all(&mut s, &st, 3);
        }
        finished.sort();
        let mut all: Vec<u64> = (0..next).collect();
        all.sort();
        assert_eq!(finished, all, "each request finishes exactly once");
        let mut a = admitted.clone();
        a.sort();
        a.dedup();
        assert_eq!(a.len(), admitted.len(), "admitted once");
        assert_eq!(s.free_slots(), 4);
    }
}
