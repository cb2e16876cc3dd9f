//! `kiln bench compile`: compile time against the thread count, from a cold cache, each run a
//! `kiln compile --json` child process (its own peak RSS, its own fresh cache folder); the
//! ceiling (independent sequential compiles started together); the warm cache.

use super::{machine, median, plot, sharing, CompileBench};
use anyhow::Context;
use kiln_compile::{cores, critical_path, modelled_makespan_ms};
use serde_json::{json, Value};
use std::path::Path;
use std::process::{Command, Stdio};

/// One `kiln compile --json` child with a fresh (or given) cache dir.
fn compile_child(a: &CompileBench, threads: usize, cache: &Path) -> std::process::Child {
    compile_child_with(a, threads, cache, &[])
}

/// [`compile_child`] with `extra` arguments (`--remote-cache URL`, `--shard I/N`).
pub(super) fn compile_child_with(
    a: &CompileBench,
    threads: usize,
    cache: &Path,
    extra: &[&str],
) -> std::process::Child {
    let mut cmd = Command::new(std::env::current_exe().expect("own path"));
    cmd.args([
        "compile",
        "--model",
        &a.model,
        "--backend",
        a.backend.name(),
        "--threads",
        &threads.to_string(),
        "--json",
    ]);
    if let Some(l) = a.layers {
        cmd.args(["--layers", &l.to_string()]);
    }
    if let Some(arch) = &a.arch {
        cmd.args(["--arch", arch]);
    }
    cmd.args(["--compile-timeout", &a.compile_timeout.to_string()]);
    cmd.args(extra).env_remove("KILN_REMOTE_CACHE");
    cmd.env("KILN_CACHE_DIR", cache)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn kiln compile")
}

pub(super) fn report(child: std::process::Child) -> anyhow::Result<Value> {
    let out = child.wait_with_output()?;
    let stderr = String::from_utf8_lossy(&out.stderr);
    anyhow::ensure!(
        out.status.success(),
        "kiln compile failed: {}",
        stderr.trim().trim_start_matches("error: ")
    );
    Ok(serde_json::from_slice(&out.stdout)?)
}

