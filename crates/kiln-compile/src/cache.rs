//! The on-disk, content-addressed kernel cache.
//!
//! One entry holds the artifact of one compile unit (a kernel, or a batch of small kernels that
//! the schedule always groups the same way). Layout: `<dir>/v2/<backend>/<key[..2]>/<key>.kart`.
//! An entry is `MAGIC | header length (u32 LE) | header (JSON) | payload`; the header names the
//! entry's key, its backend and its kernels, and carries the payload's length and blake3
//! checksum and the compile time. Writes go to a unique temp file in the same folder and are
//! renamed into place, so readers (other processes too) see a whole entry or none. An entry
//! that is truncated, altered, or filed under another key fails its checks, is reported,
//! deleted and rebuilt by the caller.

use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

/// Bumped whenever the entry format or the meaning of keys changes.
pub const CACHE_FORMAT_VERSION: u32 = 2;
const MAGIC: &[u8; 8] = b"KILNART2";

/// What an entry says about itself.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct EntryHeader {
    pub key: String,
    pub backend: String,
    /// The kernels (function names) the artifact defines.
    pub kernels: Vec<String>,
    pub compile_us: u64,
    pub len: u64,
    pub blake3: String,
}

#[derive(Clone, Debug)]
pub struct KernelCache {
    root: PathBuf,
}

/// What a lookup found.
#[derive(Debug)]
pub enum Lookup {
    Hit {
        artifact: Vec<u8>,
        header: EntryHeader,
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

/// The cache key of one compile unit: everything that changes its artifact (the sources of
/// its kernels, in order, the backend and its compiler's identity).
pub fn cache_key(backend: &str, identity: &str, sources: &[&str]) -> String {
    let mut h = blake3::Hasher::new();
    for part in [
        format!("kiln-cache-v{CACHE_FORMAT_VERSION}").as_str(),
        backend,
        identity,
    ]
    .into_iter()
    .chain(sources.iter().copied())
    {
        h.update(&(part.len() as u64).to_le_bytes());
        h.update(part.as_bytes());
    }
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

    /// Where `backend`'s device driver keeps its own compiled shaders (Mesa's shader cache for
    /// wgpu): `<dir>/driver/<backend>`, so that a cold kernel cache is a cold driver cache and
    /// [`KernelCache::clear`] empties both.
    pub fn driver_dir(&self, backend: &str) -> PathBuf {
        self.root.join("driver").join(backend)
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
        match decode(&bytes, backend, key) {
            Ok((header, artifact)) => Lookup::Hit {
                artifact: artifact.to_vec(),
                header,
            },
            Err(reason) => {
                let _ = fs::remove_file(&path);
                Lookup::Corrupt {
                    reason: format!("{}: {reason}", path.display()),
                }
            }
        }
    }

    /// Removes the entry for `key` (one that failed to load); a missing entry is fine.
    pub fn remove(&self, backend: &str, key: &str) {
        let _ = fs::remove_file(self.path(backend, key));
    }

    /// Stores the artifact of the unit `key`, which defines `kernels`, atomically.
    pub fn put(
        &self,
        backend: &str,
        key: &str,
        kernels: &[&str],
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
            f.write_all(&encode(backend, key, kernels, artifact, compile_us))?;
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

    /// Removes every entry (and the drivers' caches); returns how many entries.
    pub fn clear(&self) -> std::io::Result<u64> {
        let n = self.entries().len() as u64;
        let root = self.root.join(format!("v{CACHE_FORMAT_VERSION}"));
        if root.exists() {
            fs::remove_dir_all(&root)?;
        }
        let drivers = self.root.join("driver");
        if drivers.exists() {
            fs::remove_dir_all(&drivers)?;
        }
        fs::create_dir_all(&root)?;
        Ok(n)
    }
}

/// An entry's bytes.
pub fn encode(
    backend: &str,
    key: &str,
    kernels: &[&str],
    artifact: &[u8],
    compile_us: u64,
) -> Vec<u8> {
    let header = EntryHeader {
        key: key.into(),
        backend: backend.into(),
        kernels: kernels.iter().map(|k| k.to_string()).collect(),
        compile_us,
        len: artifact.len() as u64,
        blake3: blake3::hash(artifact).to_hex().to_string(),
    };
    let header = serde_json::to_vec(&header).expect("a header serializes");
    let mut out = Vec::with_capacity(12 + header.len() + artifact.len());
    out.extend_from_slice(MAGIC);
    out.extend_from_slice(&(header.len() as u32).to_le_bytes());
    out.extend_from_slice(&header);
    out.extend_from_slice(artifact);
    out
}

/// Checks an entry's bytes against the key and backend it was looked up under; returns its
/// header and payload.
pub fn decode<'a>(
    bytes: &'a [u8],
    backend: &str,
    key: &str,
) -> Result<(EntryHeader, &'a [u8]), String> {
    if bytes.len() < 12 || &bytes[..8] != MAGIC {
        return Err(format!(
            "not a kiln cache entry of format {CACHE_FORMAT_VERSION} or truncated ({} bytes)",
            bytes.len()
        ));
    }
    let hlen = u32::from_le_bytes(bytes[8..12].try_into().expect("4 bytes")) as usize;
    let rest = &bytes[12..];
    if hlen > rest.len() {
        return Err(format!(
            "truncated header: {hlen} bytes announced, {} present",
            rest.len()
        ));
    }
    let header: EntryHeader =
        serde_json::from_slice(&rest[..hlen]).map_err(|e| format!("unreadable header: {e}"))?;
    if header.key != key || header.backend != backend {
        return Err(format!(
            "entry of {} key {} filed under {backend} key {key}",
            header.backend, header.key
        ));
    }
    let payload = &rest[hlen..];
    if payload.len() as u64 != header.len {
        return Err(format!(
            "truncated: payload is {} bytes, header says {}",
            payload.len(),
            header.len
        ));
    }
    if blake3::hash(payload).to_hex().as_str() != header.blake3 {
        return Err("checksum mismatch".into());
    }
    Ok((header, payload))
}
