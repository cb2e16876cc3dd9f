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
use std::time::{Duration, SystemTime};

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

/// The largest entry kiln reads (a local or remote entry past it is damaged, whatever it
/// holds): compiled kernels are kilobytes to a few megabytes per unit.
pub const MAX_ENTRY_BYTES: u64 = 1 << 30;
/// Entries are opened through [`kiln_fs`]: regular files inside the cache folder, at most
/// [`MAX_ENTRY_BYTES`].
pub const ENTRY_LIMIT: kiln_fs::Limit =
    kiln_fs::Limit::new("a kernel cache entry", MAX_ENTRY_BYTES);

/// The size limit when `KILN_CACHE_MAX_MB` is not set, in MiB.
pub const DEFAULT_MAX_MB: u64 = 1024;
/// Eviction removes entries until the cache is at this share of its limit, so that it does not
/// run again after every compile.
pub const LOW_WATERMARK_PERCENT: u64 = 80;
/// A temp file this old belongs to a writer that was killed (a write takes milliseconds).
pub const STALE_TEMP_AGE: Duration = Duration::from_secs(600);
const TEMP_PREFIX: &str = ".tmp-";

#[derive(Clone, Debug)]
pub struct KernelCache {
    root: PathBuf,
    /// None: no limit.
    max_bytes: Option<u64>,
    read_only: bool,
}

