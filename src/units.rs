//! Sizes, durations, short ids and progress, as a person reads and writes them.
//! Every layer may use these; they know nothing of Docker or payloads.

use std::io::Write;
use std::time::{Duration, Instant};

/// Seconds since `start`, rounded to milliseconds for reports.
pub(crate) fn seconds_since(start: Instant) -> f64 {
    (start.elapsed().as_secs_f64() * 1000.0).round() / 1000.0
}

/// The first 12 characters of a container or image id, as `docker ps` shows it.
pub(crate) fn short_id(id: &str) -> &str {
    id.get(..12).unwrap_or(id)
}

/// Bytes as a person reads them.
pub(crate) fn human_bytes(bytes: u64) -> String {
    const UNITS: [&str; 4] = ["B", "KiB", "MiB", "GiB"];
    let mut value = bytes as f64;
    let mut unit = 0;
    while value >= 1024.0 && unit + 1 < UNITS.len() {
        value /= 1024.0;
        unit += 1;
    }
    if unit == 0 { format!("{bytes} B") } else { format!("{value:.1} {}", UNITS[unit]) }
}

/// Parses a size such as `512M`, `2G`, `1048576` (binary units).
pub(crate) fn parse_size(text: &str) -> Result<u64, String> {
    let text = text.trim();
    let (number, unit) = text.split_at(text.find(|c: char| !c.is_ascii_digit()).unwrap_or(text.len()));
    let multiplier: u64 = match unit.trim().to_ascii_uppercase().as_str() {
        "" | "B" => 1,
        "K" | "KB" | "KIB" => 1 << 10,
        "M" | "MB" | "MIB" => 1 << 20,
        "G" | "GB" | "GIB" => 1 << 30,
        "T" | "TB" | "TIB" => 1 << 40,
        other => return Err(format!("unknown size unit '{other}' in '{text}': use K, M, G or T")),
    };
    let value: u64 = number.parse().map_err(|_| format!("'{text}' is not a size such as 512M or 2G"))?;
    value.checked_mul(multiplier).ok_or_else(|| format!("size '{text}' is too large"))
}

/// Parses a duration such as `2s`, `500ms`, `5m`, `1h` (a bare number is seconds).
pub(crate) fn parse_duration(text: &str) -> Result<Duration, String> {
    let text = text.trim();
    let split = text.find(|c: char| !c.is_ascii_digit() && c != '.').unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    let value: f64 = number.parse().map_err(|_| format!("'{text}' is not a duration such as 2s, 500ms or 5m"))?;
    let seconds = match unit {
        "" | "s" => value,
        "ms" => value / 1000.0,
        "m" | "min" => value * 60.0,
        "h" => value * 3600.0,
        other => return Err(format!("unknown duration unit '{other}' in '{text}': use ms, s, m or h")),
    };
    if !(0.001..=86_400.0 * 365.0).contains(&seconds) {
        return Err(format!("duration '{text}' is out of range"));
    }
    Ok(Duration::from_secs_f64(seconds))
}

/// Shows bytes written and the rate on stderr while a payload streams, only
/// when stderr is a terminal: scripts and init systems get no noise.
pub(crate) struct Progress<W> {
    inner: W,
    label: &'static str,
    bytes: u64,
    started: Instant,
    last: Instant,
    enabled: bool,
}

impl<W> Progress<W> {
    pub(crate) fn new(inner: W, label: &'static str) -> Progress<W> {
        let now = Instant::now();
        Progress { inner, label, bytes: 0, started: now, last: now, enabled: crate::host::stderr_is_terminal() }
    }

    fn show(&self) {
        let secs = self.started.elapsed().as_secs_f64().max(0.001);
        let rate = (self.bytes as f64 / secs) as u64;
        eprint!("\r{} {} ({}/s)   ", self.label, human_bytes(self.bytes), human_bytes(rate));
    }
}

impl<W: Write> Write for Progress<W> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.bytes += n as u64;
        if self.enabled && self.last.elapsed() >= Duration::from_millis(250) {
            self.last = Instant::now();
            self.show();
        }
        Ok(n)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.inner.flush()
    }
}

impl<W> Drop for Progress<W> {
    fn drop(&mut self) {
        if self.enabled && self.bytes > 0 {
            self.show();
            eprintln!();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_parse_in_binary_units() {
        assert_eq!(parse_size("512M").unwrap(), 512 << 20);
        assert_eq!(parse_size("2g").unwrap(), 2 << 30);
        assert_eq!(parse_size("4096").unwrap(), 4096);
        assert!(parse_size("12 parsecs").unwrap_err().contains("unknown size unit"));
        assert!(parse_size("M").is_err());
    }

    #[test]
    fn durations_parse_with_units() {
        assert_eq!(parse_duration("2s").unwrap(), Duration::from_secs(2));
        assert_eq!(parse_duration("500ms").unwrap(), Duration::from_millis(500));
        assert_eq!(parse_duration("1m").unwrap(), Duration::from_secs(60));
        assert_eq!(parse_duration("3").unwrap(), Duration::from_secs(3));
        assert!(parse_duration("2 fortnights").is_err());
        assert!(parse_duration("0s").is_err());
    }

    #[test]
    fn short_ids_are_twelve_characters_or_the_whole_id() {
        assert_eq!(short_id("0123456789abcdef"), "0123456789ab");
        assert_eq!(short_id("abc"), "abc");
    }

    #[test]
    fn bytes_read_as_a_person_reads_them() {
        assert_eq!(human_bytes(512), "512 B");
        assert_eq!(human_bytes(3 << 20), "3.0 MiB");
    }
}
