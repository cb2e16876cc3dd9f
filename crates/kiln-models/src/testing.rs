//! For tests of kiln and of programs built on it: where the reference fixtures are, and the one
//! reader of what `transformers` computed for them ([`Reference`]); the GGUF fixtures and a
//! writer of GGUF files for tests ([`GgufBuilder`]).
//!
//! Compiled only for tests (`cfg(test)`, or the `testing` feature that tests turn on through
//! their dev-dependencies), never into the release binary.

use std::path::PathBuf;

/// The reference fixtures that come with the repository (`tests/fixtures`: tiny Qwen
/// checkpoints with what `transformers` computes for them, the tokenizer's reference
/// encodings), or `$KILN_FIXTURES`. Panics with the path tried when they are missing.
pub fn fixtures() -> PathBuf {
    let p = std::env::var_os("KILN_FIXTURES")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures"));
    assert!(
        p.join("README.md").exists(),
        "reference fixtures not found at {} (set KILN_FIXTURES)",
        p.display()
    );
    p
}

/// What `transformers` computed for one prompt of a reference fixture:
/// `<fixture>/reference/<prompt>.json`, and the prefill tensors of `<prompt>.safetensors`
/// ([`Reference::tensors`]). `tests/fixtures/README.md` says what each field holds.
#[derive(Clone, Debug)]
pub struct Reference {
    pub prompt_ids: Vec<u32>,
    /// 16 new tokens, greedy, with the KV cache and EOS disabled.
    pub greedy_ids: Vec<u32>,
    /// The logits at the last prompt position.
    pub prefill_last_logits: Vec<f32>,
    /// The logits that chose each of `greedy_ids` (row 0: the prefill's last position).
    pub step_logits: Vec<Vec<f32>>,
    tensors: PathBuf,
}

impl Reference {
    /// Reads prompt `prompt` (`p1`, `p2`, `p3`) of fixture `fixture` (`tiny-qwen3`, ...) from
    /// [`fixtures`]. Panics naming the file and the field when one is missing or malformed.
    pub fn read(fixture: &str, prompt: &str) -> Reference {
        let dir = fixtures().join(fixture).join("reference");
        let path = dir.join(format!("{prompt}.json"));
        let text =
            std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        let v: serde_json::Value =
            serde_json::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        let bad =
            |key: &str| -> ! { panic!("{}: '{key}' is missing or malformed", path.display()) };
        let floats = |row: &serde_json::Value, key: &str| -> Vec<f32> {
            row.as_array()
                .unwrap_or_else(|| bad(key))
                .iter()
                .map(|x| x.as_f64().unwrap_or_else(|| bad(key)) as f32)
                .collect()
        };
        let ids = |key: &str| json_ids(&v[key], &format!("{}: '{key}'", path.display()));
        Reference {
            prompt_ids: ids("prompt_ids"),
            greedy_ids: ids("greedy_ids"),
            prefill_last_logits: floats(&v["prefill_last_logits"], "prefill_last_logits"),
            step_logits: v["step_logits"]
                .as_array()
                .unwrap_or_else(|| bad("step_logits"))
                .iter()
                .map(|row| floats(row, "step_logits"))
                .collect(),
            tensors: dir.join(format!("{prompt}.safetensors")),
        }
    }

    /// The prompt as `kiln run --prompt-ids` takes it: `1,17,42`.
    pub fn prompt_arg(&self) -> String {
        let ids: Vec<String> = self.prompt_ids.iter().map(u32::to_string).collect();
        ids.join(",")
    }

