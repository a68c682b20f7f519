//! The read side: any `Read` → lz4 → tar → files under one new folder, every
//! entry checked against the manifest as it arrives.

use std::collections::{BTreeMap, BTreeSet};
use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use lz4_flex::frame::FrameDecoder;

use super::delta::Base;
use super::manifest::{check_entry_path, normalize_arch, MANIFEST_LIMIT};
use super::seal::{Seal, Signer, Verify, SEAL_ENTRY, SEAL_LIMIT};
use super::{Counting, Error, Manifest, Result, MANIFEST_ENTRY, TRAILER_ENTRY, TRAILER_SEAL};

#[derive(Debug)]
pub(crate) struct Unpacked {
    pub manifest: Manifest,
    /// The manifest's bytes as they came, which the seal signs.
    pub manifest_json: Vec<u8>,
    pub seal: Option<Seal>,
    /// Who signed it, when the verifier knew them.
    pub signer: Option<Signer>,
    /// Bytes read from the input.
    pub compressed_bytes: u64,
    /// Bytes of every entry, manifest included.
    pub raw_bytes: u64,
}

/// Unpacks a payload into `dest`, which must not exist yet.
///
/// Refuses, before writing any entry, a payload that `verify` refuses (its
/// seal, or the lack of one), of another format version or CPU architecture
/// than `host_arch`, or one whose entries would need more than
/// `max_raw_bytes`. Refuses any entry that is not a plain file or folder
/// under the format's folders, that the manifest does not list, or whose size
/// or digest differ from it. On any error `dest` is removed: a payload is
/// either unpacked whole and verified, or not at all.
#[cfg(any(test, fuzzing))]
pub(crate) fn unpack(
    input: impl Read,
    dest: &Path,
    host_arch: &str,
    max_raw_bytes: Option<u64>,
    verify: &dyn Verify,
) -> Result<Unpacked> {
    unpack_with(input, dest, host_arch, max_raw_bytes, verify, &Receive::default())
}

/// Finds the blocks a delta of the named container may copy.
pub(crate) type Resolve<'a> = &'a dyn Fn(&str) -> Option<Arc<Base>>;

/// What a receiver brings to an unpack beside the stream.
#[derive(Default)]
pub(crate) struct Receive<'a> {
    /// The blocks delta entries may refer to (format 4), for the container
    /// the manifest names: asked only when the payload has a delta.
    pub base: Option<Resolve<'a>>,
    /// On a failure after the seal was accepted, leave what arrived in `dest`
    /// (the caller keeps it so that a retry need not send it again, or
    /// removes it).
    pub keep_partial: bool,
    /// Set, to the manifest's container name, once the seal is accepted.
    pub sealed_container: std::cell::OnceCell<String>,
    /// Told what arrives, as it arrives (see [`Arrived`]).
    pub on_arrival: Option<&'a dyn Fn(Arrived<'_>)>,
}

