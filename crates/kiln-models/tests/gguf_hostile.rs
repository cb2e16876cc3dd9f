//! Truncated, corrupt and hostile GGUF files: each is an error that names the file and what
//! is wrong in it (the field, metadata key or tensor), never a panic, an out-of-bounds read or
//! an allocation the file's size does not justify. The same reader is fuzzed by
//! `scripts/fuzz.sh 60 gguf_header`.

use kiln_models::gguf::qwen::{gguf_name, GgufCheckpoint};
use kiln_models::gguf::{tokenizer::from_gguf, GgufFile};
use kiln_models::testing::{gguf_string, GgufBuilder};
use kiln_models::{weight_shapes, ModelError, ModelSource, QwenConfig, WeightDtype};
use proptest::prelude::*;
use std::path::{Path, PathBuf};

fn tiny_config() -> QwenConfig {
    QwenConfig::from_file(&kiln_models::testing::fixtures().join("tiny-qwen3/config.json")).unwrap()
}

fn fixture_bytes() -> Vec<u8> {
    std::fs::read(kiln_models::testing::gguf_fixtures().join("tiny-qwen3/tiny-qwen3-F32.gguf"))
        .unwrap()
}

/// The metadata of tiny-qwen3 (without a tokenizer).
fn tiny_metadata() -> GgufBuilder {
    GgufBuilder::default()
        .str("general.architecture", "qwen3")
        .u32("qwen3.block_count", 2)
        .u32("qwen3.context_length", 512)
        .u32("qwen3.embedding_length", 64)
        .u32("qwen3.feed_forward_length", 128)
        .u32("qwen3.attention.head_count", 4)
        .u32("qwen3.attention.head_count_kv", 2)
        .u32("qwen3.attention.key_length", 32)
        .f32("qwen3.rope.freq_base", 1e6)
        .f32("qwen3.attention.layer_norm_rms_epsilon", 1e-6)
}

/// A tensor's replacement: None drops it, Some((ne, type, data)) replaces it.
type Replacement = Option<(Vec<u64>, u32, Vec<u8>)>;

/// Adds tiny-qwen3's tensors (zeros, F32) to `b`; `edit` may replace one (Some) given its name
/// and dimensions.
fn with_tensors(
    mut b: GgufBuilder,
    edit: impl Fn(&str, &[u64]) -> Option<Replacement>,
) -> GgufBuilder {
    for (hf, shape) in weight_shapes(&tiny_config()) {
        let name = gguf_name(&hf).unwrap();
        let ne: Vec<u64> = shape.iter().rev().map(|&d| d as u64).collect();
        let numel: u64 = ne.iter().product();
        let t = match edit(&name, &ne) {
            Some(replacement) => replacement,
            None => Some((ne.clone(), 0, vec![0u8; 4 * numel as usize])),
        };
        if let Some((ne, ty, data)) = t {
            b = b.tensor(&name, &ne, ty, data);
        }
    }
    b
}

fn tiny_model() -> GgufBuilder {
    with_tensors(tiny_metadata(), |_, _| None)
}

/// Writes `bytes` as a .gguf file in a fresh folder.
fn write(bytes: &[u8]) -> (tempfile::TempDir, PathBuf) {
    let d = tempfile::tempdir().unwrap();
    let p = d.path().join("hostile.gguf");
    std::fs::write(&p, bytes).unwrap();
    (d, p)
}

/// Everything kiln does with a GGUF file: open, config, check, load, tokenizer.
fn exercise(path: &Path) -> Result<(), ModelError> {
    let ck = GgufCheckpoint::open(path)?;
    let tok = from_gguf(ck.file());
    let c = ck.config()?;
    ck.check(&c)?;
    ck.load(&weight_shapes(&c), WeightDtype::F32, &c.file_quant)?;
    ck.load(&weight_shapes(&c), WeightDtype::BF16, &Default::default())?;
    tok.map(|_| ())
}

