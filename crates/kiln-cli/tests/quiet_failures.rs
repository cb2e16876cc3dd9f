//! Issue 28, defect 11, end to end: what `kiln` did silently (or confusingly) and now says —
//! generation_config.json's stop tokens, ids and characters the tokenizer lacks, `--chat`
//! misuse, two outputs on one file, a cache that is not there, a relative `CC`, a size limit
//! that underflows, a path where a URL belongs, a NUL in a URL, NaN weights, `bench --out`.

mod common;

use common::*;
use serde_json::{json, Value};
use std::path::Path;
use std::time::Duration;

const DEADLINE: Duration = Duration::from_secs(300);

fn greedy() -> Vec<u64> {
    let r: Value = serde_json::from_str(
        &std::fs::read_to_string(fixture("tiny-qwen3").join("reference/p1.json")).unwrap(),
    )
    .unwrap();
    r["greedy_ids"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_u64().unwrap())
        .collect()
}

/// The tiny fixture with the Qwen tokenizer cut to its first `vocab` ids, edited by `edit`.
fn tiny_with_tokenizer(vocab: u32, edit: impl FnOnce(&mut Value)) -> (tempfile::TempDir, String) {
    let (d, dir) = model_copy("tiny-qwen3");
    let mut v: Value =
        serde_json::from_slice(&kiln_models::testing::small_qwen_tokenizer_json(vocab)).unwrap();
    edit(&mut v);
    std::fs::write(dir.join("tokenizer.json"), v.to_string()).unwrap();
    let dir = dir.to_str().unwrap().to_string();
    (d, dir)
}

#[test]
fn generation_config_stop_tokens_end_generation() {
    let g = greedy();
    let (_d, dir) = model_copy("tiny-qwen3");
    std::fs::write(
        dir.join("generation_config.json"),
        json!({ "eos_token_id": [g[1], 200] }).to_string(),
    )
    .unwrap();
    let mut args = run_args(&dir);
    args.retain(|a| a != "--ignore-eos");
    args.push("--json".into());
    let r = Case::new().run(&strs(&args), DEADLINE);
    assert!(r.ok(), "{r:?}");
    let v = r.json();
    assert_eq!(v["generated_ids"], json!(g[..2]), "{v}");
    assert_eq!(v["finish_reason"], "eos");
}

#[test]
fn generated_ids_the_tokenizer_lacks_are_shown_and_warned_about() {
    // Greedy ids 19, 85, 101, 228: some have no token in the Qwen tokenizer's first 100.
    let (_d, dir) = tiny_with_tokenizer(100, |_| {});
    let tok = kiln_models::Tokenizer::from_json(
        &std::fs::read(Path::new(&dir).join("tokenizer.json")).unwrap(),
    )
    .unwrap();
    let ids: Vec<u32> = greedy()[..4].iter().map(|&i| i as u32).collect();
    let unknown = tok.unknown_ids(&ids);
    assert!(!unknown.is_empty());
    let mut args = run_args(Path::new(&dir));
    args.push("--json".into());
    let r = Case::new().run(&strs(&args), DEADLINE);
    assert!(r.ok(), "{r:?}");
    let text = r.json()["text"].as_str().unwrap().to_string();
    assert_eq!(text.matches('\u{FFFD}').count(), unknown.len(), "{text:?}");
    assert!(
        r.stderr.contains("no token in the tokenizer")
            && r.stderr.contains(&format!("{unknown:?}")),
        "{}",
        r.stderr
    );
}

#[test]
fn a_prompt_character_the_tokenizer_lacks_is_an_error() {
    let (_d, dir) = tiny_with_tokenizer(100, |_| {});
    let r = Case::new().run(
        &[
            "run",
            "--model",
            &dir,
            "--prompt",
            "hé",
            "--max-new-tokens",
            "1",
        ],
        DEADLINE,
    );
    assert_eq!(r.status, Some(1), "{r:?}");
    assert!(r.stderr.contains("'é'"), "{}", r.stderr);
}

#[test]
fn chat_misuse_is_an_error() {
    let tiny = fixture("tiny-qwen3");
    let tiny = tiny.to_str().unwrap();
    // With token ids, --chat has nothing to wrap.
    let r = Case::new().run(
        &["run", "--model", tiny, "--prompt-ids", "1,2", "--chat"],
        DEADLINE,
    );
    assert_eq!(r.status, Some(2), "{r:?}");
    assert!(
        r.stderr.contains("--chat") && r.stderr.contains("--prompt-ids"),
        "{}",
        r.stderr
    );
    // A tokenizer without the chat tokens would encode the markup as plain text.
    let (_d, dir) = tiny_with_tokenizer(300, |v| {
        v["added_tokens"]
            .as_array_mut()
            .unwrap()
            .retain(|t| t["content"] != "<|im_start|>")
    });
    let r = Case::new().run(
        &["run", "--model", &dir, "--prompt", "hi", "--chat"],
        DEADLINE,
    );
    assert_eq!(r.status, Some(1), "{r:?}");
    assert!(r.stderr.contains("<|im_start|>"), "{}", r.stderr);
}

#[test]
fn two_outputs_on_one_file_are_refused_before_any_work() {
    let c = Case::new();
    let out = c.tmp.path().join("out.json");
    let same = c.tmp.path().join("./out.json");
    let mut args = run_args(&fixture("tiny-qwen3"));
    args.extend([
        "--trace".into(),
        out.to_str().unwrap().into(),
        "--logits-out".into(),
        same.to_str().unwrap().into(),
    ]);
    let r = c.run(&strs(&args), DEADLINE);
    assert_eq!(r.status, Some(1), "{r:?}");
    assert!(r.stderr.contains("same file"), "{}", r.stderr);
    assert!(entries(c.cache.path()).is_empty(), "compiled first");
}

