//! Pack → unpack round trips, and every way a payload can be refused.

use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};

use lz4_flex::frame::{FrameEncoder, FrameInfo};

use super::*;

use crate::testing::TempDir as Scratch;

fn manifest() -> Manifest {
    Manifest {
        format: FORMAT_VERSION,
        ferry_version: "test".into(),
        mode: Mode::Criu,
        created_unix: 1_700_000_000,
        source: SourceHost { arch: "x86_64".into(), ..Default::default() },
        container: ContainerSpec {
            name: "web".into(),
            image_id: format!("sha256:{}", "b".repeat(64)),
            image_tags: vec![],
            config: Default::default(),
            host_config: Default::default(),
        },
        checkpoint_name: Some("ferry".into()),
        rootfs: RootfsChanges::default(),
        entries: vec![],
        snapshot: None,
    }
}

/// Pseudo-random bytes: incompressible like real memory pages.
fn noise(len: usize, mut seed: u64) -> Vec<u8> {
    (0..len)
        .map(|_| {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed as u8
        })
        .collect()
}

/// A packed payload of a small checkpoint and one rootfs archive.
fn packed(scratch: &Path) -> (Vec<u8>, Vec<(String, PathBuf)>) {
    let source = scratch.join("source");
    fs::create_dir_all(&source).unwrap();
    let mut files = Vec::new();
    for (name, bytes) in [
        ("checkpoint/pages-1.img", noise(1 << 20, 7)),
        ("checkpoint/inventory.img", b"inventory".to_vec()),
        ("checkpoint/empty.img", Vec::new()),
        ("rootfs/0.tar", noise(3000, 9)),
    ] {
        let path = source.join(name.replace('/', "_"));
        fs::write(&path, bytes).unwrap();
        files.push((name.to_string(), path));
    }
    let mut manifest = manifest();
    manifest.rootfs.archives.push(RootfsArchive { entry: "rootfs/0.tar".into(), target_dir: "/data".into() });
    let mut out = Vec::new();
    let stats = pack(&mut manifest, &files, &mut out, LZ4_BLOCK).unwrap();
    assert_eq!(stats.compressed_bytes, out.len() as u64);
    assert!(stats.raw_bytes > 1 << 20);
    (out, files)
}

#[test]
fn round_trip_restores_every_byte() {
    let scratch = Scratch::new("roundtrip");
    let (payload, files) = packed(scratch.path());
    let dest = scratch.path().join("dest");
    let unpacked = unpack(payload.as_slice(), &dest, "x86_64", None).unwrap();
    assert_eq!(unpacked.manifest.entries.len(), files.len());
    assert_eq!(unpacked.compressed_bytes, payload.len() as u64);
    for (name, original) in &files {
        assert_eq!(fs::read(dest.join(name)).unwrap(), fs::read(original).unwrap(), "{name}");
    }
    assert_eq!(unpacked.manifest.rootfs.archives[0].target_dir, "/data");
}

#[test]
fn unpack_accepts_engine_spellings_of_the_same_arch() {
    let scratch = Scratch::new("arch-alias");
    let (payload, _) = packed(scratch.path());
    unpack(payload.as_slice(), &scratch.path().join("dest"), "amd64", None).unwrap();
}

fn assert_refused(payload: &[u8], host_arch: &str, expect: &str) {
    let scratch = Scratch::new(&format!("refuse-{}", expect.len()));
    let dest = scratch.path().join("dest");
    let error = unpack(payload, &dest, host_arch, None).expect_err("payload accepted");
    assert!(error.to_string().contains(expect), "{error}");
    assert!(!dest.exists(), "a refused payload left {} behind", dest.display());
}

#[test]
fn restore_refuses_payload_from_other_arch() {
    let scratch = Scratch::new("arch");
    let (payload, _) = packed(scratch.path());
    assert_refused(&payload, "aarch64", "made on x86_64 but this host is aarch64");
}