    /// The prefill tensors (all f32): `prefill_logits` `[T, vocab]`, `hidden.embed`,
    /// `hidden.layer{i}` and `hidden.final_norm` `[T, hidden]`, flattened, sorted by name.
    pub fn tensors(&self) -> Vec<(String, Vec<f32>)> {
        let path = &self.tensors;
        let bytes = std::fs::read(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        let st = safetensors::SafeTensors::deserialize(&bytes)
            .unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        let mut out: Vec<(String, Vec<f32>)> = st
            .tensors()
            .into_iter()
            .map(|(name, view)| {
                assert_eq!(
                    view.dtype(),
                    safetensors::Dtype::F32,
                    "{}: {name}",
                    path.display()
                );
                let values = view
                    .data()
                    .chunks_exact(4)
                    .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
                    .collect();
                (name, values)
            })
            .collect();
        out.sort_by(|a, b| a.0.cmp(&b.0));
        out
    }
}

/// Token ids from a JSON array (`[1, 17, 42]`). Panics naming `what` when `v` is not one.
pub fn json_ids(v: &serde_json::Value, what: &str) -> Vec<u32> {
    let bad = || -> ! { panic!("{what} is missing or not an array of token ids: {v}") };
    v.as_array()
        .unwrap_or_else(|| bad())
        .iter()
        .map(|x| {
            x.as_u64()
                .and_then(|x| u32::try_from(x).ok())
                .unwrap_or_else(|| bad())
        })
        .collect()
}

/// One case of the tokenizer reference (`qwen3-tokenizer/reference/tokenize.json`): the ids
/// the Python `tokenizers` library encodes `text` as, and the text it decodes them back to.
#[derive(Clone, Debug)]
pub struct TokenizeCase {
    pub name: String,
    pub text: String,
    pub ids: Vec<u32>,
    pub decoded: String,
}

impl TokenizeCase {
    /// Every case of the reference (27). Panics naming the file and the field when one is
    /// missing or malformed.
    pub fn read_all() -> Vec<TokenizeCase> {
        let path = fixtures().join("qwen3-tokenizer/reference/tokenize.json");
        let text =
            std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        let v: serde_json::Value =
            serde_json::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        let cases = v
            .as_array()
            .unwrap_or_else(|| panic!("{}: not an array of cases", path.display()));
        cases
            .iter()
            .enumerate()
            .map(|(i, c)| {
                let s = |key: &str| -> String {
                    c[key].as_str().map(str::to_string).unwrap_or_else(|| {
                        panic!("{}: case {i}: '{key}' is missing", path.display())
                    })
                };
                TokenizeCase {
                    name: s("name"),
                    text: s("text"),
                    ids: json_ids(&c["ids"], &format!("{}: case {i}: 'ids'", path.display())),
                    decoded: s("decoded"),
                }
            })
            .collect()
    }

