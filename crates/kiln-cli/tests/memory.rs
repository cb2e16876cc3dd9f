//! Peak memory of `kiln run` on a GGUF file against the file's size (issue 24's target: peak
//! RSS <= 1.15x the file). The file is generated here: the qwen3-0.6b shape in Q4_0 (the type
//! whose ratio is the largest), random blocks, the embedding tied to the LM head, and the real
//! Qwen3 tokenizer (tests/gguf/qwen3-tokenizer.gguf.gz: 151,936 tokens and 151,387 merges), so
//! the run reads a text prompt as a user's does. Alone in its test binary: the peak is read
//! from the finished child's rusage.

use kiln_models::gguf::{GgufFile, MetaArray, MetaValue};
use kiln_models::testing::{gguf_string, GgufBuilder};
use std::io::Write;
use std::path::Path;
use std::process::Command;

// qwen3-0.6b (crates/kiln-models/src/presets.rs).
const VOCAB: usize = 151_936;
const HIDDEN: usize = 1024;
const INTER: usize = 3072;
const LAYERS: usize = 28;
const HEADS: usize = 16;
const KV_HEADS: usize = 8;
const HEAD_DIM: usize = 128;
/// GGML's type id for Q4_0.
const Q4_0: u32 = 2;

/// Writes `rows x cols` random Q4_0 values: blocks of a small f16 scale and 16 bytes of
/// nibbles, the same every run (xorshift64).
fn write_q4_0(out: &mut impl Write, rows: usize, cols: usize, seed: &mut u64) {
    let mut next = || {
        *seed ^= *seed << 13;
        *seed ^= *seed >> 7;
        *seed ^= *seed << 17;
        *seed
    };
    for _ in 0..rows {
        let mut row = Vec::with_capacity(cols / 32 * 18);
        for _ in 0..cols / 32 {
            // f16 scales in [0.00125, 0.0025): 0x1520 + up to 0xff steps.
            let d = 0x1520u16 + (next() & 0xff) as u16;
            row.extend(d.to_le_bytes());
            row.extend(next().to_le_bytes());
            row.extend(next().to_le_bytes());
        }
        out.write_all(&row).unwrap();
    }
}

/// A tensor of the file: name, GGUF dimensions (fastest first), Q4_0 matrix or f32 ones.
struct Info {
    name: String,
    ne: Vec<u64>,
    q4_0: bool,
}

impl Info {
    fn bytes(&self) -> u64 {
        let n: u64 = self.ne.iter().product();
        if self.q4_0 {
            n / 32 * 18
        } else {
            4 * n
        }
    }
}

/// `header` with the `tokenizer.*` metadata of the Qwen3 tokenizer fixture.
fn with_qwen3_tokenizer(mut header: GgufBuilder) -> GgufBuilder {
    let dir = tempfile::tempdir().unwrap();
    let f = GgufFile::open(&kiln_models::testing::tokenizer_gguf_in(dir.path())).unwrap();
    for (key, value) in f.metadata() {
        if !key.starts_with("tokenizer.") {
            continue;
        }
        header = match value {
            MetaValue::Str(v) => header.str(key, v),
            MetaValue::U32(v) => header.u32(key, *v),
            MetaValue::Bool(v) => header.raw_kv(key, 7, vec![*v as u8]),
            MetaValue::Array(MetaArray::Str(v)) => {
                header.strs(key, &v.iter().map(String::as_str).collect::<Vec<_>>())
            }
            MetaValue::Array(MetaArray::I32(v)) => header.i32s(key, v),
            other => panic!("the tokenizer fixture's {key}: {other:?} is not copied"),
        };
    }
    header
}

