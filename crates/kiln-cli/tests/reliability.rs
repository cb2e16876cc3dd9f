//! Reliability, end to end through the `kiln` binary (issue 12): the artifact digest and the
//! tokens do not depend on the cache's history; compiler output and cache entries are checked
//! before they are trusted; a compiler has a time limit; an interrupted compile cleans up;
//! `--threads` is bounded; cache management touches only kiln's files and keeps a size limit;
//! a read-only cache serves hits; warnings print once, without colour off a terminal.
//!
//! Every test runs the binary with its own cache folder and its own `TMPDIR`. Set
//! `KILN_BIN_UNDER_TEST` to run them against another `kiln` binary (this is how each was seen
//! to fail on the code from before these guarantees).

mod common;

use serde_json::Value;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant, SystemTime};

const PROMPT: &str = "1,17,42,99,3,250,7,8";
const NEW_TOKENS: usize = 8;

fn bin() -> PathBuf {
    std::env::var_os("KILN_BIN_UNDER_TEST")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_BIN_EXE_kiln")))
}

fn tiny() -> PathBuf {
    kiln_models::testing::fixtures().join("tiny-qwen3")
}

/// The C compiler the wrapper scripts call.
fn real_cc() -> String {
    std::env::var("CC")
        .ok()
        .filter(|c| !c.is_empty())
        .unwrap_or_else(|| "cc".into())
}

/// A private cache folder, `TMPDIR` and working directory for one test.
struct Case {
    cache: tempfile::TempDir,
    tmp: tempfile::TempDir,
    /// kiln's working directory: nothing may be written there (compilers run in scratch
    /// folders).
    work: tempfile::TempDir,
}

/// How many of a compile report's units came from `origin` (`cache`, `compiled`).
fn units_from(report: &Value, origin: &str) -> usize {
    report["units"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|u| u["origin"] == origin)
        .count()
}

/// What `kiln run --json` on the tiny fixture reported.
#[derive(Debug)]
struct Run {
    digest: String,
    tokens: Value,
    unique: u64,
    hits: u64,
    /// Compile units (kernels' or the CPU runtime's) found in the cache, and built.
    units_cached: usize,
    units_built: usize,
    stderr: String,
}

impl Case {
    fn new() -> Case {
        Case {
            cache: tempfile::tempdir().unwrap(),
            tmp: tempfile::tempdir().unwrap(),
            work: tempfile::tempdir().unwrap(),
        }
    }

    /// A case whose cache holds what a cold compile of the tiny fixture stored.
    fn warm() -> Case {
        let c = Case::new();
        copy_dir(golden().0.cache.path(), c.cache.path());
        c
    }

    fn cmd(&self, args: &[&str]) -> Command {
        let mut c = Command::new(bin());
        c.args(args)
            .current_dir(self.work.path())
            .env("KILN_CACHE_DIR", self.cache.path())
            .env("TMPDIR", self.tmp.path())
            .env_remove("KILN_COMPILE_THREADS")
            .env_remove("KILN_COMPILE_TIMEOUT")
            .env_remove("KILN_CACHE_MAX_MB")
            .env_remove("RUST_LOG")
            .env_remove("NO_COLOR")
            .stdin(Stdio::null());
        c
    }

    fn run_args(&self) -> Vec<String> {
        [
            "run",
            "--model",
            tiny().to_str().unwrap(),
            "--prompt-ids",
            PROMPT,
            "--max-new-tokens",
            &NEW_TOKENS.to_string(),
            "--ignore-eos",
            "--threads",
            "2",
            "--json",
        ]
        .map(String::from)
        .to_vec()
    }

    /// Generates with the tiny fixture through this case's cache.
    fn run(&self) -> Run {
        self.run_with(|_| {})
    }

