//! Issue 28, defect 5: every count has a bound it can meaningfully reach, and a value past it
//! is an error naming the flag, key or variable and the bound, at once — never gigabytes
//! allocated or an abort. Each run is under `ulimit -v` and a deadline.

mod common;

use common::*;
use std::time::Duration;

const QUICK: Duration = Duration::from_secs(30);

fn tiny() -> String {
    fixture("tiny-qwen3").to_str().unwrap().to_string()
}

/// `kiln args` fails quickly with status `status`, and its stderr names every part of `says`.
fn refused(args: &[&str], status: i32, says: &[&str]) {
    let c = Case::new();
    let r = c.run(args, QUICK);
    assert!(!r.timed_out, "{args:?}: not refused at once: {r:?}");
    assert_eq!(r.status, Some(status), "{args:?}: {r:?}");
    for s in says {
        assert!(r.stderr.contains(s), "{args:?}: no {s:?} in {}", r.stderr);
    }
    assert!(entries(c.cache.path()).is_empty(), "{args:?} compiled");
}

#[test]
fn flags_past_their_bounds_are_usage_errors_naming_flag_and_bound() {
    let m = tiny();
    let run = |extra: &[&str]| {
        let mut v = vec!["run", "--model", &m, "--prompt-ids", "1,2"];
        v.extend_from_slice(extra);
        v.into_iter().map(String::from).collect::<Vec<_>>()
    };
    let compile = |extra: &[&str]| {
        let mut v = vec!["compile", "--model", &m];
        v.extend_from_slice(extra);
        v.into_iter().map(String::from).collect::<Vec<_>>()
    };
    let cases: Vec<(Vec<String>, Vec<&str>)> = vec![
        (
            compile(&["--layers", "4294967296"]),
            vec!["--layers", "1..=10000"],
        ),
        (compile(&["--layers", "0"]), vec!["--layers", "1..=10000"]),
        (
            compile(&["--shard", "1/4294967296"]),
            vec!["--shard", "N <= 65536"],
        ),
        (
            compile(&["--shard", "1/100000000"]),
            vec!["--shard", "N <= 65536"],
        ),
        (
            compile(&["--memory-budget-mb", "18446744073709551615"]),
            vec!["--memory-budget-mb", "1..=16777216"],
        ),
        (
            compile(&["--compile-timeout", "18446744073709551615"]),
            vec!["--compile-timeout", "1..=86400"],
        ),
        (
            compile(&["--threads", "4294967296"]),
            vec!["--threads", "1024"],
        ),
        (
            run(&["--max-new-tokens", "18446744073709551615"]),
            vec!["--max-new-tokens", "0..=2147483647"],
        ),
        (
            run(&["--temperature", "inf"]),
            vec!["--temperature", "finite"],
        ),
        (
            run(&["--temperature", "NaN"]),
            vec!["--temperature", "finite"],
        ),
        (run(&["--top-p", "NaN"]), vec!["--top-p", "(0, 1]"]),
        (
            vec!["bench", "compile", "--model", &m, "--repeat", "0"]
                .into_iter()
                .map(String::from)
                .collect(),
            vec!["--repeat", "1..=1000"],
        ),
        (
            vec!["bench", "compile", "--model", &m, "--shards", "4294967296"]
                .into_iter()
                .map(String::from)
                .collect(),
            vec!["--shards", "1..=65536"],
        ),
        (
            vec![
                "bench",
                "decode",
                "--model",
                &m,
                "--prompt-len",
                "4294967297",
            ]
            .into_iter()
            .map(String::from)
            .collect(),
            vec!["--prompt-len", "1..=2147483647"],
        ),
    ];
    for (args, says) in cases {
        refused(&strs(&args), 2, &says);
    }
    // Bounds that depend on the model: at run time, before compiling.
    refused(
        &strs(&run(&["--top-k", "1000000"])),
        1,
        &["--top-k", "vocabulary (256 tokens"],
    );
}

#[test]
fn config_layers_past_the_bound_are_refused_naming_the_key() {
    let (_d, dir) = model_copy("tiny-qwen3");
    let p = dir.join("config.json");
    let mut v: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&p).unwrap()).unwrap();
    v["num_hidden_layers"] = 2147483647u64.into();
    v.as_object_mut().unwrap().remove("layer_types");
    std::fs::write(&p, v.to_string()).unwrap();
    refused(
        &["compile", "--model", dir.to_str().unwrap()],
        1,
        &["num_hidden_layers", "at most 10000 layers"],
    );
}

#[test]
fn environment_settings_past_their_bounds_are_errors_naming_the_variable() {
    let m = tiny();
    let remote = tempfile::tempdir().unwrap();
    let url = format!("file://{}", remote.path().display());
    for (var, value) in [
        ("KILN_REMOTE_CACHE_FLUSH_MS", "18446744073709551615"),
        ("KILN_REMOTE_CACHE_TIMEOUT_MS", "18446744073709551615"),
        ("KILN_REMOTE_CACHE_TTL", "18446744073709551615d"),
    ] {
        let c = Case::new();
        let mut cmd = c.cmd(&["compile", "--model", &m, "--remote-cache", &url]);
        cmd.env(var, value)
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped());
        let r = finish(cmd, QUICK);
        assert_eq!(r.status, Some(1), "{var}: {r:?}");
        assert!(
            r.stderr.contains(var) && !r.stderr.contains("panicked"),
            "{var}: {}",
            r.stderr
        );
    }
}

#[test]
fn the_most_shards_cost_no_more_than_a_few() {
    // 65536 shards of a program of a few dozen units: most are empty, none is allocated.
    let c = Case::new();
    let r = c.run(
        &[
            "compile",
            "--model",
            &tiny(),
            "--shard",
            "65536/65536",
            "--json",
        ],
        QUICK,
    );
    assert!(r.ok(), "{r:?}");
    assert_eq!(r.json()["shard"]["units"], 0, "{}", r.stdout);
}
