//! The engine thread's loop, and the handle HTTP handlers reach it through.
//!
//! Each turn of the loop: take the requests that arrived (blocking while there is nothing to
//! do), cancel sequences whose client went away, ask the scheduler for a step, have the
//! engine execute it, and turn each sampled token into text for its request (stop strings,
//! whole characters), the request's final event, its log line and its metrics.
//!
//! The queue is bounded where requests enter it: [`EngineHandle::submit`] counts requests that
//! wait for a slot and refuses one more than `--max-queue` at once (HTTP 429).

use crate::api::{ApiError, Usage};
use crate::engine::{panic_message, Engine, StepError, TokenEvent};
use crate::metrics::Metrics;
use crate::scheduler::{Finish, Scheduler, SeqId, SeqRequest, Step};
use crate::text::TextStream;
use kiln_models::{Sampling, Tokenizer};
use std::collections::HashMap;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicU64, AtomicU8, AtomicUsize, Ordering};
use std::sync::mpsc::{Receiver, RecvTimeoutError, Sender, TryRecvError};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::mpsc::UnboundedSender;

/// A request on its way to the engine thread, tokenized and checked.
pub struct Submission {
    pub seq: SeqId,
    /// The id the client sees (`cmpl-...`, `chatcmpl-...`).
    pub request_id: String,
    pub endpoint: &'static str,
    pub prompt: Vec<u32>,
    /// At most this many tokens (the context may end the sequence earlier).
    pub max_tokens: usize,
    pub sampling: Sampling,
    /// Token ids that end the sequence (none with `ignore_eos`).
    pub stop_ids: Vec<u32>,
    pub stop: Vec<String>,
    /// Where the request's events go; dropping the receiver cancels the request.
    pub events: UnboundedSender<SeqEvent>,
    pub arrived: Instant,
}

/// What a request hears from the engine thread.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SeqEvent {
    /// One generated token and the text it completes (possibly empty: held back or not yet
    /// a whole character; none for the end-of-sequence token).
    Token { text: String, id: u32 },
    /// The last event of a completed request.
    Done {
        finish_reason: &'static str,
        usage: Usage,
    },
    /// The last event of a request that did not complete.
    Failed(ApiError),
}

enum Command {
    Submit(Submission),
    /// Stop taking requests; cancel what still runs at `cancel_at`.
    Drain {
        cancel_at: Instant,
    },
}

/// Where the engine is in its life.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EngineState {
    Loading = 0,
    Ready = 1,
    Draining = 2,
    Failed = 3,
}

/// The HTTP side's way to the engine thread (shared by every handler).
pub struct EngineHandle {
    tx: Sender<Command>,
    state: Arc<AtomicU8>,
    /// Requests submitted and not yet admitted to a slot (nor gone).
    waiting: Arc<AtomicUsize>,
    max_queue: usize,
    next_seq: AtomicU64,
}

/// The engine thread's way to say where the engine is.
#[derive(Clone)]
pub struct StatusFlag(Arc<AtomicU8>);

impl StatusFlag {
    pub fn set(&self, s: EngineState) {
        self.0.store(s as u8, Ordering::SeqCst);
    }

    /// Ready, unless a shutdown began while the model loaded.
    pub fn set_ready(&self) {
        let _ = self.0.compare_exchange(
            EngineState::Loading as u8,
            EngineState::Ready as u8,
            Ordering::SeqCst,
            Ordering::SeqCst,
        );
    }
}

impl EngineHandle {
    pub fn status(&self) -> StatusFlag {
        StatusFlag(self.state.clone())
    }

    pub fn state(&self) -> EngineState {
        match self.state.load(Ordering::SeqCst) {
            0 => EngineState::Loading,
            1 => EngineState::Ready,
            2 => EngineState::Draining,
            _ => EngineState::Failed,
        }
    }

    pub fn set_state(&self, s: EngineState) {
        self.state.store(s as u8, Ordering::SeqCst);
    }

