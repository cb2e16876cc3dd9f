//! Bad checkpoints give errors that name the culprit: file, tensor, key.
use kiln_compile::CompileOptions;
use kiln_models::{LoadOptions, Model, ModelSource, QwenConfig};
use std::path::{Path, PathBuf};

fn fixture() -> PathBuf {
    kiln_models::testing::fixtures().join("tiny-qwen3")
}

/// A writable copy of tiny-qwen3.
fn copy() -> tempfile::TempDir {
    let d = tempfile::tempdir().unwrap();
    for f in ["config.json", "model.safetensors"] {
        std::fs::copy(fixture().join(f), d.path().join(f)).unwrap();
        let mut p = std::fs::metadata(d.path().join(f)).unwrap().permissions();
        #[allow(clippy::permissions_set_readonly_false)]
        p.set_readonly(false);
        std::fs::set_permissions(d.path().join(f), p).unwrap();
    }
    d
}

fn load_err(dir: &Path) -> String {
    let cpu = kiln_cpu::CpuBackend::default().with_run_threads(1);
    let opts = LoadOptions {
        compile: CompileOptions {
            threads: 1,
            ..Default::default()
        },
        ..LoadOptions::new(&cpu)
    };
    match Model::load(&ModelSource::Dir(dir.to_path_buf()), &opts) {
        Ok(_) => panic!("loading {} should fail", dir.display()),
        Err(e) => e.to_string(),
    }
}

/// Rewrites model.safetensors with `edit` applied to the (name, dtype, shape, bytes) list.
fn rewrite(dir: &Path, edit: impl Fn(&mut Vec<(String, safetensors::Dtype, Vec<usize>, Vec<u8>)>)) {
    let bytes = std::fs::read(dir.join("model.safetensors")).unwrap();
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    let mut ts: Vec<_> = st
        .tensors()
        .into_iter()
        .map(|(n, v)| {
            (
                n.to_string(),
                v.dtype(),
                v.shape().to_vec(),
                v.data().to_vec(),
            )
        })
        .collect();
    edit(&mut ts);
    let views: Vec<(String, safetensors::tensor::TensorView)> = ts
        .iter()
        .map(|(n, d, s, b)| {
            (
                n.clone(),
                safetensors::tensor::TensorView::new(*d, s.clone(), b).unwrap(),
            )
        })
        .collect();
    safetensors::serialize_to_file(views, None, &dir.join("model.safetensors")).unwrap();
}

fn edit_config(dir: &Path, f: impl Fn(&mut serde_json::Value)) {
    let p = dir.join("config.json");
    let mut v: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&p).unwrap()).unwrap();
    f(&mut v);
    std::fs::write(p, v.to_string()).unwrap();
}

#[test]
fn missing_tensor() {
    let d = copy();
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
    let d = copy();
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
    let d = copy();
    rewrite(d.path(), |ts| {
        let t = ts.iter_mut().find(|t| t.0 == "model.norm.weight").unwrap();
        t.1 = safetensors::Dtype::I32;
    });
    let e = load_err(d.path());
    assert!(e.contains("'model.norm.weight' has dtype I32"), "{e}");
}

#[test]
fn truncated_file() {
    let d = copy();
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
    let d = copy();
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
    let text = std::fs::read_to_string(fixture().join("config.json")).unwrap();
    let mut v: serde_json::Value = serde_json::from_str(&text).unwrap();
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
    let cpu = kiln_cpu::CpuBackend::default().with_run_threads(1);
    let opts = LoadOptions {
        compile: CompileOptions {
            threads: 1,
            ..Default::default()
        },
        ..LoadOptions::new(&cpu)
    };
    let mut m = Model::load(&ModelSource::Dir(fixture()), &opts).unwrap();
    let e = m
        .generate(&[1, 999], 2, &Default::default(), &[], |_| {})
        .err()
        .unwrap()
        .to_string();
    assert!(e.contains("token id 999") && e.contains("256"), "{e}");
}
