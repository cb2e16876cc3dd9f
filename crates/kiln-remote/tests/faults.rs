//! What the remote tier does when things go wrong, against real servers: a store killed in the
//! middle of a compile, corrupt and foreign entries, wrong passwords, a server that never
//! answers, expiry. The compile is the real pipeline (qwen3-0.6b on the CPU backend).

use kiln_compile::cache::{decode, encode};
use kiln_compile::{
    compile, CompileOptions, CompileReport, Event, KernelCache, Observer, RemoteCache, RemoteError,
    RemoteStore,
};
use kiln_cpu::CpuBackend;
use kiln_models::{build_graph, GraphOptions, ModelSource};
use kiln_remote::testing::{services, RedisServer};
use kiln_remote::{namespace, open, open_cache, Config, Store};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

fn graph() -> &'static kiln_ir::Graph {
    static G: OnceLock<kiln_ir::Graph> = OnceLock::new();
    G.get_or_init(|| {
        let c = ModelSource::parse("qwen3-0.6b").unwrap().config().unwrap();
        build_graph(&c, GraphOptions::default()).unwrap()
    })
}

/// Records warnings and rejected entries; optionally kills a server after the n-th kernel
/// fetched from the remote, or the n-th unit compiled.
#[derive(Default)]
struct Watch {
    warnings: Mutex<Vec<String>>,
    corrupt: Mutex<Vec<String>>,
    fetched: AtomicUsize,
    built: AtomicUsize,
    kill_after_fetched: Option<usize>,
    kill_after_built: Option<usize>,
    server: Mutex<Option<RedisServer>>,
}

impl Observer for Watch {
    fn event(&self, e: &Event<'_>) {
        let kill = match e {
            Event::Warning { message } => {
                self.warnings.lock().unwrap().push(message.to_string());
                false
            }
            Event::CacheCorrupt { reason, .. } => {
                self.corrupt.lock().unwrap().push(reason.to_string());
                false
            }
            Event::RemoteFetch { outcome, .. } if *outcome == "found" => {
                Some(self.fetched.fetch_add(1, Ordering::SeqCst) + 1) == self.kill_after_fetched
            }
            Event::JobFinished { .. } => {
                Some(self.built.fetch_add(1, Ordering::SeqCst) + 1) == self.kill_after_built
            }
            _ => false,
        };
        if kill {
            if let Some(s) = self.server.lock().unwrap().as_mut() {
                s.kill();
            }
        }
    }
}

/// One machine: a fresh local cache, the remote tier, the pipeline.
fn machine(remote: &RemoteCache, watch: &Watch) -> (CompileReport, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let opts = CompileOptions {
        threads: 2,
        cache: Some(KernelCache::open(dir.path()).unwrap()),
        remote: Some(remote),
        observer: Some(watch),
        ..Default::default()
    };
    let report = compile(graph(), &CpuBackend::default(), &opts)
        .expect("a remote never fails a compile")
        .report;
    (report, dir)
}

fn config() -> Config {
    Config {
        // Generous: the test machine is loaded; the fault tests measure their own bounds.
        connect_timeout: Duration::from_secs(10),
        op_timeout: Duration::from_secs(20),
        // The S3 endpoint and credentials scripts/test.sh exported for its moto server.
        ..Config::from_env().expect("the KILN_REMOTE_CACHE_* and AWS_* variables")
    }
}

