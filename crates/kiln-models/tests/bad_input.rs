//! Bad checkpoints give errors that name the culprit: file, tensor, key.
mod common;

use common::*;
use kiln_models::QwenConfig;
use std::path::Path;

/// Why loading the checkpoint in `dir` fails.
fn load_err(dir: &Path) -> String {
    match load(dir) {
        Ok(_) => panic!("loading {} should fail", dir.display()),
        Err(e) => e.to_string(),
    }
}

/// Rewrites `dir`'s model.safetensors with `edit` applied to its tensors.
fn rewrite(dir: &Path, edit: impl FnOnce(&mut Vec<RawTensor>)) {
    rewrite_safetensors(&dir.join("model.safetensors"), edit)
}

#[test]
fn missing_tensor() {
    let d = copy_fixture("tiny-qwen3");
    rewrite(d.path(), |ts| {
        ts.retain(|t| t.0 != "model.layers.1.mlp.up_proj.weight")
    });
    let e = load_err(d.path());
    assert!(
        e.contains("tensor 'model.layers.1.mlp.up_proj.weight' not found")
            && e.contains("model.safetensors"),
        "{e}"
    );
}

#[test]
fn wrong_shape() {
    let d = copy_fixture("tiny-qwen3");
    rewrite(d.path(), |ts| {
        let t = ts.iter_mut().find(|t| t.0 == "model.norm.weight").unwrap();
        t.2 = vec![32];
        t.3.truncate(32 * 4);
    });
    let e = load_err(d.path());
    assert!(
        e.contains("'model.norm.weight' has shape [32]") && e.contains("[64]"),
        "{e}"
    );
}

#[test]
fn unsupported_dtype() {
    let d = copy_fixture("tiny-qwen3");
    rewrite(d.path(), |ts| {
        let t = ts.iter_mut().find(|t| t.0 == "model.norm.weight").unwrap();
        t.1 = safetensors::Dtype::I32;
    });
    let e = load_err(d.path());
    assert!(e.contains("'model.norm.weight' has dtype I32"), "{e}");
}

#[test]
fn truncated_file() {
    let d = copy_fixture("tiny-qwen3");
    let p = d.path().join("model.safetensors");
    let bytes = std::fs::read(&p).unwrap();
    std::fs::write(&p, &bytes[..bytes.len() - 1000]).unwrap();
    let e = load_err(d.path());
    assert!(
        e.contains("model.safetensors") && e.contains("truncated or corrupt"),
        "{e}"
    );
}

#[test]
fn config_errors_name_the_key() {
    let d = copy_fixture("tiny-qwen3");
    edit_config(d.path(), |v| {
        v.as_object_mut().unwrap().remove("hidden_size");
    });
    let e = load_err(d.path());
    assert!(
        e.contains("config.json") && e.contains("missing key 'hidden_size'"),
        "{e}"
    );
    edit_config(d.path(), |v| v["hidden_size"] = serde_json::json!("wide"));
    assert!(load_err(d.path()).contains("key 'hidden_size' must be a positive integer"));
    edit_config(d.path(), |v| {
        v["hidden_size"] = 64.into();
        v["architectures"] = serde_json::json!(["LlamaForCausalLM"]);
    });
    let e = load_err(d.path());
    assert!(
        e.contains("architecture 'LlamaForCausalLM' is not supported"),
        "{e}"
    );
    std::fs::write(d.path().join("config.json"), "{ not json").unwrap();
    assert!(load_err(d.path()).contains("invalid JSON"));
}

#[test]
fn both_rope_theta_spellings_are_accepted() {
    let mut v = fixture_config();
    v.as_object_mut().unwrap().remove("rope_theta");
    let c = QwenConfig::from_json(&v.to_string()).unwrap();
    assert_eq!(c.rope_theta, 1e6);
    v.as_object_mut().unwrap().remove("rope_parameters");
    v["rope_theta"] = 5e5.into();
    assert_eq!(
        QwenConfig::from_json(&v.to_string()).unwrap().rope_theta,
        5e5
    );
}

#[test]
fn out_of_range_token_is_an_error() {
    let mut m = load(&fixture("tiny-qwen3")).unwrap();
    let e = m
        .generate(&[1, 999], 2, &Default::default(), &[], |_| {})
        .err()
        .unwrap()
        .to_string();
    assert!(e.contains("token id 999") && e.contains("256"), "{e}");
}
