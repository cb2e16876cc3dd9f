//! The compile workers: a dedicated rayon pool, or the calling thread alone for `threads = 1`.

use crate::CompileError;
use rayon::prelude::*;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;

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
    /// it is free, and `f(i, job)` runs it. At most `limit` workers take jobs when given (the
    /// memory budget's cap on compilers in flight): capping the workers, not only the jobs in
    /// flight, also bounds what each worker thread keeps allocated between jobs (an in-process
    /// compiler's thread-local state, the allocator's per-thread arenas). Results come back in
    /// job order.
    pub fn run_jobs<T: Sync, R: Send>(
        &self,
        jobs: &[T],
        limit: Option<usize>,
        f: impl Fn(usize, &T) -> R + Sync,
    ) -> Vec<R> {
        let next = AtomicUsize::new(0);
        let slots: Vec<Mutex<Option<R>>> = jobs.iter().map(|_| Mutex::new(None)).collect();
        let work = || loop {
            let i = next.fetch_add(1, Ordering::Relaxed);
            if i >= jobs.len() {
                break;
            }
            let out = f(i, &jobs[i]);
            *slots[i].lock().expect("slot") = Some(out);
        };
        let workers = self
            .threads
            .min(jobs.len())
            .min(limit.unwrap_or(usize::MAX))
            .max(1);
        match &self.pool {
            Some(p) if workers > 1 => p.scope(|s| {
                for _ in 0..workers {
                    s.spawn(|_| work());
                }
            }),
            _ => work(),
        }
        slots
            .into_iter()
            .map(|s| s.into_inner().expect("slot").expect("every job ran"))
            .collect()
    }
}
