//! Content deltas (format 4, issue 14): a large entry is sent as the blocks
//! the receiver lacks, and references to the blocks it already holds from a
//! verified earlier copy of the same container (a snapshot, a pre-copy round,
//! or the part of an upload that arrived before its connection broke).
//!
//! ```text
//! an entry with "delta": N in the manifest is N bytes of operations in the tar,
//! one per block of the file it rebuilds, in order:
//!   0x00  id[16]          copy the receiver's block with this id
//!   0x01  bytes[len]      these bytes (len = block size, shorter for the last)
//! and the entry's digest is the BLAKE3 of its blocks' BLAKE3s (`blocks_blake3`).
//! ```
//!
//! Blocks are found by *content*, not by position: a block's id is the first
//! 16 bytes of the BLAKE3 of its bytes, so a page that CRIU writes at another
//! offset in the next dump (a mapping grew, a thread started) still matches.
//! Nothing here is trusted: every copied block is hashed again as it is read
//! from the receiver's disk (a base altered there is found at once, and the
//! sender falls back to a full send), and the rebuilt file must match the
//! signed manifest's digest like any other entry. A delta therefore restores
//! exactly what the source dumped, or nothing.
//!
//! 4 KiB blocks (the page size of every board ferry targets): CRIU's page
//! images are runs of whole pages, and an app that dirties one page dirties
//! one block; at 64 KiB a page dirtied at random costs sixteen times its size
//! on the wire. What a block costs when it matches: 17 bytes (0.4 %).

use std::collections::{HashMap, HashSet};
use std::fs::File;
use std::io::{self, Read, Seek, SeekFrom};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use super::{BlockHasher, Error, Result};

/// The block size ferry writes; a reader takes any power of two in [`BLOCK_SIZES`].
pub(crate) const BLOCK_SIZE: u32 = 4096;
pub(crate) const BLOCK_SIZES: std::ops::RangeInclusive<u32> = 512..=1024 * 1024;
/// Entries smaller than this always go whole: a manifest line costs more than
/// what a delta of them would save.
pub(crate) const DELTA_MIN: u64 = 64 * 1024;

const COPY: u8 = 0;
const LITERAL: u8 = 1;

/// A block's identity: the first 16 bytes of its BLAKE3.
pub(crate) type BlockId = [u8; 16];

pub(crate) fn block_id(bytes: &[u8]) -> BlockId {
    id_of(&blake3::hash(bytes))
}

fn id_of(hash: &blake3::Hash) -> BlockId {
    let mut id = [0u8; 16];
    id.copy_from_slice(&hash.as_bytes()[..16]);
    id
}

/// The most bytes a delta of a `size`-byte file can take: every block literal.
pub(crate) fn max_delta_size(size: u64, block_size: u32) -> u64 {
    let blocks = size.div_ceil(u64::from(block_size));
    size.saturating_add(blocks)
}

/// What a receiver says it holds: the ids of its blocks, for the sender to
/// decide block by block what to send.
#[derive(Debug, Clone, Default)]
pub(crate) struct Offer {
    pub block_size: u32,
    pub ids: HashSet<BlockId>,
}

impl Offer {
    /// From the concatenated 16-byte ids the receiver sent.
    pub(crate) fn from_bytes(block_size: u32, bytes: &[u8]) -> Option<Offer> {
        if !BLOCK_SIZES.contains(&block_size) || !block_size.is_power_of_two() || !bytes.len().is_multiple_of(16) {
            return None;
        }
        let ids = bytes.chunks_exact(16).map(|c| c.try_into().unwrap_or_default()).collect();
        Some(Offer { block_size, ids })
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.ids.is_empty()
    }
}

/// How one file is to be sent as a delta, decided by the first pass over it.
#[derive(Debug, Clone, Default)]
pub(crate) struct Plan {
    /// The id of every block the receiver holds, in file order.
    pub copies: Vec<BlockId>,
    /// Per block: true where it goes as a copy.
    pub copied: Vec<bool>,
    /// Bytes of operations this file takes in the payload.
    pub delta_size: u64,
}

