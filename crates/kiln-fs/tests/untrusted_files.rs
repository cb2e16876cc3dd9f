//! Every kind of file a hostile or careless folder can hold, opened through `Folder`: only a
//! regular file inside the folder, within its size bound, is read. Each open runs on a thread
//! with a deadline, so a check that regressed into blocking (a FIFO) fails instead of hanging.

use kiln_fs::{FileError, Folder, Limit, Problem};
use std::path::{Path, PathBuf};
use std::sync::mpsc;
use std::time::Duration;

const SMALL: Limit = Limit::new("a test file", 1000);

/// `Folder::new(dir)?.read(path, limit)` on a thread, failing the test after 10 s.
fn read(dir: &Path, path: &Path, limit: Limit) -> Result<Vec<u8>, FileError> {
    let (dir, owned) = (dir.to_path_buf(), path.to_path_buf());
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(Folder::new(&dir).and_then(|f| f.read(&owned, limit)));
    });
    rx.recv_timeout(Duration::from_secs(10))
        .unwrap_or_else(|_| panic!("reading {} did not return", path.display()))
}

fn mkfifo(path: &Path) {
    let c = std::ffi::CString::new(path.as_os_str().as_encoded_bytes()).unwrap();
    // SAFETY: a valid NUL-terminated path.
    assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0);
}

fn folder() -> (tempfile::TempDir, PathBuf) {
    let d = tempfile::tempdir().unwrap();
    let p = d.path().join("model");
    std::fs::create_dir(&p).unwrap();
    (d, p)
}

#[test]
fn a_regular_file_inside_the_folder_is_read() {
    let (_d, dir) = folder();
    std::fs::write(dir.join("config.json"), "{}").unwrap();
    assert_eq!(read(&dir, &dir.join("config.json"), SMALL).unwrap(), b"{}");
    // Through a link that stays inside, too.
    std::os::unix::fs::symlink("config.json", dir.join("link.json")).unwrap();
    assert_eq!(read(&dir, &dir.join("link.json"), SMALL).unwrap(), b"{}");
}

#[test]
fn fifos_devices_and_folders_are_refused_without_blocking() {
    let (_d, dir) = folder();
    mkfifo(&dir.join("fifo.json"));
    std::os::unix::fs::symlink("/dev/zero", dir.join("zero.json")).unwrap();
    std::os::unix::fs::symlink("/dev/null", dir.join("null.json")).unwrap();
    std::fs::create_dir(dir.join("dir.json")).unwrap();
    for (name, kind) in [
        ("fifo.json", "a FIFO"),
        ("zero.json", "a character device"),
        ("null.json", "a character device"),
        ("dir.json", "a folder"),
    ] {
        let e = read(&dir, &dir.join(name), SMALL).unwrap_err();
        assert!(matches!(e.problem, Problem::NotRegular(_)), "{name}: {e}");
        let msg = e.to_string();
        assert!(
            msg.contains(name) && msg.contains(kind) && msg.contains("not a regular file"),
            "{msg}"
        );
    }
}

#[test]
fn links_that_resolve_outside_the_folder_are_refused() {
    let (d, dir) = folder();
    std::fs::write(d.path().join("secret"), "x").unwrap();
    std::os::unix::fs::symlink("../secret", dir.join("a.json")).unwrap();
    std::os::unix::fs::symlink(d.path().join("secret"), dir.join("b.json")).unwrap();
    for name in ["a.json", "b.json"] {
        let e = read(&dir, &dir.join(name), SMALL).unwrap_err();
        assert!(matches!(e.problem, Problem::Outside { .. }), "{e}");
        assert!(e.to_string().contains("outside the folder"), "{e}");
    }
    // A path that walks out of the folder by itself.
    let e = read(&dir, &dir.join("../secret"), SMALL).unwrap_err();
    assert!(matches!(e.problem, Problem::Outside { .. }), "{e}");
}

#[test]
fn another_root_admits_a_hugging_face_blob_store() {
    let d = tempfile::tempdir().unwrap();
    let (snap, blobs) = (d.path().join("snapshots/abc"), d.path().join("blobs"));
    std::fs::create_dir_all(&snap).unwrap();
    std::fs::create_dir_all(&blobs).unwrap();
    std::fs::write(blobs.join("1234"), "{}").unwrap();
    std::os::unix::fs::symlink("../../blobs/1234", snap.join("config.json")).unwrap();
    let path = snap.join("config.json");
    assert!(Folder::new(&snap).unwrap().read(&path, SMALL).is_err());
    let f = Folder::new(&snap).unwrap().also(&blobs);
    assert_eq!(f.read(&path, SMALL).unwrap(), b"{}");
}

#[test]
fn a_file_past_its_bound_is_refused_before_it_is_read() {
    let (_d, dir) = folder();
    std::fs::write(dir.join("big.json"), vec![b' '; 1001]).unwrap();
    std::fs::write(dir.join("ok.json"), vec![b' '; 1000]).unwrap();
    let e = read(&dir, &dir.join("big.json"), SMALL).unwrap_err();
    assert!(
        matches!(e.problem, Problem::TooLarge { len: 1001, .. }),
        "{e}"
    );
    assert!(
        e.to_string()
            .contains("at most 1000 bytes from a test file"),
        "{e}"
    );
    assert_eq!(read(&dir, &dir.join("ok.json"), SMALL).unwrap().len(), 1000);
}

#[test]
fn missing_files_and_bad_folders_say_so() {
    let (d, dir) = folder();
    let e = read(&dir, &dir.join("none.json"), SMALL).unwrap_err();
    assert!(e.is_missing(), "{e}");
    let e = Folder::new(&d.path().join("nowhere")).unwrap_err();
    assert!(e.is_missing(), "{e}");
    std::fs::write(d.path().join("file"), "").unwrap();
    let e = Folder::new(&d.path().join("file")).unwrap_err();
    assert!(matches!(e.problem, Problem::NotFolder(_)), "{e}");
}
