use crate::local_cache;
use crate::out;
use crate::output_path::check_writable;
use crate::progress::Progress;
use crate::report::print_report;
use crate::CompileFlags;
use anyhow::{bail, Context};
use clap::Args;
use kiln_compile::{CompileOptions, CompileReport};
use kiln_models::{
    Decode, Detokenizer, FinishReason, GraphOptions, LoadOptions, Model, Sampling, StreamDecoder,
};
use std::path::PathBuf;

#[derive(Args, Clone, Debug)]
pub struct RunArgs {
    #[command(flatten)]
    pub flags: CompileFlags,
    /// The prompt text (tokenized with the model's tokenizer).
    #[arg(
        long,
        conflicts_with = "prompt_ids",
        required_unless_present = "prompt_ids"
    )]
    pub prompt: Option<String>,
    /// The prompt as token ids: 1,2,3.
    #[arg(long, value_delimiter = ',')]
    pub prompt_ids: Option<Vec<u32>>,
    /// Wrap the prompt in the model's chat template (a GGUF file's tokenizer.chat_template, a
    /// folder's tokenizer_config.json; the Qwen chat markup without one) and stop at <|im_end|>
    /// (with --prompt: ids are passed as they are).
    #[arg(long, conflicts_with = "prompt_ids")]
    pub chat: bool,
    /// At most this many new tokens (generation also stops at the model's context).
    #[arg(long, default_value_t = 32, value_parser = crate::bounds::new_tokens)]
    pub max_new_tokens: usize,
    /// 0 = greedy.
    #[arg(long, default_value_t = 0.0, value_parser = crate::bounds::temperature)]
    pub temperature: f32,
    /// Keep the K most likely tokens (0 = all; at most the vocabulary).
    #[arg(long, default_value_t = 0)]
    pub top_k: usize,
    /// Keep the smallest set of tokens whose probability reaches P, in (0, 1].
    #[arg(long, default_value_t = 1.0, value_parser = crate::bounds::top_p)]
    pub top_p: f32,
    /// Seed for sampling (and a preset's random weights).
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Keep generating after the end-of-sequence token.
    #[arg(long)]
    pub ignore_eos: bool,
    /// Print one JSON object on stdout instead of streaming text.
    #[arg(long)]
    pub json: bool,
    /// Write the logits that chose each generated token to FILE as JSON.
    #[arg(long, value_name = "FILE")]
    pub logits_out: Option<PathBuf>,
    /// Run the prompt through the model N tokens at a time (0 = all at once): activations
    /// and gathered embedding rows for N tokens at the peak, not the whole prompt's.
    #[arg(long, value_name = "N", default_value_t = 64)]
    pub prefill_chunk: usize,
}

