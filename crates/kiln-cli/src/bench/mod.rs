//! `kiln bench compile|decode|serve`: reproducible numbers with one command, as JSON and an SVG
//! plot.
//!
//! | module | what |
//! | --- | --- |
//! | [`compile`] | compile time against threads, each configuration in child processes (its own peak RSS, its own fresh cache), the machine's ceiling, the warm cache |
//! | [`sharing`] | with `--remote-cache`: a cold machine with a warm remote, sharded precompiles |
//! | [`decode`] | prefill and decode speed against the machine's limits |
//! | [`serve`] | `kiln serve` (a child process, or any OpenAI-compatible server at `--url`) under N concurrent streams, driven over HTTP |
//! | [`machine`] | what the machine is and can do: CPU model, memory bandwidth |
//! | [`plot`] | the SVG plots |

mod compile;
mod decode;
mod machine;
mod plot;
mod serve;
mod sharing;

use anyhow::Context;
use clap::{Args, Subcommand};
use kiln_backends::BackendKind;
use std::path::{Path, PathBuf};

#[derive(Subcommand)]
pub enum BenchCommand {
    /// Compile time vs threads (cold cache), the machine's ceiling, warm cache, peak RSS.
    Compile(CompileBench),
    /// Prefill time, decode tokens/s and the memory-bandwidth bound.
    Decode(DecodeBench),
    /// `kiln serve` (or the server at `--url`) under N concurrent streams: aggregate
    /// tokens/s, time to first token, inter-token latency.
    Serve(ServeBench),
}

#[derive(Args)]
pub struct CompileBench {
    /// A preset, a checkpoint folder or a GGUF file (compiled by `kiln compile` children).
    #[arg(long)]
    model: String,
    /// Thread counts to measure (each 1 to 1024).
    #[arg(long, value_delimiter = ',', default_value = "1,2,4,8,16", value_parser = crate::parse_threads)]
    threads: Vec<usize>,
    /// Runs per configuration (median and min are reported), 1 to 1000.
    #[arg(long, default_value_t = 3, value_parser = crate::bounds::repeat)]
    repeat: usize,
    /// cpu, cuda or wgpu (each compile is `kiln compile --backend B`; cuda with --arch needs
    /// no GPU).
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
    /// Folder for the results (compile.json and compile.svg); made if missing.
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
    /// A preset, a checkpoint folder or a GGUF file.
    #[arg(long)]
    model: String,
    /// Prompt tokens of the prefill measured (token ids, not text).
    #[arg(long, default_value_t = 128, value_parser = crate::bounds::prompt_len)]
    prompt_len: usize,
    /// Tokens decoded after the prompt (greedy).
    #[arg(long, default_value_t = 32, value_parser = crate::bounds::new_tokens)]
    tokens: usize,
    /// Compile and run threads (1 to 1024; kernels run on at most one per core).
    #[arg(long, value_parser = crate::parse_threads)]
    threads: Option<usize>,
    /// cpu, cuda (GPU 0) or wgpu (the bound is then the device's copy bandwidth).
    #[arg(long, value_enum, default_value_t = BackendKind::Cpu)]
    backend: BackendKind,
    /// Linear weights in f32, bf16, or quantized at load (q8_0, q4_0, q4_k, q5_k, q6_k; see
    /// `kiln run --help`). Default: the model's own (a GGUF file's Q8_0/Q4_0/Q4_K/Q5_K/Q6_K stay
    /// quantized).
    #[arg(long, value_parser = crate::parse_weight_dtype)]
    weight_dtype: Option<kiln_models::WeightDtype>,
    /// KV cache dtype: f32, bf16 or f16 (see `kiln run --help`). Default: f16 for quantized
    /// weights, f32 otherwise.
    #[arg(long, value_parser = crate::parse_kv_dtype)]
    kv_dtype: Option<kiln_models::KvDtype>,
    /// Folder for the results (decode.json and decode.svg); made if missing.
    #[arg(long, default_value = "bench-out")]
    out: PathBuf,
}

#[derive(Args)]
pub struct ServeBench {
    /// A preset, a checkpoint folder or a GGUF file. With `--url`: the model the running
    /// server serves (its vocabulary bounds the prompt ids; the name sent in requests is the
    /// one the server lists at /v1/models).
    #[arg(long)]
    pub model: String,
    /// Drive the OpenAI-compatible server already running at this URL (e.g.
    /// `http://127.0.0.1:8081`: another `kiln serve`, or llama.cpp's `llama-server -np N -cb`
    /// as a benchmark anchor) instead of starting a `kiln serve` child. It must accept prompts
    /// as token ids, `ignore_eos` and streaming; `--threads`/`--backend` are then its own.
    #[arg(long, value_name = "URL", conflicts_with_all = ["threads", "backend"])]
    pub url: Option<String>,
    /// Concurrent streams to measure, one round each.
    #[arg(long, value_delimiter = ',', default_value = "1,2,4,8,16", value_parser = clap::value_parser!(u64).range(1..=1024))]
    pub streams: Vec<u64>,
    /// Prompt tokens of each stream.
    #[arg(long, default_value_t = 128, value_parser = crate::bounds::prompt_len)]
    pub prompt_len: usize,
    /// Tokens each stream generates.
    #[arg(long, default_value_t = 64, value_parser = crate::bounds::new_tokens)]
    pub tokens: usize,
    /// Compile and run threads of the server (1 to 1024; kernels run on at most one per core).
    #[arg(long, value_parser = crate::parse_threads)]
    pub threads: Option<usize>,
    /// Where the server's kernels run: cpu, cuda (GPU 0) or wgpu.
    #[arg(long, value_enum, default_value_t = BackendKind::Cpu)]
    pub backend: BackendKind,
    /// Folder for the results (serve.json and serve.svg; serve.log, the log of the `kiln serve`
    /// child); made if missing.
    #[arg(long, default_value = "bench-out")]
    pub out: PathBuf,
}

pub fn run(b: BenchCommand) -> anyhow::Result<()> {
    match b {
        BenchCommand::Compile(a) => compile::run(a),
        BenchCommand::Decode(a) => decode::run(a),
        BenchCommand::Serve(a) => serve::run(a),
    }
}

/// `--out DIR`: made if missing, and checked to take files, before any benchmark runs; every
/// error names it.
fn out_dir(dir: &Path) -> anyhow::Result<()> {
    std::fs::create_dir_all(dir)
        .with_context(|| format!("--out {}: cannot create", dir.display()))?;
    crate::output_path::check_writable("--out", &dir.join("bench.json"))
}

/// Writes `doc` to `path` as pretty JSON; an error names the file.
fn write_json(path: &Path, doc: &serde_json::Value) -> anyhow::Result<()> {
    std::fs::write(path, serde_json::to_vec_pretty(doc)?)
        .with_context(|| format!("writing {}", path.display()))
}

/// The median (the upper one of an even count); sorts `v`.
fn median(v: &mut [f64]) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}
