//! Module loading: each unit's artifact loaded once, in order, on the calling thread (GPU
//! contexts are not thread-safe); the backend's runtime units come first in that order, so
//! that the kernels' modules find the code they call. A cached artifact that fails to load is a miss: its entry is
//! removed and the unit rebuilt, never a permanent failure.

use crate::context::Context;
use crate::error::{CompileError, KernelFailure};
use crate::parallel::compile_unit;
use crate::store::store_built;
use crate::unit::Unit;
use kiln_program::{Backend, BackendError};

/// One loaded module per unit, in the units' order.
pub fn load_units<B: Backend>(
    units: &mut [Unit],
    cx: &Context<B>,
) -> Result<Vec<B::Module>, CompileError> {
    units.iter_mut().map(|unit| load_unit(unit, cx)).collect()
}

/// Loads a unit's artifact; one that came from a cache and fails to load is rebuilt and the
/// load retried once.
fn load_unit<B: Backend>(unit: &mut Unit, cx: &Context<B>) -> Result<B::Module, CompileError> {
    let runtime = unit.runtime;
    let load = |artifact: &[u8]| match runtime {
        true => cx.backend.load_runtime(artifact),
        false => cx.backend.load(artifact),
    };
    let artifact = unit
        .artifact
        .as_deref()
        .expect("every unit has its artifact");
    match load(artifact) {
        Ok(module) => Ok(module),
        Err(e) if unit.cached() => {
            let entry = cx
                .opts
                .cache
                .as_ref()
                .map(|c| c.entry_path(cx.backend.name(), &unit.key))
                .map(|p| format!(" (cache entry {})", p.display()))
                .unwrap_or_default();
            cx.warn(&format!(
                "the cached artifact of kernel {}{entry} failed to load ({e}); removed it, rebuilding",
                unit.label()
            ));
            let artifact = rebuild(unit, cx)?;
            let module = load(&artifact);
            unit.artifact = Some(artifact);
            module.map_err(|source| load_error(unit, source))
        }
        Err(source) => Err(load_error(unit, source)),
    }
}

/// Removes a unit's cache entry and compiles it again; the new artifact is stored like any
/// built one.
fn rebuild<B: Backend>(unit: &Unit, cx: &Context<B>) -> Result<Vec<u8>, CompileError> {
    if let Some(cache) = &cx.opts.cache {
        cache.remove(cx.backend.name(), &unit.key);
    }
    let outcome = compile_unit(cx.backend, &cx.sources_of(unit), cx.observer());
    match outcome.result {
        Ok(artifact) => {
            store_built(cx, unit, &artifact, outcome.secs);
            Ok(artifact)
        }
        Err(errors) => Err(CompileError::Kernels(
            errors
                .into_iter()
                .map(|(i, error)| KernelFailure {
                    kernel: unit.names[i].clone(),
                    source_path: None,
                    error,
                })
                .collect(),
        )),
    }
}

fn load_error(unit: &Unit, source: BackendError) -> CompileError {
    CompileError::Load {
        kernel: unit.label(),
        source,
    }
}
