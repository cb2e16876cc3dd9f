//! Weights from safetensors files (one file, or shards with `model.safetensors.index.json`),
//! memory-mapped, F32/F16/BF16, converted to f32 tensors. Every error names the file and tensor.
//!
//! Opening a checkpoint reads and validates every header (names, dtypes, shapes, byte ranges)
//! without touching tensor data, so [`Checkpoint::check`] can reject a checkpoint that does not
//! fit the config before any graph is built or kernel compiled. A shard index is followed
//! exactly: each tensor is read from the shard its `weight_map` names, and the files it names
//! must lie inside the model folder.

use crate::model::{weight_dtype, WeightDtype};
use crate::{files, ModelError, QwenConfig};
use kiln_ir::DType;
use kiln_ir::Tensor;
use memmap2::Mmap;
use rayon::prelude::*;
use safetensors::tensor::{Metadata, TensorInfo};
use safetensors::{Dtype, SafeTensors};
use std::collections::{BTreeMap, HashMap};
use std::path::{Component, Path, PathBuf};

pub const SINGLE_FILE: &str = "model.safetensors";
pub const INDEX_FILE: &str = "model.safetensors.index.json";

/// The named weights of a checkpoint in any format, in parallel: each read by
/// `tensor(name, shape, dtype)` in the dtype it is held in (matrices in `w`, vectors in f32:
/// [`weight_dtype`]).
pub(crate) fn load_weights(
    wanted: &[(String, Vec<usize>)],
    w: WeightDtype,
    tensor: impl Fn(&str, &[usize], DType) -> Result<Tensor, ModelError> + Sync,
) -> Result<BTreeMap<String, Tensor>, ModelError> {
    wanted
        .par_iter()
        .map(|(name, shape)| Ok((name.clone(), tensor(name, shape, weight_dtype(shape, w))?)))
        .collect()
}

/// One safetensors file, mapped, with its validated header.
struct Shard {
    path: PathBuf,
    map: Mmap,
    /// Where tensor data starts (after the 8-byte length and the header).
    data_start: usize,
    meta: Metadata,
}

impl Shard {
    fn open(folder: &kiln_fs::Folder, path: &Path) -> Result<Shard, ModelError> {
        let f = folder
            .open(path, files::WEIGHTS)
            .map_err(|e| ModelError::checkpoint(path, files::problem(&e)))?
            .file;
        // SAFETY: the file is opened read-only; kiln does not modify checkpoints while running.
        let map = unsafe { Mmap::map(&f) }
            .map_err(|e| ModelError::checkpoint(path, format!("cannot map: {e}")))?;
        if let Some(name) = named_twice(&map) {
            return Err(ModelError::tensor(
                path,
                &name,
                format!("the header names tensor '{name}' twice"),
            ));
        }
        // Reads and validates the header only: every tensor's byte range lies in the file, the
        // ranges tile the data exactly and match dtype x shape.
        let (header_len, meta) = SafeTensors::read_metadata(&map).map_err(|e| {
            ModelError::checkpoint(
                path,
                format!("not a valid safetensors file (truncated or corrupt?): {e}"),
            )
        })?;
        Ok(Shard {
            path: path.to_path_buf(),
            map,
            data_start: 8 + header_len,
            meta,
        })
    }

    fn info(&self, name: &str) -> Option<&TensorInfo> {
        self.meta.info(name)
    }

    fn data(&self, info: &TensorInfo) -> &[u8] {
        let (s, e) = info.data_offsets;
        // In range: read_metadata checked that the ranges tile the data to the file's end.
        &self.map[self.data_start + s..self.data_start + e]
    }
}

/// The safetensors files of a checkpoint folder, mapped, with which file holds each tensor.
pub struct Checkpoint {
    dir: PathBuf,
    shards: Vec<Shard>,
    /// tensor name -> index into `shards`: the index's `weight_map`, or the single file's
    /// header.
    location: HashMap<String, usize>,
    /// The index file, when the checkpoint is sharded.
    index: Option<PathBuf>,
}

