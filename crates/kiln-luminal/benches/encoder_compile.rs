//! Compile time of luminal's `nn::TransformerEncoder` through kiln, against depth.
//!
//! ```text
//! cargo bench -p kiln-luminal --bench encoder_compile -- [--layers 2,8,32] [--threads N]
//!     [--repeat R] [--out DIR]     (default DIR: bench-out at the workspace root)
//! ```
//! For each depth and each of R repeats: build the encoder (64 wide, 256 feed-forward, 4 heads,
//! weights kept), run luminal's `GenericCompiler` (timed apart: it is luminal's, not kiln's),
//! then `KilnCompiler::try_compile` with an empty kernel cache (cold) and once more on a freshly
//! built graph with the cache it filled (warm). Writes `DIR/luminal_encoder.json` (per depth:
//! kernels total/unique, compiler invocations, median and min of the cold and warm bridge
//! times and of kiln's own compile time, luminal's GenericCompiler time) and
//! `DIR/luminal_encoder.svg` (times and unique kernels against depth).

use kiln_luminal::KilnCompiler;
use luminal::nn::transformer::encoder::TransformerEncoder;
use luminal::prelude::*;
use serde_json::{json, Value};
use std::path::Path;
use std::time::Instant;

const DIM: usize = 64;
const FF: usize = 256;
const HEADS: usize = 4;

/// One compile through the bridge.
struct Sample {
    generic_ms: f64,
    bridge_ms: f64,
    kiln_ms: f64,
    kernels_total: usize,
    kernels_unique: usize,
    invocations: usize,
    cache_hits: usize,
    luminal_nodes: usize,
}

