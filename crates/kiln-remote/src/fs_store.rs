//! Entries in a shared folder (NFS, a mounted volume), in exactly the local cache's layout:
//! `<root>/v<N>/<backend>/<kk>/<key>.kart`. Writes go to a unique temporary file in the
//! entry's folder and are renamed into place, so readers on any machine see a whole entry or
//! none (rename is atomic within one filesystem). No timeouts: a hung mount hangs the call,
//! as it would hang anything else reading it.

use crate::entry_path;
use kiln_compile::RemoteError;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

pub struct FsStore {
    root: PathBuf,
}

impl FsStore {
    pub fn new(root: &Path) -> FsStore {
        FsStore { root: root.into() }
    }

    fn path(&self, backend: &str, key: &str) -> Result<PathBuf, RemoteError> {
        Ok(self.root.join(entry_path(backend, key)?))
    }

    pub fn get(&self, backend: &str, key: &str) -> Result<Option<Vec<u8>>, RemoteError> {
        let path = self.path(backend, key)?;
        // A regular file inside the folder, of at most an entry's size: never a FIFO, a device
        // or a link out of the folder.
        match kiln_fs::Folder::new(&self.root)
            .and_then(|f| f.read(&path, kiln_compile::cache::ENTRY_LIMIT))
        {
            Ok(b) => Ok(Some(b)),
            Err(e) if e.is_missing() => Ok(None),
            Err(e) => Err(RemoteError::File(e)),
        }
    }

    pub fn put(&self, backend: &str, key: &str, entry: &[u8]) -> Result<(), RemoteError> {
        static COUNTER: AtomicU64 = AtomicU64::new(0);
        let path = self.path(backend, key)?;
        let dir = path.parent().expect("an entry has a folder");
        let tmp = dir.join(format!(
            ".tmp-{}-{}-{key}",
            std::process::id(),
            COUNTER.fetch_add(1, Ordering::Relaxed)
        ));
        let result = std::fs::create_dir_all(dir).and_then(|()| {
            let mut f = std::fs::File::create(&tmp)?;
            f.write_all(entry)?;
            f.sync_data()?;
            std::fs::rename(&tmp, &path)
        });
        if result.is_err() {
            let _ = std::fs::remove_file(&tmp);
        }
        result.map_err(|source| RemoteError::Io {
            op: "write",
            path,
            source,
        })
    }

    pub fn delete(&self, backend: &str, key: &str) -> Result<(), RemoteError> {
        let path = self.path(backend, key)?;
        match std::fs::remove_file(&path) {
            Err(source) if source.kind() != std::io::ErrorKind::NotFound => Err(RemoteError::Io {
                op: "remove",
                path,
                source,
            }),
            _ => Ok(()),
        }
    }

    /// Every entry path (`v<N>/<backend>/<kk>/<key>.kart`); temporary files are skipped.
    pub fn list(&self) -> Result<Vec<String>, RemoteError> {
        let root = crate::layout_root();
        let top = self.root.join(&root);
        let read = |dir: &Path| -> Result<Vec<std::fs::DirEntry>, RemoteError> {
            match std::fs::read_dir(dir) {
                Ok(rd) => Ok(rd.flatten().collect()),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Vec::new()),
                Err(source) => Err(RemoteError::Io {
                    op: "list",
                    path: dir.to_path_buf(),
                    source,
                }),
            }
        };
        let mut out = Vec::new();
        for backend in read(&top)? {
            for shard in read(&backend.path())? {
                for entry in read(&shard.path())? {
                    let name = entry.file_name().to_string_lossy().to_string();
                    if name.ends_with(".kart") {
                        out.push(format!(
                            "{root}{}/{}/{name}",
                            backend.file_name().to_string_lossy(),
                            shard.file_name().to_string_lossy()
                        ));
                    }
                }
            }
        }
        Ok(out)
    }
}
