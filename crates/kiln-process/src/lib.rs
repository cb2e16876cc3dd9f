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
    /// The files that take its output could not be made or read.
    Capture(io::Error),
    /// It ran past the limit; its process group was killed.
    Timeout(Duration),
    /// The program was interrupted; its process group was killed.
    Interrupted,
    /// Waiting for it failed.
    Wait(io::Error),
}

impl From<ChildError> for BackendError {
    fn from(e: ChildError) -> Self {
        match e {
            ChildError::Spawn(e) => BackendError::io("cannot start the compiler", e),
            ChildError::Capture(e) => BackendError::io("cannot keep the compiler's output", e),
            ChildError::Timeout(limit) => BackendError::Timeout(limit),
            ChildError::Interrupted => BackendError::Interrupted,
            ChildError::Wait(e) => BackendError::io("waiting for the compiler", e),
        }
    }
}

/// The signal that interrupted the program, 0 while none has.
static INTERRUPTED: AtomicI32 = AtomicI32::new(0);
/// Process groups of the compilers running now, each listed until its leader is reaped (so a
/// listed group's id cannot have been reused). Spawning happens under this lock, so a
/// compiler is either killed by [`interrupt`] or never started after it.
static GROUPS: Mutex<Vec<u32>> = Mutex::new(Vec::new());
/// How many compiles ([`ActiveCompile`]s) are running.
static ACTIVE: Mutex<usize> = Mutex::new(0);
static IDLE: Condvar = Condvar::new();

/// The most of each output stream [`run`] keeps: a compiler's first diagnostics are the ones
/// that matter, and one that writes megabytes must not become a message of megabytes.
pub const OUTPUT_LIMIT: usize = 64 << 10;

/// Runs `cmd` (its stdin closed, stdout and stderr captured, each cut at [`OUTPUT_LIMIT`]
/// with a note of how much was cut) in a new process group. Returns when the compiler
/// process itself exits, or kills its group when `timeout` passes or the program is
/// interrupted.
///
/// The output goes to unlinked temporary files, not pipes: a pipe stays open as long as any
/// process holding it lives, and a compiler may leave a detached child holding its output
/// (`setsid sleep 300 &` in a wrapper script), which must hold neither the compile nor the
/// time limit nor an interrupt. What is left of the compiler's group when it exits is killed.
pub fn run(cmd: &mut Command, timeout: Duration) -> Result<Output, ChildError> {
    use std::os::unix::process::CommandExt;
    let stdout = tempfile::tempfile().map_err(ChildError::Capture)?;
    let stderr = tempfile::tempfile().map_err(ChildError::Capture)?;
    cmd.stdin(Stdio::null())
        .stdout(stdout.try_clone().map_err(ChildError::Capture)?)
        .stderr(stderr.try_clone().map_err(ChildError::Capture)?)
        .process_group(0);
    let mut child = {
        let mut groups = GROUPS.lock().unwrap_or_else(|p| p.into_inner());
        if interrupted().is_some() {
            return Err(ChildError::Interrupted);
        }
        let child = cmd.spawn().map_err(ChildError::Spawn)?;
        groups.push(child.id());
        child
    };
    // The command keeps its copies of the files' descriptors; they are files, not pipes, so
    // nothing waits on them, but they need not live longer than the child.
    cmd.stdout(Stdio::null()).stderr(Stdio::null());
    let group = child.id();
    // The compiler is waited for on a thread of its own, while this one keeps the time.
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let exited = wait_for_exit(group);
        // Its group is killed (background children it left) and unlisted before the leader
        // is reaped: until then the group's id cannot be reused.
        {
            let mut groups = GROUPS.lock().unwrap_or_else(|p| p.into_inner());
            kill_group(group);
            groups.retain(|&g| g != group);
        }
        let _ = tx.send(exited.and_then(|()| child.wait()));
    });
    let (status, timed_out) = match rx.recv_timeout(timeout) {
        Ok(r) => (r, false),
        Err(_) => {
            {
                let groups = GROUPS.lock().unwrap_or_else(|p| p.into_inner());
                if groups.contains(&group) {
                    kill_group(group);
                }
            }
            let r = rx
                .recv()
                .unwrap_or_else(|_| Err(io::Error::other("the waiting thread ended")));
            (r, true)
        }
    };
    let status = status.map_err(ChildError::Wait)?;
    if timed_out {
        return Err(ChildError::Timeout(timeout));
    }
    if interrupted().is_some() && !status.success() {
        return Err(ChildError::Interrupted);
    }
    Ok(Output {
        status,
        stdout: read_capped(&stdout).map_err(ChildError::Capture)?,
        stderr: read_capped(&stderr).map_err(ChildError::Capture)?,
    })
}

