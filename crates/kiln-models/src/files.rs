//! The files of a model folder, opened through [`kiln_fs`]: each must be a regular file that
//! resolves inside the folder (or, for a Hugging Face hub snapshot, its repository's blob
//! store) and is no bigger than its kind of file can be.

use kiln_fs::{FileError, Folder, Limit};
use std::path::Path;

/// `config.json` and `generation_config.json`: a few KB in practice (a `layer_types` list of
/// a few hundred entries included).
pub const CONFIG: Limit = Limit::new("a config file", 4 << 20);
/// `model.safetensors.index.json`: one line per tensor, about 100 bytes each; the largest
/// published checkpoints have tens of thousands of tensors.
pub const INDEX: Limit = Limit::new("a shard index", 64 << 20);
/// `tokenizer.json`: 7 to 35 MB for the large vocabularies published today.
pub const TOKENIZER: Limit = Limit::new("a tokenizer file", 256 << 20);
/// A safetensors file is mapped, never read whole: its size is bounded by its header (the
/// tensors must tile the file exactly, the header is at most 100 MB), and only the tensors the
/// config names, of the shapes it implies, are read.
pub const WEIGHTS: Limit = Limit::new("a weights file", u64::MAX);

/// The folder `dir`'s files may resolve into: itself and, for a Hugging Face hub snapshot
/// (`<repo>/snapshots/<revision>/`, whose files are symbolic links to `<repo>/blobs/`), that
/// repository's blob store.
pub fn model_folder(dir: &Path) -> Result<Folder, FileError> {
    let folder = Folder::new(dir)?;
    let blobs = folder
        .dir()
        .parent()
        .filter(|p| p.file_name() == Some("snapshots".as_ref()))
        .and_then(Path::parent)
        .map(|repo| repo.join("blobs"));
    Ok(match blobs {
        Some(b) => folder.also(&b),
        None => folder,
    })
}

/// The model folder of a file in it (its parent folder).
pub fn folder_of(file: &Path) -> Result<Folder, FileError> {
    match file.parent() {
        Some(p) if !p.as_os_str().is_empty() => model_folder(p),
        _ => model_folder(Path::new(".")),
    }
}

/// What is wrong with a file, for a message that already names it.
pub fn problem(e: &FileError) -> String {
    match &e.problem {
        kiln_fs::Problem::Outside { real, folder } => format!(
            "resolves to {}, outside the model folder {}",
            real.display(),
            folder.display()
        ),
        p => p.to_string(),
    }
}

/// The text of `path`, a file of its model folder.
pub fn read_text(path: &Path, limit: Limit) -> Result<String, FileError> {
    folder_of(path)?.read_to_string(path, limit)
}

/// The bytes of `path`, a file of its model folder.
pub fn read_bytes(path: &Path, limit: Limit) -> Result<Vec<u8>, FileError> {
    folder_of(path)?.read(path, limit)
}
