//! `kiln bench compile|decode`: reproducible numbers with one command, as JSON and an SVG plot.
//! Each compile configuration runs in a child process (its own peak RSS, its own fresh cache).

use anyhow::Context;
use clap::{Args, Subcommand};
use kiln_backends::{BackendKind, BackendOptions};
use serde_json::{json, Value};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Instant;

#[derive(Subcommand)]
pub enum BenchCommand {
    /// Compile time vs threads (cold cache), the machine's ceiling, warm cache, peak RSS.
    Compile(CompileBench),
    /// Prefill time, decode tokens/s and the memory-bandwidth bound.
    Decode(DecodeBench),
}

#[derive(Args)]
pub struct CompileBench {
    #[arg(long)]
    model: String,
    /// Thread counts to measure (each 1 to 1024).
    #[arg(long, value_delimiter = ',', default_value = "1,2,4,8,16", value_parser = crate::parse_threads)]
    threads: Vec<usize>,
    /// Runs per configuration (median and min are reported), 1 to 1000.
    #[arg(long, default_value_t = 3, value_parser = crate::bounds::repeat)]
    repeat: usize,
    #[arg(long, value_enum, default_value_t = BackendKind::Cpu)]
    backend: BackendKind,
    /// CUDA arch for a compile-only CUDA benchmark (e.g. sm_90).
    #[arg(long)]
    arch: Option<String>,
    /// Override the number of layers (1 to 10000).
    #[arg(long, value_parser = crate::bounds::layers)]
    layers: Option<usize>,
    /// Time limit of one compiler invocation in each compile, in seconds.
    #[arg(long, value_name = "SECS", env = "KILN_COMPILE_TIMEOUT", default_value_t = kiln_compile::DEFAULT_COMPILE_TIMEOUT.as_secs(), value_parser = crate::bounds::compile_timeout)]
    compile_timeout: u64,
    #[arg(long, default_value = "bench-out")]
    out: PathBuf,
    /// Also measure sharing through this remote cache (a fresh key prefix under it): a cold
    /// machine with a warm remote, and sharded precompiles.
    #[arg(long, value_name = "URL")]
    remote_cache: Option<String>,
    /// Shard counts for the sharded precompile (with --remote-cache). Up to the core count the
    /// shards run at once, one thread each; beyond it one after another, each alone on the
    /// machine (as N machines would).
    #[arg(long, value_delimiter = ',', default_value = "2,16", value_parser = crate::bounds::shards)]
    shards: Vec<usize>,
}

#[derive(Args)]
pub struct DecodeBench {
    #[arg(long)]
    model: String,
    #[arg(long, default_value_t = 128, value_parser = crate::bounds::prompt_len)]
    prompt_len: usize,
    #[arg(long, default_value_t = 32, value_parser = crate::bounds::new_tokens)]
    tokens: usize,
    /// Compile and run threads (1 to 1024; kernels run on at most one per core).
    #[arg(long, value_parser = crate::parse_threads)]
    threads: Option<usize>,
    /// cpu, cuda (GPU 0) or wgpu (the bound is then the device's copy bandwidth).
    #[arg(long, value_enum, default_value_t = BackendKind::Cpu)]
    backend: BackendKind,
    /// Matrix weights in f32 or bf16 (default: the model's own).
    #[arg(long, value_parser = ["f32", "bf16"])]
    weight_dtype: Option<String>,
    #[arg(long, default_value = "bench-out")]
    out: PathBuf,
}

pub fn run(b: BenchCommand) -> anyhow::Result<()> {
    match b {
        BenchCommand::Compile(a) => compile_bench(a),
        BenchCommand::Decode(a) => decode_bench(a),
    }
}

/// `--out DIR`: made if missing, and checked to take files, before any benchmark runs; every
/// error names it.
fn out_dir(dir: &Path) -> anyhow::Result<()> {
    std::fs::create_dir_all(dir)
        .with_context(|| format!("--out {}: cannot create", dir.display()))?;
    crate::output_path::check_writable("--out", &dir.join("bench.json"))
}