/// The error for `bytes`, which must name the file and contain every one of `needles`.
#[track_caller]
fn assert_error(bytes: &[u8], needles: &[&str]) -> String {
    let (_d, p) = write(bytes);
    let e = exercise(&p)
        .expect_err("a hostile file must be an error")
        .to_string();
    assert!(
        e.contains(&p.display().to_string()),
        "the error names no file: {e}"
    );
    for n in needles {
        assert!(e.contains(n), "expected {n:?} in: {e}");
    }
    e
}

#[test]
fn the_builder_writes_a_file_kiln_runs() {
    let (_d, p) = write(&tiny_model().build());
    exercise(&p).unwrap();
    assert_eq!(ModelSource::Gguf(p).config().unwrap(), {
        let mut c = tiny_config();
        c.bos_token_id = None;
        c.eos_token_ids = vec![];
        c
    });
}

#[test]
fn truncated_at_every_byte_of_the_header_and_inside_the_data() {
    let bytes = fixture_bytes();
    let (_d, p) = write(&bytes);
    let header_end = GgufFile::open(&p).unwrap().data_start();
    assert!(header_end > 1000 && header_end < bytes.len());
    let data_lengths = (header_end..bytes.len())
        .step_by(997)
        .chain([bytes.len() - 1]);
    for len in (0..=header_end).chain(data_lengths) {
        let (_d, p) = write(&bytes[..len]);
        let e = match GgufFile::open(&p) {
            Ok(_) => panic!("truncated to {len} of {} bytes: opened", bytes.len()),
            Err(e) => e.to_string(),
        };
        assert!(e.contains("hostile.gguf"), "{len}: {e}");
        let why = ["truncated", "not a GGUF file", "past the end"];
        assert!(why.iter().any(|w| e.contains(w)), "{len}: {e}");
        if len >= header_end {
            assert!(e.contains("tensor '"), "{len}: names no tensor: {e}");
        }
    }
}

/// The fixture with the u64 at `at` replaced.
fn patched(at: usize, v: u64) -> Vec<u8> {
    let mut b = fixture_bytes();
    b[at..at + 8].copy_from_slice(&v.to_le_bytes());
    b
}

#[test]
fn huge_counts_and_lengths() {
    // Header: magic (0..4), version (4..8), tensor count (8..16), metadata count (16..24),
    // then the first key's length (24..32).
    assert_error(
        &patched(8, u64::MAX),
        &["claims 18446744073709551615 tensors"],
    );
    assert_error(
        &patched(16, 1 << 60),
        &["claims 1152921504606846976 metadata entries"],
    );
    assert_error(
        &patched(24, u64::MAX - 3),
        &["metadata entry #0", "needs 18446744073709551612 bytes"],
    );
    let array = |elem: u32, n: u64| {
        let mut v = elem.to_le_bytes().to_vec();
        v.extend(n.to_le_bytes());
        tiny_model().raw_kv("huge.array", 9, v).build()
    };
    assert_error(
        &array(8, u64::MAX),
        &[
            "'huge.array'",
            "claims 18446744073709551615 string elements",
        ],
    );
    assert_error(&array(12, 1 << 40), &["'huge.array'", "float64 elements"]);
    assert_error(&array(0, 1 << 40), &["'huge.array'", "uint8 elements"]);
    // A string array whose strings claim more than the file.
    let mut v = 8u32.to_le_bytes().to_vec();
    v.extend(2u64.to_le_bytes());
    v.extend(gguf_string("a"));
    v.extend(u64::MAX.to_le_bytes());
    assert_error(
        &tiny_model().raw_kv("s", 9, v).build(),
        &["'s'", "string #1 of the array"],
    );
}

