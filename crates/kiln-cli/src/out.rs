//! Everything kiln prints on stdout goes through here, so that a failing stdout is handled in
//! one place instead of panicking inside `println!`:
//!
//! - **EPIPE** (the reader went away: `kiln run | head -c 1`) ends kiln quietly, the way it
//!   ends other Unix tools: by SIGPIPE, with its default action, so the shell sees 141
//!   (128 + 13) as it does for `yes | head -1`. Not 0: kiln did not deliver all its output, and
//!   under `set -o pipefail` a script sees it exactly as it sees any other producer cut short.
//!   The death is raised only once kiln has nothing left to clean up (output comes after the
//!   compile, or between generated tokens).
//! - **Any other write error** (`> /dev/full`: ENOSPC, EIO, ...) is an error message on stderr
//!   and exit status 1, like every other failure.
//! - **A closed stdout** (`>&-`): Rust's runtime reopens a closed standard stream on
//!   `/dev/null` (read-write) before `main`, so writes would succeed into nowhere. kiln
//!   recognises that stream and refuses, before any work, to run a command that prints on
//!   stdout: exiting 0 having lost the output would be a lie. (`> /dev/null` opens it
//!   write-only and is fine.)
//!
//! With `--json`, a command that fails prints `{"error": "..."}` on stdout (unless stdout is
//! what failed), so that a program reading stdout always gets one JSON object.

use std::io::Write;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;

/// Whether the command prints JSON on stdout.
static JSON: AtomicBool = AtomicBool::new(false);
/// Whether a JSON object has been printed (the report, or an error): never a second one.
static JSON_PRINTED: AtomicBool = AtomicBool::new(false);
/// Held while writing, so that lines from two threads (the signal handler's error object, the
/// main thread's report) never interleave.
static STDOUT: Mutex<()> = Mutex::new(());

/// Writing to stdout failed: the command's output is lost.
#[derive(Debug, thiserror::Error)]
#[error("cannot write to stdout: {0}")]
pub struct StdoutError(pub std::io::Error);

impl StdoutError {
    /// The reader of a pipe went away.
    pub fn is_broken_pipe(&self) -> bool {
        self.0.kind() == std::io::ErrorKind::BrokenPipe
    }
}

/// A failure whose report is already on stdout (`kiln cache verify --json` with bad entries):
/// no JSON error object follows it.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct AlreadyReported(pub String);

/// Writes `text` to stdout and flushes it.
pub fn print(text: &str) -> Result<(), StdoutError> {
    let _one_writer = STDOUT.lock().unwrap_or_else(|p| p.into_inner());
    if closed_at_start() {
        return Err(StdoutError(closed_error()));
    }
    let mut out = std::io::stdout().lock();
    out.write_all(text.as_bytes())
        .and_then(|()| out.flush())
        .map_err(StdoutError)
}

/// `text` and a newline.
pub fn line(text: &str) -> Result<(), StdoutError> {
    print(&format!("{text}\n"))
}

/// The command's one JSON object, on a line of its own.
pub fn json(value: &impl serde::Serialize) -> anyhow::Result<()> {
    let text = serde_json::to_string(value)?;
    line(&text)?;
    JSON_PRINTED.store(true, Ordering::SeqCst);
    Ok(())
}

/// For a streaming writer that cannot return an error (generated text, token by token): a
/// failure ends kiln as [`exit_for`] does.
pub fn print_or_exit(text: &str) {
    if let Err(e) = print(text) {
        exit_for(&e)
    }
}

/// Ends kiln after stdout failed: quietly by SIGPIPE for a broken pipe, else with the error
/// on stderr and status 1.
pub fn exit_for(e: &StdoutError) -> ! {
    if e.is_broken_pipe() {
        let _ = signal_hook::low_level::emulate_default_handler(signal_hook::consts::SIGPIPE);
        std::process::exit(128 + signal_hook::consts::SIGPIPE);
    }
    let _ = writeln!(std::io::stderr(), "error: {e}");
    std::process::exit(1)
}

/// Says that this command prints JSON on stdout (its errors then do too).
pub fn set_json(on: bool) {
    JSON.store(on, Ordering::SeqCst);
}

/// Prints `{"error": message}` for a `--json` command that failed, unless it printed its
/// object already; best effort (stdout may be what failed).
pub fn json_error(message: &str) {
    if JSON.load(Ordering::SeqCst) && !JSON_PRINTED.swap(true, Ordering::SeqCst) {
        let _ = line(&serde_json::json!({ "error": message }).to_string());
    }
}

/// Fails, before any work, when stdout was closed at start and the command would print there.
pub fn check_open(command_prints: bool) -> Result<(), StdoutError> {
    if command_prints && closed_at_start() {
        return Err(StdoutError(closed_error()));
    }
    Ok(())
}

fn closed_error() -> std::io::Error {
    std::io::Error::new(
        std::io::ErrorKind::NotConnected,
        "stdout is closed (started with >&-), so this command's output would be lost; \
         redirect it to /dev/null to discard it",
    )
}

/// Whether fd 1 is the `/dev/null` Rust's runtime opens (read-write) in place of a closed
/// stdout. A shell's `> /dev/null` opens it write-only.
fn closed_at_start() -> bool {
    static CLOSED: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *CLOSED.get_or_init(|| {
        // SAFETY: fstat and fcntl on fd 1 with a zeroed stat buffer; no memory is shared.
        unsafe {
            let mut st: libc::stat = std::mem::zeroed();
            if libc::fstat(1, &mut st) != 0 {
                return true;
            }
            let dev_null = std::fs::metadata("/dev/null").ok();
            let is_dev_null = (st.st_mode & libc::S_IFMT) == libc::S_IFCHR
                && dev_null.is_some_and(|m| {
                    use std::os::unix::fs::MetadataExt;
                    m.rdev() == st.st_rdev
                });
            let flags = libc::fcntl(1, libc::F_GETFL);
            is_dev_null && flags >= 0 && (flags & libc::O_ACCMODE) == libc::O_RDWR
        }
    })
}