    /// Checks that `tok` encodes the case's text to its ids and decodes them back to its text,
    /// at once and token by token ([`crate::StreamDecoder`]: never half a character), and that
    /// its [`crate::Detokenizer`] (what `kiln run` decodes with) does the same.
    pub fn check(&self, tok: &crate::Tokenizer) {
        let name = &self.name;
        let ids = tok.encode(&self.text).unwrap();
        assert_eq!(ids, self.ids, "case {name}: ids");
        assert_eq!(
            tok.decode(&ids).unwrap(),
            self.decoded,
            "case {name}: decoded"
        );
        let mut s = crate::StreamDecoder::default();
        let streamed: String = ids.iter().map(|&i| s.push(tok, i).unwrap()).collect();
        assert_eq!(streamed, self.decoded, "case {name}: streamed");
        use crate::Decode;
        let table = crate::Detokenizer::new(tok.clone());
        assert!(
            matches!(table, crate::Detokenizer::Table(_)),
            "case {name}: a byte-level tokenizer decodes through its table"
        );
        assert_eq!(
            table.decode(&ids).unwrap(),
            self.decoded,
            "case {name}: decoded by the table"
        );
        let mut s = crate::StreamDecoder::default();
        let streamed: String = ids.iter().map(|&i| s.push(&table, i).unwrap()).collect();
        assert_eq!(streamed, self.decoded, "case {name}: streamed by the table");
    }
}

/// The GGUF fixtures (`tests/gguf`: tiny Qwen3 models in every GGUF type kiln reads, with
/// reference outputs computed by NumPy on the weights the `gguf` package decodes; see its
/// README), or `$KILN_GGUF_FIXTURES`.
pub fn gguf_fixtures() -> PathBuf {
    let p = std::env::var_os("KILN_GGUF_FIXTURES")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../tests/gguf"));
    assert!(
        p.join("README.md").exists(),
        "GGUF fixtures not found at {} (set KILN_GGUF_FIXTURES)",
        p.display()
    );
    p
}

/// The Qwen3 tokenizer fixture (`qwen3-tokenizer.gguf.gz`) decompressed into `dir`: its path.
pub fn tokenizer_gguf_in(dir: &std::path::Path) -> PathBuf {
    use std::io::Read;
    let gz = std::fs::read(gguf_fixtures().join("qwen3-tokenizer.gguf.gz")).unwrap();
    let mut bytes = Vec::new();
    flate2::read::GzDecoder::new(&gz[..])
        .read_to_end(&mut bytes)
        .unwrap();
    let path = dir.join("qwen3-tokenizer.gguf");
    std::fs::write(&path, bytes).unwrap();
    path
}

/// The GGUF fixture files whose linear weights stay in their blocks (Q8_0, Q4_0, Q4_K, Q5_K,
/// Q6_K) on a backend that reads blocks: a Qwen3 and a Qwen2 (q/k/v biases) in Q8_0, Q4_0, and
/// the 256-wide Qwen3 (K-quants need whole 256-value rows) in Q4_K, Q6_K and in llama.cpp's
/// Q4_K_M and Q5_K_M mixes (Q4_K or Q5_K, and Q6_K).
pub const GGUF_QUANTIZED_FILES: [&str; 7] = [
    "tiny-qwen3/tiny-qwen3-Q8_0.gguf",
    "tiny-qwen3/tiny-qwen3-Q4_0.gguf",
    "tiny-qwen2/tiny-qwen2-Q8_0.gguf",
    "qwen3-256/qwen3-256-Q4_K.gguf",
    "qwen3-256/qwen3-256-Q6_K.gguf",
    "qwen3-256/qwen3-256-Q4_K_M.gguf",
    "qwen3-256/qwen3-256-Q5_K_M.gguf",
];

/// What NumPy computed for one prompt of a GGUF fixture file (float64, on the weights the
/// `gguf` package decodes from the same file).
#[derive(Clone, Debug)]
pub struct GgufReference {
    /// `p1`, `p2`, `p3`.
    pub prompt: String,
    pub prompt_ids: Vec<u32>,
    pub greedy_ids: Vec<u32>,
    /// The logits that chose each of `greedy_ids`.
    pub step_logits: Vec<Vec<f32>>,
}

impl GgufReference {
    /// Every prompt's reference for `gguf`, from `X.ref.safetensors` beside `X.gguf`. Panics
    /// naming the file and the tensor when one is missing or malformed.
    pub fn read_all(gguf: &std::path::Path) -> Vec<GgufReference> {
        let path = gguf.with_extension("ref.safetensors");
        let bytes = std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        let st = safetensors::SafeTensors::deserialize(&bytes)
            .unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        let tensor = |name: &str| {
            st.tensor(name)
                .unwrap_or_else(|e| panic!("{}: {name}: {e}", path.display()))
        };
        let words = |name: &str| -> Vec<[u8; 4]> {
            tensor(name)
                .data()
                .chunks_exact(4)
                .map(|c| c.try_into().expect("4 bytes"))
                .collect()
        };
        let ints = |name: &str| -> Vec<u32> {
            words(name)
                .into_iter()
                .map(|w| i32::from_le_bytes(w) as u32)
                .collect()
        };
        ["p1", "p2", "p3"]
            .iter()
            .map(|p| {
                let logits = format!("{p}.step_logits");
                let vocab = tensor(&logits).shape()[1];
                let values: Vec<f32> = words(&logits).into_iter().map(f32::from_le_bytes).collect();
                GgufReference {
                    prompt: p.to_string(),
                    prompt_ids: ints(&format!("{p}.prompt_ids")),
                    greedy_ids: ints(&format!("{p}.greedy_ids")),
                    step_logits: values.chunks(vocab).map(<[f32]>::to_vec).collect(),
                }
            })
            .collect()
    }
}

/// Runs GGUF fixture file `file` (a path under [`gguf_fixtures`]) on `target`: its Q8_0, Q4_0,
/// Q4_K, Q5_K and Q6_K linear weights must stay quantized (the kernels read the blocks), every prompt's
/// greedy tokens must equal the NumPy reference's and its logits be within `tol` of them.
/// The KV cache is f32 (not the f16 default of quantized weights): what is checked at `tol` is
/// the backend's quantized kernels; its 16-bit cache is checked against the interpreter by the
/// op case `attention_over_a_16_bit_kv_cache`. Returns the largest logit difference.
pub fn assert_gguf_fixture_matches(target: &dyn kiln_compile::Target, file: &str, tol: f32) -> f32 {
    let path = gguf_fixtures().join(file);
    let mut opts = crate::LoadOptions::new(target);
    opts.graph.kv_dtype = Some(crate::KvDtype::F32);
    let mut model = crate::Model::load(&crate::ModelSource::Gguf(path.clone()), &opts)
        .unwrap_or_else(|e| panic!("{file}: {e}"));
    assert!(
        !model.config.file_quant.is_empty(),
        "{file}: no weight stayed quantized"
    );
    let mut worst = 0.0f32;
    for r in GgufReference::read_all(&path) {
        let g = model
            .generate(
                &r.prompt_ids,
                r.greedy_ids.len(),
                &crate::Sampling::default(),
                &[],
                |_| {},
            )
            .unwrap_or_else(|e| panic!("{file} {}: {e}", r.prompt));
        assert_eq!(
            g.generated_ids, r.greedy_ids,
            "{file} {}: greedy ids",
            r.prompt
        );
        for (k, (got, want)) in g.step_logits.iter().zip(&r.step_logits).enumerate() {
            let d = max_abs_diff(got, want);
            assert!(
                d <= tol,
                "{file} {}: step {k} logits differ by {d} (> {tol})",
                r.prompt
            );
            worst = worst.max(d);
        }
    }
    eprintln!("{file}: max |kiln - numpy| {worst:.2e}");
    worst
}

/// Writes GGUF files (version 3, little-endian) for tests: metadata and tensors as given,
/// tensor data at aligned offsets in the order added. Nothing is checked, so a test can write
/// exactly the broken file it wants (with [`GgufBuilder::raw_kv`] and
/// [`GgufBuilder::raw_tensor`]).
#[derive(Clone, Debug)]
pub struct GgufBuilder {
    pub version: u32,
    pub alignment: u64,
    kvs: Vec<(String, u32, Vec<u8>)>,
    tensors: Vec<BuiltTensor>,
}

/// A tensor of a [`GgufBuilder`]: its info, its data, and the offset its info claims when a
/// test overrides it.
#[derive(Clone, Debug)]
struct BuiltTensor {
    name: String,
    ne: Vec<u64>,
    ty: u32,
    data: Vec<u8>,
    offset: Option<u64>,
}

impl Default for GgufBuilder {
    fn default() -> Self {
        GgufBuilder {
            version: 3,
            alignment: 32,
            kvs: Vec::new(),
            tensors: Vec::new(),
        }
    }
}

/// A GGUF string: u64 length and bytes.
pub fn gguf_string(s: &str) -> Vec<u8> {
    let mut b = (s.len() as u64).to_le_bytes().to_vec();
    b.extend_from_slice(s.as_bytes());
    b
}

impl GgufBuilder {
    /// A metadata entry of value type `ty` whose value is `value`'s bytes, as they are.
    pub fn raw_kv(mut self, key: &str, ty: u32, value: Vec<u8>) -> Self {
        self.kvs.push((key.into(), ty, value));
        self
    }

