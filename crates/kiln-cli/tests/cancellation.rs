//! Issue 28, defect 4: SIGINT and SIGTERM end `kiln compile` within about a second whatever
//! phase it is in (graph building, analysis, extraction, dedupe, codegen, cache I/O, the
//! compilers), with 128 + the signal. A compile of the deepest graph kiln builds (10 000
//! layers: tens of seconds) is signalled at several points of its run.

mod common;

use common::*;
use std::process::Stdio;
use std::time::{Duration, Instant};

/// How long after the signal kiln may take to exit: "about a second", with room for a machine
/// busy with other work.
const GRACE: Duration = Duration::from_secs(3);

/// Sends `signal` to a deep compile `delay` after its start and checks how it ended; false if
/// the compile had finished already (this machine ran it faster than the reference run).
fn signal_after(delay: Duration, signal: i32) -> bool {
    let c = Case::new();
    let tiny = fixture("tiny-qwen3");
    let mut cmd = c.cmd(&[
        "compile",
        "--model",
        tiny.to_str().unwrap(),
        "--layers",
        "10000",
        "--threads",
        "2",
    ]);
    cmd.stdout(Stdio::null()).stderr(Stdio::piped());
    let mut child = cmd.spawn().unwrap();
    std::thread::sleep(delay);
    if child.try_wait().unwrap().is_some() {
        return false;
    }
    // SAFETY: kill has no memory-safety preconditions.
    unsafe { libc::kill(child.id() as i32, signal) };
    let sent = Instant::now();
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        if sent.elapsed() > Duration::from_secs(120) {
            // SAFETY: as above.
            unsafe { libc::kill(child.id() as i32, libc::SIGKILL) };
            break child.wait().unwrap();
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let took = sent.elapsed();
    let mut stderr = String::new();
    use std::io::Read;
    child
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut stderr)
        .unwrap();
    assert_eq!(
        status.code(),
        Some(128 + signal),
        "signal {signal} after {delay:?}: {status}, {stderr}"
    );
    assert!(
        took < GRACE,
        "signal {signal} after {delay:?}: exited {took:?} later"
    );
    assert!(stderr.contains("interrupted by"), "{stderr}");
    let left = c.tmp_named("kiln-cc-");
    assert!(left.is_empty(), "scratch folders left: {left:?}");
    true
}

#[test]
fn a_signal_ends_a_deep_compile_within_a_second_in_every_phase() {
    // A reference run, uninterrupted: where each phase lies in time.
    let c = Case::new();
    let tiny = fixture("tiny-qwen3");
    let start = Instant::now();
    let r = c.run(
        &[
            "compile",
            "--model",
            tiny.to_str().unwrap(),
            "--layers",
            "10000",
            "--threads",
            "2",
            "--json",
        ],
        Duration::from_secs(900),
    );
    let wall = start.elapsed().as_secs_f64();
    assert!(r.ok(), "{r:?}");
    let report = r.json();
    let compile_s = report["compile_ms"].as_f64().unwrap() / 1e3;
    // Graph building comes before the compile (the rest of the wall time, mostly).
    let mut phases = vec![("graph building".to_string(), 0.0, wall - compile_s)];
    let mut at = wall - compile_s;
    for stage in report["stages"].as_array().unwrap() {
        let secs = stage["ms"].as_f64().unwrap() / 1e3;
        phases.push((stage["name"].as_str().unwrap().to_string(), at, secs));
        at += secs;
    }
    eprintln!("phases (name, start s, length s): {phases:?}");
    // Signal each phase long enough to aim at (0.6 s) in its middle, SIGTERM and SIGINT in
    // turn.
    let mut signals = [libc::SIGTERM, libc::SIGINT].into_iter().cycle();
    let mut tried = 0;
    for (name, start, len) in &phases {
        if *len < 0.6 {
            continue;
        }
        eprintln!("{name}: signal at {:.1} s", start + len / 2.0);
        let delay = Duration::from_secs_f64(start + len / 2.0);
        if signal_after(delay, signals.next().unwrap()) {
            tried += 1;
        }
    }
    // Graph building, analysis and extraction at least: the phases that take seconds here.
    assert!(tried >= 3, "too few phases hit: {phases:?}");
}
