//! GGUF files, llama.cpp's model format: a header, typed metadata (key -> value), a table of
//! tensor infos, then the tensors' bytes, each at an aligned offset. The file is memory-mapped;
//! opening it parses the header and the tensor table without touching tensor data.
//!
//! Layout (little-endian; versions 2 and 3 are the same on little-endian machines, version 1
//! had 32-bit counts and is not read):
//!
//! ```text
//! "GGUF" u32 version  u64 tensor_count  u64 kv_count
//! kv_count x   string key, u32 value_type, value        (string = u64 length + UTF-8 bytes;
//!                                                        array = u32 elem_type, u64 n, values)
//! tensor_count x  string name, u32 n_dims, u64 ne[n_dims], u32 ggml_type, u64 offset
//! padding to general.alignment (default 32), then the data section
//! ```
//!
//! `ne[0]` is the fastest-varying dimension (a row's length), so the row-major shape kiln and
//! Hugging Face write is `ne` reversed. Every count, length and offset is checked against the
//! file's size before anything is read or allocated: a truncated or hostile file is an error
//! naming the file and the key or tensor at fault, never a panic, an out-of-bounds read or an
//! allocation larger than the file.

pub mod qwen;
pub mod tokenizer;

use crate::ModelError;
use kiln_ir::tensor::SharedBytes;
use kiln_ir::QuantType;
use memmap2::Mmap;
use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::Arc;

pub const MAGIC: &[u8; 4] = b"GGUF";
const DEFAULT_ALIGNMENT: u64 = 32;
/// ggml's `GGML_MAX_DIMS`.
pub const MAX_DIMS: usize = 4;
/// Arrays nested deeper than this are rejected (real files nest none; a hostile file could
/// nest a million).
const MAX_ARRAY_DEPTH: usize = 4;

/// Whether `path` looks like a GGUF file: its name ends in `.gguf`, or it starts with the magic.
pub fn is_gguf_path(path: &Path) -> bool {
    if path
        .extension()
        .is_some_and(|e| e.eq_ignore_ascii_case("gguf"))
    {
        return true;
    }
    // Only a regular file is sniffed: opening a FIFO would block, a device could do anything.
    if !std::fs::metadata(path).is_ok_and(|m| m.is_file()) {
        return false;
    }
    let mut magic = [0u8; 4];
    std::fs::File::open(path)
        .and_then(|mut f| std::io::Read::read_exact(&mut f, &mut magic))
        .is_ok_and(|_| &magic == MAGIC)
}

/// A metadata value.
#[derive(Clone, Debug, PartialEq)]
pub enum MetaValue {
    U8(u8),
    I8(i8),
    U16(u16),
    I16(i16),
    U32(u32),
    I32(i32),
    F32(f32),
    Bool(bool),
    Str(String),
    Array(MetaArray),
    U64(u64),
    I64(i64),
    F64(f64),
}

/// A metadata array: its elements in one typed vector (so a long array costs what its
/// elements cost, not an enum each).
#[derive(Clone, Debug, PartialEq)]
pub enum MetaArray {
    U8(Vec<u8>),
    I8(Vec<i8>),
    U16(Vec<u16>),
    I16(Vec<i16>),
    U32(Vec<u32>),
    I32(Vec<i32>),
    F32(Vec<f32>),
    Bool(Vec<bool>),
    Str(Vec<String>),
    Array(Vec<MetaArray>),
    U64(Vec<u64>),
    I64(Vec<i64>),
    F64(Vec<f64>),
}

/// GGUF's value types: (id, name, bytes of a scalar; strings and arrays have a minimum).
const VALUE_TYPES: [(u32, &str, u64); 13] = [
    (0, "uint8", 1),
    (1, "int8", 1),
    (2, "uint16", 2),
    (3, "int16", 2),
    (4, "uint32", 4),
    (5, "int32", 4),
    (6, "float32", 4),
    (7, "bool", 1),
    (8, "string", 8),
    (9, "array", 12),
    (10, "uint64", 8),
    (11, "int64", 8),
    (12, "float64", 8),
];

impl MetaValue {
    /// The value as an unsigned integer, whatever integer type holds it (None for negative
    /// values and other types).
    pub fn as_u64(&self) -> Option<u64> {
        match *self {
            MetaValue::U8(v) => Some(v.into()),
            MetaValue::U16(v) => Some(v.into()),
            MetaValue::U32(v) => Some(v.into()),
            MetaValue::U64(v) => Some(v),
            MetaValue::I8(v) => u64::try_from(v).ok(),
            MetaValue::I16(v) => u64::try_from(v).ok(),
            MetaValue::I32(v) => u64::try_from(v).ok(),
            MetaValue::I64(v) => u64::try_from(v).ok(),
            _ => None,
        }
    }