#[test]
fn a_remote_killed_mid_compile_costs_one_warning_and_nothing_else() {
    let Some(server) = RedisServer::start(None) else {
        return;
    };
    let url = server.url();

    // 1. Machine A compiles cold; the server dies after its first unit is built: the rest of
    //    the uploads fail, the compile does not.
    let a = Watch {
        kill_after_built: Some(1),
        ..Default::default()
    };
    *a.server.lock().unwrap() = Some(server);
    let remote = open_cache(&url, &config()).unwrap();
    let start = Instant::now();
    let (ra, _) = machine(&remote, &a);
    assert!(start.elapsed() < Duration::from_secs(120));
    assert_eq!(ra.compiled, ra.kernels_unique);
    let warnings = a.warnings.lock().unwrap().clone();
    assert_eq!(warnings.len(), 1, "{warnings:?}");
    assert!(
        warnings[0].contains("unavailable") && warnings[0].contains(&url),
        "{warnings:?}"
    );
    assert!(ra.remote_errors >= 1 && remote.is_disabled());
    drop(remote);

    // 2. A fresh server, filled by machine A2; machine B fetches, and the server dies after
    //    the 4th kernel unit came back (after the runtime's units): the fetches still in flight fail fast, the breaker skips
    //    the rest, B compiles them itself. B fetches two units at a time, so that units are
    //    still unasked when the server dies whatever the unit count (qwen3 is 11 units since
    //    fusion; with the default 8 fetch threads all 11 could be answered before the kill).
    let server = RedisServer::start(None).unwrap();
    let url = server.url();
    let filled = open_cache(&url, &config()).unwrap();
    let (ra2, _) = machine(&filled, &Watch::default());
    assert_eq!(ra2.artifact_digest, ra.artifact_digest);
    assert!(ra2.remote_bytes_up > 0);
    drop(filled);
    // The CPU runtime's parts are units too, fetched first and not counted as kernel hits.
    let runtime_units = ra.units.iter().filter(|u| u.runtime).count();
    let b = Watch {
        kill_after_fetched: Some(4 + runtime_units),
        ..Default::default()
    };
    *b.server.lock().unwrap() = Some(server);
    let mut two_at_a_time = config();
    two_at_a_time.tier.fetch_threads = 2;
    let remote = open_cache(&url, &two_at_a_time).unwrap();
    let start = Instant::now();
    let (rb, _) = machine(&remote, &b);
    assert!(start.elapsed() < Duration::from_secs(120));
    assert_eq!(rb.artifact_digest, ra.artifact_digest);
    assert!(
        rb.remote_hits >= 4 && rb.compiled > 0,
        "{} hits, {} compiled",
        rb.remote_hits,
        rb.compiled
    );
    assert_eq!(rb.remote_hits + rb.compiled, rb.kernels_unique);
    let warnings = b.warnings.lock().unwrap().clone();
    assert_eq!(warnings.len(), 1, "{warnings:?}");
}

#[test]
fn corrupt_foreign_and_hollow_entries_are_rejected_rebuilt_and_overwritten() {
    let Some(s) = services() else { return };
    for url in [
        namespace(&s.redis, "corrupt"),
        format!("file://{}", tempfile::tempdir().unwrap().keep().display()),
    ] {
        let remote = open_cache(&url, &config()).unwrap();
        let (ra, _) = machine(&remote, &Watch::default());
        let store = open(&url, &config()).unwrap();
        let keys = store.list().unwrap();
        assert_eq!(keys.len(), ra.compiler_invocations, "{url}");
        let entry = |i: usize| store.get("cpu", &keys[i].1).unwrap().unwrap();
        let (k0, k1, k2, k3, k4) = (&keys[0].1, &keys[1].1, &keys[2].1, &keys[3].1, &keys[4].1);
        // Garbage; another unit's whole entry; a flipped bit; a well-formed entry for k3 whose
        // artifact is another unit's (right header and checksum, wrong symbols).
        let mut flipped = entry(2);
        *flipped.last_mut().unwrap() ^= 1;
        let (h3, _) = decode(&entry(3), "cpu", k3)
            .map(|(h, p)| (h, p.to_vec()))
            .unwrap();
        let other = decode(&entry(4), "cpu", k4).unwrap().1.to_vec();
        let names: Vec<&str> = h3.kernels.iter().map(String::as_str).collect();
        let hollow = encode("cpu", k3, &names, &other, 1);
        store.put("cpu", k0, b"not an entry").unwrap();
        store.put("cpu", k1, &entry(4)).unwrap();
        store.put("cpu", k2, &flipped).unwrap();
        store.put("cpu", k3, &hollow).unwrap();

        let b = Watch::default();
        let remote = open_cache(&url, &config()).unwrap();
        let (rb, _) = machine(&remote, &b);
        let reasons = b.corrupt.lock().unwrap().clone();
        assert_eq!(reasons.len(), 4, "{reasons:?}");
        for needle in [
            "not a kiln cache entry",
            "filed under",
            "checksum mismatch",
            "does not define kernel",
        ] {
            assert!(
                reasons.iter().any(|r| r.contains(needle)),
                "{needle}: {reasons:?}"
            );
        }
        assert!(
            b.warnings.lock().unwrap().is_empty(),
            "a data problem does not trip the breaker"
        );
        assert_eq!(rb.remote_errors, 0);
        assert_eq!(rb.artifact_digest, ra.artifact_digest);
        assert_eq!(rb.compiled + rb.remote_hits, rb.kernels_unique);
        // The four damaged entries are rebuilt: kernels or the CPU runtime's parts (which the
        // content hashes can put anywhere in the listing), one compiler invocation each.
        assert!(rb.compiler_invocations >= 4, "{}", rb.compiler_invocations);
        // Rebuilt and overwritten: every entry is good again.
        for k in [k0, k1, k2, k3] {
            let bytes = store.get("cpu", k).unwrap().unwrap();
            assert!(decode(&bytes, "cpu", k).is_ok(), "{k} in {url}");
        }
        let (rc, _) = machine(&open_cache(&url, &config()).unwrap(), &Watch::default());
        assert_eq!(rc.remote_hits, rc.kernels_unique, "{url}");
    }
}

