//! Every reader of untrusted files gets mutated versions of real ones (bit flips, truncations,
//! insertions, splices of other fixture files, JSON edits) and must answer with a value or an
//! error, never a panic: safetensors headers and shard indexes, `config.json`, kernel cache
//! entries, `tokenizer.json`. The same readers are fuzzed by `scripts/fuzz.sh` (cargo-fuzz,
//! nightly); these property tests run on stable in every `scripts/test.sh`.
mod common;

use common::*;
use kiln_models::weights::{Checkpoint, INDEX_FILE, SINGLE_FILE};
use kiln_models::{build_graph, weight_shapes, GraphOptions, QwenConfig, Tokenizer, WeightDtype};
use proptest::prelude::*;
use serde_json::{json, Value};
use std::path::Path;
use std::sync::OnceLock;

// ---- byte mutations -----------------------------------------------------------------------

/// Real files whose pieces get spliced into others.
fn donors() -> &'static Vec<Vec<u8>> {
    static D: OnceLock<Vec<Vec<u8>>> = OnceLock::new();
    D.get_or_init(|| {
        let sharded = fixture("tiny-qwen3-sharded");
        vec![
            std::fs::read(fixture("tiny-qwen3").join(SINGLE_FILE)).unwrap(),
            std::fs::read(fixture("tiny-qwen3").join("config.json")).unwrap(),
            std::fs::read(sharded.join(INDEX_FILE)).unwrap(),
            std::fs::read(sharded.join("model-00003-of-00003.safetensors")).unwrap(),
        ]
    })
}

/// A position chosen without knowing the length yet.
#[derive(Clone, Copy, Debug)]
struct Pick(usize);

impl Pick {
    fn index(self, n: usize) -> usize {
        self.0 % n.max(1)
    }
}

fn pick() -> impl Strategy<Value = Pick> + Clone {
    any::<usize>().prop_map(Pick)
}

