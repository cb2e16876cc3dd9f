//! Issue 28, defect 4: once the program is interrupted, every stage of the pipeline stops
//! within a fraction of its normal time (an atomic load per chunk of its loop), so SIGINT or
//! SIGTERM ends even a compile of thousands of layers within about a second. The interrupt
//! flag is global and cannot be cleared: this binary holds this one test only.

use kiln_compile::{analysis, compile, dedupe, extract, CompileError, CompileOptions};
use kiln_cpu::CpuBackend;
use kiln_models::{build_graph, GraphOptions};
use std::time::{Duration, Instant};

fn timed<T>(f: impl FnOnce() -> T) -> (T, Duration) {
    let t = Instant::now();
    let v = f();
    (v, t.elapsed())
}

#[test]
fn every_stage_stops_soon_once_interrupted() {
    let mut c = kiln_models::presets::preset("qwen3-0.6b").unwrap();
    c.num_layers = 1500;
    let graph = build_graph(&c, GraphOptions::default()).unwrap();
    // Each stage's time on this input, uninterrupted.
    let (analysed, t_analysis) = timed(|| analysis::analyze(&graph).unwrap());
    let (program, t_extract) = timed(|| extract::extract(&analysed));
    let (_, t_dedupe) = timed(|| dedupe::dedupe(&program, true));
    assert!(!program.steps.is_empty());

    kiln_compile::interrupt(libc::SIGINT);
    let (r, t) = timed(|| analysis::analyze(&graph));
    assert!(
        matches!(r, Err(CompileError::Interrupted { signal }) if signal == libc::SIGINT),
        "analysis"
    );
    assert!(t < t_analysis / 5, "analysis: {t:?} of {t_analysis:?}");
    let (_, t) = timed(|| extract::extract(&analysed));
    assert!(t < t_extract / 5, "extraction: {t:?} of {t_extract:?}");
    let (_, t) = timed(|| dedupe::dedupe(&program, true));
    assert!(
        t < t_dedupe / 5 + Duration::from_millis(5),
        "dedupe: {t:?} of {t_dedupe:?}"
    );
    // The whole pipeline, through a real backend.
    let (r, t) = timed(|| {
        compile(
            &graph,
            &CpuBackend::default(),
            &CompileOptions {
                threads: 2,
                ..Default::default()
            },
        )
    });
    assert!(
        matches!(r, Err(CompileError::Interrupted { .. })),
        "compile: {:?}",
        r.err()
    );
    assert!(t < Duration::from_secs(1), "compile: {t:?}");
}
