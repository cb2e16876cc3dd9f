//! kiln's external device compilers, run as child processes: each in a process group of its
//! own, under a time limit, and killed — the whole group, so `cc1`, `as` and `ld` too — when
//! the limit passes or when the program is interrupted. Every backend that runs an external
//! compiler (the C compiler, the CUDA emulator's g++) goes through [`run`]; NVRTC compiles
//! in-process and cannot be stopped this way.
//!
//! Interruption: a program that handles SIGINT/SIGTERM (the CLI) calls [`interrupt`]; every
//! compiler running then is killed, no new one starts, and the compile pipeline
//! (`kiln_compile::compile`, which holds an [`ActiveCompile`] while it runs) returns
//! `CompileError::Interrupted` once its workers have cleaned up (temporary folders removed,
//! finished artifacts stored whole). [`wait_until_no_compile_runs`] lets the handler wait for
//! that before it exits.
//!
//! A crate of its own, below the pipeline: backends run their compilers through it without
//! depending on kiln-compile, and the state here — the interrupt flag, the process groups
//! running, the compiles running — must exist once per process, which one small crate that
//! everything shares guarantees. It also holds the two process-wide defaults of a compile
//! that backends read: the time limit ([`default_compile_timeout`]) and the thread count
//! ([`default_threads`]).

use kiln_program::BackendError;
use std::io;
use std::process::{Command, Output, Stdio};
use std::sync::atomic::{AtomicI32, Ordering};
use std::sync::{mpsc, Condvar, Mutex};
use std::time::Duration;

/// How long one compiler invocation may take unless told otherwise: generous, so that only a
/// compiler that hangs ever reaches it.
pub const DEFAULT_COMPILE_TIMEOUT: Duration = Duration::from_secs(600);

/// `KILN_COMPILE_TIMEOUT` (seconds), else [`DEFAULT_COMPILE_TIMEOUT`].
pub fn default_compile_timeout() -> Duration {
    std::env::var("KILN_COMPILE_TIMEOUT")
        .ok()
        .and_then(|v| v.trim().parse::<u64>().ok())
        .filter(|&s| s > 0)
        .map_or(DEFAULT_COMPILE_TIMEOUT, Duration::from_secs)
}

/// The most compile threads kiln starts: more cost start-up time and buy nothing on any
/// machine kiln runs on.
pub const MAX_THREADS: usize = 1024;

/// `KILN_COMPILE_THREADS` (at most [`MAX_THREADS`]), else the number of available cores.
pub fn default_threads() -> usize {
    std::env::var("KILN_COMPILE_THREADS")
        .ok()
        .and_then(|v| v.parse().ok())
        .filter(|&n| n > 0)
        .map(|n: usize| n.min(MAX_THREADS))
        .unwrap_or_else(cores)
}

/// The number of cores this process may run on.
pub fn cores() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}

/// Why a compiler process gave no output.
#[derive(Debug)]
pub enum ChildError {
    /// It could not be started (not found, not executable).
    Spawn(io::Error),
    /// It ran past the limit; its process group was killed.
    Timeout(Duration),
    /// The program was interrupted; its process group was killed.
    Interrupted,
    /// Waiting for it or reading its output failed.
    Wait(io::Error),
}

impl From<ChildError> for BackendError {
    fn from(e: ChildError) -> Self {
        match e {
            ChildError::Spawn(e) => BackendError::io("cannot start the compiler", e),
            ChildError::Timeout(limit) => BackendError::Timeout(limit),
            ChildError::Interrupted => BackendError::Interrupted,
            ChildError::Wait(e) => BackendError::io("waiting for the compiler", e),
        }
    }
}

/// The signal that interrupted the program, 0 while none has.
static INTERRUPTED: AtomicI32 = AtomicI32::new(0);
/// Process groups of the compilers running now. Spawning happens under this lock, so a
/// compiler is either killed by [`interrupt`] or never started after it.
static GROUPS: Mutex<Vec<u32>> = Mutex::new(Vec::new());
/// How many compiles ([`ActiveCompile`]s) are running.
static ACTIVE: Mutex<usize> = Mutex::new(0);
static IDLE: Condvar = Condvar::new();

