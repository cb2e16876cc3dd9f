//! Generated matmul (y = x W^T, the layout of every linear layer) against the `gemm` crate, both
//! on all cores, at decode (1x1024x3072) and prefill (128x1024x3072) sizes. Throughput is
//! reported in FLOP/s (criterion's "elem/s" with 2*M*N*K elements per iteration).

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use kiln_compile::CompileOptions;
use kiln_cpu::CpuBackend;
use kiln_ir::{DType, Expr, Graph, Tensor};
use kiln_runtime::Target;
use std::collections::HashMap;

fn values(n: usize) -> Vec<f32> {
    (0..n)
        .map(|i| ((i * 7919 % 1000) as f32 / 1000.0) - 0.5)
        .collect()
}

fn bench(c: &mut Criterion) {
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
    let (k, n) = (1024usize, 3072usize);
    let mut g = Graph::new();
    let x = g
        .input("x", DType::F32, &[Expr::sym("m"), k.into()])
        .unwrap();
    let w = g.input("w", DType::F32, &[n.into(), k.into()]).unwrap();
    let wt = g.transpose(w, 0, 1).unwrap();
    let y = g.matmul(x, wt).unwrap();
    g.output("y", y);
    let mut exe = CpuBackend::default()
        .with_run_threads(threads)
        .load(&g, &CompileOptions::default())
        .unwrap()
        .exe;
    let wv = values(n * k);
    exe.set_param("w", Tensor::from_f32(&[n, k], &wv)).unwrap();
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(threads)
        .build()
        .unwrap();

    for m in [1usize, 128] {
        let mut group = c.benchmark_group(format!("matmul_{m}x{k}x{n}_{threads}threads"));
        group.throughput(Throughput::Elements((2 * m * n * k) as u64));
        group.sample_size(20);
        let xv = values(m * k);
        let inputs: HashMap<String, Tensor> =
            [("x".to_string(), Tensor::from_f32(&[m, k], &xv))].into();
        group.bench_function("kiln", |b| b.iter(|| exe.run(&inputs).unwrap()));
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
