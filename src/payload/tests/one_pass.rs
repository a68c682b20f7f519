//! Format 5: one pass, the digests in the manifest that closes the stream.

use std::fs;
use std::io::{Read, Write};

use lz4_flex::frame::{FrameDecoder, FrameEncoder, FrameInfo};

use super::super::*;
use super::{manifest, pack_one_pass, packed, FixedSigner, Recording, Scratch};

/// The payload's entries: (path, header, bytes).
pub(super) fn entries(payload: &[u8]) -> Vec<(String, tar::Header, Vec<u8>)> {
    let mut archive = tar::Archive::new(FrameDecoder::new(payload));
    let mut out = Vec::new();
    for entry in archive.entries().unwrap() {
        let mut entry = entry.unwrap();
        let path = entry.path().unwrap().to_string_lossy().into_owned();
        let mut bytes = Vec::new();
        entry.read_to_end(&mut bytes).unwrap();
        out.push((path, entry.header().clone(), bytes));
    }
    out
}

/// A payload of these entries, every header kept but its size.
pub(super) fn payload(entries: &[(String, tar::Header, Vec<u8>)]) -> Vec<u8> {
    let mut builder = tar::Builder::new(Vec::new());
    for (_, header, bytes) in entries {
        let mut header = header.clone();
        header.set_size(bytes.len() as u64);
        header.set_cksum();
        builder.append(&header, bytes.as_slice()).unwrap();
    }
    let mut encoder = FrameEncoder::with_frame_info(FrameInfo::new(), Vec::new());
    encoder.write_all(&builder.into_inner().unwrap()).unwrap();
    encoder.finish().unwrap()
}

fn sealed(scratch: &Scratch) -> (Vec<u8>, Vec<(String, std::path::PathBuf)>) {
    let (_, files) = packed(scratch.path());
    let mut manifest = manifest();
    manifest.rootfs.archives.push(RootfsArchive { entry: "rootfs/0.tar".into(), target_dir: "/data".into() });
    let mut out = Vec::new();
    let stats = pack_one_pass(&mut manifest, &files, &mut out, Some(&FixedSigner));
    assert_eq!(stats.compressed_bytes, out.len() as u64);
    (out, files)
}

fn refused(payload: &[u8], scratch: &Scratch, name: &str) -> String {
    let dest = scratch.path().join(name);
    let error = unpack(payload, &dest, "x86_64", None, &Recording::default()).expect_err("payload accepted");
    assert!(!dest.exists(), "{name}: a refused payload left {}", dest.display());
    error.to_string()
}

#[test]
fn the_manifest_leads_with_sizes_and_closes_with_every_digest() {
    let scratch = Scratch::new("one-pass");
    let (payload, files) = sealed(&scratch);
    let names: Vec<String> = entries(&payload).into_iter().map(|(path, ..)| path).collect();
    assert_eq!(names.first().map(String::as_str), Some(MANIFEST_ENTRY));
    assert_eq!(names[1], SEAL_ENTRY);
    assert_eq!(&names[names.len() - 2..], [TRAILER_ENTRY, TRAILER_SEAL]);

    let verifier = Recording::default();
    let dest = scratch.path().join("dest");
    let unpacked = unpack(payload.as_slice(), &dest, "x86_64", None, &verifier).unwrap();
    // The verifier saw the leading manifest (no digests) before anything was
    // written, then the closing one; what the payload is from now on is the
    // closing one, sealed.
    let shown = verifier.shown.borrow();
    assert_eq!(shown.len(), 2);
    let head: Manifest = serde_json::from_slice(&shown[0].0).unwrap();
    assert!(head.entries.iter().all(|e| e.blake3.is_empty() && e.sha256.is_empty()), "{head:?}");
    assert_eq!(shown[1].0, unpacked.manifest_json);
    assert_eq!(unpacked.seal, shown[1].1);
    assert_eq!(unpacked.manifest.format, FORMAT_STREAMED);
    unpacked.manifest.validate().unwrap();
    for (name, original) in &files {
        let bytes = fs::read(original).unwrap();
        assert_eq!(fs::read(dest.join(name)).unwrap(), bytes, "{name}");
        let listed = unpacked.manifest.entries.iter().find(|e| &e.path == name).unwrap();
        assert_eq!(listed.blake3, blake3::hash(&bytes).to_hex().to_string(), "{name}");
    }
    // A snapshot kept on disk is checked again against that manifest.
    verify_tree(&dest, &unpacked.manifest, &[]).unwrap();
}