pub fn run(a: RunArgs) -> anyhow::Result<()> {
    if let Some(p) = &a.logits_out {
        check_writable("--logits-out", p)?;
    }
    if let Some(p) = &a.flags.trace {
        check_writable("--trace", p)?;
    }
    crate::output_path::check_distinct(&[
        ("--logits-out", a.logits_out.as_deref()),
        ("--trace", a.flags.trace.as_deref()),
    ])?;
    let source = crate::model_source(&a.flags.model)?;
    let tokenizer = source.tokenizer()?;
    kiln_models::memory::trace("tokenizer built");
    let prompt_ids = match (&a.prompt_ids, &a.prompt) {
        (Some(ids), _) => ids.clone(),
        (None, Some(text)) => {
            let tok = tokenizer.as_ref().with_context(|| {
                format!(
                    "{} has no tokenizer (tokenizer.json, or tokenizer.ggml.* in a GGUF file): \
                     pass --prompt-ids instead of --prompt",
                    source.name()
                )
            })?;
            let text = if a.chat {
                if tok.chat_template().is_none() {
                    // The Qwen chat markup stands in for a template: it needs its tokens.
                    tok.check_chat_tokens()?;
                }
                tok.apply_chat_template(text)?
            } else {
                text.clone()
            };
            tok.encode(&text)?
        }
        (None, None) => bail!("give --prompt or --prompt-ids"),
    };
    let im_end = tokenizer
        .as_ref()
        .and_then(|t| t.token_id(kiln_models::tokenizer::IM_END));
    // The prompt is encoded: what is left to do with the tokenizer is decoding the output,
    // which needs only each token's bytes. Those are kept (~2 MB) and the rest (~31 MB of BPE
    // vocabulary and merges for Qwen's 151,936 tokens) given back before the weights are
    // loaded, so that it is not resident beside them at the peak. The table is made (~50 ms
    // of CPU) on a thread of its own while the checkpoint's config is read.
    let (decoder, config) = std::thread::scope(|s| {
        let decoder = s.spawn(|| tokenizer.map(Detokenizer::new));
        let config = source.config();
        let decoder = decoder
            .join()
            .unwrap_or_else(|panic| std::panic::resume_unwind(panic));
        (decoder, config)
    });
    kiln_models::memory::return_free_heap();
    kiln_models::memory::trace("config read, tokenizer dropped");
    // A prompt the model cannot take fails here, before compiling or loading weights.
    let config = config?;
    config.check_prompt(&prompt_ids)?;
    anyhow::ensure!(
        a.top_k <= config.vocab_size,
        "--top-k {} is more than the vocabulary ({} tokens; 0 keeps them all)",
        a.top_k,
        config.vocab_size
    );

    let threads = a.flags.threads();
    let target = a.flags.open(None, false)?;
    let progress = Progress::new(a.flags.trace.is_some());
    let remote = crate::remote::open(&a.flags)?;
    let opts = LoadOptions {
        target: target.as_ref(),
        compile: CompileOptions {
            threads,
            cache: local_cache::open(a.flags.no_cache),
            observer: Some(&progress),
            remote: remote.as_ref(),
            ..Default::default()
        },
        graph: GraphOptions {
            weight_dtype: a.flags.weight_dtype,
            kv_dtype: a.flags.kv_dtype,
            ..Default::default()
        },
        seed: a.seed,
    };
    let model = Model::load(&source, &opts);
    progress.finish(a.flags.trace.as_deref())?;
    let mut model = model?;
    model.keep_step_logits = a.logits_out.is_some();
    model.prefill_chunk = a.prefill_chunk;
    kiln_models::memory::trace("model loaded");
    if !a.json {
        print_report(&model.report);
    }

    let mut stop: Vec<u32> = Vec::new();
    if !a.ignore_eos {
        stop.extend(&model.config.eos_token_ids);
        stop.extend(im_end);
    }
    let sampling = Sampling {
        temperature: a.temperature,
        top_k: a.top_k,
        top_p: a.top_p,
        seed: a.seed,
    };
    let mut stream = StreamDecoder::default();
    let show = !a.json;
    // Streamed as generated; a stdout that fails ends kiln here (see `out`): there is nothing
    // left to clean up, and no reason to generate what nobody reads.
    let gen = model.generate(&prompt_ids, a.max_new_tokens, &sampling, &stop, |id| {
        if !show {
            return;
        }
        if let Some(t) = &decoder {
            if let Ok(piece) = stream.push(t, id) {
                out::print_or_exit(&piece);
            }
        } else {
            out::print_or_exit(&format!("{id} "));
        }
    })?;
    kiln_models::memory::trace("generated");
    if let (true, Some(t)) = (show, &decoder) {
        // A last token that ended inside a character: shown (as U+FFFD), as --json shows it.
        out::print(&stream.finish(t)?)?;
    }
    let text = match &decoder {
        Some(t) => {
            let unknown = t.unknown_ids(&gen.generated_ids);
            if !unknown.is_empty() {
                eprintln!(
                    "warning: generated ids with no token in the tokenizer ({} tokens; the model \
                     has {}): {unknown:?}, shown as U+FFFD",
                    t.vocab_size(),
                    model.config.vocab_size
                );
            }
            t.decode(&gen.generated_ids)?
        }
        None => String::new(),
    };
    if let Some(path) = &a.logits_out {
        let v = serde_json::json!({ "step_logits": gen.step_logits });
        std::fs::write(path, serde_json::to_vec(&v)?)
            .with_context(|| format!("writing {}", path.display()))?;
    }
    if a.json {
        let report = RunJson {
            prompt_ids: &gen.prompt_ids,
            generated_ids: &gen.generated_ids,
            finish_reason: gen.finish_reason,
            text,
            compile: &model.report,
            prefill_ms: gen.prefill_ms,
            decode_tokens_per_s: gen.decode_tokens_per_s(),
        };
        out::json(&report)?;
    } else {
        out::line("")?;
        if gen.finish_reason == FinishReason::Length {
            eprintln!(
                "stopped at the context limit: prompt and output fill max_position_embeddings = {}",
                model.config.max_position_embeddings
            );
        }
        eprintln!(
            "prompt {} tokens, prefill {:.1} ms; {} new tokens ({}), decode {:.2} tokens/s",
            gen.prompt_ids.len(),
            gen.prefill_ms,
            gen.generated_ids.len(),
            gen.finish_reason.as_str(),
            gen.decode_tokens_per_s()
        );
    }
    Ok(())
}

#[derive(serde::Serialize)]
struct RunJson<'a> {
    prompt_ids: &'a [u32],
    generated_ids: &'a [u32],
    /// "eos", "length" (the context is full) or "max_new_tokens".
    finish_reason: FinishReason,
    text: String,
    compile: &'a CompileReport,
    prefill_ms: f64,
    decode_tokens_per_s: f64,
}
