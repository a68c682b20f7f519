//! The write side: files on disk → tar → lz4 → any `Write`.

use std::fs::File;
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};

use super::delta::{self, Encoder, Offer, Plan};
use super::lz4::Lz4Writer;
use super::manifest::{DeltaSpec, FORMAT_DELTA, FORMAT_STREAMED, FORMAT_WHOLE};
use super::seal::{Sign, SEAL_ENTRY};
use super::{digest_hex, Counting, DigestKind, Entry, Error, Manifest, Result, MANIFEST_ENTRY, TRAILER_ENTRY, TRAILER_SEAL};

#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct PackStats {
    /// Bytes of every entry, manifest included, before compression (a delta
    /// entry counts the file it rebuilds: this is the checkpoint's size).
    pub raw_bytes: u64,
    /// Bytes written to the output.
    pub compressed_bytes: u64,
    /// Entries sent as deltas.
    pub delta_entries: u64,
}

/// How a payload is written.
#[derive(Clone, Copy)]
pub(crate) struct Layout<'a> {
    pub block: lz4_flex::frame::BlockSize,
    pub signer: Option<&'a dyn Sign>,
    /// The receiver's blocks: each entry of at least [`delta::DELTA_MIN`]
    /// bytes goes as a delta against them (format 4).
    pub offer: Option<(&'a Offer, &'a str)>,
    /// One pass (format 5) when the payload carries no delta: the receiver
    /// reads format 5. Otherwise a whole payload is format 3.
    pub one_pass: bool,
}

/// Packs `files` (archive path, file on disk) behind a manifest that lists
/// them, sealed by `signer` when given, and writes the payload to `output`;
/// memory stays at a few buffers whatever the sizes.
///
/// One pass (format 5): each file is read once, hashed as it is packed, and
/// the manifest with every digest closes the stream. Otherwise (format 3)
/// each file is read twice: once to hash it for the manifest that goes first,
/// once to pack it. With deltas (format 4) the first read of a file decides,
/// block by block, what the receiver lacks.
pub(crate) fn pack(
    manifest: &mut Manifest,
    files: &[(String, PathBuf)],
    output: impl Write,
    layout: Layout<'_>,
) -> Result<PackStats> {
    let Layout { block, signer, offer, one_pass } = layout;
    manifest.entries.clear();
    manifest.delta = None;
    let mut plans: Vec<Option<Plan>> = Vec::with_capacity(files.len());
    let deltas = offer.is_some_and(|(offer, _)| !offer.is_empty())
        && files.iter().any(|(_, path)| path.metadata().is_ok_and(|m| m.len() >= delta::DELTA_MIN));
    let one_pass = one_pass && !deltas;
    for (archive_path, disk_path) in files {
        let mut file = open(disk_path)?;
        let size = file.metadata().map_err(|source| io_error(disk_path, source))?.len();
        if one_pass {
            manifest.entries.push(Entry::new(archive_path.clone(), size, String::new()));
            plans.push(None);
            continue;
        }
        match offer.filter(|(offer, _)| size >= delta::DELTA_MIN && !offer.is_empty()) {
            // Every large file goes as a delta once the receiver holds blocks:
            // even one of all new blocks costs a byte per block, and hashing
            // its blocks is then the one pass over it.
            Some((offer, _)) => {
                let (size, digest, plan) = delta::plan(&mut file, offer).map_err(|source| io_error(disk_path, source))?;
                let mut entry = Entry::new(archive_path.clone(), size, String::new());
                entry.blocks_blake3 = digest;
                entry.delta = Some(plan.delta_size);
                plans.push(Some(plan));
                manifest.entries.push(entry);
            }
            None => {
                let (size, blake3) = digest_hex(DigestKind::Blake3, file).map_err(|source| io_error(disk_path, source))?;
                manifest.entries.push(Entry::new(archive_path.clone(), size, blake3));
                plans.push(None);
            }
        }
    }
    if let Some((offer, base)) = offer
        && plans.iter().any(Option::is_some)
    {
        manifest.format = FORMAT_DELTA;
        manifest.delta = Some(DeltaSpec { block_size: offer.block_size, base: base.to_string() });
    } else if one_pass {
        manifest.format = FORMAT_STREAMED;
    } else {
        manifest.format = FORMAT_WHOLE;
    }
    if one_pass {
        manifest.validate_head()?;
    } else {
        manifest.validate()?;
    }
    let manifest_json = serde_json::to_vec_pretty(manifest)
        .map_err(|e| Error::Manifest(format!("cannot encode manifest: {e}")))?;

    let output_name = Path::new("payload output");
    let counted = Counting::new(output);
    let encoder = Lz4Writer::new(counted, block);
    let mut builder = tar::Builder::new(encoder);

    let mut raw_bytes = append_sealed(&mut builder, (MANIFEST_ENTRY, SEAL_ENTRY), &manifest_json, signer, manifest.created_unix)?;

    let mut delta_entries = 0;
    let mut digests = Vec::with_capacity(if one_pass { files.len() } else { 0 });
    for (((archive_path, disk_path), entry), plan) in files.iter().zip(&manifest.entries).zip(&plans) {
        let file = open(disk_path)?;
        let current = file.metadata().map_err(|source| io_error(disk_path, source))?.len();
        if current != entry.size {
            return Err(changed(disk_path));
        }
        let mut header = entry_header(plan.as_ref().map_or(entry.size, |plan| plan.delta_size), manifest.created_unix);
        match (plan, &manifest.delta) {
            (Some(plan), Some(spec)) => {
                builder
                    .append_data(&mut header, archive_path, Encoder::new(file, plan, spec.block_size))
                    .map_err(|source| io_error(output_name, source))?;
                delta_entries += 1;
            }
            _ if one_pass => {
                let mut hashing = Hashing { inner: file.take(entry.size), hasher: DigestKind::Blake3.hasher(), count: 0 };
                builder.append_data(&mut header, archive_path, &mut hashing).map_err(|source| io_error(output_name, source))?;
                // A file that shrank meanwhile gave fewer bytes than its header said.
                if hashing.count != entry.size {
                    return Err(changed(disk_path));
                }
                digests.push(hashing.hasher.hex());
            }
            _ => {
                builder
                    .append_data(&mut header, archive_path, file)
                    .map_err(|source| io_error(output_name, source))?;
            }
        }
        raw_bytes += entry.size;
    }
    if one_pass {
        // The same manifest, now with every digest, closes the stream.
        for (entry, digest) in manifest.entries.iter_mut().zip(digests) {
            entry.blake3 = digest;
        }
        manifest.validate()?;
        let final_json = serde_json::to_vec_pretty(manifest)
            .map_err(|e| Error::Manifest(format!("cannot encode manifest: {e}")))?;
        raw_bytes += append_sealed(&mut builder, (TRAILER_ENTRY, TRAILER_SEAL), &final_json, signer, manifest.created_unix)?;
    }

    let encoder = builder.into_inner().map_err(|source| io_error(output_name, source))?;
    let mut counted = encoder.finish().map_err(|source| io_error(output_name, source))?;
    counted.flush().map_err(|source| io_error(output_name, source))?;
    Ok(PackStats { raw_bytes, compressed_bytes: counted.count, delta_entries })
}