/// Writes the qwen3-0.6b shape in Q4_0 to `path`, streamed (a spawned child's peak RSS counts
/// the parent's memory up to the exec: the test process stays well below the child's peak).
fn write_qwen3_0_6b_q4_0(path: &Path) {
    let mut header = GgufBuilder::default();
    // No padding after the metadata: the tensor infos follow it (the file's alignment is
    // GGUF's default, 32).
    header.alignment = 1;
    let header = header
        .str("general.architecture", "qwen3")
        .u32("qwen3.block_count", LAYERS as u32)
        .u32("qwen3.context_length", 40960)
        .u32("qwen3.embedding_length", HIDDEN as u32)
        .u32("qwen3.feed_forward_length", INTER as u32)
        .u32("qwen3.attention.head_count", HEADS as u32)
        .u32("qwen3.attention.head_count_kv", KV_HEADS as u32)
        .u32("qwen3.attention.key_length", HEAD_DIM as u32)
        .u32("qwen3.attention.value_length", HEAD_DIM as u32)
        .f32("qwen3.rope.freq_base", 1e6)
        .f32("qwen3.attention.layer_norm_rms_epsilon", 1e-6);
    let header = with_qwen3_tokenizer(header);
    let mut infos = Vec::new();
    let matrix = |name: String, rows: usize, cols: usize| Info {
        name,
        ne: vec![cols as u64, rows as u64],
        q4_0: true,
    };
    let norm = |name: String, n: usize| Info {
        name,
        ne: vec![n as u64],
        q4_0: false,
    };
    infos.push(matrix("token_embd.weight".into(), VOCAB, HIDDEN));
    for l in 0..LAYERS {
        let p = format!("blk.{l}");
        infos.push(norm(format!("{p}.attn_norm.weight"), HIDDEN));
        infos.push(matrix(
            format!("{p}.attn_q.weight"),
            HEADS * HEAD_DIM,
            HIDDEN,
        ));
        infos.push(matrix(
            format!("{p}.attn_k.weight"),
            KV_HEADS * HEAD_DIM,
            HIDDEN,
        ));
        infos.push(matrix(
            format!("{p}.attn_v.weight"),
            KV_HEADS * HEAD_DIM,
            HIDDEN,
        ));
        infos.push(matrix(
            format!("{p}.attn_output.weight"),
            HIDDEN,
            HEADS * HEAD_DIM,
        ));
        infos.push(norm(format!("{p}.attn_q_norm.weight"), HEAD_DIM));
        infos.push(norm(format!("{p}.attn_k_norm.weight"), HEAD_DIM));
        infos.push(norm(format!("{p}.ffn_norm.weight"), HIDDEN));
        infos.push(matrix(format!("{p}.ffn_gate.weight"), INTER, HIDDEN));
        infos.push(matrix(format!("{p}.ffn_up.weight"), INTER, HIDDEN));
        infos.push(matrix(format!("{p}.ffn_down.weight"), HIDDEN, INTER));
    }
    infos.push(norm("output_norm.weight".into(), HIDDEN));

    // The header and metadata as GgufBuilder writes them (no tensors), then the tensor infos: every size
    // here is a multiple of the 32-byte alignment, so the data is packed end to end.
    let mut head = header.build();
    head[8..16].copy_from_slice(&(infos.len() as u64).to_le_bytes());
    let mut offset = 0u64;
    for t in &infos {
        head.extend(gguf_string(&t.name));
        head.extend((t.ne.len() as u32).to_le_bytes());
        for d in &t.ne {
            head.extend(d.to_le_bytes());
        }
        head.extend((if t.q4_0 { Q4_0 } else { 0u32 }).to_le_bytes());
        head.extend(offset.to_le_bytes());
        assert_eq!(t.bytes() % 32, 0);
        offset += t.bytes();
    }
    head.resize(head.len().next_multiple_of(32), 0);
    let mut out = std::io::BufWriter::new(std::fs::File::create(path).unwrap());
    out.write_all(&head).unwrap();
    let mut seed = 0x9e37_79b9_7f4a_7c15u64;
    for t in &infos {
        if t.q4_0 {
            write_q4_0(&mut out, t.ne[1] as usize, t.ne[0] as usize, &mut seed);
        } else {
            let ones: Vec<u8> = (0..t.ne[0]).flat_map(|_| 1f32.to_le_bytes()).collect();
            out.write_all(&ones).unwrap();
        }
    }
    out.flush().unwrap();
}

