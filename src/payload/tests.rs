//! Pack → unpack round trips, and every way a payload can be refused.

use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};

use lz4_flex::frame::{FrameEncoder, FrameInfo};

use super::*;
use super::{digest_hex, DigestKind};

use crate::testing::TempDir as Scratch;

mod one_pass;

/// Packs a whole payload as every ferry before format 5 did (format 3: the
/// digests first): what the tests of the older formats start from.
fn pack(
    manifest: &mut Manifest,
    files: &[(String, PathBuf)],
    output: impl Write,
    block: lz4_flex::frame::BlockSize,
    signer: Option<&dyn Sign>,
) -> Result<PackStats> {
    super::pack(manifest, files, output, Layout { block, signer, offer: None, one_pass: false })
}

/// Packs in one pass (format 5), as ferry writes for a receiver that reads it.
fn pack_one_pass(manifest: &mut Manifest, files: &[(String, PathBuf)], output: impl Write, signer: Option<&dyn Sign>) -> PackStats {
    super::pack(manifest, files, output, Layout { block: LZ4_BLOCK, signer, offer: None, one_pass: true }).unwrap()
}

fn manifest() -> Manifest {
    Manifest {
        format: manifest::FORMAT_WHOLE,
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
        delta: None,
    }
}

use crate::testing::noise;

/// A packed payload of a small checkpoint and one rootfs archive.
pub(super) fn packed(scratch: &Path) -> (Vec<u8>, Vec<(String, PathBuf)>) {
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
    let stats = pack(&mut manifest, &files, &mut out, LZ4_BLOCK, None).unwrap();
    assert_eq!(stats.compressed_bytes, out.len() as u64);
    assert!(stats.raw_bytes > 1 << 20);
    (out, files)
}

#[test]
fn round_trip_restores_every_byte() {
    let scratch = Scratch::new("roundtrip");
    let (payload, files) = packed(scratch.path());
    let dest = scratch.path().join("dest");
    let unpacked = unpack(payload.as_slice(), &dest, "x86_64", None, &Unchecked).unwrap();
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
    unpack(payload.as_slice(), &scratch.path().join("dest"), "amd64", None, &Unchecked).unwrap();
}

fn assert_refused(payload: &[u8], host_arch: &str, expect: &str) {
    let scratch = Scratch::new(&format!("refuse-{}", expect.len()));
    let dest = scratch.path().join("dest");
    let error = unpack(payload, &dest, host_arch, None, &Unchecked).expect_err("payload accepted");
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
    let (size, blake3) = digest_hex(DigestKind::Blake3, body).unwrap();
    Entry::new(name.into(), size, blake3)
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
    let error = unpack(payload.as_slice(), &dest, "x86_64", Some(1000), &Unchecked).unwrap_err();
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
    // Sealed, so that the fuzzer starts from a payload with both seals too;
    // one pass, as ferry writes it.
    pack_one_pass(&mut manifest, &files, &mut payload, Some(&FixedSigner));
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
    unpack(seeds[0].1.as_slice(), &scratch.path().join("dest"), "x86_64", Some(64 << 20), &Unchecked).unwrap();
}

/// Signs with a fixed "signature": the payload module only carries seals.
pub(super) struct FixedSigner;

impl Sign for FixedSigner {
    fn seal(&self, manifest_json: &[u8]) -> Seal {
        Seal::new(b"certificate", &manifest_json[..8])
    }
}

/// Accepts only a seal whose "signature" is the manifest's first 8 bytes,
/// and records what it was shown; the signer is named by its "certificate".
#[derive(Default)]
pub(super) struct Recording {
    pub(super) shown: std::cell::RefCell<Vec<(Vec<u8>, Option<Seal>)>>,
}