/// A compiler's diagnostics as a message may show them: decoded (bytes that are not UTF-8
/// as U+FFFD), control characters other than newline and tab escaped (`\u{1b}`: an ESC
/// sequence from a compiler that colours its output must not reach the user's terminal), and
/// cut at [`OUTPUT_LIMIT`] bytes with a note of how much was cut. Output [`run`] captured was
/// cut already (its note is left alone); a log that comes from elsewhere (NVRTC's) is cut here.
pub fn diagnostics(bytes: &[u8]) -> String {
    // Room for the note `run` adds after its OUTPUT_LIMIT bytes.
    const NOTE_ROOM: usize = 256;
    let text = String::from_utf8_lossy(bytes);
    let (kept, cut) = if text.len() > OUTPUT_LIMIT + NOTE_ROOM {
        let mut end = OUTPUT_LIMIT;
        while !text.is_char_boundary(end) {
            end -= 1;
        }
        (&text[..end], text.len() - end)
    } else {
        (&text[..], 0)
    };
    let mut out = String::with_capacity(kept.len());
    for c in kept.chars() {
        if c.is_control() && c != '\n' && c != '\t' {
            out.extend(c.escape_default());
        } else {
            out.push(c);
        }
    }
    if cut > 0 {
        out.push_str(&format!("\n[kiln: {cut} more bytes of output cut]\n"));
    }
    out
}

/// Blocks until process `pid` (a child of this process) has exited, without reaping it.
fn wait_for_exit(pid: u32) -> io::Result<()> {
    loop {
        // SAFETY: `info` is a valid siginfo_t to write into; WNOWAIT leaves the child to be
        // reaped by `Child::wait`.
        let rc = unsafe {
            let mut info: libc::siginfo_t = std::mem::zeroed();
            libc::waitid(
                libc::P_PID,
                pid as libc::id_t,
                &mut info,
                libc::WEXITED | libc::WNOWAIT,
            )
        };
        if rc == 0 {
            return Ok(());
        }
        let e = io::Error::last_os_error();
        if e.kind() != io::ErrorKind::Interrupted {
            return Err(e);
        }
    }
}

