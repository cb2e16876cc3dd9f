//! The one way kiln opens a file it did not write itself: a model folder's files
//! (`config.json`, `generation_config.json`, `tokenizer.json`, the shard index, the
//! safetensors files), local kernel-cache entries and a shared folder's remote-cache entries.
//!
//! Such a file may be anything its folder's owner made it: a FIFO (opening it would wait for
//! a writer forever), a device (`/dev/zero` reads without end), a folder, a symbolic link to
//! anywhere, or simply far too big. [`Folder::open`] lets through only
//!
//! - a **regular file** — checked with `stat` before opening (so a device is never opened) and
//!   again on the open handle (so a file swapped in between cannot slip through); the open
//!   itself is non-blocking, so even a FIFO swapped in at that moment cannot hang it;
//! - **inside its folder** once every symbolic link is resolved — the path the handle really
//!   refers to (`/proc/self/fd`), under one of the folder's roots (a Hugging Face snapshot
//!   folder has two: itself and its repository's `blobs/`);
//! - **no bigger than a bound** the caller names for that kind of file ([`Limit`]), checked
//!   before a byte is read; [`Folder::read`] also stops reading at the bound, should the file
//!   grow meanwhile.
//!
//! It lives in a crate of its own, below every reader (kiln-models, kiln-compile's cache,
//! kiln-remote's folder store, the GGUF reader), because it is about files, not about graphs
//! (kiln-ir does no I/O) or compiling, and so that none of those crates has to depend on
//! another just to open a file safely.

use std::fs::File;
use std::io::Read;
use std::os::unix::fs::{FileTypeExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

/// How big a kind of file may be: its name for messages ("a config file") and its bound.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Limit {
    pub what: &'static str,
    pub max_bytes: u64,
}

impl Limit {
    pub const fn new(what: &'static str, max_bytes: u64) -> Limit {
        Limit { what, max_bytes }
    }
}