impl Verify for Recording {
    fn verify(&self, manifest_json: &[u8], seal: Option<&Seal>) -> std::result::Result<Option<Signer>, String> {
        self.shown.borrow_mut().push((manifest_json.to_vec(), seal.cloned()));
        let (certificate, signature) = seal.ok_or("no seal")?.decode()?;
        if signature != manifest_json[..8] {
            return Err("wrong signature".into());
        }
        Ok(Some(Signer { name: String::from_utf8_lossy(&certificate).into_owned(), fingerprint: "sha256:00".into() }))
    }
}

#[test]
fn a_sealed_payload_is_shown_to_the_verifier_before_anything_is_written() {
    let scratch = Scratch::new("sealed");
    let (_, files) = packed(scratch.path());
    let mut manifest = manifest();
    let mut payload = Vec::new();
    pack(&mut manifest, &files, &mut payload, LZ4_BLOCK, Some(&FixedSigner)).unwrap();

    let verifier = Recording::default();
    let unpacked = unpack(payload.as_slice(), &scratch.path().join("ok"), "x86_64", None, &verifier).unwrap();
    assert_eq!(unpacked.signer.as_ref().map(|s| s.name.as_str()), Some("certificate"));
    let shown = verifier.shown.borrow();
    assert_eq!(shown.len(), 1);
    assert_eq!(shown[0].0, unpacked.manifest_json, "the verifier sees the manifest's bytes as they came");
    assert_eq!(serde_json::from_slice::<Manifest>(&shown[0].0).unwrap().entries.len(), files.len());
    assert_eq!(unpacked.seal, shown[0].1);

    // Unsealed: the same verifier refuses, and nothing is left.
    let mut plain = Vec::new();
    pack(&mut manifest, &files, &mut plain, LZ4_BLOCK, None).unwrap();
    let dest = scratch.path().join("refused");
    let error = unpack(plain.as_slice(), &dest, "x86_64", None, &Recording::default()).unwrap_err();
    assert!(error.to_string().contains("payload refused: no seal"), "{error}");
    assert!(!dest.exists());
}

#[test]
fn an_edited_manifest_fails_its_seal() {
    let scratch = Scratch::new("sealed-edited");
    let (_, files) = packed(scratch.path());
    let mut manifest = manifest();
    let mut payload = Vec::new();
    pack(&mut manifest, &files, &mut payload, LZ4_BLOCK, Some(&FixedSigner)).unwrap();
    // The manifest edited after signing: its first bytes change, the seal does not.
    let edited = rewrite_manifest(&payload, |json| { json.splice(0..1, *b"{ "); });
    let dest = scratch.path().join("dest");
    let error = unpack(edited.as_slice(), &dest, "x86_64", None, &Recording::default()).unwrap_err();
    assert!(error.to_string().contains("wrong signature"), "{error}");
    assert!(!dest.exists());
}

/// A manifest as an older ferry wrote it: `format`, and SHA-256 digests of
/// `files` instead of BLAKE3.
fn as_format(json: &mut Vec<u8>, format: u32, files: &[(String, PathBuf)]) {
    let mut manifest: serde_json::Value = serde_json::from_slice(json).unwrap();
    assert_eq!(manifest["format"], 3, "ferry writes format 3");
    manifest["format"] = format.into();
    for entry in manifest["entries"].as_array_mut().unwrap() {
        let disk = &files.iter().find(|(path, _)| entry["path"] == path.as_str()).unwrap().1;
        let (_, sha256) = digest_hex(DigestKind::Sha256, fs::File::open(disk).unwrap()).unwrap();
        let entry = entry.as_object_mut().unwrap();
        assert!(entry.remove("blake3").is_some(), "format 3 entries carry BLAKE3");
        entry.insert("sha256".into(), sha256.into());
    }
    *json = serde_json::to_vec_pretty(&manifest).unwrap();
}

