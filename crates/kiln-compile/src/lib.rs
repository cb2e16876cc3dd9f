//! kiln's compile pipeline.
//!
//! ```text
//! Graph -> Analysis -> Kernel extraction -> Dedupe -> Codegen -> Schedule -> Cache lookup
//!       -> Parallel compile -> Module loading -> Memory plan -> Compiled
//! ```
//! Each stage is one module taking the previous stage's output: [`analysis`] (validate, CSE,
//! DCE), [`extract`] (fusion into canonical kernels), [`dedupe`] (equal kernels compile once),
//! [`codegen`] (the backend renders each distinct kernel), [`schedule`] (compile units: small
//! kernels batched, longest first), [`lookup`] (the local cache, then the [`remote`] tier, per
//! unit), [`parallel`] (the device compiler on a rayon pool), [`load`] (modules,
//! sequentially), [`memplan`] (buffer slots). [`precompile`] stops after the compile, for a
//! [`shard`] of the units or to fill caches.
//! Units are formed before the cache is consulted, from the kernels alone, so a unit's
//! artifact — and the artifact digest — never depends on what the cache held.
//!
//! Stages are backend-agnostic; a [`Backend`] supplies codegen, compile, verify and load.
//! Every stage is timed, reported to an [`Observer`] and summed up in a [`CompileReport`].

pub mod analysis;
pub mod cache;
mod cancel;
pub mod codegen;
pub mod dedupe;
mod error;
pub mod extract;
pub mod load;
pub mod lookup;
pub mod memplan;
pub mod observer;
pub mod parallel;
mod pool;
pub mod remote;
pub mod report;
pub mod schedule;
pub mod shard;
mod target;
#[cfg(any(test, feature = "testing"))]
pub mod testing;

pub use cache::{cache_key, CacheError, EntryError, KernelCache, Lookup};
pub use error::{CompileError, KernelFailure};
pub use kiln_process::{
    cores, default_compile_timeout, default_threads, interrupt, interrupted,
    wait_until_no_compile_runs, DEFAULT_COMPILE_TIMEOUT, MAX_THREADS,
};
// The contracts the pipeline works on, for the pipeline's users (models, the CLI, tests).
pub use kiln_program::{
    Backend, BackendError, Buffer, Epilogue, Kernel, KernelKind, KernelSource, Let, LoadedProgram,
    MemoryPlan, Operand, Program, ScalarExpr, Step, UniqueKernel, NAME_PLACEHOLDER,
};
pub use observer::{notify, Event, Observer, Stage, TraceRecorder};
pub use remote::{RemoteCache, RemoteError, RemoteOptions, RemoteStore};
pub use report::{peak_rss_mb, CompileReport, KernelReport, RemoteReport, ShardReport, StageTime};
pub use shard::{Shard, ShardParseError};
pub use target::{LoadError, Loaded, Target};

use kiln_ir::Graph;
use std::time::Instant;

/// How to compile.
#[derive(Clone)]
pub struct CompileOptions<'a> {
    /// Compile workers; 1 compiles strictly sequentially on the calling thread.
    pub threads: usize,
    /// The kernel cache, or None to bypass it.
    pub cache: Option<KernelCache>,
    /// Compile each distinct kernel once (off only to measure what dedupe saves).
    pub dedupe: bool,
    /// Pack small kernels into one compiler invocation.
    pub batching: bool,
    /// Fuse reductions, row maps and matmul epilogues into the kernels that read them
    /// ([`extract::fusion`] passes 4-7); off only to compare against the unfused kernels.
    /// A backend whose [`Backend::supports_fusion`] is false never gets them.
    pub fusion: bool,
    /// Upper bound on the memory of compiler invocations in flight (bytes).
    pub memory_budget: Option<u64>,
    pub observer: Option<&'a dyn Observer>,
    /// The remote tier behind the local cache: asked for what the local cache lacks, sent
    /// what this compile builds.
    pub remote: Option<&'a RemoteCache>,
    /// Compile only this shard of the units ([`precompile`] only).
    pub shard: Option<Shard>,
}

