//! Sharing compiled kernels across machines, end to end through the `kiln` binary, against the
//! real servers `scripts/test.sh` starts (redis-server, moto's S3 server, distccd on loopback).
//! Each "machine" is a `kiln` process with its own fresh local cache dir; each test uses its
//! own key prefix on the shared servers.

use kiln_remote::namespace;
use kiln_remote::testing::{services, Services};
use serde_json::Value;
use std::path::Path;
use std::process::{Child, Command, Output, Stdio};
use std::sync::OnceLock;

const MODEL: &str = "qwen3-0.6b";

fn kiln(cache: &Path, args: &[&str]) -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_kiln"));
    c.args(args)
        .env("KILN_CACHE_DIR", cache)
        .env_remove("KILN_COMPILE_THREADS")
        .env_remove("KILN_REMOTE_CACHE")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    c
}

/// `kiln compile --model qwen3-0.6b --json` on a machine whose local cache is `cache`.
fn compile(cache: &Path, remote: Option<&str>, extra: &[&str]) -> Child {
    let mut args = vec!["compile", "--model", MODEL, "--json"];
    if let Some(url) = remote {
        args.extend(["--remote-cache", url]);
    }
    args.extend(extra);
    kiln(cache, &args).spawn().expect("run kiln")
}

/// The report, and stderr.
fn report(child: Child) -> (Value, String) {
    let out: Output = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr).to_string();
    assert!(out.status.success(), "kiln failed: {stderr}");
    let v = serde_json::from_slice(&out.stdout).expect("one JSON report");
    (v, stderr)
}

/// A cold compile on a machine of its own, no remote: the digest every other case must match.
fn reference() -> &'static Value {
    static R: OnceLock<Value> = OnceLock::new();
    R.get_or_init(|| {
        let dir = tempfile::tempdir().unwrap();
        report(compile(dir.path(), None, &["--no-cache"])).0
    })
}

fn n(v: &Value, field: &str) -> u64 {
    v[field]
        .as_u64()
        .unwrap_or_else(|| panic!("{field} in {v}"))
}

fn warnings(stderr: &str) -> Vec<&str> {
    stderr
        .lines()
        .filter(|l| l.starts_with("warning:"))
        .collect()
}

/// Machine A compiles cold and uploads; machine B, another fresh dir, gets every kernel from
/// the remote and compiles nothing; a third run on B's dir is all local hits.
fn a_then_b(url: &str) {
    let (a_dir, b_dir) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let (a, a_err) = report(compile(a_dir.path(), Some(url), &[]));
    let unique = n(&a, "kernels_unique");
    assert_eq!(n(&a, "compiled"), unique, "{a}");
    assert_eq!((n(&a, "remote_hits"), n(&a, "remote_misses")), (0, unique));
    assert!(
        n(&a, "remote_bytes_up") > 0 && n(&a, "remote_errors") == 0,
        "{a}"
    );
    assert_eq!(
        a["remote"]["uploads"], a["compiler_invocations"],
        "one entry per unit"
    );
    assert!(warnings(&a_err).is_empty(), "{a_err}");

    let (b, b_err) = report(compile(b_dir.path(), Some(url), &[]));
    assert_eq!(n(&b, "compiled"), 0, "{b}");
    assert_eq!(n(&b, "remote_hits"), unique, "{b}");
    assert_eq!(n(&b, "cache_hits"), unique);
    assert_eq!(n(&b, "remote_bytes_down"), n(&a, "remote_bytes_up"));
    assert_eq!(n(&b, "remote_bytes_up"), 0);
    assert!(warnings(&b_err).is_empty(), "{b_err}");
    for r in [&a, &b] {
        assert_eq!(r["artifact_digest"], reference()["artifact_digest"]);
    }

    // The remote's entries were stored locally on B.
    let (c, _) = report(compile(b_dir.path(), Some(url), &[]));
    assert_eq!((n(&c, "cache_hits"), n(&c, "remote_hits")), (unique, 0));
    assert_eq!(n(&c, "remote_bytes_down"), 0);
}

#[test]
fn machine_b_gets_every_kernel_from_redis() {
    let Some(s) = services() else { return };
    a_then_b(&namespace(&s.redis, "ab"));
}

#[test]
fn machine_b_gets_every_kernel_from_s3() {
    let Some(s) = services() else { return };
    a_then_b(&namespace(&s.s3, "ab"));
}

#[test]
fn machine_b_gets_every_kernel_from_a_shared_folder() {
    let Some(_) = services() else { return };
    let shared = tempfile::tempdir().unwrap();
    a_then_b(&format!("file://{}", shared.path().display()));
}

