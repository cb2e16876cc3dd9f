//! `kiln serve` end to end: a real server process on a free loopback port, serving the tiny
//! reference checkpoint, driven over HTTP (and by the official `openai` Python client when
//! `KILN_TEST_OPENAI_PYTHON` names a Python that has it; scripts/test.sh makes one).
//!
//! The tiny checkpoint has no tokenizer of its own; its vocabulary is 256 ids. It is served
//! here with the Qwen3 tokenizer cut to its first 256 ids (the byte-level alphabet), with the
//! chat markup's special tokens moved onto three bytes that never occur in UTF-8 text, so
//! that text prompts, chat and stop strings work and every id stays in the model's range.

use kiln_serve::client::{percentile, Client, Streamed};
use serde_json::{json, Value};
use std::io::BufRead;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Barrier, Mutex, OnceLock};
use std::time::{Duration, Instant};

/// Kernels compiled once for every server and `kiln run` of this test binary.
fn kernel_cache() -> PathBuf {
    Path::new(env!("CARGO_TARGET_TMPDIR")).join("serve-kernel-cache")
}

/// The Qwen3 tokenizer cut to 256 ids, with `<|endoftext|>`, `<|im_start|>` and `<|im_end|>`
/// on ids 185..=187 (the byte-level tokens of bytes 0xFD..0xFF, which UTF-8 never uses).
fn tokenizer_json() -> Vec<u8> {
    let mut v: Value =
        serde_json::from_slice(&kiln_models::testing::small_qwen_tokenizer_json(256)).unwrap();
    let special = [
        ("<|endoftext|>", 185),
        ("<|im_start|>", 186),
        ("<|im_end|>", 187),
    ];
    let vocab = v["model"]["vocab"].as_object_mut().unwrap();
    vocab.retain(|_, id| !(185..=187).contains(&id.as_u64().unwrap()));
    let added: Vec<Value> = v["added_tokens"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|t| {
            let (_, id) = special.iter().find(|(c, _)| t["content"] == *c)?;
            let mut t = t.clone();
            t["id"] = json!(id);
            Some(t)
        })
        .collect();
    assert_eq!(added.len(), 3);
    v["added_tokens"] = Value::Array(added);
    serde_json::to_vec(&v).unwrap()
}

/// The tiny checkpoint with that tokenizer, in `name`, with `max_position_embeddings` set
/// (None: the fixture's 512).
fn model_dir(name: &str, max_positions: Option<u64>) -> PathBuf {
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR"))
        .join("serve-models")
        .join(name);
    let fixture = kiln_models::testing::fixtures().join("tiny-qwen3");
    std::fs::create_dir_all(&dir).unwrap();
    let mut config: Value =
        serde_json::from_slice(&std::fs::read(fixture.join("config.json")).unwrap()).unwrap();
    if let Some(n) = max_positions {
        config["max_position_embeddings"] = json!(n);
    }
    std::fs::write(dir.join("config.json"), config.to_string()).unwrap();
    std::fs::copy(
        fixture.join("model.safetensors"),
        dir.join("model.safetensors"),
    )
    .unwrap();
    std::fs::write(dir.join("tokenizer.json"), tokenizer_json()).unwrap();
    dir
}

/// The fixture's model (a context of 512).
fn tiny() -> &'static Path {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| model_dir("tiny", None))
}

/// The same weights with a context of 16384: generations long enough to be in flight when a
/// client goes away or the server is stopped (the tiny model makes a token in well under a
/// millisecond).
fn tiny_long() -> &'static Path {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| model_dir("tiny-long", Some(16384)))
}

struct Server {
    child: Child,
    base: String,
    log: Arc<Mutex<Vec<String>>>,
}

