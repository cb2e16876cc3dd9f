//! Analysis and kernel extraction do work linear in a model's depth (issue 28, defect 5:
//! 4x the layers took 5.5x the time). Allocations are counted (a counting allocator), and a
//! step that scanned every graph output for each node — a model has two outputs per layer —
//! is caught by comparing the CPU time of a graph and of one 4x as large, with a wide margin:
//! a complexity check, not a speed target.
use kiln_compile::{analysis, extract};
use kiln_ir::testing::alloc::{allocated, CountingAlloc};
use kiln_models::{build_graph, GraphOptions, QwenConfig};

#[global_allocator]
static ALLOC: CountingAlloc = CountingAlloc;

fn thread_cpu_s() -> f64 {
    let mut t = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: a valid timespec to write into.
    unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut t) };
    t.tv_sec as f64 + t.tv_nsec as f64 * 1e-9
}

/// (bytes allocated, allocations, CPU seconds) of analysing and extracting `layers` layers.
fn stages(c: &QwenConfig, layers: usize) -> (u64, u64, f64) {
    let mut c = c.clone();
    c.num_layers = layers;
    let g = build_graph(&c, GraphOptions::default()).unwrap();
    let ((b0, c0), t0) = (allocated(), thread_cpu_s());
    let a = analysis::analyze(&g).unwrap();
    let p = extract::extract(&a);
    let t1 = thread_cpu_s();
    let (b1, c1) = allocated();
    drop((p, a, g));
    (b1 - b0, c1 - c0, t1 - t0)
}

/// Least thread CPU time of three runs of `f` (the least is the one least disturbed by
/// whatever else the machine runs).
fn cpu_time(mut f: impl FnMut()) -> f64 {
    (0..3)
        .map(|_| {
            let t = thread_cpu_s();
            f();
            thread_cpu_s() - t
        })
        .fold(f64::INFINITY, f64::min)
}

/// `n` attentions, each `softmax(q_i k^T) v` with an output of its own: a graph with as many
/// outputs as attentions (a model has two per layer, its KV cache).
fn attentions(n: usize) -> kiln_ir::Graph {
    use kiln_ir::{DType, Expr, Graph};
    let mut g = Graph::new();
    let k = g
        .input("k", DType::F32, &[Expr::Const(4), Expr::Const(8)])
        .unwrap();
    let kt = g.transpose(k, 0, 1).unwrap();
    let v = g
        .input("v", DType::F32, &[Expr::Const(4), Expr::Const(8)])
        .unwrap();
    for i in 0..n {
        let q = g
            .input(
                &format!("q{i}"),
                DType::F32,
                &[Expr::Const(2), Expr::Const(8)],
            )
            .unwrap();
        let s = g.matmul(q, kt).unwrap();
        let p = g.softmax(s, 1).unwrap();
        let o = g.matmul(p, v).unwrap();
        g.output(&format!("o{i}"), o);
    }
    g
}

#[test]
fn extraction_does_not_scan_the_outputs_for_each_node() {
    // 4x the attentions and outputs: linear work is about 4x; a scan of every output for each
    // attention (as extraction did) is 16x, and dominates at this size.
    let _one = ONE_AT_A_TIME.lock().unwrap();
    let (small, large) = (attentions(2000), attentions(8000));
    let plan = |g: &kiln_ir::Graph| {
        drop(extract::fusion::plan(g));
    };
    let ratio = cpu_time(|| plan(&large)) / cpu_time(|| plan(&small));
    eprintln!("fusion plan: 4x the attentions, {ratio:.1}x the CPU time");
    assert!(ratio < 8.0, "4x the attentions took {ratio:.1}x the time");
    for g in [&small, &large] {
        let p = extract::extract(g);
        assert_eq!(p.steps.len(), g.outputs.len(), "one fused attention each");
    }
}

#[test]
fn analysis_and_extraction_allocate_linearly_in_depth() {
    // One test of this binary runs at a time: the counts are this test's own.
    let _one = ONE_AT_A_TIME.lock().unwrap();
    let c = kiln_models::presets::preset("qwen3-0.6b").unwrap();
    let (b1, a1, _) = stages(&c, 100);
    let (b4, a4, _) = stages(&c, 400);
    let (bytes, calls) = (b4 as f64 / b1 as f64, a4 as f64 / a1 as f64);
    eprintln!("4x the layers: {bytes:.2}x the bytes, {calls:.2}x the allocations");
    assert!(
        bytes < 4.5 && calls < 4.5,
        "{bytes:.2}x bytes, {calls:.2}x allocations"
    );
}

static ONE_AT_A_TIME: std::sync::Mutex<()> = std::sync::Mutex::new(());
