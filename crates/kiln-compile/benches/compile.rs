//! Compiling the qwen3-0.6b preset graph with the CPU backend: sequential, then 2, 4, 8, 16
//! threads (capped at this machine's cores), cache off; warm cache; dedupe off.
//! `kiln bench compile` measures the same with a child process per run, the ceiling and peak RSS.

use criterion::{criterion_group, criterion_main, Criterion};
use kiln_compile::{compile, CompileOptions, KernelCache};
use kiln_cpu::CpuBackend;
use kiln_models::{build_graph, presets::preset, GraphOptions};
use std::time::Duration;

fn bench(c: &mut Criterion) {
    let graph = build_graph(
        &preset("qwen3-0.6b").expect("preset"),
        GraphOptions::default(),
    )
    .expect("graph");
    let backend = CpuBackend::default();
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let mut group = c.benchmark_group("compile_qwen3_0.6b");
    group
        .sample_size(10)
        .measurement_time(Duration::from_secs(20));
    for threads in [1, 2, 4, 8, 16] {
        if threads > cores {
            eprintln!("skipping {threads} threads: this machine has {cores} cores");
            continue;
        }
        group.bench_function(format!("cold_{threads}_threads"), |b| {
            b.iter(|| {
                compile(
                    &graph,
                    &backend,
                    &CompileOptions {
                        threads,
                        ..Default::default()
                    },
                )
                .expect("compile")
            })
        });
    }
    let dir = tempfile::tempdir().expect("temp dir");
    let cache = KernelCache::open(dir.path()).expect("cache");
    let warm = CompileOptions {
        threads: cores,
        cache: Some(cache),
        ..Default::default()
    };
    compile(&graph, &backend, &warm).expect("fill the cache");
    group.bench_function(format!("warm_{cores}_threads"), |b| {
        b.iter(|| compile(&graph, &backend, &warm).expect("compile"))
    });
    // Dedupe off compiles every launch: on 2 of the 28 layers, to keep the run short (the cost
    // grows linearly with depth; with dedupe it does not grow at all).
    let mut two = preset("qwen3-0.6b").expect("preset");
    two.num_layers = 2;
    let small = build_graph(&two, GraphOptions::default()).expect("graph");
    for dedupe in [true, false] {
        let opts = CompileOptions {
            threads: cores,
            dedupe,
            ..Default::default()
        };
        group.bench_function(
            format!(
                "2_layers_dedupe_{}_{cores}_threads",
                if dedupe { "on" } else { "off" }
            ),
            |b| b.iter(|| compile(&small, &backend, &opts).expect("compile")),
        );
    }
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
