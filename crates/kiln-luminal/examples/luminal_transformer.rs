//! luminal's own `nn::TransformerEncoder` with N layers, compiled by kiln.
//!
//! ```text
//! cargo run --release -p kiln-luminal --example luminal_transformer -- [LAYERS...]
//!     [--threads N] [--backend cpu|cuda] [--seq S] [--no-cache | --cache DIR] [--trace FILE]
//!     [--kernels] [--no-matmul] [--weights kept|trusted|per-run] [--luminal]
//! ```
//! Default layers: 2 8 32 (luminal's layer count is a const generic: 1, 2, 4, 8, 16, 32 or 64).
//! For each depth it prints luminal's node count, kiln's kernels total and unique, the compile
//! time (and its stages), and the time of one forward pass over S positions. `--luminal` runs
//! the same model under luminal's own `(GenericCompiler, CPUCompiler)` instead. `--weights`:
//! `kept` (default) keeps the weights in luminal (`cx.keep_tensors`), so kiln binds them once
//! and fingerprints them every execute; `trusted` skips the fingerprint
//! (`verify_kept_inputs(false)`); `per-run` does not keep them, so luminal produces them anew
//! and kiln copies them in on every execute.

use kiln_backends::BackendKind;
use kiln_compile::TraceRecorder;
use kiln_ir::testing::values;
use kiln_luminal::KilnCompiler;
use luminal::nn::transformer::encoder::TransformerEncoder;
use luminal::prelude::*;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Instant;

const DIM: usize = 64;
const FF: usize = 256;
const HEADS: usize = 4;

struct Args {
    layers: Vec<usize>,
    threads: usize,
    backend: BackendKind,
    seq: usize,
    cache: Option<Option<PathBuf>>,
    trace: Option<PathBuf>,
    kernels: bool,
    matmul: bool,
    weights: Weights,
    luminal: bool,
}

#[derive(Clone, Copy, PartialEq)]
enum Weights {
    Kept,
    Trusted,
    PerRun,
}

/// Best of three forward passes, in ms; the last output.
fn time_execute(cx: &mut Graph, out: GraphTensor<(Dyn<'s'>, Const<DIM>)>) -> (f64, Vec<f32>) {
    let mut best = f64::MAX;
    let mut y = Vec::new();
    for _ in 0..3 {
        let t = Instant::now();
        cx.execute();
        best = best.min(t.elapsed().as_secs_f64() * 1e3);
        y = out.data();
        cx.drop_tensors(out.id); // luminal skips nodes whose output is still held
    }
    (best, y)
}

fn run<const L: usize>(a: &Args) {
    let mut cx = Box::new(Graph::new());
    let model: TransformerEncoder<DIM, FF, HEADS, L> = InitModule::initialize(&mut cx);
    if a.weights != Weights::PerRun {
        cx.keep_tensors(state_set(&model)); // weights: computed once, bound into kiln once
    }
    let x = cx.tensor::<(Dyn<'s'>, Const<DIM>)>();
    let mut out = model.forward(x).retrieve();
    x.set_dyn(values(a.seq * DIM, 1), &[a.seq, DIM]);

    let t = Instant::now();
    cx.compile(GenericCompiler::default(), &mut out);
    let generic_ms = t.elapsed().as_secs_f64() * 1e3;
    let nodes = cx.graph.node_count();
    if a.luminal {
        let t = Instant::now();
        cx.compile(CPUCompiler::default(), &mut out);
        let compile_ms = t.elapsed().as_secs_f64() * 1e3;
        let (run_ms, _) = time_execute(&mut cx, out);
        println!(
            "layers {L:>2}: luminal nodes {nodes:>5} | luminal GenericCompiler {generic_ms:.0} ms, \
             CPUCompiler {compile_ms:.0} ms | run (s={}, best of 3) {run_ms:.1} ms",
            a.seq
        );
        return;
    }

    let trace = a.trace.as_ref().map(|_| Arc::new(TraceRecorder::default()));
    let mut b = KilnCompiler::builder()
        .backend(a.backend)
        .threads(a.threads)
        .recognize_matmul(a.matmul)
        .verify_kept_inputs(a.weights != Weights::Trusted);
    b = match &a.cache {
        None => b.default_cache(),
        Some(None) => b.no_cache(),
        Some(Some(dir)) => b.cache_dir(dir),
    };
    if let Some(t) = &trace {
        b = b.observer(t.clone());
    }
    let kiln = b.build();
    let t = Instant::now();
    if let Err(e) = kiln.try_compile(&mut cx, &mut out) {
        eprintln!("error: {e}");
        std::process::exit(1);
    }
    let bridge_ms = t.elapsed().as_secs_f64() * 1e3;
    let r = kiln.report().expect("a report after compile");
    if let (Some(t), Some(path)) = (&trace, &a.trace) {
        let path = if a.layers.len() > 1 {
            path.with_file_name(format!(
                "{}-{L}layers.json",
                path.file_stem().unwrap_or_default().to_string_lossy()
            ))
        } else {
            path.clone()
        };
        t.write(&path).expect("write the trace");
        eprintln!("trace written to {}", path.display());
    }
    let (run_ms, y) = time_execute(&mut cx, out);
    let stages: Vec<String> = r
        .stages
        .iter()
        .filter(|s| s.ms >= 1.0)
        .map(|s| format!("{} {:.0}", s.name, s.ms))
        .collect();
    println!(
        "layers {L:>2}: luminal nodes {nodes:>5} | kernels {:>4} total, {:>3} unique | kiln \
         compile {:>7.0} ms (translate+compile+load {bridge_ms:>7.0} ms), {} compiler \
         invocations, {} cache hits | run (s={}, best of 3) {run_ms:>6.1} ms | outputs finite: {}\n\
         \x20         luminal GenericCompiler {generic_ms:.0} ms; kiln stages (ms): {}",
        r.kernels_total,
        r.kernels_unique,
        r.compile_ms,
        r.compiler_invocations,
        r.cache_hits,
        a.seq,
        y.iter().all(|v| v.is_finite()),
        stages.join(", "),
    );
    if a.kernels {
        for k in &r.kernels {
            println!("    {:>4} uses  {}", k.uses, k.label);
        }
    }
}

