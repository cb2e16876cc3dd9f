//! Parallel compile: the compile units the cache did not hold, on the worker pool, in the
//! schedule's (longest first) order. Every artifact is verified to define its kernels before
//! anyone trusts it. A unit that fails is split so that each failing kernel is named — unless
//! it ran out of time or was interrupted, which its kernels alone would do again. Once the
//! program is interrupted, units not yet started are not started.

use crate::context::Context;
use crate::driver::check_interrupt;
use crate::error::{write_failed_source, CompileError, KernelFailure};
use crate::observer::{notify, Event, Observer};
use crate::store::store_built;
use crate::unit::{Origin, Unit};
use kiln_program::{Backend, BackendError, KernelSource};
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::time::Instant;

/// What compiling one unit produced.
pub struct Outcome {
    /// The verified artifact, or an error for each failing kernel (by position in the unit).
    pub result: Result<Vec<u8>, Vec<(usize, BackendError)>>,
    /// Seconds of the invocation that built the artifact.
    pub secs: f64,
    /// Seconds spent in every invocation for this unit (the split ones too).
    pub busy_s: f64,
    pub invocations: usize,
}

/// Compiles the wanted units that have no artifact yet on the workers, in the schedule's
/// order, at most as many at once as the memory budget allows; each is stored as soon as it
/// is built. Fails, once every worker is done, with every failing kernel (sorted by name), or
/// with the interruption that stopped it.
pub fn compile_missing<B: Backend>(
    units: &mut [Unit],
    cx: &Context<B>,
) -> Result<(), CompileError> {
    let missing: Vec<usize> = (0..units.len())
        .filter(|&u| units[u].wanted && units[u].artifact.is_none())
        .collect();
    let jobs: Vec<&Unit> = missing.iter().map(|&u| &units[u]).collect();
    let kernels = jobs.iter().map(|j| j.kernels.len()).sum();
    let queued = Event::CompileQueued {
        jobs: jobs.len(),
        kernels,
    };
    notify(cx.observer(), &queued);
    let outcomes = cx.pool.run_jobs(&jobs, Some(cx.max_in_flight), |_, unit| {
        compile_job(unit, cx)
    });
    let mut failures = Vec::new();
    for (&u, outcome) in missing.iter().zip(outcomes) {
        failures.extend(record(&mut units[u], outcome, cx));
    }
    // Whole artifacts compiled before an interruption are stored; nothing else is.
    check_interrupt()?;
    if !failures.is_empty() {
        failures.sort_by(|a, b| a.kernel.cmp(&b.kernel));
        return Err(CompileError::Kernels(failures));
    }
    Ok(())
}

/// Compiles one unit on a worker and stores what it built; once the program is interrupted,
/// a unit not yet started is not started.
fn compile_job<B: Backend>(unit: &Unit, cx: &Context<B>) -> Outcome {
    if kiln_process::interrupted().is_some() {
        return Outcome {
            result: Err((0..unit.kernels.len())
                .map(|i| (i, BackendError::Interrupted))
                .collect()),
            secs: 0.0,
            busy_s: 0.0,
            invocations: 0,
        };
    }
    let outcome = compile_unit(cx.backend, &cx.sources_of(unit), cx.observer());
    if let Ok(artifact) = &outcome.result {
        store_built(cx, unit, artifact, outcome.secs);
    }
    outcome
}

/// Records a unit's outcome in it; returns its failing kernels, their sources written where the
/// user can open them.
fn record<B: Backend>(unit: &mut Unit, outcome: Outcome, cx: &Context<B>) -> Vec<KernelFailure> {
    unit.busy_s += outcome.busy_s;
    unit.invocations += outcome.invocations;
    let errors = match outcome.result {
        Ok(artifact) => {
            unit.origin = Some(Origin::Compiled);
            unit.artifact = Some(artifact);
            unit.compile_ms = outcome.secs * 1e3;
            return Vec::new();
        }
        Err(errors) => errors,
    };
    let ext = cx.backend.source_extension();
    errors
        .into_iter()
        .map(|(i, error)| KernelFailure {
            kernel: unit.names[i].clone(),
            source_path: match error {
                BackendError::Interrupted => None,
                _ => write_failed_source(cx.sources_of(unit)[i], ext),
            },
            error,
        })
        .collect()
}

