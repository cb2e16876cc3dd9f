//! Issue 28, defect 1: every file kiln opens from a model folder, a kernel cache or a shared
//! remote folder must be a regular file, inside its folder once links are resolved, and no
//! bigger than its kind of file can be — checked before it is read. A FIFO, a device, a folder
//! or a link out of the folder is an error naming the file (a damaged cache entry is rebuilt),
//! never a hang or an unbounded read. Each run is under `ulimit -v` and a deadline.

mod common;

use common::*;
use std::path::Path;
use std::time::Duration;

const DEADLINE: Duration = Duration::from_secs(60);

/// The ways a file can be hostile, applied to `path`; `outside` is a regular file beside the
/// model folder.
fn hostile(path: &Path, how: &str, outside: &Path) {
    let _ = std::fs::remove_file(path);
    match how {
        "dev-zero" => link(Path::new("/dev/zero"), path),
        "fifo" => mkfifo(path),
        "folder" => std::fs::create_dir(path).unwrap(),
        "outside" => link(outside, path),
        other => unreachable!("{other}"),
    }
}

const HOW: [(&str, &str); 4] = [
    ("dev-zero", "a character device, not a regular file"),
    ("fifo", "a FIFO (named pipe), not a regular file"),
    ("folder", "a folder, not a regular file"),
    ("outside", "outside the model folder"),
];

/// `kiln run` on a model folder whose file `name` was made hostile, each way.
fn each_way(fixture_name: &str, name: &str) {
    for (how, says) in HOW {
        let (d, dir) = model_copy(fixture_name);
        let outside = d.path().join("outside");
        std::fs::copy(dir.join(name), &outside).unwrap();
        hostile(&dir.join(name), how, &outside);
        let r = Case::new().run(&strs(&run_args(&dir)), DEADLINE);
        assert!(
            !r.timed_out && r.status == Some(1),
            "{name} as {how}: {r:?}"
        );
        assert!(
            r.stderr.contains(name) && r.stderr.contains(says),
            "{name} as {how}: {}",
            r.stderr
        );
    }
}

#[test]
fn config_files_that_are_not_regular_files_in_the_folder_are_refused() {
    each_way("tiny-qwen3", "config.json");
}

#[test]
fn weights_and_their_index_that_are_not_regular_files_in_the_folder_are_refused() {
    each_way("tiny-qwen3", "model.safetensors");
    each_way("tiny-qwen3-sharded", "model.safetensors.index.json");
    each_way("tiny-qwen3-sharded", "model-00002-of-00003.safetensors");
}

#[test]
fn a_tokenizer_that_is_not_a_regular_file_in_the_folder_is_refused() {
    for (how, says) in HOW {
        let (d, dir) = model_copy("tiny-qwen3");
        let outside = d.path().join("outside");
        std::fs::write(&outside, "{}").unwrap();
        hostile(&dir.join("tokenizer.json"), how, &outside);
        let mut args = run_args(&dir);
        args.splice(3..5, ["--prompt".to_string(), "hello".to_string()]);
        let r = Case::new().run(&strs(&args), DEADLINE);
        assert!(!r.timed_out && r.status == Some(1), "{how}: {r:?}");
        assert!(
            r.stderr.contains("tokenizer.json") && r.stderr.contains(says),
            "{how}: {}",
            r.stderr
        );
    }
}

#[test]
fn a_config_file_past_its_size_bound_is_refused_before_it_is_read() {
    let (_d, dir) = model_copy("tiny-qwen3");
    // Valid JSON, 5 MB of it: a config file is kilobytes.
    let config = std::fs::read_to_string(dir.join("config.json")).unwrap();
    std::fs::write(
        dir.join("config.json"),
        format!("{}{config}", " ".repeat(5 << 20)),
    )
    .unwrap();
    let r = Case::new().run(&strs(&run_args(&dir)), DEADLINE);
    assert_eq!(r.status, Some(1), "{r:?}");
    assert!(
        r.stderr.contains("config.json") && r.stderr.contains("at most 4 MiB from a config file"),
        "{}",
        r.stderr
    );
}

