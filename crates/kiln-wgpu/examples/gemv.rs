//! Decode's GEMV on the wgpu adapter: `x[1, K] @ W^T` for a bf16 weight `W[N, K]`, as Qwen's
//! projections are, timed over repeated runs (wall and process CPU time).
//!
//! `cargo run --release -p kiln-wgpu --example gemv [N K [REPS]]` (default 3072 1024 5).

use kiln_compile::CompileOptions;
use kiln_compile::Target;
use kiln_ir::{DType, Expr, Graph, Tensor};
use std::collections::HashMap;
use std::time::Instant;

fn cpu_seconds() -> f64 {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    let f: Vec<&str> = stat
        .rsplit(')')
        .next()
        .unwrap_or("")
        .split_whitespace()
        .collect();
    let ticks: f64 = f.get(11).and_then(|v| v.parse().ok()).unwrap_or(0.0)
        + f.get(12).and_then(|v| v.parse().ok()).unwrap_or(0.0);
    ticks / 100.0
}

fn main() {
    let args: Vec<usize> = std::env::args()
        .skip(1)
        .filter_map(|a| a.parse().ok())
        .collect();
    let (n, k, reps) = (
        *args.first().unwrap_or(&3072),
        *args.get(1).unwrap_or(&1024),
        *args.get(2).unwrap_or(&5),
    );
    let b = kiln_wgpu::WgpuBackend::open(&Default::default()).expect("a wgpu adapter");
    let mut g = Graph::new();
    let x = g
        .input("x", DType::F32, &[Expr::sym("s"), k.into()])
        .unwrap();
    let w = g.input("w", DType::BF16, &[n.into(), k.into()]).unwrap();
    let wt = g.transpose(w, 0, 1).unwrap();
    let y = g.matmul(x, wt).unwrap();
    g.output("y", y);
    let mut exe = b.load(&g, &CompileOptions::default()).unwrap().exe;
    let wv: Vec<f32> = (0..n * k)
        .map(|i| ((i * 7919 % 1000) as f32) / 500.0 - 1.0)
        .collect();
    exe.set_param("w", Tensor::from_f32(&[n, k], &wv).to_dtype(DType::BF16))
        .unwrap();
    let xv: Vec<f32> = (0..k)
        .map(|i| ((i * 31 % 100) as f32) / 50.0 - 1.0)
        .collect();
    let ins: HashMap<String, Tensor> = [("x".to_string(), Tensor::from_f32(&[1, k], &xv))].into();
    let out = exe.run(&ins).unwrap(); // warm
    let want: f64 = (0..k)
        .map(|j| xv[j] as f64 * half::bf16::from_f32(wv[j]).to_f64())
        .sum();
    assert!((out["y"].as_f32()[0] as f64 - want).abs() < 1e-3);
    let (t, c) = (Instant::now(), cpu_seconds());
    for _ in 0..reps {
        exe.run(&ins).unwrap();
    }
    let (wall, cpu) = (
        t.elapsed().as_secs_f64() / reps as f64,
        (cpu_seconds() - c) / reps as f64,
    );
    let bytes = (n * k * 2) as f64;
    println!(
        "gemv [{n}, {k}] bf16 on {}: {:.1} ms wall ({:.3} GB/s), {:.1} CPU-ms ({:.3} GB/s per CPU-second)",
        exe.describe(),
        wall * 1e3,
        bytes / wall / 1e9,
        cpu * 1e3,
        bytes / cpu.max(1e-9) / 1e9
    );
}