#[test]
fn older_formats_still_restore_with_sha256_and_format_1_never_carries_a_seal() {
    let scratch = Scratch::new("sealed-v1");
    let (_, files) = packed(scratch.path());
    let mut manifest = manifest();
    let mut payload = Vec::new();
    pack(&mut manifest, &files, &mut payload, LZ4_BLOCK, None).unwrap();
    // What older ferry versions wrote (SHA-256; format 1 without a seal) still
    // unpacks, every entry checked with SHA-256.
    for format in [1, 2] {
        let old = rewrite_manifest(&payload, |json| as_format(json, format, &files));
        let dest = scratch.path().join(format!("old-{format}"));
        let unpacked = unpack(old.as_slice(), &dest, "x86_64", None, &Unchecked).unwrap();
        assert_eq!((unpacked.manifest.format, unpacked.seal), (format, None));
        assert_eq!(unpacked.manifest.entries[0].digest(None).0, DigestKind::Sha256);
        for (name, original) in &files {
            assert_eq!(fs::read(dest.join(name)).unwrap(), fs::read(original).unwrap(), "{name}");
        }
    }
    // A format 3 manifest with SHA-256 digests is no payload ferry writes.
    let mixed = rewrite_manifest(&payload, |json| {
        as_format(json, 1, &files);
        *json = String::from_utf8(json.clone()).unwrap().replace("\"format\": 1", "\"format\": 3").into_bytes();
    });
    let error = unpack(mixed.as_slice(), &scratch.path().join("mixed"), "x86_64", None, &Unchecked).unwrap_err();
    assert!(error.to_string().contains("has no BLAKE3 digest"), "{error}");
    let as_v1 = |json: &mut Vec<u8>| as_format(json, 1, &files);
    // A seal behind a format 1 manifest is no payload ferry writes.
    let mut sealed = Vec::new();
    pack(&mut manifest, &files, &mut sealed, LZ4_BLOCK, Some(&FixedSigner)).unwrap();
    let forged = rewrite_manifest(&sealed, as_v1);
    let dest = scratch.path().join("forged");
    let error = unpack(forged.as_slice(), &dest, "x86_64", None, &Unchecked).unwrap_err();
    assert!(error.to_string().contains("manifest.sig"), "{error}");
    assert!(!dest.exists());
}

/// The payload with its manifest's bytes changed by `edit`, every other
/// entry (the seal included) as it was.
fn rewrite_manifest(payload: &[u8], edit: impl Fn(&mut Vec<u8>)) -> Vec<u8> {
    let mut entries = one_pass::entries(payload);
    let manifest = entries.iter_mut().find(|(path, ..)| path == MANIFEST_ENTRY).expect("a manifest");
    edit(&mut manifest.2);
    one_pass::payload(&entries)
}

/// A payload of `files` packed as a delta against what `base_dir` holds.
fn packed_delta(files: &[(String, PathBuf)], base_dir: &Path) -> (Vec<u8>, std::sync::Arc<delta::Base>) {
    let base = std::sync::Arc::new(delta::Base::index(&[base_dir.to_path_buf()], delta::BLOCK_SIZE).unwrap());
    let offer = delta::Offer::from_bytes(delta::BLOCK_SIZE, &base.ids()).unwrap();
    let mut manifest = manifest();
    let mut out = Vec::new();
    let layout = Layout { block: LZ4_BLOCK, signer: None, offer: Some((&offer, "snapshot web@1")), one_pass: true };
    let stats = super::pack(&mut manifest, files, &mut out, layout).unwrap();
    assert_eq!(stats.delta_entries, 1, "only the large pages file goes as a delta");
    (out, base)
}