impl Default for CompileOptions<'_> {
    fn default() -> Self {
        CompileOptions {
            threads: default_threads(),
            cache: None,
            dedupe: true,
            batching: true,
            fusion: true,
            memory_budget: None,
            observer: None,
            remote: None,
            shard: None,
        }
    }
}

/// A compiled graph: the program with its distinct kernels loaded and its memory plan (what an
/// executor runs), and how the compile went.
pub struct Compiled<M> {
    pub loaded: LoadedProgram<M>,
    pub report: CompileReport,
}

/// Times stages, tells the observer, and remembers the times for the report.
struct Stages<'a> {
    observer: Option<&'a dyn Observer>,
    times: Vec<StageTime>,
}

impl Stages<'_> {
    fn run<T>(&mut self, stage: Stage, f: impl FnOnce() -> T) -> T {
        let _span = tracing::info_span!("stage", name = stage.name()).entered();
        notify(self.observer, &Event::StageStarted { stage });
        let start = Instant::now();
        let out = f();
        let end = Instant::now();
        notify(self.observer, &Event::StageFinished { stage, start, end });
        self.times.push(StageTime {
            name: stage.name().into(),
            ms: (end - start).as_secs_f64() * 1e3,
        });
        out
    }
}

static COMPILES: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);

/// How many times [`compile`] has run in this process: lets tests prove that nothing
/// recompiles per token or per prompt length.
pub fn compile_count() -> usize {
    COMPILES.load(std::sync::atomic::Ordering::SeqCst)
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

/// The pipeline; `load` false stops after the compile (no modules, an empty
/// [`Compiled::modules`]).
fn pipeline<B: Backend>(
    graph: &Graph,
    backend: &B,
    opts: &CompileOptions<'_>,
    load: bool,
) -> Result<Compiled<B::Module>, CompileError> {
    if opts.threads == 0 || opts.threads > MAX_THREADS {
        return Err(CompileError::Threads {
            threads: opts.threads,
            reason: format!("the thread count must be between 1 and {MAX_THREADS}"),
        });
    }
    COMPILES.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
    // Held while this compile runs; given up first when it ends interrupted, so that the
    // signal handler's exit does not wait for the big values below to be freed.
    let mut active = Some(kiln_process::ActiveCompile::start());
    check_interrupt(&mut active)?;
    let t0 = Instant::now();
    let identity = backend.identity()?;
    let observer = opts.observer;
    let mut st = Stages {
        observer,
        times: Vec::new(),
    };

    let graph = st
        .run(Stage::Analysis, || analysis::analyze(graph))
        .inspect_err(|_| drop(active.take()))?;
    // Every stage stops early once the program is interrupted (an atomic load per loop
    // chunk); what it returns then is incomplete, and the compile ends here.
    let program = st.run(Stage::KernelExtraction, || {
        extract::extract_with(&graph, opts.fusion && backend.supports_fusion())
    });
    check_interrupt(&mut active)?;
    let mut deduped = st.run(Stage::Dedupe, || dedupe::dedupe(&program, opts.dedupe));
    check_interrupt(&mut active)?;
    // No stage has more parallel work than there are distinct kernels: more threads would only
    // be started, compete for the cores while idle, and be stopped again.
    let pool = pool::Workers::new(opts.threads.min(deduped.kernels.len().max(1)))?;
    let sources = st.run(Stage::Codegen, || {
        let sources = codegen::codegen(&deduped.kernels, backend, &pool);
        if opts.dedupe {
            deduped.merge_equal_sources(sources)
        } else {
            sources
        }
    });
    check_interrupt(&mut active)?;
    let names: Vec<String> = sources.iter().map(|s| s.name.clone()).collect();
    let units = st.run(Stage::Schedule, || {
        let est: Vec<u64> = sources.iter().map(|s| s.source.len() as u64).collect();
        // Without dedupe, equal kernels have equal names and cannot share a unit.
        schedule::plan(&est, &names, opts.batching && opts.dedupe)
    });
    let unit_names: Vec<Vec<String>> = units
        .iter()
        .map(|u| u.kernels.iter().map(|&k| names[k].clone()).collect())
        .collect();
    let keys: Vec<String> = units
        .iter()
        .map(|u| {
            let srcs: Vec<&str> = u
                .kernels
                .iter()
                .map(|&k| sources[k].source.as_str())
                .collect();
            cache_key(backend.name(), &identity, &srcs)
        })
        .collect();
    // The units this compile builds: all, or its shard's.
    let wanted: Vec<bool> = match opts.shard {
        Some(shard) => shard.select(&units, &keys),
        None => vec![true; units.len()],
    };

    let session = opts.remote.map(RemoteCache::session);
    let found = st.run(Stage::CacheLookup, || {
        lookup::lookup(
            opts.cache.as_ref(),
            session.as_ref(),
            backend,
            &keys,
            &unit_names,
            &wanted,
            &pool,
            observer,
        )
    });
    let remote_warning = || {
        if let Some(message) = opts.remote.and_then(RemoteCache::take_warning) {
            tracing::debug!("{message}");
            notify(observer, &Event::Warning { message: &message });
        }
    };
    remote_warning();
    check_interrupt(&mut active)?;
    let cached = found.cached;

    // Compile what the caches did not hold, in the schedule's order.
    let misses: Vec<usize> = (0..units.len())
        .filter(|&u| wanted[u] && cached[u].is_none())
        .collect();
    let miss_jobs: Vec<&schedule::Job> = misses.iter().map(|&u| &units[u]).collect();
    notify(
        observer,
        &Event::CompileQueued {
            jobs: miss_jobs.len(),
            kernels: miss_jobs.iter().map(|j| j.kernels.len()).sum(),
        },
    );
    // Stores a built unit locally and queues it for the remote tier (in the background).
    let cache_warned = std::sync::atomic::AtomicBool::new(false);
    let stored = std::sync::atomic::AtomicBool::new(false);
    let store = |u: usize, artifact: &[u8], secs: f64| {
        if opts.cache.is_none() && session.is_none() {
            return;
        }
        let kernels: Vec<&str> = unit_names[u].iter().map(String::as_str).collect();
        let entry = cache::encode(
            backend.name(),
            &keys[u],
            &kernels,
            artifact,
            (secs * 1e6) as u64,
        );
        if let Some(cache) = &opts.cache {
            match cache.put_encoded(backend.name(), &keys[u], &entry) {
                Ok(()) => stored.store(true, std::sync::atomic::Ordering::Relaxed),
                // One warning per compile: the next entry would fail for the same reason.
                Err(e) if !cache_warned.swap(true, std::sync::atomic::Ordering::Relaxed) => {
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
                    tracing::debug!("{message}");
                    notify(observer, &Event::Warning { message: &message });
                }
                Err(_) => {}
            }
        }
        if let Some(session) = &session {
            session.upload(backend.name(), &keys[u], entry);
        }
    };
    let compile_start = Instant::now();
    let outcomes = st.run(Stage::ParallelCompile, || {
        let limit = opts
            .memory_budget
            .map(|b| (b / backend.compile_memory_estimate().max(1)).max(1) as usize);
        // Each unit is stored (and queued for upload) as soon as it is built, so uploads
        // overlap the rest of the compile.
        parallel::compile_units(
            backend,
            &miss_jobs,
            &sources,
            &pool,
            limit,
            observer,
            &|i, artifact, secs| store(misses[i], artifact, secs),
        )
    });
    let compile_wall = compile_start.elapsed().as_secs_f64();

    let mut unit_ms: Vec<f64> = cached
        .iter()
        .map(|c| c.as_ref().map_or(0.0, |c| c.compile_us as f64 / 1e3))
        .collect();
    let from_cache: Vec<bool> = cached.iter().map(Option::is_some).collect();
    let from_remote: Vec<bool> = cached
        .iter()
        .map(|c| c.as_ref().is_some_and(|c| c.remote))
        .collect();
    let mut artifacts: Vec<Option<Vec<u8>>> =
        cached.into_iter().map(|c| c.map(|c| c.artifact)).collect();
    let mut failures = Vec::new();
    let (mut busy, mut invocations) = (0.0, 0);
    for (&u, outcome) in misses.iter().zip(outcomes) {
        busy += outcome.busy_s;
        invocations += outcome.invocations;
        match outcome.result {
            Ok(artifact) => {
                unit_ms[u] = outcome.secs * 1e3;
                artifacts[u] = Some(artifact);
            }
            Err(errors) => failures.extend(errors.into_iter().map(|(i, error)| {
                let k = units[u].kernels[i];
                KernelFailure {
                    kernel: names[k].clone(),
                    source_path: match error {
                        BackendError::Interrupted => None,
                        _ => write_failed_source(&sources[k], backend.source_extension()),
                    },
                    error,
                }
            })),
        }
    }
    // Whole artifacts compiled before an interruption are stored; nothing else is.
    check_interrupt(&mut active)?;
    if !failures.is_empty() {
        failures.sort_by(|a, b| a.kernel.cmp(&b.kernel));
        return Err(CompileError::Kernels(failures));
    }
    // Every wanted unit has its artifact; a shard's other units have none.
    let mut artifacts: Vec<Vec<u8>> = artifacts
        .into_iter()
        .zip(&wanted)
        .map(|(a, &w)| {
            assert!(!w || a.is_some(), "every unit compiled or cached");
            a.unwrap_or_default()
        })
        .collect();

    let modules = if !load {
        Vec::new()
    } else {
        st.run(Stage::ModuleLoading, || {
            load::load_units(
                backend,
                &mut artifacts,
                &from_cache,
                |u| unit_names[u].join(", "),
                |u| {
                    opts.cache
                        .as_ref()
                        .map(|c| c.entry_path(backend.name(), &keys[u]))
                },
                |u| {
                    if let Some(cache) = &opts.cache {
                        cache.remove(backend.name(), &keys[u]);
                    }
                    let ks: Vec<&KernelSource> =
                        units[u].kernels.iter().map(|&k| &sources[k]).collect();
                    let outcome = parallel::compile_unit(backend, &ks, observer);
                    match outcome.result {
                        Ok(a) => {
                            store(u, &a, outcome.secs);
                            Ok(a)
                        }
                        Err(errors) => Err(CompileError::Kernels(
                            errors
                                .into_iter()
                                .map(|(i, error)| KernelFailure {
                                    kernel: ks[i].name.clone(),
                                    source_path: None,
                                    error,
                                })
                                .collect(),
                        )),
                    }
                },
                observer,
            )
        })?
    };

    let plan = st.run(Stage::MemoryPlan, || memplan::plan(&program));
    if let Some(cache) = opts
        .cache
        .as_ref()
        .filter(|_| stored.load(std::sync::atomic::Ordering::Relaxed))
    {
        // Entries were added: keep the cache under its size limit (least recently used go).
        if let Err(e) = cache.enforce_limit() {
            tracing::debug!("kernel cache {}: {e}", cache.dir().display());
        }
    }

    // The compile's uploads, given until the flush limit to finish.
    let kernels_of = |pick: &dyn Fn(usize) -> bool| -> usize {
        (0..units.len())
            .filter(|&u| pick(u))
            .map(|u| units[u].kernels.len())
            .sum()
    };
    let remote = session.map(|session| {
        let location = session.remote().location().to_string();
        let (totals, abandoned) = session.finish();
        if let Some(message) = abandoned {
            tracing::debug!("{message}");
            notify(observer, &Event::Warning { message: &message });
        }
        remote_warning();
        (
            totals,
            RemoteReport {
                location,
                uploads: totals.uploads,
                uploads_dropped: totals.dropped,
            },
        )
    });
    let (totals, remote) = match remote {
        Some((t, r)) => (t, Some(r)),
        None => (Default::default(), None),
    };

    let mut module_of = vec![0; sources.len()];
    for (u, unit) in units.iter().enumerate() {
        for &k in &unit.kernels {
            module_of[k] = u;
        }
    }
    let wanted_keys: Vec<String> = (0..units.len())
        .filter(|&u| wanted[u])
        .map(|u| keys[u].clone())
        .collect();
    let wanted_artifacts: Vec<Vec<u8>> = (0..units.len())
        .filter(|&u| wanted[u])
        .map(|u| std::mem::take(&mut artifacts[u]))
        .collect();
    let digest = report::artifact_digest(&wanted_keys, &wanted_artifacts);
    let report = CompileReport {
        backend: backend.name().into(),
        compiler: identity,
        threads: opts.threads,
        kernels_total: program.steps.len(),
        kernels_unique: sources.len(),
        cache_hits: (0..sources.len())
            .filter(|&k| from_cache[module_of[k]])
            .count(),
        compiled: miss_jobs.iter().map(|j| j.kernels.len()).sum(),
        compiler_invocations: invocations,
        compile_ms: t0.elapsed().as_secs_f64() * 1e3,
        stages: st.times,
        parallel_efficiency: if miss_jobs.is_empty() {
            1.0
        } else {
            busy / (opts.threads as f64 * compile_wall)
        },
        peak_rss_mb: peak_rss_mb(),
        artifact_digest: digest,
        remote_hits: kernels_of(&|u| from_remote[u]),
        remote_misses: kernels_of(&|u| found.asked_remote[u] && !from_remote[u]),
        remote_errors: totals.errors,
        remote_bytes_down: totals.bytes_down,
        remote_bytes_up: totals.bytes_up,
        remote,
        shard: opts.shard.map(|s| ShardReport {
            index: s.index,
            count: s.count,
            units: wanted.iter().filter(|&&w| w).count(),
            kernels: kernels_of(&|u| wanted[u]),
        }),
        kernels: (0..sources.len())
            .map(|k| KernelReport {
                name: names[k].clone(),
                label: deduped.kernels[k].label(),
                uses: deduped.uses[k],
                source_bytes: sources[k].source.len(),
                cached: from_cache[module_of[k]],
                compile_ms: unit_ms[module_of[k]],
            })
            .collect(),
    };
    let kernels = deduped
        .kernels
        .into_iter()
        .zip(sources)
        .enumerate()
        .map(|(k, (kernel, source))| UniqueKernel {
            kernel,
            source,
            key: keys[module_of[k]].clone(),
            module: module_of[k],
        })
        .collect();
    Ok(Compiled {
        loaded: LoadedProgram {
            program,
            kernels,
            step_kernel: deduped.step_kernel,
            modules,
            plan,
        },
        report,
    })
}

/// Fails with [`CompileError::Interrupted`] once [`interrupt`] was called, giving up
/// `active` (the compile's mark as running) first.
fn check_interrupt(active: &mut Option<kiln_process::ActiveCompile>) -> Result<(), CompileError> {
    match interrupted() {
        Some(signal) => {
            drop(active.take());
            Err(CompileError::Interrupted { signal })
        }
        None => Ok(()),
    }
}

/// Writes a failing kernel's source where the user can open it: a new folder per compile,
/// readable by this user only, which the error message names.
fn write_failed_source(src: &KernelSource, ext: &str) -> Option<std::path::PathBuf> {
    static DIR: std::sync::OnceLock<Option<std::path::PathBuf>> = std::sync::OnceLock::new();
    let dir = DIR.get_or_init(|| {
        tempfile::Builder::new()
            .prefix("kiln-failed-kernels-")
            .permissions(std::os::unix::fs::PermissionsExt::from_mode(0o700))
            .tempdir()
            .ok()
            .map(|d| d.keep())
    });
    let path = dir.as_ref()?.join(format!("{}.{ext}", src.name));
    std::fs::write(&path, &src.source).ok()?;
    Some(path)
}