    pub fn str(self, key: &str, v: &str) -> Self {
        self.raw_kv(key, 8, gguf_string(v))
    }

    pub fn u32(self, key: &str, v: u32) -> Self {
        self.raw_kv(key, 4, v.to_le_bytes().to_vec())
    }

    pub fn f32(self, key: &str, v: f32) -> Self {
        self.raw_kv(key, 6, v.to_le_bytes().to_vec())
    }

    /// An array of strings.
    pub fn strs(self, key: &str, v: &[&str]) -> Self {
        let mut b = 8u32.to_le_bytes().to_vec();
        b.extend((v.len() as u64).to_le_bytes());
        for s in v {
            b.extend(gguf_string(s));
        }
        self.raw_kv(key, 9, b)
    }

    /// An array of int32.
    pub fn i32s(self, key: &str, v: &[i32]) -> Self {
        let mut b = 5u32.to_le_bytes().to_vec();
        b.extend((v.len() as u64).to_le_bytes());
        for x in v {
            b.extend(x.to_le_bytes());
        }
        self.raw_kv(key, 9, b)
    }

    /// A tensor with GGUF dimensions `ne` (fastest first) of GGML type `ty`.
    pub fn tensor(mut self, name: &str, ne: &[u64], ty: u32, data: Vec<u8>) -> Self {
        self.tensors.push(BuiltTensor {
            name: name.into(),
            ne: ne.to_vec(),
            ty,
            data,
            offset: None,
        });
        self
    }