#[derive(Clone, Debug)]
enum Mutation {
    Flip(Pick, u8),
    Truncate(Pick),
    Insert(Pick, Vec<u8>),
    /// A piece of another real file.
    Splice(Pick, usize, Pick, usize),
    /// A token that JSON parsers and integer conversions find interesting.
    Token(Pick, &'static str),
}

const TOKENS: &[&str] = &[
    "\"",
    "{",
    "}",
    "[",
    "]",
    ",",
    ":",
    "-1",
    "0",
    "1e999",
    "-0.0",
    "null",
    "true",
    "18446744073709551615",
    "9223372036854775808",
    "\"\\u0000\"",
    "\"../x\"",
    "\u{fffd}",
];

fn mutation() -> impl Strategy<Value = Mutation> {
    prop_oneof![
        3 => (pick(), 0u8..8).prop_map(|(i, b)| Mutation::Flip(i, b)),
        1 => pick().prop_map(Mutation::Truncate),
        1 => (pick(), prop::collection::vec(any::<u8>(), 1..12))
            .prop_map(|(i, b)| Mutation::Insert(i, b)),
        1 => (pick(), 0usize..4, pick(), 1usize..300)
            .prop_map(|(i, d, j, n)| Mutation::Splice(i, d, j, n)),
        2 => (pick(), prop::sample::select(TOKENS)).prop_map(|(i, t)| Mutation::Token(i, t)),
    ]
}

/// Applies `muts` to `base`; positions fall in the first `focus` bytes (where a header is)
/// when `focus` is smaller than the file.
fn mutate(base: &[u8], muts: &[Mutation], focus: usize) -> Vec<u8> {
    let mut b = base.to_vec();
    for m in muts {
        let at = |i: &Pick, b: &Vec<u8>| i.index(b.len().min(focus).max(1)).min(b.len());
        match m {
            Mutation::Flip(i, bit) if !b.is_empty() => {
                let p = at(i, &b).min(b.len() - 1);
                b[p] ^= 1 << bit;
            }
            Mutation::Flip(..) => {}
            Mutation::Truncate(i) => {
                let p = i.index(b.len() + 1);
                b.truncate(p);
            }
            Mutation::Insert(i, bytes) => {
                let p = at(i, &b);
                b.splice(p..p, bytes.iter().copied());
            }
            Mutation::Splice(i, d, j, n) => {
                let donor = &donors()[*d];
                let s = j.index(donor.len());
                let piece = &donor[s..(s + n).min(donor.len())];
                let p = at(i, &b);
                b.splice(p..p, piece.iter().copied());
            }
            Mutation::Token(i, t) => {
                let p = at(i, &b);
                b.splice(p..p, t.bytes());
            }
        }
    }
    b
}

fn mutations() -> impl Strategy<Value = Vec<Mutation>> {
    prop::collection::vec(mutation(), 1..5)
}

/// Where a safetensors header ends (8-byte length + JSON), for focusing mutations on it.
fn header_end(st: &[u8]) -> usize {
    8 + u64::from_le_bytes(st[..8].try_into().unwrap()) as usize
}

// ---- JSON mutations -----------------------------------------------------------------------

fn json_value() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::from),
        any::<i64>().prop_map(Value::from),
        any::<u64>().prop_map(Value::from),
        prop_oneof![
            Just(0u64),
            Just(1),
            Just(2),
            Just(3),
            Just(64),
            Just(1 << 31),
            Just(1 << 33)
        ]
        .prop_map(Value::from),
        (0u64..300).prop_map(Value::from),
        prop::sample::select(vec![
            "F32", "BF16", "F16", "I32", "F64", "U8", "BOOL", "F8_E4M3"
        ])
        .prop_map(Value::from),
        any::<f64>().prop_map(|f| serde_json::Number::from_f64(f).map_or(Value::Null, Value::from)),
        prop::sample::select(vec![
            "silu",
            "gelu",
            "yarn",
            "default",
            "linear",
            "bfloat16",
            "float16",
            "int8",
            "qwen2",
            "qwen3",
            "full_attention",
            "sliding_attention",
            "",
            "../x",
            "/etc/passwd",
            "model-00001-of-00003.safetensors",
            "model.safetensors",
            "BPE",
            "WordPiece",
            "ByteLevel",
            "NFC",
            "(?",
            "[",
            "\\p{L}+",
        ])
        .prop_map(Value::from),
    ];
    leaf.prop_recursive(2, 8, 3, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..3).prop_map(Value::from),
            prop::collection::btree_map(
                prop::sample::select(vec![
                    "rope_type",
                    "type",
                    "factor",
                    "rope_theta",
                    "quant_method",
                    "Regex"
                ]),
                inner,
                0..3
            )
            .prop_map(|m| Value::Object(m.into_iter().map(|(k, v)| (k.to_string(), v)).collect())),
        ]
    })
}

#[derive(Clone, Debug)]
enum JsonEdit {
    /// Sets (or adds) the value at a path of keys / array positions chosen among those there.
    Set(Vec<Pick>, Option<&'static str>, Value),
    Remove(Vec<Pick>),
    /// Swaps two children of a container (two tensors' entries in a safetensors header: a
    /// valid file whose tensors have each other's shapes).
    Swap(Vec<Pick>, Pick, Pick),
}

fn json_edit(extra_keys: &'static [&'static str]) -> impl Strategy<Value = JsonEdit> {
    let path = prop::collection::vec(pick(), 1..4);
    prop_oneof![
        3 => (path.clone(), prop::option::of(prop::sample::select(extra_keys)), json_value())
            .prop_map(|(p, k, v)| JsonEdit::Set(p, k, v)),
        1 => path.clone().prop_map(JsonEdit::Remove),
        1 => (path, pick(), pick()).prop_map(|(p, a, b)| JsonEdit::Swap(p, a, b)),
    ]
}

/// The container reached by following `steps` (each picks a child that is itself a
/// container, stopping early otherwise), as a concrete list of child positions.
fn container_path(v: &Value, steps: &[Pick]) -> Vec<usize> {
    let mut out = vec![];
    let mut cur = v;
    for s in steps {
        let children: Vec<&Value> = match cur {
            Value::Object(m) => m.values().collect(),
            Value::Array(a) => a.iter().collect(),
            _ => vec![],
        };
        if children.is_empty() {
            break;
        }
        let i = s.index(children.len());
        if !(children[i].is_object() || children[i].is_array()) {
            break;
        }
        out.push(i);
        cur = children[i];
    }
    out
}

