//! [`KilnCompiler`]: the luminal compiler pass, its options, and the pass itself (partition,
//! translate and compile every segment, then rewire luminal's graph).

use crate::error::BridgeError;
use crate::op::{
    InputSpec, KilnDims, KilnOp, KilnOutput, KilnPack, Role, Runner, SharedRunner, Transport,
    DIMS_PER_EDGE,
};
use crate::partition::{self, op_name, Kind, Segment};
use crate::translate::{ExternalInput, Translator};
use kiln_backends::{BackendKind, BackendOptions};
use kiln_compile::{notify, CompileOptions, CompileReport, Event, KernelCache, Observer};
use kiln_compile::{LoadError, Target};
use kiln_ir::{DType, Expr};
use luminal::prelude::{
    petgraph::{visit::EdgeRef, Direction},
    Compiler, Dependency, Graph, NodeIndex, ShapeTracker, ToIdsMut,
};
use rustc_hash::{FxHashMap, FxHashSet};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

/// Where compiled kernels are cached.
#[derive(Clone, Debug)]
enum Cache {
    /// No cache: every compile runs the device compiler.
    Off,
    /// kiln's default cache, as the `kiln` command uses it: `$KILN_CACHE_DIR`, else
    /// `~/.cache/kiln`.
    Default,
    Dir(PathBuf),
}

#[derive(Clone)]
struct Options {
    backend: BackendKind,
    backend_options: BackendOptions,
    threads: usize,
    cache: Cache,
    fallback: bool,
    recognize_matmul: bool,
    verify_kept: bool,
    observer: Option<Arc<dyn Observer + Send + Sync>>,
}

impl std::fmt::Debug for Options {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Options")
            .field("backend", &self.backend)
            .field("run_threads", &self.backend_options.run_threads)
            .field("threads", &self.threads)
            .field("cache", &self.cache)
            .field("fallback", &self.fallback)
            .field("recognize_matmul", &self.recognize_matmul)
            .field("verify_kept", &self.verify_kept)
            .field("observer", &self.observer.is_some())
            .finish()
    }
}

/// What the last compile left for the caller.
#[derive(Default)]
struct State {
    reports: Vec<CompileReport>,
    warnings: Vec<String>,
}

/// The luminal compiler pass that compiles a graph with kiln (see the crate docs for a whole
/// example): `cx.compile((GenericCompiler::default(), kiln.clone()), &mut out)`, then
/// `kiln.report()`.
///
/// Run it after luminal's `GenericCompiler` (which leaves the primitive ops) and instead of
/// `CPUCompiler`. Cheap to clone; clones share the reports and warnings of the compiles they
/// run. Through luminal's [`Compiler`] trait, which returns nothing, a graph kiln cannot take
/// panics with the [`BridgeError`] message; [`KilnCompiler::try_compile`] returns it instead.
#[derive(Clone)]
pub struct KilnCompiler {
    opts: Options,
    state: Arc<Mutex<State>>,
}

impl std::fmt::Debug for KilnCompiler {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "KilnCompiler({:?})", self.opts)
    }
}

impl Default for KilnCompiler {
    /// The CPU backend; compile threads from `KILN_COMPILE_THREADS` or the core count, as many
    /// run threads; kiln's default kernel cache; luminal's matmuls as kiln matmuls; kept inputs
    /// verified on every execute; an unsupported op is an error.
    fn default() -> Self {
        KilnCompiler::builder().build()
    }
}

/// Options for [`KilnCompiler`]; start from [`KilnCompiler::builder`].
#[derive(Clone, Debug)]
pub struct KilnCompilerBuilder {
    opts: Options,
}

