//! The payload format: one tar stream in lz4 frames, `manifest.json` first.
//!
//! ```text
//! lz4 frame (64 KiB blocks, each compressed or stored: lz4.rs)
//! └─ tar
//!    ├─ manifest.json          what was packed, from where, and the digest of every entry
//!                              (BLAKE3 from format 3, SHA-256 in formats 1 and 2; format 5:
//!                              sizes only, the digests come last)
//!    ├─ manifest.sig           the source host's signature of manifest.json (format 2, seal.rs)
//!    ├─ checkpoint/…           CRIU's image files (criu mode); in format 4 a
//!                              large one may come as a delta (delta.rs)
//!    ├─ rootfs/N.tar           files the app added or changed, as Docker's archive API gave them
//!    ├─ image.tar              the committed image, as `docker save` gave it (commit mode)
//!    ├─ manifest.final.json    format 5: manifest.json with every entry's BLAKE3
//!    └─ manifest.final.sig     format 5: its signature
//! ```
//!
//! The manifest comes first so that a receiver knows the total size, and
//! whether it trusts the sender, before it writes anything. Up to format 4 it
//! lists every digest, so the sender reads each file twice (hash, then send)
//! and the receiver checks each entry as it arrives. Format 5 takes one pass:
//! the sender hashes as it sends, and the receiver, which writes only into its
//! own new folder, checks every entry against the closing manifest before it
//! answers — nothing is used from a payload before all of it is checked (but
//! an agent's early container, never started before, gets the app's files:
//! see [`Arrived`]).
//! This module knows nothing of Docker: it packs files and unpacks streams.

pub(crate) mod delta;
pub(crate) mod images;
mod lz4;
mod manifest;
mod pack;
mod seal;
mod unpack;

use std::fmt;
use std::io;
use std::path::PathBuf;

pub(crate) use manifest::{
    ContainerSpec, Entry, HostLimits, Manifest, Mode, RootfsArchive, RootfsChanges, SourceHost, FORMAT_STREAMED,
    FORMAT_VERSION, is_name, normalize_arch, SnapshotTag,
};
pub(crate) use pack::{pack, Layout, PackStats};
#[cfg(any(test, fuzzing))]
pub(crate) use seal::Unchecked;
pub(crate) use seal::{Seal, Sign, Signer, Verify, SEAL_ENTRY};
#[cfg(any(test, fuzzing))]
pub(crate) use unpack::unpack;
pub(crate) use unpack::{unpack_with, verify_tree, Arrived, Receive, Unpacked};

/// Archive path of the manifest, always the first entry.
pub(crate) const MANIFEST_ENTRY: &str = "manifest.json";
/// Archive folder of CRIU's images.
pub(crate) const CHECKPOINT_DIR: &str = "checkpoint";
/// Archive folder of the rootfs change archives.
pub(crate) const ROOTFS_DIR: &str = "rootfs";
/// Archive path of the committed image (commit mode).
pub(crate) const IMAGE_ENTRY: &str = "image.tar";
/// Archive path of the manifest with every digest that closes a one-pass payload (format 5).
pub(crate) const TRAILER_ENTRY: &str = "manifest.final.json";
/// Archive path of its seal, the last entry when present.
pub(crate) const TRAILER_SEAL: &str = "manifest.final.sig";

#[derive(Debug)]
pub(crate) enum Error {
    /// Reading a source file or writing the destination failed.
    Io { path: PathBuf, source: io::Error },
    /// The stream is not a payload, or ended early, or is damaged.
    Corrupt(String),
    /// An entry's bytes do not match the manifest.
    Checksum { entry: String, detail: String },
    /// An entry would write outside the destination, or is a kind ferry never packs.
    Unsafe { entry: String, reason: String },
    /// The payload was written by a newer ferry.
    Format { found: u32 },
    /// The payload was made on another CPU architecture.
    Arch { payload: String, host: String },
    /// The manifest is well-formed JSON but says something impossible.
    Manifest(String),
    /// The payload unpacks to more than the receiver allows.
    TooLarge { bytes: u64, limit: u64 },
    /// A CRIU image is malformed or asks for more than this host grants.
    Image { image: String, detail: String },
    /// The payload's seal is missing, unreadable, untrusted or does not verify.
    Signature(String),
    /// A delta entry refers to blocks this host does not hold (any more).
    BaseMissing(String),
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::Io { path, source } => write!(f, "{}: {source}", path.display()),
            Error::Corrupt(detail) => write!(f, "payload is truncated or corrupt: {detail}"),
            Error::Checksum { entry, detail } => {
                write!(f, "payload entry {entry} is damaged ({detail}) — send the payload again")
            }
            Error::Unsafe { entry, reason } => write!(f, "payload entry {entry:?} refused: {reason}"),
            Error::Format { found } => write!(
                f,
                "payload format {found} is newer than this ferry understands (format {FORMAT_VERSION}) \
                 — upgrade ferry on this host"
            ),
            Error::Arch { payload, host } => write!(
                f,
                "payload was made on {payload} but this host is {host}: CRIU images cannot cross CPU \
                 architectures — restore it on a {payload} host"
            ),
            Error::Manifest(detail) => write!(f, "payload manifest is invalid: {detail}"),
            Error::TooLarge { bytes, limit } => {
                write!(f, "payload unpacks to {bytes} bytes, more than the {limit} bytes allowed here")
            }
            Error::Image { image, detail } => write!(f, "{image}: {detail}"),
            Error::Signature(detail) => write!(f, "payload refused: {detail}"),
            Error::BaseMissing(detail) => {
                write!(f, "a delta needs blocks this host does not hold: {detail} — send the whole payload")
            }
        }
    }
}