#[test]
fn a_delta_payload_rebuilds_every_byte_from_the_receivers_copy() {
    let scratch = Scratch::new("delta-roundtrip");
    let (_, files) = packed(scratch.path());
    // The receiver holds the earlier dump; the new one changed two pages.
    let base_dir = scratch.path().join("base");
    fs::create_dir_all(&base_dir).unwrap();
    fs::copy(&files[0].1, base_dir.join("pages-1.img")).unwrap();
    let mut pages = fs::read(&files[0].1).unwrap();
    pages[4096 * 3] ^= 0xff;
    pages[4096 * 200 + 17] ^= 0xff;
    fs::write(&files[0].1, &pages).unwrap();
    let files: Vec<_> = files.into_iter().filter(|(name, _)| !name.starts_with("rootfs")).collect();

    let (payload, base) = packed_delta(&files, &base_dir);
    assert!(payload.len() < 64 * 1024, "{} bytes for two changed pages", payload.len());
    let resolve = |container: &str| (container == "web").then(|| base.clone());
    let receive = Receive { base: Some(&resolve), ..Default::default() };
    let dest = scratch.path().join("dest");
    let unpacked = unpack_with(payload.as_slice(), &dest, "x86_64", None, &Unchecked, &receive).unwrap();
    assert_eq!(unpacked.manifest.format, 4, "a payload with deltas is format 4, one pass asked or not");
    assert_eq!(fs::read(dest.join("checkpoint/pages-1.img")).unwrap(), pages);

    // Without the base it is refused as a missing base, and nothing stays.
    let dest = scratch.path().join("dest-nobase");
    let error = unpack_with(payload.as_slice(), &dest, "x86_64", None, &Unchecked, &Receive::default()).unwrap_err();
    assert!(matches!(error, Error::BaseMissing(_)), "{error}");
    assert!(!dest.exists());
}

#[test]
fn a_changed_byte_in_a_delta_is_refused_not_rebuilt() {
    let scratch = Scratch::new("delta-tampered");
    let (_, files) = packed(scratch.path());
    let base_dir = scratch.path().join("base");
    fs::create_dir_all(&base_dir).unwrap();
    fs::copy(&files[0].1, base_dir.join("pages-1.img")).unwrap();
    let mut pages = fs::read(&files[0].1).unwrap();
    pages[4096 * 7] ^= 0xff;
    fs::write(&files[0].1, &pages).unwrap();
    let files: Vec<_> = files.into_iter().filter(|(name, _)| !name.starts_with("rootfs")).collect();
    let (payload, base) = packed_delta(&files, &base_dir);

    // Edit the literal page inside the (decompressed) tar, then compress again.
    let mut tar_bytes = Vec::new();
    std::io::Read::read_to_end(&mut lz4_flex::frame::FrameDecoder::new(payload.as_slice()), &mut tar_bytes).unwrap();
    let literal = &pages[4096 * 7..4096 * 7 + 64];
    let at = tar_bytes.windows(literal.len()).position(|w| w == literal).expect("the changed page travels literally");
    tar_bytes[at + 10] ^= 1;
    let mut encoder = FrameEncoder::with_frame_info(FrameInfo::new(), Vec::new());
    encoder.write_all(&tar_bytes).unwrap();
    let edited = encoder.finish().unwrap();

    let resolve = |_: &str| Some(base.clone());
    let receive = Receive { base: Some(&resolve), ..Default::default() };
    let dest = scratch.path().join("dest");
    let error = unpack_with(edited.as_slice(), &dest, "x86_64", None, &Unchecked, &receive).unwrap_err();
    assert!(matches!(error, Error::Checksum { .. }), "{error}");
    assert!(!dest.exists());
}

#[test]
fn the_fuzzers_delta_seed_is_a_valid_payload() {
    // tests/fuzz/corpus/unpack/delta-payload: literal operations only, so it
    // unpacks without a base; the fuzzer mutates it from there.
    let seed = fs::read(concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fuzz/corpus/unpack/delta-payload")).unwrap();
    let scratch = Scratch::new("delta-seed");
    let dest = scratch.path().join("dest");
    let unpacked = unpack(seed.as_slice(), &dest, "x86_64", None, &Unchecked).unwrap();
    assert_eq!(unpacked.manifest.format, 4);
    assert_eq!(fs::metadata(dest.join("checkpoint/pages-1.img")).unwrap().len(), 4096 * 17 + 100);
}