impl KilnCompilerBuilder {
    /// The backend, from kiln's registry (default: the CPU).
    pub fn backend(mut self, kind: BackendKind) -> Self {
        self.opts.backend = kind;
        self
    }
    /// Compile workers (kiln's `--threads`); 1 compiles strictly sequentially. Artifacts are the
    /// same for every count.
    pub fn threads(mut self, n: usize) -> Self {
        self.opts.threads = n;
        self
    }
    /// Threads that run kernels on the CPU (default: the core count).
    pub fn run_threads(mut self, n: usize) -> Self {
        self.opts.backend_options.run_threads = n.max(1);
        self
    }
    /// CUDA: the target architecture (e.g. `sm_90`); default: the device's.
    pub fn arch(mut self, arch: impl Into<String>) -> Self {
        self.opts.backend_options.arch = Some(arch.into());
        self
    }
    /// kiln's default kernel cache, `$KILN_CACHE_DIR` or `~/.cache/kiln` (the default).
    pub fn default_cache(mut self) -> Self {
        self.opts.cache = Cache::Default;
        self
    }
    /// A kernel cache in `dir`.
    pub fn cache_dir(mut self, dir: impl Into<PathBuf>) -> Self {
        self.opts.cache = Cache::Dir(dir.into());
        self
    }
    /// No kernel cache (kiln's `--no-cache`).
    pub fn no_cache(mut self) -> Self {
        self.opts.cache = Cache::Off;
        self
    }
    /// Leave ops kiln does not support to luminal, with a warning, instead of failing; kiln then
    /// compiles the parts around them as separate segments (each boundary costs a copy).
    pub fn fallback_to_luminal(mut self, yes: bool) -> Self {
        self.opts.fallback = yes;
        self
    }
    /// Build luminal's matmul pattern (a product of two broadcast views reduced over the last
    /// axis) as kiln's `matmul` (default), or as luminal wrote it (a reduction over the product).
    pub fn recognize_matmul(mut self, yes: bool) -> Self {
        self.opts.recognize_matmul = yes;
        self
    }
    /// Inputs luminal keeps between executes (weights: `keep()`, `cx.keep_tensors`) are bound into
    /// kiln once. With `true` (default) their contents are fingerprinted on every execute (one
    /// read, no copy) and bound again when they changed. With `false` they are bound at the
    /// first execute and trusted: after changing one, call [`crate::rebind_kept_inputs`].
    pub fn verify_kept_inputs(mut self, yes: bool) -> Self {
        self.opts.verify_kept = yes;
        self
    }
    /// Receives kiln's compile events, as the `kiln` command's progress and `--trace` do: pass
    /// an `Arc<kiln_compile::TraceRecorder>` and write it after compile for a Chrome trace.
    pub fn observer(mut self, observer: Arc<dyn Observer + Send + Sync>) -> Self {
        self.opts.observer = Some(observer);
        self
    }
    pub fn build(self) -> KilnCompiler {
        KilnCompiler {
            opts: self.opts,
            state: Arc::default(),
        }
    }
}

/// luminal's `Dependency::Data` numbers a node's inputs and outputs with a u8.
const MAX_EDGES: usize = 255;

/// A translated, compiled and loaded segment, not yet in luminal's graph.
struct Built {
    segment: Segment,
    runner: Runner,
    report: CompileReport,
    externals: Vec<ExternalInput>,
    /// The luminal dimensions the segment's symbols stand for, in the runner's order.
    dims: Vec<char>,
}

impl KilnCompiler {
    pub fn builder() -> KilnCompilerBuilder {
        KilnCompilerBuilder {
            opts: Options {
                backend: BackendKind::Cpu,
                backend_options: BackendOptions::default(),
                threads: kiln_compile::default_threads(),
                cache: Cache::Default,
                fallback: false,
                recognize_matmul: true,
                verify_kept: true,
                observer: None,
            },
        }
    }

    /// The report of the last compile (its first segment; there is one unless ops were left to
    /// luminal).
    pub fn report(&self) -> Option<CompileReport> {
        self.state().reports.first().cloned()
    }

    /// One report per kiln segment of the last compile, in execution order.
    pub fn reports(&self) -> Vec<CompileReport> {
        self.state().reports.clone()
    }

    /// What the last compile left to luminal (fallback mode), one message per node.
    pub fn warnings(&self) -> Vec<String> {
        self.state().warnings.clone()
    }

