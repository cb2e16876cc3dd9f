//! Module loading: each unit's artifact loaded once, in order, on the calling thread (GPU
//! contexts are not thread-safe). A cached artifact that fails to load is a miss: its entry is
//! removed and the unit rebuilt, never a permanent failure.

use crate::observer::{notify, Event, Observer};
use crate::CompileError;
use kiln_program::{Backend, BackendError};

/// Loads `artifacts[u]` for every unit. For a unit that came from the cache and fails to load,
/// `rebuild(u)` removes its entry (at `entry_path(u)`), compiles it again (replacing
/// `artifacts[u]`) and the load is retried once.
pub fn load_units<B: Backend>(
    backend: &B,
    artifacts: &mut [Vec<u8>],
    from_cache: &[bool],
    unit_name: impl Fn(usize) -> String,
    entry_path: impl Fn(usize) -> Option<std::path::PathBuf>,
    mut rebuild: impl FnMut(usize) -> Result<Vec<u8>, CompileError>,
    observer: Option<&dyn Observer>,
) -> Result<Vec<B::Module>, CompileError> {
    let mut modules = Vec::with_capacity(artifacts.len());
    for u in 0..artifacts.len() {
        let module = match backend.load(&artifacts[u]) {
            Ok(m) => m,
            Err(e) if from_cache[u] => {
                let entry = entry_path(u)
                    .map(|p| format!(" (cache entry {})", p.display()))
                    .unwrap_or_default();
                let message = format!(
                    "the cached artifact of kernel {}{entry} failed to load ({e}); removed it, rebuilding",
                    unit_name(u)
                );
                tracing::debug!("{message}");
                notify(observer, &Event::Warning { message: &message });
                artifacts[u] = rebuild(u)?;
                backend
                    .load(&artifacts[u])
                    .map_err(|source| load_error(&unit_name(u), source))?
            }
            Err(source) => return Err(load_error(&unit_name(u), source)),
        };
        modules.push(module);
    }
    Ok(modules)
}

fn load_error(kernel: &str, source: BackendError) -> CompileError {
    CompileError::Load {
        kernel: kernel.to_string(),
        source,
    }
}
