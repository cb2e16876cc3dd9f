//! Shared by the CLI tests of the third reliability pass (issue 28): the binary, a private
//! cache and `TMPDIR` per test, and running `kiln` under a memory limit (`ulimit -v`) and a
//! deadline, so that a regression (reading `/dev/zero`, waiting on a FIFO) fails the test
//! instead of hurting the machine or hanging the suite.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

pub const PROMPT: &str = "1,17,42,99,3,250,7,8";

/// The binary under test: `KILN_BIN_UNDER_TEST` (to see a test fail on an older build), else
/// this crate's.
pub fn bin() -> PathBuf {
    std::env::var_os("KILN_BIN_UNDER_TEST")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_BIN_EXE_kiln")))
}

pub fn fixture(name: &str) -> PathBuf {
    kiln_models::testing::fixtures().join(name)
}

/// A copy of the regular files of fixture `name` in a new folder `<tmp>/model`.
pub fn model_copy(name: &str) -> (tempfile::TempDir, PathBuf) {
    let d = tempfile::tempdir().unwrap();
    let dir = d.path().join("model");
    std::fs::create_dir(&dir).unwrap();
    for e in std::fs::read_dir(fixture(name)).unwrap() {
        let p = e.unwrap().path();
        if p.is_file() {
            std::fs::copy(&p, dir.join(p.file_name().unwrap())).unwrap();
        }
    }
    (d, dir)
}

/// What a run of `kiln` did.
#[derive(Debug)]
pub struct Ran {
    pub status: Option<i32>,
    /// The signal that ended it, if one did.
    pub signal: Option<i32>,
    pub stdout: String,
    pub stderr: String,
    pub elapsed: Duration,
    /// It was killed at the deadline.
    pub timed_out: bool,
}

impl Ran {
    pub fn ok(&self) -> bool {
        self.status == Some(0)
    }

    pub fn json(&self) -> serde_json::Value {
        serde_json::from_str(self.stdout.trim())
            .unwrap_or_else(|e| panic!("{e}: stdout {:?}, stderr {}", self.stdout, self.stderr))
    }
}

/// A private kernel cache and `TMPDIR`.
pub struct Case {
    pub cache: tempfile::TempDir,
    pub tmp: tempfile::TempDir,
}

impl Default for Case {
    fn default() -> Self {
        Case::new()
    }
}

impl Case {
    pub fn new() -> Case {
        Case {
            cache: tempfile::tempdir().unwrap(),
            tmp: tempfile::tempdir().unwrap(),
        }
    }

    /// A case whose cache holds what a cold run of the tiny fixture stored.
    pub fn warm() -> Case {
        let c = Case::new();
        copy_dir(warm_cache(), c.cache.path());
        c
    }

    /// `kiln args` with this case's cache and `TMPDIR` and none of the settings a developer's
    /// shell may carry.
    pub fn cmd(&self, args: &[&str]) -> Command {
        let mut c = Command::new(bin());
        c.args(args)
            .env("KILN_CACHE_DIR", self.cache.path())
            .env("TMPDIR", self.tmp.path())
            .env_remove("KILN_COMPILE_THREADS")
            .env_remove("KILN_COMPILE_TIMEOUT")
            .env_remove("KILN_CACHE_MAX_MB")
            .env_remove("KILN_REMOTE_CACHE")
            .env_remove("RUST_LOG")
            .stdin(Stdio::null());
        c
    }

    /// Folders and files in this case's `TMPDIR` whose name starts with `prefix` (a
    /// compile's scratch folders are `kiln-cc-*`).
    pub fn tmp_named(&self, prefix: &str) -> Vec<String> {
        names_in(self.tmp.path(), prefix)
    }

    /// `kiln args` under a 4 GB address-space limit, killed after `deadline`.
    pub fn run(&self, args: &[&str], deadline: Duration) -> Ran {
        self.run_shell(args, "", deadline)
    }

