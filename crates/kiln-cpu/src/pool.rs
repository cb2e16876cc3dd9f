//! The CPU device's workers: a persistent pool whose launch is a few atomic operations.
//!
//! A decode step is hundreds of short launches; a rayon `install` + `par_iter` per launch
//! costs tens of microseconds of wake-ups and joins each (see docs/benchmarks.md). Here a
//! launch publishes a job (a closure over chunk indices), bumps an epoch that idle workers
//! watch, and the caller works on the chunks too. Workers spin on the epoch for a while after
//! a launch, then yield, then park on a condition variable, so an idle process costs nothing.
//!
//! Each thread owns a contiguous range of the chunks (thread `t` of `T` the `t`-th `1/T`, the
//! caller the last) and runs it front to back, so in a GEMV every thread streams one run of
//! consecutive weight panels, the same rows at every launch of that kernel (each token), and the
//! hardware prefetcher follows one stream instead of restarting at every chunk. A thread done
//! with its own range takes chunks from the back of the others' (a worker preempted or late
//! costs the launch only its own share). A range is one word holding (epoch, next, end),
//! claimed with a compare-and-swap: a worker that woke late for an old launch cannot claim a
//! chunk of a new one, and it reads the job only after a successful claim, while the caller is
//! still waiting for that chunk. Which thread runs which chunk never changes a result: kernels
//! compute whole work units per chunk.

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

/// One thread's chunks of the current launch not yet claimed: `(epoch << 32) | (next << 16) |
/// end`. On a cache line of its own (its owner claims from it at every chunk).
#[repr(align(128))]
struct Range(AtomicU64);

struct Shared {
    /// The current launch (workers watch it for a new one).
    epoch: AtomicU64,
    /// Per thread (the pool's workers, the caller last), its range of the current launch.
    ranges: Box<[Range]>,
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

fn pack(epoch: u64, next: usize, end: usize) -> u64 {
    (epoch << 32) | ((next as u64) << CHUNK_BITS) | end as u64
}

fn unpack(w: u64) -> (u64, usize, usize) {
    (
        w >> 32,
        ((w >> CHUNK_BITS) & MAX_CHUNKS as u64) as usize,
        (w & MAX_CHUNKS as u64) as usize,
    )
}

/// Which end of a range a thread claims from: its owner the front, the others the back.
#[derive(Clone, Copy)]
enum End {
    Front,
    Back,
}

impl Shared {
    /// Claims one chunk of `range` in launch `epoch`; `None` when the range is empty or the
    /// launch is over.
    fn claim(&self, range: usize, epoch: u64, end: End) -> Option<usize> {
        let word = &self.ranges[range].0;
        let mut w = word.load(Ordering::Acquire);
        loop {
            let (e, next, stop) = unpack(w);
            if e != epoch || next >= stop {
                return None;
            }
            let (claimed, after) = match end {
                End::Front => (next, pack(e, next + 1, stop)),
                End::Back => (stop - 1, pack(e, next, stop - 1)),
            };
            match word.compare_exchange_weak(w, after, Ordering::AcqRel, Ordering::Acquire) {
                Ok(_) => return Some(claimed),
                Err(now) => w = now,
            }
        }
    }

    /// Runs thread `me`'s range of launch `epoch`, then what is left of the others'.
    fn work(&self, epoch: u64, me: usize) {
        let threads = self.ranges.len();
        while let Some(c) = self.claim(me, epoch, End::Front) {
            self.run(c, me);
        }
        for other in (1..threads).map(|i| (me + i) % threads) {
            while let Some(c) = self.claim(other, epoch, End::Back) {
                self.run(c, me);
            }
        }
    }

    /// Runs a claimed chunk.
    fn run(&self, chunk: usize, worker: usize) {
        // SAFETY: the claim succeeded, so the launch of this epoch is running: its caller
        // waits until this chunk is done, which keeps the job alive.
        let job = unsafe { &**(self.job.load(Ordering::Acquire) as *const &Job) };
        // A panic must not unwind out of here: other threads may still run the job, which
        // lives on the caller's stack, and the caller would wait for a chunk that never
        // finishes. Jobs call generated C, which does not panic.
        let run = std::panic::AssertUnwindSafe(|| job(chunk, worker));
        if std::panic::catch_unwind(run).is_err() {
            eprintln!("kiln: a CPU kernel launch panicked; aborting");
            std::process::abort();
        }
        self.done.fetch_add(1, Ordering::Release);
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
            epoch: AtomicU64::new(0),
            ranges: (0..=workers).map(|_| Range(AtomicU64::new(0))).collect(),
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
    /// thread; returns when every chunk has run. Thread `t` of `T` (the caller last) runs
    /// chunks `t * chunks / T .. (t + 1) * chunks / T` unless another finishes first and
    /// takes some of them.
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
        let threads = s.ranges.len();
        for (t, range) in s.ranges.iter().enumerate() {
            let (lo, hi) = (t * chunks / threads, (t + 1) * chunks / threads);
            range.0.store(pack(self.epoch, lo, hi), Ordering::Release);
        }
        s.epoch.store(self.epoch, Ordering::SeqCst);
        if s.parked.load(Ordering::SeqCst) > 0 {
            let _g = s.lock.lock().unwrap_or_else(|e| e.into_inner());
            s.wake.notify_all();
        }
        s.work(self.epoch, self.workers.len());
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
        let epoch = loop {
            if s.shutdown.load(Ordering::Acquire) {
                return;
            }
            let epoch = s.epoch.load(Ordering::Acquire);
            if epoch != seen {
                break epoch;
            }
            polls += 1;
            if polls < SPIN_POLLS {
                std::hint::spin_loop();
            } else if polls < SPIN_POLLS + YIELDS {
                std::thread::yield_now();
            } else {
                let g = s.lock.lock().unwrap_or_else(|e| e.into_inner());
                s.parked.fetch_add(1, Ordering::SeqCst);
                let unchanged = s.epoch.load(Ordering::SeqCst) == seen;
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
        seen = epoch;
        s.work(epoch, me);
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

    /// A slow worker costs the launch only the chunk it is in: the caller runs its own range,
    /// then the rest of the worker's from the back.
    #[test]
    fn the_caller_takes_a_slow_workers_chunks() {
        let mut pool = Pool::new(1).unwrap();
        let by_caller = AtomicUsize::new(0);
        pool.run(8, &|_, w| {
            if w == 0 {
                std::thread::sleep(std::time::Duration::from_millis(300));
            } else {
                by_caller.fetch_add(1, Ordering::Relaxed);
            }
        });
        // The worker runs at most the one chunk it claimed first (none if it woke late).
        assert!(by_caller.load(Ordering::Relaxed) >= 7);
    }

    /// Without stealing, each thread runs its own contiguous range front to back.
    #[test]
    fn ranges_split_the_chunks_in_order() {
        let mut pool = Pool::new(2).unwrap();
        let order = Mutex::new(Vec::new());
        // 3 threads, 9 chunks: worker 0 owns 0..3, worker 1 3..6, the caller 6..9.
        pool.run(9, &|c, w| order.lock().unwrap().push((w, c)));
        let order = order.into_inner().unwrap();
        assert_eq!(order.len(), 9);
        for w in 0..3 {
            let own: Vec<usize> = order
                .iter()
                .filter(|(t, c)| *t == w && c / 3 == w)
                .map(|&(_, c)| c)
                .collect();
            assert!(own.windows(2).all(|p| p[0] < p[1]), "{order:?}");
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