    /// A tensor whose info claims `offset`, whatever its data's place.
    pub fn raw_tensor(
        mut self,
        name: &str,
        ne: &[u64],
        ty: u32,
        data: Vec<u8>,
        offset: u64,
    ) -> Self {
        self.tensors.push(BuiltTensor {
            name: name.into(),
            ne: ne.to_vec(),
            ty,
            data,
            offset: Some(offset),
        });
        self
    }

    /// An f32 tensor of Hugging Face shape `shape` (row-major) with `values`.
    pub fn f32_tensor(self, name: &str, shape: &[usize], values: &[f32]) -> Self {
        let ne: Vec<u64> = shape.iter().rev().map(|&d| d as u64).collect();
        let data = values.iter().flat_map(|v| v.to_le_bytes()).collect();
        self.tensor(name, &ne, 0, data)
    }

    pub fn build(&self) -> Vec<u8> {
        let mut out = b"GGUF".to_vec();
        out.extend(self.version.to_le_bytes());
        out.extend((self.tensors.len() as u64).to_le_bytes());
        out.extend((self.kvs.len() as u64).to_le_bytes());
        for (k, ty, v) in &self.kvs {
            out.extend(gguf_string(k));
            out.extend(ty.to_le_bytes());
            out.extend(v);
        }
        let align = |n: u64| n.div_ceil(self.alignment.max(1)) * self.alignment.max(1);
        let mut offset = 0u64;
        let mut data = Vec::new();
        for t in &self.tensors {
            out.extend(gguf_string(&t.name));
            out.extend((t.ne.len() as u32).to_le_bytes());
            for d in &t.ne {
                out.extend(d.to_le_bytes());
            }
            out.extend(t.ty.to_le_bytes());
            out.extend(t.offset.unwrap_or(offset).to_le_bytes());
            data.resize(offset as usize, 0);
            data.extend(&t.data);
            offset = align(data.len() as u64);
        }
        out.resize(align(out.len() as u64) as usize, 0);
        out.extend(data);
        out
    }
}

/// The largest `|a[i] - b[i]|` (NaN where either holds one). Panics when the lengths differ.
pub fn max_abs_diff(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len(), "lengths differ");
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, |m, d| {
            if d.is_nan() || m.is_nan() {
                f32::NAN
            } else {
                m.max(d)
            }
        })
}

/// The Qwen3 `tokenizer.json` cut down to its first `vocab` ids and the merges among them
/// (same normalizer, pre-tokenizer, decoder and special tokens): a small, real tokenizer file
/// for tests and fuzzing that must load many variants of it quickly.
pub fn small_qwen_tokenizer_json(vocab: u32) -> Vec<u8> {
    use std::io::Read;
    let mut text = Vec::new();
    flate2::read::GzDecoder::new(crate::tokenizer::EMBEDDED_QWEN)
        .read_to_end(&mut text)
        .expect("the embedded tokenizer decompresses");
    let mut v: serde_json::Value = serde_json::from_slice(&text).expect("embedded tokenizer JSON");
    let model = &mut v["model"];
    let kept: std::collections::HashSet<String> = model["vocab"]
        .as_object()
        .expect("BPE vocab")
        .iter()
        .filter(|(_, id)| id.as_u64().is_some_and(|id| id < vocab as u64))
        .map(|(t, _)| t.clone())
        .collect();
    let vocab_map: serde_json::Map<String, serde_json::Value> = model["vocab"]
        .as_object()
        .expect("BPE vocab")
        .iter()
        .filter(|(t, _)| kept.contains(*t))
        .map(|(t, id)| (t.clone(), id.clone()))
        .collect();
    let merges: Vec<serde_json::Value> = model["merges"]
        .as_array()
        .expect("BPE merges")
        .iter()
        .filter(|m| {
            let parts: Vec<&str> = m
                .as_array()
                .map(|p| p.iter().filter_map(|s| s.as_str()).collect())
                .unwrap_or_default();
            parts.len() == 2
                && kept.contains(parts[0])
                && kept.contains(parts[1])
                && kept.contains(&format!("{}{}", parts[0], parts[1]))
        })
        .cloned()
        .collect();
    model["vocab"] = vocab_map.into();
    model["merges"] = merges.into();
    serde_json::to_vec(&v).expect("serializes")
}

