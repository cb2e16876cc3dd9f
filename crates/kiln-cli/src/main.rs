//! `kiln`: compile and run neural-network graphs, fast. A thin layer over the library crates.

mod bench;
mod bounds;
mod cmd_cache;
mod cmd_compile;
mod cmd_run;
mod cmd_serve;
mod local_cache;
mod out;
mod output_path;
mod progress;
mod remote;
mod report;

use clap::{Args, Parser, Subcommand};
use kiln_backends::{BackendKind, BackendOptions};
use kiln_compile::Target;
use kiln_compile::MAX_THREADS;
use std::io::IsTerminal;
use std::path::PathBuf;
use std::time::Duration;

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
    /// Generate text with a model (a preset with random weights, a checkpoint folder or a GGUF
    /// file).
    Run(cmd_run::RunArgs),
    /// Compile a model's kernels and print the compile report.
    Compile(cmd_compile::CompileArgs),
    /// Serve a model over HTTP with the OpenAI API (completions, chat), batching requests.
    Serve(cmd_serve::ServeArgs),
    /// Benchmarks that write JSON and a plot.
    #[command(subcommand)]
    Bench(bench::BenchCommand),
    /// Inspect, check, empty or share (with a remote cache) the kernel cache.
    #[command(subcommand)]
    Cache(cmd_cache::CacheCommand),
}

/// Options shared by every command that compiles.
#[derive(Args, Clone, Debug)]
pub struct CompileFlags {
    /// Model: a preset (qwen3-0.6b, qwen3-1.7b, qwen3-4b, qwen3-8b, qwen2.5-0.5b, qwen2.5-1.5b,
    /// qwen2.5-7b), a Hugging Face checkpoint folder or a GGUF file (FILE.gguf: Qwen2/2.5/3 in
    /// F32, F16, BF16, Q8_0, Q4_0, Q4_1, Q5_0, Q5_1, Q4_K, Q5_K, Q6_K; Q8_0, Q4_0, Q4_K, Q5_K
    /// and Q6_K linear weights stay quantized in memory on every backend, the matmul kernels reading
    /// the blocks; the other types are decoded to f32 at load). A folder wins over a preset of the same name (with a note);
    /// preset:NAME is always the preset.
    #[arg(long)]
    pub model: String,
    /// Hold the matrix weights in this dtype: f32, bf16, or quantized at load with ggml's
    /// reference quantizer (q8_0, q4_0, q4_k, q5_k, q6_k: GGML blocks, read inside every backend's
    /// matmul kernels; the embedding table too, its gather dequantizing the rows it reads).
    /// Default: the model's own.
    #[arg(long, value_parser = parse_weight_dtype)]
    pub weight_dtype: Option<kiln_models::WeightDtype>,
    /// Hold the KV cache's keys and values in this dtype: f32, bf16 or f16 (rounded as they
    /// are written; attention computes in f32). Default: f16 where the matrix weights are
    /// quantized (a GGUF file's Q8_0/Q4_0/Q4_K/Q5_K/Q6_K blocks, --weight-dtype q*), f32
    /// otherwise.
    #[arg(long, value_parser = parse_kv_dtype)]
    pub kv_dtype: Option<kiln_models::KvDtype>,
    /// Compile threads, 1 to 1024 (1 = sequential). Default: the number of cores. Kernels run
    /// on at most one thread per core.
    #[arg(long, alias = "parallel-threads", env = "KILN_COMPILE_THREADS", value_parser = parse_threads)]
    pub threads: Option<usize>,
    /// Time limit of one compiler invocation, in seconds; past it the compiler (its whole
    /// process group) is killed and the compile fails naming the kernels. Applies to external
    /// compilers (the C compiler), not to NVRTC or wgpu (naga and the driver), which run inside
    /// kiln.
    #[arg(long, value_name = "SECS", env = "KILN_COMPILE_TIMEOUT", default_value_t = kiln_compile::DEFAULT_COMPILE_TIMEOUT.as_secs(), value_parser = bounds::compile_timeout)]
    pub compile_timeout: u64,
    /// Where kernels run: cpu (system C compiler), cuda (NVRTC, NVIDIA GPU) or wgpu (WGSL on
    /// Vulkan, Metal or DX12; pick the adapter with KILN_WGPU_ADAPTER and WGPU_BACKEND).
    #[arg(long, value_enum, default_value_t = BackendKind::Cpu)]
    pub backend: BackendKind,
    /// Bypass the kernel caches (local and remote).
    #[arg(long)]
    pub no_cache: bool,
    /// A cache shared by machines, behind the local one: redis://host:port/db,
    /// s3://bucket/prefix (AWS_* variables) or file:///shared/path.
    #[arg(
        long,
        env = "KILN_REMOTE_CACHE",
        value_name = "URL",
        hide_env_values = true
    )]
    pub remote_cache: Option<String>,
    /// Write a Chrome/Perfetto trace of the compile to FILE.
    #[arg(long, value_name = "FILE")]
    pub trace: Option<PathBuf>,
}

