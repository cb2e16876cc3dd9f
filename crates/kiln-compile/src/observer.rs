//! Compile events, and an observer that turns them into a Chrome/Perfetto trace.

use serde::Serialize;
use std::sync::Mutex;
use std::time::Instant;

/// The pipeline's stages, in the order they run.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub enum Stage {
    Analysis,
    KernelExtraction,
    Dedupe,
    Codegen,
    Schedule,
    CacheLookup,
    ParallelCompile,
    ModuleLoading,
    MemoryPlan,
}

impl Stage {
    pub fn name(self) -> &'static str {
        match self {
            Stage::Analysis => "Analysis",
            Stage::KernelExtraction => "Kernel extraction",
            Stage::Dedupe => "Dedupe",
            Stage::Codegen => "Codegen",
            Stage::Schedule => "Schedule",
            Stage::CacheLookup => "Cache lookup",
            Stage::ParallelCompile => "Parallel compile",
            Stage::ModuleLoading => "Module loading",
            Stage::MemoryPlan => "Memory plan",
        }
    }
}

#[derive(Debug)]
pub enum Event<'a> {
    StageStarted {
        stage: Stage,
    },
    StageFinished {
        stage: Stage,
        start: Instant,
        end: Instant,
    },
    /// The compile stage is about to run `jobs` compiler invocations for `kernels` kernels.
    CompileQueued {
        jobs: usize,
        kernels: usize,
    },
    /// One compiler invocation finished (successfully or not) on `worker`.
    JobFinished {
        kernels: &'a [String],
        worker: usize,
        start: Instant,
        end: Instant,
        ok: bool,
    },
    CacheHit {
        kernel: &'a str,
    },
    CacheCorrupt {
        kernel: &'a str,
        reason: &'a str,
    },
    /// The remote tier was asked for one compile unit (on fetch thread `worker`): `outcome`
    /// is `found` (`bytes` long, checked next), `missing` or `unavailable`.
    RemoteFetch {
        kernels: &'a [String],
        worker: usize,
        start: Instant,
        end: Instant,
        outcome: &'a str,
        bytes: usize,
    },
    Warning {
        message: &'a str,
    },
}

/// Receives the pipeline's events (from worker threads too).
pub trait Observer: Sync {
    fn event(&self, event: &Event<'_>);
}

/// Sends `e` to `observer`, if there is one.
pub fn notify(observer: Option<&dyn Observer>, e: &Event<'_>) {
    if let Some(o) = observer {
        o.event(e);
    }
}

/// A warning: something that does not stop the compile, logged and sent to `observer`.
pub(crate) fn warn(observer: Option<&dyn Observer>, message: &str) {
    tracing::debug!("{message}");
    notify(observer, &Event::Warning { message });
}

/// Observers compose: the CLI may draw progress and record a trace at once.
impl<A: Observer, B: Observer> Observer for (A, B) {
    fn event(&self, e: &Event<'_>) {
        self.0.event(e);
        self.1.event(e);
    }
}

/// Trace tracks of the remote tier's fetch threads start here (compile workers are 1, 2, ...).
const REMOTE_TRACK: u64 = 1000;

/// Records stages (track 0), compiler invocations (one track per worker) and remote fetches
/// (one track per fetch thread) as a Chrome trace.
pub struct TraceRecorder {
    origin: Instant,
    events: Mutex<Vec<serde_json::Value>>,
}

impl Default for TraceRecorder {
    fn default() -> Self {
        TraceRecorder {
            origin: Instant::now(),
            events: Mutex::new(Vec::new()),
        }
    }
}

impl TraceRecorder {
    fn us(&self, t: Instant) -> f64 {
        t.saturating_duration_since(self.origin).as_secs_f64() * 1e6
    }

    /// The trace as Chrome's JSON object format (`chrome://tracing`, ui.perfetto.dev).
    pub fn to_json(&self) -> serde_json::Value {
        let mut events = vec![
            serde_json::json!({"ph": "M", "name": "thread_name", "pid": 1, "tid": 0, "args": {"name": "pipeline"}}),
        ];
        let recorded = self.events.lock().expect("trace lock").clone();
        let mut workers: Vec<u64> = recorded
            .iter()
            .filter_map(|e| e["tid"].as_u64())
            .filter(|&t| t > 0)
            .collect();
        workers.sort();
        workers.dedup();
        for w in workers {
            let name = if w >= REMOTE_TRACK {
                format!("remote fetch {}", w - REMOTE_TRACK)
            } else {
                format!("compile worker {}", w - 1)
            };
            events.push(serde_json::json!({"ph": "M", "name": "thread_name", "pid": 1, "tid": w, "args": {"name": name}}));
        }
        events.extend(recorded);
        serde_json::json!({ "traceEvents": events, "displayTimeUnit": "ms" })
    }

    pub fn write(&self, path: &std::path::Path) -> std::io::Result<()> {
        std::fs::write(path, serde_json::to_vec_pretty(&self.to_json())?)
    }
}

impl Observer for TraceRecorder {
    fn event(&self, e: &Event<'_>) {
        let rec = match e {
            Event::StageFinished { stage, start, end } => serde_json::json!({
                "ph": "X", "cat": "stage", "name": stage.name(), "pid": 1, "tid": 0,
                "ts": self.us(*start), "dur": self.us(*end) - self.us(*start),
            }),
            Event::JobFinished {
                kernels,
                worker,
                start,
                end,
                ok,
            } => serde_json::json!({
                "ph": "X", "cat": "compile", "name": if kernels.len() == 1 { kernels[0].clone() } else { format!("{} kernels", kernels.len()) },
                "pid": 1, "tid": worker + 1, "ts": self.us(*start), "dur": self.us(*end) - self.us(*start),
                "args": { "kernels": kernels, "ok": ok },
            }),
            Event::RemoteFetch {
                kernels,
                worker,
                start,
                end,
                outcome,
                bytes,
            } => serde_json::json!({
                "ph": "X", "cat": "remote", "name": format!("remote {outcome}"),
                "pid": 1, "tid": REMOTE_TRACK + *worker as u64, "ts": self.us(*start), "dur": self.us(*end) - self.us(*start),
                "args": { "kernels": kernels, "bytes": bytes },
            }),
            _ => return,
        };
        self.events.lock().expect("trace lock").push(rec);
    }
}