#[test]
fn passwords_never_show_and_a_wrong_one_turns_the_remote_off() {
    let Some(server) = RedisServer::start(Some("s3cret-pw")) else {
        return;
    };
    let good = format!("redis://:s3cret-pw@127.0.0.1:{}/0", server.port);
    let store = open(&good, &config()).unwrap();
    store.put("cpu", "abcd", b"x").unwrap();
    assert_eq!(
        store.get("cpu", "abcd").unwrap().as_deref(),
        Some(&b"x"[..])
    );
    assert!(!store.location().contains("s3cret"), "{}", store.location());

    let bad = format!("redis://:wrong-pw-123@127.0.0.1:{}/0", server.port);
    let store = open(&bad, &config()).unwrap();
    let err = store.get("cpu", "abcd").unwrap_err();
    // The server's error reply, told apart from a dead server; no password in any form.
    assert!(matches!(err, RemoteError::Refused { .. }), "{err:?}");
    assert!(
        !format!("{err} {err:?}").contains("wrong-pw-123"),
        "{err:?}"
    );
    let tier = RemoteCache::new(Box::new(store), Default::default());
    let s = tier.session();
    s.fetch_many("cpu", &["abcd"], &|_| {});
    let w = tier.take_warning().expect("one warning");
    assert!(!w.contains("wrong-pw-123") && w.contains("***"), "{w}");
}

#[test]
fn a_server_that_never_answers_costs_one_timeout() {
    let Some(_) = services() else { return };
    // Accepts connections (the kernel does, into the backlog) and never says a word.
    let hole = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("redis://{}/0", hole.local_addr().unwrap());
    let config = Config {
        connect_timeout: Duration::from_millis(500),
        op_timeout: Duration::from_millis(500),
        ..Config::default()
    };
    let err = open(&url, &config).unwrap().get("cpu", "abcd").unwrap_err();
    assert!(matches!(err, RemoteError::Timeout { .. }), "{err:?}");
    // Nothing listening at all is another cause: refused at once.
    let refused = format!("redis://127.0.0.1:{}/0", kiln_remote::testing::free_port());
    let err = open(&refused, &config)
        .unwrap()
        .get("cpu", "abcd")
        .unwrap_err();
    assert!(matches!(err, RemoteError::Unreachable { .. }), "{err:?}");
    let tier = open_cache(&url, &config).unwrap();
    let keys: Vec<String> = (0..32).map(|i| format!("{i:04x}")).collect();
    let keys: Vec<&str> = keys.iter().map(String::as_str).collect();
    let start = Instant::now();
    let s = tier.session();
    s.fetch_many("cpu", &keys, &|_| {});
    let waited = start.elapsed();
    // The fetch threads each wait out one timeout at most, together, then the breaker answers.
    assert!(
        waited >= Duration::from_millis(450) && waited < Duration::from_secs(5),
        "{waited:?}"
    );
    assert!(tier.is_disabled());
    assert!(tier.take_warning().unwrap().contains("timed out"));
}

#[test]
fn redis_entries_expire_after_the_ttl() {
    let Some(s) = services() else { return };
    let url = namespace(&s.redis, "ttl");
    let remote = open(
        &url,
        &Config {
            ttl: Some(Duration::from_millis(1000)),
            ..config()
        },
    )
    .unwrap();
    remote.put("cpu", "aa11", b"entry").unwrap();
    let Store::Redis(redis) = &remote.store else {
        panic!("a redis store")
    };
    let left = redis.ttl_ms("cpu", "aa11").unwrap().expect("an expiry");
    assert!(left > 0 && left <= 1000, "{left}");
    std::thread::sleep(Duration::from_millis(1500));
    assert_eq!(remote.get("cpu", "aa11").unwrap(), None);
}

#[test]
fn a_missing_bucket_is_named() {
    let Some(_) = services() else { return };
    let remote = open("s3://no-such-bucket-kiln/x", &config()).unwrap();
    let err = remote.put("cpu", "aa11", b"entry").unwrap_err();
    assert!(
        matches!(
            err,
            RemoteError::Refused {
                status: Some(404),
                ..
            }
        ),
        "{err:?}"
    );
    let err = format!("{err} {err:?}");
    assert!(
        err.contains("NoSuchBucket") && err.contains("no-such-bucket-kiln"),
        "{err}"
    );
    assert!(!err.contains("kiln-test-secret"), "{err}");
}
