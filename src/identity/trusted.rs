//! Editing the `trusted` file: `ferry trust add`, `list` and `remove`.
//!
//! The file is edited as text, line by line, so the comments an operator (or
//! a provisioning script) wrote in it survive; every write replaces it whole
//! (temporary file, fsync, rename), so a crash never leaves half a pin.

use std::path::Path;

use super::{Fingerprint, TRUST_FILE, parse_pinned};
use crate::error::{Error, Kind, Result, io_error};

/// The first lines of a new `trusted` file.
const HEADER: &str = "# Peers this host trusts, one per line: NAME sha256:HEX (the key's fingerprint,\n\
                      # `ferry keys show` on the peer). Edit with `ferry trust add` and `ferry trust remove`.\n";

/// Pins `fingerprint` as `name` in `dir/trusted`.
pub(crate) fn add(dir: &Path, name: &str, fingerprint: &str) -> Result<()> {
    let text = read(dir)?;
    let text = with_added(&text, name, fingerprint)?;
    write(dir, &text)
}

/// Removes the pin named `name` from `dir/trusted`.
pub(crate) fn remove(dir: &Path, name: &str) -> Result<()> {
    let text = read(dir)?;
    let text = without(&text, name)?;
    write(dir, &text)
}

/// `text` (a `trusted` file, maybe empty) with a line pinning `fingerprint` as `name`.
pub(crate) fn with_added(text: &str, name: &str, fingerprint: &str) -> Result<String> {
    if !crate::payload::is_name(name) {
        return Err(Error::new(
            Kind::Usage,
            format!("{name:?} is not a usable peer name: letters, digits, '.', '_', '-' (up to 128), starting with a letter or digit"),
        ));
    }
    let Some(fingerprint) = Fingerprint::parse(fingerprint) else {
        return Err(Error::new(
            Kind::Usage,
            format!("{fingerprint:?} is not a fingerprint: give sha256: and 64 hex digits, as `ferry keys show` prints on the peer"),
        ));
    };
    let pinned = parse_pinned(text).map_err(|why| Error::new(Kind::Usage, format!("{TRUST_FILE} is unusable: {why}")))?;
    if pinned.iter().any(|p| p.name == name) {
        return Err(Error::new(
            Kind::Usage,
            format!("{name} is already trusted: `ferry trust remove {name}` first to pin another key for it"),
        ));
    }
    if let Some(other) = pinned.iter().find(|p| p.fingerprint == fingerprint) {
        return Err(Error::new(Kind::Usage, format!("{fingerprint} is already trusted as {}: one name per key", other.name)));
    }
    let mut text = if text.trim().is_empty() { HEADER.to_string() } else { text.to_string() };
    if !text.ends_with('\n') {
        text.push('\n');
    }
    text.push_str(&format!("{name} {fingerprint}\n"));
    Ok(text)
}

/// `text` without the line pinning `name`; comments and other lines kept as they were.
pub(crate) fn without(text: &str, name: &str) -> Result<String> {
    let mut found = false;
    let mut kept = String::with_capacity(text.len());
    for line in text.split_inclusive('\n') {
        let trimmed = line.trim();
        if !trimmed.starts_with('#') && trimmed.split_whitespace().next() == Some(name) {
            found = true;
        } else {
            kept.push_str(line);
        }
    }
    if found {
        Ok(kept)
    } else {
        Err(Error::new(Kind::NotFound, format!("{name} is not trusted here: `ferry trust list` shows who is")))
    }
}

fn read(dir: &Path) -> Result<String> {
    let path = dir.join(TRUST_FILE);
    match std::fs::read_to_string(&path) {
        Ok(text) => Ok(text),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(String::new()),
        Err(e) => Err(io_error(format!("cannot read {}", path.display()), e)),
    }
}

fn write(dir: &Path, text: &str) -> Result<()> {
    super::create_config_dir(dir)?;
    crate::host::write_durably_as(dir, TRUST_FILE, text.as_bytes(), 0o644)
        .map_err(|e| io_error(format!("cannot write {}", dir.join(TRUST_FILE).display()), e))
}
