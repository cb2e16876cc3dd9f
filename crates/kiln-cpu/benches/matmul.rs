//! Generated matmul (y = x W^T, the layout of every linear layer, W packed when bound) against
//! the `gemm` crate, both on all cores: the prefill shapes 128 and 512 x 1024 x 3072, and
//! qwen3-0.6b's own projections at 128 rows (q 1024 -> 2048, k/v 1024 -> 1024, o 2048 -> 1024,
//! gate/up 1024 -> 6144 as one matmul, down 3072 -> 1024) and at 1 row (decode). Throughput is
//! reported in FLOP/s (criterion's "elem/s" with 2*M*N*K elements per iteration). kiln's bf16
//! weights run the same shapes (`kiln_bf16`; gemm has no bf16 x f32 product).
//!
//! `KILN_MATMUL_SHAPES=MxKxN,...` picks other shapes.

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use kiln_compile::CompileOptions;
use kiln_compile::Target;
use kiln_cpu::CpuBackend;
use kiln_ir::{DType, Expr, Graph, Tensor};
use kiln_runtime::Executable;
use std::collections::HashMap;

fn values(n: usize) -> Vec<f32> {
    (0..n)
        .map(|i| ((i * 7919 % 1000) as f32 / 1000.0) - 0.5)
        .collect()
}

/// One graph for every shape: m, k and n are symbols.
fn load(dtype: DType, threads: usize) -> Box<dyn Executable> {
    let mut g = Graph::new();
    let (m, k, n) = (Expr::sym("m"), Expr::sym("k"), Expr::sym("n"));
    let x = g.input("x", DType::F32, &[m, k.clone()]).unwrap();
    let w = g.input("w", dtype, &[n, k]).unwrap();
    let wt = g.transpose(w, 0, 1).unwrap();
    let y = g.matmul(x, wt).unwrap();
    g.output("y", y);
    CpuBackend::default()
        .with_run_threads(threads)
        .load(&g, &CompileOptions::default())
        .unwrap()
        .exe
}

fn shapes() -> Vec<(usize, usize, usize)> {
    if let Ok(s) = std::env::var("KILN_MATMUL_SHAPES") {
        return s
            .split(',')
            .map(|t| {
                let v: Vec<usize> = t.split('x').map(|d| d.parse().expect("MxKxN")).collect();
                (v[0], v[1], v[2])
            })
            .collect();
    }
    let mut v = vec![(128, 1024, 3072), (512, 1024, 3072)];
    for (k, n) in [
        (1024, 2048),
        (1024, 1024),
        (2048, 1024),
        (1024, 6144),
        (3072, 1024),
    ] {
        v.push((128, k, n));
        v.push((1, k, n));
    }
    v
}

fn bench(c: &mut Criterion) {
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
    let mut f32_exe = load(DType::F32, threads);
    let mut bf16_exe = load(DType::BF16, threads);
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(threads)
        .build()
        .unwrap();
    for (m, k, n) in shapes() {
        let wv = values(n * k);
        let w = Tensor::from_f32(&[n, k], &wv);
        f32_exe.set_param("w", w.clone()).unwrap();
        bf16_exe.set_param("w", w.to_dtype(DType::BF16)).unwrap();
        let mut group = c.benchmark_group(format!("matmul_{m}x{k}x{n}_{threads}threads"));
        group.throughput(Throughput::Elements((2 * m * n * k) as u64));
        group.sample_size(20);
        let xv = values(m * k);
        let inputs: HashMap<String, Tensor> =
            [("x".to_string(), Tensor::from_f32(&[m, k], &xv))].into();
        group.bench_function("kiln", |b| b.iter(|| f32_exe.run(&inputs).unwrap()));
        group.bench_function("kiln_bf16", |b| b.iter(|| bf16_exe.run(&inputs).unwrap()));
        let mut dst = vec![0f32; m * n];
        group.bench_function("gemm", |b| {
            b.iter(|| {
                pool.install(|| unsafe {
                    // dst[m, n] = x[m, k] * W^T: rhs element (k, n) at w[n * K + k].
                    gemm::gemm(
                        m,
                        n,
                        k,
                        dst.as_mut_ptr(),
                        1,
                        n as isize,
                        false,
                        xv.as_ptr(),
                        1,
                        k as isize,
                        wv.as_ptr(),
                        k as isize,
                        1,
                        0.0,
                        1.0,
                        false,
                        false,
                        false,
                        gemm::Parallelism::Rayon(threads),
                    )
                })
            })
        });
        group.finish();
    }
}

criterion_group!(benches, bench);
criterion_main!(benches);