/// What a receiver learns while a payload arrives, in this order.
pub(crate) enum Arrived<'a> {
    /// The leading manifest, its seal accepted, before any entry is read:
    /// what the payload will be if all of it checks out.
    Sealed(&'a Manifest),
    /// An entry now whole in the folder. Format 5 checks its digest only
    /// with the closing manifest: whatever is done with it before must be
    /// undone if the payload is refused (an agent's early container, never
    /// started before, takes the app's files and goes with them).
    Written(&'a str),
}

/// [`unpack`], with delta entries rebuilt from `receive.base`.
pub(crate) fn unpack_with(
    input: impl Read,
    dest: &Path,
    host_arch: &str,
    max_raw_bytes: Option<u64>,
    verify: &dyn Verify,
    receive: &Receive<'_>,
) -> Result<Unpacked> {
    // The payload holds the app's memory: only root may read it.
    crate::host::create_private_dir(dest).map_err(|source| Error::Io { path: dest.to_path_buf(), source })?;
    let result = unpack_into(input, dest, host_arch, max_raw_bytes, verify, receive);
    if result.is_err() && !(receive.keep_partial && receive.sealed_container.get().is_some()) {
        let _ = fs::remove_dir_all(dest);
    }
    result
}

fn unpack_into(
    input: impl Read,
    dest: &Path,
    host_arch: &str,
    max_raw_bytes: Option<u64>,
    verify: &dyn Verify,
    receive: &Receive<'_>,
) -> Result<Unpacked> {
    let mut counted = Counting::new(input);
    let decoder = FrameDecoder::new(&mut counted);
    let mut archive = tar::Archive::new(decoder);
    let mut entries = archive.entries().map_err(corrupt)?;

    let (manifest, manifest_json) = {
        let mut first = match entries.next() {
            Some(entry) => entry.map_err(corrupt)?,
            None => return Err(Error::Corrupt("empty stream: no manifest".into())),
        };
        let path = entry_path(&first)?;
        if path != MANIFEST_ENTRY || !first.header().entry_type().is_file() {
            return Err(Error::Corrupt(format!("first entry is {path:?}, not {MANIFEST_ENTRY}: not a ferry payload")));
        }
        if first.size() > MANIFEST_LIMIT {
            return Err(Error::Manifest(format!("manifest of {} bytes is larger than the limit", first.size())));
        }
        let mut text = Vec::new();
        first.read_to_end(&mut text).map_err(corrupt)?;
        let manifest: Manifest = serde_json::from_slice(&text).map_err(|e| {
            // A newer writer may have changed the shape: name its version if we can read it.
            match serde_json::from_slice::<serde_json::Value>(&text).ok().and_then(|v| v["format"].as_u64()) {
                Some(found) if found > u64::from(super::FORMAT_VERSION) => Error::Format { found: found as u32 },
                _ => Error::Manifest(e.to_string()),
            }
        })?;
        if manifest.is_streamed() {
            manifest.validate_head()?;
        } else {
            manifest.validate()?;
        }
        let payload_arch = normalize_arch(&manifest.source.arch);
        if payload_arch != normalize_arch(host_arch) {
            return Err(Error::Arch { payload: manifest.source.arch.clone(), host: host_arch.to_string() });
        }
        if let Some(limit) = max_raw_bytes
            && manifest.raw_size() > limit
        {
            return Err(Error::TooLarge { bytes: manifest.raw_size(), limit });
        }
        (manifest, text)
    };

    // The seal, if any, comes second; whether the payload may be used at all
    // is decided here, before a byte of it is written.
    let mut next = entries.next().transpose().map_err(corrupt)?;
    let mut seal = None;
    if let Some(second) = next.as_mut()
        && entry_path(second)? == SEAL_ENTRY
    {
        if manifest.format < 2 || !second.header().entry_type().is_file() || second.size() > SEAL_LIMIT {
            return Err(Error::Unsafe { entry: SEAL_ENTRY.into(), reason: "not a seal ferry writes".into() });
        }
        let mut text = Vec::new();
        second.read_to_end(&mut text).map_err(corrupt)?;
        seal = Some(serde_json::from_slice::<Seal>(&text).map_err(|e| Error::Signature(format!("its seal is unreadable: {e}")))?);
        next = None;
    }
    let signer = verify.verify(&manifest_json, seal.as_ref()).map_err(Error::Signature)?;
    let _ = receive.sealed_container.set(manifest.container.name.clone());
    let arrived = |what: Arrived<'_>| {
        if let Some(on_arrival) = receive.on_arrival {
            on_arrival(what);
        }
    };
    arrived(Arrived::Sealed(&manifest));
    let base = match (&manifest.delta, receive.base) {
        (Some(_), Some(resolve)) => resolve(&manifest.container.name),
        _ => None,
    };

    let mut expected: BTreeMap<&str, &super::Entry> =
        manifest.entries.iter().map(|e| (e.path.as_str(), e)).collect();
    // A folder entry is accepted only where a listed file needs it: a stream
    // of folders nobody listed would cost time and inodes for nothing.
    let folders: BTreeSet<&str> = manifest
        .entries
        .iter()
        .flat_map(|e| e.path.match_indices('/').map(move |(at, _)| &e.path[..at]))
        .collect();
    let raw_bytes = manifest.raw_size();
    let mut buffer = vec![0u8; 64 * 1024];
    // Format 5: the digests computed as the entries arrive, and the closing
    // manifest (with its seal) they are checked against.
    let streamed = manifest.is_streamed();
    let mut computed: BTreeMap<String, String> = BTreeMap::new();
    let mut closing: Option<(Vec<u8>, Option<Seal>)> = None;

    let mut rest = next.map(Ok).into_iter().chain(entries);
    while let Some(entry) = rest.next() {
        let mut entry = entry.map_err(corrupt)?;
        let path = entry_path(&entry)?;
        if streamed && path == TRAILER_ENTRY {
            let text = read_small(&mut entry, TRAILER_ENTRY, MANIFEST_LIMIT)?;
            let seal = match rest.next().transpose().map_err(corrupt)? {
                None => None,
                Some(mut last) => {
                    if entry_path(&last)? != TRAILER_SEAL {
                        return Err(Error::Unsafe { entry: entry_path(&last)?, reason: format!("an entry after {TRAILER_ENTRY}") });
                    }
                    let text = read_small(&mut last, TRAILER_SEAL, SEAL_LIMIT)?;
                    Some(serde_json::from_slice::<Seal>(&text).map_err(|e| Error::Signature(format!("its closing seal is unreadable: {e}")))?)
                }
            };
            if let Some(extra) = rest.next().transpose().map_err(corrupt)? {
                return Err(Error::Unsafe { entry: entry_path(&extra)?, reason: format!("an entry after {TRAILER_SEAL}") });
            }
            closing = Some((text, seal));
            break;
        }
        let kind = entry.header().entry_type();
        if kind.is_dir() {
            let folder = path.trim_end_matches('/');
            check_entry_path(folder)?;
            if !folders.contains(folder) {
                return Err(Error::Unsafe { entry: path, reason: "a folder no listed entry is in".into() });
            }
            fs::create_dir_all(dest.join(folder)).map_err(|source| Error::Io { path: dest.join(folder), source })?;
            continue;
        }
        if !kind.is_file() {
            return Err(Error::Unsafe {
                entry: path,
                reason: format!("a {kind:?} entry: ferry payloads hold only files and folders, never links or devices"),
            });
        }
        check_entry_path(&path)?;
        let Some(listed) = expected.remove(path.as_str()) else {
            return Err(Error::Unsafe { entry: path, reason: "not listed in the manifest (or listed once and sent twice)".into() });
        };
        // Refused before a byte of it is written: the manifest bounds the disk.
        let in_stream = listed.delta.unwrap_or(listed.size);
        if entry.size() != in_stream {
            return Err(Error::Checksum {
                entry: path,
                detail: format!("{} bytes in the stream, manifest says {in_stream}", entry.size()),
            });
        }
        let target = dest.join(&path);
        if let Some(parent) = target.parent() {
            fs::create_dir_all(parent).map_err(|source| Error::Io { path: parent.to_path_buf(), source })?;
        }
        let mut file = OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&target)
            .map_err(|source| Error::Io { path: target.clone(), source })?;
        let (kind, expected) =
            if streamed { (super::DigestKind::Blake3, "") } else { listed.digest(manifest.block_size()) };
        let (size, digest) = match (listed.delta, &manifest.delta) {
            (Some(delta_size), Some(spec)) => {
                let mut writer = io::BufWriter::with_capacity(64 * 1024, &mut file);
                let digest = super::delta::rebuild(
                    (&path, &target),
                    &mut (&mut entry).take(delta_size),
                    &mut writer,
                    listed.size,
                    base.as_deref(),
                    spec.block_size,
                )?;
                writer.flush().map_err(|source| Error::Io { path: target.clone(), source })?;
                (listed.size, digest)
            }
            _ => copy_hashing(&mut (&mut entry).take(listed.size), &mut file, &mut buffer, &target, kind)?,
        };
        if streamed && size == listed.size {
            arrived(Arrived::Written(&path));
            computed.insert(path, digest);
        } else if size != listed.size || digest != expected {
            return Err(Error::Checksum {
                entry: path,
                detail: format!("{size} bytes with {} {digest}, manifest says {} bytes with {expected}", kind.name(), listed.size),
            });
        } else {
            arrived(Arrived::Written(&path));
        }
    }
    drop(rest);
    if let Some(missing) = expected.keys().next() {
        return Err(Error::Corrupt(format!("entry {missing} listed in the manifest never arrived")));
    }
    let (manifest, manifest_json, seal, signer) = match closing {
        None if streamed => {
            return Err(Error::Corrupt(format!("the stream ended before its closing manifest {TRAILER_ENTRY}")));
        }
        None => (manifest, manifest_json, seal, signer),
        Some((final_json, final_seal)) => {
            let closed = close(&manifest, signer.as_ref(), &final_json, final_seal.as_ref(), &computed, verify)?;
            (closed, final_json, final_seal, signer)
        }
    };
    // Read the tar padding and the lz4 end mark too: a stream is only whole
    // once its frame ends, and an HTTP body must be read to its end.
    io::copy(&mut archive.into_inner(), &mut io::sink()).map_err(corrupt)?;
    Ok(Unpacked { manifest, manifest_json, seal, signer, compressed_bytes: counted.count, raw_bytes })
}

