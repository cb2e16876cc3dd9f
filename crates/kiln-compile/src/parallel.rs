//! Parallel compile: the compile units the cache did not hold, on the worker pool, in the
//! schedule's (longest first) order. Every artifact is verified to define its kernels before
//! anyone trusts it. A unit that fails is split so that each failing kernel is named — unless
//! it ran out of time or was interrupted, which its kernels alone would do again. Once the
//! program is interrupted, units not yet started are not started.

use crate::observer::{Event, Observer};
use crate::pool::Workers;
use crate::schedule::Job;
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

/// Compiles `units` (each a list of kernel sources) on `pool`, at most `limit` at once.
/// `built(i, artifact, secs)` is called on the worker as soon as `units[i]` is built.
pub fn compile_units<B: Backend>(
    backend: &B,
    units: &[&Job],
    sources: &[KernelSource],
    pool: &Workers,
    limit: Option<usize>,
    observer: Option<&dyn Observer>,
    built: &(dyn Fn(usize, &[u8], f64) + Sync),
) -> Vec<Outcome> {
    pool.run_jobs(units, limit, |i, job| {
        if kiln_process::interrupted().is_some() {
            return Outcome {
                result: Err((0..job.kernels.len())
                    .map(|i| (i, BackendError::Interrupted))
                    .collect()),
                secs: 0.0,
                busy_s: 0.0,
                invocations: 0,
            };
        }
        let ks: Vec<&KernelSource> = job.kernels.iter().map(|&k| &sources[k]).collect();
        let outcome = compile_unit(backend, &ks, observer);
        if let Ok(artifact) = &outcome.result {
            built(i, artifact, outcome.secs);
        }
        outcome
    })
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