/// Peak RSS of `kiln run` over the file's size. Measured (AMD EPYC Zen 4, AVX-512 VNNI, 2
/// threads): 1.58x when the tied table was held twice (file rows for the gather and panels for
/// the head), 1.34x with the gather reading the file's mapping, 1.21x with every weight a view
/// of the mapping until packed, packed weights end to end in the huge-page arena and the freed
/// heap given back, 1.19x with Q4_0 panels the file's own 18 bytes per 32 values, and 1.10x
/// (359 MiB for 326) with the BPE tokenizer (31 MiB) dropped once the prompt is encoded, the
/// output decoded through a table of token bytes. What remains is ~33 MiB of binary, kernels,
/// heap, threads' scratch and the KV cache. The limit is the 1.15x: 0.05x (16 MiB) of
/// margin, which the peak does not move by from run to run (it is not load sensitive), and
/// which a tokenizer resident beside the weights again (+31 MiB) would exceed. At the issue's
/// benchmark length (128 prompt tokens, 64 new) the f16 KV cache (21 MiB), the prefill's
/// activations and its gathered embedding rows come on top: 1.17x before the memory plan
/// chose slots by size, the embedding's rows were made resident a page each and `kiln run`
/// prefilled 64 tokens a forward; 1.134x after (4 MiB under the limit).
#[test]
#[cfg(target_os = "linux")]
fn kiln_run_on_a_q4_0_gguf_peaks_below_1_15x_the_file_short_and_at_128_plus_64() {
    const LIMIT: f64 = 1.15;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("qwen3-0.6b-q4_0.gguf");
    write_qwen3_0_6b_q4_0(&path);
    let file = std::fs::metadata(&path).unwrap().len() as f64;
    // The kernels compile once into the build folder's cache (outside the repository); the
    // measured run finds them there: a compile's C compilers are child processes, whose
    // memory the run's rusage would count.
    let cache = std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join("memory-test-cache");
    let run = |stderr: std::process::Stdio, args: &[String]| {
        Command::new(env!("CARGO_BIN_EXE_kiln"))
            .args(["run", "--model", path.to_str().unwrap()])
            .args(args)
            .args(["--ignore-eos", "--threads", "2"])
            .env("KILN_CACHE_DIR", &cache)
            .env_remove("KILN_COMPILE_THREADS")
            .stdout(std::process::Stdio::null())
            .stderr(stderr)
            .spawn()
            .unwrap()
    };
    let short: Vec<String> = ["--prompt", "Hello there", "--max-new-tokens", "8"]
        .map(String::from)
        .into();
    let warm = run(std::process::Stdio::piped(), &short)
        .wait_with_output()
        .unwrap();
    assert!(
        warm.status.success(),
        "kiln run failed: {}",
        String::from_utf8_lossy(&warm.stderr)
    );
    // The benchmark length: 128 distinct prompt tokens (each gathers its own
    // embedding row), 64 new ones (a KV cache of 192 positions).
    let ids: Vec<String> = (1000..1128).map(|i: u32| i.to_string()).collect();
    let long: Vec<String> = vec![
        "--prompt-ids".into(),
        ids.join(","),
        "--max-new-tokens".into(),
        "64".into(),
    ];
    for (what, args) in [("Hello there + 8", &short), ("128 + 64", &long)] {
        let ratio = peak_rss(run(std::process::Stdio::null(), args)) / file;
        eprintln!("{what} tokens: peak RSS {ratio:.3}x the file");
        assert!(
            ratio <= LIMIT,
            "kiln run ({what} tokens): peak RSS {ratio:.3}x the GGUF file ({:.0} MiB), over {LIMIT}x",
            file / 1048576.0
        );
    }
}

/// `child`'s peak resident set in bytes, once it has exited successfully.
#[cfg(target_os = "linux")]
fn peak_rss(child: std::process::Child) -> f64 {
    // SAFETY: wait4 reaps this child (std's handle is not waited on after) and writes the
    // status and the rusage it is given.
    unsafe {
        let (mut status, mut u): (i32, libc::rusage) = (0, std::mem::zeroed());
        let pid = child.id() as libc::pid_t;
        assert_eq!(libc::wait4(pid, &mut status, 0, &mut u), pid);
        assert!(libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0);
        u.ru_maxrss as f64 * 1024.0
    }
}