/// Reads `file` once, hashing each block once: its digest (of the blocks,
/// `DigestKind::Blake3Blocks`) and, per block, whether `offer` holds it.
/// Returns (size, digest hex, plan).
pub(crate) fn plan(file: &mut File, offer: &Offer) -> io::Result<(u64, String, Plan)> {
    let block_size = offer.block_size as usize;
    let mut hasher = BlockHasher::new(offer.block_size);
    let mut plan = Plan::default();
    let mut block = vec![0u8; block_size];
    let mut size = 0u64;
    loop {
        let n = read_full(file, &mut block)?;
        if n == 0 {
            break;
        }
        let bytes = &block[..n];
        let hash = blake3::hash(bytes);
        hasher.add_block(&hash);
        size += n as u64;
        let id = id_of(&hash);
        if offer.ids.contains(&id) {
            plan.copies.push(id);
            plan.copied.push(true);
            plan.delta_size += 1 + 16;
        } else {
            plan.copied.push(false);
            plan.delta_size += 1 + n as u64;
        }
        if n < block_size {
            break;
        }
    }
    Ok((size, hasher.finish().to_hex().to_string(), plan))
}

/// Fills `buffer` unless the file ends first; returns the bytes read.
fn read_full(reader: &mut impl Read, buffer: &mut [u8]) -> io::Result<usize> {
    let mut filled = 0;
    while filled < buffer.len() {
        match reader.read(&mut buffer[filled..]) {
            Ok(0) => break,
            Ok(n) => filled += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        }
    }
    Ok(filled)
}

/// The operations of one planned file, as a `Read` for the tar builder:
/// copies come from the plan, literals from the file (read again, from the
/// page cache), one block at a time.
pub(crate) struct Encoder<'a> {
    file: File,
    plan: &'a Plan,
    block: Vec<u8>,
    next_block: usize,
    next_copy: usize,
    pending: Vec<u8>,
    at: usize,
}

impl<'a> Encoder<'a> {
    pub(crate) fn new(file: File, plan: &'a Plan, block_size: u32) -> Encoder<'a> {
        Encoder {
            file,
            plan,
            block: vec![0u8; block_size as usize],
            next_block: 0,
            next_copy: 0,
            pending: Vec::with_capacity(block_size as usize + 1),
            at: 0,
        }
    }

    /// Puts the next block's operation in `pending`; false at the end.
    fn refill(&mut self) -> io::Result<bool> {
        let Some(&copied) = self.plan.copied.get(self.next_block) else { return Ok(false) };
        self.next_block += 1;
        self.pending.clear();
        self.at = 0;
        if copied {
            let id = self.plan.copies.get(self.next_copy).ok_or_else(|| io::Error::other("delta plan is inconsistent"))?;
            self.next_copy += 1;
            self.pending.push(COPY);
            self.pending.extend_from_slice(id);
            // The receiver has it: skip its bytes here.
            self.file.seek(SeekFrom::Current(self.block.len() as i64))?;
        } else {
            let n = read_full(&mut self.file, &mut self.block)?;
            if n == 0 {
                return Err(io::Error::other("file shrank while it was being packed"));
            }
            self.pending.push(LITERAL);
            self.pending.extend_from_slice(&self.block[..n]);
        }
        Ok(true)
    }
}

impl Read for Encoder<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if self.at == self.pending.len() && !self.refill()? {
            return Ok(0);
        }
        let n = (self.pending.len() - self.at).min(buf.len());
        buf[..n].copy_from_slice(&self.pending[self.at..self.at + n]);
        self.at += n;
        Ok(n)
    }
}

/// Where a receiver's blocks are: built from the files of its earlier copies.
#[derive(Debug, Default)]
pub(crate) struct Base {
    pub block_size: u32,
    files: Vec<PathBuf>,
    /// Block id → (index in `files`, byte offset, length).
    blocks: HashMap<BlockId, (u32, u64, u32)>,
}

impl Base {
    /// Indexes every file of at least [`DELTA_MIN`] bytes under `dirs` (the
    /// copies a delta may refer to), block by block.
    pub(crate) fn index(dirs: &[PathBuf], block_size: u32) -> io::Result<Base> {
        let mut base = Base { block_size, ..Base::default() };
        let mut block = vec![0u8; block_size as usize];
        for dir in dirs {
            for (_, path) in crate::host::list_files(dir)? {
                let mut file = File::open(&path)?;
                if file.metadata()?.len() < DELTA_MIN {
                    continue;
                }
                let index = base.files.len() as u32;
                base.files.push(path);
                let mut offset = 0u64;
                loop {
                    let n = read_full(&mut file, &mut block)?;
                    if n == 0 {
                        break;
                    }
                    base.blocks.entry(block_id(&block[..n])).or_insert((index, offset, n as u32));
                    offset += n as u64;
                    if n < block.len() {
                        break;
                    }
                }
            }
        }
        Ok(base)
    }