    /// [`Case::run`], with `redirect` (shell redirections such as `>/dev/full` or `>&-`)
    /// applied to kiln's output.
    pub fn run_shell(&self, args: &[&str], redirect: &str, deadline: Duration) -> Ran {
        let c = self.cmd(&[]);
        let script = format!("ulimit -v 4000000; exec \"$0\" \"$@\" {redirect}");
        let mut sh = Command::new("sh");
        sh.arg("-c").arg(script).arg(bin()).args(args);
        for (k, v) in c.get_envs() {
            match v {
                Some(v) => sh.env(k, v),
                None => sh.env_remove(k),
            };
        }
        sh.stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        finish(sh, deadline)
    }
}

/// Runs `cmd` (its output piped), killing it at `deadline`.
pub fn finish(mut cmd: Command, deadline: Duration) -> Ran {
    use std::os::unix::process::ExitStatusExt;
    let start = Instant::now();
    let child = cmd.spawn().expect("start kiln");
    let pid = child.id() as i32;
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(child.wait_with_output());
    });
    let (out, timed_out): (Output, bool) = match rx.recv_timeout(deadline) {
        Ok(out) => (out.unwrap(), false),
        Err(_) => {
            // SAFETY: kill has no memory-safety preconditions.
            unsafe { libc::kill(pid, libc::SIGKILL) };
            (rx.recv().unwrap().unwrap(), true)
        }
    };
    Ran {
        status: out.status.code(),
        signal: out.status.signal(),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        elapsed: start.elapsed(),
        timed_out,
    }
}

/// The arguments of a short greedy run of the tiny fixture (or `model`).
pub fn run_args(model: &Path) -> Vec<String> {
    [
        "run",
        "--model",
        model.to_str().unwrap(),
        "--prompt-ids",
        PROMPT,
        "--max-new-tokens",
        "4",
        "--ignore-eos",
        "--threads",
        "2",
    ]
    .map(String::from)
    .to_vec()
}

pub fn strs(v: &[String]) -> Vec<&str> {
    v.iter().map(String::as_str).collect()
}

/// A cache filled by one cold run of the tiny fixture, shared by the tests that copy it.
pub fn warm_cache() -> &'static Path {
    static C: OnceLock<Case> = OnceLock::new();
    C.get_or_init(|| {
        let c = Case::new();
        let mut args = run_args(&fixture("tiny-qwen3"));
        args.push("--json".into());
        let r = c.run(&strs(&args), Duration::from_secs(300));
        assert!(r.ok(), "cold run failed: {}", r.stderr);
        c
    })
    .cache
    .path()
}

pub fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap() {
        let e = e.unwrap();
        let target = to.join(e.file_name());
        if e.file_type().unwrap().is_dir() {
            copy_dir(&e.path(), &target);
        } else {
            std::fs::copy(e.path(), &target).unwrap();
        }
    }
}

/// The names of the folders and files in `dir` that start with `prefix`.
pub fn names_in(dir: &Path, prefix: &str) -> Vec<String> {
    std::fs::read_dir(dir)
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().to_string())
        .filter(|n| n.starts_with(prefix))
        .collect()
}

/// Every `*.kart` file under `dir`, sorted.
pub fn entries(dir: &Path) -> Vec<PathBuf> {
    let mut out = vec![];
    for e in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let p = e.path();
        if e.file_type().unwrap().is_dir() {
            out.extend(entries(&p));
        } else if p.extension().is_some_and(|x| x == "kart") {
            out.push(p);
        }
    }
    out.sort();
    out
}

pub fn mkfifo(path: &Path) {
    let _ = std::fs::remove_file(path);
    let c = std::ffi::CString::new(path.as_os_str().as_encoded_bytes()).unwrap();
    // SAFETY: a valid NUL-terminated path.
    assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0, "mkfifo");
}

/// Replaces `path` with a symbolic link to `target`.
pub fn link(target: &Path, path: &Path) {
    let _ = std::fs::remove_file(path);
    std::os::unix::fs::symlink(target, path).unwrap();
}