    fn observer(&self) -> Option<&dyn Observer> {
        self.opts.observer.as_deref().map(|o| o as &dyn Observer)
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// [`Compiler::compile`] returning the error instead of panicking. On error the luminal
    /// graph is unchanged.
    pub fn try_compile<T: ToIdsMut>(
        &self,
        cx: &mut Graph,
        mut remap: T,
    ) -> Result<(), BridgeError> {
        let remap_ids: Vec<NodeIndex> = remap.to_ids_mut().into_iter().map(|i| *i).collect();
        let topo = luminal::prelude::petgraph::algo::toposort(&cx.graph, None)
            .expect("luminal graphs are acyclic");

        let mut kind: FxHashMap<NodeIndex, Kind> = FxHashMap::default();
        let mut warnings = Vec::new();
        for &n in &topo {
            let k = partition::classify(cx, n);
            if let Kind::Unsupported(reason) = &k {
                let op = op_name(cx, n);
                if !self.opts.fallback {
                    return Err(BridgeError::Unsupported {
                        node: n.index(),
                        op,
                        reason: reason.clone(),
                    });
                }
                warnings.push(format!(
                    "kiln-luminal: leaving luminal node {} ({op}) to luminal: {reason}",
                    n.index()
                ));
            }
            kind.insert(n, k);
        }
        let roots = partition::roots(cx, &remap_ids);
        let segments = partition::segments(cx, &topo, &kind, &roots);

        // Everything that can fail happens before luminal's graph is touched.
        let target = kiln_backends::open(self.opts.backend, &self.opts.backend_options).map_err(
            |source| BridgeError::Backend {
                backend: self.opts.backend,
                source,
            },
        )?;
        let mut built = Vec::new();
        for seg in segments {
            built.push(self.build_segment(cx, &*target, &kind, seg)?);
        }

        for w in &warnings {
            eprintln!("warning: {w}");
            notify(self.observer(), &Event::Warning { message: w });
        }
        let supported: FxHashSet<NodeIndex> = topo
            .iter()
            .copied()
            .filter(|n| matches!(kind[n], Kind::Supported))
            .collect();
        let reports = rewire(cx, built, supported);
        // `Graph::compile` re-sorts luminal's execution order after a pass; a bare
        // `try_compile` must too, or `execute` would walk the replaced nodes.
        cx.compile((), ());
        let mut st = self.state();
        st.reports = reports;
        st.warnings = warnings;
        Ok(())
    }

    fn compile_options(&self) -> Result<CompileOptions<'_>, BridgeError> {
        let cache = match &self.opts.cache {
            Cache::Off => None,
            Cache::Default => Some(KernelCache::open(KernelCache::default_dir())),
            Cache::Dir(d) => Some(KernelCache::open(d.clone())),
        }
        .transpose()
        .map_err(BridgeError::Cache)?;
        Ok(CompileOptions {
            threads: self.opts.threads,
            cache,
            observer: self.observer(),
            ..CompileOptions::default()
        })
    }

    /// Translates one segment into a kiln graph, compiles and loads it.
    fn build_segment(
        &self,
        cx: &Graph,
        target: &dyn Target,
        kind: &FxHashMap<NodeIndex, Kind>,
        seg: Segment,
    ) -> Result<Built, BridgeError> {
        let mut tr = Translator::new();
        tr.matmul = self.opts.recognize_matmul;
        for &n in &seg.nodes {
            tr.node(cx, n, cx.graph[n].as_ref(), &cx.get_sources(n))
                .map_err(|reason| BridgeError::Unsupported {
                    node: n.index(),
                    op: op_name(cx, n),
                    reason,
                })?;
        }
        let mut outputs = Vec::new();
        for (j, &o) in seg.outputs.iter().enumerate() {
            let name = format!("out{j}");
            tr.g.output(
                &name,
                tr.natural(o).expect("every segment node is translated"),
            );
            outputs.push(name);
        }

        // Symbols not bound by a whole input dimension get a carrier input of shape [sym].
        let mut bound: FxHashSet<String> = FxHashSet::default();
        for ext in &tr.externals {
            for d in &ext.shape {
                if let Expr::Sym(s) = d {
                    bound.insert(s.to_string());
                }
            }
        }
        let mut carriers = Vec::new();
        for sym in tr.g.symbols() {
            if !bound.contains(&sym) {
                let name = format!("dim_{sym}");
                tr.g.input(&name, DType::Bool, &[Expr::sym(&sym)])
                    .expect("a fresh input name");
                carriers.push((name, sym));
            }
        }
        let symbols: Vec<(String, char)> =
            tr.g.symbols()
                .into_iter()
                .map(|s| {
                    let c = tr.syms[&s];
                    (s, c)
                })
                .collect();
        let dims: Vec<char> = symbols.iter().map(|s| s.1).collect();

        // luminal's u8 edge numbering: can the inputs and outputs be wired?
        let dim_edges = dims.len().div_ceil(DIMS_PER_EDGE);
        let per_node = MAX_EDGES - dim_edges;
        let packs = tr.externals.len().div_ceil(per_node);
        if seg.outputs.len() > MAX_EDGES || (tr.externals.len() > per_node && packs > per_node) {
            return Err(BridgeError::Unsupported {
                node: seg.nodes[0].index(),
                op: op_name(cx, seg.nodes[0]),
                reason: format!(
                    "the kiln segment starting here would read {} tensors and write {}; luminal \
                     numbers a node's inputs and outputs with a u8 (at most {MAX_EDGES} outputs \
                     and {} inputs)",
                    tr.externals.len(),
                    seg.outputs.len(),
                    per_node * per_node
                ),
            });
        }

        let opts = self.compile_options()?;
        let loaded = target.load(&tr.g, &opts).map_err(|e| match e {
            LoadError::Compile(source) => BridgeError::Compile {
                segment: seg.index,
                source,
            },
            LoadError::Run(source) => BridgeError::Load {
                segment: seg.index,
                source,
            },
        })?;
        let inputs = tr
            .externals
            .iter()
            .map(|e| InputSpec {
                name: e.name.clone(),
                shape: e.shape.clone(),
                role: role(cx, kind, e.src),
                from: format!("luminal node {} ({})", e.src.index(), op_name(cx, e.src)),
            })
            .collect();
        Ok(Built {
            runner: Runner::new(
                seg.index,
                loaded.exe,
                inputs,
                symbols,
                carriers,
                outputs,
                self.opts.verify_kept,
            ),
            report: loaded.report,
            externals: tr.externals,
            dims,
            segment: seg,
        })
    }
}