/// Appends a manifest's bytes as the entry `names.0`, and its seal as
/// `names.1` when there is a `signer`. Returns the bytes appended.
fn append_sealed(
    builder: &mut tar::Builder<impl Write>,
    names: (&str, &str),
    json: &[u8],
    signer: Option<&dyn Sign>,
    mtime: u64,
) -> Result<u64> {
    let output = |source| io_error(Path::new("payload output"), source);
    builder.append_data(&mut entry_header(json.len() as u64, mtime), names.0, json).map_err(output)?;
    let Some(signer) = signer else { return Ok(json.len() as u64) };
    let seal = serde_json::to_vec(&signer.seal(json)).map_err(|e| Error::Manifest(format!("cannot encode the seal: {e}")))?;
    builder.append_data(&mut entry_header(seal.len() as u64, mtime), names.1, seal.as_slice()).map_err(output)?;
    Ok((json.len() + seal.len()) as u64)
}

/// A reader that hashes and counts what passes through it.
struct Hashing<R> {
    inner: R,
    hasher: super::Hasher,
    count: u64,
}

impl<R: io::Read> io::Read for Hashing<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.hasher.update(&buf[..n]);
        self.count += n as u64;
        Ok(n)
    }
}

fn changed(path: &Path) -> Error {
    io_error(path, io::Error::other("file changed while it was being packed"))
}

fn entry_header(size: u64, mtime: u64) -> tar::Header {
    let mut header = tar::Header::new_gnu();
    header.set_entry_type(tar::EntryType::Regular);
    header.set_size(size);
    header.set_mode(0o600);
    header.set_mtime(mtime);
    header
}

fn open(path: &Path) -> Result<File> {
    File::open(path).map_err(|source| io_error(path, source))
}

fn io_error(path: &Path, source: io::Error) -> Error {
    Error::Io { path: path.to_path_buf(), source }
}