#[test]
fn truncated_payload_is_refused_and_leaves_nothing() {
    let scratch = Scratch::new("truncated");
    let (payload, _) = packed(scratch.path());
    for cut in [10, payload.len() / 3, payload.len() - 30] {
        assert_refused(&payload[..cut], "x86_64", "payload");
    }
}

#[test]
fn one_flipped_byte_is_refused() {
    let scratch = Scratch::new("flipped");
    let (payload, _) = packed(scratch.path());
    // Flip bytes well inside the big random entry, where lz4 stores literals:
    // decoding succeeds and only the digest can notice.
    for at in [payload.len() / 2, payload.len() / 2 + 4099] {
        let mut damaged = payload.clone();
        damaged[at] ^= 0x20;
        assert_refused(&damaged, "x86_64", "");
    }
}

/// A payload written by hand, to say what ferry's packer never would.
fn hand_made(manifest: &Manifest, entries: &[(&[u8], tar::EntryType, &[u8])]) -> Vec<u8> {
    let mut frame = FrameInfo::new();
    frame.block_size = LZ4_BLOCK;
    let mut builder = tar::Builder::new(FrameEncoder::with_frame_info(frame, Vec::new()));
    let json = serde_json::to_vec(manifest).unwrap();
    let mut header = tar::Header::new_gnu();
    header.set_size(json.len() as u64);
    header.set_mode(0o600);
    builder.append_data(&mut header, MANIFEST_ENTRY, json.as_slice()).unwrap();
    for (name, kind, body) in entries {
        let mut header = tar::Header::new_old();
        header.as_old_mut().name[..name.len()].copy_from_slice(name);
        header.set_entry_type(*kind);
        header.set_size(body.len() as u64);
        header.set_mode(0o600);
        if kind.is_symlink() {
            header.set_link_name("../../../etc").unwrap();
        }
        header.set_cksum();
        builder.append(&header, *body).unwrap();
    }
    builder.into_inner().unwrap().finish().unwrap()
}

fn listed(name: &str, body: &[u8]) -> Entry {
    let (size, sha256) = sha256_hex(body).unwrap();
    Entry { path: name.into(), size, sha256 }
}

#[test]
fn entry_with_dotdot_is_refused() {
    let manifest = { let mut m = manifest(); m.entries.push(listed("checkpoint/a.img", b"a")); m };
    let payload = hand_made(&manifest, &[(b"checkpoint/../../evil", tar::EntryType::Regular, b"a")]);
    assert_refused(&payload, "x86_64", "'..' would leave the destination");
    let payload = hand_made(&manifest, &[(b"/etc/evil", tar::EntryType::Regular, b"a")]);
    assert_refused(&payload, "x86_64", "absolute");
}

#[test]
fn links_are_refused() {
    let manifest = { let mut m = manifest(); m.entries.push(listed("checkpoint/a.img", b"")); m };
    let payload = hand_made(&manifest, &[(b"checkpoint/a.img", tar::EntryType::Symlink, b"")]);
    assert_refused(&payload, "x86_64", "never links");
    let payload = hand_made(&manifest, &[(b"checkpoint/a.img", tar::EntryType::Link, b"")]);
    assert_refused(&payload, "x86_64", "never links");
}

#[test]
fn entries_the_manifest_does_not_list_are_refused() {
    let manifest = { let mut m = manifest(); m.entries.push(listed("checkpoint/a.img", b"a")); m };
    let payload = hand_made(
        &manifest,
        &[(b"checkpoint/a.img", tar::EntryType::Regular, b"a"), (b"checkpoint/b.img", tar::EntryType::Regular, b"b")],
    );
    assert_refused(&payload, "x86_64", "not listed in the manifest");
    let payload = hand_made(&manifest, &[]);
    assert_refused(&payload, "x86_64", "never arrived");
}