#[test]
fn the_receiver_hears_of_the_seal_first_then_of_each_entry_whole_in_payload_order() {
    let scratch = Scratch::new("one-pass-arrivals");
    let (payload, files) = sealed(&scratch);
    let heard = std::cell::RefCell::new(Vec::new());
    let dest = scratch.path().join("dest");
    let on_arrival = |arrived: Arrived<'_>| {
        let note = match arrived {
            Arrived::Sealed(manifest) => format!("sealed {}", manifest.entries.len()),
            // Whole: every byte the manifest lists is in the folder already.
            Arrived::Written(entry) => format!("{entry} {}", fs::metadata(dest.join(entry)).unwrap().len()),
        };
        heard.borrow_mut().push(note);
    };
    let receive = Receive { on_arrival: Some(&on_arrival), ..Default::default() };
    unpack_with(payload.as_slice(), &dest, "x86_64", None, &Recording::default(), &receive).unwrap();
    let mut expected = vec![format!("sealed {}", files.len())];
    expected.extend(files.iter().map(|(name, original)| format!("{name} {}", fs::metadata(original).unwrap().len())));
    assert_eq!(*heard.borrow(), expected);
}

#[test]
fn a_changed_byte_is_refused_at_the_end_and_nothing_stays() {
    let scratch = Scratch::new("one-pass-flipped");
    let (original, _) = sealed(&scratch);
    let mut edited = entries(&original);
    let pages = edited.iter_mut().find(|(path, ..)| path == "checkpoint/pages-1.img").unwrap();
    pages.2[70_000] ^= 0x20;
    let error = refused(&payload(&edited), &scratch, "flipped");
    assert!(error.contains("checkpoint/pages-1.img is damaged"), "{error}");
}

