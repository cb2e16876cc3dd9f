//! The on-disk, content-addressed kernel cache.
//!
//! Layout: `<dir>/v1/<backend>/<key[..2]>/<key>.kart`. An entry is
//! `MAGIC | payload length (u64 LE) | compile µs (u64 LE) | blake3(payload) | payload`.
//! Writes go to a unique temp file in the same folder and are renamed into place, so readers
//! (other processes too) see a whole entry or none. A truncated or altered entry fails its
//! length or checksum test, is reported, deleted and rebuilt by the caller.

use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

/// Bumped whenever the entry format or the meaning of keys changes.
pub const CACHE_FORMAT_VERSION: u32 = 1;
const MAGIC: &[u8; 8] = b"KILNART1";
const HEADER: usize = 8 + 8 + 8 + 32;

#[derive(Clone, Debug)]
pub struct KernelCache {
    root: PathBuf,
}

/// What a lookup found.
#[derive(Debug)]
pub enum Lookup {
    Hit {
        artifact: Vec<u8>,
        compile_us: u64,
    },
    Miss,
    /// The entry existed but was damaged; it has been removed.
    Corrupt {
        reason: String,
    },
}

#[derive(Debug, Default, Clone, serde::Serialize)]
pub struct CacheStats {
    pub dir: PathBuf,
    pub entries: u64,
    pub bytes: u64,
    pub by_backend: Vec<(String, u64)>,
}

/// The cache key of one kernel: everything that changes the artifact.
pub fn cache_key(backend: &str, identity: &str, source: &str) -> String {
    let mut h = blake3::Hasher::new();
    for part in [
        format!("kiln-cache-v{CACHE_FORMAT_VERSION}"),
        backend.into(),
        identity.into(),
    ] {
        h.update(part.as_bytes());
        h.update(&[0]);
    }
    h.update(source.as_bytes());
    h.finalize().to_hex().to_string()
}

impl KernelCache {
    /// `$KILN_CACHE_DIR`, else the platform cache dir (`~/.cache/kiln`).
    pub fn default_dir() -> PathBuf {
        if let Some(d) = std::env::var_os("KILN_CACHE_DIR").filter(|d| !d.is_empty()) {
            return PathBuf::from(d);
        }
        dirs::cache_dir()
            .unwrap_or_else(std::env::temp_dir)
            .join("kiln")
    }

    /// Opens (creating) a cache folder and checks that it is writable.
    pub fn open(dir: impl Into<PathBuf>) -> Result<KernelCache, String> {
        let dir = dir.into();
        let root = dir.join(format!("v{CACHE_FORMAT_VERSION}"));
        fs::create_dir_all(&root)
            .map_err(|e| format!("cannot create kernel cache dir {}: {e}", root.display()))?;
        let probe = root.join(format!(".probe-{}", std::process::id()));
        fs::write(&probe, b"ok")
            .map_err(|e| format!("kernel cache dir {} is not writable: {e}", root.display()))?;
        let _ = fs::remove_file(probe);
        Ok(KernelCache { root: dir })
    }

    pub fn dir(&self) -> &Path {
        &self.root
    }

    fn path(&self, backend: &str, key: &str) -> PathBuf {
        self.root
            .join(format!("v{CACHE_FORMAT_VERSION}"))
            .join(backend)
            .join(&key[..2])
            .join(format!("{key}.kart"))
    }

    pub fn get(&self, backend: &str, key: &str) -> Lookup {
        let path = self.path(backend, key);
        let bytes = match fs::read(&path) {
            Ok(b) => b,
            Err(_) => return Lookup::Miss,
        };
        match decode(&bytes) {
            Ok((artifact, compile_us)) => Lookup::Hit {
                artifact: artifact.to_vec(),
                compile_us,
            },
            Err(reason) => {
                let _ = fs::remove_file(&path);
                Lookup::Corrupt {
                    reason: format!("{}: {reason}", path.display()),
                }
            }
        }
    }

    /// Stores an artifact atomically.
    pub fn put(
        &self,
        backend: &str,
        key: &str,
        artifact: &[u8],
        compile_us: u64,
    ) -> std::io::Result<()> {
        static COUNTER: AtomicU64 = AtomicU64::new(0);
        let path = self.path(backend, key);
        let dir = path.parent().expect("entry has a folder");
        fs::create_dir_all(dir)?;
        let tmp = dir.join(format!(
            ".tmp-{}-{}-{key}",
            std::process::id(),
            COUNTER.fetch_add(1, Ordering::Relaxed)
        ));
        let result = (|| {
            let mut f = fs::File::create(&tmp)?;
            f.write_all(MAGIC)?;
            f.write_all(&(artifact.len() as u64).to_le_bytes())?;
            f.write_all(&compile_us.to_le_bytes())?;
            f.write_all(blake3::hash(artifact).as_bytes())?;
            f.write_all(artifact)?;
            f.sync_data()?;
            fs::rename(&tmp, &path)
        })();
        if result.is_err() {
            let _ = fs::remove_file(&tmp);
        }
        result
    }

    fn entries(&self) -> Vec<(String, PathBuf, u64)> {
        let mut out = Vec::new();
        let root = self.root.join(format!("v{CACHE_FORMAT_VERSION}"));
        for backend in fs::read_dir(&root).into_iter().flatten().flatten() {
            let name = backend.file_name().to_string_lossy().to_string();
            for shard in fs::read_dir(backend.path()).into_iter().flatten().flatten() {
                for e in fs::read_dir(shard.path()).into_iter().flatten().flatten() {
                    if let Ok(m) = e.metadata() {
                        if m.is_file() {
                            out.push((name.clone(), e.path(), m.len()));
                        }
                    }
                }
            }
        }
        out
    }

    pub fn stats(&self) -> CacheStats {
        let mut s = CacheStats {
            dir: self.root.clone(),
            ..Default::default()
        };
        let mut by: std::collections::BTreeMap<String, u64> = Default::default();
        for (backend, _, len) in self.entries() {
            s.entries += 1;
            s.bytes += len;
            *by.entry(backend).or_default() += 1;
        }
        s.by_backend = by.into_iter().collect();
        s
    }

    /// Removes every entry; returns how many.
    pub fn clear(&self) -> std::io::Result<u64> {
        let n = self.entries().len() as u64;
        let root = self.root.join(format!("v{CACHE_FORMAT_VERSION}"));
        if root.exists() {
            fs::remove_dir_all(&root)?;
        }
        fs::create_dir_all(&root)?;
        Ok(n)
    }
}

fn decode(bytes: &[u8]) -> Result<(&[u8], u64), String> {
    if bytes.len() < HEADER || &bytes[..8] != MAGIC {
        return Err(format!(
            "not a kiln cache entry or truncated header ({} bytes)",
            bytes.len()
        ));
    }
    let len = u64::from_le_bytes(bytes[8..16].try_into().expect("8 bytes")) as usize;
    let compile_us = u64::from_le_bytes(bytes[16..24].try_into().expect("8 bytes"));
    let payload = &bytes[HEADER..];
    if payload.len() != len {
        return Err(format!(
            "truncated: payload is {} bytes, header says {len}",
            payload.len()
        ));
    }
    if blake3::hash(payload).as_bytes() != &bytes[24..56] {
        return Err("checksum mismatch".into());
    }
    Ok((payload, compile_us))
}
