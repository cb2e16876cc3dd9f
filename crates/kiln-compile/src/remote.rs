//! The remote tier: a store of cache entries shared by machines (Redis, S3, a shared folder;
//! the `kiln-remote` crate implements them) behind the local kernel cache.
//!
//! * **Read-through.** The cache lookup asks the remote for the units the local cache lacks
//!   ([`RemoteSession::fetch_many`]); `lookup.rs` checks what comes back exactly like a local
//!   entry (format, key, backend, checksum), plus the kernel names and the artifact's symbols,
//!   before it is used and stored locally.
//! * **Write-back.** What a compile builds is queued ([`RemoteSession::upload`]) and sent by
//!   background threads while the compile goes on; the queue is bounded (entries and bytes) and
//!   never blocks the compile. At its end the compile waits for its own uploads, at most
//!   [`RemoteOptions::flush_limit`] ([`RemoteSession::finish`]).
//! * **Faults never fail a compile.** The store bounds every operation with timeouts; the first
//!   failure trips a circuit breaker: one warning, then the remote is left alone for the rest
//!   of the process, and everything is compiled locally. A corrupt or foreign entry is a data
//!   problem, not a connection one: it is reported, not trusted, rebuilt and overwritten.
//!
//! The store only moves opaque bytes; this module decides what is asked, what is sent, and when
//! to stop asking. Messages name the store by [`RemoteStore::location`], which never holds a
//! password.

use std::collections::{HashSet, VecDeque};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

/// A shared store of cache entries, addressed like the local cache: by backend and key.
/// Implementations bound every call with timeouts and scrub secrets from their errors.
pub trait RemoteStore: Send + Sync {
    /// Where the store is, safe to print: a URL with any password replaced by `***`.
    fn location(&self) -> &str;
    /// The entry stored under `(backend, key)`; `Ok(None)` when there is none.
    fn get(&self, backend: &str, key: &str) -> Result<Option<Vec<u8>>, RemoteError>;
    /// Stores (or overwrites) an entry; readers see the old entry or the new one, whole.
    fn put(&self, backend: &str, key: &str, entry: &[u8]) -> Result<(), RemoteError>;
}

