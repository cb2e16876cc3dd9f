//! Where built artifacts go: the local kernel cache and the remote tier's upload queue. A unit
//! is stored as soon as it is built ([`store_built`], on the worker that built it), so uploads
//! overlap the rest of the compile; at the end the cache is kept under its size limit and the
//! compile waits for its uploads ([`Store::finish`]).

use crate::cache;
use crate::context::Context;
use crate::observer::warn;
use crate::remote::{RemoteCache, RemoteSession, SessionTotals};
use crate::report::RemoteReport;
use crate::unit::Unit;
use crate::CompileOptions;
use kiln_program::Backend;
use std::sync::atomic::{AtomicBool, Ordering};

/// One compile's stores.
pub struct Store<'a> {
    /// Where the local cache and the remote tier are, and whom to warn.
    opts: &'a CompileOptions<'a>,
    /// This compile's session with the remote tier, if there is one.
    pub remote: Option<RemoteSession<'a>>,
    /// A built unit went into the local cache: its size limit is enforced at the end.
    stored: AtomicBool,
    /// A local store failed and was reported: one warning per compile.
    warned: AtomicBool,
}

/// What the remote tier did during the compile, for the report.
#[derive(Default)]
pub struct RemoteOutcome {
    pub totals: SessionTotals,
    pub report: Option<RemoteReport>,
}

impl<'a> Store<'a> {
    pub fn new(opts: &'a CompileOptions<'a>) -> Store<'a> {
        Store {
            opts,
            remote: opts.remote.map(RemoteCache::session),
            stored: AtomicBool::new(false),
            warned: AtomicBool::new(false),
        }
    }

    /// Passes on the remote tier's warning (its breaker tripped), once.
    pub fn warn_if_remote_failed(&self) {
        if let Some(message) = self.opts.remote.and_then(RemoteCache::take_warning) {
            warn(self.opts.observer, &message);
        }
    }

    /// Ends the compile's stores: the local cache is kept under its size limit where entries
    /// were added (the least recently used go), and the uploads get until the remote tier's
    /// flush limit to finish.
    pub fn finish(&mut self) -> RemoteOutcome {
        let added = self.stored.load(Ordering::Relaxed);
        if let Some(cache) = self.opts.cache.as_ref().filter(|_| added) {
            if let Err(e) = cache.enforce_limit() {
                tracing::debug!("kernel cache {}: {e}", cache.dir().display());
            }
        }
        let Some(session) = self.remote.take() else {
            return RemoteOutcome::default();
        };
        let location = session.remote().location().to_string();
        let (totals, abandoned) = session.finish();
        if let Some(message) = abandoned {
            warn(self.opts.observer, &message);
        }
        self.warn_if_remote_failed();
        RemoteOutcome {
            totals,
            report: Some(RemoteReport {
                location,
                uploads: totals.uploads,
                uploads_dropped: totals.dropped,
            }),
        }
    }
}

/// Stores the artifact of `unit`, built in `secs`: in the local cache (a failure is warned
/// about once per compile: the next entry would fail for the same reason) and queued for the
/// remote tier (sent in the background).
pub fn store_built<B: Backend>(cx: &Context<B>, unit: &Unit, artifact: &[u8], secs: f64) {
    let store = &cx.store;
    if cx.opts.cache.is_none() && store.remote.is_none() {
        return;
    }
    let backend = cx.backend.name();
    let kernels: Vec<&str> = unit.names.iter().map(String::as_str).collect();
    let compile_us = (secs * 1e6) as u64;
    let entry = cache::encode(backend, &unit.key, &kernels, artifact, compile_us);
    if let Some(cache) = &cx.opts.cache {
        match cache.put_encoded(backend, &unit.key, &entry) {
            Ok(()) => store.stored.store(true, Ordering::Relaxed),
            Err(e) if !store.warned.swap(true, Ordering::Relaxed) => {
                let message = if cache.is_read_only() {
                    format!(
                        "the kernel cache {} is read-only: using its entries, storing no new ones",
                        cache.dir().display()
                    )
                } else {
                    format!(
                        "could not write a kernel cache entry in {}: {e}; continuing without storing new entries",
                        cache.dir().display()
                    )
                };
                cx.warn(&message);
            }
            Err(_) => {}
        }
    }
    if let Some(session) = &store.remote {
        session.upload(backend, &unit.key, entry);
    }
}