/// Checks another backend's greedy generation against the CPU's, for the same prompt: both sum
/// in f32 in different orders (and a GPU's exp2/sin are not libm's), so logits differ in the
/// last bits. Tokens must match until a step where the CPU's top-2 logits are that close (a
/// near tie); after a divergence the two continue from different prefixes and are not
/// compared. Every compared step's logits must agree within 1e-3 of the largest logit.
/// `other` names the backend in the messages.
pub fn assert_greedy_agrees(cpu: &crate::Generation, got: &crate::Generation, other: &str) {
    let mut worst = 0.0f32;
    for k in 0..cpu.generated_ids.len().min(got.generated_ids.len()) {
        let d = cpu.step_logits[k]
            .iter()
            .zip(&got.step_logits[k])
            .map(|(a, b)| (a - b).abs())
            .fold(0.0, f32::max);
        worst = worst.max(d);
        if cpu.generated_ids[k] != got.generated_ids[k] {
            let mut row = cpu.step_logits[k].clone();
            row.sort_by(|a, b| b.total_cmp(a));
            let margin = row[0] - row[1];
            eprintln!(
                "token {k} differs (cpu {} vs {other} {}): cpu top-2 margin {margin}, max logit diff {d}",
                cpu.generated_ids[k], got.generated_ids[k]
            );
            assert!(
                margin <= 2.0 * d,
                "token {k} differs although the cpu's top-2 margin {margin} exceeds twice the logit difference {d}"
            );
            break;
        }
    }
    let scale = cpu.step_logits[0]
        .iter()
        .fold(1.0f32, |m, x| m.max(x.abs()));
    eprintln!("cpu vs {other}: max logit difference {worst} (largest logit {scale})");
    assert!(
        worst <= 1e-3 * scale,
        "cpu and {other} logits differ by {worst} (largest logit {scale})"
    );
}

/// Greedy generation of each prompt through a batched model, `steps` tokens each: sequence
/// `i` joins at step `i` into slot `slot_of[i]`, its prompt prefilled in chunks of `chunk`
/// beside the others' decodes, all of a step's work in one forward. Returns each sequence's
/// tokens and the logits that chose them.
pub fn generate_batched(
    m: &mut crate::BatchedModel,
    prompts: &[Vec<u32>],
    slot_of: &[usize],
    steps: usize,
    chunk: usize,
) -> Vec<(Vec<u32>, Vec<Vec<f32>>)> {
    for &s in slot_of {
        m.clear_slot(s);
    }
    let mut fed = vec![0usize; prompts.len()];
    let mut out: Vec<(Vec<u32>, Vec<Vec<f32>>)> = vec![(vec![], vec![]); prompts.len()];
    let mut step = 0;
    while out.iter().any(|o| o.0.len() < steps) {
        let mut chunks = vec![];
        for (i, p) in prompts.iter().enumerate() {
            if i > step || out[i].0.len() == steps {
                continue;
            }
            let ids = if fed[i] < p.len() {
                p[fed[i]..(fed[i] + chunk).min(p.len())].to_vec()
            } else {
                vec![*out[i].0.last().expect("a token after the prompt")]
            };
            chunks.push((i, ids));
        }
        let work: Vec<crate::SlotWork> = chunks
            .iter()
            .map(|(i, ids)| crate::SlotWork {
                slot: slot_of[*i],
                position: m.slot_len(slot_of[*i]),
                tokens: ids,
                logits: fed[*i] + ids.len() >= prompts[*i].len(),
            })
            .collect();
        let logits = m.forward(&work).expect("batched forward");
        let mut rows = logits.into_iter();
        for (i, ids) in &chunks {
            fed[*i] += ids.len();
            if fed[*i] >= prompts[*i].len() {
                let row = rows.next().expect("a row per sampled sequence");
                out[*i].0.push(crate::argmax(&row));
                out[*i].1.push(row);
            }
        }
        step += 1;
    }
    out
}