    /// The value as a float. A float32 is read as the shortest decimal that rounds to it
    /// (`1e-6`, not 9.99999997e-7): the number the file's writer meant, as `config.json`
    /// would give it.
    pub fn as_f64(&self) -> Option<f64> {
        match *self {
            MetaValue::F32(v) => v.to_string().parse().ok(),
            MetaValue::F64(v) => Some(v),
            _ => self.as_u64().map(|v| v as f64),
        }
    }

    pub fn as_str(&self) -> Option<&str> {
        match self {
            MetaValue::Str(s) => Some(s),
            _ => None,
        }
    }

    /// The GGUF name of the value's type (`uint32`, `array of string`, ...).
    pub fn type_name(&self) -> String {
        let id = match self {
            MetaValue::U8(_) => 0,
            MetaValue::I8(_) => 1,
            MetaValue::U16(_) => 2,
            MetaValue::I16(_) => 3,
            MetaValue::U32(_) => 4,
            MetaValue::I32(_) => 5,
            MetaValue::F32(_) => 6,
            MetaValue::Bool(_) => 7,
            MetaValue::Str(_) => 8,
            MetaValue::Array(a) => return format!("array of {}", a.elem_type_name()),
            MetaValue::U64(_) => 10,
            MetaValue::I64(_) => 11,
            MetaValue::F64(_) => 12,
        };
        value_type_name(id).to_string()
    }
}

