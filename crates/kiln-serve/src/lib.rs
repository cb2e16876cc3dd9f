//! `kiln serve`: an OpenAI-compatible HTTP server over one compiled model, with continuous
//! batching.
//!
//! ```text
//!  clients ──HTTP──► http (axum, tokio threads)          engine thread (owns the model)
//!                    parse, check, tokenize ──submit──►  driver: scheduler.plan() ─► Step
//!                    bounded queue (429)                         engine.step(&Step) ─► tokens
//!                    JSON or SSE ◄──── SeqEvent per token ─────  text, stop strings, finish
//! ```
//!
//! - [`api`]: the OpenAI request and response types, checks, error bodies.
//! - [`http`]: routes, API key, body limit, streaming, `/health`, `/metrics`.
//! - [`scheduler`]: the batching decisions (admission, prefill chunks, decodes, finishes,
//!   KV slots), pure and unit-tested; [`step_times`]: the engine's step times by rows, which
//!   bound the prompt tokens a step reads beside decodes.
//! - [`engine`]: executes the scheduler's steps on the model ([`engine::Engine`] is the seam
//!   that batched execution will replace).
//! - [`driver`]: the engine thread's loop between the two, and the handle to it.
//! - [`text`]: output text with stop strings; [`metrics`]: Prometheus counters;
//!   [`client`]: a small blocking streaming client (benchmark and tests).
//!
//! Start-up binds the socket first, then loads (compiles) the model on the engine thread:
//! `/health` answers 503 until the model is ready. SIGTERM or SIGINT stops accepting
//! connections, lets running requests finish for the grace period, cancels the rest, and
//! returns (the process exits 0); a second signal exits at once.

pub mod api;
pub mod client;
pub mod driver;
pub mod engine;
pub mod http;
pub mod metrics;
pub mod scheduler;
pub mod step_times;
pub mod text;

use anyhow::Context;
use kiln_models::{BatchedModel, QwenConfig, Tokenizer};
use scheduler::{Scheduler, SchedulerConfig};
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::AtomicU64;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// The largest context a request gets by default (`--ctx`), if the model's is larger: each
/// running sequence may hold a KV cache this long.
pub const DEFAULT_CTX: usize = 4096;

/// How the server runs (the `kiln serve` flags).
#[derive(Clone, Debug)]
pub struct ServeConfig {
    pub host: String,
    /// 0: any free port (the address is printed).
    pub port: u16,
    /// Sequences running at once (and KV-cache slots).
    pub max_batch: usize,
    /// Requests waiting for a slot before new ones are refused with 429 (at least 1: a request
    /// waits until the next step admits it).
    pub max_queue: usize,
    /// Positions one request may fill, prompt and output (None: the model's context, at most
    /// [`DEFAULT_CTX`]).
    pub ctx: Option<usize>,
    /// Prompt tokens prefilled per step when no sequence decodes.
    pub prefill_chunk: usize,
    /// Prompt tokens prefilled per step at least when more sequences decode than read their
    /// prompt (`--prefill-while-decoding`).
    pub prefill_while_decoding: usize,
    /// A step that prefills beside decodes is expected to take at most this many times as
    /// long as the decodes alone (`--prefill-stretch`).
    pub prefill_stretch: f64,
    pub api_key: Option<String>,
    pub max_body_bytes: usize,
    /// How long running requests may take to finish after SIGTERM/SIGINT.
    pub shutdown_grace: Duration,
}

/// The model being served, as far as the HTTP side needs it before it is loaded.
pub struct ServedModel {
    /// The id clients name in `model`.
    pub name: String,
    pub config: QwenConfig,
    pub tokenizer: Option<Tokenizer>,
}

/// Why the server stopped.
enum Stop {
    Signal(&'static str, i32),
    Fatal(String),
}

/// The KV cache slots the model is loaded with: one per sequence the server runs at once
/// (`--max-batch`), each of `positions` positions (`--ctx`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SlotPool {
    pub slots: usize,
    pub positions: usize,
}

