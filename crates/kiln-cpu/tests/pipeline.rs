//! The compile pipeline driven with the real C compiler: failures among good kernels, worker
//! panics, the cache, and compiling from inside a library user's rayon pool.
mod common;
use common::*;
use kiln_compile::testing::Faults;
use kiln_compile::{compile, CompileError, CompileOptions, KernelCache};
use kiln_cpu::CpuBackend;
use kiln_ir::{DType, Expr, Graph, Tensor};

/// A graph with several distinct kernels: an elementwise chain, a reduction, matmuls.
fn many_kernels() -> Graph {
    let mut g = Graph::new();
    let x = g
        .input("x", DType::F32, &[Expr::sym("s"), 8.into()])
        .unwrap();
    let w = g.input("w", DType::F32, &[8.into(), 8.into()]).unwrap();
    let mut h = x;
    for i in 0..4 {
        let e = if i % 2 == 0 {
            g.exp2(h).unwrap()
        } else {
            g.sin(h).unwrap()
        };
        let m = g.matmul(e, w).unwrap();
        let s = g.softmax(m, 1).unwrap();
        h = g.add(s, x).unwrap();
        g.output(&format!("h{i}"), h);
    }
    g
}

fn cache_entries(dir: &std::path::Path) -> usize {
    KernelCache::open(dir).unwrap().stats().entries as usize
}

#[test]
fn every_failing_kernel_is_listed_and_good_ones_are_cached() {
    let dir = tempfile::tempdir().unwrap();
    let g = many_kernels();
    let good = compile(
        &g,
        &CpuBackend::default(),
        &CompileOptions {
            threads: 1,
            ..Default::default()
        },
    )
    .unwrap();
    let unique = good.report.kernels_unique;
    let reductions = good
        .loaded
        .kernels
        .iter()
        .filter(|k| k.kernel.label().starts_with("reduce"))
        .count();
    assert!(reductions >= 2 && unique > reductions);

    let b = Faulty {
        inner: CpuBackend::default(),
        hooks: Faults {
            // Every reduction, whether the fusion passes left it alone or computed it inside
            // the elementwise kernel that reads it (the softmax's max and sum become `_map`
            // kernels).
            broken: &[
                "reduce_sum",
                "reduce_max",
                "reduce_sum_map",
                "reduce_max_map",
            ],
            panic_on: None,
        },
    };
    // One kernel per compile unit, so that cache entries count kernels.
    let opts = CompileOptions {
        threads: 2,
        cache: Some(KernelCache::open(dir.path()).unwrap()),
        batching: false,
        ..Default::default()
    };
    let err = compile(&g, &b, &opts).err().expect("must fail");
    let CompileError::Kernels(fails) = err else {
        panic!("{err}")
    };
    assert_eq!(fails.len(), reductions, "every broken kernel is reported");
    assert!(
        fails.windows(2).all(|w| w[0].kernel < w[1].kernel),
        "sorted by name"
    );
    assert!(fails
        .iter()
        .all(|f| f.error.to_string().contains("broken_on_purpose")));
    // Good kernels were cached (beside the runtime's parts they call); the broken ones were not.
    let runtime_units = good.report.units.iter().filter(|u| u.runtime).count();
    assert_eq!(
        cache_entries(dir.path()),
        unique - reductions + runtime_units
    );
    // A fixed backend then builds only what is missing.
    let fixed = compile(&g, &CpuBackend::default(), &opts).unwrap();
    assert_eq!(fixed.report.cache_hits, unique - reductions);
    assert_eq!(fixed.report.compiled, reductions);
}

#[test]
fn a_panicking_worker_becomes_an_error_for_its_kernel() {
    let g = many_kernels();
    let b = Faulty {
        inner: CpuBackend::default(),
        hooks: Faults {
            broken: &[],
            panic_on: Some("matmul"),
        },
    };
    for threads in [1, 2] {
        let err = compile(
            &g,
            &b,
            &CompileOptions {
                threads,
                batching: false,
                ..Default::default()
            },
        )
        .err()
        .expect("must fail");
        let CompileError::Kernels(fails) = err else {
            panic!("{err}")
        };
        assert!(!fails.is_empty());
        for f in &fails {
            assert!(f.kernel.contains("matmul"), "{}", f.kernel);
            let d = f.error.to_string();
            assert!(
                d.contains("panicked") && d.contains("injected panic"),
                "{d}"
            );
        }
    }
}

