//! The compile workers: a dedicated rayon pool, or the calling thread alone for `threads = 1`.

use crate::CompileError;
use rayon::prelude::*;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Condvar, Mutex};

pub struct Workers {
    threads: usize,
    pool: Option<rayon::ThreadPool>,
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
    /// it is free, and `f(i, job)` runs it. At most `limit` jobs run at once when given.
    /// Results come back in job order.
    pub fn run_jobs<T: Sync, R: Send>(
        &self,
        jobs: &[T],
        limit: Option<usize>,
        f: impl Fn(usize, &T) -> R + Sync,
    ) -> Vec<R> {
        let next = AtomicUsize::new(0);
        let slots: Vec<Mutex<Option<R>>> = jobs.iter().map(|_| Mutex::new(None)).collect();
        let gate = Gate::new(limit.unwrap_or(usize::MAX));
        let work = || loop {
            let i = next.fetch_add(1, Ordering::Relaxed);
            if i >= jobs.len() {
                break;
            }
            gate.acquire();
            let out = f(i, &jobs[i]);
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