/// A source luminal keeps between executes is bound once; everything else is copied per run.
fn role(cx: &Graph, kind: &FxHashMap<NodeIndex, Kind>, src: NodeIndex) -> Role {
    if matches!(kind[&src], Kind::Source) && cx.no_delete.contains(&src) {
        Role::Kept
    } else {
        Role::PerRun
    }
}

fn data_edge(input_order: usize, output_order: u8, shape: ShapeTracker) -> Dependency {
    Dependency::Data {
        input_order: u8::try_from(input_order).expect("checked against MAX_EDGES"),
        output_order,
        shape,
    }
}

/// The tracker on edges whose consumer ignores it (kiln knows its own shapes).
fn no_view() -> ShapeTracker {
    ShapeTracker::new(&[])
}

/// Replaces each segment's nodes in luminal's graph by its kiln operators; returns the reports.
fn rewire(
    cx: &mut Graph,
    built: Vec<Built>,
    mut remove: FxHashSet<NodeIndex>,
) -> Vec<CompileReport> {
    let mut reports = Vec::new();
    for b in built {
        reports.push(b.report.clone());
        let trackers = KilnDims::trackers(&b.dims);
        let dim_edges = trackers.len();
        let direct = b.externals.len() <= MAX_EDGES - dim_edges;
        let runner: SharedRunner = Arc::new(Mutex::new(b.runner));
        let k = cx.graph.add_node(Box::new(KilnOp {
            runner: runner.clone(),
            transport: if direct {
                Transport::Direct
            } else {
                Transport::Packed
            },
            dim_edges,
            report: b.report,
        }));
        runner.lock().expect("fresh").node = k.index();
        let dims_node = (dim_edges > 0).then(|| cx.graph.add_node(Box::new(KilnDims)));
        let add_dims = |cx: &mut Graph, to: NodeIndex| {
            if let Some(d) = dims_node {
                for (i, t) in trackers.iter().enumerate() {
                    cx.graph.add_edge(d, to, data_edge(i, 0, *t));
                }
            }
        };
        add_dims(cx, k);
        if direct {
            for (i, ext) in b.externals.iter().enumerate() {
                cx.graph
                    .add_edge(ext.src, k, data_edge(dim_edges + i, ext.out, no_view()));
            }
        } else {
            for (p, chunk) in b.externals.chunks(MAX_EDGES - dim_edges).enumerate() {
                let pack = cx.graph.add_node(Box::new(KilnPack {
                    runner: runner.clone(),
                    first: p * (MAX_EDGES - dim_edges),
                    dim_edges,
                }));
                add_dims(cx, pack);
                for (i, ext) in chunk.iter().enumerate() {
                    cx.graph
                        .add_edge(ext.src, pack, data_edge(dim_edges + i, ext.out, no_view()));
                }
                cx.graph
                    .add_edge(pack, k, data_edge(dim_edges + p, 0, no_view()));
            }
        }
        // Each node read afterwards keeps its index and becomes a KilnOutput.
        for (j, &o) in b.segment.outputs.iter().enumerate() {
            let incoming: Vec<_> = cx
                .graph
                .edges_directed(o, Direction::Incoming)
                .map(|e| e.id())
                .collect();
            for e in incoming {
                cx.graph.remove_edge(e);
            }
            cx.graph[o] = Box::new(KilnOutput(j));
            cx.graph.add_edge(k, o, data_edge(0, j as u8, no_view()));
            remove.remove(&o);
        }
    }
    for n in remove {
        cx.graph.remove_node(n);
    }
    reports
}

impl Compiler for KilnCompiler {
    /// Panics with the [`BridgeError`] message (naming the luminal op and node) when kiln cannot
    /// take the graph: luminal's trait has no way to return an error. Use
    /// [`KilnCompiler::try_compile`] to get it as a value.
    fn compile<T: ToIdsMut>(&self, graph: &mut Graph, remap: T) {
        if let Err(e) = self.try_compile(graph, remap) {
            panic!("{e}");
        }
    }
}