/// Serves until SIGTERM/SIGINT (then `Ok`) or until the engine fails (an error). `load`
/// compiles and loads the batched model for the pool it is given; it runs on the engine
/// thread once the socket is bound.
pub fn serve(
    cfg: ServeConfig,
    served: ServedModel,
    load: impl FnOnce(SlotPool) -> anyhow::Result<BatchedModel> + Send + 'static,
) -> anyhow::Result<()> {
    let max_pos = served.config.max_position_embeddings;
    let ctx = cfg.ctx.unwrap_or(max_pos.min(DEFAULT_CTX));
    anyhow::ensure!(
        (2..=max_pos).contains(&ctx),
        "--ctx {ctx}: must be between 2 and the model's context (max_position_embeddings = {max_pos})"
    );
    anyhow::ensure!(cfg.max_batch >= 1, "--max-batch must be at least 1");
    anyhow::ensure!(cfg.max_queue >= 1, "--max-queue must be at least 1");
    anyhow::ensure!(cfg.prefill_chunk >= 1, "--prefill-chunk must be at least 1");
    anyhow::ensure!(
        cfg.prefill_while_decoding >= 1,
        "--prefill-while-decoding must be at least 1"
    );
    anyhow::ensure!(
        cfg.prefill_stretch.is_finite() && cfg.prefill_stretch >= 1.0,
        "--prefill-stretch must be a number >= 1"
    );
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_name("kiln-http")
        .build()
        .context("starting the HTTP runtime")?;
    runtime.block_on(run(cfg, served, ctx, load))
}

