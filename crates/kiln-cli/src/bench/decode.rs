//! `kiln bench decode`: prefill time against the machine's FMA peak and decode tokens/s
//! against the memory-bandwidth bound (every weight and the KV cache read once per token).

use super::{machine, plot, DecodeBench};
use anyhow::Context;
use kiln_backends::{BackendKind, BackendOptions};
use kiln_compile::cores;
use serde_json::json;
use std::time::Instant;

pub fn run(a: DecodeBench) -> anyhow::Result<()> {
    use kiln_models::{LoadOptions, Model, Sampling};
    super::out_dir(&a.out)?;
    let threads = a.threads.unwrap_or_else(cores);
    let source = crate::model_source(&a.model)?;
    let target = kiln_backends::open(
        a.backend,
        &BackendOptions {
            run_threads: threads.min(cores()),
            driver_cache: crate::local_cache::driver_dir(false),
            ..Default::default()
        },
    )?;
    let weight_dtype = a.weight_dtype;
    let mut opts = LoadOptions {
        compile: kiln_compile::CompileOptions {
            threads,
            cache: crate::local_cache::open(false),
            ..Default::default()
        },
        ..LoadOptions::new(target.as_ref())
    };
    opts.graph.weight_dtype = weight_dtype;
    opts.graph.kv_dtype = a.kv_dtype;
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
        None => (machine::memory_bandwidth(threads), machine::cpu_model()),
    };
    let mut c = model.config.clone();
    if let Some(w) = weight_dtype {
        c.weight_dtype = w;
    }
    let c = &c;
    // Bytes a decode step must read: every weight, and the KV cache (in its dtype) at the
    // mean position of the generated tokens.
    // An untied embedding table is only gathered from (one row per token): it is not
    // streamed. A tied one is the LM head's weight.
    let table = if c.tie_word_embeddings {
        0.0
    } else {
        let shape = [c.vocab_size, c.hidden_size];
        let dtype = match c.file_quant.get(kiln_models::model::EMBEDDING) {
            Some(&d) => d,
            None => kiln_models::model::weight_dtype(&shape, c.weight_dtype),
        };
        dtype.storage_bytes(c.vocab_size * c.hidden_size) as f64
    };
    let weight_bytes = c.weight_bytes() as f64 - table;
    let mean_pos = a.prompt_len as f64 + g.generated_ids.len() as f64 / 2.0;
    let kv_bytes = model
        .kv_dtype
        .storage_bytes(2 * c.num_layers * c.num_kv_heads * c.head_dim) as f64
        * mean_pos;
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
        "machine": { "cores": cores(), "cpu": machine::cpu_model(), "bandwidth_from": device_name, "vector_lanes_f32": lanes },
        "prompt_len": a.prompt_len, "tokens": g.generated_ids.len(), "load_ms": load_ms, "compile_ms": model.report.compile_ms,
        "prefill_ms": g.prefill_ms, "time_to_first_token_ms": g.prefill_ms,
        "prefill_gflop": prefill_flops / 1e9, "prefill_gflops": prefill_gflops,
        "fma_peak_gflops": peak, "prefill_pct_of_peak": peak.map(|p| 100.0 * prefill_gflops / p),
        "decode_tokens_per_s": decode,
        "memory_bandwidth_gb_s": bw / 1e9, "weight_bytes": weight_bytes, "kv_cache_bytes_read": kv_bytes,
        "weight_dtype": c.weight_dtype.name(), "weight_format": weight_format(c), "kv_dtype": model.kv_dtype.name(), "params": c.num_params(),
        "bound_tokens_per_s": bound, "decode_pct_of_bound": 100.0 * decode / bound,
        "launches_per_token": step.launches, "bytes_written_per_token": step.bytes_written,
    });
    let jpath = a.out.join("decode.json");
    super::write_json(&jpath, &doc)?;
    let spath = a.out.join("decode.svg");
    plot::decode(&doc, &spath).with_context(|| format!("writing {}", spath.display()))?;
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

/// The weights' format as held in memory: the weight dtype, and for a GGUF file the
/// quantized types its linear layers stay in.
fn weight_format(c: &kiln_models::QwenConfig) -> String {
    let kept: std::collections::BTreeSet<&str> = c.file_quant.values().map(|d| d.name()).collect();
    if kept.is_empty() {
        c.weight_dtype.name().to_string()
    } else {
        let kept: Vec<&str> = kept.into_iter().collect();
        format!(
            "{} (matrices in {} as the file stores them)",
            c.weight_dtype.name(),
            kept.join(", ")
        )
    }
}
