//! `kiln bench serve`: a `kiln serve` child driven over HTTP by N concurrent streaming
//! clients, one round per N: aggregate tokens/s, time to first token and inter-token latency
//! (p50/p99), as `serve.json` and `serve.svg`.
//!
//! With `--url` the same load generator drives a server that is already running instead of a
//! child: another `kiln serve`, or llama.cpp's `llama-server` as a benchmark anchor
//! (`scripts/llama-compare.sh`). Such a server may send no token ids in its chunks
//! (`llama-server` sends text only, and holds back a token that ends inside a UTF-8
//! character until the next one): a chunk then counts as one token, and the stream's total is
//! its `usage.completion_tokens`.

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

/// `--url`: a server that is already running; waits (up to 10 minutes) for its `/health` to
/// answer 200 (503 while it loads its model). Every error names the URL.
fn wait_for_running(url: &str) -> anyhow::Result<String> {
    let base = url.trim_end_matches('/').to_string();
    anyhow::ensure!(
        base.starts_with("http://") || base.starts_with("https://"),
        "--url {url}: not an http:// or https:// URL"
    );
    let client = Client::new(&base);
    let t = Instant::now();
    loop {
        match client.get("/health") {
            Ok(r) if r.status == 200 => break,
            Ok(r) if r.status == 503 => {} // loading
            Ok(r) => anyhow::bail!("--url {url}: GET /health answered {}: {}", r.status, r.body),
            Err(e) => anyhow::bail!("--url {url}: no server answers there ({e})"),
        }
        anyhow::ensure!(
            t.elapsed() < Duration::from_secs(600),
            "--url {url}: the server's /health was not 200 within 10 minutes"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    Ok(base)
}

/// When each token of a stream came. A server that sends token ids (`kiln serve` with
/// `return_token_ids`) gives one time per id; one that sends text only, one time per chunk
/// with text (a chunk that holds back nothing is one token).
fn token_times(s: &Streamed) -> Vec<Instant> {
    let with_ids = s.tokens();
    if !with_ids.is_empty() {
        return with_ids.into_iter().map(|(t, _)| t).collect();
    }
    s.chunks
        .iter()
        .filter(|(_, c)| {
            c["choices"][0]["text"]
                .as_str()
                .or(c["choices"][0]["delta"]["content"].as_str())
                .is_some_and(|t| !t.is_empty())
        })
        .map(|(t, _)| *t)
        .collect()
}

/// How many tokens a stream generated: its token ids, else the server's
/// `usage.completion_tokens`.
fn tokens_generated(s: &Streamed) -> Option<usize> {
    let ids = s.token_ids().len();
    if ids > 0 {
        return Some(ids);
    }
    s.usage()
        .and_then(|u| u["completion_tokens"].as_u64())
        .map(|n| n as usize)
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
            s.complete() && tokens_generated(s) == Some(a.tokens) && !token_times(s).is_empty(),
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
    // A child we started (dropped, so stopped, after the rounds), or the server at --url.
    let (server, base) = match &a.url {
        Some(url) => (None, wait_for_running(url)?),
        None => {
            let child = start_server(&a, threads, &log)?;
            let base = child.base.clone();
            (Some(child), base)
        }
    };
    // The model is served under a name of the server's; ask for it.
    let models = Client::new(&base).get("/v1/models")?;
    let name = models
        .json()
        .with_context(|| format!("GET {base}/v1/models"))?["data"][0]["id"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    let server_name = match &a.url {
        Some(_) => format!("the server at {base}"),
        None => "a kiln serve child".to_string(),
    };
    let a = ServeBench { model: name, ..a };
    // A warm-up round (first touches of the weights and caches).
    round(&a, &base, 1, vocab, 1_000_000)?;
    let mut rows = Vec::new();
    for (r, &n) in a.streams.iter().enumerate() {
        let n = n as usize;
        let (streams, wall) = round(&a, &base, n, vocab, 1000 * r as u64)?;
        let total: usize = streams.iter().filter_map(tokens_generated).sum();
        let times: Vec<Vec<Instant>> = streams.iter().map(token_times).collect();
        let ttft: Vec<f64> = streams
            .iter()
            .zip(&times)
            .map(|(s, t)| (t[0] - s.started).as_secs_f64() * 1e3)
            .collect();
        let itl: Vec<f64> = times
            .iter()
            .flat_map(|t| {
                (1..t.len())
                    .map(|k| (t[k] - t[k - 1]).as_secs_f64() * 1e3)
                    .collect::<Vec<_>>()
            })
            .collect();
        let per_stream: Vec<f64> = times
            .iter()
            .map(|t| (t.len() - 1) as f64 / (t[t.len() - 1] - t[0]).as_secs_f64().max(1e-9))
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
    let engine = match &a.url {
        Some(_) => "an external server (see `server`); its own backend and threads",
        None => "batched: one forward per step for all decodes and prefill chunks, a KV cache slot per sequence",
    };
    let doc = json!({
        "model": a.model, "source": source.name(), "server": server_name,
        "backend": a.url.is_none().then(|| a.backend.name()),
        "threads": a.url.is_none().then_some(threads),
        "prompt_len": a.prompt_len, "tokens": a.tokens,
        "machine": { "cores": cores(), "cpu": cpu_model() },
        "engine": engine,
        "unix_time": std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0),
        "rows": rows,
    });
    let jpath = a.out.join("serve.json");
    super::write_json(&jpath, &doc)?;
    let spath = a.out.join("serve.svg");
    super::plot::serve(&doc, &spath).with_context(|| format!("writing {}", spath.display()))?;
    match a.url {
        Some(_) => eprintln!("wrote {} and {}", jpath.display(), spath.display()),
        None => eprintln!(
            "wrote {} and {} (server log: {})",
            jpath.display(),
            spath.display(),
            log.display()
        ),
    }
    Ok(())
}