impl Checkpoint {
    /// Opens `dir/model.safetensors`, else the shards `dir/model.safetensors.index.json`
    /// names. Like transformers (`modeling_utils.py`, `_get_resolved_checkpoint_files`: for a
    /// local folder `SAFE_WEIGHTS_NAME` is tried before `SAFE_WEIGHTS_INDEX_NAME`), a single
    /// file wins when both exist. Anything named `model.safetensors` (a folder, a FIFO, a
    /// dangling link) counts as the single file, and is refused saying what it is. Every file
    /// is opened through [`kiln_fs`]: a regular file inside the model folder.
    pub fn open(dir: &Path) -> Result<Checkpoint, ModelError> {
        let folder = files::model_folder(dir)
            .map_err(|e| ModelError::checkpoint(dir, files::problem(&e)))?;
        let single = dir.join(SINGLE_FILE);
        let index = dir.join(INDEX_FILE);
        let exists = |p: &Path| p.symlink_metadata().is_ok();
        if exists(&single) {
            if exists(&index) {
                tracing::debug!(
                    "{}: both {SINGLE_FILE} and {INDEX_FILE}; reading {SINGLE_FILE}, as \
                     transformers does",
                    dir.display()
                );
            }
            let shard = Shard::open(&folder, &single)?;
            let location = shard
                .meta
                .tensors()
                .into_keys()
                .map(|name| (name, 0))
                .collect();
            return Ok(Checkpoint {
                dir: dir.to_path_buf(),
                shards: vec![shard],
                location,
                index: None,
            });
        }
        if !exists(&index) {
            return Err(ModelError::checkpoint(
                dir,
                format!("no {SINGLE_FILE} or {INDEX_FILE}"),
            ));
        }
        let text = folder
            .read_to_string(&index, files::INDEX)
            .map_err(|e| ModelError::checkpoint(&index, files::problem(&e)))?;
        let weight_map =
            parse_index(&text).map_err(|e| ModelError::checkpoint(&index, e.to_string()))?;
        // Shards in order of first mention, each opened once.
        let mut shard_of_file: HashMap<PathBuf, usize> = HashMap::new();
        let mut shards = Vec::new();
        let mut location = HashMap::with_capacity(weight_map.len());
        for (tensor, file) in &weight_map {
            // `model-1.safetensors` and `./model-1.safetensors` are one file, opened once.
            let name = plain_name(file, &index)?;
            let si = match shard_of_file.get(&name) {
                Some(&si) => si,
                None => {
                    shards.push(Shard::open(&folder, &dir.join(&name))?);
                    shard_of_file.insert(name, shards.len() - 1);
                    shards.len() - 1
                }
            };
            location.insert(tensor.clone(), si);
        }
        let ckpt = Checkpoint {
            dir: dir.to_path_buf(),
            shards,
            location,
            index: Some(index),
        };
        // The index must tell the truth about every tensor it names.
        for (tensor, &si) in &ckpt.location {
            if ckpt.shards[si].info(tensor).is_none() {
                return Err(ckpt.misfiled(tensor, si));
            }
        }
        Ok(ckpt)
    }

    /// The error for a tensor the index files under shard `si`, which lacks it.
    fn misfiled(&self, tensor: &str, si: usize) -> ModelError {
        let named = self.shards[si].path.display();
        let index = self.index.as_deref().unwrap_or(&self.dir);
        let detail = match self.shards.iter().find(|s| s.info(tensor).is_some()) {
            Some(other) => format!(
                "tensor '{tensor}' is in {}, but the index says {named}",
                other.path.display()
            ),
            None => format!("the index says tensor '{tensor}' is in {named}, which lacks it"),
        };
        ModelError::tensor(index, tensor, detail)
    }

    /// Every tensor the checkpoint holds, with its shape (sorted by name).
    pub fn tensors(&self) -> Vec<(String, Vec<usize>)> {
        let mut out: Vec<(String, Vec<usize>)> = self
            .location
            .iter()
            .filter_map(|(name, &si)| {
                Some((name.clone(), self.shards[si].info(name)?.shape.clone()))
            })
            .collect();
        out.sort();
        out
    }

    /// Where tensor `name` is, or an error naming the files searched (and a shard that has it
    /// although the index does not list it).
    fn find(&self, name: &str) -> Result<(&Shard, &TensorInfo), ModelError> {
        if let Some(&si) = self.location.get(name) {
            let shard = &self.shards[si];
            return match shard.info(name) {
                Some(info) => Ok((shard, info)),
                None => Err(self.misfiled(name, si)),
            };
        }
        if let (Some(index), Some(s)) = (
            &self.index,
            self.shards.iter().find(|s| s.info(name).is_some()),
        ) {
            return Err(ModelError::tensor(
                index,
                name,
                format!(
                    "tensor '{name}' is in {} but not in the index's weight_map",
                    s.path.display()
                ),
            ));
        }
        let files: Vec<String> = self
            .shards
            .iter()
            .map(|s| s.path.display().to_string())
            .collect();
        let searched = if files.is_empty() {
            "any weight file (the index names none)".to_string()
        } else {
            files.join(", ")
        };
        Err(ModelError::Checkpoint {
            path: self.dir.clone(),
            tensor: Some(name.into()),
            detail: format!("tensor '{name}' not found in {searched}"),
        })
    }