    fn run_with(&self, setup: impl FnOnce(&mut Command)) -> Run {
        let args = self.run_args();
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let mut cmd = self.cmd(&args);
        setup(&mut cmd);
        let out = cmd.output().unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr).to_string();
        let r = json(&out);
        let c = &r["compile"];
        Run {
            digest: c["artifact_digest"].as_str().unwrap().to_string(),
            tokens: r["generated_ids"].clone(),
            unique: c["kernels_unique"].as_u64().unwrap(),
            hits: c["cache_hits"].as_u64().unwrap(),
            units_cached: units_from(c, "cache"),
            units_built: units_from(c, "compiled"),
            stderr,
        }
    }

    /// The cache's `*.kart` files, sorted (one per compile unit).
    fn entries(&self) -> Vec<PathBuf> {
        let mut v: Vec<PathBuf> = walk(self.cache.path())
            .into_iter()
            .filter(|p| p.extension().is_some_and(|e| e == "kart"))
            .collect();
        v.sort();
        v
    }

    fn stats(&self) -> Value {
        json(&self.cmd(&["cache", "stats", "--json"]).output().unwrap())
    }

    /// Folders and files in this case's `TMPDIR` whose name starts with `prefix`.
    fn tmp_named(&self, prefix: &str) -> Vec<String> {
        common::names_in(self.tmp.path(), prefix)
    }

    /// A `/bin/sh` script in this case's folder (outside the cache), executable.
    fn script(&self, name: &str, body: &str) -> PathBuf {
        let path = self.tmp.path().join(name);
        std::fs::write(
            &path,
            format!(
                "#!/bin/sh\nif [ \"$1\" = --version ]; then exec {} --version; fi\n{body}",
                real_cc()
            ),
        )
        .unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
        path
    }
}

/// A cold run of the tiny fixture into a cache that tests copy, and its report.
fn golden() -> &'static (Case, Run) {
    static G: OnceLock<(Case, Run)> = OnceLock::new();
    G.get_or_init(|| {
        let c = Case::new();
        let r = c.run();
        assert_eq!(r.hits, 0, "a cold cache");
        // The tokens are transformers' greedy tokens for this prompt.
        let reference = kiln_models::testing::Reference::read("tiny-qwen3", "p1");
        assert_eq!(
            r.tokens,
            serde_json::json!(reference.greedy_ids[..NEW_TOKENS])
        );
        (c, r)
    })
}

