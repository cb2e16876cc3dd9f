//! With `kiln bench compile --remote-cache URL`: what sharing compiled kernels through a remote
//! cache saves (a cold machine with a warm remote) and what sharded precompiles cost.

use super::compile::{compile_child_with, report};
use super::{median, CompileBench};
use kiln_compile::cores;
use serde_json::{json, Value};
use std::path::PathBuf;

/// The rows that need a remote cache: a cold machine with a warm remote (vs a cold compile at
/// the same thread count), and N-way sharded precompiles (vs the 1-thread cold compile / N).
pub(super) fn remote_rows(
    a: &CompileBench,
    url: &str,
    cold_1thread_ms: f64,
    cold_same_threads_ms: Option<f64>,
    fresh: &dyn Fn(String) -> PathBuf,
) -> anyhow::Result<Value> {
    let t = cores();
    let ms = |r: &Value| r["compile_ms"].as_f64().unwrap_or(0.0);
    let stage = |r: &Value, name: &str| {
        r["stages"]
            .as_array()
            .and_then(|s| s.iter().find(|x| x["name"] == name))
            .and_then(|x| x["ms"].as_f64())
            .unwrap_or(0.0)
    };
    // Fill a fresh prefix: machine A compiles cold and uploads.
    let warm_url = kiln_remote::namespace(url, "bench-warm");
    let filled = report(compile_child_with(
        a,
        t,
        &fresh("remote-fill".into()),
        &["--remote-cache", &warm_url],
    ))?;
    let (mut walls, mut lookups, mut runs) = (vec![], vec![], vec![]);
    for r in 0..a.repeat {
        let rep = report(compile_child_with(
            a,
            t,
            &fresh(format!("remote-warm-r{r}")),
            &["--remote-cache", &warm_url],
        ))?;
        anyhow::ensure!(
            rep["compiled"] == 0,
            "a cold machine with a warm remote compiled {} kernels",
            rep["compiled"]
        );
        walls.push(ms(&rep));
        lookups.push(stage(&rep, "Cache lookup"));
        runs.push(rep);
    }
    let warm_ms = median(&mut walls.clone());
    let lookup_ms = median(&mut lookups);
    let cold = cold_same_threads_ms.unwrap_or(cold_1thread_ms);
    let last = runs.last().cloned().unwrap_or(Value::Null);
    eprintln!(
        "cold machine, warm remote: {warm_ms:.0} ms ({:.1}% of the {t}-thread cold compile), {:.2} MB down, cache lookup (fetch + check + store) {lookup_ms:.0} ms",
        100.0 * warm_ms / cold,
        last["remote_bytes_down"].as_f64().unwrap_or(0.0) / 1e6
    );
    let warm_remote = json!({
        "threads": t, "median_ms": warm_ms, "min_ms": walls.iter().copied().fold(f64::INFINITY, f64::min),
        "cold_ms": cold, "ratio_to_cold": warm_ms / cold,
        "cache_lookup_ms": lookup_ms, "other_stages_ms": warm_ms - lookup_ms,
        "bytes_down": last["remote_bytes_down"], "bytes_up_by_the_cold_machine": filled["remote_bytes_up"],
        "remote_hits": last["remote_hits"], "kernels_unique": last["kernels_unique"], "stages": last["stages"],
    });

    // Sharded precompiles, each into a fresh prefix.
    let mut sharded = Vec::new();
    for &n in &a.shards {
        anyhow::ensure!(n >= 1, "--shards must be >= 1");
        let url = kiln_remote::namespace(url, &format!("bench-shards-{n}"));
        let args: Vec<String> = (1..=n).map(|i| format!("{i}/{n}")).collect();
        let child = |i: usize| {
            compile_child_with(
                a,
                1,
                &fresh(format!("shard-{n}-{i}")),
                &["--remote-cache", &url, "--shard", &args[i]],
            )
        };
        let concurrent = n <= t;
        let mut shard_ms = Vec::new();
        let mut largest_unit_ms = 0.0f64;
        let mut reports = Vec::new();
        if concurrent {
            let kids: Vec<_> = (0..n).map(child).collect();
            for k in kids {
                reports.push(report(k)?);
            }
        } else {
            for i in 0..n {
                reports.push(report(child(i))?);
            }
        }
        for r in &reports {
            shard_ms.push(ms(r));
            for k in r["kernels"].as_array().into_iter().flatten() {
                if k["cached"] == false {
                    largest_unit_ms = largest_unit_ms.max(k["compile_ms"].as_f64().unwrap_or(0.0));
                }
            }
        }
        let compiled: u64 = reports.iter().filter_map(|r| r["compiled"].as_u64()).sum();
        let slowest = shard_ms.iter().copied().fold(0.0, f64::max);
        let ideal = cold_1thread_ms / n as f64;
        eprintln!(
            "{n} shards ({}): slowest {slowest:.0} ms = {:.2} x (cold 1-thread {cold_1thread_ms:.0} ms / {n}); largest unit {largest_unit_ms:.0} ms",
            if concurrent { "at once, 1 thread each" } else { "one after another, each alone" },
            slowest / ideal
        );
        sharded.push(json!({
            "shards": n, "concurrent": concurrent, "shard_ms": shard_ms, "slowest_ms": slowest,
            "cold_1thread_ms": cold_1thread_ms, "ideal_ms": ideal, "ratio_to_ideal": slowest / ideal,
            "largest_unit_ms": largest_unit_ms, "kernels_compiled": compiled,
        }));
    }
    Ok(json!({ "cold_machine_warm_remote": warm_remote, "sharded": sharded }))
}
