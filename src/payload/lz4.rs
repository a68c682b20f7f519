//! The payload's lz4 frame writer: lz4 where it helps, stored blocks where it
//! does not, decided block by block in the one pass.
//!
//! lz4_flex's `FrameEncoder` compresses every block and stores it raw when
//! that did not make it smaller: on random pages the attempt costs the
//! sender ≈ 0.1 s per 128 MiB here for nothing. This writer makes the same
//! frames (independent blocks, no checksums: BLAKE3 covers the payload) with
//! lz4_flex's block compressor, and after a block that did not compress it
//! stores the next ones without trying, 1, 2, 4 … up to [`MAX_SKIP`] blocks,
//! then tries again; one block that compresses ends the skipping. Memory that
//! compresses (a Redis heap) is compressed block by block as before; memory
//! that does not costs one attempt per `MAX_SKIP` blocks. lz4_flex's
//! `FrameDecoder` reads what it writes, and any lz4 tool does.

use std::io::{self, Write};

use lz4_flex::block::{compress_into_with_table, get_maximum_output_size, CompressTable};
use lz4_flex::frame::BlockSize;

const MAGIC: u32 = 0x184D_2204;
/// FLG: version 01, independent blocks, no checksums, no content size.
const FLG: u8 = 0b0110_0000;
/// A block whose lz4 is above this share of it (in 1/32) did not compress.
const WORTH_OF_32: usize = 31;
/// The most blocks stored untried after blocks that did not compress.
pub(crate) const MAX_SKIP: u32 = 64;
const UNCOMPRESSED: u32 = 1 << 31;

/// Counts of what the writer did, for tests and reports.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Blocks {
    pub compressed: u64,
    /// Tried, and stored because lz4 did not make them smaller.
    pub stored_tried: u64,
    /// Stored without trying (skipped after blocks that did not compress).
    pub stored_untried: u64,
}

/// Writes one lz4 frame of what is written to it into `inner`; call
/// [`Lz4Writer::finish`] to end the frame.
pub(crate) struct Lz4Writer<W: Write> {
    inner: W,
    block_size: usize,
    bd: u8,
    started: bool,
    src: Vec<u8>,
    dst: Vec<u8>,
    table: CompressTable,
    /// Blocks still to store untried, and how many the next miss skips.
    skip: u32,
    next_skip: u32,
    blocks: Blocks,
}

impl<W: Write> Lz4Writer<W> {
    pub(crate) fn new(inner: W, block: BlockSize) -> Self {
        let (block_size, bd) = match block {
            BlockSize::Auto | BlockSize::Max64KB => (64 << 10, 4),
            BlockSize::Max256KB => (256 << 10, 5),
            BlockSize::Max1MB => (1 << 20, 6),
            // 8 MB blocks are lz4_flex's own, not lz4's: ferry writes 4 MB ones.
            BlockSize::Max4MB | BlockSize::Max8MB => (4 << 20, 7),
        };
        Self {
            inner,
            block_size,
            bd,
            started: false,
            src: Vec::with_capacity(block_size),
            dst: vec![0; get_maximum_output_size(block_size)],
            table: CompressTable::large(),
            skip: 0,
            next_skip: 1,
            blocks: Blocks::default(),
        }
    }

    fn start(&mut self) -> io::Result<()> {
        if self.started {
            return Ok(());
        }
        let descriptor = [FLG, self.bd << 4];
        let checksum = (twox_hash::XxHash32::oneshot(0, &descriptor) >> 8) as u8;
        let mut header = [0u8; 7];
        header[..4].copy_from_slice(&MAGIC.to_le_bytes());
        header[4..6].copy_from_slice(&descriptor);
        header[6] = checksum;
        self.inner.write_all(&header)?;
        self.started = true;
        Ok(())
    }

