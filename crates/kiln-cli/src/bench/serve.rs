//! `kiln bench serve`: a `kiln serve` child driven over HTTP by N concurrent streaming
//! clients, one round per N: aggregate tokens/s, time to first token and inter-token latency
//! (p50/p99), as `serve.json` and `serve.svg`.

use super::machine::cpu_model;
use super::ServeBench;
use anyhow::Context;
use kiln_compile::cores;
use kiln_serve::client::{percentile, Client, Streamed};
use serde_json::json;
use std::io::{BufRead, Write};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Barrier};
use std::time::{Duration, Instant};

/// The server child; killed when dropped.
struct ServerChild {
    child: Child,
    base: String,
}

impl Drop for ServerChild {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn start_server(a: &ServeBench, threads: usize, log: &Path) -> anyhow::Result<ServerChild> {
    let max_streams = a.streams.iter().copied().max().unwrap_or(1);
    let mut child = Command::new(std::env::current_exe()?)
        .args(["serve", "--model", &a.model, "--port", "0"])
        .args(["--backend", a.backend.name()])
        .args(["--threads", &threads.to_string()])
        .args(["--max-batch", &max_streams.to_string()])
        .args(["--max-queue", &(2 * max_streams).to_string()])
        .args(["--ctx", &(a.prompt_len + a.tokens + 1).to_string()])
        .env_remove("KILN_API_KEY")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()?;
    let stderr = child.stderr.take().expect("piped");
    let (tx, rx) = std::sync::mpsc::channel();
    let mut file = std::fs::File::create(log)?;
    std::thread::spawn(move || {
        for line in std::io::BufReader::new(stderr).lines() {
            let Ok(line) = line else { break };
            if let Some(rest) = line.split("listening on ").nth(1) {
                let _ = tx.send(rest.split_whitespace().next().unwrap_or("").to_string());
            }
            let _ = writeln!(file, "{line}");
        }
    });
    let mut server = ServerChild {
        child,
        base: String::new(),
    };
    server.base = rx
        .recv_timeout(Duration::from_secs(60))
        .map_err(|_| anyhow::anyhow!("kiln serve did not start (its log: {})", log.display()))?;
    eprintln!("kiln serve at {}: loading the model", server.base);
    let client = Client::new(&server.base);
    let t = Instant::now();
    loop {
        if let Some(status) = server.child.try_wait()? {
            anyhow::bail!(
                "kiln serve exited ({status}) while loading the model; its log: {}",
                log.display()
            );
        }
        if client.get("/health").is_ok_and(|r| r.status == 200) {
            break;
        }
        anyhow::ensure!(
            t.elapsed() < Duration::from_secs(3600),
            "the model was not ready within an hour"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    eprintln!("model ready in {:.1} s", t.elapsed().as_secs_f64());
    Ok(server)
}

/// `len` pseudo-random ids below `vocab`, different for every `seed`.
fn prompt_ids(seed: u64, len: usize, vocab: u64) -> Vec<u64> {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x % vocab
        })
        .collect()
}

/// One round: `n` streams sent together; each must generate exactly `tokens` tokens.
fn round(
    a: &ServeBench,
    base: &str,
    n: usize,
    vocab: u64,
    seed: u64,
) -> anyhow::Result<(Vec<Streamed>, f64)> {
    let barrier = Arc::new(Barrier::new(n));
    let start = Instant::now();
    let streams: Vec<anyhow::Result<Streamed>> = std::thread::scope(|s| {
        let hs: Vec<_> = (0..n)
            .map(|i| {
                let barrier = barrier.clone();
                let body = json!({
                    "model": a.model, "prompt": prompt_ids(seed + i as u64, a.prompt_len, vocab),
                    "max_tokens": a.tokens, "temperature": 0, "ignore_eos": true, "stream": true,
                    "return_token_ids": true,
                });
                s.spawn(move || {
                    let c = Client::new(base);
                    barrier.wait();
                    c.stream("/v1/completions", &body)
                })
            })
            .collect();
        hs.into_iter()
            .map(|h| h.join().expect("client thread"))
            .collect()
    });
    let streams = streams.into_iter().collect::<anyhow::Result<Vec<_>>>()?;
    let end = streams
        .iter()
        .filter_map(|s| s.chunks.last().map(|c| c.0))
        .max()
        .unwrap_or(start);
    for s in &streams {
        anyhow::ensure!(
            s.complete() && s.token_ids().len() == a.tokens,
            "a stream did not complete with {} tokens: {:?}",
            a.tokens,
            s.error.as_ref().or(s.chunks.last().map(|c| &c.1))
        );
    }
    Ok((streams, (end - start).as_secs_f64()))
}

pub fn run(a: ServeBench) -> anyhow::Result<()> {
    anyhow::ensure!(
        a.prompt_len >= 1 && a.tokens >= 2 && !a.streams.is_empty(),
        "--prompt-len must be >= 1, --tokens >= 2, --streams not empty"
    );
    super::out_dir(&a.out)?;
    let source = crate::model_source(&a.model)?;
    let vocab = source.config()?.vocab_size as u64;
    let threads = a.threads.unwrap_or_else(cores);
    let log = a.out.join("serve.log");
    let server = start_server(&a, threads, &log)?;
    // The model is served under the name it was given; ask for it.
    let name = Client::new(&server.base).get("/v1/models")?.json()?["data"][0]["id"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    let a = ServeBench { model: name, ..a };
    // A warm-up round (first touches of the weights and caches).
    round(&a, &server.base, 1, vocab, 1_000_000)?;
    let mut rows = Vec::new();
    for (r, &n) in a.streams.iter().enumerate() {
        let n = n as usize;
        let (streams, wall) = round(&a, &server.base, n, vocab, 1000 * r as u64)?;
        let total: usize = streams.iter().map(|s| s.token_ids().len()).sum();
        let ttft: Vec<f64> = streams
            .iter()
            .map(|s| (s.tokens()[0].0 - s.started).as_secs_f64() * 1e3)
            .collect();
        let itl: Vec<f64> = streams
            .iter()
            .flat_map(|s| {
                let t = s.tokens();
                (1..t.len())
                    .map(|k| (t[k].0 - t[k - 1].0).as_secs_f64() * 1e3)
                    .collect::<Vec<_>>()
            })
            .collect();
        let per_stream: Vec<f64> = streams
            .iter()
            .map(|s| {
                let t = s.tokens();
                (t.len() - 1) as f64 / (t[t.len() - 1].0 - t[0].0).as_secs_f64().max(1e-9)
            })
            .collect();
        let row = json!({
            "streams": n,
            "aggregate_tokens_per_s": total as f64 / wall,
            "ttft_ms_p50": percentile(&ttft, 50.0), "ttft_ms_p99": percentile(&ttft, 99.0),
            "itl_ms_p50": percentile(&itl, 50.0), "itl_ms_p99": percentile(&itl, 99.0),
            "wall_s": wall, "tokens": total,
            "decode_tokens_per_s_per_stream_p50": percentile(&per_stream, 50.0),
        });
        eprintln!(
            "{n:>3} streams: {:.1} tokens/s aggregate; time to first token p50 {:.0} ms p99 {:.0} ms; inter-token p50 {:.1} ms p99 {:.1} ms",
            row["aggregate_tokens_per_s"].as_f64().unwrap_or(0.0),
            row["ttft_ms_p50"].as_f64().unwrap_or(0.0),
            row["ttft_ms_p99"].as_f64().unwrap_or(0.0),
            row["itl_ms_p50"].as_f64().unwrap_or(0.0),
            row["itl_ms_p99"].as_f64().unwrap_or(0.0),
        );
        rows.push(row);
    }
    drop(server);
    let doc = json!({
        "model": a.model, "source": source.name(), "backend": a.backend.name(), "threads": threads,
        "prompt_len": a.prompt_len, "tokens": a.tokens,
        "machine": { "cores": cores(), "cpu": cpu_model() },
        "engine": "batched: one forward per step for all decodes and prefill chunks, a KV cache slot per sequence",
        "unix_time": std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0),
        "rows": rows,
    });
    let jpath = a.out.join("serve.json");
    super::write_json(&jpath, &doc)?;
    let spath = a.out.join("serve.svg");
    super::plot::serve(&doc, &spath).with_context(|| format!("writing {}", spath.display()))?;
    eprintln!(
        "wrote {} and {} (server log: {})",
        jpath.display(),
        spath.display(),
        log.display()
    );
    Ok(())
}
