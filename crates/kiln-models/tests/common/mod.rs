//! Helpers shared by the tests that edit copies of the reference fixtures.
#![allow(dead_code)]

use kiln_compile::CompileOptions;
use kiln_models::{LoadOptions, Model, ModelError, ModelSource};
use std::path::{Path, PathBuf};

pub fn fixture(name: &str) -> PathBuf {
    kiln_models::testing::fixtures().join(name)
}

/// A writable copy of the files of fixture `name` (not its reference outputs) in `into`.
pub fn copy_fixture_into(name: &str, into: &Path) {
    std::fs::create_dir_all(into).unwrap();
    for e in std::fs::read_dir(fixture(name)).unwrap() {
        let e = e.unwrap();
        if e.file_type().unwrap().is_file() {
            let to = into.join(e.file_name());
            std::fs::copy(e.path(), &to).unwrap();
            let mut p = std::fs::metadata(&to).unwrap().permissions();
            #[allow(clippy::permissions_set_readonly_false)]
            p.set_readonly(false);
            std::fs::set_permissions(&to, p).unwrap();
        }
    }
}

/// A writable copy of fixture `name` in a fresh temporary folder.
pub fn copy_fixture(name: &str) -> tempfile::TempDir {
    let d = tempfile::tempdir().unwrap();
    copy_fixture_into(name, d.path());
    d
}

pub fn edit_config(dir: &Path, f: impl FnOnce(&mut serde_json::Value)) {
    let p = dir.join("config.json");
    let mut v: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&p).unwrap()).unwrap();
    f(&mut v);
    std::fs::write(p, serde_json::to_string_pretty(&v).unwrap()).unwrap();
}

pub fn fixture_config() -> serde_json::Value {
    serde_json::from_str(
        &std::fs::read_to_string(fixture("tiny-qwen3").join("config.json")).unwrap(),
    )
    .unwrap()
}

pub fn cpu() -> kiln_cpu::CpuBackend {
    kiln_cpu::CpuBackend::default().with_run_threads(1)
}

/// A kernel cache for these tests (the fixtures' edited copies all compile to the same
/// kernels), in Cargo's scratch folder for integration tests.
fn test_cache() -> Option<kiln_compile::KernelCache> {
    kiln_compile::KernelCache::open(Path::new(env!("CARGO_TARGET_TMPDIR")).join("kernel-cache"))
        .ok()
}

pub fn load_with(dir: &Path, target: &dyn kiln_compile::Target) -> Result<Model, ModelError> {
    let opts = LoadOptions {
        compile: CompileOptions {
            threads: 1,
            cache: test_cache(),
            ..Default::default()
        },
        ..LoadOptions::new(target)
    };
    Model::load(&ModelSource::Dir(dir.to_path_buf()), &opts)
}

pub fn load(dir: &Path) -> Result<Model, ModelError> {
    load_with(dir, &cpu())
}

/// The prompt and greedy ids (16, EOS disabled) transformers computed for `prompt` of fixture
/// `name`.
pub fn reference(name: &str, prompt: &str) -> (Vec<u32>, Vec<u32>) {
    let r = kiln_models::testing::Reference::read(name, prompt);
    (r.prompt_ids, r.greedy_ids)
}

/// One tensor of a safetensors file: (name, dtype, shape, bytes).
pub type RawTensor = (String, safetensors::Dtype, Vec<usize>, Vec<u8>);

pub fn read_safetensors(path: &Path) -> Vec<RawTensor> {
    let bytes = std::fs::read(path).unwrap();
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    let mut ts: Vec<RawTensor> = st
        .tensors()
        .into_iter()
        .map(|(n, v)| (n, v.dtype(), v.shape().to_vec(), v.data().to_vec()))
        .collect();
    ts.sort_by(|a, b| a.0.cmp(&b.0));
    ts
}

pub fn write_safetensors(path: &Path, ts: &[RawTensor]) {
    let views: Vec<(String, safetensors::tensor::TensorView)> = ts
        .iter()
        .map(|(n, d, s, b)| {
            (
                n.clone(),
                safetensors::tensor::TensorView::new(*d, s.clone(), b).unwrap(),
            )
        })
        .collect();
    safetensors::serialize_to_file(views, None, path).unwrap();
}

/// Rewrites a safetensors file with `edit` applied to its tensors.
pub fn rewrite_safetensors(path: &Path, edit: impl FnOnce(&mut Vec<RawTensor>)) {
    let mut ts = read_safetensors(path);
    edit(&mut ts);
    write_safetensors(path, &ts);
}

/// An f32 tensor of `n` zeros.
pub fn zeros_f32(name: &str, n: usize) -> RawTensor {
    (
        name.into(),
        safetensors::Dtype::F32,
        vec![n],
        vec![0; 4 * n],
    )
}
