//! CRIU's image framing (`criu/include/magic.h`, `lib/pycriu/images/images.py`):
//!
//! ```text
//! image     ::= magic { entry }
//! magic     ::= IMG_COMMON_MAGIC type_magic     (every image but inventory.img)
//!             | INVENTORY_MAGIC                 (inventory.img alone)
//! entry     ::= u32 length, little-endian       (the length of the message)
//!               protobuf message
//! ```
//!
//! Service files (stats, irmap cache) start with IMG_SERVICE_MAGIC instead;
//! ferry never needs them, so they are refused like any unknown magic. The
//! images read here carry no extra blob after their messages (pipe and socket
//! data images do; ferry does not decode those).
//!
//! Every length is checked against the bytes that remain before any slice is
//! taken, so a hostile length costs nothing: nothing is allocated here, the
//! caller holds the file, read up to a limit for its kind.

pub(crate) const IMG_COMMON_MAGIC: u32 = 0x5456_4319;
pub(crate) const INVENTORY_MAGIC: u32 = 0x5831_3116;
pub(crate) const PSTREE_MAGIC: u32 = 0x5027_3030;
pub(crate) const CORE_MAGIC: u32 = 0x5505_3847;
pub(crate) const MNTS_MAGIC: u32 = 0x5556_3928;
pub(crate) const CGROUP_MAGIC: u32 = 0x5938_3330;
pub(crate) const SECCOMP_MAGIC: u32 = 0x6441_3049;

/// The entries of one image, after its magic was checked.
pub(crate) struct Entries<'a> {
    rest: &'a [u8],
}

/// Why a file is not a well-formed image; the caller names the file.
pub(crate) type FrameError = String;

/// Checks the magic of `bytes` against `type_magic` and returns its entries.
pub(crate) fn open(bytes: &[u8], type_magic: u32) -> Result<Entries<'_>, FrameError> {
    let (first, rest) = take_u32(bytes).ok_or("too short for a CRIU image magic")?;
    if type_magic == INVENTORY_MAGIC {
        // CRIU writes inventory.img with its own magic alone (magic.h: "v1.1
        // has common magic in the head of each image file, except for inventory").
        return if first == INVENTORY_MAGIC {
            Ok(Entries { rest })
        } else {
            Err(format!("magic {first:#010x} is not the inventory's ({INVENTORY_MAGIC:#010x})"))
        };
    }
    if first != IMG_COMMON_MAGIC {
        return Err(format!("magic {first:#010x} is not CRIU's image magic ({IMG_COMMON_MAGIC:#010x})"));
    }
    let (second, rest) = take_u32(rest).ok_or("too short for a CRIU image magic")?;
    if second != type_magic {
        return Err(format!("image type magic {second:#010x} is not the expected {type_magic:#010x}"));
    }
    Ok(Entries { rest })
}

/// Frames `messages` as CRIU writes an image of kind `type_magic`: the
/// common magic (not for inventory.img), the type's, then each message
/// behind its little-endian u32 length.
pub(crate) fn encode<M: prost::Message>(type_magic: u32, messages: &[M]) -> Result<Vec<u8>, FrameError> {
    let encoded: Vec<Vec<u8>> = messages.iter().map(prost::Message::encode_to_vec).collect();
    frame(type_magic, encoded.iter().map(Vec::as_slice))
}

/// [`encode`] of one message already encoded.
pub(crate) fn encode_bytes(type_magic: u32, message: &[u8]) -> Result<Vec<u8>, FrameError> {
    frame(type_magic, std::iter::once(message))
}

fn frame<'a>(type_magic: u32, messages: impl Iterator<Item = &'a [u8]>) -> Result<Vec<u8>, FrameError> {
    let mut bytes = Vec::new();
    if type_magic != INVENTORY_MAGIC {
        bytes.extend(IMG_COMMON_MAGIC.to_le_bytes());
    }
    bytes.extend(type_magic.to_le_bytes());
    for message in messages {
        let length = u32::try_from(message.len()).map_err(|_| "a message too large for an image".to_string())?;
        bytes.extend(length.to_le_bytes());
        bytes.extend(message);
    }
    Ok(bytes)
}

impl<'a> Entries<'a> {
    /// The next message's bytes, `None` at the clean end of the file.
    pub(crate) fn next_message(&mut self) -> Result<Option<&'a [u8]>, FrameError> {
        if self.rest.is_empty() {
            return Ok(None);
        }
        let (length, rest) = take_u32(self.rest)
            .ok_or_else(|| format!("{} stray bytes where an entry length should be", self.rest.len()))?;
        // u32 fits usize on every target ferry builds for (64- and 32-bit Linux).
        let length = length as usize;
        if length > rest.len() {
            return Err(format!("entry length {length} is beyond the {} bytes left in the file", rest.len()));
        }
        let (message, rest) = rest.split_at(length);
        self.rest = rest;
        Ok(Some(message))
    }

    /// The one message of an image CRIU reads with `pb_read_one`. CRIU would
    /// ignore bytes after it; a real image has none, so they are refused.
    pub(crate) fn only_message(mut self) -> Result<&'a [u8], FrameError> {
        let message = self.next_message()?.ok_or("the image holds no entry")?;
        if !self.rest.is_empty() {
            return Err(format!("{} unexpected bytes after the image's one entry", self.rest.len()));
        }
        Ok(message)
    }
}

fn take_u32(bytes: &[u8]) -> Option<(u32, &[u8])> {
    let (head, rest) = bytes.split_first_chunk::<4>()?;
    Some((u32::from_le_bytes(*head), rest))
}
