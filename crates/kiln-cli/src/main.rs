//! `kiln`: compile and run neural-network graphs, fast. A thin layer over the library crates.

mod bench;
mod cmd_cache;
mod cmd_compile;
mod cmd_run;
mod progress;

use clap::{Args, Parser, Subcommand};
use kiln_backends::{BackendKind, BackendOptions};
use kiln_runtime::Target;
use std::path::PathBuf;

#[derive(Parser)]
#[command(
    name = "kiln",
    version,
    about = "A parallel, cached, deterministic graph compiler and runtime for LLMs (Qwen family)"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Generate text with a model (a preset with random weights, or a checkpoint folder).
    Run(cmd_run::RunArgs),
    /// Compile a model's kernels and print the compile report.
    Compile(cmd_compile::CompileArgs),
    /// Benchmarks that write JSON and a plot.
    #[command(subcommand)]
    Bench(bench::BenchCommand),
    /// Inspect or empty the kernel cache.
    #[command(subcommand)]
    Cache(cmd_cache::CacheCommand),
}

/// Options shared by every command that compiles.
#[derive(Args, Clone, Debug)]
pub struct CompileFlags {
    /// Model: a preset (qwen3-0.6b, qwen3-1.7b, qwen3-4b, qwen3-8b, qwen2.5-0.5b, qwen2.5-1.5b,
    /// qwen2.5-7b) or a Hugging Face checkpoint folder.
    #[arg(long)]
    pub model: String,
    /// Compile threads (1 = sequential). Default: the number of cores.
    #[arg(long, alias = "parallel-threads", env = "KILN_COMPILE_THREADS", value_parser = clap::value_parser!(u32).range(1..))]
    pub threads: Option<u32>,
    /// Where kernels run: cpu (system C compiler), cuda (NVRTC, NVIDIA GPU) or wgpu (WGSL on
    /// Vulkan, Metal or DX12; pick the adapter with KILN_WGPU_ADAPTER and WGPU_BACKEND).
    #[arg(long, value_enum, default_value_t = BackendKind::Cpu)]
    pub backend: BackendKind,
    /// Bypass the kernel cache.
    #[arg(long)]
    pub no_cache: bool,
    /// Write a Chrome/Perfetto trace of the compile to FILE.
    #[arg(long, value_name = "FILE")]
    pub trace: Option<PathBuf>,
}

impl CompileFlags {
    pub fn threads(&self) -> usize {
        self.threads.map_or_else(
            || std::thread::available_parallelism().map_or(1, |n| n.get()),
            |t| t as usize,
        )
    }

    /// Opens the backend: the one place the CLI turns `--backend` into a target.
    pub fn open(&self, arch: Option<&str>, compile_only: bool) -> anyhow::Result<Box<dyn Target>> {
        let opts = BackendOptions {
            run_threads: self.threads(),
            arch: arch.map(String::from),
            compile_only,
            driver_cache: driver_cache(self.no_cache),
        };
        Ok(kiln_backends::open(self.backend, &opts)?)
    }
}

/// The directory of the wgpu driver's shader cache: inside kiln's kernel cache, unless
/// `--no-cache` (then the driver's default).
pub fn driver_cache(no_cache: bool) -> Option<PathBuf> {
    if no_cache {
        return None;
    }
    kiln_compile::KernelCache::open(kiln_compile::KernelCache::default_dir())
        .ok()
        .map(|c| c.driver_dir("wgpu"))
}

/// An error and its causes, each cause shown unless the message already says it.
fn error_chain(e: &anyhow::Error) -> String {
    let mut out = e.to_string();
    for cause in e.chain().skip(1) {
        let c = cause.to_string();
        if !out.contains(&c) {
            out.push_str(": ");
            out.push_str(&c);
        }
    }
    out
}

fn main() {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "warn".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Run(a) => cmd_run::run(a),
        Command::Compile(a) => cmd_compile::run(a),
        Command::Bench(b) => bench::run(b),
        Command::Cache(c) => cmd_cache::run(c),
    };
    if let Err(e) = result {
        eprintln!("error: {}", error_chain(&e));
        std::process::exit(1);
    }
}