/// Four machines compile the same program at once, all uploading the same keys.
fn four_writers(url: &str) {
    let dirs: Vec<_> = (0..4).map(|_| tempfile::tempdir().unwrap()).collect();
    let kids: Vec<Child> = dirs
        .iter()
        .map(|d| compile(d.path(), Some(url), &["--threads", "1"]))
        .collect();
    for k in kids {
        let (r, err) = report(k);
        assert_eq!(r["artifact_digest"], reference()["artifact_digest"]);
        assert_eq!(n(&r, "remote_errors"), 0, "{err}");
    }
    // Whatever interleaving won, every entry is whole: a fifth machine gets everything.
    let fifth = tempfile::tempdir().unwrap();
    let (r, err) = report(compile(fifth.path(), Some(url), &[]));
    assert_eq!(n(&r, "compiled"), 0, "{err}");
    assert_eq!(n(&r, "remote_hits"), n(&r, "kernels_unique"));
    assert_eq!(r["artifact_digest"], reference()["artifact_digest"]);
    assert!(warnings(&err).is_empty(), "{err}");
    // And the store holds exactly one entry per unit, each good (pull checks every one).
    let sixth = tempfile::tempdir().unwrap();
    let pull = kiln(
        sixth.path(),
        &["cache", "pull", "--remote-cache", url, "--json"],
    )
    .output()
    .unwrap();
    assert!(
        pull.status.success(),
        "{}",
        String::from_utf8_lossy(&pull.stderr)
    );
    let pull: Value = serde_json::from_slice(&pull.stdout).unwrap();
    assert_eq!(
        pull["listed"],
        reference()["compiler_invocations"],
        "{pull}"
    );
    assert_eq!(pull["copied"], pull["listed"], "{pull}");
    assert_eq!(pull["rejected"], 0, "{pull}");
}

#[test]
fn four_concurrent_writers_on_redis() {
    let Some(s) = services() else { return };
    four_writers(&namespace(&s.redis, "writers"));
}

#[test]
fn four_concurrent_writers_on_s3() {
    let Some(s) = services() else { return };
    four_writers(&namespace(&s.s3, "writers"));
}

#[test]
fn three_shards_build_everything_once_then_a_fourth_machine_builds_nothing() {
    let Some(s) = services() else { return };
    let url = namespace(&s.redis, "shards");
    let dirs: Vec<_> = (0..3).map(|_| tempfile::tempdir().unwrap()).collect();
    let kids: Vec<Child> = dirs
        .iter()
        .enumerate()
        .map(|(i, d)| {
            let shard = format!("{}/3", i + 1);
            compile(d.path(), Some(&url), &["--shard", &shard, "--threads", "1"])
        })
        .collect();
    let shards: Vec<Value> = kids.into_iter().map(|k| report(k).0).collect();
    let unique = n(&shards[0], "kernels_unique");
    let sum = |f: &dyn Fn(&Value) -> u64| shards.iter().map(f).sum::<u64>();
    // Each unit in exactly one shard, each shard built all of its own and nothing else.
    assert_eq!(sum(&|r| n(&r["shard"], "kernels")), unique);
    assert_eq!(sum(&|r| n(r, "compiled")), unique);
    for (i, r) in shards.iter().enumerate() {
        assert_eq!(n(&r["shard"], "index"), i as u64 + 1);
        assert_eq!(n(r, "compiled"), n(&r["shard"], "kernels"), "{r}");
        // Work is units: a shard may hold only runtime parts (no kernels) of the CPU backend.
        assert!(n(&r["shard"], "units") > 0, "every shard has work: {r}");
    }
    let fourth = tempfile::tempdir().unwrap();
    let (r, err) = report(compile(fourth.path(), Some(&url), &[]));
    assert_eq!(n(&r, "compiled"), 0, "{err}");
    assert_eq!(n(&r, "remote_hits"), unique);
    assert_eq!(r["artifact_digest"], reference()["artifact_digest"]);
}

