//! The write side: files on disk → tar → lz4 → any `Write`.

use std::fs::File;
use std::io::{self, Write};
use std::path::{Path, PathBuf};

use lz4_flex::frame::{FrameEncoder, FrameInfo};

use super::delta::{self, Encoder, Offer, Plan};
use super::manifest::{DeltaSpec, FORMAT_WHOLE};
use super::seal::{Sign, SEAL_ENTRY};
use super::{digest_hex, Counting, DigestKind, Entry, Error, Manifest, Result, MANIFEST_ENTRY};

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

/// Packs `files` (archive path, file on disk) behind a manifest that lists
/// their sizes and digests, sealed by `signer` when given, and writes the
/// payload to `output`.
///
/// Each file is read twice: once to hash it (the manifest goes first), once to
/// pack it. The second read comes from the page cache; memory stays at a few
/// buffers whatever the sizes.
#[cfg(any(test, fuzzing))]
pub(crate) fn pack(
    manifest: &mut Manifest,
    files: &[(String, PathBuf)],
    output: impl Write,
    block: lz4_flex::frame::BlockSize,
    signer: Option<&dyn Sign>,
) -> Result<PackStats> {
    pack_delta(manifest, files, output, block, signer, None)
}

/// [`pack`], sending each entry of at least [`delta::DELTA_MIN`] bytes as a
/// delta against the blocks the receiver `offer`s (format 4), when that
/// saves bytes. The first read of a file then also decides, block by block,
/// what the receiver lacks.
pub(crate) fn pack_delta(
    manifest: &mut Manifest,
    files: &[(String, PathBuf)],
    output: impl Write,
    block: lz4_flex::frame::BlockSize,
    signer: Option<&dyn Sign>,
    offer: Option<(&Offer, &str)>,
) -> Result<PackStats> {
    manifest.entries.clear();
    manifest.delta = None;
    let mut plans: Vec<Option<Plan>> = Vec::with_capacity(files.len());
    for (archive_path, disk_path) in files {
        let mut file = open(disk_path)?;
        let size = file.metadata().map_err(|source| io_error(disk_path, source))?.len();
        match offer.filter(|(offer, _)| size >= delta::DELTA_MIN && !offer.is_empty()) {
            Some((offer, _)) => {
                let (size, blake3, plan) =
                    delta::plan(&mut file, DigestKind::Blake3, offer).map_err(|source| io_error(disk_path, source))?;
                let mut entry = Entry::new(archive_path.clone(), size, blake3);
                // A delta only where it is smaller than the file.
                if plan.delta_size < size {
                    entry.delta = Some(plan.delta_size);
                    plans.push(Some(plan));
                } else {
                    plans.push(None);
                }
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
        manifest.format = super::FORMAT_VERSION;
        manifest.delta = Some(DeltaSpec { block_size: offer.block_size, base: base.to_string() });
    } else {
        manifest.format = FORMAT_WHOLE;
    }
    manifest.validate()?;
    let manifest_json = serde_json::to_vec_pretty(manifest)
        .map_err(|e| Error::Manifest(format!("cannot encode manifest: {e}")))?;

    let output_name = Path::new("payload output");
    let counted = Counting::new(output);
    let mut frame_info = FrameInfo::new();
    frame_info.block_size = block;
    let encoder = FrameEncoder::with_frame_info(frame_info, counted);
    let mut builder = tar::Builder::new(encoder);

    let mut header = entry_header(manifest_json.len() as u64, manifest.created_unix);
    builder
        .append_data(&mut header, MANIFEST_ENTRY, manifest_json.as_slice())
        .map_err(|source| io_error(output_name, source))?;
    let mut raw_bytes = manifest_json.len() as u64;
    if let Some(signer) = signer {
        let seal = serde_json::to_vec(&signer.seal(&manifest_json))
            .map_err(|e| Error::Manifest(format!("cannot encode the seal: {e}")))?;
        let mut header = entry_header(seal.len() as u64, manifest.created_unix);
        builder.append_data(&mut header, SEAL_ENTRY, seal.as_slice()).map_err(|source| io_error(output_name, source))?;
        raw_bytes += seal.len() as u64;
    }

    let mut delta_entries = 0;
    for (((archive_path, disk_path), entry), plan) in files.iter().zip(&manifest.entries).zip(&plans) {
        let file = open(disk_path)?;
        let current = file.metadata().map_err(|source| io_error(disk_path, source))?.len();
        if current != entry.size {
            return Err(io_error(disk_path, io::Error::other("file changed while it was being packed")));
        }
        match (plan, &manifest.delta) {
            (Some(plan), Some(spec)) => {
                let mut header = entry_header(plan.delta_size, manifest.created_unix);
                builder
                    .append_data(&mut header, archive_path, Encoder::new(file, plan, spec.block_size))
                    .map_err(|source| io_error(output_name, source))?;
                raw_bytes += entry.size;
                delta_entries += 1;
            }
            _ => {
                let mut header = entry_header(entry.size, manifest.created_unix);
                builder
                    .append_data(&mut header, archive_path, file)
                    .map_err(|source| io_error(output_name, source))?;
                raw_bytes += entry.size;
            }
        }
    }

    let encoder = builder.into_inner().map_err(|source| io_error(output_name, source))?;
    let mut counted = encoder
        .finish()
        .map_err(|e| io_error(output_name, io::Error::other(e)))?;
    counted.flush().map_err(|source| io_error(output_name, source))?;
    Ok(PackStats { raw_bytes, compressed_bytes: counted.count, delta_entries })
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
