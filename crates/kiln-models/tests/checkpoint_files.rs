//! Which files a checkpoint is read from: a shard index is followed exactly, files outside the
//! model folder are refused, a single file wins over an index (as in transformers), and the
//! checkpoint is checked against the config before any graph is built.
mod common;

use common::*;
use kiln_compile::{CompileError, CompileOptions, CompileReport};
use kiln_compile::{LoadError, Loaded, Target};
use kiln_ir::Graph;
use kiln_models::weights::{Checkpoint, INDEX_FILE, SINGLE_FILE};
use kiln_models::{weight_shapes, QwenConfig, WeightDtype};
use kiln_runtime::RunError;
use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};

const SHARD1: &str = "model-00001-of-00003.safetensors";
const SHARD2: &str = "model-00002-of-00003.safetensors";
const SHARD3: &str = "model-00003-of-00003.safetensors";

fn edit_index(dir: &Path, f: impl FnOnce(&mut serde_json::Map<String, serde_json::Value>)) {
    let p = dir.join(INDEX_FILE);
    let mut v: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&p).unwrap()).unwrap();
    f(v["weight_map"].as_object_mut().unwrap());
    std::fs::write(p, v.to_string()).unwrap();
}

fn config(dir: &Path) -> QwenConfig {
    QwenConfig::from_file(&dir.join("config.json")).unwrap()
}

fn open_err(dir: &Path) -> String {
    match Checkpoint::open(dir).and_then(|c| c.check(&config(dir))) {
        Ok(()) => panic!("{} should be refused", dir.display()),
        Err(e) => e.to_string(),
    }
}

/// The f32 values of tensor `name` as kiln loads it from `dir`.
fn loaded(dir: &Path, name: &str) -> Vec<f32> {
    let ck = Checkpoint::open(dir).unwrap();
    let shape = weight_shapes(&config(dir))
        .into_iter()
        .find(|(n, _)| n == name)
        .unwrap()
        .1;
    let t = ck
        .load(&[(name.to_string(), shape)], WeightDtype::F32)
        .unwrap();
    t[name].as_f32().to_vec()
}

#[test]
fn a_tensor_is_read_from_the_shard_the_index_names() {
    let d = copy_fixture("tiny-qwen3-sharded");
    // A second, different copy of the embedding (which the index files in shard 1) in shard 3.
    let name = "model.embed_tokens.weight";
    let original = loaded(d.path(), name);
    rewrite_safetensors(&d.path().join(SHARD3), |ts| {
        let n = original.len();
        ts.push((
            name.into(),
            safetensors::Dtype::F32,
            vec![256, 64],
            vec![0; 4 * n],
        ));
    });
    assert_eq!(
        loaded(d.path(), name),
        original,
        "read from the shard the index names"
    );
}

#[test]
fn a_tensor_in_another_shard_than_the_index_says_is_an_error_naming_both() {
    let d = copy_fixture("tiny-qwen3-sharded");
    // down_proj of layer 0 is in shard 2; the index is edited to say shard 1.
    let name = "model.layers.0.mlp.down_proj.weight";
    edit_index(d.path(), |m| {
        m.insert(name.into(), SHARD1.into());
    });
    let e = open_err(d.path());
    assert!(
        e.contains(name) && e.contains(SHARD1) && e.contains(SHARD2),
        "{e}"
    );

    // A tensor the config needs that a shard holds but the index does not list.
    let d = copy_fixture("tiny-qwen3-sharded");
    edit_index(d.path(), |m| {
        m.remove(name);
    });
    let e = open_err(d.path());
    assert!(
        e.contains(name) && e.contains(SHARD2) && e.contains("not in the index"),
        "{e}"
    );
}

#[test]
fn index_entries_outside_the_model_folder_are_refused() {
    let root = tempfile::tempdir().unwrap();
    let dir = root.path().join("model");
    copy_fixture_into("tiny-qwen3-sharded", &dir);
    // A perfectly valid shard, but beside the model folder, not in it.
    std::fs::rename(dir.join(SHARD3), root.path().join(SHARD3)).unwrap();
    let outside = root.path().join(SHARD3);
    // Point the index's entries for shard 3 at `file`.
    let in_shard3: Vec<String> = {
        let v: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(dir.join(INDEX_FILE)).unwrap()).unwrap();
        let m = v["weight_map"].as_object().unwrap();
        m.iter()
            .filter(|(_, f)| f.as_str() == Some(SHARD3))
            .map(|(t, _)| t.clone())
            .collect()
    };
    let point_shard3_at = |file: &str| {
        edit_index(&dir, |m| {
            for t in &in_shard3 {
                m.insert(t.clone(), file.into());
            }
        })
    };
    for entry in [
        format!("../{SHARD3}"),
        outside.display().to_string(),
        format!("./../model/../{SHARD3}"),
    ] {
        point_shard3_at(&entry);
        let e = open_err(&dir);
        assert!(
            e.contains(&entry) && e.contains("not a file inside the model folder"),
            "{entry}: {e}"
        );
    }
    // A symlink inside the folder that resolves outside it.
    point_shard3_at(SHARD3);
    std::os::unix::fs::symlink(&outside, dir.join(SHARD3)).unwrap();
    let e = open_err(&dir);
    assert!(e.contains("outside the model folder"), "{e}");
}