/// How closely a backend's batched forward must reproduce its single-sequence one.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BatchExactness {
    /// Bitwise: every kernel reduces a row in the same order whatever the rows beside it
    /// (the CPU backend).
    Bitwise,
    /// Within [`assert_greedy_agrees`]' tolerance: a backend whose matmul takes another
    /// path for one row than for several (CUDA's warp-reduced GEMV at M = 1) sums in
    /// another order when a decode runs beside others.
    Close,
}

/// The batched model on `target` against the single-sequence model on the same target, on
/// fixture `name`'s reference prompts (p1..p3, made up to three with others) and a fourth of
/// 70 positions (past a slot's first capacity: its cache grows mid-generation): batched
/// (slots 3, 0, 2, 1 of 4, chunked prefill beside decodes), each alone in the batched model,
/// and each through `Model::generate` agree as `exactness` says, and the batched run gives
/// transformers' greedy tokens for the fixture's prompts.
pub fn assert_batched_equals_single(
    target: &dyn kiln_compile::Target,
    name: &str,
    exactness: BatchExactness,
) {
    let dir = fixtures().join(name);
    let source = crate::ModelSource::Dir(dir);
    let opts = crate::LoadOptions::new(target);
    let refs: Vec<Reference> = ["p1", "p2", "p3"]
        .iter()
        .filter(|p| {
            fixtures()
                .join(name)
                .join("reference")
                .join(format!("{p}.json"))
                .exists()
        })
        .map(|p| Reference::read(name, p))
        .collect();
    let steps = 16;
    let mut prompts: Vec<Vec<u32>> = refs.iter().map(|r| r.prompt_ids.clone()).collect();
    // Prompts of other lengths where the fixture has fewer references.
    let synthetic = |i: u32, n: u32| (0..n).map(|j| (7 + 31 * i + 13 * j) % 256).collect();
    for i in prompts.len()..3 {
        prompts.push(synthetic(i as u32, 4 + 5 * i as u32));
    }
    prompts.push(synthetic(3, 70));
    let mut m = crate::BatchedModel::load(&source, &opts, 4, 256).expect("batched model");
    let together = generate_batched(&mut m, &prompts, &[3, 0, 2, 1], steps, 3);
    let mut single = crate::Model::load(&source, &opts).expect("model");
    let generation =
        |prompt: &[u32], (ids, logits): &(Vec<u32>, Vec<Vec<f32>>)| crate::Generation {
            prompt_ids: prompt.to_vec(),
            generated_ids: ids.clone(),
            finish_reason: crate::FinishReason::MaxNewTokens,
            step_logits: logits.clone(),
            prefill_ms: 0.0,
            decode_ms: 0.0,
        };
    for (i, prompt) in prompts.iter().enumerate() {
        if let Some(r) = refs.get(i) {
            assert_eq!(
                together[i].0,
                r.greedy_ids[..steps],
                "{name}: sequence {i} vs transformers"
            );
        }
        let alone = generate_batched(&mut m, &prompts[i..=i], &[1], steps, 5);
        let run = single
            .generate(prompt, steps, &Default::default(), &[], |_| {})
            .expect("generate");
        let batched = generation(prompt, &together[i]);
        match exactness {
            BatchExactness::Bitwise => {
                assert_eq!(
                    together[i].0, alone[0].0,
                    "{name}: sequence {i}: tokens, batch of 4 vs 1"
                );
                assert!(
                    together[i].1 == alone[0].1,
                    "{name}: sequence {i}: logits, batch of 4 vs 1"
                );
                assert_eq!(
                    together[i].0, run.generated_ids,
                    "{name}: sequence {i} vs Model"
                );
                assert!(
                    together[i].1 == run.step_logits,
                    "{name}: sequence {i}: logits vs Model"
                );
            }
            BatchExactness::Close => {
                let what = format!("{name}: sequence {i} batched");
                assert_greedy_agrees(&run, &batched, &what);
                assert_greedy_agrees(&run, &generation(prompt, &alone[0]), &what);
            }
        }
    }
}
