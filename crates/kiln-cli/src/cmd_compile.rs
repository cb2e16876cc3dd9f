use crate::local_cache;
use crate::progress::Progress;
use crate::report::print_report;
use crate::CompileFlags;
use anyhow::Context;
use clap::Args;
use kiln_backends::{BackendKind, ShaderFormat};
use kiln_compile::{CompileOptions, CompileReport};
use kiln_models::{build_graph, GraphOptions};
use std::path::PathBuf;

#[derive(Args, Clone, Debug)]
pub struct CompileArgs {
    #[command(flatten)]
    pub flags: CompileFlags,
    /// Target GPU architecture for `--backend cuda` (e.g. sm_90); default: the device's.
    #[arg(long)]
    pub arch: Option<String>,
    /// Override the number of decoder layers (to study how compile cost grows with depth),
    /// 1 to 10000.
    #[arg(long, value_parser = crate::bounds::layers)]
    pub layers: Option<usize>,
    /// Compile every kernel launch separately (measures what dedupe saves).
    #[arg(long)]
    pub no_dedupe: bool,
    /// One compiler invocation per kernel (measures what batching saves).
    #[arg(long)]
    pub no_batch: bool,
    /// Keep reductions and matmuls in kernels of their own (measures what fusion saves).
    #[arg(long)]
    pub no_fusion: bool,
    /// Limit the memory of compiler invocations in flight, in MB: at most MB / (the backend's
    /// estimate of one invocation) run at once, whatever --threads is; NVRTC, which compiles
    /// inside kiln, also at most one per core [default: half of the memory available].
    #[arg(long, value_name = "MB", value_parser = crate::bounds::memory_mb)]
    pub memory_budget_mb: Option<u64>,
    /// Print exactly one JSON object (the compile report) on stdout.
    #[arg(long)]
    pub json: bool,
    /// Compile only shard I of N (N at most 65536) of the compile units into the caches (a
    /// deterministic 1/N, balanced by estimated cost): N machines running 1/N .. N/N with one
    /// --remote-cache build every unit once.
    #[arg(long, value_name = "I/N")]
    pub shard: Option<kiln_compile::Shard>,
    /// With `--backend wgpu`: also write naga's Metal Shading Language (`msl`) or SPIR-V (`spv`)
    /// of every distinct kernel into DIR, one file per kernel.
    #[arg(long, num_args = 2, value_names = ["FORMAT", "DIR"])]
    pub emit: Option<Vec<String>>,
}

/// `--emit FORMAT DIR`, checked.
fn emit_args(a: &CompileArgs) -> anyhow::Result<Option<(ShaderFormat, PathBuf)>> {
    let Some(v) = &a.emit else { return Ok(None) };
    anyhow::ensure!(
        a.flags.backend == BackendKind::Wgpu,
        "--emit applies to --backend wgpu only"
    );
    let format = match v[0].as_str() {
        "msl" => ShaderFormat::Msl,
        "spv" => ShaderFormat::Spv,
        other => anyhow::bail!("--emit {other}: expected msl or spv"),
    };
    Ok(Some((format, PathBuf::from(&v[1]))))
}

/// Compiles the model's graph and returns the report.
pub fn compile_model(a: &CompileArgs, progress: &Progress) -> anyhow::Result<CompileReport> {
    let source = crate::model_source(&a.flags.model)?;
    let mut config = source.config()?;
    if let Some(l) = a.layers {
        config.num_layers = l;
    }
    let emit = emit_args(a)?;
    let target = a.flags.open(a.arch.as_deref(), true)?;
    if a.flags.weight_dtype.is_some() {
        // --weight-dtype decides every weight, a GGUF file's blocks included.
        config.file_quant.clear();
    }
    let graph = build_graph(
        &config,
        GraphOptions {
            weight_dtype: a.flags.weight_dtype,
            kv_dtype: a.flags.kv_dtype,
            ..Default::default()
        },
    )?;
    let remote = crate::remote::open(&a.flags)?;
    let opts = CompileOptions {
        threads: a.flags.threads(),
        cache: local_cache::open(a.flags.no_cache),
        dedupe: !a.no_dedupe,
        batching: !a.no_batch,
        fusion: !a.no_fusion,
        memory_budget: a.memory_budget_mb.map(|m| m << 20),
        observer: Some(progress),
        remote: remote.as_ref(),
        shard: a.shard,
    };
    let report = target
        .compile(&graph, &opts)
        .with_context(|| format!("compiling {} for {}", source.name(), target.name()))?;
    if let Some((format, dir)) = emit {
        let paths = kiln_backends::emit_shaders(&graph, &opts, format, &dir)
            .with_context(|| format!("writing {format:?} to {}", dir.display()))?;
        eprintln!(
            "wrote {} {} files to {}",
            paths.len(),
            format.extension(),
            dir.display()
        );
    }
    Ok(report)
}

pub fn run(a: CompileArgs) -> anyhow::Result<()> {
    if let Some(p) = &a.flags.trace {
        crate::output_path::check_writable("--trace", p)?;
    }
    let progress = Progress::new(a.flags.trace.is_some());
    let report = compile_model(&a, &progress);
    progress.finish(a.flags.trace.as_deref())?;
    let report = report?;
    if a.json {
        crate::out::json(&report)?;
    } else {
        print_report(&report);
    }
    Ok(())
}
