//! kiln's block formats against the fixture files (tests/gguf): dequantization bit-identical to
//! the `gguf` Python package's for every type in every file, and kiln's reference quantizers
//! writing the very bytes of the files: Q8_0 and Q4_0 as the `gguf` package wrote them, Q4_K,
//! Q5_K and Q6_K as llama.cpp's own quantizer did (`quantize_row_q4_K_ref`,
//! `quantize_row_q5_K_ref`, `quantize_row_q6_K_ref`, no importance matrix).

use kiln_ir::QuantType;
use kiln_models::gguf::GgufFile;
use std::path::Path;

fn fixtures() -> std::path::PathBuf {
    kiln_models::testing::gguf_fixtures()
}

fn open(rel: &str) -> GgufFile {
    GgufFile::open(&fixtures().join(rel)).unwrap_or_else(|e| panic!("{rel}: {e}"))
}

/// The tensors of a safetensors file of f32 values: (name, shape, values).
fn f32_tensors(path: &Path) -> Vec<(String, Vec<usize>, Vec<f32>)> {
    let bytes = std::fs::read(path).unwrap();
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    st.tensors()
        .into_iter()
        .map(|(n, v)| {
            let values = v
                .data()
                .chunks_exact(4)
                .map(|c| f32::from_le_bytes(c.try_into().unwrap()))
                .collect();
            (n, v.shape().to_vec(), values)
        })
        .collect()
}

#[test]
fn dequantization_is_bit_identical_to_the_gguf_package() {
    let mut types = std::collections::BTreeSet::new();
    let checks = f32_tensors(&fixtures().join("dequant.safetensors"));
    assert!(checks.len() >= 15, "{} checks", checks.len());
    for (key, shape, want) in checks {
        let (file, tensor) = key.split_once('|').unwrap();
        let f = open(file);
        let t = f.tensor(tensor).unwrap();
        let qt = t.quant_type().unwrap();
        let (rows, row) = (shape[0], shape[1]);
        assert_eq!(row as u64, t.ne[0], "{key}");
        let row_bytes = qt.bytes_of(row as u64).unwrap() as usize;
        let mut got = vec![0.0f32; rows * row];
        qt.dequantize_row(&f.data(t)[..rows * row_bytes], &mut got)
            .unwrap();
        for (i, (g, w)) in got.iter().zip(&want).enumerate() {
            assert!(
                g.to_bits() == w.to_bits(),
                "{key}: value {i}: kiln {g}, gguf {w}"
            );
        }
        types.insert(qt);
    }
    // Every type kiln reads except F32 (a plain copy) is covered.
    let missing: Vec<_> = QuantType::ALL
        .into_iter()
        .filter(|t| *t != QuantType::F32 && !types.contains(t))
        .collect();
    assert!(missing.is_empty(), "no fixture tensor of {missing:?}");
}

/// Quantizes `values` (whole rows) with kiln and compares with `bytes`.
fn assert_quantizes_to(what: &str, qt: QuantType, values: &[f32], bytes: &[u8]) {
    let got = qt.quantize(values).unwrap();
    assert_eq!(got.len(), bytes.len(), "{what}");
    if let Some(i) = got.iter().zip(bytes).position(|(a, b)| a != b) {
        let block = i / qt.block_bytes();
        panic!(
            "{what}: {qt} byte {i} (block {block}, byte {} of it) is {} in kiln, {} in the file",
            i % qt.block_bytes(),
            got[i],
            bytes[i]
        );
    }
}

#[test]
fn q8_0_and_q4_0_quantizers_write_the_gguf_packages_bytes() {
    let source = open("tiny-qwen3/tiny-qwen3-F32.gguf");
    for (qt, file) in [
        (QuantType::Q8_0, "tiny-qwen3/tiny-qwen3-Q8_0.gguf"),
        (QuantType::Q4_0, "tiny-qwen3/tiny-qwen3-Q4_0.gguf"),
    ] {
        let quantized = open(file);
        let mut n = 0;
        for t in quantized
            .tensors()
            .iter()
            .filter(|t| t.quant_type() == Some(qt))
        {
            let src = source.tensor(&t.name).unwrap();
            let values: Vec<f32> = source
                .data(src)
                .chunks_exact(4)
                .map(|c| f32::from_le_bytes(c.try_into().unwrap()))
                .collect();
            assert_quantizes_to(
                &format!("{file} {}", t.name),
                qt,
                &values,
                quantized.data(t),
            );
            n += 1;
        }
        assert_eq!(n, 15, "{file}: matrices of {qt}");
    }
}

#[test]
fn k_quantizers_write_llama_cpps_bytes() {
    for (qt, file) in [
        (QuantType::Q4_K, "qwen3-256/qwen3-256-Q4_K.gguf"),
        (QuantType::Q6_K, "qwen3-256/qwen3-256-Q6_K.gguf"),
    ] {
        let quantized = open(file);
        let sources = f32_tensors(&fixtures().join("quant-source.safetensors"));
        assert_eq!(sources.len(), 3);
        for (name, shape, values) in sources {
            let t = quantized.tensor(&name).unwrap();
            assert_eq!(t.quant_type(), Some(qt), "{file} {name}");
            let row_bytes = qt.bytes_of(shape[1] as u64).unwrap() as usize;
            let bytes = &quantized.data(t)[..shape[0] * row_bytes];
            assert_quantizes_to(&format!("{file} {name}"), qt, &values, bytes);
        }
    }
}

/// The Q5_K_M file mixes Q5_K and Q6_K (llama.cpp's per-tensor choice): each source tensor is
/// quantized by kiln to the type the file holds it in, and gives the file's bytes.
#[test]
fn q5_k_quantizer_writes_llama_cpps_bytes() {
    let file = "qwen3-256/qwen3-256-Q5_K_M.gguf";
    let quantized = open(file);
    let mut q5 = 0;
    for (name, shape, values) in f32_tensors(&fixtures().join("quant-source.safetensors")) {
        let t = quantized.tensor(&name).unwrap();
        let qt = t.quant_type().unwrap();
        assert!(
            matches!(qt, QuantType::Q5_K | QuantType::Q6_K),
            "{name}: {qt}"
        );
        q5 += (qt == QuantType::Q5_K) as usize;
        let row_bytes = qt.bytes_of(shape[1] as u64).unwrap() as usize;
        let bytes = &quantized.data(t)[..shape[0] * row_bytes];
        assert_quantizes_to(&format!("{file} {name}"), qt, &values, bytes);
    }
    assert!(q5 >= 1, "{file}: no Q5_K source tensor");
}

/// The loader drops a tensor's mapped pages once it has copied it out (`GgufFile::release`):
/// the file reads the same afterwards, every tensor (neighbours share pages).
#[test]
fn released_tensors_read_back_the_same_bytes() {
    let f = open("qwen3-256/qwen3-256-Q4_K_M.gguf");
    let before: Vec<Vec<u8>> = f.tensors().iter().map(|t| f.data(t).to_vec()).collect();
    for t in f.tensors() {
        f.release(t);
    }
    for (t, bytes) in f.tensors().iter().zip(&before) {
        assert_eq!(f.data(t), &bytes[..], "{}", t.name);
    }
}