fn write_json(path: &Path, doc: &Value) -> anyhow::Result<()> {
    std::fs::write(path, serde_json::to_vec_pretty(doc)?)
        .with_context(|| format!("writing {}", path.display()))
}

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn cores() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}

fn cpu_model() -> String {
    std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split(':').nth(1))
                .map(|m| m.trim().to_string())
        })
        .unwrap_or_default()
}

/// One `kiln compile --json` child with a fresh (or given) cache dir.
fn compile_child(a: &CompileBench, threads: usize, cache: &Path) -> std::process::Child {
    compile_child_with(a, threads, cache, &[])
}

fn compile_child_with(
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

fn report(child: std::process::Child) -> anyhow::Result<Value> {
    let out = child.wait_with_output()?;
    let stderr = String::from_utf8_lossy(&out.stderr);
    anyhow::ensure!(
        out.status.success(),
        "kiln compile failed: {}",
        stderr.trim().trim_start_matches("error: ")
    );
    Ok(serde_json::from_slice(&out.stdout)?)
}

fn compile_bench(a: CompileBench) -> anyhow::Result<()> {
    anyhow::ensure!(
        a.repeat >= 1 && !a.threads.is_empty() && a.threads.iter().all(|&t| t >= 1),
        "--repeat and --threads must be >= 1"
    );
    out_dir(&a.out)?;
    let scratch = tempfile::tempdir()?;
    let fresh = |tag: String| scratch.path().join(tag);
    let mut threads = a.threads.clone();
    if !threads.contains(&1) {
        threads.insert(0, 1); // the baseline
    }
    // One discarded run first: the first compile after a build pays for cold page caches.
    report(compile_child(&a, 1, &fresh("warm-up".into())))?;
    let mut configs = Vec::new();
    let mut base_ms = 0.0;
    let mut base_stage = 0.0;
    let mut warm_dir = None;
    for &t in &threads {
        let (mut walls, mut rss, mut stage_runs) = (vec![], vec![], vec![]);
        let mut last = Value::Null;
        for r in 0..a.repeat {
            let dir = fresh(format!("t{t}-r{r}"));
            let rep = report(compile_child(&a, t, &dir))?;
            walls.push(rep["compile_ms"].as_f64().unwrap_or(0.0));
            rss.push(rep["peak_rss_mb"].as_f64().unwrap_or(0.0));
            stage_runs.push(rep["stages"].clone());
            if t == 1 && warm_dir.is_none() {
                warm_dir = Some(dir);
            }
            last = rep;
        }
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
        }));
    }
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
        Some(url) => Some(remote_rows(&a, url, base_ms, cold_at(cores()), &fresh)?),
        None => None,
    };
    let doc = json!({
        "model": a.model, "backend": a.backend.name(), "arch": a.arch, "layers": a.layers, "repeat": a.repeat,
        "machine": { "cores": cores(), "cpu": cpu_model() },
        "unix_time": std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0),
        "configs": configs,
        "warm": { "threads": cores(), "compile_ms": warm_ms, "cache_hits": warm["cache_hits"], "ratio_to_cold": warm_ms / base_ms },
        "remote": remote,
    });
    let jpath = a.out.join("compile.json");
    write_json(&jpath, &doc)?;
    let spath = a.out.join("compile.svg");
    plot_compile(&doc, &spath).with_context(|| format!("writing {}", spath.display()))?;
    eprintln!(
        "warm cache: {warm_ms:.0} ms ({:.1}% of cold)",
        100.0 * warm_ms / base_ms
    );
    eprintln!("wrote {} and {}", jpath.display(), spath.display());
    Ok(())
}