#[test]
fn bad_header_fields() {
    let mut b = fixture_bytes();
    b[0] = b'X';
    assert_error(&b, &["not a GGUF file"]);
    assert_error(&[], &["not a GGUF file"]);
    let version = |v: u32| {
        let mut b = fixture_bytes();
        b[4..8].copy_from_slice(&v.to_le_bytes());
        b
    };
    assert_error(&version(1), &["version 1"]);
    assert_error(&version(3u32.swap_bytes()), &["big-endian"]);
    assert_error(&version(7), &["unknown GGUF version 7"]);
    // Version 2 has version 3's layout on little-endian machines.
    let (_d, p) = write(&version(2));
    exercise(&p).unwrap();
}

#[test]
fn bad_metadata_values() {
    let model = tiny_model();
    assert_error(
        &model.clone().raw_kv("k", 13, vec![0; 8]).build(),
        &["'k'", "unknown value type 13"],
    );
    assert_error(
        &model.clone().raw_kv("b", 7, vec![2]).build(),
        &["'b'", "bool must be 0 or 1"],
    );
    assert_error(
        &model
            .clone()
            .raw_kv("bad-utf8", 8, {
                let mut v = 2u64.to_le_bytes().to_vec();
                v.extend([0xC3, 0x28]);
                v
            })
            .build(),
        &["'bad-utf8'", "not UTF-8"],
    );
    assert_error(
        &model.clone().u32("qwen3.block_count", 2).build(),
        &["'qwen3.block_count'", "appears twice"],
    );
    // Arrays of arrays of ... (a stack overflow in a recursive reader).
    let mut nested = Vec::new();
    for _ in 0..100 {
        nested.extend(9u32.to_le_bytes());
        nested.extend(1u64.to_le_bytes());
    }
    nested.extend(0u32.to_le_bytes());
    nested.extend(0u64.to_le_bytes());
    assert_error(
        &model.clone().raw_kv("deep", 9, nested).build(),
        &["'deep'", "nested more than"],
    );
    for (alignment, ty) in [(0u32, 4u32), (24, 4), (32, 10)] {
        let value = if ty == 4 {
            alignment.to_le_bytes().to_vec()
        } else {
            (alignment as u64).to_le_bytes().to_vec()
        };
        assert_error(
            &model.clone().raw_kv("general.alignment", ty, value).build(),
            &["'general.alignment'", "power of two"],
        );
    }
}

#[test]
fn a_different_alignment_is_followed() {
    let mut b = tiny_model().u32("general.alignment", 64);
    b.alignment = 64;
    let (_d, p) = write(&b.build());
    exercise(&p).unwrap();
    assert_eq!(GgufFile::open(&p).unwrap().alignment, 64);
}

#[test]
fn bad_tensor_infos() {
    let q = |name: &str, ne: &[u64], ty: u32, data: Vec<u8>| {
        tiny_metadata().tensor(name, ne, ty, data).build()
    };
    assert_error(&q("t", &[], 0, vec![]), &["tensor 't'", "0 dimensions"]);
    assert_error(
        &q("t", &[1, 1, 1, 1, 1], 0, vec![0; 4]),
        &["tensor 't'", "5 dimensions"],
    );
    assert_error(
        &q("t", &[1 << 32, 1 << 32, 1 << 32], 0, vec![]),
        &["tensor 't'", "overflow"],
    );
    assert_error(
        &q("t", &[u64::MAX / 2, 2], 0, vec![]),
        &["tensor 't'", "overflow"],
    );
    assert_error(
        &q("t", &[33], 8, vec![0; 34]),
        &["tensor 't'", "not a whole number of Q8_0 blocks"],
    );
    assert_error(
        &q("t", &[32], 99, vec![0; 34]),
        &["tensor 't'", "type id 99"],
    );
    assert_error(
        &q("t", &[1 << 20], 0, vec![0; 4]),
        &["tensor 't'", "past the end of the file"],
    );
    let at = |offset: u64| {
        tiny_metadata()
            .raw_tensor("t", &[4], 0, vec![0; 16], offset)
            .build()
    };
    assert_error(
        &at(4),
        &["tensor 't'", "not a multiple of the alignment 32"],
    );
    assert_error(&at(1 << 40), &["tensor 't'", "past the end"]);
    assert_error(&at(u64::MAX - 31), &["tensor 't'", "past the end"]);
    let overlap = tiny_metadata()
        .raw_tensor("a", &[16], 0, vec![0; 64], 0)
        .raw_tensor("b", &[16], 0, vec![0; 64], 32)
        .build();
    assert_error(&overlap, &["tensor 'b'", "overlap tensor 'a'"]);
    let twice = tiny_metadata()
        .tensor("a", &[4], 0, vec![0; 16])
        .tensor("a", &[4], 0, vec![0; 16])
        .build();
    assert_error(&twice, &["tensor 'a'", "appears twice"]);
}

