//! Cache lookup: the artifact of each compile unit, where the cache holds a good one. A damaged
//! or foreign entry is reported, removed and rebuilt like a miss.

use crate::cache::{KernelCache, Lookup};
use crate::observer::{notify, Event, Observer};
use crate::pool::Workers;

/// An artifact found in the cache.
pub struct Cached {
    pub artifact: Vec<u8>,
    pub compile_us: u64,
}

/// Looks up every unit's `key`; `names[u]` are the kernels of unit `u` (for events).
pub fn lookup(
    cache: Option<&KernelCache>,
    backend: &str,
    keys: &[String],
    names: &[Vec<String>],
    pool: &Workers,
    observer: Option<&dyn Observer>,
) -> Vec<Option<Cached>> {
    let Some(cache) = cache else {
        return keys.iter().map(|_| None).collect();
    };
    let found: Vec<Lookup> = pool.map(keys, |k| cache.get(backend, k));
    found
        .into_iter()
        .enumerate()
        .map(|(u, lookup)| match lookup {
            Lookup::Hit { artifact, header } => {
                for k in &names[u] {
                    notify(observer, &Event::CacheHit { kernel: k });
                }
                Some(Cached {
                    artifact,
                    compile_us: header.compile_us,
                })
            }
            Lookup::Corrupt { reason } => {
                let kernel = names[u].join(", ");
                tracing::debug!("discarded corrupt cache entry for kernel {kernel}: {reason}");
                notify(
                    observer,
                    &Event::CacheCorrupt {
                        kernel: &kernel,
                        reason: &reason,
                    },
                );
                None
            }
            Lookup::Miss => None,
        })
        .collect()
}