    /// A fresh sequence id.
    pub fn next_seq(&self) -> SeqId {
        self.next_seq.fetch_add(1, Ordering::Relaxed)
    }

    /// Requests waiting for a slot.
    pub fn queue_depth(&self) -> usize {
        self.waiting.load(Ordering::SeqCst)
    }

    /// Queues a request, or refuses it at once: the model is not ready (503), the server is
    /// shutting down (503), or `--max-queue` requests already wait (429).
    pub fn submit(&self, sub: Submission) -> Result<(), ApiError> {
        match self.state() {
            EngineState::Ready => {}
            EngineState::Loading => {
                return Err(ApiError::unavailable(
                    "the model is still loading (GET /health says when it is ready)",
                    "model_loading",
                ))
            }
            EngineState::Draining => {
                return Err(ApiError::unavailable(
                    "the server is shutting down",
                    "shutting_down",
                ))
            }
            EngineState::Failed => {
                return Err(ApiError::unavailable(
                    "the engine has stopped (see the server's log)",
                    "engine_failed",
                ))
            }
        }
        let reserved = self
            .waiting
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| {
                (n < self.max_queue).then_some(n + 1)
            });
        if reserved.is_err() {
            return Err(ApiError::queue_full(self.max_queue));
        }
        self.tx.send(Command::Submit(sub)).map_err(|_| {
            self.waiting.fetch_sub(1, Ordering::SeqCst);
            ApiError::unavailable("the engine has stopped", "engine_failed")
        })
    }

    /// Stops taking requests; those still running after `grace` are cancelled.
    pub fn drain(&self, grace: Duration) {
        if self.state() != EngineState::Failed {
            self.set_state(EngineState::Draining);
        }
        let _ = self.tx.send(Command::Drain {
            cancel_at: Instant::now() + grace,
        });
    }
}

/// A request the engine thread is serving.
struct Live {
    request_id: String,
    endpoint: &'static str,
    prompt_tokens: usize,
    events: UnboundedSender<SeqEvent>,
    text: TextStream,
    generated: usize,
    arrived: Instant,
    admitted: Option<Instant>,
    first_token: Option<Instant>,
    last_token: Option<Instant>,
    /// Its last event has been sent (or its client is gone): nothing more goes out.
    done: bool,
}

/// The engine thread's state: the scheduler, the engine, and every live request.
pub struct Driver {
    engine: Box<dyn Engine>,
    scheduler: Scheduler,
    tokenizer: Option<Arc<Tokenizer>>,
    live: HashMap<SeqId, Live>,
    rx: Receiver<Command>,
    waiting: Arc<AtomicUsize>,
    metrics: Arc<Metrics>,
    cancel_at: Option<Instant>,
}

/// A handle and the driver it talks to (the driver then runs on the engine thread).
pub fn channel(
    scheduler: Scheduler,
    tokenizer: Option<Arc<Tokenizer>>,
    metrics: Arc<Metrics>,
    max_queue: usize,
) -> (EngineHandle, impl FnOnce(Box<dyn Engine>) -> Driver) {
    let (tx, rx) = std::sync::mpsc::channel();
    let waiting = Arc::new(AtomicUsize::new(0));
    let handle = EngineHandle {
        tx,
        state: Arc::new(AtomicU8::new(EngineState::Loading as u8)),
        waiting: waiting.clone(),
        max_queue,
        next_seq: AtomicU64::new(1),
    };
    metrics
        .batch_capacity
        .set(scheduler.config().max_batch as i64);
    let make = move |engine: Box<dyn Engine>| Driver {
        engine,
        scheduler,
        tokenizer,
        live: HashMap::new(),
        rx,
        waiting,
        metrics,
        cancel_at: None,
    };
    (handle, make)
}

fn ms(d: Duration) -> String {
    format!("{:.1}", d.as_secs_f64() * 1e3)
}