#[test]
fn tensors_that_do_not_fit_the_model() {
    let model = |edit: &dyn Fn(&str, &[u64]) -> Option<Replacement>| {
        with_tensors(tiny_metadata(), edit).build()
    };
    // An IQ4_NL matrix (a GGML type kiln does not decode): [64, 128] in blocks of 32 values
    // and 18 bytes.
    let e = assert_error(
        &model(&|n, ne| {
            (n == "blk.1.ffn_up.weight").then(|| Some((ne.to_vec(), 20, vec![0; 18 * 2 * 128])))
        }),
        &["blk.1.ffn_up.weight", "type IQ4_NL", "kiln reads F32, F16"],
    );
    assert!(e.contains("Q4_K"), "{e}");
    assert_error(
        &model(&|n, _| (n == "blk.0.attn_k.weight").then_some(None)),
        &["tensor 'blk.0.attn_k.weight'", "not found"],
    );
    assert_error(
        &model(&|n, _| (n == "blk.0.attn_q_norm.weight").then(|| Some((vec![16], 0, vec![0; 64])))),
        &["blk.0.attn_q_norm.weight", "shape [16]", "implies [32]"],
    );
    assert_error(
        &model(&|n, _| {
            (n == "token_embd.weight").then(|| Some((vec![64, 256, 1], 0, vec![0; 4 * 64 * 256])))
        }),
        &["token_embd.weight", "dimensions [64, 256, 1]"],
    );
}

#[test]
fn metadata_that_is_not_a_qwen_model() {
    let with = |edit: fn(GgufBuilder) -> GgufBuilder| {
        with_tensors(edit(GgufBuilder::default()), |_, _| None).build()
    };
    let keys = |arch: &str| {
        GgufBuilder::default()
            .str("general.architecture", arch)
            .u32(&format!("{arch}.block_count"), 2)
    };
    assert_error(
        &with_tensors(keys("llama"), |_, _| None).build(),
        &["'general.architecture'", "'llama' is not supported"],
    );
    assert_error(&with(|b| b), &["'general.architecture'", "missing"]);
    assert_error(
        &with(|b| b.u32("general.architecture", 3)),
        &["'general.architecture'", "must be a string"],
    );
    let e = assert_error(
        &with_tensors(
            tiny_metadata().str("qwen3.rope.scaling.type", "yarn"),
            |_, _| None,
        )
        .build(),
        &["'qwen3.rope.scaling.type'", "yarn"],
    );
    assert!(e.contains("RoPE"), "{e}");
    let duplicate = tiny_metadata().str("qwen3.attention.head_count_kv", "2");
    assert_error(
        &with_tensors(duplicate, |_, _| None).build(),
        &["'qwen3.attention.head_count_kv'", "appears twice"],
    );
    let kv3 = GgufBuilder::default()
        .str("general.architecture", "qwen3")
        .u32("qwen3.block_count", 2)
        .u32("qwen3.embedding_length", 64)
        .u32("qwen3.feed_forward_length", 128)
        .u32("qwen3.attention.head_count", 4)
        .u32("qwen3.attention.head_count_kv", 3);
    assert_error(
        &with_tensors(kv3, |_, _| None).build(),
        &["'qwen3.attention.head_count_kv'", "3 must divide"],
    );
    let text_heads = GgufBuilder::default()
        .str("general.architecture", "qwen3")
        .u32("qwen3.block_count", 2)
        .u32("qwen3.embedding_length", 64)
        .u32("qwen3.feed_forward_length", 128)
        .str("qwen3.attention.head_count", "4");
    assert_error(
        &with_tensors(text_heads, |_, _| None).build(),
        &["'qwen3.attention.head_count'", "positive integer"],
    );
    let missing = GgufBuilder::default()
        .str("general.architecture", "qwen3")
        .u32("qwen3.block_count", 2)
        .u32("qwen3.embedding_length", 64);
    assert_error(
        &with_tensors(missing, |_, _| None).build(),
        &["'qwen3.feed_forward_length'", "missing"],
    );
    assert_error(
        &with_tensors(
            tiny_metadata().u32("qwen3.rope.dimension_count", 16),
            |_, _| None,
        )
        .build(),
        &["'qwen3.rope.dimension_count'", "partial rotary"],
    );
    assert_error(
        &with_tensors(tiny_metadata().u32("qwen3.vocab_size", 300), |_, _| None).build(),
        &["'qwen3.vocab_size'", "300"],
    );
}