/// Why one operation on a remote store failed. `op` names the operation and where it went
/// (`GET`, `PUT on bucket ci-cache`).
///
/// Stores build it with every secret already replaced by `***`: a client library's error can
/// echo a password (a Redis URL) or a token (a presigned S3 URL), so such errors are kept as
/// scrubbed text in `detail`, not as a `source()` that would print them unscrubbed.
#[derive(Debug, thiserror::Error)]
pub enum RemoteError {
    /// No answer within the store's timeout (connecting, or the operation).
    #[error("{op}: timed out ({detail})")]
    Timeout { op: String, detail: String },
    /// The store could not be reached, or the connection broke.
    #[error("{op}: {detail}")]
    Unreachable { op: String, detail: String },
    /// The store answered with an error: an HTTP status from S3 (`status`), an error reply
    /// from Redis (a wrong password, a read-only replica).
    #[error("{op}: {detail}")]
    Refused {
        op: String,
        status: Option<u16>,
        detail: String,
    },
    /// A file operation on a shared folder failed.
    #[error("cannot {op} {}: {source}", path.display())]
    Io {
        op: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// An entry of a shared folder that kiln would not read: not a regular file inside the
    /// folder (a FIFO, a link out of it), or larger than an entry can be.
    #[error(transparent)]
    File(#[from] kiln_fs::FileError),
    /// A backend or key that cannot name an entry (it would escape the store's layout).
    #[error("not a cache entry name: backend {backend:?}, key {key:?}")]
    BadName { backend: String, key: String },
}

/// How the remote tier queues and waits. The store's own timeouts are the store's business.
#[derive(Clone, Debug)]
pub struct RemoteOptions {
    /// Uploads that may wait in the queue; beyond it an upload is dropped (and counted).
    pub queue_entries: usize,
    /// Bytes that may wait in the queue.
    pub queue_bytes: usize,
    /// Background threads sending uploads.
    pub upload_threads: usize,
    /// Fetches in flight at once during a lookup (I/O-bound: more than the compile threads).
    pub fetch_threads: usize,
    /// How long a compile waits at its end for its uploads; what is still pending is abandoned.
    pub flush_limit: Duration,
    /// Never upload (a developer machine reading what CI built).
    pub read_only: bool,
}

impl Default for RemoteOptions {
    fn default() -> Self {
        RemoteOptions {
            queue_entries: 256,
            queue_bytes: 256 << 20,
            upload_threads: 4,
            fetch_threads: 8,
            flush_limit: Duration::from_secs(10),
            read_only: false,
        }
    }
}

/// The remote tier of one process: a store, its circuit breaker and the upload queue. Share it
/// by reference ([`crate::CompileOptions::remote`]); each compile opens a [`RemoteSession`].
pub struct RemoteCache {
    shared: Arc<Shared>,
}

struct Shared {
    store: Box<dyn RemoteStore>,
    opts: RemoteOptions,
    /// Why the breaker tripped (None while it has not).
    tripped: Mutex<Option<String>>,
    is_tripped: AtomicBool,
    warned: AtomicBool,
    queue: Mutex<Queue>,
    /// Signalled when a job is queued, finished, or the queue closes.
    changed: Condvar,
    /// Entries this process has queued: each is uploaded at most once.
    sent: Mutex<HashSet<(String, String)>>,
}

#[derive(Default)]
struct Queue {
    jobs: VecDeque<Upload>,
    bytes: usize,
    closed: bool,
}

struct Upload {
    backend: String,
    key: String,
    entry: Vec<u8>,
    tally: Arc<Tally>,
}

/// One session's counters (shared with the upload threads).
#[derive(Default)]
struct Tally {
    /// Uploads queued or in flight; changed under the queue lock.
    pending: AtomicUsize,
    bytes_up: AtomicU64,
    uploads: AtomicU64,
    bytes_down: AtomicU64,
    errors: AtomicU64,
    dropped: AtomicU64,
}

/// What one fetch found.
#[derive(Debug)]
pub enum Fetch {
    /// Bytes stored under the key (not yet checked).
    Found(Vec<u8>),
    /// Nothing stored under the key.
    Missing,
    /// The store failed, or the breaker had tripped: compile locally.
    Unavailable,
}

/// One finished fetch, as reported while a lookup runs (for progress and traces).
pub struct FetchDone<'a> {
    /// Index of the key in the list being fetched.
    pub index: usize,
    /// Which fetch thread did it.
    pub worker: usize,
    pub start: Instant,
    pub end: Instant,
    pub fetch: &'a Fetch,
}

/// What a session moved, for the compile report.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SessionTotals {
    pub bytes_down: u64,
    pub bytes_up: u64,
    pub uploads: u64,
    /// Operations that failed (the first one trips the breaker, so normally 0 or a few).
    pub errors: u64,
    /// Uploads not made: queue full, breaker tripped, or still pending at the flush limit.
    pub dropped: u64,
}

impl RemoteCache {
    /// The tier over `store`; starts the upload threads (unless read-only).
    pub fn new(store: Box<dyn RemoteStore>, opts: RemoteOptions) -> RemoteCache {
        let threads = if opts.read_only {
            0
        } else {
            opts.upload_threads.max(1)
        };
        let shared = Arc::new(Shared {
            store,
            opts,
            tripped: Mutex::new(None),
            is_tripped: AtomicBool::new(false),
            warned: AtomicBool::new(false),
            queue: Mutex::new(Queue::default()),
            changed: Condvar::new(),
            sent: Mutex::new(HashSet::new()),
        });
        for i in 0..threads {
            let s = shared.clone();
            // Detached: a thread stuck on a hung store must not hold the process up at exit.
            let _ = std::thread::Builder::new()
                .name(format!("kiln-upload-{i}"))
                .spawn(move || s.upload_loop());
        }
        RemoteCache { shared }
    }

    /// Where the store is (never with a password).
    pub fn location(&self) -> &str {
        self.shared.store.location()
    }

    pub fn options(&self) -> &RemoteOptions {
        &self.shared.opts
    }

    /// The breaker has tripped: the remote is not used again in this process.
    pub fn is_disabled(&self) -> bool {
        self.shared.is_tripped.load(Ordering::SeqCst)
    }

    /// The breaker's warning, the first time it is asked for after the breaker tripped; None
    /// before that and ever after. Whoever shows warnings calls this at convenient points, so
    /// that a process warns once however many operations failed.
    pub fn take_warning(&self) -> Option<String> {
        let reason = self.shared.tripped.lock().expect("breaker").clone()?;
        if self.shared.warned.swap(true, Ordering::SeqCst) {
            return None;
        }
        Some(format!(
            "remote cache {} is unavailable ({reason}); continuing with the local cache only",
            self.location()
        ))
    }

