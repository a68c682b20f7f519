//! `seccomp.img`: the BPF programs threads in filter mode run under.

use super::schema::SeccompFilter;
use super::{SECCOMP_DISABLED, SECCOMP_FILTER, SECCOMP_STRICT};
use super::{decode, frame, refuse};
use crate::payload::Error;

/// What ferry keeps of `seccomp.img`: each filter's `prev` link, and the
/// digest of all of them.
#[derive(Default)]
pub(super) struct Filters {
    prev: Vec<Option<u32>>,
    pub(super) digest: String,
}

/// Decodes `seccomp_entry` one filter at a time (its only field, `repeated
/// seccomp_filter seccomp_filters = 1`, walked by hand): a whole
/// `SeccompEntry` would hold 40 bytes per 2-byte empty filter, 80 MB for a
/// 4 MiB image; this holds 8.
pub(super) fn decode_seccomp(name: &str, bytes: &[u8]) -> Result<Filters, Error> {
    use prost::encoding::{DecodeContext, WireType, decode_key, decode_varint, skip_field};
    use sha2::Digest;
    let mut message =
        frame::open(bytes, frame::SECCOMP_MAGIC).and_then(|e| e.only_message()).map_err(|e| refuse(name, e))?;
    let invalid = |error: prost::DecodeError| refuse(name, format!("not a valid CRIU message: {error}"));
    let mut hasher = sha2::Sha256::new();
    let mut prev = Vec::new();
    while !message.is_empty() {
        let (tag, wire_type) = decode_key(&mut message).map_err(invalid)?;
        if tag != 1 || wire_type != WireType::LengthDelimited {
            skip_field(wire_type, tag, &mut message, DecodeContext::default()).map_err(invalid)?;
            continue;
        }
        let length = decode_varint(&mut message).map_err(invalid)?;
        let length = usize::try_from(length).ok().filter(|length| *length <= message.len()).ok_or_else(|| {
            refuse(name, format!("filter length {length} is beyond the {} bytes left", message.len()))
        })?;
        let (encoded, rest) = message.split_at(length);
        message = rest;
        let filter: SeccompFilter = decode(name, encoded)?;
        // A BPF program is an array of 8-byte `struct sock_filter`; CRIU
        // refuses any other length at restore, ferry before it.
        if filter.filter.is_empty() || !filter.filter.len().is_multiple_of(8) {
            return Err(refuse(
                name,
                format!("filter {} is {} bytes, not whole BPF instructions", prev.len(), filter.filter.len()),
            ));
        }
        hasher.update(filter.flags.unwrap_or(0).to_le_bytes());
        hasher.update((filter.filter.len() as u64).to_le_bytes());
        hasher.update(&filter.filter);
        prev.push(filter.prev);
    }
    Ok(Filters { prev, digest: crate::payload::hex(&hasher.finalize()) })
}

/// Disabled < filter < strict: strict mode allows only read, write, exit
/// and sigreturn, less than any filter can. Unknown modes are never enough.
pub(super) fn at_least_as_strict(mode: i32, expected: i32) -> bool {
    let rank = |mode| match mode {
        SECCOMP_DISABLED => Some(0),
        SECCOMP_FILTER => Some(1),
        SECCOMP_STRICT => Some(2),
        _ => None,
    };
    match (rank(mode), rank(expected)) {
        (Some(found), Some(expected)) => found >= expected,
        _ => false,
    }
}

/// The thread's filter and the ones before it must exist, and the chain end:
/// CRIU follows `prev` without a bound, so a loop would hang the restore.
pub(super) fn check_filter_chain(name: &str, tid: u32, first: u32, seccomp: &Filters) -> Result<(), Error> {
    let filters = &seccomp.prev;
    let mut index = Some(first);
    let mut steps = 0usize;
    while let Some(at) = index {
        let prev = filters.get(at as usize).ok_or_else(|| {
            refuse(name, format!("task {tid} seccomp_filter {at} is not in seccomp.img ({} filters)", filters.len()))
        })?;
        steps += 1;
        if steps > filters.len() {
            return Err(refuse(name, format!("task {tid} seccomp filter chain loops at filter {at}")));
        }
        index = *prev;
    }
    Ok(())
}
