//! Cache lookup: the artifact of each compile unit, where a cache holds a good one. The local
//! cache first; what it lacks is asked of the remote tier, if there is one. A damaged or
//! foreign entry, local or remote, is reported, never used, and rebuilt like a miss (the
//! rebuilt entry then overwrites the remote one).
//!
//! A remote entry passes the same checks as a local one ([`cache::decode`]: format, key,
//! backend, length, checksum), then two more, since it comes from another machine: its header
//! names exactly the unit's kernels, and the backend finds every kernel in the artifact
//! ([`Backend::verify`]). Only then is it stored in the local cache and used.

use crate::cache::{self, KernelCache, Lookup};
use crate::observer::{notify, Event, Observer};
use crate::pool::Workers;
use crate::remote::{Fetch, RemoteSession};
use kiln_program::Backend;

/// An artifact found in a cache.
pub struct Cached {
    pub artifact: Vec<u8>,
    pub compile_us: u64,
    /// It came from the remote tier (and is now in the local cache too).
    pub remote: bool,
}

/// What the lookup found for every unit.
pub struct Found {
    pub cached: Vec<Option<Cached>>,
    /// Units the remote was asked for (the local cache lacked them).
    pub asked_remote: Vec<bool>,
}

/// Looks up every unit's `key` for the units `wanted` (the others are left alone: a shard's
/// compile touches only its own); `names[u]` are the kernels of unit `u`.
#[allow(clippy::too_many_arguments)]
pub fn lookup<B: Backend>(
    cache: Option<&KernelCache>,
    remote: Option<&RemoteSession<'_>>,
    backend: &B,
    keys: &[String],
    names: &[Vec<String>],
    wanted: &[bool],
    pool: &Workers,
    observer: Option<&dyn Observer>,
) -> Found {
    let name = backend.name();
    let units: Vec<usize> = (0..keys.len()).filter(|&u| wanted[u]).collect();
    let mut cached: Vec<Option<Cached>> = keys.iter().map(|_| None).collect();
    if let Some(cache) = cache {
        let found: Vec<Lookup> = pool.map(&units, |&u| cache.get(name, &keys[u]));
        for (&u, lookup) in units.iter().zip(found) {
            cached[u] = match lookup {
                Lookup::Hit { artifact, header } => {
                    for k in &names[u] {
                        notify(observer, &Event::CacheHit { kernel: k });
                    }
                    Some(Cached {
                        artifact,
                        compile_us: header.compile_us,
                        remote: false,
                    })
                }
                Lookup::Corrupt { reason } => {
                    corrupt(observer, &names[u], &reason);
                    None
                }
                Lookup::Miss => None,
            };
        }
    }
    let mut asked_remote = vec![false; keys.len()];
    let Some(remote) = remote else {
        return Found {
            cached,
            asked_remote,
        };
    };
    let ask: Vec<usize> = units.into_iter().filter(|&u| cached[u].is_none()).collect();
    if ask.is_empty() {
        return Found {
            cached,
            asked_remote,
        };
    }
    for &u in &ask {
        asked_remote[u] = true;
    }
    let ask_keys: Vec<&str> = ask.iter().map(|&u| keys[u].as_str()).collect();
    let fetched = remote.fetch_many(name, &ask_keys, &|done| {
        let u = ask[done.index];
        let (outcome, bytes) = match done.fetch {
            Fetch::Found(b) => ("found", b.len()),
            Fetch::Missing => ("missing", 0),
            Fetch::Unavailable => ("unavailable", 0),
        };
        notify(
            observer,
            &Event::RemoteFetch {
                kernels: &names[u],
                worker: done.worker,
                start: done.start,
                end: done.end,
                outcome,
                bytes,
            },
        );
    });
    let found: Vec<(usize, Vec<u8>)> = ask
        .iter()
        .zip(fetched)
        .filter_map(|(&u, f)| match f {
            Fetch::Found(bytes) => Some((u, bytes)),
            Fetch::Missing | Fetch::Unavailable => None,
        })
        .collect();
    let checked = pool.map(&found, |(u, bytes)| {
        check_remote(backend, &keys[*u], &names[*u], bytes).map(|(compile_us, artifact)| {
            if let Some(cache) = cache {
                if let Err(e) = cache.put_encoded(name, &keys[*u], bytes) {
                    tracing::debug!("could not store a remote entry locally: {e}");
                }
            }
            Cached {
                artifact,
                compile_us,
                remote: true,
            }
        })
    });
    for ((u, _), result) in found.iter().zip(checked) {
        match result {
            Ok(c) => cached[*u] = Some(c),
            Err(reason) => {
                let reason = format!("remote cache {}: {reason}", remote.remote().location());
                corrupt(observer, &names[*u], &reason);
            }
        }
    }
    Found {
        cached,
        asked_remote,
    }
}

/// The checks a remote entry passes before it is trusted; its compile time and artifact.
fn check_remote<B: Backend>(
    backend: &B,
    key: &str,
    kernels: &[String],
    bytes: &[u8],
) -> Result<(u64, Vec<u8>), String> {
    let (header, artifact) =
        cache::decode(bytes, backend.name(), key).map_err(|e| e.to_string())?;
    if header.kernels != kernels {
        return Err(format!(
            "the entry names kernels [{}], the unit is [{}]",
            header.kernels.join(", "),
            kernels.join(", ")
        ));
    }
    let names: Vec<&str> = kernels.iter().map(String::as_str).collect();
    backend
        .verify(artifact, &names)
        .map_err(|e| format!("the artifact failed verification: {e}"))?;
    Ok((header.compile_us, artifact.to_vec()))
}

fn corrupt(observer: Option<&dyn Observer>, names: &[String], reason: &str) {
    let kernel = names.join(", ");
    tracing::debug!("discarded corrupt cache entry for kernel {kernel}: {reason}");
    notify(
        observer,
        &Event::CacheCorrupt {
            kernel: &kernel,
            reason,
        },
    );
}