    /// The ids, concatenated: what the receiver offers.
    pub(crate) fn ids(&self) -> Vec<u8> {
        let mut bytes = Vec::with_capacity(self.blocks.len() * 16);
        for id in self.blocks.keys() {
            bytes.extend_from_slice(id);
        }
        bytes
    }

    pub(crate) fn len(&self) -> usize {
        self.blocks.len()
    }

    /// Reads the block `id` into `out`, which must be its length (the caller
    /// checks it is still what was indexed).
    fn read(&self, id: &BlockId, out: &mut [u8], files: &mut HashMap<u32, File>) -> std::result::Result<(), String> {
        let &(index, offset, length) = self.blocks.get(id).ok_or("it is not here")?;
        if length as usize != out.len() {
            return Err(format!("it is {length} bytes here, {} in the delta", out.len()));
        }
        let path = &self.files[index as usize];
        let file = match files.entry(index) {
            std::collections::hash_map::Entry::Occupied(open) => open.into_mut(),
            std::collections::hash_map::Entry::Vacant(slot) => {
                slot.insert(File::open(path).map_err(|e| format!("{}: {e}", path.display()))?)
            }
        };
        file.read_exact_at(out, offset).map_err(|e| format!("{}: {e}", path.display()))?;
        Ok(())
    }

    /// Where a block is, for an error message.
    fn place(&self, id: &BlockId) -> String {
        match self.blocks.get(id) {
            Some(&(index, offset, _)) => format!("{} at byte {offset}", self.files[index as usize].display()),
            None => "?".into(),
        }
    }
}