/// Checks the manifest that closes a one-pass payload against the one that
/// led it and the digests of what arrived: it must be that same manifest
/// with the digests added, sealed by the same signer, and every digest must
/// be what was received. Returns it: it is the payload's manifest from now on.
fn close(
    head: &Manifest,
    head_signer: Option<&Signer>,
    final_json: &[u8],
    final_seal: Option<&Seal>,
    computed: &BTreeMap<String, String>,
    verify: &dyn Verify,
) -> Result<Manifest> {
    let closed: Manifest =
        serde_json::from_slice(final_json).map_err(|e| Error::Manifest(format!("{TRAILER_ENTRY}: {e}")))?;
    if closed.format != head.format {
        return Err(Error::Manifest(format!("{TRAILER_ENTRY} says format {}, the payload {}", closed.format, head.format)));
    }
    closed.validate()?;
    // Unsealed at both ends is an unsigned payload the policy has accepted
    // already (and said so); anything else is checked again.
    let signer = match (head_signer, final_seal) {
        (None, None) => None,
        _ => verify.verify(final_json, final_seal).map_err(Error::Signature)?,
    };
    if signer.as_ref() != head_signer {
        return Err(Error::Signature(format!("{TRAILER_ENTRY} is not sealed by whoever sealed its manifest")));
    }
    let mut without_digests = closed.clone();
    for entry in &mut without_digests.entries {
        entry.blake3.clear();
    }
    let same = |m: &Manifest| serde_json::to_value(m).map_err(|e| Error::Manifest(e.to_string()));
    if same(&without_digests)? != same(head)? {
        return Err(Error::Manifest(format!("{TRAILER_ENTRY} says more than the digests its manifest lacked")));
    }
    for entry in &closed.entries {
        let received = computed.get(&entry.path).map(String::as_str).unwrap_or_default();
        if received != entry.blake3 {
            return Err(Error::Checksum {
                entry: entry.path.clone(),
                detail: format!("{} bytes with BLAKE3 {received}, its manifest says {}", entry.size, entry.blake3),
            });
        }
    }
    Ok(closed)
}