    /// Checks, from the headers alone, that every tensor config `c` needs is present with
    /// the shape it implies and a dtype kiln reads; stops at the first that is not. Cheap:
    /// touches no tensor data, and lists the needed tensors one at a time.
    pub fn check(&self, c: &QwenConfig) -> Result<(), ModelError> {
        for (name, shape) in crate::model::weights(c) {
            let (shard, info) = self.find(&name).map_err(|e| match e {
                ModelError::Checkpoint {
                    path,
                    tensor,
                    detail,
                } => ModelError::Checkpoint {
                    path,
                    tensor,
                    detail: format!(
                        "{detail} (the config needs {} tensors; the checkpoint holds {})",
                        crate::model::weight_count(c),
                        self.location.len()
                    ),
                },
                e => e,
            })?;
            check_info(shard, &name, info, &shape)?;
        }
        Ok(())
    }

    /// Loads the named tensors, checking each shape, in parallel: matrices in `w`, vectors in f32.
    pub fn load(
        &self,
        wanted: &[(String, Vec<usize>)],
        w: WeightDtype,
    ) -> Result<BTreeMap<String, Tensor>, ModelError> {
        load_weights(wanted, w, |name, shape, want| {
            self.tensor(name, shape, want)
        })
    }

    fn tensor(&self, name: &str, shape: &[usize], want: DType) -> Result<Tensor, ModelError> {
        let (shard, info) = self.find(name)?;
        check_info(shard, name, info, shape)?;
        let data = shard.data(info);
        if want == DType::BF16 && info.dtype == Dtype::BF16 {
            return Ok(Tensor::from_bytes(DType::BF16, shape, data)); // kept as stored
        }
        let mut out = Tensor::zeros(kiln_ir::DType::F32, shape);
        let dst = out.as_f32_mut();
        match info.dtype {
            Dtype::F32 => dst
                .iter_mut()
                .zip(data.chunks_exact(4))
                .for_each(|(d, c)| *d = f32::from_le_bytes([c[0], c[1], c[2], c[3]])),
            Dtype::F16 => dst
                .iter_mut()
                .zip(data.chunks_exact(2))
                .for_each(|(d, c)| *d = half::f16::from_le_bytes([c[0], c[1]]).to_f32()),
            Dtype::BF16 => dst
                .iter_mut()
                .zip(data.chunks_exact(2))
                .for_each(|(d, c)| *d = half::bf16::from_le_bytes([c[0], c[1]]).to_f32()),
            _ => unreachable!("check_info admits F32, F16 and BF16 only"),
        }
        Ok(match want {
            DType::F32 => out,
            q if q.is_quantized() => quantize_parallel(&out, q),
            _ => out.to_dtype(want),
        })
    }
}

/// A tensor's header against what the config implies.
fn check_info(
    shard: &Shard,
    name: &str,
    info: &TensorInfo,
    shape: &[usize],
) -> Result<(), ModelError> {
    if info.shape != shape {
        return Err(ModelError::tensor(
            &shard.path,
            name,
            format!(
                "tensor '{name}' has shape {:?}, the config implies {:?}",
                info.shape, shape
            ),
        ));
    }
    if !matches!(info.dtype, Dtype::F32 | Dtype::F16 | Dtype::BF16) {
        return Err(ModelError::tensor(
            &shard.path,
            name,
            format!(
                "tensor '{name}' has dtype {:?}; kiln reads F32, F16 and BF16",
                info.dtype
            ),
        ));
    }
    Ok(())
}

/// What is wrong with a `model.safetensors.index.json` ([`parse_index`]).
#[derive(Debug, thiserror::Error)]
pub enum IndexError {
    #[error("invalid JSON: {0}")]
    Json(#[source] serde_json::Error),
    #[error("missing 'weight_map' (an object of tensor name -> file)")]
    NoWeightMap,
    #[error("weight_map['{tensor}'] must be a file name, got {found}")]
    NotAFileName { tensor: String, found: String },
}

/// The `weight_map` of an index: tensor name -> file name (sorted by tensor).
pub fn parse_index(text: &str) -> Result<BTreeMap<String, String>, IndexError> {
    let v: serde_json::Value = serde_json::from_str(text).map_err(IndexError::Json)?;
    let map = v
        .get("weight_map")
        .and_then(|m| m.as_object())
        .ok_or(IndexError::NoWeightMap)?;
    map.iter()
        .map(|(tensor, file)| match file.as_str() {
            Some(f) => Ok((tensor.clone(), f.to_string())),
            None => Err(IndexError::NotAFileName {
                tensor: tensor.clone(),
                found: file.to_string(),
            }),
        })
        .collect()
}

/// A tensor a safetensors file's header names twice, if any. A JSON reader keeps one of the
/// two entries, so the file's byte ranges no longer tile and the error would name another
/// tensor. (A header that is not a JSON object is left to the safetensors reader.)
fn named_twice(file: &[u8]) -> Option<String> {
    use serde::de::{Deserializer, IgnoredAny, MapAccess, Visitor};
    struct FirstRepeat;
    impl<'de> Visitor<'de> for FirstRepeat {
        type Value = Option<String>;
        fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
            f.write_str("a JSON object")
        }
        fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
            let mut seen = std::collections::HashSet::new();
            while let Some(key) = map.next_key::<String>()? {
                map.next_value::<IgnoredAny>()?;
                if !seen.insert(key.clone()) {
                    return Ok(Some(key));
                }
            }
            Ok(None)
        }
    }
    let len = u64::from_le_bytes(file.get(..8)?.try_into().ok()?);
    let header = file.get(8..8usize.checked_add(usize::try_from(len).ok()?)?)?;
    serde_json::Deserializer::from_slice(header)
        .deserialize_map(FirstRepeat)
        .ok()
        .flatten()
}

