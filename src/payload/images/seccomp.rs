//! `seccomp.img`: the BPF programs threads in filter mode run under.

use super::schema::SeccompFilter;
use super::{SECCOMP_DISABLED, SECCOMP_FILTER, SECCOMP_STRICT};
use super::{decode, frame, refuse};
use crate::payload::Error;

/// `SECCOMP_FILTER_FLAG_TSYNC` and `_LOG`: the flags CRIU records (TSYNC
/// when a task's threads share a filter, so that it is installed once for
/// all; LOG as the kernel reports it). Neither lets a syscall through; any
/// other flag is refused.
pub(crate) const FILTER_FLAG_TSYNC: u32 = 1;
pub(crate) const FILTER_FLAG_LOG: u32 = 2;
const RESTORABLE_FLAGS: u32 = FILTER_FLAG_TSYNC | FILTER_FLAG_LOG;

/// One seccomp filter as ferry compares them: its flags and the SHA-256 of
/// its BPF program.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct FilterId {
    pub(crate) flags: u32,
    pub(crate) program_sha256: [u8; 32],
}

impl FilterId {
    pub(crate) fn of(flags: u32, program: &[u8]) -> FilterId {
        use sha2::Digest;
        FilterId { flags, program_sha256: sha2::Sha256::digest(program).into() }
    }

    fn short(&self) -> String {
        crate::payload::hex(&self.program_sha256[..6])
    }
}

/// The BPF programs this host's runtime installs in a container it creates
/// with the profile a restored container gets, oldest first (runc installs
/// one). Seccomp runs every filter of a chain and the strictest answer wins,
/// so a chain that starts with these is never weaker than the profile,
/// whatever filters the app stacked on top of them itself.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct SeccompReference {
    pub(crate) programs: Vec<Vec<u8>>,
}

impl SeccompReference {
    fn ids(&self) -> impl Iterator<Item = FilterId> + '_ {
        self.programs.iter().map(|program| FilterId::of(0, program))
    }
}

impl std::fmt::Display for SeccompReference {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        for (i, (program, id)) in self.programs.iter().zip(self.ids()).enumerate() {
            write!(f, "{}{} instructions, sha256 {}…", if i == 0 { "" } else { "; " }, program.len() / 8, id.short())?;
        }
        Ok(())
    }
}

/// What ferry keeps of `seccomp.img`: each filter's `prev` link and identity.
#[derive(Default)]
pub(super) struct Filters {
    filters: Vec<(Option<u32>, FilterId)>,
}

/// Calls `visit` with each filter of `seccomp_entry` in turn (its only
/// field, `repeated seccomp_filter seccomp_filters = 1`, walked by hand): a
/// whole `SeccompEntry` would hold 40 bytes per 2-byte empty filter, 80 MB
/// for a 4 MiB image; this holds one filter at a time.
fn for_each_filter(name: &str, bytes: &[u8], mut visit: impl FnMut(SeccompFilter) -> Result<(), Error>) -> Result<(), Error> {
    use prost::encoding::{DecodeContext, WireType, decode_key, decode_varint, skip_field};
    let mut message =
        frame::open(bytes, frame::SECCOMP_MAGIC).and_then(|e| e.only_message()).map_err(|e| refuse(name, e))?;
    let invalid = |error: prost::DecodeError| refuse(name, format!("not a valid CRIU message: {error}"));
    let mut index = 0usize;
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
                format!("filter {index} is {} bytes, not whole BPF instructions", filter.filter.len()),
            ));
        }
        visit(filter)?;
        index += 1;
    }
    Ok(())
}

