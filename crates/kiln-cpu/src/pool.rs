//! The CPU device's workers: a persistent pool whose launch is a few atomic operations.
//!
//! A decode step is hundreds of short launches; a rayon `install` + `par_iter` per launch
//! costs tens of microseconds of wake-ups and joins each (see docs/benchmarks.md). Here a
//! launch publishes a job (a closure over chunk indices), bumps an epoch that idle workers
//! watch, and the caller works on the chunks too. Workers spin on the epoch for a while after
//! a launch, then yield, then park on a condition variable, so an idle process costs nothing.
//!
//! Chunks are claimed with one compare-and-swap on a word holding (epoch, chunk count, next
//! chunk): a worker that woke late for an old launch cannot claim a chunk of a new one, and it
//! reads the job only after a successful claim, while the caller is still waiting for that
//! chunk. Which thread runs which chunk never changes a result: kernels compute whole work
//! units per chunk.

use std::sync::atomic::{AtomicBool, AtomicPtr, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;

/// A launch: `run(chunk, worker)` for every chunk; `worker` indexes per-thread resources
/// (`0..workers` for pool threads, `workers` for the calling thread).
type Job<'a> = dyn Fn(usize, usize) + Sync + 'a;

/// Polls of the epoch before a worker starts yielding (about 10-50 us: decode launches follow
/// each other closer than that).
const SPIN_POLLS: u32 = 20_000;
/// Yields before it parks.
const YIELDS: u32 = 64;

struct Shared {
    /// (epoch << 32) | (chunks << 16) | next chunk.
    claim: AtomicU64,
    /// The job of the current epoch (a `*const &Job` on the caller's stack).
    job: AtomicPtr<()>,
    /// Chunks finished in the current epoch.
    done: AtomicUsize,
    parked: AtomicUsize,
    lock: Mutex<()>,
    wake: Condvar,
    shutdown: AtomicBool,
}

const CHUNK_BITS: u64 = 16;
const MAX_CHUNKS: usize = (1 << CHUNK_BITS) - 1;

fn pack(epoch: u64, chunks: usize, next: usize) -> u64 {
    (epoch << 32) | ((chunks as u64) << CHUNK_BITS) | next as u64
}

fn unpack(w: u64) -> (u64, usize, usize) {
    (
        w >> 32,
        ((w >> CHUNK_BITS) & MAX_CHUNKS as u64) as usize,
        (w & MAX_CHUNKS as u64) as usize,
    )
}

impl Shared {
    /// Claims and runs chunks of the launch in `w`'s epoch until none is left.
    fn work(&self, mut w: u64, worker: usize) {
        loop {
            let (epoch, chunks, next) = unpack(w);
            if next >= chunks {
                return;
            }
            match self.claim.compare_exchange_weak(
                w,
                pack(epoch, chunks, next + 1),
                Ordering::AcqRel,
                Ordering::Acquire,
            ) {
                Ok(_) => {
                    // SAFETY: the claim succeeded, so the launch of this epoch is running: its
                    // caller waits until this chunk is done, which keeps the job alive.
                    let job = unsafe { &**(self.job.load(Ordering::Acquire) as *const &Job) };
                    // A panic must not unwind out of here: other threads may still run the
                    // job, which lives on the caller's stack, and the caller would wait for a
                    // chunk that never finishes. Jobs call generated C, which does not panic.
                    let run = std::panic::AssertUnwindSafe(|| job(next, worker));
                    if std::panic::catch_unwind(run).is_err() {
                        eprintln!("kiln: a CPU kernel launch panicked; aborting");
                        std::process::abort();
                    }
                    self.done.fetch_add(1, Ordering::Release);
                }
                Err(now) => {
                    if unpack(now).0 != epoch {
                        return;
                    }
                    w = now;
                }
            }
        }
    }
}

/// A pool of `workers` threads plus the caller.
pub struct Pool {
    shared: Arc<Shared>,
    workers: Vec<JoinHandle<()>>,
    epoch: u64,
}

impl Pool {
    pub fn new(workers: usize) -> std::io::Result<Pool> {
        let shared = Arc::new(Shared {
            claim: AtomicU64::new(0),
            job: AtomicPtr::new(std::ptr::null_mut()),
            done: AtomicUsize::new(0),
            parked: AtomicUsize::new(0),
            lock: Mutex::new(()),
            wake: Condvar::new(),
            shutdown: AtomicBool::new(false),
        });
        let mut handles = Vec::with_capacity(workers);
        for i in 0..workers {
            let s = shared.clone();
            handles.push(
                std::thread::Builder::new()
                    .name(format!("kiln-run-{i}"))
                    .spawn(move || worker_loop(&s, i))?,
            );
        }
        Ok(Pool {
            shared,
            workers: handles,
            epoch: 0,
        })
    }

    /// Runs `job(chunk, worker)` for `chunk` in `0..chunks` on the workers and the calling
    /// thread; returns when every chunk has run.
    pub fn run(&mut self, chunks: usize, job: &Job) {
        assert!(chunks <= MAX_CHUNKS, "{chunks} chunks in one launch");
        if chunks == 0 {
            return;
        }
        let s = &*self.shared;
        self.epoch = (self.epoch + 1) & 0xffff_ffff;
        let job_ref: &Job = job;
        s.done.store(0, Ordering::Relaxed);
        s.job
            .store(&job_ref as *const &Job as *mut (), Ordering::Release);
        let w = pack(self.epoch, chunks, 0);
        s.claim.store(w, Ordering::SeqCst);
        if s.parked.load(Ordering::SeqCst) > 0 {
            let _g = s.lock.lock().unwrap_or_else(|e| e.into_inner());
            s.wake.notify_all();
        }
        s.work(w, self.workers.len());
        // Chunks other threads claimed: spin briefly, then yield (a preempted worker holding
        // the last chunk needs the core more than we do).
        let mut polls = 0u32;
        while s.done.load(Ordering::Acquire) < chunks {
            polls += 1;
            if polls < 4000 {
                std::hint::spin_loop();
            } else {
                std::thread::yield_now();
            }
        }
    }
}

fn worker_loop(s: &Shared, me: usize) {
    let mut seen = 0u64;
    loop {
        let mut polls = 0u32;
        let w = loop {
            if s.shutdown.load(Ordering::Acquire) {
                return;
            }
            let w = s.claim.load(Ordering::Acquire);
            let (epoch, chunks, next) = unpack(w);
            if epoch != seen && next < chunks {
                break w;
            }
            if epoch != seen {
                seen = epoch; // a launch already fully claimed
            }
            polls += 1;
            if polls < SPIN_POLLS {
                std::hint::spin_loop();
            } else if polls < SPIN_POLLS + YIELDS {
                std::thread::yield_now();
            } else {
                let g = s.lock.lock().unwrap_or_else(|e| e.into_inner());
                s.parked.fetch_add(1, Ordering::SeqCst);
                let unchanged = unpack(s.claim.load(Ordering::SeqCst)).0 == seen;
                let g = if unchanged && !s.shutdown.load(Ordering::SeqCst) {
                    s.wake.wait(g).unwrap_or_else(|e| e.into_inner())
                } else {
                    g
                };
                s.parked.fetch_sub(1, Ordering::SeqCst);
                drop(g);
                polls = 0;
            }
        };
        seen = unpack(w).0;
        s.work(w, me);
    }
}

impl Drop for Pool {
    fn drop(&mut self) {
        self.shared.shutdown.store(true, Ordering::SeqCst);
        {
            let _g = self.shared.lock.lock().unwrap_or_else(|e| e.into_inner());
            self.shared.wake.notify_all();
        }
        for h in self.workers.drain(..) {
            let _ = h.join();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_chunk_runs_once_per_launch() {
        let mut pool = Pool::new(3).unwrap();
        for chunks in [0usize, 1, 2, 7, 64, 1000] {
            for _ in 0..50 {
                let hits: Vec<AtomicUsize> = (0..chunks).map(|_| AtomicUsize::new(0)).collect();
                pool.run(chunks, &|c, w| {
                    assert!(w <= 3);
                    hits[c].fetch_add(1, Ordering::Relaxed);
                });
                assert!(hits.iter().all(|h| h.load(Ordering::Relaxed) == 1));
            }
        }
    }

    #[test]
    fn workers_park_and_wake_again() {
        let mut pool = Pool::new(2).unwrap();
        let total = AtomicUsize::new(0);
        pool.run(8, &|_, _| {
            total.fetch_add(1, Ordering::Relaxed);
        });
        // Long enough for the workers to give up spinning and park.
        std::thread::sleep(std::time::Duration::from_millis(200));
        pool.run(8, &|_, _| {
            total.fetch_add(1, Ordering::Relaxed);
        });
        assert_eq!(total.load(Ordering::Relaxed), 16);
    }
}