fn child_mut(v: &mut Value, i: usize) -> &mut Value {
    match v {
        Value::Object(m) => m.values_mut().nth(i).expect("a child"),
        Value::Array(a) => &mut a[i],
        _ => unreachable!("containers only"),
    }
}

/// The container at `path` and the pick for the child to edit in it.
fn walk<'a>(v: &'a mut Value, path: &[Pick]) -> Option<(&'a mut Value, Pick)> {
    let (last, steps) = path.split_last()?;
    let mut cur = v;
    for i in container_path(cur, steps) {
        cur = child_mut(cur, i);
    }
    Some((cur, *last))
}

fn edit_json(base: &Value, edits: &[JsonEdit]) -> Value {
    let mut v = base.clone();
    for e in edits {
        match e {
            JsonEdit::Set(path, key, value) => {
                let Some((c, i)) = walk(&mut v, path) else {
                    continue;
                };
                match c {
                    Value::Object(m) => {
                        let k = match key {
                            Some(k) => k.to_string(),
                            None if m.is_empty() => continue,
                            None => m.keys().nth(i.index(m.len())).unwrap().clone(),
                        };
                        m.insert(k, value.clone());
                    }
                    Value::Array(a) if !a.is_empty() => {
                        let n = a.len();
                        a[i.index(n)] = value.clone();
                    }
                    _ => {}
                }
            }
            JsonEdit::Swap(path, a, b) => {
                let Some((c, _)) = walk(&mut v, path) else {
                    continue;
                };
                match c {
                    Value::Object(m) if !m.is_empty() => {
                        let keys: Vec<String> = m.keys().cloned().collect();
                        let (ka, kb) = (&keys[a.index(keys.len())], &keys[b.index(keys.len())]);
                        let va = m[ka].clone();
                        let vb = std::mem::replace(m.get_mut(kb).unwrap(), va);
                        m.insert(ka.clone(), vb);
                    }
                    Value::Array(x) if !x.is_empty() => {
                        let n = x.len();
                        x.swap(a.index(n), b.index(n));
                    }
                    _ => {}
                }
            }
            JsonEdit::Remove(path) => {
                let Some((c, i)) = walk(&mut v, path) else {
                    continue;
                };
                match c {
                    Value::Object(m) if !m.is_empty() => {
                        let k = m.keys().nth(i.index(m.len())).unwrap().clone();
                        m.remove(&k);
                    }
                    Value::Array(a) if !a.is_empty() => {
                        let n = a.len();
                        a.remove(i.index(n));
                    }
                    _ => {}
                }
            }
        }
    }
    v
}

const CONFIG_KEYS: &[&str] = &[
    "hidden_act",
    "hidden_activation",
    "rope_scaling",
    "rope_parameters",
    "rope_theta",
    "partial_rotary_factor",
    "use_sliding_window",
    "sliding_window",
    "max_window_layers",
    "layer_types",
    "quantization_config",
    "dtype",
    "torch_dtype",
    "model_type",
    "head_dim",
    "num_key_value_heads",
    "num_attention_heads",
    "hidden_size",
    "num_hidden_layers",
    "attention_bias",
    "tie_word_embeddings",
    "eos_token_id",
    "max_position_embeddings",
];

// ---- what each reader must survive --------------------------------------------------------

/// Parses a config and uses what it accepted as kiln would; an accepted config must build.
fn exercise_config(text: &str) {
    let Ok(c) = QwenConfig::from_json(text) else {
        return;
    };
    let _ = (c.weight_bytes(), c.num_params(), c.check_prompt(&[0, 1, 2]));
    if c.num_layers <= 3 && c.weight_bytes() < (1 << 40) {
        let shapes = weight_shapes(&c);
        assert!(!shapes.is_empty());
        build_graph(&c, GraphOptions::default())
            .unwrap_or_else(|e| panic!("an accepted config does not build: {e}\n{text}"));
    }
}

