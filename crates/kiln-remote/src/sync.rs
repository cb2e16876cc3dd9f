//! `kiln cache push|pull --remote-cache URL`: copy whole caches between a machine and a store.
//!
//! Both start from a listing of the store (`SCAN` on Redis, ListObjectsV2 on S3, a folder
//! walk), not from a manifest: a manifest would have to be rewritten by every uploader (lost
//! updates between concurrent writers; S3 has no atomic append) and would go stale as entries
//! expire. Push sends local entries the store lacks; pull fetches entries the local cache
//! lacks. Every entry is checked ([`kiln_compile::cache::decode`]: format, key, backend,
//! checksum) before it is sent or stored; a bad one is counted and skipped. These are explicit
//! commands: the first store failure stops them with an error.

use crate::{Remote, SyncError};
use kiln_compile::cache::decode;
use kiln_compile::{KernelCache, RemoteStore};
use std::collections::HashSet;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::Mutex;

/// Transfers at once (network-bound).
const TRANSFERS: usize = 8;

#[derive(Debug, Default, Clone, PartialEq, Eq, serde::Serialize)]
pub struct SyncReport {
    /// Entries on the side copied from.
    pub listed: usize,
    /// Of those, already on the other side.
    pub present: usize,
    pub copied: usize,
    pub bytes: u64,
    /// Entries that failed their checks (damaged local ones on push, bad remote ones on pull).
    pub rejected: usize,
}

/// Sends every good local entry the store does not list.
pub fn push(local: &KernelCache, remote: &Remote) -> Result<SyncReport, SyncError> {
    let there: HashSet<(String, String)> = list(remote)?.into_iter().collect();
    let mine = local.keys();
    let todo: Vec<&(String, String)> = mine.iter().filter(|e| !there.contains(*e)).collect();
    let report = transfer(&todo, |backend, key| {
        let Some(bytes) = local.read_encoded(backend, key) else {
            return Ok(Moved::Gone);
        };
        if decode(&bytes, backend, key).is_err() {
            return Ok(Moved::Rejected);
        }
        remote
            .put(backend, key, &bytes)
            .map_err(|source| SyncError::Upload {
                url: remote.url.to_string(),
                source,
            })?;
        Ok(Moved::Copied(bytes.len() as u64))
    })?;
    Ok(SyncReport {
        listed: mine.len(),
        present: mine.len() - todo.len(),
        ..report
    })
}

/// Fetches every entry the store lists and the local cache lacks, checked before it is stored.
pub fn pull(local: &KernelCache, remote: &Remote) -> Result<SyncReport, SyncError> {
    let listed = list(remote)?;
    let mine: HashSet<(String, String)> = local.keys().into_iter().collect();
    let todo: Vec<&(String, String)> = listed.iter().filter(|e| !mine.contains(*e)).collect();
    let report = transfer(&todo, |backend, key| {
        let bytes = match remote.get(backend, key) {
            Ok(Some(b)) => b,
            // Listed, then gone (expired or deleted meanwhile).
            Ok(None) => return Ok(Moved::Gone),
            Err(source) => {
                return Err(SyncError::Download {
                    url: remote.url.to_string(),
                    source,
                })
            }
        };
        if decode(&bytes, backend, key).is_err() {
            return Ok(Moved::Rejected);
        }
        local
            .put_encoded(backend, key, &bytes)
            .map_err(|source| SyncError::Local {
                dir: local.dir().to_path_buf(),
                source,
            })?;
        Ok(Moved::Copied(bytes.len() as u64))
    })?;
    Ok(SyncReport {
        listed: listed.len(),
        present: listed.len() - todo.len(),
        ..report
    })
}

fn list(remote: &Remote) -> Result<Vec<(String, String)>, SyncError> {
    remote.list().map_err(|source| SyncError::List {
        url: remote.url.to_string(),
        source,
    })
}

enum Moved {
    Copied(u64),
    Rejected,
    Gone,
}

/// Runs `one` over the entries, [`TRANSFERS`] at once; stops at the first error.
fn transfer(
    entries: &[&(String, String)],
    one: impl Fn(&str, &str) -> Result<Moved, SyncError> + Sync,
) -> Result<SyncReport, SyncError> {
    let next = AtomicUsize::new(0);
    let (copied, rejected, bytes) = (AtomicUsize::new(0), AtomicUsize::new(0), AtomicU64::new(0));
    let stop = AtomicBool::new(false);
    let error: Mutex<Option<SyncError>> = Mutex::new(None);
    std::thread::scope(|s| {
        for _ in 0..TRANSFERS.min(entries.len()) {
            s.spawn(|| {
                while !stop.load(Ordering::SeqCst) {
                    let i = next.fetch_add(1, Ordering::SeqCst);
                    let Some((backend, key)) = entries.get(i) else {
                        break;
                    };
                    match one(backend, key) {
                        Ok(Moved::Copied(n)) => {
                            copied.fetch_add(1, Ordering::SeqCst);
                            bytes.fetch_add(n, Ordering::SeqCst);
                        }
                        Ok(Moved::Rejected) => {
                            rejected.fetch_add(1, Ordering::SeqCst);
                        }
                        Ok(Moved::Gone) => {}
                        Err(e) => {
                            stop.store(true, Ordering::SeqCst);
                            error.lock().expect("error").get_or_insert(e);
                        }
                    }
                }
            });
        }
    });
    if let Some(e) = error.into_inner().expect("error") {
        return Err(e);
    }
    Ok(SyncReport {
        copied: copied.into_inner(),
        rejected: rejected.into_inner(),
        bytes: bytes.into_inner(),
        ..Default::default()
    })
}