#[test]
fn push_then_pull_moves_a_whole_cache() {
    let Some(_) = services() else { return };
    let shared = tempfile::tempdir().unwrap();
    let url = format!("file://{}", shared.path().display());
    let (a, b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let (built, _) = report(compile(a.path(), None, &[]));
    let units = n(&built, "compiler_invocations");
    let sync = |dir: &Path, verb: &str| -> Value {
        let out = kiln(dir, &["cache", verb, "--remote-cache", &url, "--json"])
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        serde_json::from_slice(&out.stdout).unwrap()
    };
    let p = sync(a.path(), "push");
    assert_eq!((n(&p, "copied"), n(&p, "present")), (units, 0), "{p}");
    let p = sync(a.path(), "push");
    assert_eq!((n(&p, "copied"), n(&p, "present")), (0, units), "{p}");
    let p = sync(b.path(), "pull");
    assert_eq!((n(&p, "copied"), n(&p, "rejected")), (units, 0), "{p}");
    let (r, _) = report(compile(b.path(), None, &[]));
    assert_eq!(n(&r, "compiled"), 0);
    assert_eq!(r["artifact_digest"], reference()["artifact_digest"]);
}

#[test]
fn an_unreachable_remote_is_one_warning_and_a_bad_url_an_error() {
    let Some(_) = services() else { return };
    // Nothing listens on this port: refused at once.
    let url = format!(
        "redis://:hunter2@127.0.0.1:{}/0",
        kiln_remote::testing::free_port()
    );
    let dir = tempfile::tempdir().unwrap();
    let (r, err) = report(compile(dir.path(), Some(&url), &[]));
    assert_eq!(r["artifact_digest"], reference()["artifact_digest"]);
    assert_eq!(warnings(&err).len(), 1, "{err}");
    assert!(
        err.contains("unavailable") && !err.contains("hunter2"),
        "{err}"
    );
    assert!(!r.to_string().contains("hunter2"), "{r}");
    assert!(n(&r, "remote_errors") >= 1);

    let out = kiln(
        dir.path(),
        &[
            "compile",
            "--model",
            MODEL,
            "--remote-cache",
            "redis://:hunter2@h/x",
        ],
    )
    .output()
    .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        err.contains("database number") && !err.contains("hunter2"),
        "{err}"
    );
}

/// `CC="distcc gcc"` against distccd on loopback, with local fallback off: every compile went
/// through the daemon, and the artifacts (and cache keys) are exactly those of plain `gcc`.
#[test]
fn distcc_compiles_every_unit_on_the_farm() {
    let Some(Services {
        distcc_hosts,
        distccd_log,
        ..
    }) = services()
    else {
        return;
    };
    let tmp = tempfile::tempdir().unwrap();
    let client_log = tmp.path().join("distcc-client.log");
    let distcc = |cache: &Path, hosts: &str| {
        let mut c = kiln(
            cache,
            &["compile", "--model", MODEL, "--json", "--threads", "2"],
        );
        c.env("CC", "distcc gcc")
            .env("DISTCC_HOSTS", hosts)
            .env("DISTCC_FALLBACK", "0")
            .env("DISTCC_LOG", &client_log)
            .env("DISTCC_DIR", tmp.path());
        c
    };
    let compiled_on_daemon = || {
        std::fs::read_to_string(&distccd_log)
            .unwrap_or_default()
            .matches("COMPILE_OK")
            .count()
    };
    let before = compiled_on_daemon();
    let (gcc_cache, gcc) = plain_gcc();
    let farm = tempfile::tempdir().unwrap();
    let (r, err) = report(distcc(farm.path(), &distcc_hosts).spawn().unwrap());
    assert_eq!(r["artifact_digest"], gcc["artifact_digest"], "{err}");
    let units = n(&r, "compiler_invocations") as usize;
    let client = std::fs::read_to_string(&client_log).unwrap();
    // The client logs the local preprocessing ("cpp ... on localhost") and the remote compile.
    let remote_jobs = client
        .lines()
        .filter(|l| l.contains("completed ok") && !l.contains("on localhost"))
        .count();
    assert_eq!(remote_jobs, units, "{client}");
    // The daemon is shared by parallel tests only through this one: its count grew by ours.
    assert!(compiled_on_daemon() - before >= units);
    assert_eq!(
        r["compiler"], gcc["compiler"],
        "the real compiler's identity"
    );
    assert!(!r["compiler"].as_str().unwrap().contains("distcc"));

    // Same identity, same keys: a cache filled by plain gcc serves a distcc machine.
    let (r, _) = report(distcc(gcc_cache, &distcc_hosts).spawn().unwrap());
    assert_eq!(n(&r, "compiled"), 0);

    // With the farm gone and fallback off, the compile fails and names what failed.
    let dead = format!("127.0.0.1:{}/2", kiln_remote::testing::free_port());
    let out = distcc(tempfile::tempdir().unwrap().path(), &dead)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "compiled without the farm: {err}");
    assert!(err.contains("kernel kiln_"), "{err}");
}

/// A local cache filled by a cold compile with `CC=gcc`, and its report.
fn plain_gcc() -> (&'static Path, &'static Value) {
    static R: OnceLock<(tempfile::TempDir, Value)> = OnceLock::new();
    let (dir, report_) = R.get_or_init(|| {
        let dir = tempfile::tempdir().unwrap();
        let mut c = kiln(dir.path(), &["compile", "--model", MODEL, "--json"]);
        c.env("CC", "gcc");
        let r = report(c.spawn().unwrap()).0;
        (dir, r)
    });
    (dir.path(), report_)
}