pub fn run(a: CompileBench) -> anyhow::Result<()> {
    anyhow::ensure!(
        a.repeat >= 1 && !a.threads.is_empty() && a.threads.iter().all(|&t| t >= 1),
        "--repeat and --threads must be >= 1"
    );
    super::out_dir(&a.out)?;
    let scratch = tempfile::tempdir()?;
    let fresh = |tag: String| scratch.path().join(tag);
    let mut threads = a.threads.clone();
    if !threads.contains(&1) {
        threads.insert(0, 1); // the baseline
    }
    // One discarded run first: the first compile after a build pays for cold page caches.
    report(compile_child(&a, 1, &fresh("warm-up".into())))?;
    let mut configs = Vec::new();
    let mut representative = Vec::new();
    let mut base_ms = 0.0;
    let mut base_stage = 0.0;
    let mut warm_dir = None;
    for &t in &threads {
        let (mut walls, mut rss, mut stage_runs) = (vec![], vec![], vec![]);
        let mut runs = Vec::new();
        for r in 0..a.repeat {
            let dir = fresh(format!("t{t}-r{r}"));
            let rep = report(compile_child(&a, t, &dir))?;
            walls.push(rep["compile_ms"].as_f64().unwrap_or(0.0));
            rss.push(rep["peak_rss_mb"].as_f64().unwrap_or(0.0));
            stage_runs.push(rep["stages"].clone());
            if t == 1 && warm_dir.is_none() {
                warm_dir = Some(dir);
            }
            runs.push(rep);
        }
        let last = median_run(runs);
        let min = walls.iter().copied().fold(f64::INFINITY, f64::min);
        let med = median(&mut walls.clone());
        let stages: Vec<Value> = last["stages"]
            .as_array()
            .cloned()
            .unwrap_or_default()
            .iter()
            .map(|s| {
                let name = s["name"].as_str().unwrap_or("").to_string();
                let mut ms: Vec<f64> = stage_runs
                    .iter()
                    .filter_map(|run| {
                        run.as_array()?
                            .iter()
                            .find(|x| x["name"] == name.as_str())?["ms"]
                            .as_f64()
                    })
                    .collect();
                json!({ "name": name, "ms": median(&mut ms) })
            })
            .collect();
        let stage_ms = stages
            .iter()
            .find(|s| s["name"] == "Parallel compile")
            .and_then(|s| s["ms"].as_f64())
            .unwrap_or(0.0);
        if t == 1 {
            base_ms = med;
            base_stage = stage_ms;
        }
        // The ceiling: t independent sequential compiles started together vs one alone (the
        // 1-thread median above), each group timed `repeat` times, median taken.
        let ceiling = if t == 1 {
            1.0
        } else {
            let mut groups = Vec::new();
            for r in 0..a.repeat {
                let kids: Vec<_> = (0..t)
                    .map(|i| compile_child(&a, 1, &fresh(format!("ceil-t{t}-r{r}-{i}"))))
                    .collect();
                let mut inner = Vec::new();
                for k in kids {
                    inner.push(report(k)?["compile_ms"].as_f64().unwrap_or(0.0));
                }
                // The group's time as the compiles themselves measure it (process start excluded),
                // the same measure as the 1-thread median.
                groups.push(inner.into_iter().fold(0.0, f64::max));
            }
            t as f64 * base_ms / median(&mut groups)
        };
        let speedup = base_ms / med;
        eprintln!("threads {t:>2}: median {med:.0} ms, min {min:.0} ms, speedup {speedup:.2}, ceiling {ceiling:.2}, peak RSS {:.0} MB", median(&mut rss.clone()));
        configs.push(json!({
            "threads": t, "median_ms": med, "min_ms": min, "speedup": speedup, "ceiling": ceiling,
            "efficiency": speedup / t as f64, "speedup_vs_ceiling": speedup / ceiling,
            "parallel_stage_ms": stage_ms, "parallel_stage_speedup": if stage_ms > 0.0 { base_stage / stage_ms } else { 0.0 },
            "peak_rss_mb": median(&mut rss), "stages": stages,
            "kernels_total": last["kernels_total"], "kernels_unique": last["kernels_unique"], "compiled": last["compiled"],
            "compiler_invocations": last["compiler_invocations"],
            "units": last["units"].as_array().map_or(0, |u| u.len()),
            "critical_path_ms": last["critical_path_ms"], "available_parallelism": last["available_parallelism"],
        }));
        representative.push((t, last));
    }
    let modelled = model(&representative);
    // Warm cache: the same compile again on a cache a cold run filled.
    let warm = report(compile_child(
        &a,
        cores(),
        warm_dir.as_ref().expect("a 1-thread run"),
    ))?;
    let warm_ms = warm["compile_ms"].as_f64().unwrap_or(0.0);
    let cold_at = |t: usize| {
        configs
            .iter()
            .find(|c| c["threads"] == t)
            .and_then(|c| c["median_ms"].as_f64())
    };
    let remote = match &a.remote_cache {
        Some(url) => Some(sharing::remote_rows(
            &a,
            url,
            base_ms,
            cold_at(cores()),
            &fresh,
        )?),
        None => None,
    };
    let doc = json!({
        "model": a.model, "backend": a.backend.name(), "arch": a.arch, "layers": a.layers, "repeat": a.repeat,
        "machine": { "cores": cores(), "cpu": machine::cpu_model() },
        "unix_time": std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0),
        "configs": configs,
        "modelled": modelled,
        "warm": { "threads": cores(), "compile_ms": warm_ms, "cache_hits": warm["cache_hits"], "ratio_to_cold": warm_ms / base_ms },
        "remote": remote,
    });
    let jpath = a.out.join("compile.json");
    super::write_json(&jpath, &doc)?;
    let spath = a.out.join("compile.svg");
    plot::compile(&doc, &spath).with_context(|| format!("writing {}", spath.display()))?;
    if let Some(rows) = doc["modelled"]["rows"].as_array() {
        let row = |r: &Value| {
            format!(
                "{}: {:.1}",
                r["threads"],
                r["speedup"].as_f64().unwrap_or(0.0)
            )
        };
        eprintln!(
            "model (LPT over the 1-thread run's unit times, not measured): speedup {}; available parallelism {:.1}",
            rows.iter().map(row).collect::<Vec<_>>().join(", "),
            doc["modelled"]["available_parallelism"].as_f64().unwrap_or(0.0)
        );
    }
    eprintln!(
        "warm cache: {warm_ms:.0} ms ({:.1}% of cold)",
        100.0 * warm_ms / base_ms
    );
    eprintln!("wrote {} and {}", jpath.display(), spath.display());
    Ok(())
}