/// One compiler invocation, its artifact verified; a panic becomes an error.
fn invoke<B: Backend>(
    backend: &B,
    kernels: &[&KernelSource],
    observer: Option<&dyn Observer>,
) -> (Result<Vec<u8>, BackendError>, f64) {
    let start = Instant::now();
    let result = catch_unwind(AssertUnwindSafe(|| {
        let artifact = backend.compile(kernels)?;
        let names: Vec<&str> = kernels.iter().map(|k| k.name.as_str()).collect();
        backend.verify(&artifact, &names)?;
        Ok(artifact)
    }))
    .unwrap_or_else(|panic| {
        let msg = panic
            .downcast_ref::<String>()
            .cloned()
            .or_else(|| panic.downcast_ref::<&str>().map(|s| s.to_string()))
            .unwrap_or_else(|| "unknown panic".into());
        Err(BackendError::Rejected(format!(
            "the compile worker panicked: {msg}"
        )))
    });
    let end = Instant::now();
    if let Some(o) = observer {
        let names: Vec<String> = kernels.iter().map(|k| k.name.clone()).collect();
        o.event(&Event::JobFinished {
            kernels: &names,
            worker: rayon::current_thread_index().unwrap_or(0),
            start,
            end,
            ok: result.is_ok(),
        });
    }
    (result, (end - start).as_secs_f64())
}

/// Compiles one unit; if it fails and holds several kernels, compiles each alone so that
/// every failing kernel is named.
pub fn compile_unit<B: Backend>(
    backend: &B,
    kernels: &[&KernelSource],
    observer: Option<&dyn Observer>,
) -> Outcome {
    let (result, secs) = invoke(backend, kernels, observer);
    let err = match result {
        Ok(artifact) => {
            return Outcome {
                result: Ok(artifact),
                secs,
                busy_s: secs,
                invocations: 1,
            }
        }
        Err(e) => e,
    };
    if let BackendError::Timeout(_) | BackendError::Interrupted = err {
        // Every kernel of the unit shares the verdict: compiling each alone would take as long.
        let result = Err((0..kernels.len()).map(|i| (i, clone_stop(&err))).collect());
        return Outcome {
            result,
            secs,
            busy_s: secs,
            invocations: 1,
        };
    }
    if kernels.len() == 1 {
        return Outcome {
            result: Err(vec![(0, err)]),
            secs,
            busy_s: secs,
            invocations: 1,
        };
    }
    let mut busy = secs;
    let mut failures = Vec::new();
    for (i, k) in kernels.iter().enumerate() {
        let (r, s) = invoke(backend, &[k], observer);
        busy += s;
        if let Err(e) = r {
            failures.push((i, e));
        }
    }
    if failures.is_empty() {
        // Each kernel compiles alone but not together: blame the unit as a whole.
        failures = (0..kernels.len())
            .map(|i| {
                (
                    i,
                    BackendError::Rejected(format!(
                        "compiles alone but not together with the other {} kernels of its unit: {err}",
                        kernels.len() - 1
                    )),
                )
            })
            .collect();
    }
    Outcome {
        result: Err(failures),
        secs,
        busy_s: busy,
        invocations: 1 + kernels.len(),
    }
}

/// A copy of a timeout or interruption error, for each kernel of its unit.
fn clone_stop(e: &BackendError) -> BackendError {
    match e {
        BackendError::Timeout(d) => BackendError::Timeout(*d),
        _ => BackendError::Interrupted,
    }
}