/// Runs `cmd` (its stdin closed, stdout and stderr captured) in a new process group, killing
/// the group after `timeout`.
pub fn run(cmd: &mut Command, timeout: Duration) -> Result<Output, ChildError> {
    use std::os::unix::process::CommandExt;
    cmd.stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0);
    let child = {
        let mut groups = GROUPS.lock().unwrap_or_else(|p| p.into_inner());
        if interrupted().is_some() {
            return Err(ChildError::Interrupted);
        }
        let child = cmd.spawn().map_err(ChildError::Spawn)?;
        groups.push(child.id());
        child
    };
    let group = child.id();
    // Output is read on a thread of its own (a compiler that fills its pipe would otherwise
    // block), while this one keeps the time.
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(child.wait_with_output());
    });
    let (result, timed_out) = match rx.recv_timeout(timeout) {
        Ok(r) => (r, false),
        Err(_) => {
            kill_group(group);
            let r = rx
                .recv()
                .unwrap_or_else(|_| Err(io::Error::other("the waiting thread ended")));
            (r, true)
        }
    };
    GROUPS
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .retain(|&g| g != group);
    let output = result.map_err(ChildError::Wait)?;
    if timed_out {
        return Err(ChildError::Timeout(timeout));
    }
    if interrupted().is_some() && !output.status.success() {
        return Err(ChildError::Interrupted);
    }
    Ok(output)
}

fn kill_group(group: u32) {
    // SAFETY: killpg has no memory-safety preconditions; a group that is gone is ESRCH.
    unsafe {
        libc::killpg(group as libc::pid_t, libc::SIGKILL);
    }
}

/// A new private folder (mode 0700) for one compiler invocation, `$TMPDIR/<prefix><pid>-<random>`, removed
/// when dropped. A process killed outright (SIGKILL) cannot remove its folders; the first call
/// in each process removes such folders of `prefix` whose process no longer runs.
pub fn scratch_dir(prefix: &str) -> io::Result<tempfile::TempDir> {
    static SWEPT: Mutex<Vec<String>> = Mutex::new(Vec::new());
    let mut swept = SWEPT.lock().unwrap_or_else(|p| p.into_inner());
    if !swept.iter().any(|p| p == prefix) {
        swept.push(prefix.to_string());
        sweep_dead_scratch_dirs(prefix);
    }
    drop(swept);
    tempfile::Builder::new()
        .prefix(&format!("{prefix}{}-", std::process::id()))
        .permissions(std::os::unix::fs::PermissionsExt::from_mode(0o700))
        .tempdir()
}

/// Removes `$TMPDIR/<prefix><pid>-*` folders of this user whose process is gone.
fn sweep_dead_scratch_dirs(prefix: &str) {
    use std::os::unix::fs::MetadataExt;
    // SAFETY: geteuid has no preconditions.
    let me = unsafe { libc::geteuid() };
    for e in std::fs::read_dir(std::env::temp_dir())
        .into_iter()
        .flatten()
        .flatten()
    {
        let name = e.file_name();
        let Some(pid) = name
            .to_str()
            .and_then(|n| n.strip_prefix(prefix))
            .and_then(|rest| rest.split_once('-'))
            .and_then(|(pid, _)| pid.parse::<libc::pid_t>().ok())
            .filter(|&pid| pid > 0)
        else {
            continue;
        };
        let ours = e
            .metadata()
            .is_ok_and(|m| m.is_dir() && m.uid() == me && !m.file_type().is_symlink());
        if ours && !process_exists(pid) {
            let _ = std::fs::remove_dir_all(e.path());
        }
    }
}

fn process_exists(pid: libc::pid_t) -> bool {
    // SAFETY: signal 0 only checks that the process exists.
    let rc = unsafe { libc::kill(pid, 0) };
    rc == 0 || io::Error::last_os_error().raw_os_error() != Some(libc::ESRCH)
}