    fn write_block(&mut self) -> io::Result<()> {
        if self.src.is_empty() {
            return Ok(());
        }
        self.start()?;
        let len = self.src.len();
        if self.skip > 0 {
            self.skip -= 1;
            self.blocks.stored_untried += 1;
            return self.store();
        }
        let compressed = compress_into_with_table(&self.src, &mut self.dst, &mut self.table).map_err(io::Error::other)?;
        if compressed * 32 <= len * WORTH_OF_32 {
            self.next_skip = 1;
        } else {
            self.skip = self.next_skip;
            self.next_skip = (self.next_skip * 2).min(MAX_SKIP);
        }
        if compressed >= len {
            self.blocks.stored_tried += 1;
            return self.store();
        }
        self.blocks.compressed += 1;
        self.inner.write_all(&(compressed as u32).to_le_bytes())?;
        self.inner.write_all(&self.dst[..compressed])?;
        self.src.clear();
        Ok(())
    }

    fn store(&mut self) -> io::Result<()> {
        self.inner.write_all(&(self.src.len() as u32 | UNCOMPRESSED).to_le_bytes())?;
        self.inner.write_all(&self.src)?;
        self.src.clear();
        Ok(())
    }

    /// Writes the last block and the end mark, and returns the output.
    pub(crate) fn finish(mut self) -> io::Result<W> {
        self.start()?;
        self.write_block()?;
        self.inner.write_all(&0u32.to_le_bytes())?;
        Ok(self.inner)
    }

    #[cfg(test)]
    pub(crate) fn blocks(&self) -> Blocks {
        self.blocks
    }
}

impl<W: Write> Write for Lz4Writer<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let room = self.block_size - self.src.len();
        let taken = buf.len().min(room);
        self.src.extend_from_slice(&buf[..taken]);
        if self.src.len() == self.block_size {
            self.write_block()?;
        }
        Ok(taken)
    }

    /// Flushes what is below: a partial block stays until it fills, so
    /// that flushing never makes the frame's blocks smaller.
    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

#[cfg(test)]
mod tests {
    use std::io::Read;

    use super::*;
    use crate::testing::noise;

    fn text(len: usize) -> Vec<u8> {
        (0..len).map(|i| b"key:1234 value:abcdefgh\n"[i % 24]).collect()
    }

    fn round_trip(data: &[u8], block: BlockSize) -> (Vec<u8>, Blocks) {
        let mut writer = Lz4Writer::new(Vec::new(), block);
        for chunk in data.chunks(10_007) {
            writer.write_all(chunk).unwrap();
        }
        let blocks = writer.blocks();
        let frame = writer.finish().unwrap();
        let mut back = Vec::new();
        lz4_flex::frame::FrameDecoder::new(frame.as_slice()).read_to_end(&mut back).unwrap();
        assert_eq!(back, data, "the frame gives back what was written");
        (frame, blocks)
    }

    #[test]
    fn lz4_flex_reads_every_frame_it_writes() {
        for block in [BlockSize::Max64KB, BlockSize::Max256KB, BlockSize::Max1MB, BlockSize::Max4MB] {
            round_trip(b"", block);
            round_trip(b"x", block);
            round_trip(&text(3 << 20), block);
            round_trip(&noise((1 << 20) + 17, 7), block);
        }
    }

    #[test]
    fn random_pages_are_stored_mostly_without_trying() {
        let data = noise(16 << 20, 1);
        let (frame, blocks) = round_trip(&data, BlockSize::Max64KB);
        assert_eq!(blocks.compressed, 0);
        let all = blocks.stored_tried + blocks.stored_untried;
        assert!(all >= 256 && blocks.stored_tried <= 12, "{blocks:?}: at most one try per {MAX_SKIP} blocks once skipping");
        // Stored blocks cost 4 bytes each, the frame 11.
        assert!(frame.len() <= data.len() + 4 * all as usize + 11);
    }

    #[test]
    fn memory_that_compresses_is_compressed_even_after_random_pages() {
        let mut data = noise(8 << 20, 2);
        data.extend(text(8 << 20));
        let (frame, blocks) = round_trip(&data, BlockSize::Max64KB);
        // The text starts at block 128; skipping delays its first try by at
        // most MAX_SKIP blocks, and then every block is compressed again.
        assert!(blocks.compressed >= 128 - u64::from(MAX_SKIP), "{blocks:?}");
        assert!(frame.len() < data.len() * 3 / 4, "{} bytes for {}", frame.len(), data.len());
    }
}