fn parse() -> Result<Args, String> {
    let mut a = Args {
        layers: Vec::new(),
        threads: kiln_compile::default_threads(),
        backend: BackendKind::Cpu,
        seq: 16,
        cache: None,
        trace: None,
        kernels: false,
        matmul: true,
        weights: Weights::Kept,
        luminal: false,
    };
    let mut it = std::env::args().skip(1);
    while let Some(arg) = it.next() {
        let mut value = |flag: &str| it.next().ok_or(format!("{flag} needs a value"));
        match arg.as_str() {
            "--threads" => {
                a.threads = value("--threads")?
                    .parse()
                    .map_err(|e| format!("--threads: {e}"))?
            }
            "--backend" => {
                a.backend = value("--backend")?
                    .parse::<BackendKind>()
                    .map_err(|e| e.to_string())?
            }
            "--seq" => a.seq = value("--seq")?.parse().map_err(|e| format!("--seq: {e}"))?,
            "--cache" => a.cache = Some(Some(value("--cache")?.into())),
            "--no-cache" => a.cache = Some(None),
            "--trace" => a.trace = Some(value("--trace")?.into()),
            "--kernels" => a.kernels = true,
            "--no-matmul" => a.matmul = false,
            "--weights" => {
                a.weights = match value("--weights")?.as_str() {
                    "kept" => Weights::Kept,
                    "trusted" => Weights::Trusted,
                    "per-run" => Weights::PerRun,
                    w => return Err(format!("--weights {w}: use kept, trusted or per-run")),
                }
            }
            "--luminal" => a.luminal = true,
            n => a
                .layers
                .push(n.parse().map_err(|_| format!("unknown argument {n}"))?),
        }
    }
    if a.layers.is_empty() {
        a.layers = vec![2, 8, 32];
    }
    Ok(a)
}

fn main() {
    let a = parse().unwrap_or_else(|e| {
        eprintln!("error: {e}");
        std::process::exit(2);
    });
    println!(
        "luminal TransformerEncoder<{DIM}, {FF}, {HEADS}, L> through {}: backend {}, compile \
         threads {}, kernel cache {}, luminal matmuls as kiln matmuls: {}",
        if a.luminal {
            "luminal's CPUCompiler"
        } else {
            "kiln"
        },
        a.backend,
        a.threads,
        match &a.cache {
            None => "default".to_string(),
            Some(None) => "off".to_string(),
            Some(Some(d)) => d.display().to_string(),
        },
        a.matmul
    );
    for &l in &a.layers {
        match l {
            1 => run::<1>(&a),
            2 => run::<2>(&a),
            4 => run::<4>(&a),
            8 => run::<8>(&a),
            16 => run::<16>(&a),
            32 => run::<32>(&a),
            64 => run::<64>(&a),
            n => eprintln!("unsupported layer count {n} (use 1, 2, 4, 8, 16, 32 or 64)"),
        }
    }
}
