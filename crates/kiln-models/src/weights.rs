//! Weights from safetensors files (one file, or shards with `model.safetensors.index.json`),
//! memory-mapped, F32/F16/BF16, converted to f32 tensors. Every error names the file and tensor.

use crate::model::{weight_dtype, WeightDtype};
use crate::ModelError;
use kiln_ir::DType;
use kiln_ir::Tensor;
use memmap2::Mmap;
use rayon::prelude::*;
use safetensors::{Dtype, SafeTensors};
use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};

/// The safetensors files of a checkpoint folder, mapped, with which file holds each tensor.
pub struct Checkpoint {
    dir: PathBuf,
    files: Vec<(PathBuf, Mmap)>,
    /// tensor name -> index into `files`
    location: HashMap<String, usize>,
}

impl Checkpoint {
    pub fn open(dir: &Path) -> Result<Checkpoint, ModelError> {
        let index = dir.join("model.safetensors.index.json");
        let names: Vec<PathBuf> = if index.exists() {
            let text = std::fs::read_to_string(&index)
                .map_err(|e| ModelError::checkpoint(&index, format!("cannot read: {e}")))?;
            let v: serde_json::Value = serde_json::from_str(&text)
                .map_err(|e| ModelError::checkpoint(&index, format!("invalid JSON: {e}")))?;
            let map = v
                .get("weight_map")
                .and_then(|m| m.as_object())
                .ok_or_else(|| ModelError::checkpoint(&index, "missing 'weight_map'"))?;
            let mut files: Vec<String> = map
                .values()
                .filter_map(|f| f.as_str().map(String::from))
                .collect();
            files.sort();
            files.dedup();
            files.into_iter().map(|f| dir.join(f)).collect()
        } else {
            let single = dir.join("model.safetensors");
            if !single.exists() {
                return Err(ModelError::checkpoint(
                    dir,
                    "no model.safetensors or model.safetensors.index.json",
                ));
            }
            vec![single]
        };
        let mut files = Vec::new();
        let mut location = HashMap::new();
        for path in names {
            let f = std::fs::File::open(&path)
                .map_err(|e| ModelError::checkpoint(&path, format!("cannot open: {e}")))?;
            // SAFETY: the file is opened read-only; kiln does not modify checkpoints while running.
            let map = unsafe { Mmap::map(&f) }
                .map_err(|e| ModelError::checkpoint(&path, format!("cannot map: {e}")))?;
            let st = SafeTensors::deserialize(&map).map_err(|e| {
                ModelError::checkpoint(
                    &path,
                    format!("not a valid safetensors file (truncated or corrupt?): {e}"),
                )
            })?;
            for name in st.names() {
                location.insert(name.to_string(), files.len());
            }
            files.push((path, map));
        }
        Ok(Checkpoint {
            dir: dir.to_path_buf(),
            files,
            location,
        })
    }

    /// Loads the named tensors, checking each shape, in parallel: matrices in `w`, vectors in f32.
    pub fn load(
        &self,
        wanted: &[(String, Vec<usize>)],
        w: WeightDtype,
    ) -> Result<BTreeMap<String, Tensor>, ModelError> {
        wanted
            .par_iter()
            .map(|(name, shape)| {
                Ok((
                    name.clone(),
                    self.tensor(name, shape, weight_dtype(shape, w))?,
                ))
            })
            .collect()
    }

    fn tensor(&self, name: &str, shape: &[usize], want: DType) -> Result<Tensor, ModelError> {
        let &fi = self.location.get(name).ok_or_else(|| {
            let files: Vec<String> = self
                .files
                .iter()
                .map(|(p, _)| p.display().to_string())
                .collect();
            ModelError::Checkpoint {
                path: self.dir.clone(),
                tensor: Some(name.into()),
                detail: format!("tensor '{name}' not found in {}", files.join(", ")),
            }
        })?;
        let (path, map) = &self.files[fi];
        let st = SafeTensors::deserialize(map)
            .map_err(|e| ModelError::checkpoint(path, e.to_string()))?;
        let view = st
            .tensor(name)
            .map_err(|e| ModelError::tensor(path, name, format!("tensor '{name}': {e}")))?;
        if view.shape() != shape {
            return Err(ModelError::tensor(
                path,
                name,
                format!(
                    "tensor '{name}' has shape {:?}, the config implies {:?}",
                    view.shape(),
                    shape
                ),
            ));
        }
        let data = view.data();
        if want == DType::BF16 && view.dtype() == Dtype::BF16 {
            return Ok(Tensor::from_bytes(DType::BF16, shape, data)); // kept as stored
        }
        let n: usize = shape.iter().product();
        let mut out = Tensor::zeros(kiln_ir::DType::F32, shape);
        let dst = out.as_f32_mut();
        match view.dtype() {
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
            other => {
                return Err(ModelError::tensor(
                    path,
                    name,
                    format!("tensor '{name}' has dtype {other:?}; kiln reads F32, F16 and BF16"),
                ))
            }
        }
        debug_assert_eq!(dst.len(), n);
        Ok(if want == DType::F32 {
            out
        } else {
            out.to_dtype(want)
        })
    }
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
                if want == DType::F32 {
                    t
                } else {
                    to_bf16_parallel(&t)
                },
            )
        })
        .collect()
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
