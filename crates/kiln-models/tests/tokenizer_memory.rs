//! The memory a GGUF file's tokenizer keeps once built (issue 24: `kiln run` on a GGUF file
//! should hold little beyond the weights). Qwen's 151,936 tokens and 151,387 merges are read
//! from the metadata as strings and rebuilt into a `tokenizers` BPE; the pieces freed on the
//! way must not stay resident. Alone in its test binary: it measures the whole process.

use kiln_models::ModelSource;

/// This process's resident anonymous memory, in MiB.
fn rss_anon_mib() -> f64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    let kb: f64 = status
        .lines()
        .find_map(|l| l.strip_prefix("RssAnon:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .expect("RssAnon in /proc/self/status");
    kb / 1024.0
}

/// Resident memory the Qwen3 tokenizer of a GGUF file holds: the `tokenizers` BPE itself is
/// ~31 MiB. Building it through a `serde_json::Value` tree of the vocabulary left 145 MiB
/// resident, which `kiln run` kept beside the weights; built from the strings directly, 44
/// MiB (the holes the build left among the tokenizer's pieces); built on a thread of its own
/// and copied out, 31.
#[test]
#[cfg(all(target_os = "linux", target_env = "gnu"))]
fn a_gguf_tokenizer_keeps_no_more_than_the_tokenizer() {
    // kiln's allocator setting (kiln-cli's main): allocations from 1 MB up are mapped alone.
    // SAFETY: sets an allocator parameter before this test allocates much.
    unsafe { libc::mallopt(libc::M_MMAP_THRESHOLD, 1 << 20) };
    let dir = tempfile::tempdir().unwrap();
    let path = kiln_models::testing::tokenizer_gguf_in(dir.path());

    let before = rss_anon_mib();
    let tok = ModelSource::Gguf(path).tokenizer().unwrap().unwrap();
    let held = rss_anon_mib() - before;
    assert_eq!(tok.vocab_size(), 151_669);
    // 31 MiB measured; the margin is for allocator and `tokenizers` version differences.
    const LIMIT_MIB: f64 = 45.0;
    assert!(
        held <= LIMIT_MIB,
        "building the GGUF tokenizer left {held:.0} MiB resident (limit {LIMIT_MIB} MiB)"
    );
    eprintln!("the GGUF tokenizer holds {held:.0} MiB");
}