    /// Runs `op` on the store unless the breaker has tripped; a failure trips it. `None`: not
    /// done (failed or skipped); `errors` counts failures.
    pub fn call<T>(
        &self,
        errors: Option<&AtomicU64>,
        op: impl FnOnce(&dyn RemoteStore) -> Result<T, RemoteError>,
    ) -> Option<T> {
        self.shared.call(errors, op)
    }

    /// Starts one compile's use of the tier.
    pub fn session(&self) -> RemoteSession<'_> {
        RemoteSession {
            remote: self,
            tally: Arc::new(Tally::default()),
        }
    }
}

impl Drop for RemoteCache {
    fn drop(&mut self) {
        let mut q = self.shared.queue.lock().expect("queue");
        q.closed = true;
        q.jobs.clear();
        drop(q);
        self.shared.changed.notify_all();
    }
}

impl Shared {
    fn call<T>(
        &self,
        errors: Option<&AtomicU64>,
        op: impl FnOnce(&dyn RemoteStore) -> Result<T, RemoteError>,
    ) -> Option<T> {
        if self.is_tripped.load(Ordering::SeqCst) {
            return None;
        }
        match op(self.store.as_ref()) {
            Ok(v) => Some(v),
            Err(reason) => {
                if let Some(e) = errors {
                    e.fetch_add(1, Ordering::Relaxed);
                }
                tracing::debug!("remote cache {}: {reason}", self.store.location());
                let mut t = self.tripped.lock().expect("breaker");
                if t.is_none() {
                    *t = Some(reason.to_string());
                    self.is_tripped.store(true, Ordering::SeqCst);
                }
                None
            }
        }
    }

    fn upload_loop(&self) {
        loop {
            let job = {
                let mut q = self.queue.lock().expect("queue");
                loop {
                    if q.closed {
                        return;
                    }
                    if let Some(j) = q.jobs.pop_front() {
                        q.bytes -= j.entry.len();
                        break j;
                    }
                    q = self.changed.wait(q).expect("queue");
                }
            };
            let t = &job.tally;
            let sent = self.call(Some(&t.errors), |s| {
                s.put(&job.backend, &job.key, &job.entry)
            });
            match sent {
                Some(()) => {
                    t.bytes_up
                        .fetch_add(job.entry.len() as u64, Ordering::Relaxed);
                    t.uploads.fetch_add(1, Ordering::Relaxed);
                }
                None => {
                    t.dropped.fetch_add(1, Ordering::Relaxed);
                }
            }
            let _q = self.queue.lock().expect("queue");
            t.pending.fetch_sub(1, Ordering::SeqCst);
            self.changed.notify_all();
        }
    }
}

/// One compile's use of the remote tier: its fetches, its uploads and its totals.
pub struct RemoteSession<'a> {
    remote: &'a RemoteCache,
    tally: Arc<Tally>,
}