#[test]
fn tokenizer_metadata_that_kiln_cannot_build() {
    let tok = |b: GgufBuilder| {
        b.str("tokenizer.ggml.pre", "qwen2")
            .strs("tokenizer.ggml.tokens", &["a", "b", "ab"])
    };
    let base = || tiny_model().str("tokenizer.ggml.model", "gpt2");
    assert_error(
        &tiny_model().str("tokenizer.ggml.model", "llama").build(),
        &["'tokenizer.ggml.model'", "'llama' is not supported"],
    );
    assert_error(
        &base().str("tokenizer.ggml.pre", "llama-bpe").build(),
        &["'tokenizer.ggml.pre'", "llama-bpe"],
    );
    assert_error(
        &tok(base()).build(),
        &["'tokenizer.ggml.merges'", "missing"],
    );
    assert_error(
        &tok(base()).strs("tokenizer.ggml.merges", &["ab"]).build(),
        &["merge #0", "\"ab\""],
    );
    assert_error(
        &tok(base())
            .strs("tokenizer.ggml.merges", &["a b"])
            .i32s("tokenizer.ggml.token_type", &[1, 1])
            .build(),
        &["'tokenizer.ggml.token_type'", "3 integers"],
    );
    // A merge whose result is not a token: the tokenizers library's own check.
    assert_error(
        &tok(base()).strs("tokenizer.ggml.merges", &["b a"]).build(),
        &["cannot build the tokenizer"],
    );
    // A consistent one builds.
    let (_d, p) = write(&tok(base()).strs("tokenizer.ggml.merges", &["a b"]).build());
    exercise(&p).unwrap();
}

#[test]
fn model_paths() {
    let e = ModelSource::parse("/no/such/model.gguf")
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("GGUF file '/no/such/model.gguf' not found"),
        "{e}"
    );
    let d = tempfile::tempdir().unwrap();
    let not_gguf = d.path().join("model.gguf");
    std::fs::write(&not_gguf, b"{\"a\": 1}").unwrap();
    let source = ModelSource::parse(not_gguf.to_str().unwrap()).unwrap();
    let e = source.config().unwrap_err().to_string();
    assert!(
        e.contains("model.gguf") && e.contains("not a GGUF file"),
        "{e}"
    );
    // A GGUF file is recognised by its magic whatever its name.
    let renamed = d.path().join("weights.bin");
    std::fs::write(&renamed, fixture_bytes()).unwrap();
    assert_eq!(
        ModelSource::parse(renamed.to_str().unwrap()).unwrap(),
        ModelSource::Gguf(renamed)
    );
}

// ---- mutations ----------------------------------------------------------------------------