/// The thread counts the model is evaluated at.
const MODEL_THREADS: [usize; 6] = [1, 2, 4, 8, 16, 32];

/// Of one configuration's runs, the one with the median wall time.
fn median_run(mut runs: Vec<Value>) -> Value {
    runs.sort_by(|a, b| {
        let ms = |r: &Value| r["compile_ms"].as_f64().unwrap_or(0.0);
        ms(a).total_cmp(&ms(b))
    });
    let mid = runs.len() / 2;
    runs.swap_remove(mid)
}

/// A report's unit compile times, ms, in the schedule's order.
fn unit_ms(report: &Value) -> Vec<f64> {
    report["units"]
        .as_array()
        .map(|units| {
            units
                .iter()
                .map(|u| u["compile_ms"].as_f64().unwrap_or(0.0))
                .collect()
        })
        .unwrap_or_default()
}

/// A report's Parallel compile stage, ms.
fn parallel_stage_ms(report: &Value) -> f64 {
    report["stages"]
        .as_array()
        .and_then(|s| s.iter().find(|s| s["name"] == "Parallel compile"))
        .and_then(|s| s["ms"].as_f64())
        .unwrap_or(0.0)
}

/// The modelled speedups: kiln's own list schedule (units longest estimate first, each worker
/// taking the next when free, `modelled_makespan_ms`) over the 1-thread run's measured unit
/// times, on ideal cores; the other stages as measured at 1 thread. And the check of the model
/// against the measured 1- and 2-thread runs (`check`): from the 1-thread unit times, and from
/// the run's own unit times (which carry whatever contention the run met).
fn model(runs: &[(usize, Value)]) -> Value {
    let Some((_, base)) = runs.iter().find(|(t, _)| *t == 1) else {
        return Value::Null;
    };
    let units = unit_ms(base);
    let serial = base["compile_ms"].as_f64().unwrap_or(0.0) - parallel_stage_ms(base);
    let at = |t: usize| modelled_makespan_ms(&units, t);
    let rows: Vec<Value> = MODEL_THREADS
        .iter()
        .map(|&t| {
            json!({
                "threads": t,
                "parallel_stage_ms": at(t),
                "parallel_stage_speedup": at(1) / at(t).max(1e-9),
                "compile_ms": serial + at(t),
                "speedup": (serial + at(1)) / (serial + at(t)).max(1e-9),
            })
        })
        .collect();
    let (critical_path_ms, available_parallelism) = critical_path(units.iter().copied());
    let check: Vec<Value> = runs
        .iter()
        .filter(|(t, _)| *t <= 2)
        .map(|(t, run)| {
            let measured = parallel_stage_ms(run);
            let own = modelled_makespan_ms(&unit_ms(run), *t);
            json!({
                "threads": t,
                "measured_parallel_stage_ms": measured,
                "modelled_from_1_thread_units_ms": at(*t),
                "modelled_from_own_units_ms": own,
            })
        })
        .collect();
    json!({
        "kind": "model",
        "label": "modelled, not measured: kiln's LPT schedule over the 1-thread run's unit compile times on ideal cores",
        "units": units.len(),
        "critical_path_ms": critical_path_ms,
        "available_parallelism": available_parallelism,
        "serial_ms": serial,
        "rows": rows,
        "check": check,
    })
}