impl MetaArray {
    pub fn len(&self) -> usize {
        match self {
            MetaArray::U8(v) => v.len(),
            MetaArray::I8(v) => v.len(),
            MetaArray::U16(v) => v.len(),
            MetaArray::I16(v) => v.len(),
            MetaArray::U32(v) => v.len(),
            MetaArray::I32(v) => v.len(),
            MetaArray::F32(v) => v.len(),
            MetaArray::Bool(v) => v.len(),
            MetaArray::Str(v) => v.len(),
            MetaArray::Array(v) => v.len(),
            MetaArray::U64(v) => v.len(),
            MetaArray::I64(v) => v.len(),
            MetaArray::F64(v) => v.len(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn elem_type_name(&self) -> &'static str {
        let id = match self {
            MetaArray::U8(_) => 0,
            MetaArray::I8(_) => 1,
            MetaArray::U16(_) => 2,
            MetaArray::I16(_) => 3,
            MetaArray::U32(_) => 4,
            MetaArray::I32(_) => 5,
            MetaArray::F32(_) => 6,
            MetaArray::Bool(_) => 7,
            MetaArray::Str(_) => 8,
            MetaArray::Array(_) => 9,
            MetaArray::U64(_) => 10,
            MetaArray::I64(_) => 11,
            MetaArray::F64(_) => 12,
        };
        value_type_name(id)
    }

    /// The elements as signed integers, whatever integer type holds them (None for other
    /// element types and values out of i64's range).
    pub fn to_i64s(&self) -> Option<Vec<i64>> {
        fn conv<T: Copy>(v: &[T], f: impl Fn(T) -> Option<i64>) -> Option<Vec<i64>> {
            v.iter().map(|&x| f(x)).collect()
        }
        match self {
            MetaArray::U8(v) => conv(v, |x| Some(x.into())),
            MetaArray::I8(v) => conv(v, |x| Some(x.into())),
            MetaArray::U16(v) => conv(v, |x| Some(x.into())),
            MetaArray::I16(v) => conv(v, |x| Some(x.into())),
            MetaArray::U32(v) => conv(v, |x| Some(x.into())),
            MetaArray::I32(v) => conv(v, |x| Some(x.into())),
            MetaArray::U64(v) => conv(v, |x| i64::try_from(x).ok()),
            MetaArray::I64(v) => Some(v.clone()),
            _ => None,
        }
    }
}

fn value_type_name(id: u32) -> &'static str {
    VALUE_TYPES
        .iter()
        .find(|t| t.0 == id)
        .map(|t| t.1)
        .unwrap_or("unknown")
}

/// Every GGML tensor type (`GGML_QUANT_SIZES` of the `gguf` package): (id, name, values per
/// block, bytes per block), so that the byte range of any tensor in a file can be checked,
/// including tensors of types kiln cannot read (an error only if the model needs them). Ids 4
/// and 5 (Q4_2, Q4_3) and 31 to 33 were removed from ggml.
const GGML_TYPES: &[(u32, &str, u64, u64)] = &[
    (0, "F32", 1, 4),
    (1, "F16", 1, 2),
    (2, "Q4_0", 32, 18),
    (3, "Q4_1", 32, 20),
    (6, "Q5_0", 32, 22),
    (7, "Q5_1", 32, 24),
    (8, "Q8_0", 32, 34),
    (9, "Q8_1", 32, 40),
    (10, "Q2_K", 256, 84),
    (11, "Q3_K", 256, 110),
    (12, "Q4_K", 256, 144),
    (13, "Q5_K", 256, 176),
    (14, "Q6_K", 256, 210),
    (15, "Q8_K", 256, 292),
    (16, "IQ2_XXS", 256, 66),
    (17, "IQ2_XS", 256, 74),
    (18, "IQ3_XXS", 256, 98),
    (19, "IQ1_S", 256, 50),
    (20, "IQ4_NL", 32, 18),
    (21, "IQ3_S", 256, 110),
    (22, "IQ2_S", 256, 82),
    (23, "IQ4_XS", 256, 136),
    (24, "I8", 1, 1),
    (25, "I16", 1, 2),
    (26, "I32", 1, 4),
    (27, "I64", 1, 8),
    (28, "F64", 1, 8),
    (29, "IQ1_M", 256, 56),
    (30, "BF16", 1, 2),
    (34, "TQ1_0", 256, 54),
    (35, "TQ2_0", 256, 66),
    (39, "MXFP4", 32, 17),
    (40, "NVFP4", 64, 36),
    (41, "Q1_0", 128, 18),
];

/// The name, block values and block bytes of GGML type `id`.
fn ggml_type_info(id: u32) -> Option<(&'static str, u64, u64)> {
    GGML_TYPES
        .iter()
        .find(|t| t.0 == id)
        .map(|t| (t.1, t.2, t.3))
}

/// The name of GGML type `id` (`type id N` for ids ggml does not know).
pub fn ggml_type_name(id: u32) -> String {
    ggml_type_info(id)
        .map(|t| t.0.to_string())
        .unwrap_or_else(|| format!("type id {id}"))
}

/// One tensor of the table.
#[derive(Clone, Debug, PartialEq)]
pub struct TensorInfo {
    pub name: String,
    /// GGUF's dimensions, fastest first (`ne[0]` is a row's length).
    pub ne: Vec<u64>,
    pub ggml_type: u32,
    /// From the start of the data section.
    pub offset: u64,
    pub bytes: u64,
}

impl TensorInfo {
    /// The row-major shape (outermost first): `ne` reversed.
    pub fn shape(&self) -> Vec<usize> {
        // Each dimension fits usize: their product's bytes lie inside the mapped file.
        self.ne.iter().rev().map(|&d| d as usize).collect()
    }

    /// The type, when kiln reads it.
    pub fn quant_type(&self) -> Option<QuantType> {
        QuantType::from_ggml_id(self.ggml_type)
    }