impl Driver {
    /// Serves until every handle is gone.
    pub fn run(mut self) {
        while self.intake() {
            self.cancel_gone();
            let step = self.scheduler.plan();
            self.begin(&step);
            if step.has_work() || !step.finished.is_empty() || !step.admitted.is_empty() {
                if step.has_work() {
                    self.metrics
                        .step_batch_size
                        .observe(step.batch_size() as f64);
                }
                let started = Instant::now();
                let events = match catch_unwind(AssertUnwindSafe(|| self.engine.step(&step))) {
                    Ok(events) => {
                        // What the prefill budget of later steps is drawn from.
                        self.scheduler.observe(&step, started.elapsed());
                        events
                    }
                    Err(panic) => {
                        let msg = format!("the engine panicked: {}", panic_message(&panic));
                        tracing::error!("{msg}");
                        worked_on(&step)
                            .map(|seq| TokenEvent {
                                seq,
                                outcome: Err(StepError::Forward(msg.clone())),
                            })
                            .collect()
                    }
                };
                for e in events {
                    self.on_event(e);
                }
            }
            self.metrics
                .batch_occupancy
                .set(self.scheduler.running() as i64);
            self.metrics
                .queue_depth
                .set(self.waiting.load(Ordering::SeqCst) as i64);
        }
    }

    /// Takes new commands, waiting for one while there is nothing to do. False when the
    /// handle is gone and nothing is left to serve.
    fn intake(&mut self) -> bool {
        if self.scheduler.is_idle() {
            let cmd = match self.cancel_at {
                // Draining: nothing will come; wake up now and then to exit with the handle.
                Some(_) => self.rx.recv_timeout(Duration::from_millis(200)),
                None => self.rx.recv().map_err(|_| RecvTimeoutError::Disconnected),
            };
            match cmd {
                Ok(c) => self.command(c),
                Err(RecvTimeoutError::Timeout) => return true,
                Err(RecvTimeoutError::Disconnected) => return false,
            }
        }
        loop {
            match self.rx.try_recv() {
                Ok(c) => self.command(c),
                Err(TryRecvError::Empty) => return true,
                Err(TryRecvError::Disconnected) => return !self.scheduler.is_idle(),
            }
        }
    }

    fn command(&mut self, c: Command) {
        match c {
            Command::Drain { cancel_at } => {
                self.cancel_at = Some(cancel_at);
            }
            Command::Submit(sub) => {
                let req = SeqRequest {
                    id: sub.seq,
                    prompt: sub.prompt,
                    max_tokens: sub.max_tokens,
                    stop_ids: sub.stop_ids,
                    sampling: sub.sampling,
                };
                let prompt_tokens = req.prompt.len();
                let seq = req.id;
                self.live.insert(
                    seq,
                    Live {
                        request_id: sub.request_id,
                        endpoint: sub.endpoint,
                        prompt_tokens,
                        events: sub.events,
                        text: TextStream::new(sub.stop),
                        generated: 0,
                        arrived: sub.arrived,
                        admitted: None,
                        first_token: None,
                        last_token: None,
                        done: false,
                    },
                );
                if let Err(e) = self.scheduler.submit(req) {
                    self.waiting.fetch_sub(1, Ordering::SeqCst);
                    self.complete(seq, Finish::Failed(e.to_string()));
                    self.live.remove(&seq);
                }
            }
        }
    }

    /// Cancels sequences whose client went away, and everything once the grace period of a
    /// shutdown is over.
    fn cancel_gone(&mut self) {
        let deadline_passed = self.cancel_at.is_some_and(|t| Instant::now() >= t);
        let gone: Vec<SeqId> = self
            .live
            .iter()
            .filter(|(_, l)| !l.done && (deadline_passed || l.events.is_closed()))
            .map(|(&seq, _)| seq)
            .collect();
        for seq in gone {
            self.scheduler.cancel(seq);
            self.complete(seq, Finish::Cancelled);
        }
    }