#[test]
fn the_closing_manifest_must_be_the_leading_one_with_digests_sealed_by_the_same_signer() {
    let scratch = Scratch::new("one-pass-closing");
    let (original, files) = sealed(&scratch);
    let whole = entries(&original);
    let at = |name: &str| whole.iter().position(|(path, ..)| path == name).unwrap();
    let closing: Manifest = serde_json::from_slice(&whole[at(TRAILER_ENTRY)].2).unwrap();
    let edit_closing = |edit: &dyn Fn(&mut Manifest)| {
        let mut manifest = closing.clone();
        edit(&mut manifest);
        let mut edited = whole.clone();
        let json = serde_json::to_vec_pretty(&manifest).unwrap();
        // Sealed again: the test verifier's "signature" is the first 8 bytes.
        let seal = serde_json::to_vec(&Seal::new(b"certificate", &json[..8])).unwrap();
        edited[at(TRAILER_ENTRY)].2 = json;
        edited[at(TRAILER_SEAL)].2 = seal;
        payload(&edited)
    };

    // The stream ends before its closing manifest (or its seal).
    let error = refused(&payload(&whole[..at(TRAILER_ENTRY)]), &scratch, "cut");
    assert!(error.contains("ended before its closing manifest"), "{error}");
    let error = refused(&payload(&whole[..at(TRAILER_SEAL)]), &scratch, "unsealed");
    assert!(error.contains("no seal"), "{error}");
    // Its bytes edited after sealing.
    let mut edited = whole.clone();
    edited[at(TRAILER_ENTRY)].2.splice(0..1, *b"{ ");
    let error = refused(&payload(&edited), &scratch, "edited");
    assert!(error.contains("wrong signature"), "{error}");
    // Sealed by another signer than the leading manifest.
    let mut other = whole.clone();
    let json = other[at(TRAILER_ENTRY)].2.clone();
    other[at(TRAILER_SEAL)].2 = serde_json::to_vec(&Seal::new(b"someone else", &json[..8])).unwrap();
    let error = refused(&payload(&other), &scratch, "other-signer");
    assert!(error.contains("not sealed by whoever sealed its manifest"), "{error}");
    // Saying more than the digests: another container, another rootfs target.
    let error = refused(&edit_closing(&|m| m.container.name = "db".into()), &scratch, "renamed");
    assert!(error.contains("says more than the digests"), "{error}");
    let error = refused(&edit_closing(&|m| m.rootfs.archives[0].target_dir = "/etc".into()), &scratch, "retargeted");
    assert!(error.contains("says more than the digests"), "{error}");
    // A digest that is not what arrived (say, to match a changed entry).
    let error = refused(&edit_closing(&|m| m.entries[0].blake3 = "0".repeat(64)), &scratch, "digest");
    assert!(error.contains("is damaged"), "{error}");
    // A digest missing.
    let error = refused(&edit_closing(&|m| m.entries[1].blake3.clear()), &scratch, "no-digest");
    assert!(error.contains("has no BLAKE3 digest"), "{error}");
    // Anything after it.
    let mut extra = whole.clone();
    extra.push(whole[at("rootfs/0.tar")].clone());
    let error = refused(&payload(&extra), &scratch, "after");
    assert!(error.contains("an entry after manifest.final.sig"), "{error}");
    // A closing manifest in a payload that leads with its digests (format 3).
    let mut format3 = whole.clone();
    let mut head = closing.clone();
    head.format = 3;
    format3[0].2 = serde_json::to_vec_pretty(&head).unwrap();
    format3[1].2 = serde_json::to_vec(&Seal::new(b"certificate", &format3[0].2[..8])).unwrap();
    let error = refused(&payload(&format3), &scratch, "format3");
    assert!(error.contains("manifest.final.json") && error.contains("not a part of the payload format"), "{error}");

    // And the leading manifest cannot carry digests: they come last.
    let mut early = whole.clone();
    early[0].2 = serde_json::to_vec_pretty(&closing).unwrap();
    early[1].2 = serde_json::to_vec(&Seal::new(b"certificate", &early[0].2[..8])).unwrap();
    let error = refused(&payload(&early), &scratch, "early");
    assert!(error.contains("has a digest in a manifest that leads"), "{error}");

    // The untouched payload still unpacks: every refusal above is the edit's.
    let dest = scratch.path().join("ok");
    unpack(original.as_slice(), &dest, "x86_64", None, &Recording::default()).unwrap();
    assert_eq!(fs::read(dest.join(&files[0].0)).unwrap(), fs::read(&files[0].1).unwrap());
}

#[test]
fn a_file_that_changes_while_it_is_packed_is_never_sent_as_it_was_listed() {
    let scratch = Scratch::new("one-pass-changed");
    let (_, files) = packed(scratch.path());
    let mut manifest = manifest();
    manifest.rootfs.archives.push(RootfsArchive { entry: "rootfs/0.tar".into(), target_dir: "/data".into() });
    // A writer that truncates the first file as soon as the head is out.
    struct Shrinking<'a> {
        out: Vec<u8>,
        victim: &'a std::path::Path,
        done: bool,
    }
    impl Write for Shrinking<'_> {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            if !self.done {
                fs::write(self.victim, b"short").unwrap();
                self.done = true;
            }
            self.out.write(buf)
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }
    let mut sink = Shrinking { out: Vec::new(), victim: &files[0].1, done: false };
    let layout = Layout { block: LZ4_BLOCK, signer: None, offer: None, one_pass: true };
    let error = super::super::pack(&mut manifest, &files, &mut sink, layout).unwrap_err();
    assert!(error.to_string().contains("changed while it was being packed"), "{error}");
}