fn json(out: &Output) -> Value {
    assert!(
        out.status.success(),
        "kiln failed ({}): {}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8(out.stdout.clone()).unwrap();
    serde_json::from_str(text.trim()).unwrap_or_else(|e| panic!("{e}: {text}"))
}

fn walk(p: &Path) -> Vec<PathBuf> {
    let mut out = vec![];
    for e in std::fs::read_dir(p).into_iter().flatten().flatten() {
        let t = e.file_type().unwrap();
        if t.is_dir() {
            out.extend(walk(&e.path()));
        } else {
            out.push(e.path());
        }
    }
    out
}

fn copy_dir(from: &Path, to: &Path) {
    for e in std::fs::read_dir(from).unwrap().flatten() {
        let target = to.join(e.file_name());
        if e.file_type().unwrap().is_dir() {
            std::fs::create_dir_all(&target).unwrap();
            copy_dir(&e.path(), &target);
        } else {
            std::fs::copy(e.path(), &target).unwrap();
        }
    }
}

/// Checks every entry of a cache folder against the key it is filed under.
fn assert_entries_whole(c: &Case) {
    for path in c.entries() {
        let key = path.file_stem().unwrap().to_str().unwrap();
        let backend = path
            .parent()
            .and_then(Path::parent)
            .and_then(Path::file_name)
            .unwrap()
            .to_str()
            .unwrap();
        let bytes = std::fs::read(&path).unwrap();
        if let Err(e) = kiln_compile::cache::decode(&bytes, backend, key) {
            panic!("{}: {e}", path.display());
        }
    }
}

fn assert_same(a: &Run, b: &Run, what: &str) {
    assert_eq!(a.digest, b.digest, "artifact digest {what}");
    assert_eq!(a.tokens, b.tokens, "tokens {what}");
}

/// Waits for `child` at most `limit`; kills it past that (the test then fails).
fn wait(child: &mut Child, limit: Duration) -> std::process::ExitStatus {
    let start = Instant::now();
    loop {
        if let Some(s) = child.try_wait().unwrap() {
            return s;
        }
        if start.elapsed() > limit {
            let _ = child.kill();
            let _ = child.wait();
            panic!("kiln did not finish within {limit:?}");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn wait_for(what: &str, limit: Duration, mut done: impl FnMut() -> bool) {
    let start = Instant::now();
    while !done() {
        assert!(start.elapsed() < limit, "waited {limit:?} for {what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Whether process `pid` runs (a zombie does not).
fn running(pid: i32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|s| {
        let state = s.rsplit(')').next().unwrap_or("").trim_start();
        !state.starts_with('Z') && !state.starts_with('X')
    })
}

fn pids(file: &Path) -> Vec<i32> {
    std::fs::read_to_string(file)
        .unwrap_or_default()
        .lines()
        .filter_map(|l| l.trim().parse().ok())
        .collect()
}

fn set_mtime(path: &Path, t: SystemTime) {
    std::fs::File::options()
        .write(true)
        .open(path)
        .unwrap()
        .set_modified(t)
        .unwrap();
}

// ---- 1. the digest and the tokens do not depend on the cache's history ----

#[test]
fn digest_and_tokens_are_the_same_cold_warm_and_partly_warm() {
    let (_, cold) = golden();
    let uncached = Case::new().run_with(|c| {
        c.arg("--no-cache");
    });
    assert_same(&uncached, cold, "without a cache");

    let c = Case::warm();
    let warm = c.run();
    assert_eq!(warm.hits, warm.unique);
    assert_same(&warm, cold, "from a warm cache");

    // One entry deleted: that unit is rebuilt alone, and must come out the same.
    let entries = c.entries();
    assert!(entries.len() >= 4, "{entries:?}");
    std::fs::remove_file(&entries[1]).unwrap();
    let partial = c.run();
    // Counted in units: the entry may hold kernels or a part of the CPU runtime.
    assert!(
        partial.units_built > 0 && partial.units_cached > 0,
        "{partial:?}"
    );
    assert_same(&partial, cold, "after deleting one entry");
    let again = c.run();
    assert_eq!(again.hits, again.unique, "the rebuilt entry was stored");
    assert_same(&again, cold, "from the cache rebuilt after a deletion");

    // Every other entry deleted.
    for e in c.entries().iter().step_by(2) {
        std::fs::remove_file(e).unwrap();
    }
    assert_same(&c.run(), cold, "after deleting half the entries");

    // One entry corrupted (a byte of its payload flipped): discarded and rebuilt.
    let victim = c.entries()[0].clone();
    let mut bytes = std::fs::read(&victim).unwrap();
    let last = bytes.len() - 1;
    bytes[last] ^= 0x55;
    std::fs::write(&victim, bytes).unwrap();
    let repaired = c.run();
    assert!(repaired.stderr.contains("corrupt"), "{}", repaired.stderr);
    assert_same(&repaired, cold, "after a corrupt entry");
    assert_same(&c.run(), cold, "after the corrupt entry was rebuilt");
}

#[test]
fn digest_is_the_same_after_a_compile_killed_part_way() {
    let c = Case::new();
    // A compiler slow enough for the kill to land between entries; the same wrapper (so the
    // same cache keys) for the reference compile in a separate cache.
    let cc = c.script(
        "slow-cc",
        &format!("sleep 0.3\nexec {} \"$@\"\n", real_cc()),
    );
    let reference = Case::new().run_with(|cmd| {
        cmd.env("CC", &cc);
    });
    let mut child = c
        .cmd(&[
            "compile",
            "--model",
            tiny().to_str().unwrap(),
            "--threads",
            "1",
            "--json",
        ])
        .env("CC", &cc)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    wait_for("a first cache entry", Duration::from_secs(120), || {
        c.entries().len() >= 2
    });
    child.kill().unwrap(); // SIGKILL
    child.wait().unwrap();
    let stored = c.entries().len();
    let after = c.run_with(|cmd| {
        cmd.env("CC", &cc);
    });
    assert!(
        after.units_cached > 0,
        "{stored} entries were stored before the kill"
    );
    assert_same(&after, &reference, "after a compile was killed part-way");
}

// ---- 2. compiler output and cache entries are checked before they are trusted ----

#[test]
fn compiler_output_lacking_the_kernels_fails_the_compile_and_is_not_cached() {
    for (name, body, says) in [
        (
            "cc-without-kernels",
            format!(
                "echo 'int kiln_not_a_kernel;' > other.c\nexec {} -shared -fPIC -o kernels.so other.c\n",
                real_cc()
            ),
            "does not define kernel kiln_",
        ),
        (
            "cc-writing-garbage",
            "echo garbage > kernels.so\nexit 0\n".to_string(),
            "not a loadable shared object",
        ),
    ] {
        let c = Case::new();
        let cc = c.script(name, &body);
        let out = c
            .cmd(&["compile", "--model", tiny().to_str().unwrap(), "--json"])
            .env("CC", &cc)
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{name}: {err}");
        assert!(
            err.contains("failed to compile") && err.contains("kernel kiln_") && err.contains(says),
            "{name}: {err}"
        );
        assert!(c.entries().is_empty(), "{name}: cached {:?}", c.entries());
        assert_eq!(c.stats()["entries"], 0, "{name}");
        // Every invocation of the compiler (`--version`, `-march=native -E -v`, the compile)
        // ran in a scratch folder: the script's `other.c` is neither in kiln's working
        // directory nor left in TMPDIR.
        let left: Vec<_> = walk(c.work.path());
        assert!(left.is_empty(), "{name}: written into the working directory: {left:?}");
        assert!(c.tmp_named("other.c").is_empty(), "{name}: other.c left in TMPDIR");
    }
}

#[test]
fn an_entry_copied_over_another_keys_file_is_reported_and_rebuilt() {
    let (_, cold) = golden();
    let c = Case::warm();
    let entries = c.entries();
    std::fs::copy(&entries[0], &entries[1]).unwrap();
    let r = c.run();
    let victim = entries[1].display().to_string();
    assert!(
        r.stderr.contains(&victim) && r.stderr.contains("filed under"),
        "{}",
        r.stderr
    );
    assert_eq!(
        r.stderr.matches(&victim).count(),
        1,
        "reported once: {}",
        r.stderr
    );
    assert!(r.units_built > 0, "{r:?}");
    assert_same(&r, cold, "after a misfiled entry");
    let again = c.run();
    assert_eq!(again.hits, again.unique);
    assert!(!again.stderr.contains("warning"), "{}", again.stderr);
    assert_entries_whole(&c);
}

#[test]
fn a_cached_entry_that_does_not_load_is_rebuilt_with_one_warning() {
    let (_, cold) = golden();
    let c = Case::warm();
    // A well-formed entry, right key and checksum, around a payload that is not a shared
    // object.
    let victim = c.entries()[0].clone();
    let key = victim.file_stem().unwrap().to_str().unwrap().to_string();
    let bytes = std::fs::read(&victim).unwrap();
    let (header, _) = kiln_compile::cache::decode(&bytes, "cpu", &key).unwrap();
    let kernels: Vec<&str> = header.kernels.iter().map(String::as_str).collect();
    let bad = kiln_compile::cache::encode(
        "cpu",
        &key,
        &kernels,
        b"\x7fELF? no: not a shared object",
        1,
    );
    std::fs::write(&victim, bad).unwrap();

    let r = c.run();
    let warnings: Vec<&str> = r.stderr.lines().filter(|l| l.contains("warning")).collect();
    assert_eq!(warnings.len(), 1, "{}", r.stderr);
    assert!(
        warnings[0].contains("failed to load")
            && warnings[0].contains(&victim.display().to_string())
            && warnings[0].contains(&header.kernels[0]),
        "{}",
        warnings[0]
    );
    assert!(!r.stderr.contains('\x1b'), "no colour codes off a terminal");
    assert_same(&r, cold, "after an entry that does not load");
    let again = c.run();
    assert_eq!(again.hits, again.unique, "the rebuilt entry was stored");
    assert!(again.stderr.lines().all(|l| !l.contains("warning")));
}

// ---- 3. a compiler that hangs is killed at the time limit ----

#[test]
fn a_hanging_compiler_is_killed_at_the_time_limit() {
    for via_env in [false, true] {
        let c = Case::new();
        let pid_file = c.tmp.path().join("pids");
        let cc = c.script(
            "hanging-cc",
            &format!("echo $$ >> {}\nexec sleep 60\n", pid_file.display()),
        );
        let model = tiny();
        let mut args = vec![
            "compile",
            "--model",
            model.to_str().unwrap(),
            "--threads",
            "64",
        ];
        if !via_env {
            args.extend(["--compile-timeout", "1"]);
        }
        let mut cmd = c.cmd(&args);
        cmd.env("CC", &cc)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        if via_env {
            cmd.env("KILN_COMPILE_TIMEOUT", "1");
        }
        let start = Instant::now();
        let mut child = cmd.spawn().unwrap();
        let status = wait(&mut child, Duration::from_secs(45));
        let out = child.wait_with_output().unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(status.code(), Some(1), "{err}");
        assert!(
            start.elapsed() < Duration::from_secs(40),
            "{:?}",
            start.elapsed()
        );
        assert!(
            err.contains("time limit of 1 s") && err.contains("kernel kiln_"),
            "{err}"
        );
        let started = pids(&pid_file);
        assert!(!started.is_empty());
        for pid in started {
            assert!(!running(pid), "compiler {pid} still runs");
        }
        assert!(c.tmp_named("kiln-cc-").is_empty(), "{:?}", c.tmp_named(""));
        assert!(c.entries().is_empty());
    }
}

// ---- 4. --threads is bounded, with a clear message ----

#[test]
fn thread_counts_past_the_bound_are_refused_clearly() {
    let c = Case::warm();
    let model = tiny();
    for (flag, env) in [
        (Some("1025"), None),
        (Some("100000"), None),
        (None, Some("5000")),
    ] {
        let mut args = vec!["compile", "--model", model.to_str().unwrap(), "--json"];
        if let Some(t) = flag {
            args.extend(["--threads", t]);
        }
        let mut cmd = c.cmd(&args);
        if let Some(t) = env {
            cmd.env("KILN_COMPILE_THREADS", t);
        }
        cmd.stdout(Stdio::piped()).stderr(Stdio::piped());
        let mut child = cmd.spawn().unwrap();
        let status = wait(&mut child, Duration::from_secs(120));
        let err = String::from_utf8_lossy(&child.wait_with_output().unwrap().stderr).to_string();
        assert_eq!(status.code(), Some(2), "{flag:?} {env:?}: {err}");
        assert!(err.contains("between 1 and 1024"), "{err}");
    }
    // The bound itself works (a warm cache: only the pools start).
    let out = c
        .cmd(&[
            "compile",
            "--model",
            model.to_str().unwrap(),
            "--threads",
            "1024",
            "--json",
        ])
        .output()
        .unwrap();
    assert_eq!(json(&out)["threads"], 1024);
}

// ---- 5. an interrupted compile cleans up ----

#[test]
fn sigint_and_sigterm_stop_the_compilers_and_leave_a_consistent_cache() {
    for (signal, code, name) in [
        (libc::SIGINT, 130, "SIGINT"),
        (libc::SIGTERM, 143, "SIGTERM"),
    ] {
        let c = Case::new();
        let pid_file = c.tmp.path().join("pids");
        // The first two compiles (`-c`: one per unit; kiln also asks the compiler for its
        // version and links locally) finish and their units are stored; every later one hangs
        // while KILN_TEST_HANG is set.
        let calls = c.tmp.path().join("calls");
        std::fs::create_dir_all(&calls).unwrap();
        let cc = c.script(
            "slow-cc",
            &format!(
                "echo $$ >> {pids}\ncase \" $* \" in *\" -c \"*)\n  touch {calls}/$$\n  if [ -n \"$KILN_TEST_HANG\" ] && [ $(ls {calls} | wc -l) -gt 2 ]; then exec sleep 60; fi;;\nesac\nexec {cc} \"$@\"\n",
                pids = pid_file.display(),
                calls = calls.display(),
                cc = real_cc()
            ),
        );
        let model = tiny();
        let args = [
            "compile",
            "--model",
            model.to_str().unwrap(),
            "--threads",
            "2",
            "--json",
        ];
        let mut child = c
            .cmd(&args)
            .env("CC", &cc)
            .env("KILN_TEST_HANG", "1")
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        wait_for("a hanging compiler", Duration::from_secs(120), || {
            pids(&pid_file).iter().any(|&p| {
                std::fs::read_to_string(format!("/proc/{p}/cmdline"))
                    .is_ok_and(|c| c.starts_with("sleep"))
            })
        });
        assert!(!c.tmp_named("kiln-cc-").is_empty());
        // SAFETY: kill(2) on our own child.
        assert_eq!(unsafe { libc::kill(child.id() as i32, signal) }, 0);
        let status = wait(&mut child, Duration::from_secs(30));
        let err = String::from_utf8_lossy(&child.wait_with_output().unwrap().stderr).to_string();
        assert_eq!(status.code(), Some(code), "{name}: {status} {err}");
        assert!(err.contains(&format!("interrupted by {name}")), "{err}");
        for pid in pids(&pid_file) {
            assert!(!running(pid), "{name}: compiler {pid} still runs");
        }
        assert!(
            c.tmp_named("kiln-cc-").is_empty(),
            "{name}: {:?}",
            c.tmp_named("")
        );
        // The cache: whole entries only, no temp files; a compile with the same compiler uses
        // every entry and builds the rest.
        let stored = c.entries().len();
        assert!(stored > 0, "{name}: entries were stored before the signal");
        assert_entries_whole(&c);
        assert_eq!(c.stats()["temp_files"], 0);
        let out = c.cmd(&args).env("CC", &cc).output().unwrap();
        let r = json(&out);
        assert!(units_from(&r, "cache") > 0, "{r}");
        assert_eq!(
            r["compiler_invocations"].as_u64().unwrap() as usize + stored,
            c.entries().len()
        );
        assert!(!String::from_utf8_lossy(&out.stderr).contains("corrupt"));
    }
}

#[test]
fn failed_kernel_sources_go_to_a_new_private_folder_per_run() {
    let c = Case::new();
    let cc = c.script(
        "rejecting-cc",
        "echo 'kernels.c:1:1: error: rejected on purpose' >&2\nexit 1\n",
    );
    let mut folders = Vec::new();
    for _ in 0..2 {
        let out = c
            .cmd(&[
                "compile",
                "--model",
                tiny().to_str().unwrap(),
                "--threads",
                "2",
            ])
            .env("CC", &cc)
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr).to_string();
        assert_eq!(out.status.code(), Some(1));
        assert!(err.contains("rejected on purpose"), "{err}");
        let path = err
            .split("(source: ")
            .nth(1)
            .and_then(|s| s.split(')').next())
            .map(PathBuf::from)
            .unwrap_or_else(|| panic!("no source path in {err}"));
        assert!(path.exists(), "{}", path.display());
        let folder = path.parent().unwrap().to_path_buf();
        assert!(folder.starts_with(c.tmp.path()), "{}", folder.display());
        let mode = std::fs::metadata(&folder).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o700, "{}", folder.display());
        folders.push(folder);
    }
    assert_ne!(folders[0], folders[1], "a new folder per run");
    assert!(c.entries().is_empty());
}

// ---- 9. a read-only cache serves hits ----

#[test]
fn a_read_only_cache_serves_hits_and_warns_once_when_it_cannot_store() {
    let (_, cold) = golden();
    let c = Case::warm();
    // As root, permissions do not stop writes: run kiln as `nobody` then.
    let as_root = unsafe { libc::geteuid() } == 0;
    if as_root && Command::new("setpriv").arg("--version").output().is_err() {
        eprintln!("skipping the read-only cache test: running as root without setpriv");
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    std::fs::set_permissions(tmp.path(), std::fs::Permissions::from_mode(0o1777)).unwrap();
    let read_only = |c: &Case| {
        for p in walk(c.cache.path()) {
            std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o444)).unwrap();
        }
        let mut dirs = vec![c.cache.path().to_path_buf()];
        while let Some(d) = dirs.pop() {
            for e in std::fs::read_dir(&d).unwrap().flatten() {
                if e.file_type().unwrap().is_dir() {
                    dirs.push(e.path());
                }
            }
            std::fs::set_permissions(&d, std::fs::Permissions::from_mode(0o555)).unwrap();
        }
    };
    let run = |c: &Case| {
        c.run_with(|cmd| {
            cmd.env("TMPDIR", tmp.path());
            if as_root {
                let program = cmd.get_program().to_owned();
                let args: Vec<_> = cmd.get_args().map(|a| a.to_owned()).collect();
                let mut wrapped = Command::new("setpriv");
                wrapped
                    .args(["--reuid=65534", "--regid=65534", "--clear-groups", "--"])
                    .arg(program)
                    .args(args);
                for (k, v) in cmd.get_envs() {
                    match v {
                        Some(v) => wrapped.env(k, v),
                        None => wrapped.env_remove(k),
                    };
                }
                *cmd = wrapped;
            }
        })
    };
    let victim = c.entries()[0].clone();
    read_only(&c);
    let hits = run(&c);
    assert_eq!(hits.hits, hits.unique, "{}", hits.stderr);
    assert!(!hits.stderr.contains("warning"), "{}", hits.stderr);
    assert_same(&hits, cold, "from a read-only cache");

    // One entry missing: built, not stored, one warning.
    let parent = victim.parent().unwrap();
    std::fs::set_permissions(parent, std::fs::Permissions::from_mode(0o755)).unwrap();
    std::fs::remove_file(&victim).unwrap();
    std::fs::set_permissions(parent, std::fs::Permissions::from_mode(0o555)).unwrap();
    let before = c.entries().len();
    let partial = run(&c);
    assert!(partial.units_built == 1 && partial.units_cached > 0);
    let warnings: Vec<&str> = partial
        .stderr
        .lines()
        .filter(|l| l.contains("warning"))
        .collect();
    assert_eq!(warnings.len(), 1, "{}", partial.stderr);
    assert!(warnings[0].contains("read-only"), "{}", warnings[0]);
    assert_eq!(c.entries().len(), before, "nothing stored");
    assert_same(&partial, cold, "from a read-only cache missing an entry");
    // Writable again, so that the folder can be removed.
    let mut dirs = vec![c.cache.path().to_path_buf()];
    while let Some(d) = dirs.pop() {
        std::fs::set_permissions(&d, std::fs::Permissions::from_mode(0o755)).unwrap();
        for e in std::fs::read_dir(&d).unwrap().flatten() {
            if e.file_type().unwrap().is_dir() {
                dirs.push(e.path());
            }
        }
    }
}

// ---- 10. cache management: only kiln's files, a size limit ----

#[test]
fn cache_stats_creates_nothing_and_counts_only_kiln_entries() {
    let c = Case::new();
    let missing = c.cache.path().join("not-yet");
    let out = c
        .cmd(&["cache", "stats", "--json"])
        .env("KILN_CACHE_DIR", &missing)
        .output()
        .unwrap();
    assert_eq!(json(&out)["entries"], 0);
    assert!(!missing.exists(), "stats created {}", missing.display());

    let c = Case::warm();
    let entries = c.entries().len() as u64;
    let shard = c.entries()[0].parent().unwrap().to_path_buf();
    let outside = tempfile::tempdir().unwrap();
    std::fs::write(outside.path().join("big"), vec![1u8; 1 << 20]).unwrap();
    std::fs::write(shard.join("README"), "not kiln's").unwrap();
    std::os::unix::fs::symlink(
        outside.path().join("big"),
        shard.join(format!("{}.kart", "ab".repeat(32))),
    )
    .unwrap();
    let stale = shard.join(format!(".tmp-1-0-{}", "cd".repeat(32)));
    let young = shard.join(format!(".tmp-1-1-{}", "ef".repeat(32)));
    std::fs::write(&stale, "left by a killed writer").unwrap();
    std::fs::write(&young, "a write in progress").unwrap();
    set_mtime(&stale, SystemTime::now() - Duration::from_secs(3600));

    let s = c.stats();
    assert_eq!(s["entries"].as_u64(), Some(entries), "{s}");
    assert!(s["bytes"].as_u64().unwrap() < 1 << 20, "{s}");
    assert_eq!(s["temp_files"], 2, "{s}");
    assert!(s["limit_bytes"].as_u64().unwrap() > 0, "{s}");

    let pruned = json(&c.cmd(&["cache", "prune", "--json"]).output().unwrap());
    assert_eq!(pruned["temp_files"], 1, "{pruned}");
    assert!(!stale.exists() && young.exists());

    let out = c.cmd(&["cache", "clear"]).output().unwrap();
    assert!(out.status.success());
    assert_eq!(c.stats()["entries"], 0);
    assert!(
        shard.join("README").exists(),
        "clear removed a file that is not kiln's"
    );
    assert!(outside.path().join("big").exists());
}

#[test]
fn the_cache_keeps_under_its_size_limit_least_recently_used_first() {
    let bf16 = kiln_models::testing::fixtures().join("tiny-qwen3-bf16");
    let compile = |c: &Case, model: &Path, limit: Option<f64>| {
        let mut cmd = c.cmd(&["compile", "--model", model.to_str().unwrap(), "--json"]);
        if let Some(mb) = limit {
            cmd.env("KILN_CACHE_MAX_MB", mb.to_string());
        }
        json(&cmd.output().unwrap())
    };
    // The size of the second model's entries alone.
    let alone = Case::new();
    compile(&alone, &bf16, None);
    let second: u64 = alone.stats()["bytes"].as_u64().unwrap();

    // The first model's entries, used an hour ago; then the second with a limit just above
    // what the second needs: the first model's entries go, the second's stay.
    let c = Case::warm();
    let first = c.entries();
    for e in &first {
        set_mtime(e, SystemTime::now() - Duration::from_secs(3600));
    }
    // (Entries differ by a few bytes between compiles: the header records the compile time.)
    let limit_mb = second as f64 / 0.8 * 1.01 / (1u64 << 20) as f64;
    compile(&c, &bf16, Some(limit_mb));
    let s = c.stats();
    let name = |p: &PathBuf| p.file_name().unwrap().to_owned();
    let wanted: Vec<_> = alone.entries().iter().map(name).collect();
    let kept: Vec<_> = c.entries().iter().map(name).collect();
    assert_eq!(kept, wanted, "exactly the second model's entries stay");
    // (Units the two models share were used by the second compile: not the least recent.)
    assert!(
        first.iter().any(|e| !e.exists()),
        "least recently used entries were evicted"
    );
    assert_eq!(s["entries"], alone.stats()["entries"], "{s}");
    assert!(
        s["bytes"].as_u64().unwrap() <= s["limit_bytes"].as_u64().unwrap(),
        "{s}"
    );
    let hits = compile(&c, &bf16, Some(limit_mb));
    assert_eq!(hits["cache_hits"], hits["kernels_unique"]);
    let text = c
        .cmd(&["cache", "stats"])
        .env("KILN_CACHE_MAX_MB", limit_mb.to_string())
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&text.stdout);
    assert!(text.contains("limit") && text.contains("MB"), "{text}");
}

// ---- warnings: once, and colour only on a terminal ----

/// Whether `s` holds an SGR (colour) escape sequence: ESC [ digits/semicolons m.
fn has_colour(s: &str) -> bool {
    s.match_indices("\x1b[").any(|(i, m)| {
        let rest = &s[i + m.len()..];
        let n = rest
            .bytes()
            .take_while(|b| b.is_ascii_digit() || *b == b';')
            .count();
        rest.as_bytes().get(n) == Some(&b'm')
    })
}

/// Flips a byte of the first entry's payload, so that the next compile logs its discarding.
fn corrupt_one(c: &Case) {
    let victim = c.entries()[0].clone();
    let mut bytes = std::fs::read(&victim).unwrap();
    let last = bytes.len() - 1;
    bytes[last] ^= 0x55;
    std::fs::write(&victim, bytes).unwrap();
}

#[test]
fn no_colour_codes_off_a_terminal_or_with_no_color() {
    let c = Case::warm();
    let model = tiny();
    let args = ["compile", "--model", model.to_str().unwrap(), "--json"];
    // A corrupt entry and debug logging: lines that tracing would colour, and a warning.
    corrupt_one(&c);
    let out = c.cmd(&args).env("RUST_LOG", "debug").output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{err}");
    assert!(!has_colour(&err), "colour codes on a pipe: {err:?}");
    assert_eq!(
        err.lines().filter(|l| l.contains("corrupt")).count(),
        2,
        "the corrupt entry is reported once as a warning, once in the debug log: {err}"
    );
    assert!(err.lines().any(|l| l.starts_with("warning:")), "{err}");
    assert!(err.contains("DEBUG"), "{err}");

    // On a terminal (util-linux `script` gives one): colour, unless NO_COLOR is set.
    if Command::new("script").arg("--version").output().is_err() {
        eprintln!("skipping the terminal half: `script` (util-linux) is not installed");
        return;
    }
    let line = format!("'{}' {} 2>&1 >/dev/null", bin().display(), args.join(" "));
    let on_terminal = |no_color: bool| {
        corrupt_one(&c);
        let mut cmd = Command::new("script");
        cmd.args(["-q", "-e", "-c", &line, "/dev/null"])
            .env("KILN_CACHE_DIR", c.cache.path())
            .env("TMPDIR", c.tmp.path())
            .env("RUST_LOG", "debug")
            .env_remove("NO_COLOR")
            .stdin(Stdio::null());
        if no_color {
            cmd.env("NO_COLOR", "1");
        }
        let out = cmd.output().unwrap();
        assert!(out.status.success(), "{out:?}");
        String::from_utf8_lossy(&out.stdout).to_string()
    };
    let coloured = on_terminal(false);
    assert!(has_colour(&coloured), "colour on a terminal: {coloured:?}");
    let plain = on_terminal(true);
    assert!(plain.contains("DEBUG"), "{plain:?}");
    assert!(!has_colour(&plain), "NO_COLOR is obeyed: {plain:?}");
}