impl Server {
    /// A server that has bound its socket (its model may still be loading).
    fn spawn(model: &Path, extra: &[&str]) -> Server {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_kiln"));
        cmd.args(["serve", "--model"])
            .arg(model)
            .args([
                "--port",
                "0",
                "--threads",
                "1",
                "--served-model-name",
                "tiny",
            ])
            .args(extra)
            .env("KILN_CACHE_DIR", kernel_cache())
            .env("RUST_LOG", "warn,kiln_serve=info")
            .env_remove("KILN_COMPILE_THREADS")
            .env_remove("KILN_API_KEY")
            .env_remove("KILN_REMOTE_CACHE")
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        let mut child = cmd.spawn().expect("spawn kiln serve");
        let log = Arc::new(Mutex::new(Vec::new()));
        let (tx, rx) = std::sync::mpsc::channel();
        let stderr = child.stderr.take().unwrap();
        let lines = log.clone();
        std::thread::spawn(move || {
            for line in std::io::BufReader::new(stderr).lines() {
                let Ok(line) = line else { break };
                if let Some(rest) = line.split("listening on ").nth(1) {
                    let _ = tx.send(rest.split_whitespace().next().unwrap_or("").to_string());
                }
                lines.lock().unwrap().push(line);
            }
        });
        let base = match rx.recv_timeout(Duration::from_secs(60)) {
            Ok(b) => b,
            Err(_) => {
                let _ = child.kill();
                panic!(
                    "kiln serve printed no address; its log:\n{}",
                    log.lock().unwrap().join("\n")
                );
            }
        };
        Server { child, base, log }
    }

    /// A server whose model is loaded (`/health` answers 200).
    fn start(model: &Path, extra: &[&str]) -> Server {
        let s = Server::spawn(model, extra);
        let client = s.client();
        poll(
            Duration::from_secs(180),
            Duration::from_millis(50),
            || {
                let r = client.get("/health").ok()?;
                assert!(r.status == 200 || r.status == 503, "{}", r.body);
                (r.status == 200).then_some(())
            },
            || format!("the model did not get ready; log:\n{}", s.log()),
        );
        s
    }

    fn client(&self) -> Client {
        Client::new(&self.base)
    }

    fn log(&self) -> String {
        self.log.lock().unwrap().join("\n")
    }

    /// Waits (up to 30 s) for a log line that contains every piece.
    fn wait_for_log(&self, pieces: &[&str]) -> String {
        poll(
            Duration::from_secs(30),
            Duration::from_millis(20),
            || {
                let log = self.log.lock().unwrap();
                log.iter()
                    .find(|l| pieces.iter().all(|p| l.contains(p)))
                    .cloned()
            },
            || format!("no log line with {pieces:?}; log:\n{}", self.log()),
        )
    }

    fn metrics(&self) -> String {
        self.client().get("/metrics").unwrap().body
    }
}

/// Calls `ready` every `every` until it gives a value; fails with `why()` after `limit`.
fn poll<T>(
    limit: Duration,
    every: Duration,
    mut ready: impl FnMut() -> Option<T>,
    why: impl Fn() -> String,
) -> T {
    let t = Instant::now();
    loop {
        if let Some(v) = ready() {
            return v;
        }
        assert!(t.elapsed() < limit, "{}", why());
        std::thread::sleep(every);
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A metric's value in the Prometheus text (the first line that starts with `name`).
fn metric(text: &str, name: &str) -> f64 {
    text.lines()
        .find(|l| l.starts_with(name) && l[name.len()..].starts_with(' '))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no {name} in\n{text}"))
}

/// `kiln run` on the same model and prompt ids: its generated ids and finish reason.
fn kiln_run(model: &Path, args: &[&str]) -> (Vec<u32>, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_kiln"))
        .arg("run")
        .arg("--model")
        .arg(model)
        .args(["--threads", "1", "--json"])
        .args(args)
        .env("KILN_CACHE_DIR", kernel_cache())
        .env_remove("KILN_COMPILE_THREADS")
        .env_remove("KILN_REMOTE_CACHE")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "kiln run: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    let ids = as_ids(&v["generated_ids"]);
    (ids, v["finish_reason"].as_str().unwrap().to_string())
}

fn ids_arg(ids: &[u32]) -> String {
    ids.iter()
        .map(|i| i.to_string())
        .collect::<Vec<_>>()
        .join(",")
}

/// Prompt `i` of a set: `len` pseudo-random ids below 185 (plain bytes, no special token).
fn prompt(i: u32, len: usize) -> Vec<u32> {
    let mut x = 0x2545_F491u32.wrapping_mul(i + 1);
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 17;
            x ^= x << 5;
            x % 185
        })
        .collect()
}

fn as_ids(v: &Value) -> Vec<u32> {
    kiln_models::testing::json_ids(v, "token ids")
}