/// The model `--model` names; a folder that shadows a preset of the same name is used, with a
/// notice on stderr (see [`kiln_models::ModelSource::parse`]).
pub fn model_source(arg: &str) -> anyhow::Result<kiln_models::ModelSource> {
    let source = kiln_models::ModelSource::parse(arg)?;
    if let Some(notice) = source.shadowed_preset() {
        eprintln!("note: {notice}");
    }
    Ok(source)
}

/// A `--threads` value that is not a thread count kiln uses.
#[derive(Debug, thiserror::Error)]
pub enum ThreadsError {
    #[error("'{0}' is not a whole number")]
    NotANumber(String),
    #[error("kiln uses between 1 and {MAX_THREADS} compile threads, not {0} (more threads only cost start-up time)")]
    OutOfRange(usize),
}

/// A thread count between 1 and [`MAX_THREADS`], or an error that says so.
pub fn parse_threads(s: &str) -> Result<usize, ThreadsError> {
    let n: usize = s
        .trim()
        .parse()
        .map_err(|_| ThreadsError::NotANumber(s.to_string()))?;
    if n == 0 || n > MAX_THREADS {
        return Err(ThreadsError::OutOfRange(n));
    }
    Ok(n)
}

impl CompileFlags {
    pub fn threads(&self) -> usize {
        self.threads.unwrap_or_else(kiln_compile::cores)
    }

    /// Opens the backend: the one place the CLI turns `--backend` into a target. Kernels run on
    /// at most one thread per core: more would only share the cores and split each launch finer.
    pub fn open(&self, arch: Option<&str>, compile_only: bool) -> anyhow::Result<Box<dyn Target>> {
        let opts = BackendOptions {
            run_threads: self.threads().min(kiln_compile::cores()),
            arch: arch.map(String::from),
            compile_only,
            driver_cache: local_cache::driver_dir(self.no_cache),
            compile_timeout: self.compile_timeout(),
        };
        Ok(kiln_backends::open(self.backend, &opts)?)
    }