/// Records that the program was interrupted by `signal` and kills every compiler running: the
/// compiles in progress stop at their next step and return `CompileError::Interrupted`. Safe to call from any thread (not from a signal
/// handler itself: use a thread that receives signals, such as `signal-hook`'s iterator).
pub fn interrupt(signal: i32) {
    let groups = GROUPS.lock().unwrap_or_else(|p| p.into_inner());
    let _ = INTERRUPTED.compare_exchange(0, signal.max(1), Ordering::SeqCst, Ordering::SeqCst);
    for &g in groups.iter() {
        kill_group(g);
    }
}

/// The signal given to [`interrupt`], if it was called.
pub fn interrupted() -> Option<i32> {
    match INTERRUPTED.load(Ordering::SeqCst) {
        0 => None,
        s => Some(s),
    }
}

/// Blocks until no compile is running (right away if none is).
pub fn wait_until_no_compile_runs() {
    let mut active = ACTIVE.lock().unwrap_or_else(|p| p.into_inner());
    while *active > 0 {
        active = IDLE.wait(active).unwrap_or_else(|p| p.into_inner());
    }
}

/// Counts a running compile for [`wait_until_no_compile_runs`] while it lives: the pipeline
/// holds one from start to end.
pub struct ActiveCompile(());

impl ActiveCompile {
    pub fn start() -> ActiveCompile {
        *ACTIVE.lock().unwrap_or_else(|p| p.into_inner()) += 1;
        ActiveCompile(())
    }
}

impl Drop for ActiveCompile {
    fn drop(&mut self) {
        let mut active = ACTIVE.lock().unwrap_or_else(|p| p.into_inner());
        *active -= 1;
        if *active == 0 {
            IDLE.notify_all();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Instant;

    #[test]
    fn output_and_status_come_back() {
        let out = run(
            Command::new("sh").args(["-c", "echo out; echo err >&2; exit 3"]),
            Duration::from_secs(30),
        )
        .unwrap();
        assert_eq!(out.status.code(), Some(3));
        assert_eq!(out.stdout, b"out\n");
        assert_eq!(out.stderr, b"err\n");
    }

    #[test]
    fn a_process_past_its_limit_is_killed_with_its_group() {
        let dir = tempfile::tempdir().unwrap();
        let pid_file = dir.path().join("pid");
        let script = format!("sleep 60 & echo $! > {}; wait", pid_file.display());
        let start = Instant::now();
        let err = run(
            Command::new("sh").args(["-c", &script]),
            Duration::from_millis(500),
        )
        .unwrap_err();
        assert!(matches!(err, ChildError::Timeout(d) if d == Duration::from_millis(500)));
        assert!(start.elapsed() < Duration::from_secs(30));
        // The grandchild (the `sleep`) died with its group.
        let pid: i32 = std::fs::read_to_string(&pid_file)
            .unwrap()
            .trim()
            .parse()
            .unwrap();
        let alive = || {
            std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|s| {
                !s.rsplit(')')
                    .next()
                    .unwrap_or("")
                    .trim_start()
                    .starts_with('Z')
            })
        };
        let t = Instant::now();
        while alive() && t.elapsed() < Duration::from_secs(5) {
            std::thread::sleep(Duration::from_millis(20));
        }
        assert!(!alive(), "the compiler's child {pid} survived");
    }

    #[test]
    fn scratch_folders_of_dead_processes_are_swept() {
        // A folder named after a process that cannot exist (pid_max is at most 2^22) and one
        // of this process: only the first goes.
        let tmp = std::env::temp_dir();
        let dead = tmp.join("kiln-test-sweep-99999999-abc");
        let alive = tmp.join(format!("kiln-test-sweep-{}-abc", std::process::id()));
        for d in [&dead, &alive] {
            std::fs::create_dir_all(d).unwrap();
            std::fs::write(d.join("kernels.c"), "int x;").unwrap();
        }
        let fresh = scratch_dir("kiln-test-sweep-").unwrap();
        assert!(!dead.exists() && alive.exists() && fresh.path().exists());
        std::fs::remove_dir_all(alive).unwrap();
    }

    #[test]
    fn a_missing_program_is_a_spawn_error() {
        let err = run(
            &mut Command::new("/nonexistent/kiln-test-compiler"),
            Duration::from_secs(1),
        )
        .unwrap_err();
        assert!(matches!(err, ChildError::Spawn(_)), "{err:?}");
    }
}
