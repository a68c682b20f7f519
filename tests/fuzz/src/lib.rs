//! What the fuzz targets call: ferry's own `payload` module and `host.rs`,
//! compiled here by path at the crate root (where their `crate::host` and
//! `crate::payload` paths expect them), and one entry point per target.
//!
//! Each entry point states the property it checks by panicking when it does
//! not hold; an `Err` from ferry is a refusal, which is always fine.

// Only built by `cargo fuzz`, which passes `--cfg fuzzing`: that cfg is
// what exposes `check_image_bytes`. Most of the payload module and host.rs is
// not reached from here, so their unused items are expected.
#[allow(dead_code, unused_imports)]
#[path = "../../../src/host.rs"]
mod host;
#[allow(dead_code, unused_imports)]
#[path = "../../../src/payload/mod.rs"]
mod payload;

use std::fs;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use payload::images::{Allowed, check_image_bytes};
use payload::{Manifest, unpack};

/// Parsing and validating a manifest never panics, and a manifest that
/// validates still validates after a round trip through JSON (what `pack`
/// writes is what `unpack` reads).
pub fn manifest(bytes: &[u8]) {
    let Ok(manifest) = serde_json::from_slice::<Manifest>(bytes) else { return };
    if manifest.validate().is_err() {
        return;
    }
    let _ = manifest.raw_size();
    let text = serde_json::to_vec(&manifest).expect("a parsed manifest serializes");
    let back: Manifest = serde_json::from_slice(&text).expect("a serialized manifest parses");
    if let Err(error) = back.validate() {
        panic!("valid manifest is invalid after a round trip: {error}");
    }
}

/// The most an input may unpack to, as an agent with `--max-payload 64M`.
pub const UNPACK_LIMIT: u64 = 64 * 1024 * 1024;

/// Unpacking never panics; it writes only under its destination, never more
/// than the limit, and on a refusal leaves nothing behind. On success the
/// destination holds exactly the files the manifest lists, at their sizes.
pub fn unpack_payload(bytes: &[u8]) {
    let work = work_dir();
    let dest = work.join("dest");
    let result = unpack(bytes, &dest, "x86_64", Some(UNPACK_LIMIT), &payload::Unchecked);

    let mut left: Vec<_> = fs::read_dir(work).expect("work dir").map(|e| e.expect("dirent").file_name()).collect();
    left.retain(|name| name != "dest");
    assert!(left.is_empty(), "unpack wrote outside its destination: {left:?}");
    match result {
        Err(_) => assert!(!dest.exists(), "a refused payload left {} behind", dest.display()),
        Ok(unpacked) => {
            let mut files = Vec::new();
            walk(&dest, &dest, &mut files);
            let written: u64 = files.iter().map(|(_, size)| size).sum();
            assert!(written <= UNPACK_LIMIT, "unpacked {written} bytes, more than the limit");
            let listed: Vec<(String, u64)> =
                unpacked.manifest.entries.iter().map(|e| (e.path.clone(), e.size)).collect();
            files.sort();
            let mut listed_sorted = listed.clone();
            listed_sorted.sort();
            assert_eq!(files, listed_sorted, "unpacked files differ from the manifest");
            fs::remove_dir_all(&dest).expect("remove dest");
        }
    }
}

/// Every file under `dir` as (path relative to `root`, size); anything but
/// a plain file or folder is a failure.
fn walk(root: &Path, dir: &Path, files: &mut Vec<(String, u64)>) {
    for dirent in fs::read_dir(dir).expect("read dest") {
        let path = dirent.expect("dirent").path();
        let meta = fs::symlink_metadata(&path).expect("stat");
        if meta.is_dir() {
            walk(root, &path, files);
        } else {
            assert!(meta.is_file(), "unpack made a non-file {}", path.display());
            let relative = path.strip_prefix(root).expect("under root").to_string_lossy().into_owned();
            files.push((relative, meta.len()));
        }
    }
}

/// A folder of this process's own, removed when the fuzzer exits: several
/// fuzzers (`-jobs`, `-fork`) may run side by side.
fn work_dir() -> &'static Path {
    static WORK: OnceLock<PathBuf> = OnceLock::new();
    WORK.get_or_init(|| {
        let path = std::env::temp_dir().join(format!("ferry-fuzz-unpack-{}", std::process::id()));
        let _ = fs::remove_dir_all(&path);
        fs::create_dir(&path).expect("create work dir");
        extern "C" fn remove_work_dir() {
            if let Some(path) = WORK.get() {
                let _ = fs::remove_dir_all(path);
            }
        }
        // libFuzzer ends a timed run with exit(), which runs atexit handlers.
        unsafe { libc::atexit(remove_work_dir) };
        path
    })
}

/// The image names `images` checks, picked by an input's first byte.
pub const IMAGE_NAMES: [&str; 6] =
    ["inventory.img", "core-1.img", "pstree.img", "mountpoints-1.img", "seccomp.img", "cgroup.img"];

/// Checking a CRIU image never panics, whatever its bytes.
pub fn image(bytes: &[u8]) {
    static ALLOWED: OnceLock<Allowed> = OnceLock::new();
    let Some((&pick, image)) = bytes.split_first() else { return };
    let name = IMAGE_NAMES[usize::from(pick) % IMAGE_NAMES.len()];
    let _ = check_image_bytes(name, image, ALLOWED.get_or_init(Allowed::docker_default));
}