    /// Bookkeeping of a step's admissions and departures.
    fn begin(&mut self, step: &Step) {
        let now = Instant::now();
        for a in &step.admitted {
            self.waiting.fetch_sub(1, Ordering::SeqCst);
            if let Some(l) = self.live.get_mut(&a.seq) {
                l.admitted = Some(now);
                self.metrics.prompt_tokens.inc_by(l.prompt_tokens as u64);
            }
        }
        for f in &step.finished {
            if f.slot.is_none() {
                // It left the queue without a slot.
                self.waiting.fetch_sub(1, Ordering::SeqCst);
            }
            if self.live.get(&f.seq).is_some_and(|l| !l.done) {
                self.complete(f.seq, f.reason.clone());
            }
            self.live.remove(&f.seq);
        }
    }

    fn on_event(&mut self, e: TokenEvent) {
        let seq = e.seq;
        if self.live.get(&seq).is_none_or(|l| l.done) {
            return;
        }
        let token = match e.outcome {
            Ok(t) => t,
            Err(e) => {
                let msg = e.to_string();
                self.scheduler.end(seq, Finish::Failed(msg.clone()));
                self.complete(seq, Finish::Failed(msg));
                return;
            }
        };
        let mut finish = self.scheduler.record(seq, token);
        let now = Instant::now();
        let live = self.live.get_mut(&seq).expect("checked above");
        match live.last_token {
            None => self
                .metrics
                .time_to_first_token
                .observe((now - live.arrived).as_secs_f64()),
            Some(t) => self
                .metrics
                .inter_token_latency
                .observe((now - t).as_secs_f64()),
        }
        live.first_token.get_or_insert(now);
        live.last_token = Some(now);
        live.generated += 1;
        self.metrics.generation_tokens.inc();
        let mut text = String::new();
        if let Some(tok) = &self.tokenizer {
            // The end-of-sequence token is output (it counts, its id is reported) but not text.
            let pieces = (finish != Some(Finish::Eos))
                .then(|| live.text.push(tok, token))
                .transpose()
                .and_then(|p| {
                    let mut p = p.unwrap_or_default();
                    if finish.is_some() && !p.stopped {
                        let rest = live.text.finish(tok)?;
                        p.text.push_str(&rest.text);
                        p.stopped = rest.stopped;
                    }
                    Ok(p)
                });
            match pieces {
                Ok(p) => {
                    text = p.text;
                    if p.stopped {
                        finish = Some(Finish::StopString);
                    }
                }
                Err(msg) => finish = Some(Finish::Failed(format!("cannot decode: {msg}"))),
            }
        }
        if live
            .events
            .send(SeqEvent::Token { text, id: token })
            .is_err()
        {
            finish = Some(Finish::Cancelled);
        }
        if let Some(f) = finish {
            // The scheduler keeps the reason it found first; it only needs to free the slot.
            self.scheduler.end(seq, f.clone());
            self.complete(seq, f);
        }
    }

    /// The request's last event, metrics and log line (once).
    fn complete(&mut self, seq: SeqId, finish: Finish) {
        let Some(l) = self.live.get_mut(&seq) else {
            return;
        };
        if l.done {
            return;
        }
        l.done = true;
        let now = Instant::now();
        let shutting_down = self.cancel_at.is_some_and(|t| now >= t);
        let event = match (&finish, finish.openai_reason()) {
            (_, Some(reason)) => Some(SeqEvent::Done {
                finish_reason: reason,
                usage: Usage::new(l.prompt_tokens, l.generated),
            }),
            (Finish::Failed(msg), None) => Some(SeqEvent::Failed(ApiError::internal(format!(
                "generation failed: {msg}"
            )))),
            (_, None) if shutting_down => Some(SeqEvent::Failed(ApiError::unavailable(
                "the server is shutting down: the request did not finish within the grace period",
                "shutting_down",
            ))),
            // Its client is gone: nobody to tell.
            _ => None,
        };
        if let Some(e) = event {
            let _ = l.events.send(e);
        }
        self.metrics
            .request(finish.openai_reason().unwrap_or(finish.label()));
        self.metrics
            .request_duration
            .observe((now - l.arrived).as_secs_f64());
        let admitted = l.admitted.unwrap_or(now);
        let first = l.first_token.unwrap_or(now.max(admitted));
        let last = l.last_token.unwrap_or(first);
        let detail = match &finish {
            Finish::Failed(msg) => format!(" error={msg:?}"),
            _ => String::new(),
        };
        tracing::info!(
            "request id={} endpoint={} prompt_tokens={} completion_tokens={} queue_ms={} \
             prefill_ms={} decode_ms={} finish_reason={}{detail}",
            l.request_id,
            l.endpoint,
            l.prompt_tokens,
            l.generated,
            ms(admitted - l.arrived),
            ms(first.saturating_duration_since(admitted)),
            ms(last.saturating_duration_since(first)),
            finish.openai_reason().unwrap_or(finish.label()),
        );
    }
}