/// What is wrong with a file (the path is in [`FileError`]).
#[derive(Debug, thiserror::Error)]
pub enum Problem {
    #[error("no such file")]
    Missing,
    /// A FIFO, a device, a folder or a socket where a regular file was expected.
    #[error("is {0}, not a regular file")]
    NotRegular(&'static str),
    /// The folder itself is not a folder.
    #[error("is {0}, not a folder")]
    NotFolder(&'static str),
    #[error("resolves to {}, outside the folder {}", real.display(), folder.display())]
    Outside { real: PathBuf, folder: PathBuf },
    #[error("is {} bytes; kiln reads at most {} from {}", len, human(limit.max_bytes), limit.what)]
    TooLarge { len: u64, limit: Limit },
    #[error("cannot read: {0}")]
    Io(std::io::Error),
}

/// A file kiln would not read, and why.
#[derive(Debug, thiserror::Error)]
#[error("{}: {problem}", path.display())]
pub struct FileError {
    pub path: PathBuf,
    pub problem: Problem,
}

impl FileError {
    fn new(path: &Path, problem: Problem) -> FileError {
        FileError {
            path: path.to_path_buf(),
            problem,
        }
    }

    fn io(path: &Path, e: std::io::Error) -> FileError {
        let problem = if e.kind() == std::io::ErrorKind::NotFound {
            Problem::Missing
        } else {
            Problem::Io(e)
        };
        FileError::new(path, problem)
    }

    /// The file (or its folder) does not exist: for files that are optional, or a cache miss.
    pub fn is_missing(&self) -> bool {
        matches!(self.problem, Problem::Missing)
    }
}

/// A file that passed the checks: the open handle, its size and the path it resolves to.
#[derive(Debug)]
pub struct Opened {
    pub file: File,
    pub len: u64,
    pub real_path: PathBuf,
}

/// A folder whose files are opened with the checks above.
#[derive(Clone, Debug)]
pub struct Folder {
    /// The folder itself (resolved), then any other folder its files may resolve into.
    roots: Vec<PathBuf>,
}

impl Folder {
    /// The folder `dir`, which must exist (after resolving symbolic links) and be a folder.
    pub fn new(dir: &Path) -> Result<Folder, FileError> {
        let real = dir.canonicalize().map_err(|e| FileError::io(dir, e))?;
        let meta = std::fs::metadata(&real).map_err(|e| FileError::io(dir, e))?;
        if !meta.is_dir() {
            return Err(FileError::new(
                dir,
                Problem::NotFolder(kind_of(&meta.file_type())),
            ));
        }
        Ok(Folder { roots: vec![real] })
    }

    /// Also lets files resolve into `other` (when it exists): a Hugging Face snapshot's files
    /// are links into the repository's `blobs/`.
    pub fn also(mut self, other: &Path) -> Folder {
        if let Ok(real) = other.canonicalize() {
            if real.is_dir() {
                self.roots.push(real);
            }
        }
        self
    }

    /// The folder, resolved.
    pub fn dir(&self) -> &Path {
        &self.roots[0]
    }

    /// Opens `path` for reading if it is a regular file inside the folder of at most
    /// `limit.max_bytes` bytes.
    pub fn open(&self, path: &Path, limit: Limit) -> Result<Opened, FileError> {
        // Before opening: opening a device can have effects of its own, and a FIFO blocks.
        let meta = std::fs::metadata(path).map_err(|e| FileError::io(path, e))?;
        if !meta.is_file() {
            return Err(FileError::new(
                path,
                Problem::NotRegular(kind_of(&meta.file_type())),
            ));
        }
        // Non-blocking, so a FIFO put in its place since cannot hang the open (for a regular
        // file the flag changes nothing); no controlling terminal from a tty put there.
        let file = std::fs::OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_NONBLOCK | libc::O_NOCTTY)
            .open(path)
            .map_err(|e| FileError::io(path, e))?;
        // What was opened is what counts.
        let meta = file.metadata().map_err(|e| FileError::io(path, e))?;
        if !meta.is_file() {
            return Err(FileError::new(
                path,
                Problem::NotRegular(kind_of(&meta.file_type())),
            ));
        }
        let real_path = real_path(&file, path).map_err(|e| FileError::io(path, e))?;
        if !self.roots.iter().any(|r| real_path.starts_with(r)) {
            return Err(FileError::new(
                path,
                Problem::Outside {
                    real: real_path,
                    folder: self.roots[0].clone(),
                },
            ));
        }
        if meta.len() > limit.max_bytes {
            return Err(FileError::new(
                path,
                Problem::TooLarge {
                    len: meta.len(),
                    limit,
                },
            ));
        }
        Ok(Opened {
            file,
            len: meta.len(),
            real_path,
        })
    }

    /// The bytes of `path`, checked as [`Folder::open`] does; never more than the limit, even
    /// if the file grows while it is read.
    pub fn read(&self, path: &Path, limit: Limit) -> Result<Vec<u8>, FileError> {
        let opened = self.open(path, limit)?;
        let mut bytes = Vec::with_capacity(opened.len as usize);
        opened
            .file
            .take(limit.max_bytes.saturating_add(1))
            .read_to_end(&mut bytes)
            .map_err(|e| FileError::io(path, e))?;
        if bytes.len() as u64 > limit.max_bytes {
            return Err(FileError::new(
                path,
                Problem::TooLarge {
                    len: bytes.len() as u64,
                    limit,
                },
            ));
        }
        Ok(bytes)
    }

    /// [`Folder::read`], as UTF-8 text.
    pub fn read_to_string(&self, path: &Path, limit: Limit) -> Result<String, FileError> {
        String::from_utf8(self.read(path, limit)?).map_err(|e| {
            FileError::new(
                path,
                Problem::Io(std::io::Error::new(
                    std::io::ErrorKind::InvalidData,
                    format!("not UTF-8 text ({})", e.utf8_error()),
                )),
            )
        })
    }
}

/// The path an open file really is: `/proc/self/fd/N` on Linux (no race with a rename or a
/// link swapped in after the open), else the path resolved.
fn real_path(file: &File, path: &Path) -> std::io::Result<PathBuf> {
    use std::os::fd::AsRawFd;
    match std::fs::read_link(format!("/proc/self/fd/{}", file.as_raw_fd())) {
        Ok(p) if p.is_absolute() => Ok(p),
        _ => path.canonicalize(),
    }
}

/// "a FIFO", "a folder", ... for messages.
fn kind_of(t: &std::fs::FileType) -> &'static str {
    if t.is_dir() {
        "a folder"
    } else if t.is_fifo() {
        "a FIFO (named pipe)"
    } else if t.is_char_device() {
        "a character device"
    } else if t.is_block_device() {
        "a block device"
    } else if t.is_socket() {
        "a socket"
    } else if t.is_symlink() {
        "a symbolic link"
    } else if t.is_file() {
        "a regular file"
    } else {
        "an unknown kind of file"
    }
}

/// `4 MiB`, `1 GiB`, `512 bytes`.
fn human(bytes: u64) -> String {
    const UNITS: [(&str, u64); 3] = [("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)];
    for (name, size) in UNITS {
        if bytes >= size && bytes.is_multiple_of(size) {
            return format!("{} {name}", bytes / size);
        }
    }
    format!("{bytes} bytes")
}

#[cfg(test)]
mod tests {
    use super::human;

    #[test]
    fn sizes_read_as_people_write_them() {
        assert_eq!(human(4 << 20), "4 MiB");
        assert_eq!(human(1 << 30), "1 GiB");
        assert_eq!(human(1000), "1000 bytes");
    }
}