/// Each filter's `prev` link and identity.
pub(super) fn decode_seccomp(name: &str, bytes: &[u8]) -> Result<Filters, Error> {
    let mut filters = Vec::new();
    for_each_filter(name, bytes, |filter| {
        filters.push((filter.prev, FilterId::of(filter.flags.unwrap_or(0), &filter.filter)));
        Ok(())
    })?;
    Ok(Filters { filters })
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
/// No filter may carry a flag but TSYNC and LOG. With a `reference`, the
/// chain must start (its oldest filters) with exactly the reference's
/// programs; filters after them are the app's own, which can only narrow
/// what the profile allows.
pub(super) fn check_filter_chain(
    name: &str,
    tid: u32,
    first: u32,
    seccomp: &Filters,
    reference: Option<&SeccompReference>,
) -> Result<(), Error> {
    let filters = &seccomp.filters;
    let mut chain = Vec::new();
    let mut index = Some(first);
    while let Some(at) = index {
        let (prev, id) = filters.get(at as usize).ok_or_else(|| {
            refuse(name, format!("task {tid} seccomp_filter {at} is not in seccomp.img ({} filters)", filters.len()))
        })?;
        if chain.len() >= filters.len() {
            return Err(refuse(name, format!("task {tid} seccomp filter chain loops at filter {at}")));
        }
        chain.push((at, id));
        index = *prev;
    }
    if let Some((at, id)) = chain.iter().find(|(_, id)| id.flags & !RESTORABLE_FLAGS != 0) {
        return Err(refuse(
            "seccomp.img",
            format!("task {tid}'s filter {at} has flags {:#x}: only TSYNC and LOG ({RESTORABLE_FLAGS:#x}) are restored", id.flags),
        ));
    }
    let Some(reference) = reference else { return Ok(()) };
    // Oldest first, as the kernel stacked them.
    chain.reverse();
    for (position, expected) in reference.ids().enumerate() {
        match chain.get(position) {
            Some((_, found)) if found.program_sha256 == expected.program_sha256 => {}
            Some((at, found)) => {
                return Err(refuse(
                    "seccomp.img",
                    format!(
                        "task {tid}'s filter {at} (sha256 {}…) is not the program this host's engine installs for \
                         the container's profile (sha256 {}…)",
                        found.short(),
                        expected.short()
                    ),
                ));
            }
            None => {
                return Err(refuse(
                    "seccomp.img",
                    format!(
                        "task {tid} runs under {} seccomp filters, fewer than the {} this host's engine installs for \
                         the container's profile",
                        chain.len(),
                        reference.programs.len()
                    ),
                ));
            }
        }
    }
    Ok(())
}

/// Puts this host's filters at the bottom of every chain in `seccomp.img`:
/// each first-installed filter (the source runtime's, or whatever an edited
/// image put there) gets the reference's last program, and the reference's
/// earlier ones, if any, are added beneath it. The filters the app added
/// itself stay above, and every thread keeps its index into the file.
/// Returns the new image and how many filters were replaced.
///
/// Why not compare instead: runc builds the same profile into programs that
/// differ from one container start to the next (libseccomp's architecture
/// checks come in the order of a Go map: three layouts of one 974-instruction
/// program were seen in eight starts on one host), so an honest payload
/// would be refused at random. Replaced, the program a payload brings there
/// decides nothing.
pub(super) fn rebase(name: &str, bytes: &[u8], reference: &SeccompReference) -> Result<(Vec<u8>, usize), Error> {
    let Some((last, beneath)) = reference.programs.split_last() else {
        // The engine installs no filter: there is nothing to hold the chains to.
        return Ok((bytes.to_vec(), 0));
    };
    let mut existing = 0u32;
    for_each_filter(name, bytes, |_| {
        existing += 1;
        Ok(())
    })?;
    // The earlier programs go after every existing index, the last of them
    // right beneath each replaced filter.
    let root_prev = (!beneath.is_empty()).then(|| existing + beneath.len() as u32 - 1);
    let mut entry = Vec::with_capacity(bytes.len() + reference.programs.iter().map(Vec::len).sum::<usize>());
    let mut replaced = 0;
    for_each_filter(name, bytes, |mut filter| {
        if filter.prev.is_none() {
            filter.filter.clone_from(last);
            filter.prev = root_prev;
            replaced += 1;
        }
        prost::encoding::message::encode(1, &filter, &mut entry);
        Ok(())
    })?;
    for (i, program) in beneath.iter().enumerate() {
        let prev = (i > 0).then(|| existing + i as u32 - 1);
        prost::encoding::message::encode(1, &SeccompFilter { filter: program.clone(), prev, flags: None }, &mut entry);
    }
    let image = frame::encode_bytes(frame::SECCOMP_MAGIC, &entry).map_err(|detail| refuse(name, detail))?;
    Ok((image, replaced))
}