#[test]
fn cache_commands_on_a_cache_that_is_not_there_say_so() {
    let c = Case::new();
    let missing = c.tmp.path().join("no-cache");
    let file = c.tmp.path().join("a-file");
    std::fs::write(&file, "").unwrap();
    let with_dir = |dir: &Path, args: &[&str]| {
        let mut cmd = c.cmd(args);
        cmd.env("KILN_CACHE_DIR", dir)
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped());
        finish(cmd, DEADLINE)
    };
    // A file: an error for every command.
    for args in [["cache", "stats"], ["cache", "verify"], ["cache", "prune"]] {
        let r = with_dir(&file, &args);
        assert_eq!(r.status, Some(1), "{args:?}: {r:?}");
        assert!(r.stderr.contains("not a folder"), "{}", r.stderr);
    }
    // Missing: verify has nothing to vouch for; stats says there is none (and creates none).
    let r = with_dir(&missing, &["cache", "verify"]);
    assert_eq!(r.status, Some(1), "{r:?}");
    assert!(r.stderr.contains("no kernel cache"), "{}", r.stderr);
    let r = with_dir(&missing, &["cache", "stats"]);
    assert!(r.ok() && r.stdout.contains("no kernel cache"), "{r:?}");
    let r = with_dir(&missing, &["cache", "stats", "--json"]);
    assert!(r.ok(), "{r:?}");
    assert_eq!(r.json()["exists"], false);
    assert!(!missing.exists());
}

#[test]
fn a_cache_limit_too_small_to_be_a_byte_is_an_error_not_no_limit() {
    let c = Case::new();
    for (value, ok) in [
        ("1e-400", false),
        ("1e-9", false),
        ("0", true),
        ("0.0", true),
    ] {
        let mut cmd = c.cmd(&["cache", "stats", "--json"]);
        cmd.env("KILN_CACHE_MAX_MB", value)
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped());
        let r = finish(cmd, DEADLINE);
        assert_eq!(r.ok(), ok, "{value}: {r:?}");
        if ok {
            assert_eq!(r.json()["limit_bytes"], Value::Null, "{value}: no limit");
        } else {
            assert!(r.stderr.contains("KILN_CACHE_MAX_MB"), "{}", r.stderr);
        }
    }
}

#[test]
fn a_relative_cc_works_from_the_scratch_folder_too() {
    let c = Case::new();
    let work = tempfile::tempdir().unwrap();
    let cc = std::env::var("CC")
        .ok()
        .filter(|c| !c.is_empty())
        .unwrap_or_else(|| "cc".into());
    let script = work.path().join("mycc");
    std::fs::write(&script, format!("#!/bin/sh\nexec {cc} \"$@\"\n")).unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755)).unwrap();
    let mut args = run_args(&fixture("tiny-qwen3"));
    args.push("--json".into());
    let mut cmd = c.cmd(&strs(&args));
    cmd.env("CC", "./mycc")
        .current_dir(work.path())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped());
    let r = finish(cmd, DEADLINE);
    assert!(r.ok(), "{r:?}");
}

#[test]
fn urls_that_are_paths_or_hold_a_nul_get_a_clear_message() {
    let c = Case::new();
    let tiny = fixture("tiny-qwen3");
    let r = c.run(
        &[
            "compile",
            "--model",
            tiny.to_str().unwrap(),
            "--remote-cache",
            "/srv/kiln",
        ],
        DEADLINE,
    );
    assert_eq!(r.status, Some(1), "{r:?}");
    assert!(r.stderr.contains("file:///srv/kiln"), "{}", r.stderr);
    let r = c.run(
        &["cache", "pull", "--remote-cache", "file:///srv/a%00b"],
        DEADLINE,
    );
    assert_eq!(r.status, Some(1), "{r:?}");
    assert!(
        r.stderr.contains("NUL") && !r.stderr.contains('\0'),
        "{:?}",
        r.stderr
    );
}

#[test]
fn nan_weights_are_an_error_naming_the_logits() {
    let (_d, dir) = model_copy("tiny-qwen3");
    // model.norm.weight := NaN, in place (the file's layout kept).
    let path = dir.join("model.safetensors");
    let mut bytes = std::fs::read(&path).unwrap();
    let n = u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize;
    let header: Value = serde_json::from_slice(&bytes[8..8 + n]).unwrap();
    let at = &header["model.norm.weight"]["data_offsets"];
    let (s, e) = (
        at[0].as_u64().unwrap() as usize,
        at[1].as_u64().unwrap() as usize,
    );
    for c in bytes[8 + n + s..8 + n + e].chunks_exact_mut(4) {
        c.copy_from_slice(&f32::NAN.to_le_bytes());
    }
    std::fs::write(&path, bytes).unwrap();
    let r = Case::new().run(&strs(&run_args(&dir)), DEADLINE);
    assert_eq!(r.status, Some(1), "{r:?}");
    assert!(r.stderr.contains("not finite"), "{}", r.stderr);
}

#[test]
fn bench_out_errors_name_the_path_before_any_run() {
    let tiny = fixture("tiny-qwen3");
    let r = Case::new().run(
        &[
            "bench",
            "decode",
            "--model",
            tiny.to_str().unwrap(),
            "--out",
            "/dev/null/bench",
        ],
        DEADLINE,
    );
    assert_eq!(r.status, Some(1), "{r:?}");
    assert!(r.stderr.contains("/dev/null/bench"), "{}", r.stderr);
    assert!(
        r.elapsed < Duration::from_secs(20),
        "refused before running"
    );
}
