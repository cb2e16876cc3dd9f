//! `kiln run` at the limits: the context limit keeps what was generated and says so
//! (`finish_reason`), and what can be checked before compiling (the prompt's length, the
//! output paths) fails before anything is compiled.

use serde_json::Value;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn kiln(args: &[&str], cache: &Path) -> Output {
    Command::new(env!("CARGO_BIN_EXE_kiln"))
        .args(args)
        .env("KILN_CACHE_DIR", cache)
        .env_remove("KILN_COMPILE_THREADS")
        .output()
        .expect("run kiln")
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

fn json(out: &Output) -> Value {
    assert!(out.status.success(), "kiln failed: {}", stderr(out));
    let text = String::from_utf8(out.stdout.clone()).unwrap();
    assert_eq!(text.trim().lines().count(), 1, "one JSON object: {text}");
    serde_json::from_str(text.trim()).unwrap()
}

/// Regular files under `dir` (compiled kernels land there).
fn files_under(dir: &Path) -> usize {
    let Ok(rd) = std::fs::read_dir(dir) else {
        return 0;
    };
    rd.map(|e| e.unwrap().path())
        .map(|p| if p.is_dir() { files_under(&p) } else { 1 })
        .sum()
}

/// tiny-qwen3 (files only) with a context of `ctx` positions.
fn tiny_with_context(ctx: u64) -> tempfile::TempDir {
    let src = kiln_models::testing::fixtures().join("tiny-qwen3");
    let d = tempfile::tempdir().unwrap();
    for f in ["model.safetensors", "generation_config.json"] {
        std::fs::copy(src.join(f), d.path().join(f)).unwrap();
    }
    let mut v: Value =
        serde_json::from_str(&std::fs::read_to_string(src.join("config.json")).unwrap()).unwrap();
    v["max_position_embeddings"] = ctx.into();
    std::fs::write(d.path().join("config.json"), v.to_string()).unwrap();
    d
}

/// The prompt (as `--prompt-ids`) and the greedy tokens transformers computed for it.
fn reference() -> (String, Vec<Value>) {
    let r = kiln_models::testing::Reference::read("tiny-qwen3", "p1");
    let greedy = r.greedy_ids.iter().map(|&id| Value::from(id)).collect();
    (r.prompt_arg(), greedy)
}

#[test]
fn json_output_keeps_every_token_generated_up_to_the_context_limit() {
    let (prompt, greedy) = reference(); // 8 ids
    let model = tiny_with_context(11);
    let cache = tempfile::tempdir().unwrap();
    let logits: PathBuf = cache.path().join("logits.json");
    let r = json(&kiln(
        &[
            "run",
            "--model",
            model.path().to_str().unwrap(),
            "--prompt-ids",
            &prompt,
            "--max-new-tokens",
            "16",
            "--ignore-eos",
            "--json",
            "--logits-out",
            logits.to_str().unwrap(),
        ],
        cache.path(),
    ));
    assert_eq!(r["generated_ids"].as_array().unwrap(), &greedy[..3]);
    assert_eq!(r["finish_reason"], "length");
    let l: Value = serde_json::from_str(&std::fs::read_to_string(&logits).unwrap()).unwrap();
    assert_eq!(l["step_logits"].as_array().unwrap().len(), 3);

    // Within the context: max_new_tokens; the text mode says why it stopped on stderr.
    let r = json(&kiln(
        &[
            "run",
            "--model",
            model.path().to_str().unwrap(),
            "--prompt-ids",
            &prompt,
            "--max-new-tokens",
            "2",
            "--ignore-eos",
            "--json",
        ],
        cache.path(),
    ));
    assert_eq!(r["generated_ids"].as_array().unwrap(), &greedy[..2]);
    assert_eq!(r["finish_reason"], "max_new_tokens");
    let out = kiln(
        &[
            "run",
            "--model",
            model.path().to_str().unwrap(),
            "--prompt-ids",
            &prompt,
            "--max-new-tokens",
            "16",
            "--ignore-eos",
        ],
        cache.path(),
    );
    assert!(out.status.success(), "{}", stderr(&out));
    let e = stderr(&out);
    assert!(e.contains("context limit") && e.contains("(length)"), "{e}");
}

#[test]
fn a_prompt_longer_than_the_context_fails_before_compiling() {
    let (prompt, _) = reference();
    let model = tiny_with_context(7);
    let cache = tempfile::tempdir().unwrap();
    let out = kiln(
        &[
            "run",
            "--model",
            model.path().to_str().unwrap(),
            "--prompt-ids",
            &prompt,
            "--json",
        ],
        cache.path(),
    );
    let e = stderr(&out);
    assert!(
        !out.status.success() && e.contains("max_position_embeddings = 7"),
        "{e}"
    );
    // With --json, the failure is one JSON error object on stdout.
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert!(
        v["error"]
            .as_str()
            .is_some_and(|m| m.contains("max_position_embeddings = 7")),
        "{v}"
    );
    assert_eq!(files_under(cache.path()), 0, "kernels were compiled first");
}

#[test]
fn unwritable_output_paths_fail_before_compiling() {
    let (prompt, _) = reference();
    let model = kiln_models::testing::fixtures().join("tiny-qwen3");
    let cache = tempfile::tempdir().unwrap();
    let scratch = tempfile::tempdir().unwrap();
    let missing = scratch.path().join("no/such/folder/out.json");
    let folder = scratch.path().to_str().unwrap().to_string();
    for (flag, path) in [
        ("--logits-out", missing.to_str().unwrap()),
        ("--logits-out", folder.as_str()),
        ("--trace", missing.to_str().unwrap()),
    ] {
        let out = kiln(
            &[
                "run",
                "--model",
                model.to_str().unwrap(),
                "--prompt-ids",
                &prompt,
                "--max-new-tokens",
                "2",
                flag,
                path,
            ],
            cache.path(),
        );
        let e = stderr(&out);
        assert!(
            !out.status.success() && e.contains(flag) && e.contains(path),
            "{flag} {path}: {e}"
        );
        assert_eq!(
            files_under(cache.path()),
            0,
            "{flag} {path}: compiled first"
        );
    }
    // `kiln compile --trace` too.
    let out = kiln(
        &[
            "compile",
            "--model",
            model.to_str().unwrap(),
            "--trace",
            missing.to_str().unwrap(),
        ],
        cache.path(),
    );
    assert!(!out.status.success() && stderr(&out).contains("--trace"));
    assert_eq!(files_under(cache.path()), 0);
    // A writable path is left as it was found: no probe file remains.
    assert_eq!(files_under(scratch.path()), 0);
}