/// A weight file named `name` by the index `by`, as a relative path inside the model folder
/// (leading `./` dropped); anything that could leave the folder by its name alone (`..`, an
/// absolute path) is refused. Where its links lead is checked when it is opened.
fn plain_name(name: &str, by: &Path) -> Result<PathBuf, ModelError> {
    let mut plain = PathBuf::new();
    for c in Path::new(name).components() {
        match c {
            Component::Normal(part) => plain.push(part),
            Component::CurDir => {}
            Component::ParentDir | Component::RootDir | Component::Prefix(_) => {
                plain = PathBuf::new();
                break;
            }
        }
    }
    if plain.as_os_str().is_empty() {
        return Err(ModelError::checkpoint(
            by,
            format!("names the weight file '{name}', which is not a file inside the model folder"),
        ));
    }
    Ok(plain)
}

/// Seeded random weights for a preset: linear and embedding weights uniform with std 0.02,
/// norm weights around 1, biases small. Each tensor has its own seed (from its name), so
/// generation is parallel and reproducible.
pub fn random_weights(
    wanted: &[(String, Vec<usize>)],
    seed: u64,
    w: WeightDtype,
) -> BTreeMap<String, Tensor> {
    wanted
        .par_iter()
        .map(|(name, shape)| {
            let mut t = Tensor::zeros(kiln_ir::DType::F32, shape);
            let h = blake3::hash(format!("{seed}:{name}").as_bytes());
            let base = u64::from_le_bytes(h.as_bytes()[..8].try_into().expect("8 bytes"));
            let (center, half_width) = if name.ends_with("norm.weight") {
                (1.0, 0.1)
            } else if name.ends_with(".bias") {
                (0.0, 0.05)
            } else {
                (0.0, 0.02 * 3f32.sqrt())
            };
            t.as_f32_mut()
                .par_chunks_mut(1 << 16)
                .enumerate()
                .for_each(|(ci, chunk)| {
                    let mut x = splitmix(base ^ (ci as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15));
                    for v in chunk {
                        x = splitmix(x);
                        let u = (x >> 40) as f32 / (1u64 << 24) as f32; // [0, 1)
                        *v = center + (u * 2.0 - 1.0) * half_width;
                    }
                });
            let want = weight_dtype(shape, w);
            (
                name.clone(),
                match want {
                    DType::F32 => t,
                    DType::BF16 => to_bf16_parallel(&t),
                    q => quantize_parallel(&t, q),
                },
            )
        })
        .collect()
}

/// f32 -> a block-quantized dtype with ggml's reference quantizer, rows in parallel (the
/// graph checks that rows are whole blocks before a weight is made).
pub fn quantize_parallel(t: &Tensor, dtype: DType) -> Tensor {
    let q = dtype.quant().expect("a quantized dtype");
    let row = *t.shape().last().expect("a matrix");
    let mut out = Tensor::zeros(dtype, t.shape());
    let row_bytes = row / q.block_elems() * q.block_bytes();
    out.bytes_mut()
        .par_chunks_mut(row_bytes)
        .zip(t.as_f32().par_chunks(row))
        .for_each(|(b, x)| {
            q.quantize_row(x, b)
                .expect("rows of whole blocks (checked by the graph)")
        });
    out
}

/// f32 -> bf16 (round to nearest even), in parallel: presets hold billions of values.
fn to_bf16_parallel(t: &Tensor) -> Tensor {
    let mut out = Tensor::zeros(DType::BF16, t.shape());
    out.bytes_mut()
        .par_chunks_mut(1 << 17)
        .zip(t.as_f32().par_chunks(1 << 16))
        .for_each(|(dst, src)| {
            for (d, s) in dst.chunks_exact_mut(2).zip(src) {
                d.copy_from_slice(&half::bf16::from_f32(*s).to_le_bytes());
            }
        });
    out
}

fn splitmix(mut z: u64) -> u64 {
    z = z.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}