#[test]
fn a_cache_entry_that_is_a_fifo_is_rebuilt_and_verify_reports_it() {
    let c = Case::warm();
    let victim = entries(c.cache.path())[0].clone();
    mkfifo(&victim);
    let v = c.run(&["cache", "verify", "--json"], DEADLINE);
    assert!(!v.timed_out && v.status == Some(1), "{v:?}");
    let bad = &v.json()["bad"];
    assert_eq!(bad.as_array().unwrap().len(), 1, "{bad}");
    assert_eq!(bad[0]["path"], victim.to_str().unwrap());
    assert!(bad[0]["reason"].as_str().unwrap().contains("FIFO"), "{bad}");
    // A run reports the entry, rebuilds it and finishes.
    let mut args = run_args(&fixture("tiny-qwen3"));
    args.push("--json".into());
    let r = c.run(&strs(&args), DEADLINE);
    assert!(r.ok(), "{r:?}");
    assert!(r.stderr.contains("FIFO"), "{}", r.stderr);
    assert!(std::fs::symlink_metadata(&victim).unwrap().is_file());
    let v = c.run(&["cache", "verify", "--json"], DEADLINE);
    assert!(v.ok(), "{v:?}");
}

#[test]
fn a_cache_entry_linked_to_a_device_or_out_of_the_cache_is_rebuilt() {
    for target in ["/dev/zero".to_string(), "outside".to_string()] {
        let c = Case::warm();
        let victim = entries(c.cache.path())[0].clone();
        let target = if target == "outside" {
            let p = c.tmp.path().join("elsewhere.kart");
            std::fs::copy(&victim, &p).unwrap();
            p
        } else {
            target.into()
        };
        link(&target, &victim);
        let v = c.run(&["cache", "verify", "--json"], DEADLINE);
        assert!(!v.timed_out && v.status == Some(1), "{v:?}");
        let mut args = run_args(&fixture("tiny-qwen3"));
        args.push("--json".into());
        let r = c.run(&strs(&args), DEADLINE);
        assert!(r.ok(), "{}: {r:?}", target.display());
        assert!(
            r.stderr.contains("discarded corrupt cache entry"),
            "{}",
            r.stderr
        );
    }
}

/// A shared folder holding, under a real key of the tiny fixture, a link to `/dev/zero`.
fn poisoned_remote(how: &str) -> (tempfile::TempDir, String) {
    let remote = tempfile::tempdir().unwrap();
    let entry = entries(warm_cache())[0].clone();
    let rel = entry.strip_prefix(warm_cache()).unwrap();
    let path = remote.path().join(rel);
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    match how {
        "dev-zero" => link(Path::new("/dev/zero"), &path),
        "fifo" => mkfifo(&path),
        other => unreachable!("{other}"),
    }
    let url = format!("file://{}", remote.path().display());
    (remote, url)
}

#[test]
fn a_shared_folder_entry_that_is_not_a_regular_file_is_never_read() {
    for how in ["dev-zero", "fifo"] {
        let (_remote, url) = poisoned_remote(how);
        // pull: an error naming the entry, at once.
        let r = Case::new().run(&["cache", "pull", "--remote-cache", &url], DEADLINE);
        assert!(!r.timed_out && r.status == Some(1), "{how}: {r:?}");
        assert!(r.stderr.contains("not a regular file"), "{}", r.stderr);
        // A run through the remote: a warning, the kernels built here, the right tokens.
        let mut args = run_args(&fixture("tiny-qwen3"));
        args.extend(["--json".into(), "--remote-cache".into(), url.clone()]);
        let r = Case::new().run(&strs(&args), DEADLINE);
        assert!(r.ok(), "{how}: {r:?}");
        assert!(r.stderr.contains("not a regular file"), "{}", r.stderr);
    }
}