#[test]
fn a_hugging_face_hub_snapshot_with_symlinked_blobs_loads() {
    // The hub cache layout: <repo>/snapshots/<rev>/<file> -> ../../blobs/<hash>.
    let root = tempfile::tempdir().unwrap();
    let repo = root.path().join("models--tiny--qwen3");
    let snap = repo.join("snapshots/0123abc");
    std::fs::create_dir_all(repo.join("blobs")).unwrap();
    std::fs::create_dir_all(&snap).unwrap();
    let src = fixture("tiny-qwen3");
    for (i, f) in ["config.json", SINGLE_FILE].iter().enumerate() {
        std::fs::copy(src.join(f), repo.join(format!("blobs/{i:040}"))).unwrap();
        std::os::unix::fs::symlink(format!("../../blobs/{i:040}"), snap.join(f)).unwrap();
    }
    let ck = Checkpoint::open(&snap).unwrap();
    ck.check(&config(&snap)).unwrap();
}

#[test]
fn a_single_file_wins_over_an_index_as_in_transformers() {
    let d = copy_fixture("tiny-qwen3-sharded");
    std::fs::copy(
        fixture("tiny-qwen3").join(SINGLE_FILE),
        d.path().join(SINGLE_FILE),
    )
    .unwrap();
    // The shards are never read: break one.
    std::fs::write(d.path().join(SHARD2), b"not a safetensors file").unwrap();
    let ck = Checkpoint::open(d.path()).unwrap();
    ck.check(&config(d.path())).unwrap();
    // Without the single file the index is used, and the broken shard is named.
    std::fs::remove_file(d.path().join(SINGLE_FILE)).unwrap();
    let e = open_err(d.path());
    assert!(
        e.contains(SHARD2) && e.contains("not a valid safetensors file"),
        "{e}"
    );
}

/// A target that counts the graphs it is asked to compile and compiles none of them.
#[derive(Default)]
struct CountingTarget {
    loads: AtomicUsize,
}

impl Target for CountingTarget {
    fn name(&self) -> &'static str {
        "counting"
    }
    fn compile(&self, _: &Graph, _: &CompileOptions<'_>) -> Result<CompileReport, CompileError> {
        self.loads.fetch_add(1, Ordering::SeqCst);
        Err(CompileError::InvalidGraph(
            "the counting target compiles nothing".into(),
        ))
    }
    fn load(&self, _: &Graph, _: &CompileOptions<'_>) -> Result<Loaded, LoadError> {
        self.loads.fetch_add(1, Ordering::SeqCst);
        Err(CompileError::InvalidGraph("the counting target compiles nothing".into()).into())
    }
    fn bandwidth(&self) -> Option<Result<(String, f64), RunError>> {
        None
    }
}

#[test]
fn the_checkpoint_is_checked_before_any_graph_is_built() {
    let d = copy_fixture("tiny-qwen3");
    rewrite_safetensors(&d.path().join(SINGLE_FILE), |ts| {
        ts.retain(|t| t.0 != "model.layers.1.mlp.up_proj.weight")
    });
    let target = CountingTarget::default();
    let e = load_with(d.path(), &target).err().unwrap().to_string();
    assert!(
        e.contains("tensor 'model.layers.1.mlp.up_proj.weight' not found"),
        "{e}"
    );
    assert_eq!(
        target.loads.load(Ordering::SeqCst),
        0,
        "a graph was compiled"
    );

    // A config claiming 10000 layers (the most kiln builds): the missing layer 2 is reported
    // from the headers, without building a 10000-layer graph.
    let d = copy_fixture("tiny-qwen3");
    edit_config(d.path(), |v| {
        v["num_hidden_layers"] = 10_000.into();
        v.as_object_mut().unwrap().remove("layer_types");
    });
    let e = load_with(d.path(), &target).err().unwrap().to_string();
    assert!(
        e.contains("tensor 'model.layers.2.input_layernorm.weight' not found")
            && e.contains("the config needs 110002 tensors; the checkpoint holds 24"),
        "{e}"
    );
    assert_eq!(target.loads.load(Ordering::SeqCst), 0);
}