/// Values that break counts, lengths, offsets and type ids.
const WORDS: &[u64] = &[
    0,
    1,
    2,
    3,
    4,
    5,
    8,
    9,
    13,
    16,
    31,
    32,
    255,
    1 << 31,
    1 << 32,
    1 << 62,
    u64::MAX,
    u64::MAX - 1,
];

proptest! {
    #![proptest_config(ProptestConfig { cases: 400, ..ProptestConfig::default() })]

    /// Bit flips, truncations and u32/u64 words of the fixture's header replaced by
    /// interesting values: kiln answers with a model or an error, never a panic.
    #[test]
    fn mutated_headers_never_panic(
        muts in prop::collection::vec((any::<usize>(), 0u8..3, any::<u8>(), prop::sample::select(WORDS)), 1..4)
    ) {
        let mut b = fixture_bytes();
        let (_d, p) = write(&b);
        let header = GgufFile::open(&p).unwrap().data_start();
        for (at, kind, bit, word) in muts {
            if b.is_empty() {
                break;
            }
            let at = at % header.min(b.len());
            match kind {
                0 => b[at] ^= 1 << (bit % 8),
                1 => b.truncate(at),
                _ => {
                    let width = if bit % 2 == 0 { 4 } else { 8 };
                    let end = (at + width).min(b.len());
                    let bytes = word.to_le_bytes();
                    b[at..end].copy_from_slice(&bytes[..end - at]);
                }
            }
        }
        let (_d, p) = write(&b);
        let _ = exercise(&p);
    }
}

/// Issue 28's defect classes 1 and 5 for GGUF files (named directly, not found in a folder):
/// a FIFO or a device is refused without being opened for reading, a link out of its folder
/// is refused, and the layer count is bounded like `num_hidden_layers`.
#[test]
fn a_gguf_that_is_not_a_regular_file_in_its_folder_is_refused_without_hanging() {
    let d = tempfile::tempdir().unwrap();
    let fifo = d.path().join("pipe.gguf");
    let made = std::process::Command::new("mkfifo")
        .arg(&fifo)
        .status()
        .unwrap();
    assert!(made.success());
    let e = GgufCheckpoint::open(&fifo)
        .err()
        .expect("a FIFO")
        .to_string();
    assert!(e.contains("FIFO") && e.contains("pipe.gguf"), "{e}");
    // Sniffing a nameless FIFO for the magic would block: it is not a GGUF file.
    let plain = d.path().join("pipe");
    std::fs::rename(&fifo, &plain).unwrap();
    assert!(!kiln_models::gguf::is_gguf_path(&plain));

    let outside = tempfile::tempdir().unwrap();
    let real = outside.path().join("real.gguf");
    std::fs::write(&real, tiny_model().build()).unwrap();
    let link = d.path().join("link.gguf");
    std::os::unix::fs::symlink(&real, &link).unwrap();
    let e = GgufCheckpoint::open(&link)
        .err()
        .expect("a link out")
        .to_string();
    assert!(e.contains("outside"), "{e}");
    assert!(GgufCheckpoint::open(&real).is_ok());

    let e = GgufCheckpoint::open(Path::new("/dev/zero"))
        .err()
        .expect("a device")
        .to_string();
    assert!(e.contains("character device"), "{e}");
}

#[test]
fn a_layer_count_past_kilns_bound_is_refused() {
    let many = GgufBuilder::default()
        .str("general.architecture", "qwen3")
        .u32("qwen3.block_count", 10_001)
        .u32("qwen3.context_length", 512)
        .u32("qwen3.embedding_length", 64)
        .u32("qwen3.feed_forward_length", 128)
        .u32("qwen3.attention.head_count", 4)
        .u32("qwen3.attention.head_count_kv", 2)
        .u32("qwen3.attention.key_length", 32);
    assert_error(
        &with_tensors(many, |_, _| None).build(),
        &["'qwen3.block_count'", "10001 layers", "at most 10000"],
    );
}