/// Reads a small entry whole, refusing one over `limit` bytes or not a plain file.
fn read_small<R: Read>(entry: &mut tar::Entry<'_, R>, name: &str, limit: u64) -> Result<Vec<u8>> {
    if !entry.header().entry_type().is_file() || entry.size() > limit {
        return Err(Error::Unsafe { entry: name.into(), reason: format!("not a plain file of at most {limit} bytes") });
    }
    let mut text = Vec::new();
    entry.read_to_end(&mut text).map_err(corrupt)?;
    Ok(text)
}

fn entry_path<R: Read>(entry: &tar::Entry<'_, R>) -> Result<String> {
    let bytes = entry.path_bytes();
    match std::str::from_utf8(&bytes) {
        Ok(path) => Ok(path.to_string()),
        Err(_) => Err(Error::Unsafe { entry: String::from_utf8_lossy(&bytes).into_owned(), reason: "not UTF-8".into() }),
    }
}

fn copy_hashing(reader: &mut impl Read, file: &mut File, buffer: &mut [u8], target: &Path, kind: super::DigestKind) -> Result<(u64, String)> {
    let mut hasher = kind.hasher();
    let mut size = 0u64;
    loop {
        let n = match reader.read(buffer) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(corrupt(e)),
        };
        hasher.update(&buffer[..n]);
        file.write_all(&buffer[..n]).map_err(|source| Error::Io { path: PathBuf::from(target), source })?;
        size += n as u64;
    }
    Ok((size, hasher.hex()))
}

/// Errors while reading the stream mean the stream is bad, whatever io::Error says.
fn corrupt(error: io::Error) -> Error {
    Error::Corrupt(error.to_string())
}

/// Checks a payload unpacked earlier and kept on disk: `dir` holds exactly
/// the files `manifest` lists (and the `besides` names at its top), at their
/// sizes and digests — what a stored snapshot must still be before it is
/// restored, since a disk can be altered after it was verified.
pub(crate) fn verify_tree(dir: &Path, manifest: &Manifest, besides: &[&str]) -> Result<()> {
    let files = crate::host::list_files(dir).map_err(|source| Error::Io { path: dir.to_path_buf(), source })?;
    let mut expected: BTreeMap<&str, &super::Entry> = manifest.entries.iter().map(|e| (e.path.as_str(), e)).collect();
    for (relative, path) in &files {
        if besides.contains(&relative.as_str()) {
            continue;
        }
        let Some(listed) = expected.remove(relative.as_str()) else {
            return Err(Error::Unsafe { entry: relative.clone(), reason: "on disk but not listed in the manifest".into() });
        };
        let file = File::open(path).map_err(|source| Error::Io { path: path.clone(), source })?;
        let (kind, expected) = listed.digest(manifest.block_size());
        let (size, digest) = super::digest_hex(kind, file).map_err(|source| Error::Io { path: path.clone(), source })?;
        if size != listed.size || digest != expected {
            return Err(Error::Checksum {
                entry: relative.clone(),
                detail: format!("{size} bytes with {} {digest} on disk, manifest says {} bytes with {expected}", kind.name(), listed.size),
            });
        }
    }
    match expected.keys().next() {
        Some(missing) => Err(Error::Corrupt(format!("entry {missing} listed in the manifest is missing on disk"))),
        None => Ok(()),
    }
}
