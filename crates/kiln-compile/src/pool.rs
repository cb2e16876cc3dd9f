//! The compile workers: a dedicated rayon pool, or the calling thread alone for `threads = 1`.

use crate::backend::{Backend, KernelSource};
use crate::observer::{Event, Observer};
use crate::schedule::Job;
use crate::CompileError;
use rayon::prelude::*;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Condvar, Mutex};
use std::time::Instant;

pub struct Workers {
    threads: usize,
    pool: Option<rayon::ThreadPool>,
}

/// What one job produced: a result per kernel (artifact and seconds, or diagnostics).
pub struct JobOutcome {
    pub results: Vec<Result<(Vec<u8>, f64), String>>,
    pub busy_s: f64,
    pub invocations: usize,
}

impl Workers {
    pub fn new(threads: usize) -> Result<Workers, CompileError> {
        let pool = if threads == 1 {
            None
        } else {
            let p = rayon::ThreadPoolBuilder::new()
                .num_threads(threads)
                .thread_name(|i| format!("kiln-compile-{i}"))
                .build()
                .map_err(|e| CompileError::Threads {
                    threads,
                    reason: e.to_string(),
                })?;
            Some(p)
        };
        Ok(Workers { threads, pool })
    }

    /// `f` over `items` in parallel (or in order on this thread), results in input order.
    pub fn map<T: Sync, R: Send>(&self, items: &[T], f: impl Fn(&T) -> R + Sync) -> Vec<R> {
        match &self.pool {
            None => items.iter().map(f).collect(),
            Some(p) => p.install(|| items.par_iter().map(&f).collect()),
        }
    }

    /// Runs jobs in list order (the schedule's LPT order): each worker takes the next job when
    /// it is free. At most `limit` jobs run at once when given. Results come back in job order.
    pub fn run_jobs(
        &self,
        jobs: &[Job],
        limit: Option<usize>,
        f: impl Fn(&Job) -> JobOutcome + Sync,
    ) -> Vec<JobOutcome> {
        let next = AtomicUsize::new(0);
        let slots: Vec<Mutex<Option<JobOutcome>>> = jobs.iter().map(|_| Mutex::new(None)).collect();
        let gate = Gate::new(limit.unwrap_or(usize::MAX));
        let work = || loop {
            let i = next.fetch_add(1, Ordering::Relaxed);
            if i >= jobs.len() {
                break;
            }
            gate.acquire();
            let out = f(&jobs[i]);
            gate.release();
            *slots[i].lock().expect("slot") = Some(out);
        };
        match &self.pool {
            None => work(),
            Some(p) => p.scope(|s| {
                for _ in 0..self.threads.min(jobs.len()) {
                    s.spawn(|_| work());
                }
            }),
        }
        slots
            .into_iter()
            .map(|s| s.into_inner().expect("slot").expect("every job ran"))
            .collect()
    }
}

/// A counting semaphore for the in-flight memory budget.
struct Gate {
    free: Mutex<usize>,
    cv: Condvar,
}

impl Gate {
    fn new(n: usize) -> Gate {
        Gate {
            free: Mutex::new(n.max(1)),
            cv: Condvar::new(),
        }
    }
    fn acquire(&self) {
        let mut f = self.free.lock().expect("gate");
        while *f == 0 {
            f = self.cv.wait(f).expect("gate");
        }
        *f -= 1;
    }
    fn release(&self) {
        *self.free.lock().expect("gate") += 1;
        self.cv.notify_one();
    }
}

fn invoke<B: Backend>(
    backend: &B,
    kernels: &[&KernelSource],
    observer: Option<&dyn Observer>,
) -> (Result<Vec<u8>, String>, f64) {
    let start = Instant::now();
    let result =
        catch_unwind(AssertUnwindSafe(|| backend.compile(kernels))).unwrap_or_else(|panic| {
            let msg = panic
                .downcast_ref::<String>()
                .cloned()
                .or_else(|| panic.downcast_ref::<&str>().map(|s| s.to_string()))
                .unwrap_or_else(|| "unknown panic".into());
            Err(format!("the compile worker panicked: {msg}"))
        });
    let end = Instant::now();
    if let Some(o) = observer {
        let names: Vec<String> = kernels.iter().map(|k| k.name.clone()).collect();
        o.event(&Event::JobFinished {
            kernels: &names,
            worker: rayon::current_thread_index().unwrap_or(0),
            start,
            end,
            ok: result.is_ok(),
        });
    }
    (result, (end - start).as_secs_f64())
}

/// Compiles one job. If a batch fails, each of its kernels is compiled alone so that every
/// failing kernel is named and the good ones still get built.
pub fn compile_job<B: Backend>(
    backend: &B,
    kernels: &[&KernelSource],
    observer: Option<&dyn Observer>,
) -> JobOutcome {
    let (result, secs) = invoke(backend, kernels, observer);
    match result {
        Ok(artifact) => JobOutcome {
            results: kernels
                .iter()
                .map(|_| Ok((artifact.clone(), secs)))
                .collect(),
            busy_s: secs,
            invocations: 1,
        },
        Err(diag) if kernels.len() == 1 => JobOutcome {
            results: vec![Err(diag)],
            busy_s: secs,
            invocations: 1,
        },
        Err(_) => {
            let mut busy = secs;
            let results = kernels
                .iter()
                .map(|k| {
                    let (r, s) = invoke(backend, &[k], observer);
                    busy += s;
                    r.map(|a| (a, s))
                })
                .collect();
            JobOutcome {
                results,
                busy_s: busy,
                invocations: 1 + kernels.len(),
            }
        }
    }
}