impl RemoteSession<'_> {
    pub fn remote(&self) -> &RemoteCache {
        self.remote
    }

    /// Fetches every key, [`RemoteOptions::fetch_threads`] at a time; results in key order.
    /// `done` is called on the fetch thread as each finishes.
    pub fn fetch_many(
        &self,
        backend: &str,
        keys: &[&str],
        done: &(dyn Fn(FetchDone<'_>) + Sync),
    ) -> Vec<Fetch> {
        let next = AtomicUsize::new(0);
        let slots: Vec<Mutex<Option<Fetch>>> = keys.iter().map(|_| Mutex::new(None)).collect();
        let work = |worker: usize| loop {
            let i = next.fetch_add(1, Ordering::Relaxed);
            let Some(key) = keys.get(i) else { break };
            let start = Instant::now();
            let fetch = match self
                .remote
                .call(Some(&self.tally.errors), |s| s.get(backend, key))
            {
                Some(Some(bytes)) => {
                    self.tally
                        .bytes_down
                        .fetch_add(bytes.len() as u64, Ordering::Relaxed);
                    Fetch::Found(bytes)
                }
                Some(None) => Fetch::Missing,
                None => Fetch::Unavailable,
            };
            done(FetchDone {
                index: i,
                worker,
                start,
                end: Instant::now(),
                fetch: &fetch,
            });
            *slots[i].lock().expect("slot") = Some(fetch);
        };
        let threads = self
            .remote
            .options()
            .fetch_threads
            .clamp(1, keys.len().max(1));
        if threads == 1 {
            work(0);
        } else {
            std::thread::scope(|s| {
                for w in 0..threads {
                    let work = &work;
                    s.spawn(move || work(w));
                }
            });
        }
        slots
            .into_iter()
            .map(|s| s.into_inner().expect("slot").expect("every key fetched"))
            .collect()
    }

    /// Queues an entry for upload; never blocks. Each `(backend, key)` is sent at most once per
    /// process (several compiles of one process build the same units); a full queue drops it.
    pub fn upload(&self, backend: &str, key: &str, entry: Vec<u8>) {
        let shared = &self.remote.shared;
        if shared.opts.read_only {
            return;
        }
        if self.remote.is_disabled() {
            self.tally.dropped.fetch_add(1, Ordering::Relaxed);
            return;
        }
        let id = (backend.to_string(), key.to_string());
        if !shared.sent.lock().expect("sent").insert(id.clone()) {
            return;
        }
        let mut q = shared.queue.lock().expect("queue");
        if q.closed
            || q.jobs.len() >= shared.opts.queue_entries
            || q.bytes + entry.len() > shared.opts.queue_bytes
        {
            drop(q);
            shared.sent.lock().expect("sent").remove(&id);
            self.tally.dropped.fetch_add(1, Ordering::Relaxed);
            return;
        }
        q.bytes += entry.len();
        self.tally.pending.fetch_add(1, Ordering::SeqCst);
        q.jobs.push_back(Upload {
            backend: id.0,
            key: id.1,
            entry,
            tally: self.tally.clone(),
        });
        drop(q);
        shared.changed.notify_all();
    }

    /// Waits for this session's uploads, at most [`RemoteOptions::flush_limit`], and returns
    /// what the session moved. Uploads still pending then are abandoned (counted, warned
    /// about through the returned message).
    pub fn finish(self) -> (SessionTotals, Option<String>) {
        let shared = &self.remote.shared;
        let limit = shared.opts.flush_limit;
        let deadline = Instant::now() + limit;
        let mut q = shared.queue.lock().expect("queue");
        // An interrupted program does not wait for its uploads (looked at every 100 ms).
        while self.tally.pending.load(Ordering::SeqCst) > 0 && !crate::cancel::requested() {
            let now = Instant::now();
            if now >= deadline {
                break;
            }
            q = shared
                .changed
                .wait_timeout(q, (deadline - now).min(Duration::from_millis(100)))
                .expect("queue")
                .0;
        }
        // Abandon what is still waiting in the queue for this session; an upload in flight
        // finishes (or times out) on its own thread.
        let before = q.jobs.len();
        let mine = &self.tally;
        q.jobs.retain(|j| !Arc::ptr_eq(&j.tally, mine));
        let removed = before - q.jobs.len();
        q.bytes = q.jobs.iter().map(|j| j.entry.len()).sum();
        let abandoned = mine.pending.load(Ordering::SeqCst);
        mine.pending.fetch_sub(removed, Ordering::SeqCst);
        drop(q);
        let t = &self.tally;
        t.dropped.fetch_add(abandoned as u64, Ordering::Relaxed);
        let warning = (abandoned > 0).then(|| {
            format!(
                "{abandoned} upload(s) to remote cache {} still pending after {limit:?}; abandoned",
                self.remote.location()
            )
        });
        let totals = SessionTotals {
            bytes_down: t.bytes_down.load(Ordering::Relaxed),
            bytes_up: t.bytes_up.load(Ordering::Relaxed),
            uploads: t.uploads.load(Ordering::Relaxed),
            errors: t.errors.load(Ordering::Relaxed),
            dropped: t.dropped.load(Ordering::Relaxed),
        };
        (totals, warning)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    /// A store in memory that can be told to fail or to be slow: for the queue and breaker
    /// logic only (the real stores are tested against real servers in `kiln-remote`).
    #[derive(Default)]
    struct Memory {
        map: Mutex<HashMap<String, Vec<u8>>>,
        fail: AtomicBool,
        delay_ms: AtomicU64,
        calls: AtomicU64,
    }

    struct Handle(Arc<Memory>);

    fn refused() -> RemoteError {
        RemoteError::Unreachable {
            op: "connect".into(),
            detail: "connection refused".into(),
        }
    }

    impl RemoteStore for Handle {
        fn location(&self) -> &str {
            "memory://test"
        }
        fn get(&self, b: &str, k: &str) -> Result<Option<Vec<u8>>, RemoteError> {
            self.0.calls.fetch_add(1, Ordering::SeqCst);
            if self.0.fail.load(Ordering::SeqCst) {
                return Err(refused());
            }
            Ok(self.0.map.lock().unwrap().get(&format!("{b}/{k}")).cloned())
        }
        fn put(&self, b: &str, k: &str, e: &[u8]) -> Result<(), RemoteError> {
            self.0.calls.fetch_add(1, Ordering::SeqCst);
            std::thread::sleep(Duration::from_millis(
                self.0.delay_ms.load(Ordering::SeqCst),
            ));
            if self.0.fail.load(Ordering::SeqCst) {
                return Err(refused());
            }
            self.0
                .map
                .lock()
                .unwrap()
                .insert(format!("{b}/{k}"), e.to_vec());
            Ok(())
        }
    }

    fn tier(opts: RemoteOptions) -> (Arc<Memory>, RemoteCache) {
        let m = Arc::new(Memory::default());
        (m.clone(), RemoteCache::new(Box::new(Handle(m)), opts))
    }

    #[test]
    fn uploads_are_flushed_and_fetched_back() {
        let (_, r) = tier(RemoteOptions::default());
        let s = r.session();
        for i in 0..10 {
            s.upload("cpu", &format!("{i:02x}"), vec![i as u8; 100]);
        }
        s.upload("cpu", "00", vec![9; 100]); // a duplicate is sent once
        let (t, w) = s.finish();
        assert_eq!((t.uploads, t.bytes_up, t.dropped, w), (10, 1000, 0, None));
        let s = r.session();
        let keys = ["00", "05", "ff"];
        let got = s.fetch_many("cpu", &keys, &|_| {});
        assert!(matches!(&got[0], Fetch::Found(b) if b == &vec![0u8; 100]));
        assert!(matches!(&got[1], Fetch::Found(b) if b == &vec![5u8; 100]));
        assert!(matches!(&got[2], Fetch::Missing));
        assert_eq!(s.finish().0.bytes_down, 200);
    }

    #[test]
    fn the_first_failure_trips_the_breaker_and_warns_once() {
        let (m, r) = tier(RemoteOptions::default());
        m.fail.store(true, Ordering::SeqCst);
        let s = r.session();
        let keys: Vec<String> = (0..20).map(|i| format!("{i:02x}")).collect();
        let keys: Vec<&str> = keys.iter().map(String::as_str).collect();
        let got = s.fetch_many("cpu", &keys, &|_| {});
        assert!(got.iter().all(|f| matches!(f, Fetch::Unavailable)));
        assert!(r.is_disabled());
        // At most one failed call per fetch thread (they may race the trip), not one per key.
        let calls = m.calls.load(Ordering::SeqCst);
        assert!(calls <= r.options().fetch_threads as u64, "{calls} calls");
        s.upload("cpu", "aa", vec![1]);
        let (t, _) = s.finish();
        assert_eq!(t.dropped, 1);
        assert_eq!(t.errors, calls);
        let w = r.take_warning().expect("a warning");
        assert!(
            w.contains("memory://test") && w.contains("connection refused"),
            "{w}"
        );
        assert_eq!(r.take_warning(), None, "warned once");
    }

    #[test]
    fn the_queue_is_bounded_and_never_blocks() {
        let (m, r) = tier(RemoteOptions {
            queue_entries: 3,
            upload_threads: 1,
            flush_limit: Duration::from_millis(300),
            ..Default::default()
        });
        m.delay_ms.store(200, Ordering::SeqCst);
        let s = r.session();
        let start = Instant::now();
        for i in 0..10 {
            s.upload("cpu", &format!("{i:02x}"), vec![0; 10]);
        }
        assert!(
            start.elapsed() < Duration::from_millis(100),
            "upload blocked"
        );
        let start = Instant::now();
        let (t, w) = s.finish();
        // One in flight + 3 queued were accepted; 6 dropped at once. The flush waits 300 ms:
        // one or two finish, the rest are abandoned.
        let waited = start.elapsed();
        assert!(waited >= Duration::from_millis(290) && waited < Duration::from_millis(800));
        assert!(t.uploads >= 1 && t.uploads <= 2, "{t:?}");
        assert_eq!(t.uploads + t.dropped, 10, "{t:?}");
        assert!(w.expect("abandoned").contains("still pending"));
    }

    #[test]
    fn read_only_never_uploads() {
        let (m, r) = tier(RemoteOptions {
            read_only: true,
            ..Default::default()
        });
        let s = r.session();
        s.upload("cpu", "aa", vec![1]);
        assert_eq!(s.finish().0, SessionTotals::default());
        assert_eq!(m.calls.load(Ordering::SeqCst), 0);
    }
}