/// Opens, checks and loads a checkpoint folder as kiln would, and every tensor it holds.
fn exercise_checkpoint(dir: &Path, config: &QwenConfig) {
    let Ok(ck) = Checkpoint::open(dir) else {
        return;
    };
    let shapes = weight_shapes(config);
    if ck.check(config).is_ok() {
        ck.load(&shapes, WeightDtype::F32)
            .expect("a checked checkpoint loads");
        ck.load(&shapes, WeightDtype::BF16)
            .expect("a checked checkpoint loads");
    }
    for (name, shape) in ck.tensors() {
        let _ = ck.load(&[(name, shape)], WeightDtype::F32);
    }
}

fn tiny_config() -> QwenConfig {
    QwenConfig::from_file(&fixture("tiny-qwen3").join("config.json")).unwrap()
}

fn small_tokenizer() -> &'static Vec<u8> {
    static T: OnceLock<Vec<u8>> = OnceLock::new();
    T.get_or_init(|| kiln_models::testing::small_qwen_tokenizer_json(600))
}

fn exercise_tokenizer(dir: &Path, bytes: &[u8]) {
    let p = dir.join("tokenizer.json");
    std::fs::write(&p, bytes).unwrap();
    let Ok(t) = Tokenizer::from_file(&p) else {
        return;
    };
    for text in [
        "Hello, world! 你好",
        "<|im_start|>user\n hi<|im_end|>",
        "  \t\r\n",
        "",
    ] {
        if let Ok(ids) = t.encode(text) {
            let _ = t.decode(&ids);
        }
    }
    let _ = t.decode(&[0, 1, 2, 599, 600, 151643, 151645, u32::MAX]);
    let _ = t.token_id("<|im_end|>");
}

const KEY: &str = "9f2c1a7be0d3445566778899aabbccddeeff00112233445566778899aabbccdd";

fn cache_entry() -> Vec<u8> {
    let payload: Vec<u8> = (0..2048u32)
        .map(|i| (i.wrapping_mul(2654435761) >> 24) as u8)
        .collect();
    kiln_compile::cache::encode(
        "cpu",
        KEY,
        &["kiln_matmul_1", "kiln_softmax_2"],
        &payload,
        1234,
    )
}

fn cases(n: u32) -> ProptestConfig {
    ProptestConfig {
        cases: n,
        failure_persistence: None,
        ..ProptestConfig::default()
    }
}

// ---- the properties ------------------------------------------------------------------------

#[test]
fn unmutated_files_are_accepted() {
    // The baseline each property mutates is valid, so the properties explore near valid files.
    let d = tempfile::tempdir().unwrap();
    std::fs::copy(
        fixture("tiny-qwen3").join(SINGLE_FILE),
        d.path().join(SINGLE_FILE),
    )
    .unwrap();
    let ck = Checkpoint::open(d.path()).unwrap();
    ck.check(&tiny_config()).unwrap();
    kiln_compile::cache::decode(&cache_entry(), "cpu", KEY).unwrap();
    std::fs::write(d.path().join("tokenizer.json"), small_tokenizer()).unwrap();
    let t = Tokenizer::from_file(&d.path().join("tokenizer.json")).unwrap();
    assert!(!t.encode("Hello, world!").unwrap().is_empty());
}