impl std::error::Error for Error {}

pub(crate) type Result<T> = std::result::Result<T, Error>;

/// The lz4 block size of ferry payloads, unless a board profile asks for larger.
pub(crate) const LZ4_BLOCK: lz4_flex::frame::BlockSize = lz4_flex::frame::BlockSize::Max64KB;

/// The digest of a payload's entries: BLAKE3 from format 3 on, SHA-256
/// before. BLAKE3 because a Raspberry Pi 3 or 4 has no SHA instructions: its
/// NEON code hashes ≈ 4.6 cycles per byte on a Cortex-A53 where software
/// SHA-256 takes ≈ 16, and on x86 with AVX2 it outruns even SHA-NI.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum DigestKind {
    Sha256,
    Blake3,
    /// The BLAKE3 of the BLAKE3s of the file's blocks of this size, one
    /// after the other (format 4, delta entries): the block hashes a delta
    /// needs anyway give the file's digest, so each side hashes a file once.
    Blake3Blocks(u32),
}

impl DigestKind {
    pub(crate) fn name(self) -> &'static str {
        match self {
            DigestKind::Sha256 => "SHA-256",
            DigestKind::Blake3 => "BLAKE3",
            DigestKind::Blake3Blocks(_) => "BLAKE3 of blocks",
        }
    }

    pub(crate) fn hasher(self) -> Hasher {
        match self {
            DigestKind::Sha256 => Hasher::Sha256(Box::default()),
            DigestKind::Blake3 => Hasher::Blake3(Box::default()),
            DigestKind::Blake3Blocks(size) => Hasher::Blocks(Box::new(BlockHasher::new(size))),
        }
    }
}

/// An incremental digest of any kind.
pub(crate) enum Hasher {
    Sha256(Box<sha2::Sha256>),
    Blake3(Box<blake3::Hasher>),
    Blocks(Box<BlockHasher>),
}

impl Hasher {
    pub(crate) fn update(&mut self, bytes: &[u8]) {
        match self {
            Hasher::Sha256(hasher) => sha2::Digest::update(hasher.as_mut(), bytes),
            Hasher::Blake3(hasher) => {
                hasher.update(bytes);
            }
            Hasher::Blocks(hasher) => hasher.update(bytes),
        }
    }

    /// The digest as lower-case hex.
    pub(crate) fn hex(self) -> String {
        match self {
            Hasher::Sha256(hasher) => hex(&sha2::Digest::finalize(*hasher)),
            Hasher::Blake3(hasher) => hasher.finalize().to_hex().to_string(),
            Hasher::Blocks(hasher) => hasher.finish().to_hex().to_string(),
        }
    }
}

/// [`DigestKind::Blake3Blocks`], fed any way: bytes are cut into blocks here.
pub(crate) struct BlockHasher {
    block_size: usize,
    block: blake3::Hasher,
    filled: usize,
    list: blake3::Hasher,
}

impl BlockHasher {
    pub(crate) fn new(block_size: u32) -> BlockHasher {
        BlockHasher { block_size: block_size as usize, block: blake3::Hasher::new(), filled: 0, list: blake3::Hasher::new() }
    }

    pub(crate) fn update(&mut self, mut bytes: &[u8]) {
        while !bytes.is_empty() {
            let take = (self.block_size - self.filled).min(bytes.len());
            self.block.update(&bytes[..take]);
            self.filled += take;
            bytes = &bytes[take..];
            if self.filled == self.block_size {
                let hash = self.block.finalize();
                self.add_block(&hash);
                self.block.reset();
                self.filled = 0;
            }
        }
    }

    /// Adds a whole block whose hash the caller computed (and nothing is pending).
    pub(crate) fn add_block(&mut self, hash: &blake3::Hash) {
        self.list.update(hash.as_bytes());
    }

    pub(crate) fn finish(mut self) -> blake3::Hash {
        if self.filled > 0 {
            let hash = self.block.finalize();
            self.add_block(&hash);
        }
        self.list.finalize()
    }
}

/// The size and hex digest of a stream, read in 64 KiB pieces.
pub(crate) fn digest_hex(kind: DigestKind, mut reader: impl io::Read) -> io::Result<(u64, String)> {
    let mut hasher = kind.hasher();
    let mut buffer = vec![0u8; 64 * 1024];
    let mut total = 0u64;
    loop {
        let n = match reader.read(&mut buffer) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        };
        hasher.update(&buffer[..n]);
        total += n as u64;
    }
    Ok((total, hasher.hex()))
}

pub(crate) fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Counts the bytes that pass through a reader or writer.
pub(crate) struct Counting<T> {
    pub(crate) inner: T,
    pub(crate) count: u64,
}

impl<T> Counting<T> {
    pub(crate) fn new(inner: T) -> Counting<T> {
        Counting { inner, count: 0 }
    }
}

impl<R: io::Read> io::Read for Counting<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.count += n as u64;
        Ok(n)
    }
}

impl<W: io::Write> io::Write for Counting<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.count += n as u64;
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

#[cfg(test)]
mod tests;