#[test]
fn newer_format_is_refused_with_both_versions() {
    let mut newer = manifest();
    newer.format = FORMAT_VERSION + 1;
    let payload = hand_made(&newer, &[]);
    assert_refused(&payload, "x86_64", &format!("format {} is newer", FORMAT_VERSION + 1));
}

#[test]
fn not_a_payload_at_all() {
    assert_refused(b"hello, this is not lz4", "x86_64", "truncated or corrupt");
    let scratch = Scratch::new("plain-tar");
    let mut tar = tar::Builder::new(Vec::new());
    let mut header = tar::Header::new_gnu();
    header.set_size(1);
    tar.append_data(&mut header, "hello.txt", &b"x"[..]).unwrap();
    let mut frame = FrameEncoder::new(Vec::new());
    frame.write_all(&tar.into_inner().unwrap()).unwrap();
    let payload = frame.finish().unwrap();
    drop(scratch);
    assert_refused(&payload, "x86_64", "not a ferry payload");
}

#[test]
fn oversized_payload_is_refused_before_writing() {
    let scratch = Scratch::new("limit");
    let (payload, _) = packed(scratch.path());
    let dest = scratch.path().join("dest");
    let error = unpack(payload.as_slice(), &dest, "x86_64", Some(1000)).unwrap_err();
    assert!(error.to_string().contains("more than the 1000 bytes allowed"), "{error}");
    assert!(!dest.exists());
}

/// The fuzz corpus's seeds (tests/fuzz/corpus/): a small payload of real CRIU
/// images as this `pack` writes it, and its manifest. Rewrite them after a
/// format change with `FERRY_UPDATE_FUZZ_SEEDS=1 cargo test fuzz_seeds`.
#[test]
fn fuzz_seeds_are_what_pack_writes_and_unpack_accepts() {
    let repo = Path::new(env!("CARGO_MANIFEST_DIR"));
    let images = repo.join("src/payload/images/testdata/docker-default");
    let scratch = Scratch::new("fuzz-seeds");
    let rootfs = scratch.path().join("0.tar");
    fs::write(&rootfs, b"a rootfs archive's bytes").unwrap();
    let files = vec![
        ("checkpoint/inventory.img".to_string(), images.join("inventory.img")),
        ("checkpoint/pstree.img".to_string(), images.join("pstree.img")),
        ("checkpoint/core-1.img".to_string(), images.join("core-1.img")),
        ("rootfs/0.tar".to_string(), rootfs),
    ];
    let mut manifest = manifest();
    manifest.rootfs.archives.push(RootfsArchive { entry: "rootfs/0.tar".into(), target_dir: "/data".into() });
    manifest.rootfs.deleted.push("/tmp/gone".into());
    let mut payload = Vec::new();
    pack(&mut manifest, &files, &mut payload, LZ4_BLOCK).unwrap();
    let manifest_json = serde_json::to_vec_pretty(&manifest).unwrap();

    let corpus = repo.join("tests/fuzz/corpus");
    let seeds = [(corpus.join("unpack/criu-payload"), payload), (corpus.join("manifest/criu.json"), manifest_json)];
    for (path, bytes) in &seeds {
        if std::env::var_os("FERRY_UPDATE_FUZZ_SEEDS").is_some() {
            fs::write(path, bytes).unwrap();
        }
        // lz4_flex's compressor finds other matches on 32-bit targets (the
        // payload still unpacks the same there): the seeds are made, and
        // fuzzed, on 64-bit hosts.
        if cfg!(target_pointer_width = "64") {
            let committed = fs::read(path).unwrap_or_default();
            assert!(&committed == bytes, "{} is stale: FERRY_UPDATE_FUZZ_SEEDS=1 cargo test fuzz_seeds", path.display());
        }
    }
    unpack(seeds[0].1.as_slice(), &scratch.path().join("dest"), "x86_64", Some(64 << 20)).unwrap();
}
