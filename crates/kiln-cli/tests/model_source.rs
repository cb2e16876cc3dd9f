//! Issue 28, defect 9: a `--model` name that is both a folder and a preset is the folder (a
//! downloaded checkpoint is never silently replaced by random weights), with a note on stderr
//! saying so and how to get the preset (`preset:NAME`).

mod common;

use common::*;
use std::time::Duration;

const DEADLINE: Duration = Duration::from_secs(300);

#[test]
fn a_folder_named_like_a_preset_is_the_folder_and_says_so() {
    // ./qwen3-0.6b holds the tiny fixture.
    let work = tempfile::tempdir().unwrap();
    let (_d, tiny) = model_copy("tiny-qwen3");
    copy_dir(&tiny, &work.path().join("qwen3-0.6b"));
    let c = Case::new();
    let mut args = run_args(std::path::Path::new("qwen3-0.6b"));
    args.push("--json".into());
    let mut cmd = c.cmd(&strs(&args));
    cmd.current_dir(work.path())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped());
    let r = finish(cmd, DEADLINE);
    assert!(r.ok(), "{r:?}");
    // The fixture's tokens (transformers' greedy ids), not the preset's.
    let reference: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(fixture("tiny-qwen3").join("reference/p1.json")).unwrap(),
    )
    .unwrap();
    assert_eq!(
        r.json()["generated_ids"].as_array().unwrap()[..],
        reference["greedy_ids"].as_array().unwrap()[..4]
    );
    assert!(
        r.stderr.contains("both a folder and a preset")
            && r.stderr.contains("--model preset:qwen3-0.6b"),
        "{}",
        r.stderr
    );

    // preset:NAME is the preset, whatever is in the folder.
    let mut cmd = c.cmd(&[
        "compile",
        "--model",
        "preset:qwen3-0.6b",
        "--layers",
        "1",
        "--json",
    ]);
    cmd.current_dir(work.path())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped());
    let r = finish(cmd, DEADLINE);
    assert!(r.ok(), "{r:?}");
    assert!(!r.stderr.contains("both a folder"), "{}", r.stderr);
    let preset_digest = r.json()["artifact_digest"].clone();
    // The preset's sizes (hidden 1024) give other kernels than the fixture's (hidden 64).
    let r = c.run(
        &[
            "compile",
            "--model",
            tiny.to_str().unwrap(),
            "--layers",
            "1",
            "--json",
        ],
        DEADLINE,
    );
    assert!(r.ok(), "{r:?}");
    assert_ne!(r.json()["artifact_digest"], preset_digest);

    // An unknown preset: the list of presets.
    let r = c.run(&["compile", "--model", "preset:qwen9"], DEADLINE);
    assert_eq!(r.status, Some(1), "{r:?}");
    assert!(
        r.stderr.contains("unknown preset 'qwen9'") && r.stderr.contains("qwen3-0.6b"),
        "{}",
        r.stderr
    );
}
