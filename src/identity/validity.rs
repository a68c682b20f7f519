//! A certificate's validity period, read from its DER.
//!
//! webpki checks validity but does not say what it is, and rcgen cannot parse
//! certificates without x509-parser (too heavy for a 1.5 MiB binary). `ferry
//! keys show` and `ferry doctor` need the expiry date, and a pinned peer whose
//! certificate was issued by a CA this host does not know still needs its
//! dates checked: the few bytes up to `validity` are walked here.

/// When a certificate starts and stops being valid, in seconds since the Unix epoch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Validity {
    pub not_before: i64,
    pub not_after: i64,
}

impl Validity {
    /// Reads `tbsCertificate.validity` (RFC 5280 §4.1); `None` if the DER is
    /// not shaped like a certificate.
    pub(crate) fn of(cert_der: &[u8]) -> Option<Validity> {
        let (certificate, _) = element(cert_der, SEQUENCE)?;
        let (mut tbs, _) = element(certificate, SEQUENCE)?;
        if tbs.first() == Some(&EXPLICIT_VERSION) {
            tbs = element(tbs, EXPLICIT_VERSION)?.1;
        }
        let (_serial, rest) = element(tbs, INTEGER)?;
        let (_signature_algorithm, rest) = element(rest, SEQUENCE)?;
        let (_issuer, rest) = element(rest, SEQUENCE)?;
        let (validity, _) = element(rest, SEQUENCE)?;
        let (not_before, rest) = time(validity)?;
        let (not_after, _) = time(rest)?;
        Some(Validity { not_before, not_after })
    }

    pub(crate) fn contains(&self, unix_secs: i64) -> bool {
        self.not_before <= unix_secs && unix_secs <= self.not_after
    }
}

/// `YYYY-MM-DD HH:MM:SS UTC`.
pub(crate) fn utc(unix_secs: i64) -> String {
    let (days, secs) = (unix_secs.div_euclid(86_400), unix_secs.rem_euclid(86_400));
    let (year, month, day) = civil_from_days(days);
    format!("{year:04}-{month:02}-{day:02} {:02}:{:02}:{:02} UTC", secs / 3600, secs / 60 % 60, secs % 60)
}

const INTEGER: u8 = 0x02;
const SEQUENCE: u8 = 0x30;
const EXPLICIT_VERSION: u8 = 0xa0;
const UTC_TIME: u8 = 0x17;
const GENERALIZED_TIME: u8 = 0x18;

/// The contents of the DER element at the start of `der` if its tag is
/// `tag`, and what follows it.
fn element(der: &[u8], tag: u8) -> Option<(&[u8], &[u8])> {
    let (&found, rest) = der.split_first()?;
    if found != tag {
        return None;
    }
    let (&first, mut rest) = rest.split_first()?;
    let length = if first < 0x80 {
        usize::from(first)
    } else {
        let count = usize::from(first & 0x7f);
        if count == 0 || count > 4 || rest.len() < count {
            return None;
        }
        let length = rest[..count].iter().fold(0usize, |n, &b| (n << 8) | usize::from(b));
        rest = &rest[count..];
        length
    };
    (rest.len() >= length).then(|| rest.split_at(length))
}

/// A UTCTime (`YYMMDDHHMMSSZ`, years 1950–2049) or GeneralizedTime
/// (`YYYYMMDDHHMMSSZ`), the only forms RFC 5280 allows.
fn time(der: &[u8]) -> Option<(i64, &[u8])> {
    let (text, year, rest) = if let Some((text, rest)) = element(der, UTC_TIME) {
        let yy = digits(text.get(..2)?)?;
        (text.get(2..)?, if yy < 50 { 2000 + yy } else { 1900 + yy }, rest)
    } else {
        let (text, rest) = element(der, GENERALIZED_TIME)?;
        (text.get(4..)?, digits(text.get(..4)?)?, rest)
    };
    if text.len() != 11 || text[10] != b'Z' {
        return None;
    }
    let field = |at: usize| digits(&text[at..at + 2]);
    let (month, day, hour, minute, second) = (field(0)?, field(2)?, field(4)?, field(6)?, field(8)?);
    if !(1..=12).contains(&month) || !(1..=31).contains(&day) || hour > 23 || minute > 59 || second > 60 {
        return None;
    }
    let days = days_from_civil(year, month, day);
    Some((days * 86_400 + hour * 3600 + minute * 60 + second, rest))
}

fn digits(text: &[u8]) -> Option<i64> {
    text.iter().try_fold(0i64, |n, &b| b.is_ascii_digit().then(|| n * 10 + i64::from(b - b'0')))
}

/// Days since 1970-01-01 of a proleptic Gregorian date (Howard Hinnant's
/// `days_from_civil`).
fn days_from_civil(year: i64, month: i64, day: i64) -> i64 {
    let year = if month <= 2 { year - 1 } else { year };
    let era = year.div_euclid(400);
    let year_of_era = year - era * 400;
    let day_of_year = (153 * ((month + 9) % 12) + 2) / 5 + day - 1;
    let day_of_era = year_of_era * 365 + year_of_era / 4 - year_of_era / 100 + day_of_year;
    era * 146_097 + day_of_era - 719_468
}

/// The inverse of [`days_from_civil`].
fn civil_from_days(days: i64) -> (i64, i64, i64) {
    let days = days + 719_468;
    let era = days.div_euclid(146_097);
    let day_of_era = days - era * 146_097;
    let year_of_era = (day_of_era - day_of_era / 1460 + day_of_era / 36_524 - day_of_era / 146_096) / 365;
    let day_of_year = day_of_era - (365 * year_of_era + year_of_era / 4 - year_of_era / 100);
    let month_index = (5 * day_of_year + 2) / 153;
    let day = day_of_year - (153 * month_index + 2) / 5 + 1;
    let month = if month_index < 10 { month_index + 3 } else { month_index - 9 };
    let year = year_of_era + era * 400 + i64::from(month <= 2);
    (year, month, day)
}
