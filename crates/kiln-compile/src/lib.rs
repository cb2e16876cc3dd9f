//! kiln's compile pipeline.
//!
//! ```text
//! Graph -> Analysis -> Kernel extraction -> Codegen -> Dedupe -> Cache lookup -> Schedule
//!       -> Parallel compile -> Module loading -> Memory plan -> Compiled
//! ```
//! Stages are backend-agnostic; a [`Backend`] supplies codegen, compile and load. Every stage is
//! timed, reported to an [`Observer`] and summed up in a [`CompileReport`].

pub mod analysis;
pub mod backend;
pub mod cache;
pub mod carry;
pub mod clike;
mod error;
pub mod extract;
pub mod kernel;
pub mod memplan;
pub mod observer;
mod pool;
pub mod report;
pub mod schedule;
pub mod testing;

pub use backend::{Backend, KernelSource, NAME_PLACEHOLDER};
pub use cache::{cache_key, KernelCache, Lookup};
pub use error::{CompileError, KernelFailure};
pub use extract::{Buffer, OutputLayout, Program, Step};
pub use kernel::{Kernel, KernelKind, Let, Operand, ScalarExpr};
pub use memplan::MemoryPlan;
pub use observer::{Event, Observer, Stage, TraceRecorder};
pub use report::{peak_rss_mb, CompileReport, KernelReport, StageTime};

use kiln_ir::Graph;
use std::collections::HashMap;
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
    /// Upper bound on the memory of compiler invocations in flight (bytes).
    pub memory_budget: Option<u64>,
    pub observer: Option<&'a dyn Observer>,
}

impl Default for CompileOptions<'_> {
    fn default() -> Self {
        CompileOptions {
            threads: default_threads(),
            cache: None,
            dedupe: true,
            batching: true,
            memory_budget: None,
            observer: None,
        }
    }
}

/// `KILN_COMPILE_THREADS`, else the number of available cores.
pub fn default_threads() -> usize {
    std::env::var("KILN_COMPILE_THREADS")
        .ok()
        .and_then(|v| v.parse().ok())
        .filter(|&n| n > 0)
        .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()))
}

/// A compiled graph ready to run on a device: weights bound once, inputs per run.
pub trait Executable {
    /// Binds an input that stays the same across runs (a weight), checked against its
    /// declaration.
    fn set_param(&mut self, name: &str, t: kiln_ir::Tensor) -> Result<(), kiln_ir::IrError>;

    /// Runs the graph; `inputs` together with the bound params must cover every input.
    fn run(
        &mut self,
        inputs: &HashMap<String, kiln_ir::Tensor>,
    ) -> Result<HashMap<String, kiln_ir::Tensor>, kiln_ir::IrError>;

    /// Carries graph output `output` of each run into the next run's input `input` inside the
    /// executor (a KV cache stays in device memory): from now on `run` neither takes `input` nor
    /// returns `output`, and the next run reads `initial`. Calling it again for the same input
    /// starts over from the new `initial`. Returns false where the executor cannot carry (the
    /// caller then passes the values itself).
    fn carry(
        &mut self,
        output: &str,
        input: &str,
        initial: kiln_ir::Tensor,
    ) -> Result<bool, kiln_ir::IrError> {
        let _ = (output, input, initial);
        Ok(false)
    }
}

/// One distinct kernel of the compiled program.
pub struct UniqueKernel {
    pub kernel: Kernel,
    pub source: KernelSource,
    pub key: String,
    /// Index into [`Compiled::modules`].
    pub module: usize,
}

/// A compiled graph: the program, its distinct kernels loaded, and the memory plan.
pub struct Compiled<M> {
    pub program: Program,
    pub kernels: Vec<UniqueKernel>,
    /// For each step of the program, its kernel in `kernels`.
    pub step_kernel: Vec<usize>,
    pub modules: Vec<M>,
    pub plan: MemoryPlan,
    pub report: CompileReport,
}

struct Stages<'a> {
    observer: Option<&'a dyn Observer>,
    times: Vec<StageTime>,
}

impl Stages<'_> {
    fn run<T>(&mut self, stage: Stage, f: impl FnOnce() -> T) -> T {
        let _span = tracing::info_span!("stage", name = stage.name()).entered();
        self.emit(&Event::StageStarted { stage });
        let start = Instant::now();
        let out = f();
        let end = Instant::now();
        self.emit(&Event::StageFinished { stage, start, end });
        self.times.push(StageTime {
            name: stage.name().into(),
            ms: (end - start).as_secs_f64() * 1e3,
        });
        out
    }

    fn emit(&self, e: &Event<'_>) {
        notify(self.observer, e);
    }
}

fn notify(observer: Option<&dyn Observer>, e: &Event<'_>) {
    if let Some(o) = observer {
        o.event(e);
    }
}