/// One greedy request, streamed or not: (ids, finish reason).
fn greedy(
    c: &Client,
    ids: &[u32],
    max_tokens: usize,
    ignore_eos: bool,
    stream: bool,
) -> (Vec<u32>, String) {
    let body = json!({
        "model": "tiny", "prompt": ids, "max_tokens": max_tokens, "temperature": 0,
        "ignore_eos": ignore_eos, "return_token_ids": true, "stream": stream,
    });
    if stream {
        let s = c.stream("/v1/completions", &body).unwrap();
        assert!(s.complete(), "{s:?}");
        (s.token_ids(), s.finish_reason().unwrap())
    } else {
        let r = c.post("/v1/completions", &body).unwrap();
        assert_eq!(r.status, 200, "{}", r.body);
        let v = r.json().unwrap();
        (
            as_ids(&v["choices"][0]["token_ids"]),
            v["choices"][0]["finish_reason"]
                .as_str()
                .unwrap()
                .to_string(),
        )
    }
}

#[test]
fn concurrent_greedy_requests_equal_their_solo_runs_and_kiln_run() {
    // Prompts of 3 to 60 tokens, read 16 per step: the long ones are prefilled in chunks while
    // the others decode.
    let server = Server::start(tiny(), &["--max-batch", "8", "--prefill-chunk", "16"]);
    let c = server.client();
    let lens = [3usize, 7, 12, 20, 33, 41, 5, 60];
    let max_tokens = [160usize, 120, 200, 90, 150, 110, 180, 100];
    let prompts: Vec<Vec<u32>> = lens
        .iter()
        .enumerate()
        .map(|(i, &n)| prompt(i as u32, n))
        .collect();
    // Two of them may stop at the end of sequence; the others run to max_tokens.
    let ignore_eos = |i: usize| !i.is_multiple_of(4);
    let solo: Vec<(Vec<u32>, String)> = (0..8)
        .map(|i| greedy(&c, &prompts[i], max_tokens[i], ignore_eos(i), false))
        .collect();
    let before = server.metrics();
    let barrier = Arc::new(Barrier::new(8));
    let together: Vec<(Vec<u32>, String)> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..8)
            .map(|i| {
                let (barrier, prompts, base) = (barrier.clone(), &prompts, &server.base);
                s.spawn(move || {
                    let c = Client::new(base);
                    barrier.wait();
                    greedy(&c, &prompts[i], max_tokens[i], ignore_eos(i), i % 2 == 0)
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    for i in 0..8 {
        assert_eq!(together[i], solo[i], "request {i}: batched vs alone");
    }
    // They did run together: steps with more than one sequence.
    let after = server.metrics();
    let steps = metric(&after, "kiln_step_batch_size_count")
        - metric(&before, "kiln_step_batch_size_count");
    let sequences =
        metric(&after, "kiln_step_batch_size_sum") - metric(&before, "kiln_step_batch_size_sum");
    eprintln!("{sequences} sequence-steps in {steps} steps");
    assert!(
        sequences > 1.5 * steps,
        "the 8 requests hardly overlapped: {sequences} sequence-steps in {steps} steps"
    );
    for i in 0..8 {
        let mut args = vec![
            "--prompt-ids".to_string(),
            ids_arg(&prompts[i]),
            "--max-new-tokens".into(),
            max_tokens[i].to_string(),
        ];
        if ignore_eos(i) {
            args.push("--ignore-eos".into());
        }
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let (ids, reason) = kiln_run(tiny(), &args);
        assert_eq!(solo[i].0, ids, "request {i}: server vs kiln run");
        let openai = match reason.as_str() {
            "eos" => "stop",
            _ => "length",
        };
        assert_eq!(solo[i].1, openai, "request {i}: finish reason ({reason})");
    }
}

#[test]
fn the_openai_python_client_drives_the_server() {
    let python = match std::env::var("KILN_TEST_OPENAI_PYTHON") {
        Ok(p) => p,
        Err(_) => {
            assert!(
                std::env::var_os("KILN_TEST_SERVICES").is_none(),
                "KILN_TEST_SERVICES is set but KILN_TEST_OPENAI_PYTHON is not (scripts/test.sh sets both)"
            );
            eprintln!("skipping: KILN_TEST_OPENAI_PYTHON is not set (scripts/test.sh sets it)");
            return;
        }
    };
    let server = Server::start(tiny(), &["--api-key", "sekrit"]);
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/serve_openai.py");
    let out = Command::new(&python)
        .arg(&script)
        .args([&server.base, "sekrit", "tiny"])
        .output()
        .expect("run the openai client script");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "the openai client script failed:\n{stdout}\n{}\nserver log:\n{}",
        String::from_utf8_lossy(&out.stderr),
        server.log()
    );
    eprintln!("{stdout}");
    let last: Value = serde_json::from_str(stdout.lines().last().unwrap()).unwrap();
    // The chat reply is what `kiln run --chat` generates for the same message.
    let (ids, reason) = kiln_run(
        tiny(),
        &["--prompt", "Hello", "--chat", "--max-new-tokens", "12"],
    );
    assert_eq!(
        as_ids(&last["chat_token_ids"]),
        ids,
        "chat vs kiln run --chat"
    );
    assert_eq!(
        last["finish_reason"],
        if reason == "eos" { "stop" } else { "length" }
    );
}

#[test]
fn bad_requests_get_openai_error_bodies() {
    let server = Server::start(tiny(), &["--api-key", "k1", "--max-body-bytes", "4096"]);
    let anon = server.client();
    let c = server.client().with_api_key("k1");
    let error = |status: u16, body: &str| -> Value {
        let v: Value = serde_json::from_str(body).unwrap_or_else(|e| panic!("{e}: {body}"));
        let e = &v["error"];
        for k in ["message", "type", "param", "code"] {
            assert!(e.get(k).is_some(), "error body without {k}: {body}");
        }
        assert!(status >= 400);
        e.clone()
    };
    // No key, a wrong key: 401. /health and /metrics need none.
    for client in [&anon, &server.client().with_api_key("k2")] {
        let r = client
            .post("/v1/completions", &json!({"model": "tiny", "prompt": "x"}))
            .unwrap();
        assert_eq!(r.status, 401, "{}", r.body);
        assert_eq!(error(r.status, &r.body)["code"], "invalid_api_key");
        assert_eq!(client.get("/v1/models").unwrap().status, 401);
    }
    assert_eq!(anon.get("/health").unwrap().status, 200);
    assert_eq!(anon.get("/metrics").unwrap().status, 200);

    let post = |body: &[u8]| c.post_bytes("/v1/completions", body).unwrap();
    let r = post(br#"{"model": "tiny", "prompt": "x""#);
    assert_eq!(r.status, 400);
    assert!(error(400, &r.body)["message"]
        .as_str()
        .unwrap()
        .contains("not valid JSON"));
    let r = post(br#"{"model": "tiny", "prompt": "x", "max_tokens": "lots"}"#);
    assert_eq!(r.status, 400);
    assert_eq!(error(400, &r.body)["param"], "max_tokens");
    let r = post(br#"{"model": "tiny", "prompt": {"text": "x"}}"#);
    assert_eq!(
        (r.status, error(400, &r.body)["param"].clone()),
        (400, json!("prompt"))
    );
    let r = post(br#"{"model": "gpt-4", "prompt": "x"}"#);
    assert_eq!(r.status, 404);
    let e = error(404, &r.body);
    assert_eq!(e["code"], "model_not_found");
    assert!(e["message"].as_str().unwrap().contains("gpt-4"));
    // 600 ids do not fit the 512 positions.
    let r = c
        .post(
            "/v1/completions",
            &json!({"model": "tiny", "prompt": vec![7; 600]}),
        )
        .unwrap();
    assert_eq!(r.status, 400, "{}", r.body);
    let e = error(400, &r.body);
    assert_eq!(e["code"], "context_length_exceeded");
    let m = e["message"].as_str().unwrap();
    assert!(m.contains("600 tokens") && m.contains("512"), "{m}");
    // Ids outside the vocabulary, an empty prompt, a chat with nothing to say.
    let r = c
        .post(
            "/v1/completions",
            &json!({"model": "tiny", "prompt": [1, 256]}),
        )
        .unwrap();
    assert!(r.status == 400 && r.body.contains("256"), "{}", r.body);
    let r = c
        .post("/v1/completions", &json!({"model": "tiny", "prompt": ""}))
        .unwrap();
    assert!(r.status == 400 && r.body.contains("empty"), "{}", r.body);
    let r = c
        .post(
            "/v1/chat/completions",
            &json!({"model": "tiny", "messages": []}),
        )
        .unwrap();
    assert_eq!(r.status, 400, "{}", r.body);
    // Over the body limit: 413.
    let big = format!(r#"{{"model": "tiny", "prompt": "{}"}}"#, "a".repeat(5000));
    let r = post(big.as_bytes());
    assert_eq!(r.status, 413, "{}", r.body);
    assert_eq!(error(413, &r.body)["code"], "request_too_large");
    // Unknown paths and methods.
    let r = c.get("/v1/embeddings").unwrap();
    assert_eq!(r.status, 404);
    error(404, &r.body);
    assert_eq!(c.get("/v1/completions").unwrap().status, 405);
    // The server is still well, and each refusal was one log line.
    let r = c
        .post(
            "/v1/completions",
            &json!({"model": "tiny", "prompt": [1, 2, 3], "max_tokens": 3, "temperature": 0}),
        )
        .unwrap();
    assert_eq!(r.status, 200, "{}", r.body);
    // Greedy: without `temperature` the request samples at OpenAI's default of 1 with the
    // server's seed, which starts from the clock, so once in a while the tiny model drew its
    // end-of-sequence token first and the answer had 1 token (seen once in CI).
    assert_eq!(
        r.json().unwrap()["usage"]["completion_tokens"],
        3,
        "{}\nlog:\n{}",
        r.body,
        server.log()
    );
    server.wait_for_log(&["status=413", "endpoint=/v1/completions"]);
    server.wait_for_log(&["status=404", "endpoint=/v1/embeddings"]);
    let m = server.metrics();
    assert_eq!(metric(&m, "kiln_requests_total{outcome=\"401\"}"), 4.0);
    assert_eq!(metric(&m, "kiln_requests_total{outcome=\"413\"}"), 1.0);
}

#[test]
fn a_client_that_disconnects_mid_stream_frees_its_slot() {
    // One slot: the second request runs only once the first one's slot is free.
    let server = Server::start(tiny_long(), &["--max-batch", "1", "--ctx", "16384"]);
    let c = server.client();
    let gone = c
        .stream_until(
            "/v1/completions",
            &json!({"model": "tiny", "prompt": [1, 2, 3], "max_tokens": 16000, "stream": true,
                    "ignore_eos": true, "temperature": 0, "return_token_ids": true}),
            |chunks| chunks < 3,
        )
        .unwrap();
    assert_eq!(gone.chunks.len(), 3);
    let id = gone.id().unwrap().to_string();
    drop(gone);
    let line = server.wait_for_log(&[&id, "finish_reason=cancelled"]);
    let generated: usize = line
        .split("completion_tokens=")
        .nth(1)
        .and_then(|s| s.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .unwrap();
    assert!(
        generated < 15000,
        "cancelled only after {generated} tokens: {line}"
    );
    let (ids, reason) = greedy(&c, &[4, 5, 6], 5, true, true);
    assert_eq!((ids.len(), reason.as_str()), (5, "length"));
    let m = server.metrics();
    assert_eq!(
        metric(&m, "kiln_requests_total{outcome=\"cancelled\"}"),
        1.0
    );
    // The last sequence leaves its slot at the step after its last token.
    poll(
        Duration::from_secs(10),
        Duration::from_millis(10),
        || (metric(&server.metrics(), "kiln_batch_occupancy") == 0.0).then_some(()),
        || "a slot stays taken".into(),
    );
}

#[test]
fn a_flood_past_the_queue_gets_429_at_once() {
    // One running, two waiting: the rest of 16 simultaneous requests are refused.
    let server = Server::start(tiny_long(), &["--max-batch", "1", "--max-queue", "2"]);
    let barrier = Arc::new(Barrier::new(16));
    let results: Vec<(u16, Duration, String)> = std::thread::scope(|s| {
        let hs: Vec<_> = (0..16)
            .map(|i| {
                let (barrier, base) = (barrier.clone(), &server.base);
                s.spawn(move || {
                    let c = Client::new(base);
                    barrier.wait();
                    let t = Instant::now();
                    let r = c
                        .post(
                            "/v1/completions",
                            &json!({"model": "tiny", "prompt": prompt(i, 8), "max_tokens": 4000,
                                    "ignore_eos": true, "temperature": 0}),
                        )
                        .unwrap();
                    (r.status, t.elapsed(), r.body)
                })
            })
            .collect();
        hs.into_iter().map(|h| h.join().unwrap()).collect()
    });
    let ok: Vec<_> = results.iter().filter(|r| r.0 == 200).collect();
    let refused: Vec<_> = results.iter().filter(|r| r.0 == 429).collect();
    assert_eq!(ok.len() + refused.len(), 16, "{results:?}");
    assert!(
        ok.len() >= 3,
        "the running and queued ones complete: {results:?}"
    );
    assert!(refused.len() >= 8, "a flood is refused: {results:?}");
    for r in &ok {
        let v: Value = serde_json::from_str(&r.2).unwrap();
        assert_eq!(v["usage"]["completion_tokens"], 4000);
    }
    for r in &refused {
        let v: Value = serde_json::from_str(&r.2).unwrap();
        assert_eq!(v["error"]["code"], "queue_full", "{}", r.2);
    }
    // "At once": a refusal does not wait for a generation.
    let slowest_refusal = refused.iter().map(|r| r.1).max().unwrap();
    let slowest_ok = ok.iter().map(|r| r.1).max().unwrap();
    assert!(
        slowest_refusal < slowest_ok,
        "a 429 took {slowest_refusal:?}, longer than a whole generation ({slowest_ok:?})"
    );
    assert_eq!(
        metric(&server.metrics(), "kiln_requests_total{outcome=\"429\"}"),
        refused.len() as f64
    );
}

#[test]
fn sigterm_with_requests_in_flight_finishes_or_cancels_them_and_exits_0() {
    let mut server = Server::start(
        tiny_long(),
        &[
            "--max-batch",
            "2",
            "--shutdown-grace",
            "1",
            "--ctx",
            "16384",
        ],
    );
    // Two short requests can finish within the grace period; two very long ones cannot.
    let streaming = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let results: Vec<Streamed> = std::thread::scope(|s| {
        let hs: Vec<_> = [40usize, 40, 15000, 15000]
            .into_iter()
            .enumerate()
            .map(|(i, n)| {
                let (streaming, base) = (streaming.clone(), &server.base);
                s.spawn(move || {
                    let c = Client::new(base);
                    let counted = std::cell::Cell::new(false);
                    let body = json!({"model": "tiny", "prompt": prompt(i as u32, 5), "max_tokens": n,
                                      "stream": true, "ignore_eos": true, "return_token_ids": true});
                    c.stream_until("/v1/completions", &body, |chunks| {
                        if chunks > 0 && !counted.replace(true) {
                            streaming.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                        }
                        true
                    })
                    .unwrap()
                })
            })
            .collect();
        // Both slots generate and the server holds all four requests (queued, or admitted to
        // a slot: each prompt is 5 tokens), so that none is still connecting when it stops
        // accepting: stop the server.
        let held = || {
            let m = server.metrics();
            metric(&m, "kiln_queue_depth") + metric(&m, "kiln_prompt_tokens_total") / 5.0
        };
        poll(
            Duration::from_secs(60),
            Duration::from_millis(5),
            || {
                (streaming.load(std::sync::atomic::Ordering::SeqCst) >= 2 && held() >= 4.0)
                    .then_some(())
            },
            || "no streams started".into(),
        );
        unsafe { libc::kill(server.child.id() as i32, libc::SIGTERM) };
        hs.into_iter().map(|h| h.join().unwrap()).collect()
    });
    let t = Instant::now();
    let status = loop {
        if let Some(s) = server.child.try_wait().unwrap() {
            break s;
        }
        assert!(
            t.elapsed() < Duration::from_secs(30),
            "still running 30 s after SIGTERM; log:\n{}",
            server.log()
        );
        std::thread::sleep(Duration::from_millis(20));
    };
    assert_eq!(status.code(), Some(0), "log:\n{}", server.log());
    for (i, r) in results.iter().enumerate() {
        let cancelled = r
            .error
            .as_ref()
            .is_some_and(|e| e["error"]["code"] == "shutting_down");
        assert!(
            r.complete() || cancelled,
            "stream {i} neither finished nor was cancelled: {r:?}"
        );
        if i >= 2 {
            assert!(cancelled, "stream {i} (15000 tokens) cannot finish in 1 s");
        }
    }
    assert!(
        server.log().contains("kiln serve: stopped"),
        "{}",
        server.log()
    );
    assert!(
        Client::new(&server.base).get("/health").is_err(),
        "nothing listens any more"
    );
}

#[test]
fn a_bounded_load_run_loses_and_duplicates_nothing() {
    let server = Server::start(tiny(), &["--max-batch", "8", "--max-queue", "64"]);
    let next = Arc::new(Mutex::new(0u32));
    let t = Instant::now();
    let results: Vec<(u32, Streamed)> = std::thread::scope(|s| {
        let hs: Vec<_> = (0..16)
            .map(|_| {
                let (next, base) = (next.clone(), &server.base);
                s.spawn(move || {
                    let c = Client::new(base);
                    let mut mine = vec![];
                    loop {
                        let i = {
                            let mut n = next.lock().unwrap();
                            if *n == 200 {
                                break;
                            }
                            *n += 1;
                            *n - 1
                        };
                        let body = json!({"model": "tiny", "prompt": prompt(i, 4 + (i as usize % 29)),
                            "max_tokens": 1 + i % 40, "stream": true, "ignore_eos": true,
                            "temperature": if i % 3 == 0 { 0.0 } else { 0.8 }, "seed": i,
                            "return_token_ids": true, "stream_options": {"include_usage": true}});
                        mine.push((i, c.stream("/v1/completions", &body).unwrap()));
                    }
                    mine
                })
            })
            .collect();
        hs.into_iter().flat_map(|h| h.join().unwrap()).collect()
    });
    let wall = t.elapsed();
    assert_eq!(results.len(), 200, "none lost");
    let mut ids: Vec<&str> = results.iter().map(|(_, r)| r.id().unwrap()).collect();
    ids.sort();
    ids.dedup();
    assert_eq!(ids.len(), 200, "no request id twice");
    let mut latency = vec![];
    let mut ttft = vec![];
    for (i, r) in &results {
        assert!(r.complete(), "request {i} incomplete: {r:?}");
        let n = 1 + (*i as usize % 40);
        assert_eq!(r.token_ids().len(), n, "request {i}: every token, once");
        assert_eq!(r.usage().unwrap()["completion_tokens"], n);
        assert_eq!(r.finish_reason().unwrap(), "length");
        let first = r.tokens()[0].0;
        let last = r.chunks.last().unwrap().0;
        ttft.push((first - r.started).as_secs_f64() * 1e3);
        latency.push((last - r.started).as_secs_f64() * 1e3);
    }
    // Straight to stderr (not captured by the test harness): the numbers show in every run.
    use std::io::Write;
    let _ = writeln!(
        std::io::stderr(),
        "serve load run: 200 requests from 16 clients in {:.2} s: latency p50 {:.1} ms p99 {:.1} ms; time to first token p50 {:.1} ms p99 {:.1} ms",
        wall.as_secs_f64(),
        percentile(&latency, 50.0),
        percentile(&latency, 99.0),
        percentile(&ttft, 50.0),
        percentile(&ttft, 99.0)
    );
    let m = server.metrics();
    assert_eq!(metric(&m, "kiln_requests_total{outcome=\"length\"}"), 200.0);
    assert_eq!(metric(&m, "kiln_queue_depth"), 0.0);
    // One log line per request, naming it.
    let t = Instant::now();
    loop {
        let log = server.log();
        let lines: Vec<&str> = log
            .lines()
            .filter(|l| l.contains("request id=cmpl-") && l.contains("finish_reason=length"))
            .collect();
        if lines.len() == 200 {
            for id in &ids {
                assert_eq!(
                    lines
                        .iter()
                        .filter(|l| l.contains(&format!("id={id} ")))
                        .count(),
                    1,
                    "{id}"
                );
            }
            break;
        }
        assert!(
            lines.len() < 200 && t.elapsed() < Duration::from_secs(10),
            "{log}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn health_is_503_until_the_model_is_loaded() {
    // Compiled afresh (a few seconds): the socket answers before the model is ready.
    let server = Server::spawn(tiny(), &["--no-cache"]);
    let c = server.client();
    let r = c.get("/health").unwrap();
    assert_eq!(
        (r.status, r.json().unwrap()["status"].clone()),
        (503, json!("loading"))
    );
    let r = c
        .post(
            "/v1/completions",
            &json!({"model": "tiny", "prompt": [1, 2], "max_tokens": 2}),
        )
        .unwrap();
    assert_eq!(r.status, 503, "{}", r.body);
    assert_eq!(r.json().unwrap()["error"]["code"], "model_loading");
    poll(
        Duration::from_secs(180),
        Duration::from_millis(50),
        || (c.get("/health").unwrap().status == 200).then_some(()),
        || server.log(),
    );
    let r = c
        .post(
            "/v1/completions",
            &json!({"model": "tiny", "prompt": [1, 2], "max_tokens": 2}),
        )
        .unwrap();
    assert_eq!(r.status, 200, "{}", r.body);
}

#[test]
fn bench_serve_writes_its_rows_and_plot() {
    let out = tempfile::tempdir().unwrap();
    let run = Command::new(env!("CARGO_BIN_EXE_kiln"))
        .args(["bench", "serve", "--model"])
        .arg(tiny())
        .args(["--streams", "1,3", "--prompt-len", "8", "--tokens", "6"])
        .args(["--threads", "1", "--out"])
        .arg(out.path())
        .env("KILN_CACHE_DIR", kernel_cache())
        .env_remove("KILN_COMPILE_THREADS")
        .env_remove("KILN_REMOTE_CACHE")
        .output()
        .unwrap();
    assert!(
        run.status.success(),
        "{}",
        String::from_utf8_lossy(&run.stderr)
    );
    let doc: Value =
        serde_json::from_slice(&std::fs::read(out.path().join("serve.json")).unwrap()).unwrap();
    let rows = doc["rows"].as_array().unwrap();
    assert_eq!(rows.len(), 2);
    for (row, streams) in rows.iter().zip([1, 3]) {
        assert_eq!(row["streams"], streams);
        assert_eq!(row["tokens"], 6 * streams);
        for k in [
            "aggregate_tokens_per_s",
            "ttft_ms_p50",
            "ttft_ms_p99",
            "itl_ms_p50",
            "itl_ms_p99",
        ] {
            assert!(row[k].as_f64().is_some_and(|v| v >= 0.0), "{k}: {row}");
        }
        assert!(row["aggregate_tokens_per_s"].as_f64().unwrap() > 0.0);
    }
    let svg = std::fs::read_to_string(out.path().join("serve.svg")).unwrap();
    assert!(svg.starts_with("<svg"), "{}", &svg[..100.min(svg.len())]);
}

#[test]
fn bench_serve_drives_a_running_server_at_url() {
    // What scripts/llama-compare.sh does to llama-server, here against a real `kiln serve`:
    // the load goes to the server at --url (its own request counter shows every stream), no
    // child is started, and the rows are the same as with a child.
    let server = Server::start(tiny(), &["--max-batch", "4"]);
    let out = tempfile::tempdir().unwrap();
    let run = Command::new(env!("CARGO_BIN_EXE_kiln"))
        .args(["bench", "serve", "--url", &server.base, "--model"])
        .arg(tiny())
        .args([
            "--streams",
            "1,3",
            "--prompt-len",
            "8",
            "--tokens",
            "6",
            "--out",
        ])
        .arg(out.path())
        .env_remove("KILN_REMOTE_CACHE")
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&run.stderr);
    assert!(run.status.success(), "{stderr}");
    assert!(!stderr.contains("loading the model"), "{stderr}");
    let doc: Value =
        serde_json::from_slice(&std::fs::read(out.path().join("serve.json")).unwrap()).unwrap();
    assert_eq!(doc["server"], format!("the server at {}", server.base));
    assert_eq!(
        doc["model"], "tiny",
        "the name the server lists at /v1/models"
    );
    assert!(doc["threads"].is_null(), "{doc}");
    let rows = doc["rows"].as_array().unwrap();
    assert_eq!(rows.len(), 2);
    for (row, streams) in rows.iter().zip([1, 3]) {
        assert_eq!(row["streams"], streams);
        assert_eq!(row["tokens"], 6 * streams);
        assert!(
            row["aggregate_tokens_per_s"].as_f64().unwrap() > 0.0,
            "{row}"
        );
        assert!(
            row["itl_ms_p50"].as_f64().is_some_and(|v| v >= 0.0),
            "{row}"
        );
    }
    // The warm-up stream, then 1 and 3: five requests that ran to max_tokens. The driver
    // counts a request just after its last chunk is sent, so the bench may exit first.
    poll(
        Duration::from_secs(10),
        Duration::from_millis(5),
        || {
            let n = metric(&server.metrics(), "kiln_requests_total{outcome=\"length\"}");
            (n == 5.0).then_some(())
        },
        || format!("not five length requests:\n{}", server.metrics()),
    );
}

#[test]
fn bench_serve_url_errors_name_the_url() {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port(); // bound, then closed: nothing listens there
    let url = format!("http://127.0.0.1:{port}");
    let out = tempfile::tempdir().unwrap();
    let run = |extra: &[&str]| {
        Command::new(env!("CARGO_BIN_EXE_kiln"))
            .args(["bench", "serve", "--url", &url, "--model"])
            .arg(tiny())
            .args(extra)
            .arg("--out")
            .arg(out.path())
            .output()
            .unwrap()
    };
    let r = run(&[]);
    let stderr = String::from_utf8_lossy(&r.stderr);
    assert!(!r.status.success());
    assert!(
        stderr.contains(&format!("--url {url}: no server answers there")),
        "{stderr}"
    );
    // The server's threads are its own: asking for them is an error, not silently ignored.
    let r = run(&["--threads", "2"]);
    let stderr = String::from_utf8_lossy(&r.stderr);
    assert!(!r.status.success());
    assert!(stderr.contains("cannot be used with"), "{stderr}");
}