fn compile<const L: usize>(threads: usize, cache: &Path) -> Sample {
    let mut cx = Box::new(Graph::new());
    let model: TransformerEncoder<DIM, FF, HEADS, L> = InitModule::initialize(&mut cx);
    cx.keep_tensors(state_set(&model));
    let x = cx.tensor::<(Dyn<'s'>, Const<DIM>)>();
    let mut out = model.forward(x).retrieve();
    let t = Instant::now();
    cx.compile(GenericCompiler::default(), &mut out);
    let generic_ms = t.elapsed().as_secs_f64() * 1e3;
    let luminal_nodes = cx.graph.node_count();
    let kiln = KilnCompiler::builder()
        .threads(threads)
        .cache_dir(cache)
        .build();
    let t = Instant::now();
    kiln.try_compile(&mut cx, &mut out)
        .expect("kiln compiles the encoder");
    let bridge_ms = t.elapsed().as_secs_f64() * 1e3;
    let r = kiln.report().expect("report");
    Sample {
        generic_ms,
        bridge_ms,
        kiln_ms: r.compile_ms,
        kernels_total: r.kernels_total,
        kernels_unique: r.kernels_unique,
        invocations: r.compiler_invocations,
        cache_hits: r.cache_hits,
        luminal_nodes,
    }
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn min(v: &[f64]) -> f64 {
    v.iter().copied().fold(f64::INFINITY, f64::min)
}

fn measure(layers: usize, threads: usize, repeat: usize) -> Value {
    let run = |cache: &Path| match layers {
        1 => compile::<1>(threads, cache),
        2 => compile::<2>(threads, cache),
        4 => compile::<4>(threads, cache),
        8 => compile::<8>(threads, cache),
        16 => compile::<16>(threads, cache),
        32 => compile::<32>(threads, cache),
        64 => compile::<64>(threads, cache),
        n => panic!("unsupported layer count {n} (1, 2, 4, 8, 16, 32 or 64)"),
    };
    let (mut cold, mut warm) = (Vec::new(), Vec::new());
    for _ in 0..repeat {
        let dir = tempfile::tempdir().expect("temp dir");
        cold.push(run(dir.path()));
        warm.push(run(dir.path()));
    }
    let c = &cold[0];
    for s in cold.iter().chain(&warm) {
        assert_eq!(
            s.kernels_unique, c.kernels_unique,
            "same graph, same kernels"
        );
    }
    let f = |v: &[Sample], g: fn(&Sample) -> f64| v.iter().map(g).collect::<Vec<f64>>();
    let cold_bridge = f(&cold, |s| s.bridge_ms);
    let warm_bridge = f(&warm, |s| s.bridge_ms);
    let cold_kiln = f(&cold, |s| s.kiln_ms);
    let warm_kiln = f(&warm, |s| s.kiln_ms);
    let generic = f(&cold, |s| s.generic_ms);
    let row = json!({
        "layers": layers,
        "luminal_nodes": c.luminal_nodes,
        "kernels_total": c.kernels_total,
        "kernels_unique": c.kernels_unique,
        "compiler_invocations_cold": c.invocations,
        "cache_hits_warm": warm[0].cache_hits,
        "cold_bridge_ms": {"median": median(cold_bridge.clone()), "min": min(&cold_bridge)},
        "cold_kiln_compile_ms": {"median": median(cold_kiln.clone()), "min": min(&cold_kiln)},
        "warm_bridge_ms": {"median": median(warm_bridge.clone()), "min": min(&warm_bridge)},
        "warm_kiln_compile_ms": {"median": median(warm_kiln.clone()), "min": min(&warm_kiln)},
        "luminal_generic_compiler_ms": {"median": median(generic.clone()), "min": min(&generic)},
    });
    println!(
        "layers {layers:>2}: luminal nodes {:>5} | kernels {:>4} total, {:>2} unique, {:>2} \
         compiler invocations | cold: bridge {:>6.0} ms (kiln compile {:>6.0}) | warm: bridge \
         {:>5.0} ms (kiln compile {:>4.0}) | luminal GenericCompiler {:>6.0} ms   (medians of {repeat})",
        c.luminal_nodes,
        c.kernels_total,
        c.kernels_unique,
        c.invocations,
        row["cold_bridge_ms"]["median"].as_f64().unwrap(),
        row["cold_kiln_compile_ms"]["median"].as_f64().unwrap(),
        row["warm_bridge_ms"]["median"].as_f64().unwrap(),
        row["warm_kiln_compile_ms"]["median"].as_f64().unwrap(),
        row["luminal_generic_compiler_ms"]["median"].as_f64().unwrap(),
    );
    row
}

fn plot(doc: &Value, path: &Path) -> Result<(), Box<dyn std::error::Error>> {
    use kiln_plot::plotters::prelude::*;
    use kiln_plot::{chart, legend, line_with_dots, two_panels, Axes};
    let rows = doc["depths"].as_array().cloned().unwrap_or_default();
    let get = |r: &Value, k: &str| r[k]["median"].as_f64().unwrap_or(0.0);
    let layers = |r: &Value| r["layers"].as_f64().unwrap_or(0.0);
    let max_layers = rows
        .iter()
        .filter_map(|r| r["layers"].as_f64())
        .fold(1.0, f64::max);
    let max_ms = rows
        .iter()
        .flat_map(|r| {
            [
                get(r, "cold_bridge_ms"),
                get(r, "luminal_generic_compiler_ms"),
            ]
        })
        .fold(1.0, f64::max);
    let (root, left, right) = two_panels(path)?;
    let caption = format!(
        "luminal TransformerEncoder through kiln ({} threads): compile ms",
        doc["threads"]
    );
    let mut ch = chart(
        &left,
        Axes {
            caption: &caption,
            font: 16,
            x: 0.0..max_layers * 1.05,
            y: 0.0..max_ms * 1.1,
            x_desc: "layers",
            y_desc: "ms",
            y_label_width: 55,
        },
    )?;
    let series = [
        (
            "kiln, cold cache (translate+compile+load)",
            "cold_bridge_ms",
            BLUE,
        ),
        ("kiln, warm cache", "warm_bridge_ms", GREEN),
        (
            "luminal GenericCompiler (before kiln)",
            "luminal_generic_compiler_ms",
            RED,
        ),
    ];
    for (label, key, color) in series {
        let pts: Vec<(f64, f64)> = rows.iter().map(|r| (layers(r), get(r, key))).collect();
        line_with_dots(&mut ch, &pts, color, label)?;
    }
    legend(&mut ch, SeriesLabelPosition::UpperLeft)?;

    let max_k = rows
        .iter()
        .filter_map(|r| r["kernels_total"].as_f64())
        .fold(1.0, f64::max);
    let mut ch = chart(
        &right,
        Axes {
            caption: "kernel launches vs distinct kernels",
            font: 16,
            x: 0.0..max_layers * 1.05,
            y: 0.0..max_k * 1.1,
            x_desc: "layers",
            y_desc: "kernels",
            y_label_width: 55,
        },
    )?;
    for (label, key, color) in [
        ("launches", "kernels_total", BLACK),
        ("unique (compiled)", "kernels_unique", BLUE),
    ] {
        let pts: Vec<(f64, f64)> = rows
            .iter()
            .map(|r| (layers(r), r[key].as_f64().unwrap_or(0.0)))
            .collect();
        line_with_dots(&mut ch, &pts, color, label)?;
    }
    legend(&mut ch, SeriesLabelPosition::UpperLeft)?;
    root.present()?;
    Ok(())
}

fn main() {
    let mut layers = vec![2, 8, 32];
    let mut threads = kiln_compile::default_threads();
    let mut repeat = 3;
    // `cargo bench` runs in the crate's folder: default to the workspace's (ignored) bench-out.
    let mut out = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../bench-out");
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        let mut value = || args.next().unwrap_or_else(|| panic!("{a} needs a value"));
        match a.as_str() {
            "--layers" => {
                layers = value()
                    .split(',')
                    .map(|n| n.parse().expect("--layers 2,8,32"))
                    .collect()
            }
            "--threads" => threads = value().parse().expect("--threads N"),
            "--repeat" => repeat = value().parse::<usize>().expect("--repeat R").max(1),
            "--out" => out = value().into(),
            "--bench" => {} // what `cargo bench` passes
            other => panic!("unknown argument {other}"),
        }
    }
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    println!(
        "luminal TransformerEncoder<{DIM}, {FF}, {HEADS}, L> through kiln (CPU backend), \
         {threads} compile threads, {cores} cores, {repeat} repeats"
    );
    let depths: Vec<Value> = layers
        .iter()
        .map(|&l| measure(l, threads, repeat))
        .collect();
    let doc = json!({
        "bench": "luminal_encoder_compile",
        "model": format!("luminal nn::TransformerEncoder<{DIM}, {FF}, {HEADS}, L>"),
        "threads": threads,
        "cores": cores,
        "repeat": repeat,
        "depths": depths,
    });
    std::fs::create_dir_all(&out).expect("create the output dir");
    let json_path = out.join("luminal_encoder.json");
    std::fs::write(&json_path, serde_json::to_vec_pretty(&doc).unwrap()).expect("write JSON");
    let svg_path = out.join("luminal_encoder.svg");
    plot(&doc, &svg_path).expect("plot");
    println!("wrote {} and {}", json_path.display(), svg_path.display());
}