/// Why a kernel cache could not be opened.
#[derive(Debug, thiserror::Error)]
pub enum CacheError {
    /// `KILN_CACHE_MAX_MB` is set to something that is not a size kiln can keep to (`why`:
    /// not a number, less than a byte, past 64 bits).
    #[error("KILN_CACHE_MAX_MB={value:?} {why} (megabytes; 0: no limit)")]
    MaxSize { value: String, why: &'static str },
    /// The folder neither exists nor can be created.
    #[error("cannot create kernel cache dir {}: {source}", dir.display())]
    Create {
        dir: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// Why an entry's bytes are not a good entry for the key and backend they were looked up
/// under ([`decode`]).
#[derive(Debug, thiserror::Error)]
pub enum EntryError {
    /// Another format (an older kiln), or too short to hold a header.
    #[error("not a kiln cache entry of format {CACHE_FORMAT_VERSION} or truncated ({len} bytes)")]
    NotAnEntry { len: usize },
    #[error("truncated header: {announced} bytes announced, {present} present")]
    TruncatedHeader { announced: usize, present: usize },
    #[error("unreadable header: {0}")]
    UnreadableHeader(#[source] serde_json::Error),
    /// A whole entry, but of another key or backend (copied over another entry's file).
    #[error("entry of {entry_backend} key {entry_key} filed under {backend} key {key}")]
    Misfiled {
        /// The backend and key the header names.
        entry_backend: String,
        entry_key: String,
        backend: String,
        key: String,
    },
    #[error("truncated: payload is {present} bytes, header says {announced}")]
    TruncatedPayload { present: u64, announced: u64 },
    #[error("checksum mismatch")]
    Checksum,
    /// The file could not be read, or is not a regular file in the cache folder
    /// ([`KernelCache::verify`]).
    #[error("unreadable: {0}")]
    Unreadable(#[source] kiln_fs::Problem),
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
    /// The size limit in bytes; None: no limit.
    pub limit_bytes: Option<u64>,
    pub by_backend: Vec<(String, u64)>,
    /// Temp files of writes in progress, or left by killed writers (not entries).
    pub temp_files: u64,
}

/// What [`KernelCache::prune`] removed.
#[derive(Debug, Default, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Pruned {
    pub entries: u64,
    pub bytes: u64,
    pub temp_files: u64,
}

/// The size limit from `KILN_CACHE_MAX_MB` (megabytes of 2^20 bytes, fractions allowed; 0: no
/// limit), else [`DEFAULT_MAX_MB`]. Only a written zero means no limit: a value too small to
/// be a byte (`1e-400` parses as 0) or too large for 64 bits is an error.
pub fn max_bytes_from_env() -> Result<Option<u64>, CacheError> {
    let v = match std::env::var("KILN_CACHE_MAX_MB") {
        Ok(v) if !v.trim().is_empty() => v,
        _ => return Ok(Some(DEFAULT_MAX_MB << 20)),
    };
    let bad = |why| CacheError::MaxSize {
        value: v.clone(),
        why,
    };
    let mb = v
        .trim()
        .parse::<f64>()
        .ok()
        .filter(|mb| mb.is_finite() && *mb >= 0.0)
        .ok_or_else(|| bad("is not a size"))?;
    let written_zero = v
        .trim()
        .split(['e', 'E'])
        .next()
        .is_some_and(|m| m.chars().all(|c| matches!(c, '0' | '.' | '+' | '-')));
    if mb == 0.0 && written_zero {
        return Ok(None);
    }
    let bytes = mb * (1u64 << 20) as f64;
    if bytes < 1.0 {
        return Err(bad("is less than a byte"));
    }
    if bytes >= u64::MAX as f64 {
        return Err(bad("is more than 64 bits of bytes"));
    }
    Ok(Some(bytes as u64))
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

    /// Opens a cache folder to compile with, creating it where it is missing. A folder that
    /// exists but cannot be written is opened read-only: it serves hits, stores nothing (see
    /// [`KernelCache::is_read_only`]). Fails where the folder neither exists nor can be made,
    /// or `KILN_CACHE_MAX_MB` is not a number.
    pub fn open(dir: impl Into<PathBuf>) -> Result<KernelCache, CacheError> {
        let mut cache = KernelCache::at(dir)?;
        let root = cache.versioned();
        if let Err(source) = fs::create_dir_all(&root) {
            if !root.is_dir() {
                return Err(CacheError::Create { dir: root, source });
            }
        }
        let probe = root.join(format!("{TEMP_PREFIX}probe-{}", std::process::id()));
        cache.read_only = fs::write(&probe, b"ok").is_err();
        let _ = fs::remove_file(probe);
        Ok(cache)
    }

    /// The cache in `dir` as it is, creating and changing nothing: for `stats`, `clear` and
    /// `prune`.
    pub fn at(dir: impl Into<PathBuf>) -> Result<KernelCache, CacheError> {
        Ok(KernelCache {
            root: dir.into(),
            max_bytes: max_bytes_from_env()?,
            read_only: false,
        })
    }

    /// The same cache with another size limit (None: no limit).
    pub fn with_max_bytes(mut self, max_bytes: Option<u64>) -> KernelCache {
        self.max_bytes = max_bytes;
        self
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

    /// Whether the folder could not be written when it was opened: hits are served, new
    /// entries are not stored.
    pub fn is_read_only(&self) -> bool {
        self.read_only
    }

    pub fn max_bytes(&self) -> Option<u64> {
        self.max_bytes
    }

    fn versioned(&self) -> PathBuf {
        self.root.join(format!("v{CACHE_FORMAT_VERSION}"))
    }

    /// Where the entry of `key` is (or would be) stored.
    pub fn entry_path(&self, backend: &str, key: &str) -> PathBuf {
        self.path(backend, key)
    }

    fn path(&self, backend: &str, key: &str) -> PathBuf {
        self.versioned()
            .join(backend)
            .join(&key[..2])
            .join(format!("{key}.kart"))
    }

    pub fn get(&self, backend: &str, key: &str) -> Lookup {
        let path = self.path(backend, key);
        let bytes = match self.read_entry(&path) {
            Ok(b) => b,
            Err(e) if damaged(&e) => {
                let _ = fs::remove_file(&path);
                return Lookup::Corrupt {
                    reason: e.to_string(),
                };
            }
            Err(_) => return Lookup::Miss,
        };
        match decode(&bytes, backend, key) {
            Ok((header, artifact)) => {
                if !self.read_only {
                    touch(&path);
                }
                Lookup::Hit {
                    artifact: artifact.to_vec(),
                    header,
                }
            }
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

    /// Stores the artifact of the unit `key`, which defines `kernels`, atomically. A read-only
    /// cache stores nothing and says so (`ErrorKind::ReadOnlyFilesystem`).
    pub fn put(
        &self,
        backend: &str,
        key: &str,
        kernels: &[&str],
        artifact: &[u8],
        compile_us: u64,
    ) -> std::io::Result<()> {
        self.put_encoded(
            backend,
            key,
            &encode(backend, key, kernels, artifact, compile_us),
        )
    }

    /// Stores an entry's bytes as they are (an entry from the remote tier, already checked
    /// with [`decode`]), atomically.
    pub fn put_encoded(&self, backend: &str, key: &str, entry: &[u8]) -> std::io::Result<()> {
        static COUNTER: AtomicU64 = AtomicU64::new(0);
        if self.read_only {
            return Err(std::io::Error::new(
                std::io::ErrorKind::ReadOnlyFilesystem,
                "the kernel cache is read-only",
            ));
        }
        let path = self.path(backend, key);
        let dir = path.parent().expect("entry has a folder");
        fs::create_dir_all(dir)?;
        let tmp = dir.join(format!(
            "{TEMP_PREFIX}{}-{}-{key}",
            std::process::id(),
            COUNTER.fetch_add(1, Ordering::Relaxed)
        ));
        let result = (|| {
            let mut f = fs::File::create(&tmp)?;
            f.write_all(entry)?;
            f.sync_data()?;
            fs::rename(&tmp, &path)
        })();
        if result.is_err() {
            let _ = fs::remove_file(&tmp);
        }
        result
    }

    /// An entry's bytes as stored (unchecked: [`decode`] them), for `kiln cache push`.
    pub fn read_encoded(&self, backend: &str, key: &str) -> Option<Vec<u8>> {
        self.read_entry(&self.path(backend, key)).ok()
    }

    /// The bytes of the entry file at `path`: a regular file inside the cache folder, at most
    /// [`MAX_ENTRY_BYTES`] (a FIFO, a device or a link out of the folder is never read).
    fn read_entry(&self, path: &Path) -> Result<Vec<u8>, kiln_fs::FileError> {
        kiln_fs::Folder::new(&self.root)?.read(path, ENTRY_LIMIT)
    }

    /// The `(backend, key)` of every entry, sorted.
    pub fn keys(&self) -> Vec<(String, String)> {
        let mut keys: Vec<(String, String)> = self
            .files()
            .into_iter()
            .filter(|f| matches!(f.kind, FileKind::Entry))
            .filter_map(|f| {
                let key = f.path.file_name()?.to_str()?.strip_suffix(".kart")?;
                Some((f.backend, key.to_string()))
            })
            .collect();
        keys.sort();
        keys
    }

    /// Every kiln file in the cache: entries and temp files, by backend, never following a
    /// symbolic link. Anything else in the folder is not kiln's and is left alone.
    fn files(&self) -> Vec<CacheFile> {
        let mut out = Vec::new();
        for backend in real_dirs(&self.versioned()) {
            let Some(name) = backend
                .file_name()
                .and_then(|n| n.to_str())
                .map(String::from)
            else {
                continue;
            };
            for shard in real_dirs(&backend) {
                for e in fs::read_dir(&shard).into_iter().flatten().flatten() {
                    let Ok(file_type) = e.file_type() else {
                        continue;
                    };
                    let Ok(meta) = e.metadata() else { continue };
                    let file_name = e.file_name();
                    let Some(file_name) = file_name.to_str() else {
                        continue;
                    };
                    let kind = if is_entry_name(file_name) {
                        FileKind::Entry
                    } else if file_name.starts_with(TEMP_PREFIX) {
                        FileKind::Temp
                    } else {
                        continue;
                    };
                    let kind = match kind {
                        _ if file_type.is_file() => kind,
                        // Never a folder; anything else with an entry's name is a damaged
                        // entry (for `verify` only: never counted, removed or followed).
                        FileKind::Entry if !file_type.is_dir() => FileKind::NotAFile,
                        _ => continue,
                    };
                    out.push(CacheFile {
                        backend: name.clone(),
                        path: e.path(),
                        len: meta.len(),
                        modified: meta.modified().unwrap_or(SystemTime::UNIX_EPOCH),
                        kind,
                    });
                }
            }
        }
        out
    }

    /// Entries, bytes and the limit; reads the folder, changes nothing (a missing folder is an
    /// empty cache).
    pub fn stats(&self) -> CacheStats {
        let mut s = CacheStats {
            dir: self.root.clone(),
            limit_bytes: self.max_bytes,
            ..Default::default()
        };
        let mut by: std::collections::BTreeMap<String, u64> = Default::default();
        for f in self.files() {
            match f.kind {
                FileKind::Entry => {
                    s.entries += 1;
                    s.bytes += f.len;
                    *by.entry(f.backend).or_default() += 1;
                }
                FileKind::Temp => s.temp_files += 1,
                FileKind::NotAFile => {}
            }
        }
        s.by_backend = by.into_iter().collect();
        s
    }

    /// Checks every entry as a lookup would (a regular file in the folder, whole, its
    /// checksum, filed under its own key and backend) and changes nothing; returns each bad
    /// entry with what is wrong. Anything else bearing an entry's name (a FIFO, a device, a
    /// link) is a bad entry too: a lookup would refuse it.
    pub fn verify(&self) -> Vec<(PathBuf, EntryError)> {
        let mut bad = Vec::new();
        for f in self.files() {
            if f.kind == FileKind::Temp {
                continue;
            }
            let key = f
                .path
                .file_stem()
                .and_then(|k| k.to_str())
                .unwrap_or_default();
            let result = self
                .read_entry(&f.path)
                .map_err(|e| EntryError::Unreadable(e.problem))
                .and_then(|bytes| decode(&bytes, &f.backend, key).map(|_| ()));
            if let Err(reason) = result {
                bad.push((f.path, reason));
            }
        }
        bad
    }

    /// Removes every entry and temp file, and the folders they leave empty, and the drivers'
    /// shader caches; anything else in the folder stays. Returns how many entries were removed.
    pub fn clear(&self) -> std::io::Result<u64> {
        let mut n = 0;
        for f in self.files() {
            match fs::remove_file(&f.path) {
                Ok(()) => n += u64::from(f.kind == FileKind::Entry),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => {
                    return Err(std::io::Error::new(
                        e.kind(),
                        format!("cannot remove {}: {e}", f.path.display()),
                    ))
                }
            }
        }
        // Folders that are now empty; one that holds something else fails and stays.
        for backend in real_dirs(&self.versioned()) {
            for shard in real_dirs(&backend) {
                let _ = fs::remove_dir(shard);
            }
            let _ = fs::remove_dir(backend);
        }
        let _ = fs::remove_dir(self.versioned());
        // The drivers' own shader caches (see [`KernelCache::driver_dir`]) are kiln's too.
        let drivers = self.root.join("driver");
        if drivers.is_dir() {
            fs::remove_dir_all(&drivers).map_err(|e| {
                std::io::Error::new(
                    e.kind(),
                    format!("cannot remove {}: {e}", drivers.display()),
                )
            })?;
        }
        Ok(n)
    }

    /// Removes temp files left by killed writers, then, while the cache is over its limit, the
    /// least recently used entries until it is at [`LOW_WATERMARK_PERCENT`] of the limit.
    pub fn prune(&self) -> std::io::Result<Pruned> {
        let mut pruned = Pruned::default();
        let now = SystemTime::now();
        let mut entries = Vec::new();
        for f in self.files() {
            match f.kind {
                FileKind::Temp => {
                    let age = now.duration_since(f.modified).unwrap_or_default();
                    if age >= STALE_TEMP_AGE && remove(&f.path)? {
                        pruned.temp_files += 1;
                    }
                }
                FileKind::Entry => entries.push(f),
                FileKind::NotAFile => {}
            }
        }
        let Some(limit) = self.max_bytes else {
            return Ok(pruned);
        };
        let mut total: u64 = entries.iter().map(|f| f.len).sum();
        if total <= limit {
            return Ok(pruned);
        }
        let target = limit / 100 * LOW_WATERMARK_PERCENT;
        // Least recently used first; an entry dated in the future (a skewed clock) counts as
        // the oldest, so that it cannot stay forever.
        entries.sort_by_key(|f| (f.modified <= now, f.modified));
        for f in entries {
            if total <= target {
                break;
            }
            if remove(&f.path)? {
                pruned.entries += 1;
                pruned.bytes += f.len;
            }
            total -= f.len;
        }
        Ok(pruned)
    }

    /// [`KernelCache::prune`] where the cache can be written; called after a compile that
    /// stored entries.
    pub fn enforce_limit(&self) -> std::io::Result<Pruned> {
        if self.read_only {
            return Ok(Pruned::default());
        }
        self.prune()
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum FileKind {
    Entry,
    Temp,
    /// An entry's name on something that is not a regular file.
    NotAFile,
}

struct CacheFile {
    backend: String,
    path: PathBuf,
    len: u64,
    modified: SystemTime,
    kind: FileKind,
}

/// Whether a read failed because of what the entry file is (a FIFO, a device, a link out of
/// the folder, too big), rather than because it is missing or unreadable.
fn damaged(e: &kiln_fs::FileError) -> bool {
    use kiln_fs::Problem;
    matches!(
        e.problem,
        Problem::NotRegular(_) | Problem::Outside { .. } | Problem::TooLarge { .. }
    )
}

/// `<64 lowercase hex digits>.kart`: a name [`KernelCache::put`] gives an entry.
fn is_entry_name(name: &str) -> bool {
    name.strip_suffix(".kart").is_some_and(|key| {
        key.len() == 64 && key.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
    })
}

/// The folders in `dir` (not symbolic links to folders); none when `dir` is missing.
fn real_dirs(dir: &Path) -> Vec<PathBuf> {
    fs::read_dir(dir)
        .into_iter()
        .flatten()
        .flatten()
        .filter(|e| e.file_type().is_ok_and(|t| t.is_dir()))
        .map(|e| e.path())
        .collect()
}

/// Removes a file; false if another process removed it first.
fn remove(path: &Path) -> std::io::Result<bool> {
    match fs::remove_file(path) {
        Ok(()) => Ok(true),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(false),
        Err(e) => Err(std::io::Error::new(
            e.kind(),
            format!("cannot remove {}: {e}", path.display()),
        )),
    }
}

/// Marks an entry as just used, for least-recently-used eviction. Best effort: an entry that
/// cannot be touched is only evicted earlier.
fn touch(path: &Path) {
    if let Ok(f) = fs::OpenOptions::new().write(true).open(path) {
        let _ = f.set_modified(SystemTime::now());
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
) -> Result<(EntryHeader, &'a [u8]), EntryError> {
    if bytes.len() < 12 || &bytes[..8] != MAGIC {
        return Err(EntryError::NotAnEntry { len: bytes.len() });
    }
    let hlen = u32::from_le_bytes(bytes[8..12].try_into().expect("4 bytes")) as usize;
    let rest = &bytes[12..];
    if hlen > rest.len() {
        return Err(EntryError::TruncatedHeader {
            announced: hlen,
            present: rest.len(),
        });
    }
    let header: EntryHeader =
        serde_json::from_slice(&rest[..hlen]).map_err(EntryError::UnreadableHeader)?;
    if header.key != key || header.backend != backend {
        return Err(EntryError::Misfiled {
            entry_backend: header.backend,
            entry_key: header.key,
            backend: backend.into(),
            key: key.into(),
        });
    }
    let payload = &rest[hlen..];
    if payload.len() as u64 != header.len {
        return Err(EntryError::TruncatedPayload {
            present: payload.len() as u64,
            announced: header.len,
        });
    }
    if blake3::hash(payload).to_hex().as_str() != header.blake3 {
        return Err(EntryError::Checksum);
    }
    Ok((header, payload))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(i: u8) -> String {
        blake3::hash(&[i]).to_hex().to_string()
    }

    /// A cache in a fresh folder with entries 0..n of `size` bytes each, oldest first.
    fn filled(n: u8, size: usize) -> (tempfile::TempDir, KernelCache) {
        let dir = tempfile::tempdir().unwrap();
        let cache = KernelCache::open(dir.path()).unwrap().with_max_bytes(None);
        let hour_ago = SystemTime::now() - Duration::from_secs(3600);
        for i in 0..n {
            cache
                .put("cpu", &key(i), &["k"], &vec![i; size], 1)
                .unwrap();
            let f = fs::File::options()
                .write(true)
                .open(cache.path("cpu", &key(i)))
                .unwrap();
            f.set_modified(hour_ago + Duration::from_secs(i as u64))
                .unwrap();
        }
        (dir, cache)
    }

    fn present(cache: &KernelCache, i: u8) -> bool {
        cache.path("cpu", &key(i)).exists()
    }

    #[test]
    fn stats_creates_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let missing = dir.path().join("no-cache-here");
        let s = KernelCache::at(&missing).unwrap().stats();
        assert_eq!((s.entries, s.bytes, s.temp_files), (0, 0, 0));
        assert!(!missing.exists());
    }

    #[test]
    fn only_kiln_entries_are_counted_and_cleared_and_links_are_not_followed() {
        let (dir, cache) = filled(3, 100);
        let shard = cache.path("cpu", &key(0)).parent().unwrap().to_path_buf();
        // Foreign files: a note, a file with an entry's suffix but not its name, a link to a
        // big file outside, a linked folder full of entries.
        let outside = tempfile::tempdir().unwrap();
        fs::write(outside.path().join("big"), vec![0u8; 10_000]).unwrap();
        fs::write(shard.join("notes.txt"), "mine").unwrap();
        fs::write(shard.join("not-a-key.kart"), "mine").unwrap();
        std::os::unix::fs::symlink(
            outside.path().join("big"),
            shard.join(format!("{}.kart", key(9))),
        )
        .unwrap();
        let linked = outside.path().join("linked");
        fs::create_dir_all(&linked).unwrap();
        fs::copy(
            cache.path("cpu", &key(0)),
            linked.join(format!("{}.kart", key(0))),
        )
        .unwrap();
        std::os::unix::fs::symlink(&linked, cache.versioned().join("cpu").join("zz")).unwrap();
        fs::write(
            shard.join(format!("{TEMP_PREFIX}1-0-{}", key(5))),
            "partial",
        )
        .unwrap();

        let s = cache.stats();
        assert_eq!(s.entries, 3, "{s:?}");
        assert_eq!(s.temp_files, 1);
        assert_eq!(s.by_backend, vec![("cpu".to_string(), 3)]);
        assert!(s.bytes < 10_000);

        assert_eq!(cache.clear().unwrap(), 3);
        assert!(shard.join("notes.txt").exists() && shard.join("not-a-key.kart").exists());
        assert!(outside.path().join("big").exists());
        assert_eq!(
            fs::read_dir(&linked).unwrap().count(),
            1,
            "nothing removed through a link"
        );
        assert_eq!(cache.stats().entries, 0);
        drop(dir);
    }

    #[test]
    fn prune_evicts_least_recently_used_and_a_hit_is_a_use() {
        let (_dir, cache) = filled(10, 10_000);
        // Entry 0 is the oldest; a hit makes it the most recent.
        assert!(matches!(cache.get("cpu", &key(0)), Lookup::Hit { .. }));
        let one = fs::metadata(cache.path("cpu", &key(0))).unwrap().len();
        // Room for 6 entries: eviction goes down to 80% of that, 4 entries.
        let cache = cache.with_max_bytes(Some(6 * one));
        let p = cache.prune().unwrap();
        assert_eq!(p.entries, 6, "{p:?}");
        assert_eq!(p.bytes, 6 * one);
        let kept: Vec<u8> = (0..10).filter(|&i| present(&cache, i)).collect();
        assert_eq!(kept, vec![0, 7, 8, 9]);
        // Under the limit, nothing more goes.
        assert_eq!(cache.prune().unwrap(), Pruned::default());
        assert!(cache.stats().bytes <= 6 * one);
    }

    #[test]
    fn stale_temp_files_are_swept_by_age_only() {
        let (_dir, cache) = filled(1, 10);
        let shard = cache.path("cpu", &key(0)).parent().unwrap().to_path_buf();
        let old = shard.join(format!("{TEMP_PREFIX}1-0-{}", key(1)));
        let young = shard.join(format!("{TEMP_PREFIX}1-1-{}", key(2)));
        for p in [&old, &young] {
            fs::write(p, "partial").unwrap();
        }
        fs::File::options()
            .write(true)
            .open(&old)
            .unwrap()
            .set_modified(SystemTime::now() - STALE_TEMP_AGE - Duration::from_secs(1))
            .unwrap();
        let p = cache.prune().unwrap();
        assert_eq!(p.temp_files, 1);
        assert!(!old.exists() && young.exists() && present(&cache, 0));
    }

    #[test]
    fn verify_names_each_bad_entry_and_changes_nothing() {
        let (_dir, cache) = filled(3, 100);
        assert!(cache.verify().is_empty());
        let truncated = cache.path("cpu", &key(0));
        let bytes = fs::read(&truncated).unwrap();
        fs::write(&truncated, &bytes[..bytes.len() - 1]).unwrap();
        fs::copy(cache.path("cpu", &key(1)), cache.path("cpu", &key(2))).unwrap();
        let bad = cache.verify();
        assert_eq!(bad.len(), 2, "{bad:?}");
        assert!(bad.iter().any(|(p, r)| *p == truncated
            && matches!(r, EntryError::TruncatedPayload { .. })
            && r.to_string().contains("truncated")));
        assert!(bad
            .iter()
            .any(|(_, r)| matches!(r, EntryError::Misfiled { .. })
                && r.to_string().contains("filed under")));
        assert_eq!(cache.stats().entries, 3);
    }

    #[test]
    fn an_entry_is_bound_to_its_key_and_backend() {
        let bytes = encode("cpu", &key(1), &["k"], b"payload", 1);
        assert!(decode(&bytes, "cpu", &key(1)).is_ok());
        let e = decode(&bytes, "cpu", &key(2)).unwrap_err();
        assert!(matches!(e, EntryError::Misfiled { .. }), "{e:?}");
        assert!(e.to_string().contains("filed under"), "{e}");
        assert!(decode(&bytes, "cuda", &key(1)).is_err());
        assert!(matches!(
            decode(&bytes[..bytes.len() - 1], "cpu", &key(1)),
            Err(EntryError::TruncatedPayload { .. })
        ));
        let mut flipped = bytes.clone();
        *flipped.last_mut().unwrap() ^= 1;
        assert!(matches!(
            decode(&flipped, "cpu", &key(1)),
            Err(EntryError::Checksum)
        ));
        assert!(matches!(
            decode(b"KILNART1", "cpu", &key(1)),
            Err(EntryError::NotAnEntry { len: 8 })
        ));
    }
}