/// The rows that need a remote cache: a cold machine with a warm remote (vs a cold compile at
/// the same thread count), and N-way sharded precompiles (vs the 1-thread cold compile / N).
fn remote_rows(
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
    let warm_url = kiln_remote::testing::namespace(url, "bench-warm");
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
        let url = kiln_remote::testing::namespace(url, &format!("bench-shards-{n}"));
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

fn plot_compile(doc: &Value, path: &Path) -> anyhow::Result<()> {
    use plotters::prelude::*;
    let configs = doc["configs"].as_array().cloned().unwrap_or_default();
    let pts: Vec<(f64, f64, f64)> = configs
        .iter()
        .map(|c| {
            (
                c["threads"].as_f64().unwrap_or(1.0),
                c["speedup"].as_f64().unwrap_or(0.0),
                c["ceiling"].as_f64().unwrap_or(0.0),
            )
        })
        .collect();
    let max_t = pts.iter().map(|p| p.0).fold(1.0, f64::max);
    let root = SVGBackend::new(path, (1100, 450)).into_drawing_area();
    root.fill(&WHITE)?;
    let (left, right) = root.split_horizontally(550);
    let mut ch = ChartBuilder::on(&left)
        .caption(
            format!(
                "{}: compile speedup vs threads",
                doc["model"].as_str().unwrap_or("")
            ),
            ("sans-serif", 18),
        )
        .margin(15)
        .x_label_area_size(35)
        .y_label_area_size(40)
        .build_cartesian_2d(0.0..max_t + 1.0, 0.0..max_t + 1.0)?;
    ch.configure_mesh()
        .x_desc("threads")
        .y_desc("speedup")
        .draw()?;
    ch.draw_series(LineSeries::new(
        vec![(1.0, 1.0), (max_t, max_t)],
        BLACK.mix(0.4),
    ))?
    .label("ideal")
    .legend(|(x, y)| PathElement::new(vec![(x, y), (x + 15, y)], BLACK.mix(0.4)));
    ch.draw_series(LineSeries::new(pts.iter().map(|p| (p.0, p.2)), GREEN))?
        .label("ceiling (independent copies)")
        .legend(|(x, y)| PathElement::new(vec![(x, y), (x + 15, y)], GREEN));
    ch.draw_series(LineSeries::new(pts.iter().map(|p| (p.0, p.1)), BLUE))?
        .label("kiln")
        .legend(|(x, y)| PathElement::new(vec![(x, y), (x + 15, y)], BLUE));
    ch.draw_series(
        pts.iter()
            .map(|p| Circle::new((p.0, p.1), 4, BLUE.filled())),
    )?;
    ch.configure_series_labels()
        .position(SeriesLabelPosition::UpperLeft)
        .border_style(BLACK)
        .draw()?;

    let stage_names: Vec<String> = configs
        .first()
        .and_then(|c| c["stages"].as_array())
        .map(|s| {
            s.iter()
                .filter_map(|x| x["name"].as_str().map(String::from))
                .collect()
        })
        .unwrap_or_default();
    let max_ms = configs
        .iter()
        .map(|c| c["median_ms"].as_f64().unwrap_or(0.0))
        .fold(1.0, f64::max);
    let mut ch = ChartBuilder::on(&right)
        .caption("stage times (median, ms)", ("sans-serif", 18))
        .margin(15)
        .x_label_area_size(35)
        .y_label_area_size(50)
        .build_cartesian_2d(0.0..configs.len() as f64, 0.0..max_ms * 1.1)?;
    ch.configure_mesh()
        .x_desc("configuration (threads in the order measured)")
        .y_desc("ms")
        .draw()?;
    for (si, name) in stage_names.iter().enumerate() {
        let color = Palette99::pick(si);
        let bars: Vec<Rectangle<(f64, f64)>> = configs
            .iter()
            .enumerate()
            .map(|(ci, c)| {
                let st = c["stages"].as_array().cloned().unwrap_or_default();
                let below: f64 = st.iter().take(si).filter_map(|x| x["ms"].as_f64()).sum();
                let this = st.get(si).and_then(|x| x["ms"].as_f64()).unwrap_or(0.0);
                Rectangle::new(
                    [(ci as f64 + 0.15, below), (ci as f64 + 0.85, below + this)],
                    color.filled(),
                )
            })
            .collect();
        ch.draw_series(bars)?
            .label(name.clone())
            .legend(move |(x, y)| Rectangle::new([(x, y - 5), (x + 10, y + 5)], color.filled()));
    }
    ch.configure_series_labels()
        .position(SeriesLabelPosition::UpperRight)
        .border_style(BLACK)
        .draw()?;
    root.present()?;
    Ok(())
}

/// Streaming read of a large buffer on every core: the machine's memory bandwidth, bytes/s.
fn memory_bandwidth(threads: usize) -> f64 {
    use rayon::prelude::*;
    let words = 1usize << 27; // 1 GiB of u64
    let buf: Vec<u64> = (0..words as u64).collect();
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(threads)
        .build()
        .expect("pool");
    let mut best = 0.0f64;
    for _ in 0..5 {
        let start = Instant::now();
        let s: u64 = pool.install(|| {
            buf.par_chunks(1 << 16)
                .map(|c| c.iter().fold(0u64, |a, &x| a.wrapping_add(x)))
                .reduce(|| 0, u64::wrapping_add)
        });
        std::hint::black_box(s);
        best = best.max((words * 8) as f64 / start.elapsed().as_secs_f64());
    }
    best
}

fn decode_bench(a: DecodeBench) -> anyhow::Result<()> {
    use kiln_models::{LoadOptions, Model, Sampling};
    out_dir(&a.out)?;
    let threads = a.threads.unwrap_or_else(cores);
    let source = crate::model_source(&a.model)?;
    let target = kiln_backends::open(
        a.backend,
        &BackendOptions {
            run_threads: threads.min(cores()),
            driver_cache: crate::driver_cache(false),
            ..Default::default()
        },
    )?;
    let weight_dtype = a.weight_dtype.as_deref().map(|d| match d {
        "f32" => kiln_models::WeightDtype::F32,
        _ => kiln_models::WeightDtype::BF16,
    });
    let mut opts = LoadOptions {
        compile: kiln_compile::CompileOptions {
            threads,
            cache: crate::progress::open_cache(false),
            ..Default::default()
        },
        ..LoadOptions::new(target.as_ref())
    };
    opts.graph.weight_dtype = weight_dtype;
    let t = Instant::now();
    let mut model = Model::load(&source, &opts)?;
    let load_ms = t.elapsed().as_secs_f64() * 1e3;
    let vocab = model.config.vocab_size as u32;
    let prompt: Vec<u32> = (0..a.prompt_len as u32)
        .map(|i| (i * 7919 + 13) % vocab)
        .collect();
    let g = model.generate(&prompt, a.tokens, &Sampling::default(), &[], |_| {})?;
    // The last run was a decode step: what one token costs in launches and bytes written.
    let step = model.exe.last_run();
    let (bw, device_name) = match target.bandwidth() {
        Some(probe) => {
            let (name, bw) = probe?;
            (bw, format!("{name} (device-to-device copy)"))
        }
        None => (memory_bandwidth(threads), cpu_model()),
    };
    let mut c = model.config.clone();
    if let Some(w) = weight_dtype {
        c.weight_dtype = w;
    }
    let c = &c;
    // Bytes a decode step must read: every weight, and the KV cache (f32) at the mean
    // position of the generated tokens.
    let weight_bytes = c.weight_bytes() as f64;
    let mean_pos = a.prompt_len as f64 + g.generated_ids.len() as f64 / 2.0;
    let kv_bytes = (2 * c.num_layers * c.num_kv_heads * c.head_dim * 4) as f64 * mean_pos;
    let bound = bw / (weight_bytes + kv_bytes);
    let decode = g.decode_tokens_per_s();
    // Prefill work: the linear layers for every prompt position, causal attention (q.k and
    // p.v over the keys each position sees) and the LM head for the last position.
    let (h, i, d) = (
        c.hidden_size as f64,
        c.intermediate_size as f64,
        c.head_dim as f64,
    );
    let (nh, kv, s) = (
        c.num_heads as f64,
        c.num_kv_heads as f64,
        a.prompt_len as f64,
    );
    let linear = 2.0 * (h * (nh + 2.0 * kv) * d + nh * d * h + 3.0 * h * i);
    let attention = 4.0 * nh * d * s * (s + 1.0) / 2.0;
    let prefill_flops =
        c.num_layers as f64 * (linear * s + attention) + 2.0 * h * c.vocab_size as f64;
    let prefill_gflops = prefill_flops / (g.prefill_ms * 1e6);
    let (peak, lanes) = match a.backend {
        BackendKind::Cpu => {
            let (p, l) = kiln_backends::cpu_fma_peak(threads)?;
            (Some(p), Some(l))
        }
        _ => (None, None),
    };
    let doc = json!({
        "model": a.model, "backend": a.backend.name(), "threads": threads,
        "machine": { "cores": cores(), "cpu": cpu_model(), "bandwidth_from": device_name, "vector_lanes_f32": lanes },
        "prompt_len": a.prompt_len, "tokens": g.generated_ids.len(), "load_ms": load_ms, "compile_ms": model.report.compile_ms,
        "prefill_ms": g.prefill_ms, "time_to_first_token_ms": g.prefill_ms,
        "prefill_gflop": prefill_flops / 1e9, "prefill_gflops": prefill_gflops,
        "fma_peak_gflops": peak, "prefill_pct_of_peak": peak.map(|p| 100.0 * prefill_gflops / p),
        "decode_tokens_per_s": decode,
        "memory_bandwidth_gb_s": bw / 1e9, "weight_bytes": weight_bytes, "kv_cache_bytes_read": kv_bytes,
        "weight_dtype": format!("{:?}", c.weight_dtype), "params": c.num_params(),
        "bound_tokens_per_s": bound, "decode_pct_of_bound": 100.0 * decode / bound,
        "launches_per_token": step.launches, "bytes_written_per_token": step.bytes_written,
    });
    let jpath = a.out.join("decode.json");
    write_json(&jpath, &doc)?;
    let spath = a.out.join("decode.svg");
    {
        use plotters::prelude::*;
        let root = SVGBackend::new(&spath, (600, 400)).into_drawing_area();
        root.fill(&WHITE)?;
        // Both measures against the machine, in percent: prefill of the FMA peak, decode of
        // the memory-bandwidth bound.
        let prefill_pct = peak.map_or(0.0, |p| 100.0 * prefill_gflops / p);
        let decode_pct = 100.0 * decode / bound;
        let vals = [
            (
                format!("prefill {prefill_gflops:.0} GFLOP/s: % of FMA peak"),
                prefill_pct,
            ),
            (
                format!("decode {decode:.1} tokens/s: % of bandwidth bound"),
                decode_pct,
            ),
        ];
        let mut ch = ChartBuilder::on(&root)
            .caption(
                format!(
                    "{} on the machine's limits ({}, {threads} threads)",
                    a.model, a.backend
                ),
                ("sans-serif", 18),
            )
            .margin(15)
            .x_label_area_size(35)
            .y_label_area_size(45)
            .build_cartesian_2d(0.0..2.0, 0.0..110.0)?;
        ch.configure_mesh()
            .x_labels(0)
            .y_desc("% of the limit")
            .draw()?;
        for (i, (name, v)) in vals.iter().enumerate() {
            ch.draw_series([Rectangle::new(
                [(i as f64 + 0.2, 0.0), (i as f64 + 0.8, *v)],
                Palette99::pick(i).filled(),
            )])?
            .label(format!("{name}: {v:.0}%"))
            .legend(move |(x, y)| {
                Rectangle::new([(x, y - 5), (x + 10, y + 5)], Palette99::pick(i).filled())
            });
        }
        ch.configure_series_labels().border_style(BLACK).draw()?;
        root.present()
            .with_context(|| format!("writing {}", spath.display()))?;
    }
    eprintln!(
        "prefill {} tokens: {:.1} ms, {prefill_gflops:.1} GFLOP/s{}; decode {decode:.2} tokens/s, {} launches/token; bandwidth {:.1} GB/s -> bound {bound:.2} tokens/s ({:.0}%)",
        a.prompt_len,
        g.prefill_ms,
        peak.map_or(String::new(), |p| format!(" ({:.0}% of the {p:.0} GFLOP/s FMA peak)", 100.0 * prefill_gflops / p)),
        step.launches,
        bw / 1e9,
        100.0 * decode / bound
    );
    eprintln!("wrote {} and {}", jpath.display(), spath.display());
    Ok(())
}