/// Rebuilds one `size`-byte file from its operations (exactly the `reader`'s
/// bytes) into `out`, with `base`'s blocks; returns its digest
/// (`DigestKind::Blake3Blocks`). Each block is hashed once: that hash checks a
/// copied block against its id and feeds the file's digest.
/// `entry` names it in errors, `target` is where `out` writes.
pub(crate) fn rebuild(
    (entry, target): (&str, &Path),
    reader: &mut impl Read,
    out: &mut impl io::Write,
    size: u64,
    base: Option<&Base>,
    block_size: u32,
) -> Result<String> {
    let corrupt = |detail: String| Error::Checksum { entry: entry.to_string(), detail };
    let mut hasher = BlockHasher::new(block_size);
    let mut block = vec![0u8; block_size as usize];
    let mut files = HashMap::new();
    let mut written = 0u64;
    while written < size {
        let length = (size - written).min(u64::from(block_size)) as usize;
        let mut tag = [0u8; 1];
        reader.read_exact(&mut tag).map_err(|e| Error::Corrupt(format!("{entry}: {e}")))?;
        let bytes = &mut block[..length];
        match tag[0] {
            COPY => {
                let mut id = [0u8; 16];
                reader.read_exact(&mut id).map_err(|e| Error::Corrupt(format!("{entry}: {e}")))?;
                let Some(base) = base else {
                    return Err(Error::BaseMissing(format!("{entry} refers to blocks this host holds, and it holds none")));
                };
                base.read(&id, bytes, &mut files).map_err(|why| {
                    Error::BaseMissing(format!("{entry} needs block {} at byte {written}: {why}", super::hex(&id)))
                })?;
                let hash = blake3::hash(bytes);
                if id_of(&hash) != id {
                    return Err(Error::BaseMissing(format!(
                        "{entry} needs block {}, and {} changed since it was indexed",
                        super::hex(&id),
                        base.place(&id)
                    )));
                }
                hasher.add_block(&hash);
            }
            LITERAL => {
                reader.read_exact(bytes).map_err(|e| Error::Corrupt(format!("{entry}: {e}")))?;
                hasher.add_block(&blake3::hash(bytes));
            }
            other => return Err(corrupt(format!("operation {other:#04x} at byte {written} is not a delta operation"))),
        }
        out.write_all(bytes).map_err(|source| Error::Io { path: target.to_path_buf(), source })?;
        written += length as u64;
    }
    let mut rest = [0u8; 1];
    match reader.read(&mut rest) {
        Ok(0) => Ok(hasher.finish().to_hex().to_string()),
        Ok(_) => Err(corrupt(format!("the delta goes on after the {size} bytes the manifest lists"))),
        Err(e) => Err(Error::Corrupt(format!("{entry}: {e}"))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::payload::{digest_hex, DigestKind};

    fn file_with(dir: &Path, name: &str, bytes: &[u8]) -> PathBuf {
        let path = dir.join(name);
        std::fs::write(&path, bytes).unwrap();
        path
    }

    use crate::testing::noise;

    fn encode(path: &Path, offer: &Offer) -> (u64, String, Vec<u8>) {
        let (size, digest, plan) = plan(&mut File::open(path).unwrap(), offer).unwrap();
        let mut ops = Vec::new();
        Encoder::new(File::open(path).unwrap(), &plan, offer.block_size).read_to_end(&mut ops).unwrap();
        assert_eq!(ops.len() as u64, plan.delta_size);
        assert!(plan.delta_size <= max_delta_size(size, offer.block_size));
        (size, digest, ops)
    }

    #[test]
    fn a_delta_sends_only_changed_blocks_and_rebuilds_the_exact_file() {
        let dir = crate::testing::TempDir::new("delta-rebuild");
        let old_dir = dir.path().join("old");
        std::fs::create_dir(&old_dir).unwrap();
        let old = noise(256 * 1024 + 100, 7);
        file_with(&old_dir, "pages-1.img", &old);
        let base = Base::index(&[old_dir], BLOCK_SIZE).unwrap();
        let offer = Offer::from_bytes(BLOCK_SIZE, &base.ids()).unwrap();

        // Two pages changed, and everything moved by one page.
        let mut new = vec![0u8; 4096];
        new.extend_from_slice(&old);
        new[4096 * 10..4096 * 11].copy_from_slice(&noise(4096, 99));
        new[4096 * 40..4096 * 41].copy_from_slice(&noise(4096, 98));
        let path = file_with(dir.path(), "new.img", &new);
        let (size, digest, ops) = encode(&path, &offer);
        // Three literal pages (the zero page, two changed) and a changed tail.
        assert!(ops.len() < 5 * 4096, "{} bytes of delta", ops.len());

        let mut rebuilt = Vec::new();
        let got = rebuild(("e", &path), &mut ops.as_slice(), &mut rebuilt, size, Some(&base), BLOCK_SIZE).unwrap();
        assert_eq!(got, digest);
        assert_eq!(rebuilt, new);
        // The same digest as hashing the file block by block in any pieces.
        assert_eq!(digest_hex(DigestKind::Blake3Blocks(BLOCK_SIZE), new.as_slice()).unwrap().1, digest);
    }

    #[test]
    fn a_block_altered_in_the_base_is_missing_not_rebuilt() {
        let dir = crate::testing::TempDir::new("delta-altered");
        let base_dir = dir.path().join("base");
        std::fs::create_dir(&base_dir).unwrap();
        let old = noise(128 * 1024, 3);
        let old_path = file_with(&base_dir, "pages-1.img", &old);
        let base = Base::index(&[base_dir], BLOCK_SIZE).unwrap();
        let offer = Offer::from_bytes(BLOCK_SIZE, &base.ids()).unwrap();
        let new_path = file_with(dir.path(), "new.img", &old);
        let (size, _, ops) = encode(&new_path, &offer);

        let mut altered = old.clone();
        altered[5000] ^= 1;
        std::fs::write(&old_path, &altered).unwrap();
        let error = rebuild(("e", &old_path), &mut ops.as_slice(), &mut Vec::new(), size, Some(&base), BLOCK_SIZE)
            .unwrap_err();
        assert!(matches!(error, Error::BaseMissing(_)), "{error}");
        let error = rebuild(("e", &old_path), &mut ops.as_slice(), &mut Vec::new(), size, None, BLOCK_SIZE).unwrap_err();
        assert!(matches!(error, Error::BaseMissing(_)), "{error}");
    }

    #[test]
    fn malformed_operations_are_refused() {
        let path = Path::new("x");
        for (ops, size) in [(vec![7u8, 0, 0], 3u64), (vec![LITERAL, 1, 2], 3), (vec![LITERAL, 1, 2, 3, 4], 3)] {
            let error = rebuild(("e", path), &mut ops.as_slice(), &mut Vec::new(), size, None, BLOCK_SIZE);
            assert!(error.is_err(), "{ops:?} accepted");
        }
        assert!(Offer::from_bytes(4096, &[0u8; 15]).is_none());
        assert!(Offer::from_bytes(4000, &[0u8; 16]).is_none());
    }
}