    pub fn type_name(&self) -> String {
        ggml_type_name(self.ggml_type)
    }
}

/// A GGUF file, mapped, with its parsed metadata and tensor table.
pub struct GgufFile {
    path: PathBuf,
    map: Arc<Mmap>,
    pub version: u32,
    metadata: BTreeMap<String, MetaValue>,
    tensors: Vec<TensorInfo>,
    by_name: HashMap<String, usize>,
    data_start: usize,
    pub alignment: u64,
}

impl GgufFile {
    /// Maps `path` and parses its header, metadata and tensor table, checking every tensor's
    /// byte range against the file.
    pub fn open(path: &Path) -> Result<GgufFile, ModelError> {
        // Through kiln-fs like every file of a model folder: a regular file (never a FIFO or a
        // device), inside its folder (or its Hugging Face blob store) once links are resolved.
        let f = crate::files::folder_of(path)
            .and_then(|folder| folder.open(path, crate::files::WEIGHTS))
            .map_err(|e| ModelError::checkpoint(path, crate::files::problem(&e)))?
            .file;
        // SAFETY: read-only mapping; kiln does not modify model files while running.
        let map = unsafe { Mmap::map(&f) }
            .map_err(|e| ModelError::checkpoint(path, format!("cannot map: {e}")))?;
        let map = Arc::new(map);
        let header = parse(&map).map_err(|e| e.into_model_error(path))?;
        // The header is parsed into owned values: its pages (a vocabulary's tokens and merges,
        // megabytes of them) need not stay resident beside the weights.
        release_range(&map, 0, header.data_start.min(map.len()));
        let by_name = header
            .tensors
            .iter()
            .enumerate()
            .map(|(i, t)| (t.name.clone(), i))
            .collect();
        Ok(GgufFile {
            path: path.to_path_buf(),
            map,
            version: header.version,
            metadata: header.metadata,
            tensors: header.tensors,
            by_name,
            data_start: header.data_start,
            alignment: header.alignment,
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Where the data section starts: the header's size, padded to the alignment.
    pub fn data_start(&self) -> usize {
        self.data_start
    }

    pub fn metadata(&self) -> &BTreeMap<String, MetaValue> {
        &self.metadata
    }

    pub fn get(&self, key: &str) -> Option<&MetaValue> {
        self.metadata.get(key)
    }

    /// The tensor table, in file order.
    pub fn tensors(&self) -> &[TensorInfo] {
        &self.tensors
    }

    pub fn tensor(&self, name: &str) -> Option<&TensorInfo> {
        self.by_name.get(name).map(|&i| &self.tensors[i])
    }

    /// The tensor's bytes (in range: checked when the file was opened).
    pub fn data(&self, t: &TensorInfo) -> &[u8] {
        let start = self.data_start + t.offset as usize;
        &self.map[start..start + t.bytes as usize]
    }

    /// Drops tensor `t`'s pages from this process's memory once its bytes have been copied
    /// out (at load), so that the mapped file does not stay resident beside the weights made
    /// from it: without this, a loaded model's peak memory counts the file twice.
    pub fn release(&self, t: &TensorInfo) {
        release_range(
            &self.map,
            self.data_start + t.offset as usize,
            t.bytes as usize,
        );
    }

    /// Tensor `t`'s bytes as a view of the mapping that outlives this `GgufFile`
    /// (`Tensor::from_shared`): pages are resident only while read.
    pub fn shared(&self, t: &TensorInfo) -> Arc<dyn SharedBytes> {
        Arc::new(MappedTensor {
            map: self.map.clone(),
            start: self.data_start + t.offset as usize,
            len: t.bytes as usize,
        })
    }

    /// Tensor `t`'s bytes in a private mapping of their own that a reader reads a few rows
    /// of at a time ([`CopiedRows`]: a GGUF embedding table, gathered by token), or `None`
    /// where the file cannot be mapped again (then [`GgufFile::shared`] serves).
    pub fn rows_view(&self, t: &TensorInfo) -> Option<Arc<dyn SharedBytes>> {
        CopiedRows::map(
            &self.path,
            (self.data_start + t.offset as usize) as u64,
            t.bytes as usize,
        )
        .map(|r| Arc::new(r) as Arc<dyn SharedBytes>)
    }

    /// An error about this file.
    pub fn error(&self, detail: impl Into<String>) -> ModelError {
        ModelError::checkpoint(&self.path, detail)
    }

    /// An error about this file's metadata key `key`.
    pub fn key_error(&self, key: &str, detail: impl std::fmt::Display) -> ModelError {
        ModelError::Config {
            path: Some(self.path.clone()),
            detail: format!("metadata key '{key}': {detail}"),
        }
    }

    /// An error about tensor `name` of this file.
    pub fn tensor_error(&self, name: &str, detail: impl Into<String>) -> ModelError {
        ModelError::tensor(&self.path, name, detail)
    }
}

/// Drops the pages of `map[start..start + len]` from this process's memory.
#[cfg(unix)]
fn release_range(map: &Mmap, start: usize, len: usize) {
    // SAFETY: the map is a read-only shared mapping of a file: MADV_DONTNEED only unmaps the
    // pages, and a later read of them (a tensor sharing a page at either end, or `data` again)
    // faults them back in from the page cache with the same bytes. A failure leaves the pages
    // mapped, which is only memory.
    let _ = unsafe { map.unchecked_advise_range(memmap2::UncheckedAdvice::DontNeed, start, len) };
}

#[cfg(not(unix))]
fn release_range(_: &Mmap, _: usize, _: usize) {}

/// One tensor's bytes in a GGUF file's mapping ([`GgufFile::shared`]).
struct MappedTensor {
    map: Arc<Mmap>,
    start: usize,
    len: usize,
}

impl SharedBytes for MappedTensor {
    fn bytes(&self) -> &[u8] {
        &self.map[self.start..self.start + self.len]
    }

    #[cfg(unix)]
    fn release(&self) {
        // SAFETY: as in `GgufFile::release`: a read-only shared file mapping, whose pages a
        // later read faults back in with the same bytes.
        let _ = unsafe {
            self.map.unchecked_advise_range(
                memmap2::UncheckedAdvice::DontNeed,
                self.start,
                self.len,
            )
        };
    }
}

/// A tensor's bytes in a private (copy-on-write) mapping of the file, whose reader makes
/// the rows it will read resident first ([`SharedBytes::make_resident`]) by writing one byte
/// of each of their pages back unchanged: a write fault copies that one page, where a read
/// fault would also map the ~15 cached pages around it (the kernel's fault-around, which
/// `MADV_RANDOM` does not turn off). The bytes read are the file's either way; `release`
/// drops the copies and the mapped pages alike.
struct CopiedRows {
    map: memmap2::MmapMut,
    /// Where the tensor starts in `map` (the mapping starts at a page boundary).
    skip: usize,
    len: usize,
    /// `map`'s first byte, written through only by `make_resident`.
    base: *mut u8,
}

// SAFETY: `base` points into `map`, owned by this value; the only writes through it
// (`make_resident`) store the byte they read, between the reader's runs.
unsafe impl Send for CopiedRows {}
unsafe impl Sync for CopiedRows {}

impl CopiedRows {
    #[cfg(unix)]
    fn map(path: &Path, offset: u64, len: usize) -> Option<CopiedRows> {
        let page = 4096u64;
        let start = offset / page * page;
        let skip = (offset - start) as usize;
        let file = std::fs::File::open(path).ok()?;
        // SAFETY: a private mapping: writes stay in this process; the file is a model file
        // that is not written while kiln runs (as for the main mapping).
        let mut map = unsafe {
            memmap2::MmapOptions::new()
                .offset(start)
                .len(skip + len)
                .map_copy(&file)
                .ok()?
        };
        let base = map.as_mut_ptr();
        Some(CopiedRows {
            map,
            skip,
            len,
            base,
        })
    }

    #[cfg(not(unix))]
    fn map(_: &Path, _: u64, _: usize) -> Option<CopiedRows> {
        None
    }
}

impl SharedBytes for CopiedRows {
    fn bytes(&self) -> &[u8] {
        // SAFETY: `base` is `map`'s start; `skip + len` is its length.
        unsafe { std::slice::from_raw_parts(self.base.add(self.skip), self.len) }
    }

    fn make_resident(&self, start: usize, len: usize) {
        let page = 4096;
        let end = (start.saturating_add(len)).min(self.len);
        let first = self.skip + start.min(end);
        let last = self.skip + end;
        let mut at = first;
        while at < last {
            // SAFETY: `at` is inside `map` (below `skip + len`); a volatile read then a write
            // of the same byte: the page becomes a private copy of the file's, no other
            // thread reads or writes the mapping now (between runs).
            unsafe {
                let p = self.base.add(at);
                std::ptr::write_volatile(p, std::ptr::read_volatile(p));
            }
            at = (at / page + 1) * page;
        }
    }

    #[cfg(unix)]
    fn release(&self) {
        // SAFETY: MADV_DONTNEED on a private file mapping drops the copied pages (their bytes
        // were the file's) and unmaps the others; a later read maps the file's bytes again.
        let _ = unsafe {
            self.map
                .unchecked_advise_range(memmap2::UncheckedAdvice::DontNeed, 0, self.map.len())
        };
    }
}

/// What went wrong, and where: a metadata key or a tensor, when one is at fault.
#[derive(Debug)]
struct ParseError {
    key: Option<String>,
    tensor: Option<String>,
    detail: String,
}

impl ParseError {
    fn new(detail: impl Into<String>) -> ParseError {
        ParseError {
            key: None,
            tensor: None,
            detail: detail.into(),
        }
    }

    fn into_model_error(self, path: &Path) -> ModelError {
        match (self.key, self.tensor) {
            (Some(k), _) => {
                ModelError::checkpoint(path, format!("metadata key '{k}': {}", self.detail))
            }
            (None, Some(t)) => {
                ModelError::tensor(path, &t, format!("tensor '{t}': {}", self.detail))
            }
            (None, None) => ModelError::checkpoint(path, self.detail),
        }
    }
}

type Parsed<T> = Result<T, ParseError>;

/// The header of a GGUF file.
struct Header {
    version: u32,
    metadata: BTreeMap<String, MetaValue>,
    tensors: Vec<TensorInfo>,
    data_start: usize,
    alignment: u64,
}

/// A reading position in the file, every read checked against its end.
struct Cursor<'a> {
    buf: &'a [u8],
    pos: usize,
}

impl<'a> Cursor<'a> {
    fn remaining(&self) -> u64 {
        (self.buf.len() - self.pos) as u64
    }

    fn take(&mut self, n: u64, what: &str) -> Parsed<&'a [u8]> {
        if n > self.remaining() {
            return Err(self.error_taking(n, what));
        }
        let s = &self.buf[self.pos..self.pos + n as usize];
        self.pos += n as usize;
        Ok(s)
    }

    /// The error of taking `n` bytes for `what` where fewer remain.
    fn error_taking(&self, n: u64, what: &str) -> ParseError {
        ParseError::new(format!(
            "{what} needs {n} bytes at offset {}, but the file ends {} bytes later \
             (truncated?)",
            self.pos,
            self.remaining()
        ))
    }

    fn array<const N: usize>(&mut self, what: &str) -> Parsed<[u8; N]> {
        Ok(self.take(N as u64, what)?.try_into().expect("N bytes"))
    }

    fn u32(&mut self, what: &str) -> Parsed<u32> {
        self.array(what).map(u32::from_le_bytes)
    }

    fn u64(&mut self, what: &str) -> Parsed<u64> {
        self.array(what).map(u64::from_le_bytes)
    }

    /// A length-prefixed UTF-8 string; `what` names it in an error, made only then (a
    /// vocabulary's 150,000 strings are read without two messages allocated and freed each).
    fn string(&mut self, what: impl Fn() -> String) -> Parsed<String> {
        if self.remaining() < 8 {
            return Err(self.error_taking(8, &format!("the length of {}", what())));
        }
        let len = self.u64("a string's length")?;
        if len > self.remaining() {
            return Err(self.error_taking(len, &what()));
        }
        let bytes = self.take(len, "a string")?;
        String::from_utf8(bytes.to_vec())
            .map_err(|e| ParseError::new(format!("{} is not UTF-8 ({e})", what())))
    }

    /// Checks that `count` items of at least `min_bytes` each can fit in the rest of the file.
    fn check_count(&self, count: u64, min_bytes: u64, what: &str) -> Parsed<()> {
        let room = self.remaining() / min_bytes.max(1);
        if count > room {
            return Err(ParseError::new(format!(
                "claims {count} {what}, but the {} bytes left in the file hold at most {room} \
                 (truncated or corrupt?)",
                self.remaining()
            )));
        }
        Ok(())
    }
}

fn parse(buf: &[u8]) -> Parsed<Header> {
    let mut c = Cursor { buf, pos: 0 };
    let magic = c.take(4, "the magic").map_err(|_| {
        ParseError::new(format!(
            "not a GGUF file: {} bytes, shorter than the header",
            buf.len()
        ))
    })?;
    if magic != MAGIC {
        return Err(ParseError::new(format!(
            "not a GGUF file: it starts with {magic:02x?}, not \"GGUF\""
        )));
    }
    let version = c.u32("the version")?;
    match version {
        2 | 3 => {}
        1 => {
            return Err(ParseError::new(
                "GGUF version 1 (32-bit counts) is not supported; kiln reads versions 2 and 3",
            ))
        }
        v if matches!(v.swap_bytes(), 2 | 3) => {
            return Err(ParseError::new(format!(
                "a big-endian GGUF file (version {}); kiln reads little-endian files",
                v.swap_bytes()
            )))
        }
        v => {
            return Err(ParseError::new(format!(
                "unknown GGUF version {v}; kiln reads versions 2 and 3"
            )))
        }
    }
    let n_tensors = c.u64("the tensor count")?;
    let n_kv = c.u64("the metadata count")?;
    // A key-value pair takes at least 13 bytes (empty key, type, a one-byte value), a tensor
    // info at least 32 (empty name, one dimension).
    c.check_count(n_kv, 13, "metadata entries")?;

    let mut metadata = BTreeMap::new();
    for i in 0..n_kv {
        let key = c.string(|| format!("metadata key #{i}")).map_err(|mut e| {
            e.detail = format!("metadata entry #{i}: {}", e.detail);
            e
        })?;
        let with_key = |mut e: ParseError| {
            e.key = Some(key.clone());
            e
        };
        let ty = c.u32("the value type").map_err(with_key)?;
        let value = read_value(&mut c, ty, 0).map_err(with_key)?;
        if metadata.insert(key.clone(), value).is_some() {
            return Err(with_key(ParseError::new("appears twice")));
        }
    }

    let alignment = match metadata.get("general.alignment") {
        None => DEFAULT_ALIGNMENT,
        Some(MetaValue::U32(a)) if a.is_power_of_two() => *a as u64,
        Some(v) => {
            return Err(ParseError {
                key: Some("general.alignment".into()),
                tensor: None,
                detail: format!("must be a uint32 power of two, got {v:?}"),
            })
        }
    };

    c.check_count(n_tensors, 32, "tensors")?;
    let mut tensors = Vec::new();
    let mut seen = HashMap::new();
    for i in 0..n_tensors {
        let name = c.string(|| format!("the name of tensor #{i}"))?;
        let t = read_tensor_info(&mut c, name.clone()).map_err(|mut e| {
            e.tensor = Some(name.clone());
            e
        })?;
        if seen.insert(name.clone(), i).is_some() {
            return Err(ParseError {
                key: None,
                tensor: Some(name),
                detail: "appears twice in the tensor table".into(),
            });
        }
        tensors.push(t);
    }

    // The data section starts at the next multiple of the alignment.
    let data_start = (c.pos as u64).div_ceil(alignment) * alignment;
    let file_len = buf.len() as u64;
    let data_len = file_len.saturating_sub(data_start);
    for t in &tensors {
        let err = |detail: String| ParseError {
            key: None,
            tensor: Some(t.name.clone()),
            detail,
        };
        if t.offset % alignment != 0 {
            return Err(err(format!(
                "offset {} is not a multiple of the alignment {alignment}",
                t.offset
            )));
        }
        match t.offset.checked_add(t.bytes) {
            Some(end) if end <= data_len => {}
            _ => {
                return Err(err(format!(
                    "its {} bytes at offset {} of the data section (file offset {}) run past \
                     the end of the file ({file_len} bytes; truncated?)",
                    t.bytes,
                    t.offset,
                    data_start.saturating_add(t.offset)
                )))
            }
        }
    }
    let mut by_offset: Vec<&TensorInfo> = tensors.iter().filter(|t| t.bytes > 0).collect();
    by_offset.sort_by_key(|t| t.offset);
    for w in by_offset.windows(2) {
        if w[1].offset < w[0].offset + w[0].bytes {
            return Err(ParseError {
                key: None,
                tensor: Some(w[1].name.clone()),
                detail: format!(
                    "its bytes at offset {} overlap tensor '{}' (offset {}, {} bytes)",
                    w[1].offset, w[0].name, w[0].offset, w[0].bytes
                ),
            });
        }
    }
    Ok(Header {
        version,
        metadata,
        tensors,
        data_start: data_start.min(file_len) as usize,
        alignment,
    })
}

fn read_tensor_info(c: &mut Cursor<'_>, name: String) -> Parsed<TensorInfo> {
    let n_dims = c.u32("the number of dimensions")?;
    if n_dims == 0 || n_dims as usize > MAX_DIMS {
        return Err(ParseError::new(format!(
            "has {n_dims} dimensions; GGUF tensors have 1 to {MAX_DIMS}"
        )));
    }
    let mut ne = Vec::with_capacity(n_dims as usize);
    for d in 0..n_dims {
        ne.push(c.u64(&format!("dimension {d}"))?);
    }
    let ggml_type = c.u32("the type")?;
    let offset = c.u64("the offset")?;
    let (type_name, block, block_bytes) = ggml_type_info(ggml_type).ok_or_else(|| {
        ParseError::new(format!("has type id {ggml_type}, which is not a GGML type"))
    })?;
    // ggml keeps element counts in int64.
    let elems = ne
        .iter()
        .try_fold(1u64, |n, &d| {
            n.checked_mul(d).filter(|&n| n <= i64::MAX as u64)
        })
        .ok_or_else(|| ParseError::new(format!("dimensions {ne:?} overflow")))?;
    if ne[0] % block != 0 {
        return Err(ParseError::new(format!(
            "rows of {} values are not a whole number of {type_name} blocks ({block} values)",
            ne[0]
        )));
    }
    let bytes = (elems / block)
        .checked_mul(block_bytes)
        .ok_or_else(|| ParseError::new(format!("dimensions {ne:?} overflow")))?;
    Ok(TensorInfo {
        name,
        ne,
        ggml_type,
        offset,
        bytes,
    })
}

fn read_value(c: &mut Cursor<'_>, ty: u32, depth: usize) -> Parsed<MetaValue> {
    Ok(match ty {
        0 => MetaValue::U8(c.array::<1>("a uint8")?[0]),
        1 => MetaValue::I8(c.array::<1>("an int8")?[0] as i8),
        2 => MetaValue::U16(u16::from_le_bytes(c.array("a uint16")?)),
        3 => MetaValue::I16(i16::from_le_bytes(c.array("an int16")?)),
        4 => MetaValue::U32(c.u32("a uint32")?),
        5 => MetaValue::I32(i32::from_le_bytes(c.array("an int32")?)),
        6 => MetaValue::F32(f32::from_le_bytes(c.array("a float32")?)),
        7 => MetaValue::Bool(read_bool(c)?),
        8 => MetaValue::Str(c.string(|| "the string".into())?),
        9 => MetaValue::Array(read_array(c, depth)?),
        10 => MetaValue::U64(c.u64("a uint64")?),
        11 => MetaValue::I64(i64::from_le_bytes(c.array("an int64")?)),
        12 => MetaValue::F64(f64::from_le_bytes(c.array("a float64")?)),
        other => return Err(ParseError::new(format!("unknown value type {other}"))),
    })
}

fn read_bool(c: &mut Cursor<'_>) -> Parsed<bool> {
    match c.array::<1>("a bool")?[0] {
        0 => Ok(false),
        1 => Ok(true),
        b => Err(ParseError::new(format!("a bool must be 0 or 1, got {b}"))),
    }
}

fn read_array(c: &mut Cursor<'_>, depth: usize) -> Parsed<MetaArray> {
    if depth >= MAX_ARRAY_DEPTH {
        return Err(ParseError::new(format!(
            "arrays nested more than {MAX_ARRAY_DEPTH} deep"
        )));
    }
    let elem = c.u32("the array's element type")?;
    let n = c.u64("the array's length")?;
    let min_bytes = VALUE_TYPES
        .iter()
        .find(|t| t.0 == elem)
        .map(|t| t.2)
        .ok_or_else(|| ParseError::new(format!("unknown array element type {elem}")))?;
    c.check_count(n, min_bytes, &format!("{} elements", value_type_name(elem)))?;
    let n = n as usize; // at most the file's length
    /// Reads `n` fixed-size elements.
    fn fixed<T, const N: usize>(
        c: &mut Cursor<'_>,
        n: usize,
        f: impl Fn([u8; N]) -> T,
    ) -> Parsed<Vec<T>> {
        let bytes = c.take((n * N) as u64, "the array")?;
        Ok(bytes
            .chunks_exact(N)
            .map(|b| f(b.try_into().expect("N bytes")))
            .collect())
    }
    Ok(match elem {
        0 => MetaArray::U8(fixed(c, n, |[b]| b)?),
        1 => MetaArray::I8(fixed(c, n, |[b]| b as i8)?),
        2 => MetaArray::U16(fixed(c, n, u16::from_le_bytes)?),
        3 => MetaArray::I16(fixed(c, n, i16::from_le_bytes)?),
        4 => MetaArray::U32(fixed(c, n, u32::from_le_bytes)?),
        5 => MetaArray::I32(fixed(c, n, i32::from_le_bytes)?),
        6 => MetaArray::F32(fixed(c, n, f32::from_le_bytes)?),
        7 => MetaArray::Bool((0..n).map(|_| read_bool(c)).collect::<Parsed<_>>()?),
        8 => MetaArray::Str(
            (0..n)
                .map(|i| c.string(|| format!("string #{i} of the array")))
                .collect::<Parsed<_>>()?,
        ),
        9 => MetaArray::Array(
            (0..n)
                .map(|_| read_array(c, depth + 1))
                .collect::<Parsed<_>>()?,
        ),
        10 => MetaArray::U64(fixed(c, n, u64::from_le_bytes)?),
        11 => MetaArray::I64(fixed(c, n, i64::from_le_bytes)?),
        12 => MetaArray::F64(fixed(c, n, f64::from_le_bytes)?),
        _ => unreachable!("element type checked above"),
    })
}
