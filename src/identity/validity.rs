//! A certificate's validity period, read from its DER.
//!
//! webpki checks validity but does not say what it is, and rcgen cannot parse
//! certificates without x509-parser (too heavy for a 1.5 MiB binary). `ferry
//! keys show` and `ferry doctor` need the expiry date, and a pinned peer whose
//! certificate was issued by a CA this host does not know still needs its
//! dates checked. yasna (rcgen's own DER library) reads the certificate up to
//! `validity` and skips the rest; `time` (which yasna's dates are made of)
//! turns dates into text.

use time::OffsetDateTime;
use yasna::{ASN1Result, BERReader, BERReaderSeq, Tag};

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
        yasna::parse_der(cert_der, |certificate| {
            certificate.read_sequence(|certificate| {
                let validity = certificate.next().read_sequence(|tbs| {
                    // version [0] EXPLICIT INTEGER DEFAULT v1
                    tbs.read_optional(|version| version.read_tagged(Tag::context(0), |version| version.read_der()))?;
                    // Serial numbers are up to 20 octets, too big for any integer type.
                    tbs.next().read_bigint_bytes()?;
                    tbs.next().read_der()?; // signature AlgorithmIdentifier
                    tbs.next().read_der()?; // issuer
                    let validity = tbs.next().read_sequence(|validity| {
                        let not_before = time(validity.next())?;
                        let not_after = time(validity.next())?;
                        Ok(Validity { not_before, not_after })
                    })?;
                    // subject, subjectPublicKeyInfo, the unique IDs and extensions.
                    skip_rest(tbs)?;
                    Ok(validity)
                })?;
                certificate.next().read_der()?; // signatureAlgorithm
                certificate.next().read_der()?; // signatureValue
                Ok(validity)
            })
        })
        .ok()
    }

    pub(crate) fn contains(&self, unix_secs: i64) -> bool {
        self.not_before <= unix_secs && unix_secs <= self.not_after
    }
}

/// `YYYY-MM-DD HH:MM:SS UTC`.
pub(crate) fn utc(unix_secs: i64) -> String {
    // `time` without its `formatting` feature (not in the build): the fields
    // by hand. Every date a certificate can hold is in its range.
    match OffsetDateTime::from_unix_timestamp(unix_secs) {
        Ok(t) => format!(
            "{:04}-{:02}-{:02} {:02}:{:02}:{:02} UTC",
            t.year(),
            u8::from(t.month()),
            t.day(),
            t.hour(),
            t.minute(),
            t.second()
        ),
        Err(_) => format!("{unix_secs} s after 1970-01-01 00:00:00 UTC"),
    }
}

/// A `Time`: UTCTime (years 1950–2049) or GeneralizedTime, the only forms
/// RFC 5280 allows.
fn time(reader: BERReader) -> ASN1Result<i64> {
    let datetime = match reader.lookahead_tag()? {
        yasna::tags::TAG_UTCTIME => *reader.read_utctime()?.datetime(),
        _ => *reader.read_generalized_time()?.datetime(),
    };
    Ok(datetime.unix_timestamp())
}

/// Reads past whatever is left in a SEQUENCE, which yasna requires before it
/// closes one.
fn skip_rest(seq: &mut BERReaderSeq) -> ASN1Result<()> {
    while seq.read_optional(|element| element.read_der())?.is_some() {}
    Ok(())
}
