//! Issue 28, defect 2: a failing stdout never panics. A reader that goes away (EPIPE) ends
//! kiln quietly by SIGPIPE (the shell's 141), as it ends other Unix tools; any other write
//! error (`> /dev/full`) is an error message and status 1; a closed stdout (`>&-`) is refused
//! before any work instead of losing the output and exiting 0; and a `--json` command that
//! fails prints one JSON error object on stdout.

mod common;

use common::*;
use std::io::Read;
use std::process::Stdio;
use std::time::Duration;

const DEADLINE: Duration = Duration::from_secs(120);
const SIGPIPE: i32 = 13;

/// Every command that prints on stdout, on a warm cache (`kiln cache verify` included).
fn commands() -> Vec<Vec<String>> {
    let tiny = fixture("tiny-qwen3");
    let run = run_args(&tiny);
    let mut run_json = run.clone();
    run_json.push("--json".into());
    let compile_json = ["compile", "--model", tiny.to_str().unwrap(), "--json"]
        .map(String::from)
        .to_vec();
    vec![
        run,
        run_json,
        compile_json,
        vec!["cache".into(), "stats".into()],
        vec!["cache".into(), "stats".into(), "--json".into()],
        vec!["cache".into(), "verify".into()],
        vec!["cache".into(), "verify".into(), "--json".into()],
    ]
}

fn no_panic(what: &str, r: &Ran) {
    assert!(
        !r.stderr.contains("panicked") && r.status != Some(101),
        "{what}: {r:?}"
    );
}

#[test]
fn a_reader_that_goes_away_ends_kiln_quietly_by_sigpipe() {
    let c = Case::warm();
    for args in commands() {
        // `kiln ... | true`: the reader is gone before kiln writes a byte. Closed before kiln
        // starts (a pipe whose read end is already dropped): dropping it after the spawn
        // raced a fast command (`cache verify`), whose output could fit the pipe first.
        let (reader, writer) = std::io::pipe().unwrap();
        drop(reader);
        let mut cmd = c.cmd(&strs(&args));
        cmd.stdout(writer).stderr(Stdio::piped());
        let mut child = cmd.spawn().unwrap();
        let mut stderr = String::new();
        child
            .stderr
            .take()
            .unwrap()
            .read_to_string(&mut stderr)
            .unwrap();
        let status = child.wait().unwrap();
        use std::os::unix::process::ExitStatusExt;
        assert_eq!(
            status.signal(),
            Some(SIGPIPE),
            "{args:?}: {status} {stderr}"
        );
        assert!(
            !stderr.contains("error") && !stderr.contains("panicked"),
            "{args:?}: quietly, but: {stderr}"
        );
    }
}

#[test]
fn streaming_into_head_stops_generating_when_head_exits() {
    let c = Case::warm();
    let mut args = run_args(&fixture("tiny-qwen3"));
    args[6] = "400".into(); // --max-new-tokens: far more than one byte's worth
    let script = "ulimit -v 4000000; \"$0\" \"$@\" | head -c 1 >/dev/null";
    let mut sh = std::process::Command::new("bash");
    sh.arg("-o")
        .arg("pipefail")
        .arg("-c")
        .arg(script)
        .arg(bin())
        .args(&args)
        .env("KILN_CACHE_DIR", c.cache.path())
        .env("TMPDIR", c.tmp.path())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let r = finish(sh, DEADLINE);
    // pipefail: the pipeline's status is kiln's, 128 + SIGPIPE.
    assert_eq!(r.status, Some(128 + SIGPIPE), "{r:?}");
    no_panic("run | head -c 1", &r);
    assert!(!r.stderr.contains("error"), "{}", r.stderr);
}

#[test]
fn a_full_device_is_an_error_and_status_1() {
    let c = Case::warm();
    for args in commands() {
        let r = c.run_shell(&strs(&args), ">/dev/full", DEADLINE);
        no_panic(&format!("{args:?} >/dev/full"), &r);
        assert_eq!(r.status, Some(1), "{args:?}: {r:?}");
        assert!(
            r.stderr
                .contains("error: cannot write to stdout: No space left on device"),
            "{args:?}: {}",
            r.stderr
        );
    }
}

#[test]
fn a_closed_stdout_is_refused_before_any_work() {
    let c = Case::new();
    for args in commands() {
        let r = c.run_shell(&strs(&args), ">&-", DEADLINE);
        no_panic(&format!("{args:?} >&-"), &r);
        assert_eq!(r.status, Some(1), "{args:?}: {r:?}");
        assert!(r.stderr.contains("stdout is closed"), "{}", r.stderr);
        assert!(
            r.elapsed < Duration::from_secs(10),
            "{args:?}: refused at once"
        );
    }
    // Nothing was compiled into the cache.
    assert!(entries(c.cache.path()).is_empty());
    // `> /dev/null` is a choice, not a closed stdout; `compile` without --json prints nothing
    // on stdout, so a closed one loses nothing.
    let tiny = fixture("tiny-qwen3");
    let r = c.run_shell(&["cache", "stats"], ">/dev/null", DEADLINE);
    assert!(r.ok(), "{r:?}");
    let r = c.run_shell(
        &["compile", "--model", tiny.to_str().unwrap()],
        ">&-",
        DEADLINE,
    );
    assert!(r.ok(), "{r:?}");
}

#[test]
fn a_failing_json_command_prints_one_json_error_object() {
    let c = Case::new();
    let missing = c.tmp.path().join("no-such-model");
    let missing = missing.to_str().unwrap();
    /// Arguments, and environment variables to set.
    type Failing<'a> = (Vec<&'a str>, Vec<(&'a str, &'a str)>);
    let cases: Vec<Failing> = vec![
        (
            vec!["run", "--model", missing, "--prompt-ids", "1", "--json"],
            vec![],
        ),
        (vec!["compile", "--model", missing, "--json"], vec![]),
        (
            vec!["cache", "stats", "--json"],
            vec![("KILN_CACHE_MAX_MB", "lots")],
        ),
        (
            vec!["cache", "pull", "--remote-cache", "gopher://x", "--json"],
            vec![],
        ),
        // A usage error, too.
        (
            vec!["compile", "--model", missing, "--json", "--bogus"],
            vec![],
        ),
    ];
    for (args, env) in cases {
        let mut cmd = c.cmd(&args);
        for (k, v) in env {
            cmd.env(k, v);
        }
        cmd.stdout(Stdio::piped()).stderr(Stdio::piped());
        let r = finish(cmd, DEADLINE);
        assert!(matches!(r.status, Some(1) | Some(2)), "{args:?}: {r:?}");
        assert_eq!(r.stdout.trim().lines().count(), 1, "{args:?}: {r:?}");
        let v = r.json();
        let e = v["error"]
            .as_str()
            .unwrap_or_else(|| panic!("{args:?}: {v}"));
        assert!(!e.is_empty(), "{v}");
    }
    // A failure already reported in the command's own object gets no second object.
    let w = Case::warm();
    let victim = entries(w.cache.path())[0].clone();
    std::fs::write(&victim, "damaged").unwrap();
    let r = w.run(&["cache", "verify", "--json"], DEADLINE);
    assert_eq!(r.status, Some(1), "{r:?}");
    assert_eq!(r.stdout.trim().lines().count(), 1, "{r:?}");
    assert_eq!(r.json()["bad"].as_array().unwrap().len(), 1);
}