async fn run(
    cfg: ServeConfig,
    served: ServedModel,
    ctx: usize,
    load: impl FnOnce(SlotPool) -> anyhow::Result<BatchedModel> + Send + 'static,
) -> anyhow::Result<()> {
    use tokio::signal::unix::{signal, SignalKind};
    // Signals are ours from now on (also while the model compiles).
    let mut sigterm = signal(SignalKind::terminate()).context("handling SIGTERM")?;
    let mut sigint = signal(SignalKind::interrupt()).context("handling SIGINT")?;
    let addr = format!("{}:{}", cfg.host, cfg.port);
    let listener = tokio::net::TcpListener::bind(&addr)
        .await
        .with_context(|| format!("cannot listen on {addr}"))?;
    let local = listener.local_addr()?;

    let metrics = Arc::new(metrics::Metrics::new());
    let tokenizer = served.tokenizer.map(Arc::new);
    let mut stop_ids = served.config.eos_token_ids.clone();
    if let Some(t) = &tokenizer {
        stop_ids.extend(t.token_id(kiln_models::tokenizer::IM_END));
    }
    let scheduler = Scheduler::new(SchedulerConfig {
        max_batch: cfg.max_batch,
        kv_slots: cfg.max_batch,
        slot_positions: ctx,
        prefill_chunk: cfg.prefill_chunk,
        prefill_while_decoding: cfg.prefill_while_decoding,
        prefill_stretch: cfg.prefill_stretch,
    });
    let (handle, make_driver) =
        driver::channel(scheduler, tokenizer.clone(), metrics.clone(), cfg.max_queue);
    let status = handle.status();
    let started = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let state = Arc::new(http::AppState {
        engine: handle,
        metrics,
        tokenizer,
        model_name: served.name.clone(),
        vocab_size: served.config.vocab_size,
        ctx,
        stop_ids,
        api_key: cfg.api_key.clone(),
        max_body_bytes: cfg.max_body_bytes,
        started,
        seeds: AtomicU64::new(started ^ 0x5DEE_CE66_D1CE_4E5B),
    });
    eprintln!(
        "kiln serve: listening on http://{local} (model '{}', up to {} sequences of {ctx} \
         positions); loading the model, GET /health answers 200 once it is ready",
        served.name, cfg.max_batch
    );

    // The engine thread: load, then serve steps until the process ends.
    let (fatal_tx, mut fatal_rx) = tokio::sync::watch::channel(None::<String>);
    let slots = cfg.max_batch;
    std::thread::Builder::new()
        .name("kiln-engine".into())
        .spawn(move || {
            let t = Instant::now();
            let pool = SlotPool {
                slots,
                positions: ctx,
            };
            let loaded = catch_unwind(AssertUnwindSafe(|| load(pool))).unwrap_or_else(|p| {
                Err(anyhow::anyhow!(
                    "loading the model panicked: {}",
                    engine::panic_message(&p)
                ))
            });
            let model = match loaded {
                Ok(m) => m,
                Err(e) => {
                    status.set(driver::EngineState::Failed);
                    let _ = fatal_tx.send(Some(format!("{e:#}")));
                    return;
                }
            };
            tracing::info!(
                "model ready in {:.1} s ({} kernels, {} distinct)",
                t.elapsed().as_secs_f64(),
                model.report.kernels_total,
                model.report.kernels_unique
            );
            if model.slots() != slots {
                status.set(driver::EngineState::Failed);
                let _ = fatal_tx.send(Some(format!(
                    "the model was loaded with {} KV cache slots, the server needs {slots}",
                    model.slots()
                )));
                return;
            }
            let driver = make_driver(Box::new(engine::BatchedEngine::new(model)));
            status.set_ready();
            if let Err(p) = catch_unwind(AssertUnwindSafe(|| driver.run())) {
                status.set(driver::EngineState::Failed);
                let _ = fatal_tx.send(Some(format!(
                    "the engine thread panicked: {}",
                    engine::panic_message(&p)
                )));
            }
        })
        .context("starting the engine thread")?;

    let (stopping_tx, mut stopping_rx) = tokio::sync::watch::channel(None::<String>);
    let grace = cfg.shutdown_grace;
    let shutdown_state = state.clone();
    let shutdown = async move {
        let why = tokio::select! {
            _ = sigterm.recv() => Stop::Signal("SIGTERM", 15),
            _ = sigint.recv() => Stop::Signal("SIGINT", 2),
            f = fatal_rx.wait_for(|f| f.is_some()) => {
                Stop::Fatal(match f {
                    Ok(f) => f.clone().unwrap_or_default(),
                    Err(_) => "the engine thread ended unexpectedly".into(),
                })
            }
        };
        let engine = &shutdown_state.engine;
        match &why {
            Stop::Signal(name, number) => {
                eprintln!(
                    "kiln serve: {name}: no new connections; running requests have {:.1} s to \
                     finish (a second signal exits at once)",
                    grace.as_secs_f64()
                );
                if engine.state() == driver::EngineState::Loading {
                    // Stop the compilers; the load then fails, which is expected now.
                    kiln_compile::interrupt(*number);
                }
                engine.drain(grace);
                tokio::spawn(async move {
                    tokio::select! {
                        _ = sigterm.recv() => std::process::exit(128 + 15),
                        _ = sigint.recv() => std::process::exit(128 + 2),
                    }
                });
                let _ = stopping_tx.send(Some(String::new()));
            }
            Stop::Fatal(msg) => {
                engine.drain(Duration::ZERO);
                let _ = stopping_tx.send(Some(msg.clone()));
            }
        }
    };
    let server =
        axum::serve(listener, http::router(state.clone())).with_graceful_shutdown(shutdown);
    // Connections that stay open past the grace period (a client that stopped reading) do not
    // keep the process alive.
    let give_up = async {
        let _ = stopping_rx.wait_for(|s| s.is_some()).await;
        tokio::time::sleep(grace + Duration::from_secs(5)).await;
    };
    tokio::select! {
        r = server => r.context("serving HTTP")?,
        _ = give_up => tracing::warn!("connections still open after the grace period: closing them"),
    }
    let fatal = stopping_rx.borrow().clone().filter(|m| !m.is_empty());
    match fatal {
        Some(msg) => Err(anyhow::anyhow!(msg)),
        None => {
            eprintln!("kiln serve: stopped");
            Ok(())
        }
    }
}