proptest! {
    #![proptest_config(cases(300))]

    #[test]
    fn mutated_safetensors_files_are_errors_not_panics(
        edits in prop::collection::vec(json_edit(&["dtype", "shape", "data_offsets", "__metadata__"]), 0..3),
        muts in prop::collection::vec(mutation(), 0..4),
        anywhere in any::<bool>(),
    ) {
        // Header edits first (re-encoded with a correct length), then raw byte mutations.
        let base = &donors()[0];
        let end = header_end(base);
        let header: Value = serde_json::from_slice(&base[8..end]).unwrap();
        let header = serde_json::to_vec(&edit_json(&header, &edits)).unwrap();
        let mut file = (header.len() as u64).to_le_bytes().to_vec();
        file.extend_from_slice(&header);
        file.extend_from_slice(&base[end..]);
        let focus = if anywhere { usize::MAX } else { 8 + header.len() + 16 };
        let bytes = mutate(&file, &muts, focus);
        let d = tempfile::tempdir().unwrap();
        std::fs::write(d.path().join(SINGLE_FILE), &bytes).unwrap();
        exercise_checkpoint(d.path(), &tiny_config());
    }

    #[test]
    fn mutated_shard_indexes_are_errors_not_panics(
        edits in prop::collection::vec(json_edit(&["weight_map", "metadata", "model.norm.weight"]), 0..4),
        muts in prop::collection::vec(mutation(), 0..3),
    ) {
        let d = copy_fixture("tiny-qwen3-sharded");
        let base: Value = serde_json::from_slice(&donors()[2]).unwrap();
        let text = serde_json::to_vec(&edit_json(&base, &edits)).unwrap();
        std::fs::write(d.path().join(INDEX_FILE), mutate(&text, &muts, usize::MAX)).unwrap();
        exercise_checkpoint(d.path(), &tiny_config());
    }

    #[test]
    fn mutated_configs_are_errors_not_panics(
        edits in prop::collection::vec(json_edit(CONFIG_KEYS), 0..5),
        muts in prop::collection::vec(mutation(), 0..3),
    ) {
        let base = fixture_config();
        let text = serde_json::to_vec(&edit_json(&base, &edits)).unwrap();
        let bytes = mutate(&text, &muts, usize::MAX);
        exercise_config(&String::from_utf8_lossy(&bytes));
    }

    #[test]
    fn mutated_cache_entries_are_errors_not_panics(muts in mutations()) {
        let bytes = mutate(&cache_entry(), &muts, 400);
        if let Ok((header, payload)) = kiln_compile::cache::decode(&bytes, "cpu", KEY) {
            prop_assert_eq!(header.len as usize, payload.len());
        }
    }
}

proptest! {
    // Each case loads a 600-token tokenizer (tens of KB of JSON).
    #![proptest_config(cases(200))]

    #[test]
    fn mutated_tokenizers_are_errors_not_panics(
        edits in prop::collection::vec(
            json_edit(&["type", "pattern", "Regex", "normalizer", "pre_tokenizer", "decoder",
                        "id", "content", "vocab", "merges", "unk_token", "byte_fallback"]),
            0..4),
        muts in prop::collection::vec(mutation(), 0..3),
    ) {
        let base: Value = serde_json::from_slice(small_tokenizer()).unwrap();
        let text = serde_json::to_vec(&edit_json(&base, &edits)).unwrap();
        let d = tempfile::tempdir().unwrap();
        exercise_tokenizer(d.path(), &mutate(&text, &muts, usize::MAX));
    }
}

#[test]
fn json_edits_reach_nested_keys() {
    // The mutation machinery itself: an edit can replace the RoPE type inside rope_parameters.
    let base = json!({"a": 1, "rope_parameters": {"rope_type": "default"}});
    let v = edit_json(
        &base,
        &[JsonEdit::Set(vec![Pick(1), Pick(0)], None, json!("yarn"))],
    );
    assert_eq!(v["rope_parameters"]["rope_type"], "yarn");
}

/// Found by `mutated_tokenizers_are_errors_not_panics`: tokenizers 0.22.2 panics
/// (`expect("Helper")` in its decoder deserializer) on a file truncated inside `decoder`, and
/// (`expect("Precompiled")`) on a bad precompiled charsmap. Both are load errors in kiln.
#[test]
fn tokenizer_files_that_make_the_tokenizers_library_panic_are_errors() {
    let d = tempfile::tempdir().unwrap();
    let p = d.path().join("tokenizer.json");
    let text = small_tokenizer();
    let at = text.windows(10).position(|w| w == b"\"decoder\":").unwrap();
    std::fs::write(&p, &text[..at + 20]).unwrap();
    let e = Tokenizer::from_file(&p)
        .err()
        .expect("a truncated file")
        .to_string();
    assert!(
        e.contains("tokenizer.json") && e.contains("invalid JSON"),
        "{e}"
    );

    let mut v: Value = serde_json::from_slice(text).unwrap();
    v["normalizer"] = json!({"type": "Precompiled", "precompiled_charsmap": "AAAA"});
    std::fs::write(&p, serde_json::to_vec(&v).unwrap()).unwrap();
    let e = Tokenizer::from_file(&p)
        .err()
        .expect("a bad charsmap")
        .to_string();
    assert!(
        e.contains("tokenizer.json") && e.contains("tokenizers library"),
        "{e}"
    );
}