#[test]
fn corrupt_cache_entries_are_detected_and_rebuilt() {
    let dir = tempfile::tempdir().unwrap();
    let g = many_kernels();
    let opts = CompileOptions {
        threads: 2,
        cache: Some(KernelCache::open(dir.path()).unwrap()),
        ..Default::default()
    };
    let cold = compile(&g, &CpuBackend::default(), &opts).unwrap();
    let mut files: Vec<_> = walk(dir.path())
        .into_iter()
        .filter(|p| p.extension().is_some_and(|e| e == "kart"))
        .collect();
    files.sort();
    assert!(files.len() >= 2);
    // Truncate one entry, flip a bit in another.
    let bytes = std::fs::read(&files[0]).unwrap();
    std::fs::write(&files[0], &bytes[..bytes.len() / 2]).unwrap();
    let mut bytes = std::fs::read(&files[1]).unwrap();
    let mid = bytes.len() - 100;
    bytes[mid] ^= 0x10;
    std::fs::write(&files[1], &bytes).unwrap();

    let seen = std::sync::Mutex::new(Vec::new());
    struct Collect<'a>(&'a std::sync::Mutex<Vec<String>>);
    impl kiln_compile::Observer for Collect<'_> {
        fn event(&self, e: &kiln_compile::Event<'_>) {
            if let kiln_compile::Event::CacheCorrupt { reason, .. } = e {
                self.0.lock().unwrap().push(reason.to_string());
            }
        }
    }
    let obs = Collect(&seen);
    let warm = compile(
        &g,
        &CpuBackend::default(),
        &CompileOptions {
            observer: Some(&obs),
            ..opts.clone()
        },
    )
    .unwrap();
    let reasons = seen.lock().unwrap().clone();
    assert_eq!(reasons.len(), 2, "{reasons:?}");
    assert!(
        reasons.iter().any(|r| r.contains("truncated"))
            && reasons.iter().any(|r| r.contains("checksum")),
        "{reasons:?}"
    );
    // The two damaged units (one kernel, a batch or a runtime part each: the entries are in
    // hash order) are rebuilt, the rest are hits, and the artifacts are exactly what a cold
    // compile made.
    assert_eq!(
        warm.report.compiler_invocations, 2,
        "{:?}",
        warm.report.units
    );
    assert_eq!(
        warm.report.cache_hits + warm.report.compiled,
        cold.report.kernels_unique
    );
    assert_eq!(warm.report.artifact_digest, cold.report.artifact_digest);
    // And the rebuilt program computes the right thing.
    let device = kiln_cpu::CpuDevice::new(2).unwrap();
    let mut exe = kiln_runtime::Executor::new(device, warm.loaded).unwrap();
    let ins = inputs(&[
        ("x", Tensor::from_f32(&[3, 8], &values(24, 1))),
        ("w", Tensor::from_f32(&[8, 8], &values(64, 2))),
    ]);
    check(&mut exe, &g, &ins, 1e-5, 1e-5);
    // A third compile finds every entry whole again.
    let third = compile(&g, &CpuBackend::default(), &opts).unwrap();
    assert_eq!(third.report.cache_hits, third.report.kernels_unique);
}

fn walk(p: &std::path::Path) -> Vec<std::path::PathBuf> {
    let mut out = vec![];
    for e in std::fs::read_dir(p).unwrap().flatten() {
        if e.path().is_dir() {
            out.extend(walk(&e.path()));
        } else {
            out.push(e.path());
        }
    }
    out
}

#[test]
fn compiling_inside_a_users_rayon_pool_does_not_deadlock() {
    let g = many_kernels();
    let user_pool = rayon::ThreadPoolBuilder::new()
        .num_threads(2)
        .build()
        .unwrap();
    let digests: Vec<String> = user_pool.install(|| {
        use rayon::prelude::*;
        (0..2)
            .into_par_iter()
            .map(|_| {
                compile(
                    &g,
                    &CpuBackend::default(),
                    &CompileOptions {
                        threads: 2,
                        ..Default::default()
                    },
                )
                .unwrap()
                .report
                .artifact_digest
            })
            .collect()
    });
    assert_eq!(digests[0], digests[1]);
}

#[test]
fn thread_count_changes_nothing_but_time() {
    let g = many_kernels();
    let reports: Vec<_> = [1, 2, 4, 16, 64]
        .iter()
        .map(|&t| {
            compile(
                &g,
                &CpuBackend::default(),
                &CompileOptions {
                    threads: t,
                    ..Default::default()
                },
            )
            .unwrap()
            .report
        })
        .collect();
    for r in &reports {
        assert_eq!(
            r.artifact_digest, reports[0].artifact_digest,
            "threads {}",
            r.threads
        );
    }
    let err = compile(
        &g,
        &CpuBackend::default(),
        &CompileOptions {
            threads: 0,
            ..Default::default()
        },
    )
    .err()
    .unwrap()
    .to_string();
    assert!(err.contains("between 1 and"), "{err}");
}