/// Sequences a step runs that expect a token (or an error) back.
fn worked_on(step: &Step) -> impl Iterator<Item = SeqId> + '_ {
    step.decode
        .iter()
        .map(|d| d.seq)
        .chain(step.prefill.iter().map(|p| p.seq))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::scheduler::SchedulerConfig;
    use tokio::sync::mpsc::{unbounded_channel, UnboundedReceiver};

    /// An engine whose tokens are a function of the sequence and position, and which panics
    /// on one sequence: the driver must fail that request only.
    struct CountingEngine {
        panic_on: SeqId,
    }

    impl Engine for CountingEngine {
        fn step(&mut self, step: &Step) -> Vec<TokenEvent> {
            let mut out = vec![];
            for d in &step.decode {
                out.push(TokenEvent {
                    seq: d.seq,
                    outcome: Ok(100 + d.position as u32),
                });
            }
            for p in &step.prefill {
                if p.seq == self.panic_on {
                    // Caught at the engine boundary: the whole step fails.
                    panic!("boom in sequence {}", p.seq);
                }
                if p.last {
                    out.push(TokenEvent {
                        seq: p.seq,
                        outcome: Ok(100 + p.tokens.len() as u32 + p.position as u32 - 1),
                    });
                }
            }
            out
        }
    }

    fn submit(
        h: &EngineHandle,
        prompt_len: usize,
        max_tokens: usize,
    ) -> (SeqId, UnboundedReceiver<SeqEvent>) {
        let (tx, rx) = unbounded_channel();
        (submit_to(h, tx, prompt_len, max_tokens), rx)
    }

    fn submit_to(
        h: &EngineHandle,
        tx: UnboundedSender<SeqEvent>,
        prompt_len: usize,
        max_tokens: usize,
    ) -> SeqId {
        let seq = h.next_seq();
        h.submit(Submission {
            seq,
            request_id: format!("test-{seq}"),
            endpoint: "/test",
            prompt: vec![1; prompt_len],
            max_tokens,
            sampling: Sampling::default(),
            stop_ids: vec![],
            stop: vec![],
            events: tx,
            arrived: Instant::now(),
        })
        .unwrap();
        seq
    }

    fn collect(mut rx: UnboundedReceiver<SeqEvent>) -> Vec<SeqEvent> {
        let mut v = vec![];
        while let Some(e) = rx.blocking_recv() {
            let last = !matches!(e, SeqEvent::Token { .. });
            v.push(e);
            if last {
                break;
            }
        }
        v
    }

    fn start(max_batch: usize, max_queue: usize, panic_on: SeqId) -> (EngineHandle, Arc<Metrics>) {
        let sched = Scheduler::new(SchedulerConfig {
            max_batch,
            kv_slots: max_batch,
            slot_positions: 64,
            prefill_chunk: 4,
            prefill_while_decoding: 4,
            prefill_stretch: 2.0,
        });
        let metrics = Arc::new(Metrics::new());
        let (h, make) = channel(sched, None, metrics.clone(), max_queue);
        h.set_state(EngineState::Ready);
        std::thread::spawn(move || make(Box::new(CountingEngine { panic_on })).run());
        (h, metrics)
    }

    #[test]
    fn requests_get_their_tokens_and_a_final_event() {
        let (h, _) = start(2, 8, 0);
        let rxs: Vec<_> = (0..5).map(|i| submit(&h, 3 + i, 4)).collect();
        for (i, (_, rx)) in rxs.into_iter().enumerate() {
            let ev = collect(rx);
            let p = 3 + i as u32;
            let ids: Vec<u32> = ev
                .iter()
                .filter_map(|e| match e {
                    SeqEvent::Token { id, .. } => Some(*id),
                    _ => None,
                })
                .collect();
            assert_eq!(ids, vec![100 + p - 1, 100 + p, 100 + p + 1, 100 + p + 2]);
            assert_eq!(
                ev.last().unwrap(),
                &SeqEvent::Done {
                    finish_reason: "length",
                    usage: Usage::new(p as usize, 4)
                }
            );
        }
        assert_eq!(h.queue_depth(), 0);
    }

    #[test]
    fn a_panic_in_one_sequence_fails_its_request_not_the_server() {
        // Sequence 2 panics in its prefill. The engine boundary turns the panic into an
        // error for every sequence of that step; later requests are served.
        let (h, _) = start(1, 8, 2);
        let (_, a) = submit(&h, 3, 2);
        let a = collect(a);
        assert!(matches!(a.last(), Some(SeqEvent::Done { .. })), "{a:?}");
        let (_, b) = submit(&h, 3, 2);
        match collect(b).last() {
            Some(SeqEvent::Failed(e)) => {
                assert_eq!(e.status, 500);
                assert!(e.message.contains("boom in sequence 2"), "{e:?}");
            }
            other => panic!("{other:?}"),
        }
        let (_, c) = submit(&h, 3, 2);
        assert!(matches!(collect(c).last(), Some(SeqEvent::Done { .. })));
    }

    #[test]
    fn the_queue_refuses_past_max_queue_and_counts_admissions() {
        // No driver runs: nothing leaves the queue.
        let sched = Scheduler::new(SchedulerConfig {
            max_batch: 1,
            kv_slots: 1,
            slot_positions: 64,
            prefill_chunk: 4,
            prefill_while_decoding: 4,
            prefill_stretch: 2.0,
        });
        let (h, _make) = channel(sched, None, Arc::new(Metrics::new()), 2);
        let (tx, _rx) = unbounded_channel();
        let sub = |seq| Submission {
            seq,
            request_id: String::new(),
            endpoint: "/test",
            prompt: vec![1],
            max_tokens: 1,
            sampling: Sampling::default(),
            stop_ids: vec![],
            stop: vec![],
            events: tx.clone(),
            arrived: Instant::now(),
        };
        assert_eq!(h.submit(sub(1)).unwrap_err().status, 503, "still loading");
        h.set_state(EngineState::Ready);
        h.submit(sub(1)).unwrap();
        h.submit(sub(2)).unwrap();
        let e = h.submit(sub(3)).unwrap_err();
        assert_eq!((e.status, e.code), (429, Some("queue_full")));
        h.drain(Duration::ZERO);
        assert_eq!(h.submit(sub(4)).unwrap_err().code, Some("shutting_down"));
    }

    #[test]
    fn a_request_whose_client_is_gone_is_cancelled_and_frees_its_slot() {
        let (h, metrics) = start(1, 8, 0);
        let (tx, rx) = unbounded_channel();
        drop(rx);
        // Without the cancellation it would generate until its context is full.
        submit_to(&h, tx, 3, 1_000_000);
        // With one slot, b runs only once a's slot is free.
        let (_, b) = submit(&h, 3, 2);
        assert!(matches!(collect(b).last(), Some(SeqEvent::Done { .. })));
        let text = metrics.render();
        assert!(
            text.contains("kiln_requests_total{outcome=\"cancelled\"} 1"),
            "{text}"
        );
        assert!(!text.contains("outcome=\"length\"} 2"), "{text}");
    }
}
