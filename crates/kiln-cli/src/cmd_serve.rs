//! `kiln serve`: the OpenAI-compatible server of the `kiln-serve` crate, with the model
//! compiled and loaded by the same flags as `kiln run`.

use crate::local_cache;
use crate::progress::Progress;
use crate::CompileFlags;
use clap::Args;
use kiln_compile::CompileOptions;
use kiln_models::{BatchedModel, GraphOptions, LoadOptions, ModelSource};
use std::time::Duration;

#[derive(Args, Clone, Debug)]
pub struct ServeArgs {
    #[command(flatten)]
    pub flags: CompileFlags,
    /// Address to listen on.
    #[arg(long, default_value = "127.0.0.1")]
    pub host: String,
    /// Port to listen on (0: any free port; the address is printed).
    #[arg(long, default_value_t = 8080)]
    pub port: u16,
    /// Sequences generating at once, 1 to 64 (each holds a KV-cache slot of --ctx positions;
    /// the batched graph has attention kernels per slot, so more slots compile more kernels).
    #[arg(long, default_value_t = 8, value_parser = clap::value_parser!(u64).range(1..=64))]
    pub max_batch: u64,
    /// Requests that may wait for a slot (at least 1: a request waits until the next step
    /// admits it); more are refused at once with 429.
    #[arg(long, default_value_t = 64, value_parser = clap::value_parser!(u64).range(1..))]
    pub max_queue: u64,
    /// Positions one request may fill, prompt and output (default: the model's context, at
    /// most 4096).
    #[arg(long, value_parser = clap::value_parser!(u64).range(2..))]
    pub ctx: Option<u64>,
    /// Prompt tokens prefilled per step, over all sequences, while no sequence decodes or
    /// while at least as many sequences read their prompt as decode (the batch fills): a long
    /// prompt is read in chunks of this size (larger: its first token comes sooner).
    #[arg(long, default_value_t = 1024, value_parser = clap::value_parser!(u64).range(1..))]
    pub prefill_chunk: u64,
    /// While more sequences decode than read their prompt, a step reads as many prompt tokens
    /// as keep it within F times the decodes' own step time, estimated from the engine's
    /// recent steps (smaller: steadier streams; larger: a new prompt's first token comes
    /// sooner).
    #[arg(long, value_name = "F", default_value_t = 2.0)]
    pub prefill_stretch: f64,
    /// Prompt tokens a step beside decoding sequences reads at least (at most
    /// --prefill-chunk), however long the step then takes, so that every prompt advances;
    /// also the budget until the engine has timed its first steps.
    #[arg(long, default_value_t = 16, value_parser = clap::value_parser!(u64).range(1..))]
    pub prefill_while_decoding: u64,
    /// Require 'Authorization: Bearer KEY' on /v1 requests.
    #[arg(long, env = "KILN_API_KEY", hide_env_values = true)]
    pub api_key: Option<String>,
    /// The model id clients name (default: the preset's name, the checkpoint folder's, or the
    /// GGUF file's without `.gguf`).
    #[arg(long)]
    pub served_model_name: Option<String>,
    /// Largest request body, in bytes; larger ones get 413.
    #[arg(long, default_value_t = 4 << 20)]
    pub max_body_bytes: usize,
    /// Seconds running requests get to finish after SIGTERM/SIGINT; the rest are cancelled.
    #[arg(long, value_name = "SECS", default_value_t = 30.0)]
    pub shutdown_grace: f64,
    /// Seed of a preset's random weights.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
}

pub fn run(a: ServeArgs) -> anyhow::Result<()> {
    anyhow::ensure!(
        a.shutdown_grace.is_finite() && a.shutdown_grace >= 0.0,
        "--shutdown-grace must be a number of seconds >= 0"
    );
    let source = ModelSource::parse(&a.flags.model)?;
    let config = source.config()?;
    let tokenizer = source.tokenizer()?;
    let name = a
        .served_model_name
        .clone()
        .unwrap_or_else(|| match &source {
            ModelSource::Preset(p) => p.clone(),
            ModelSource::Dir(d) => d
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_else(|| source.name()),
            ModelSource::Gguf(f) => f
                .file_stem()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_else(|| source.name()),
        });
    let cfg = kiln_serve::ServeConfig {
        host: a.host.clone(),
        port: a.port,
        max_batch: a.max_batch as usize,
        max_queue: a.max_queue as usize,
        ctx: a.ctx.map(|c| c as usize),
        prefill_chunk: a.prefill_chunk as usize,
        prefill_while_decoding: a.prefill_while_decoding as usize,
        prefill_stretch: a.prefill_stretch,
        api_key: a.api_key.clone().filter(|k| !k.is_empty()),
        max_body_bytes: a.max_body_bytes,
        shutdown_grace: Duration::from_secs_f64(a.shutdown_grace),
    };
    let served = kiln_serve::ServedModel {
        name,
        config,
        tokenizer,
    };
    let flags = a.flags.clone();
    let seed = a.seed;
    // Compiles and loads on the engine thread, once the socket is bound.
    let load = move |pool: kiln_serve::SlotPool| -> anyhow::Result<BatchedModel> {
        let target = flags.open(None, false)?;
        let progress = Progress::new(flags.trace.is_some());
        let remote = crate::remote::open(&flags)?;
        let opts = LoadOptions {
            target: target.as_ref(),
            compile: CompileOptions {
                threads: flags.threads(),
                cache: local_cache::open(flags.no_cache),
                observer: Some(&progress),
                remote: remote.as_ref(),
                ..Default::default()
            },
            graph: GraphOptions {
                weight_dtype: flags.weight_dtype,
                kv_dtype: flags.kv_dtype,
                ..Default::default()
            },
            seed,
        };
        let model = BatchedModel::load(&source, &opts, pool.slots, pool.positions);
        progress.finish(flags.trace.as_deref())?;
        Ok(model?)
    };
    kiln_serve::serve(cfg, served, load)
}
