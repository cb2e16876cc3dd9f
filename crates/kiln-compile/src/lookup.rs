//! Cache lookup: the artifact of each compile unit, where a cache holds a good one. The local
//! cache first; what it lacks is asked of the remote tier, if there is one. A damaged or
//! foreign entry, local or remote, is reported, never used, and rebuilt like a miss (the
//! rebuilt entry then overwrites the remote one).
//!
//! A remote entry passes the same checks as a local one ([`cache::decode`]: format, key,
//! backend, length, checksum), then two more, since it comes from another machine: its header
//! names exactly the unit's kernels, and the backend finds every kernel in the artifact
//! ([`Backend::verify`]). Only then is it stored in the local cache and used.
//!
//! Only the units this compile wants are looked up: a shard's compile touches only its own.

use crate::cache::{self, KernelCache, Lookup};
use crate::context::Context;
use crate::observer::{notify, Event, Observer};
use crate::remote::{Fetch, RemoteSession};
use crate::unit::{Origin, Unit};
use kiln_program::Backend;

/// Gives every wanted unit a cache holds its artifact ([`Unit::origin`] says which cache).
pub fn lookup<B: Backend>(units: &mut [Unit], cx: &Context<B>) {
    if let Some(cache) = &cx.opts.cache {
        from_local(units, cache, cx);
    }
    if let Some(remote) = &cx.store.remote {
        from_remote(units, remote, cx);
    }
}

fn from_local<B: Backend>(units: &mut [Unit], cache: &KernelCache, cx: &Context<B>) {
    let name = cx.backend.name();
    let wanted: Vec<usize> = (0..units.len()).filter(|&u| units[u].wanted).collect();
    let found: Vec<Lookup> = cx.pool.map(&wanted, |&u| cache.get(name, &units[u].key));
    for (&u, lookup) in wanted.iter().zip(found) {
        let unit = &mut units[u];
        match lookup {
            Lookup::Hit { artifact, header } => {
                for k in &unit.names {
                    notify(cx.observer(), &Event::CacheHit { kernel: k });
                }
                unit.found(Origin::Cache, artifact, header.compile_us);
            }
            Lookup::Corrupt { reason } => corrupt(cx.observer(), unit, &reason),
            Lookup::Miss => {}
        }
    }
}

/// Asks the remote tier for the wanted units the local cache lacked (several fetches in
/// flight), checks what comes back and stores it locally.
fn from_remote<B: Backend>(units: &mut [Unit], remote: &RemoteSession<'_>, cx: &Context<B>) {
    let name = cx.backend.name();
    let ask: Vec<usize> = (0..units.len())
        .filter(|&u| units[u].wanted && units[u].artifact.is_none())
        .collect();
    if ask.is_empty() {
        return;
    }
    for &u in &ask {
        units[u].asked_remote = true;
    }
    let keys: Vec<&str> = ask.iter().map(|&u| units[u].key.as_str()).collect();
    let fetched = remote.fetch_many(name, &keys, &|done| {
        let (outcome, bytes) = match done.fetch {
            Fetch::Found(b) => ("found", b.len()),
            Fetch::Missing => ("missing", 0),
            Fetch::Unavailable => ("unavailable", 0),
        };
        let event = Event::RemoteFetch {
            kernels: &units[ask[done.index]].names,
            worker: done.worker,
            start: done.start,
            end: done.end,
            outcome,
            bytes,
        };
        notify(cx.observer(), &event);
    });
    let found: Vec<(usize, Vec<u8>)> = ask
        .iter()
        .zip(fetched)
        .filter_map(|(&u, f)| match f {
            Fetch::Found(bytes) => Some((u, bytes)),
            Fetch::Missing | Fetch::Unavailable => None,
        })
        .collect();
    let checked: Vec<Result<_, String>> = cx.pool.map(&found, |(u, bytes)| {
        let unit = &units[*u];
        let checked = check_remote(cx.backend, unit, bytes)?;
        if let Some(cache) = &cx.opts.cache {
            if let Err(e) = cache.put_encoded(name, &unit.key, bytes) {
                tracing::debug!("could not store a remote entry locally: {e}");
            }
        }
        Ok(checked)
    });
    for ((u, _), result) in found.iter().zip(checked) {
        match result {
            Ok((compile_us, artifact)) => units[*u].found(Origin::Remote, artifact, compile_us),
            Err(reason) => {
                let reason = format!("remote cache {}: {reason}", remote.remote().location());
                corrupt(cx.observer(), &units[*u], &reason);
            }
        }
    }
}

/// The checks a remote entry passes before it is trusted; its compile time and artifact.
fn check_remote<B: Backend>(
    backend: &B,
    unit: &Unit,
    bytes: &[u8],
) -> Result<(u64, Vec<u8>), String> {
    let (header, artifact) =
        cache::decode(bytes, backend.name(), &unit.key).map_err(|e| e.to_string())?;
    if header.kernels != unit.names {
        return Err(format!(
            "the entry names kernels [{}], the unit is [{}]",
            header.kernels.join(", "),
            unit.label()
        ));
    }
    let names: Vec<&str> = unit.names.iter().map(String::as_str).collect();
    backend
        .verify(artifact, &names)
        .map_err(|e| format!("the artifact failed verification: {e}"))?;
    Ok((header.compile_us, artifact.to_vec()))
}

fn corrupt(observer: Option<&dyn Observer>, unit: &Unit, reason: &str) {
    let kernel = unit.label();
    tracing::debug!("discarded corrupt cache entry for kernel {kernel}: {reason}");
    notify(
        observer,
        &Event::CacheCorrupt {
            kernel: &kernel,
            reason,
        },
    );
}