    pub fn compile_timeout(&self) -> Duration {
        Duration::from_secs(self.compile_timeout)
    }
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

/// Colour on stderr only for a terminal, and never with `NO_COLOR` set (no-color.org).
pub fn color() -> bool {
    std::io::stderr().is_terminal() && std::env::var_os("NO_COLOR").is_none_or(|v| v.is_empty())
}

/// SIGINT and SIGTERM: the first stops the compilers (their process groups are killed, their
/// folders removed, finished entries kept whole) and exits with 128 + the signal once the
/// compile has cleaned up (at once when none runs); a second exits at once.
fn handle_signals() {
    use signal_hook::consts::{SIGINT, SIGTERM};
    let mut signals = match signal_hook::iterator::Signals::new([SIGINT, SIGTERM]) {
        Ok(s) => s,
        Err(e) => {
            tracing::debug!("cannot handle SIGINT/SIGTERM: {e}");
            return;
        }
    };
    std::thread::spawn(move || {
        let mut first = true;
        for signal in signals.forever() {
            if !first {
                exit_interrupted(signal);
            }
            first = false;
            kiln_compile::interrupt(signal);
            std::thread::spawn(move || {
                kiln_compile::wait_until_no_compile_runs();
                exit_interrupted(signal)
            });
        }
    });
}

/// Exits with the shell's code for `signal` (130 for SIGINT, 143 for SIGTERM). Called by the
/// main thread and the signal thread alike; the first caller exits, any other waits for it.
fn exit_interrupted(signal: i32) -> ! {
    static EXITING: std::sync::Mutex<()> = std::sync::Mutex::new(());
    let _once = EXITING.lock();
    let name = match signal {
        signal_hook::consts::SIGINT => "SIGINT".to_string(),
        signal_hook::consts::SIGTERM => "SIGTERM".to_string(),
        s => format!("signal {s}"),
    };
    eprintln!("kiln: interrupted by {name}");
    out::json_error(&format!("interrupted by {name}"));
    std::process::exit(128 + signal)
}

/// Large allocations get their own mappings, returned to the system when freed. glibc's
/// default threshold grows with every such block freed (up to 32 MB), after which the weights'
/// tensors (a few MB each) come from the heap arenas of the threads that loaded them and stay
/// there once they are repacked and freed: a quantized model's peak memory then held both.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
fn fix_mmap_threshold() {
    // SAFETY: mallopt only sets an allocator parameter; called before any thread starts.
    unsafe { libc::mallopt(libc::M_MMAP_THRESHOLD, 1 << 20) };
}

#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
fn fix_mmap_threshold() {}

fn main() {
    fix_mmap_threshold();
    tracing_subscriber::fmt()
        .with_env_filter(
            // The server's one line per request is at info level.
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| "warn,kiln_serve=info".into()),
        )
        .with_ansi(color())
        .with_writer(std::io::stderr)
        .init();
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => {
            // A usage error of a `--json` command is still one JSON object on stdout.
            if e.use_stderr() && std::env::args().any(|a| a == "--json") {
                out::set_json(true);
                out::json_error(&e.kind().to_string());
            }
            e.exit()
        }
    };
    out::set_json(cli.command.json());
    if let Err(e) = out::check_open(cli.command.prints_on_stdout()) {
        eprintln!("error: {e}");
        std::process::exit(1);
    }
    // The server handles SIGINT/SIGTERM itself: it drains its requests and exits 0.
    if !matches!(cli.command, Command::Serve(_)) {
        handle_signals();
    }
    let result = match cli.command {
        Command::Run(a) => cmd_run::run(a),
        Command::Compile(a) => cmd_compile::run(a),
        Command::Serve(a) => cmd_serve::run(a),
        Command::Bench(b) => bench::run(b),
        Command::Cache(c) => cmd_cache::run(c),
    };
    if let Err(e) = result {
        if let Some(e) = e.chain().find_map(|c| c.downcast_ref::<out::StdoutError>()) {
            out::exit_for(e);
        }
        if let Some(signal) = kiln_compile::interrupted() {
            exit_interrupted(signal);
        }
        let message = error_chain(&e);
        if e.downcast_ref::<out::AlreadyReported>().is_none() {
            out::json_error(&message);
        }
        eprintln!("error: {message}");
        std::process::exit(1);
    }
}

impl Command {
    /// Whether the command prints its result as one JSON object on stdout.
    fn json(&self) -> bool {
        match self {
            Command::Run(a) => a.json,
            Command::Compile(a) => a.json,
            Command::Bench(_) | Command::Serve(_) => false,
            Command::Cache(c) => c.json(),
        }
    }

    /// Whether the command prints anything on stdout (the others write stderr and files only).
    fn prints_on_stdout(&self) -> bool {
        match self {
            Command::Run(_) | Command::Cache(_) => true,
            Command::Compile(a) => a.json,
            // The server logs on stderr; its answers go over HTTP.
            Command::Bench(_) | Command::Serve(_) => false,
        }
    }
}

fn parse_kv_dtype(s: &str) -> Result<kiln_models::KvDtype, String> {
    kiln_models::KvDtype::parse(s).ok_or_else(|| {
        let names: Vec<&str> = kiln_models::KvDtype::ALL.iter().map(|k| k.name()).collect();
        format!("expected one of {}", names.join(", "))
    })
}

fn parse_weight_dtype(s: &str) -> Result<kiln_models::WeightDtype, String> {
    kiln_models::WeightDtype::parse(s).ok_or_else(|| {
        let names: Vec<&str> = kiln_models::WeightDtype::ALL
            .iter()
            .map(|w| w.name())
            .collect();
        format!("expected one of {}", names.join(", "))
    })
}