/// The first [`OUTPUT_LIMIT`] bytes of `file`, and a note of what was cut. Read by position:
/// a detached child of the compiler may still be writing to it.
fn read_capped(file: &std::fs::File) -> io::Result<Vec<u8>> {
    use std::os::unix::fs::FileExt;
    let len = file.metadata()?.len();
    let keep = len.min(OUTPUT_LIMIT as u64) as usize;
    let mut out = vec![0; keep];
    let mut at = 0;
    while at < keep {
        match file.read_at(&mut out[at..], at as u64) {
            Ok(0) => break,
            Ok(n) => at += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    out.truncate(at);
    if len > at as u64 {
        out.extend_from_slice(
            format!("\n[kiln: {} more bytes of output cut]\n", len - at as u64).as_bytes(),
        );
    }
    Ok(out)
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
        assert_dies(&pid_file);
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

    /// A compiler that leaves a detached child (its own session, out of reach of the group
    /// kill) holding its output: `run` returns when the compiler exits, with its output.
    #[test]
    fn a_detached_child_holding_the_output_does_not_hold_run() {
        let dir = tempfile::tempdir().unwrap();
        let pid_file = dir.path().join("pid");
        let script = format!(
            "setsid sh -c 'echo $$ > {}; exec sleep 60' & echo done; echo warn >&2",
            pid_file.display()
        );
        let start = Instant::now();
        let out = run(
            Command::new("sh").args(["-c", &script]),
            Duration::from_secs(30),
        );
        let took = start.elapsed();
        // The detached child, by its id (it escaped the group).
        let t = Instant::now();
        while !pid_file.exists() && t.elapsed() < Duration::from_secs(5) {
            std::thread::sleep(Duration::from_millis(10));
        }
        if let Ok(pid) = std::fs::read_to_string(&pid_file)
            .unwrap_or_default()
            .trim()
            .parse()
        {
            // SAFETY: kill has no memory-safety preconditions; the process is this test's.
            unsafe { libc::kill(pid, libc::SIGKILL) };
        }
        let out = out.unwrap();
        assert!(took < Duration::from_secs(10), "{took:?}");
        assert!(out.status.success());
        assert_eq!(out.stdout, b"done\n");
        assert_eq!(out.stderr, b"warn\n");
    }

    /// A background child left in the compiler's group dies when the compiler exits.
    #[test]
    fn what_the_compiler_leaves_in_its_group_is_killed() {
        let dir = tempfile::tempdir().unwrap();
        let pid_file = dir.path().join("pid");
        let script = format!(
            "sleep 60 > /dev/null 2>&1 & echo $! > {}",
            pid_file.display()
        );
        run(
            Command::new("sh").args(["-c", &script]),
            Duration::from_secs(30),
        )
        .unwrap();
        assert_dies(&pid_file);
    }

    #[test]
    fn output_past_the_limit_is_cut_with_a_note() {
        let out = run(
            Command::new("sh").args(["-c", "head -c 200000 /dev/zero | tr '\\000' x >&2"]),
            Duration::from_secs(30),
        )
        .unwrap();
        let text = String::from_utf8(out.stderr).unwrap();
        assert!(
            text.starts_with(&"x".repeat(OUTPUT_LIMIT)),
            "{}",
            text.len()
        );
        let cut = 200_000 - OUTPUT_LIMIT;
        assert!(
            text.ends_with(&format!("[kiln: {cut} more bytes of output cut]\n")),
            "{}",
            &text[OUTPUT_LIMIT..]
        );
    }

    /// Whether `pid` runs (a zombie does not).
    fn alive(pid: i32) -> bool {
        std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|s| {
            !s.rsplit(')')
                .next()
                .unwrap_or("")
                .trim_start()
                .starts_with('Z')
        })
    }

    /// The process whose id `pid_file` holds (a compiler's child) is gone within 5 s.
    fn assert_dies(pid_file: &std::path::Path) {
        let pid: i32 = std::fs::read_to_string(pid_file)
            .unwrap()
            .trim()
            .parse()
            .unwrap();
        let t = Instant::now();
        while alive(pid) && t.elapsed() < Duration::from_secs(5) {
            std::thread::sleep(Duration::from_millis(20));
        }
        assert!(!alive(pid), "the compiler's child {pid} survived");
    }

    #[test]
    fn diagnostics_are_escaped_and_cut() {
        let text = diagnostics(b"\x1b[31merror\x1b[0m: x\r\n\tnote\0\xff\n");
        assert_eq!(
            text,
            "\\u{1b}[31merror\\u{1b}[0m: x\\r\n\tnote\\u{0}\u{fffd}\n"
        );
        let long = "é".repeat(OUTPUT_LIMIT);
        let text = diagnostics(long.as_bytes());
        assert!(text.len() < OUTPUT_LIMIT + 100, "{}", text.len());
        assert!(text.ends_with(&format!(
            "[kiln: {} more bytes of output cut]\n",
            OUTPUT_LIMIT
        )));
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