static COMPILES: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);

/// How many times [`compile`] has run in this process: lets tests prove that nothing
/// recompiles per token or per prompt length.
pub fn compile_count() -> usize {
    COMPILES.load(std::sync::atomic::Ordering::SeqCst)
}

/// Compiles `graph` for `backend`.
pub fn compile<B: Backend>(
    graph: &Graph,
    backend: &B,
    opts: &CompileOptions<'_>,
) -> Result<Compiled<B::Module>, CompileError> {
    if opts.threads == 0 {
        return Err(CompileError::Threads {
            threads: 0,
            reason: "the thread count must be at least 1".into(),
        });
    }
    COMPILES.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
    let t0 = Instant::now();
    let identity = backend.identity()?;
    let mut st = Stages {
        observer: opts.observer,
        times: Vec::new(),
    };
    let emit = |e: &Event<'_>| notify(opts.observer, e);
    let pool = pool::Workers::new(opts.threads)?;

    let graph = st.run(Stage::Analysis, || analysis::analyze(graph))?;
    let program = st.run(Stage::KernelExtraction, || extract::extract(&graph));

    let sources: Vec<KernelSource> = st.run(Stage::Codegen, || {
        pool.map(&program.kernels, |k| backend.codegen(k))
    });

    // Dedupe: the first step with a given source owns the unique kernel.
    let (unique_of_step, uniques) = st.run(Stage::Dedupe, || {
        let mut by_source: HashMap<&str, usize> = HashMap::new();
        let mut uniques: Vec<usize> = Vec::new();
        let unique_of_step: Vec<usize> = sources
            .iter()
            .enumerate()
            .map(|(i, s)| {
                if !opts.dedupe {
                    uniques.push(i);
                    return uniques.len() - 1;
                }
                *by_source.entry(s.source.as_str()).or_insert_with(|| {
                    uniques.push(i);
                    uniques.len() - 1
                })
            })
            .collect();
        (unique_of_step, uniques)
    });
    let keys: Vec<String> = uniques
        .iter()
        .map(|&i| cache_key(backend.name(), &identity, &sources[i].source))
        .collect();
    let names: Vec<String> = uniques.iter().map(|&i| sources[i].name.clone()).collect();

    // Cache lookup.
    let mut artifacts: Vec<Option<Vec<u8>>> = vec![None; uniques.len()];
    let mut compile_ms = vec![0.0; uniques.len()];
    let mut cached = vec![false; uniques.len()];
    st.run(Stage::CacheLookup, || {
        let Some(cache) = &opts.cache else { return };
        let found: Vec<Lookup> = pool.map(&keys, |k| cache.get(backend.name(), k));
        for (u, lookup) in found.into_iter().enumerate() {
            match lookup {
                Lookup::Hit {
                    artifact,
                    compile_us,
                } => {
                    emit(&Event::CacheHit { kernel: &names[u] });
                    artifacts[u] = Some(artifact);
                    compile_ms[u] = compile_us as f64 / 1e3;
                    cached[u] = true;
                }
                Lookup::Corrupt { reason } => {
                    tracing::warn!(
                        "discarded corrupt cache entry for kernel {}: {reason}",
                        names[u]
                    );
                    emit(&Event::CacheCorrupt {
                        kernel: &names[u],
                        reason: &reason,
                    });
                }
                Lookup::Miss => {}
            }
        }
    });

    // Schedule the misses.
    let misses: Vec<usize> = (0..uniques.len())
        .filter(|&u| artifacts[u].is_none())
        .collect();
    let jobs = st.run(Stage::Schedule, || {
        let est: Vec<u64> = misses
            .iter()
            .map(|&u| sources[uniques[u]].source.len() as u64)
            .collect();
        let miss_names: Vec<String> = misses.iter().map(|&u| names[u].clone()).collect();
        schedule::plan(&est, &miss_names, opts.batching && opts.dedupe)
    });
    emit(&Event::CompileQueued {
        jobs: jobs.len(),
        kernels: misses.len(),
    });

    // Parallel compile.
    let compile_start = Instant::now();
    let outcomes = st.run(Stage::ParallelCompile, || {
        let budget = opts
            .memory_budget
            .map(|b| (b / backend.compile_memory_estimate().max(1)).max(1) as usize);
        pool.run_jobs(&jobs, budget, |job| {
            let ks: Vec<&KernelSource> = job
                .kernels
                .iter()
                .map(|&m| &sources[uniques[misses[m]]])
                .collect();
            pool::compile_job(backend, &ks, opts.observer)
        })
    });
    let compile_wall = compile_start.elapsed().as_secs_f64();
    let mut failures = Vec::new();
    let mut busy = 0.0;
    let mut invocations = 0;
    for (job, outcome) in jobs.iter().zip(outcomes) {
        busy += outcome.busy_s;
        invocations += outcome.invocations;
        for (slot, result) in job.kernels.iter().zip(outcome.results) {
            let u = misses[*slot];
            match result {
                Ok((artifact, secs)) => {
                    compile_ms[u] = secs * 1e3;
                    if let Some(cache) = &opts.cache {
                        if let Err(e) =
                            cache.put(backend.name(), &keys[u], &artifact, (secs * 1e6) as u64)
                        {
                            let msg = format!("could not write kernel cache entry in {}: {e}; continuing without caching", cache.dir().display());
                            tracing::warn!("{msg}");
                            emit(&Event::Warning { message: &msg });
                        }
                    }
                    artifacts[u] = Some(artifact);
                }
                Err(diagnostics) => failures.push(KernelFailure {
                    kernel: names[u].clone(),
                    source_path: write_failed_source(
                        &sources[uniques[u]],
                        backend.source_extension(),
                    ),
                    diagnostics,
                }),
            }
        }
    }
    if !failures.is_empty() {
        failures.sort_by(|a, b| a.kernel.cmp(&b.kernel));
        return Err(CompileError::Kernels(failures));
    }
    let artifacts: Vec<Vec<u8>> = artifacts
        .into_iter()
        .map(|a| a.expect("every kernel compiled or cached"))
        .collect();

    // Module loading: sequential, on this thread; identical artifacts (a batch) load once.
    let (modules, module_of) = st.run(Stage::ModuleLoading, || {
        let mut modules = Vec::new();
        let mut by_hash: HashMap<blake3::Hash, usize> = HashMap::new();
        let mut module_of = Vec::with_capacity(artifacts.len());
        for (u, a) in artifacts.iter().enumerate() {
            let h = blake3::hash(a);
            let m = match by_hash.get(&h) {
                Some(&m) => m,
                None => {
                    let module = backend.load(a).map_err(|reason| CompileError::Load {
                        kernel: names[u].clone(),
                        reason,
                    })?;
                    modules.push(module);
                    by_hash.insert(h, modules.len() - 1);
                    modules.len() - 1
                }
            };
            module_of.push(m);
        }
        Ok::<_, CompileError>((modules, module_of))
    })?;

    let plan = st.run(Stage::MemoryPlan, || MemoryPlan::new(&program));

    let digest = {
        let mut pairs: Vec<(&String, &Vec<u8>)> = keys.iter().zip(&artifacts).collect();
        pairs.sort();
        pairs.dedup_by(|a, b| a.0 == b.0);
        let mut h = blake3::Hasher::new();
        for (k, a) in pairs {
            h.update(k.as_bytes());
            h.update(&(a.len() as u64).to_le_bytes());
            h.update(a);
        }
        h.finalize().to_hex().to_string()
    };
    let mut uses = vec![0usize; uniques.len()];
    for &u in &unique_of_step {
        uses[u] += 1;
    }
    let report = CompileReport {
        backend: backend.name().into(),
        compiler: identity.clone(),
        threads: opts.threads,
        kernels_total: program.steps.len(),
        kernels_unique: uniques.len(),
        cache_hits: cached.iter().filter(|&&c| c).count(),
        compiled: misses.len(),
        compiler_invocations: invocations,
        compile_ms: t0.elapsed().as_secs_f64() * 1e3,
        stages: st.times,
        parallel_efficiency: if jobs.is_empty() {
            1.0
        } else {
            busy / (opts.threads as f64 * compile_wall)
        },
        peak_rss_mb: peak_rss_mb(),
        artifact_digest: digest,
        kernels: (0..uniques.len())
            .map(|u| KernelReport {
                name: names[u].clone(),
                label: program.kernels[uniques[u]].label(),
                uses: uses[u],
                source_bytes: sources[uniques[u]].source.len(),
                cached: cached[u],
                compile_ms: compile_ms[u],
            })
            .collect(),
    };
    let kernels = uniques
        .iter()
        .enumerate()
        .map(|(u, &i)| UniqueKernel {
            kernel: program.kernels[i].clone(),
            source: sources[i].clone(),
            key: keys[u].clone(),
            module: module_of[u],
        })
        .collect();
    Ok(Compiled {
        program,
        kernels,
        step_kernel: unique_of_step,
        modules,
        plan,
        report,
    })
}

/// Writes a failing kernel's source where the user can open it.
fn write_failed_source(src: &KernelSource, ext: &str) -> Option<std::path::PathBuf> {
    let dir = std::env::temp_dir().join("kiln-failed-kernels");
    std::fs::create_dir_all(&dir).ok()?;
    let path = dir.join(format!("{}.{ext}", src.name));
    std::fs::write(&path, &src.source).ok()?;
    Some(path)
}
