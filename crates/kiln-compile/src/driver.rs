//! The driver: the stages in the order docs/ARCHITECTURE.md lists them, over one [`Unit`]
//! record per compile unit. Each stage is a function of its own module; this file only calls
//! them, times them and puts the result together.

use crate::context::Context;
use crate::observer::Stage;
use crate::pool::Workers;
use crate::report::Finish;
use crate::store::Store;
use crate::timer::StageTimer;
use crate::types::{unique_kernels, Compiled};
use crate::unit::Unit;
use crate::{analysis, budget, codegen, dedupe, extract, load, lookup, memplan, parallel, report};
use crate::{schedule, CompileError, CompileOptions, CompileReport};
use kiln_ir::Graph;
use kiln_process::{interrupted, ActiveCompile, MAX_THREADS};
use kiln_program::{Backend, LoadedProgram};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Instant;

static COMPILES: AtomicUsize = AtomicUsize::new(0);

/// How many times [`compile`] has run in this process: lets tests prove that nothing
/// recompiles per token or per prompt length.
pub fn compile_count() -> usize {
    COMPILES.load(Ordering::SeqCst)
}

/// Compiles `graph` for `backend` and loads every unit.
pub fn compile<B: Backend>(
    graph: &Graph,
    backend: &B,
    opts: &CompileOptions<'_>,
) -> Result<Compiled<B::Module>, CompileError> {
    if let Some(shard) = opts.shard {
        return Err(CompileError::Shard(format!(
            "shard {shard} holds part of the program only; it can be precompiled, not loaded"
        )));
    }
    pipeline(graph, backend, opts, true)
}

/// Compiles `graph` for `backend` into the caches without loading anything: the whole program,
/// or [`CompileOptions::shard`] of its units. Returns the report.
pub fn precompile<B: Backend>(
    graph: &Graph,
    backend: &B,
    opts: &CompileOptions<'_>,
) -> Result<CompileReport, CompileError> {
    Ok(pipeline(graph, backend, opts, false)?.report)
}

/// The pipeline; `load` false stops after the compile (no modules).
fn pipeline<B: Backend>(
    graph: &Graph,
    backend: &B,
    opts: &CompileOptions<'_>,
    load: bool,
) -> Result<Compiled<B::Module>, CompileError> {
    check_threads(opts.threads)?;
    COMPILES.fetch_add(1, Ordering::SeqCst);
    // Held while this compile runs, and given up as soon as it fails (an interruption above
    // all), before the stages' values are freed: the signal handler's exit waits for this
    // mark, and freeing a deep graph's millions of nodes would take longer than the second it
    // has.
    let mut active = Some(ActiveCompile::start());
    let mut give_up = |e: CompileError| {
        active.take();
        e
    };
    check_interrupt().map_err(&mut give_up)?;
    let started = Instant::now();
    let identity = backend.identity()?;
    let mut stages = StageTimer::new(opts.observer);

    // Every stage stops early once the program is interrupted (an atomic load per chunk of
    // its loop, `cancel.rs`); what it returns then is incomplete, and the compile ends at the
    // check after it.
    let graph = stages
        .run(Stage::Analysis, || analysis::analyze(graph))
        .map_err(&mut give_up)?;
    check_weight_dtypes(&graph, backend).map_err(&mut give_up)?;
    let fuse = opts.fusion && backend.supports_fusion();
    let program = stages.run(Stage::KernelExtraction, || {
        extract::extract_with(&graph, fuse)
    });
    check_interrupt().map_err(&mut give_up)?;
    let mut kernels = stages.run(Stage::Dedupe, || dedupe::dedupe(&program, opts.dedupe));
    check_interrupt().map_err(&mut give_up)?;
    // No stage has more parallel work than there are distinct kernels: more threads would only
    // be started, compete for the cores while idle, and be stopped again.
    let pool = Workers::new(opts.threads.min(kernels.kernels.len().max(1)))?;
    let (sources, runtime) = stages.run(Stage::Codegen, || {
        let sources = codegen::codegen(&mut kernels, backend, &pool);
        let runtime = backend.runtime(&sources);
        (sources, runtime)
    });
    check_interrupt().map_err(&mut give_up)?;
    let store = Store::new(opts);
    let memory_budget = budget::memory_budget(opts.memory_budget);
    let mut max_in_flight =
        budget::in_flight_limit(memory_budget, backend.compile_memory_estimate());
    if backend.compiles_on_local_cores() {
        max_in_flight = max_in_flight.min(budget::local_cores());
    }
    let mut cx = Context {
        backend,
        opts,
        identity,
        pool,
        kernels,
        sources,
        runtime,
        store,
        memory_budget,
        max_in_flight,
    };
    let mut units: Vec<Unit> = stages.run(Stage::Schedule, || schedule::units(&cx));
    stages.run(Stage::CacheLookup, || lookup::lookup(&mut units, &cx));
    cx.store.warn_if_remote_failed();
    check_interrupt().map_err(&mut give_up)?;
    stages
        .run(Stage::ParallelCompile, || {
            parallel::compile_missing(&mut units, &cx)
        })
        .map_err(&mut give_up)?;
    let modules = match load {
        true => stages
            .run(Stage::ModuleLoading, || load::load_units(&mut units, &cx))
            .map_err(&mut give_up)?,
        false => Vec::new(),
    };
    let plan = stages.run(Stage::MemoryPlan, || memplan::plan(&program));

    let remote = cx.store.finish();
    let launches = program.steps.len();
    let finish = Finish {
        launches,
        stages: stages.times,
        started,
        remote,
    };
    let report = report::build(&cx, &units, finish);
    let loaded = LoadedProgram {
        kernels: unique_kernels(cx.kernels.kernels, cx.sources, &units),
        step_kernel: cx.kernels.step_kernel,
        program,
        modules,
        plan,
    };
    Ok(Compiled { loaded, report })
}

/// Refuses an input whose dtype the backend cannot read (block-quantized weights on a backend
/// without kernels for them), naming backend, input and dtype.
fn check_weight_dtypes<B: Backend>(graph: &Graph, backend: &B) -> Result<(), CompileError> {
    for (id, name) in graph.inputs() {
        let dtype = graph.dtype(id);
        if !backend.supports_weight_dtype(dtype) {
            return Err(CompileError::UnsupportedDType {
                backend: backend.name().to_string(),
                input: name.to_string(),
                dtype,
            });
        }
    }
    Ok(())
}

fn check_threads(threads: usize) -> Result<(), CompileError> {
    if threads == 0 || threads > MAX_THREADS {
        return Err(CompileError::Threads {
            threads,
            reason: format!("the thread count must be between 1 and {MAX_THREADS}"),
        });
    }
    Ok(())
}

/// Fails with [`CompileError::Interrupted`] once [`kiln_process::interrupt`] was called.
pub(crate) fn check_interrupt() -> Result<(), CompileError> {
    match interrupted() {
        Some(signal) => Err(CompileError::Interrupted { signal }),
        None => Ok(()),
    }
}
