//! Who this host is and whom it trusts (issue 12).
//!
//! Every host has one Ed25519 key and a certificate for it under the config
//! folder (`/etc/ferry`, or `$FERRY_CONFIG_DIR`):
//!
//! ```text
//! /etc/ferry/key.pem        this host's private key (PKCS#8), 0600
//! /etc/ferry/cert.pem       its certificate: self-signed by `ferry keys init`,
//!                           or issued by the fleet CA, 0644
//! /etc/ferry/trusted        pinned peers, one per line: NAME sha256:HEX
//! /etc/ferry/ca.pem         optional: the fleet CA; any certificate it issued is trusted
//! ```
//!
//! A host is known by its **fingerprint**: the SHA-256 of its certificate's
//! SubjectPublicKeyInfo, as `sha256:` and 64 hex digits (the same as `openssl
//! x509 -pubkey -noout | openssl pkey -pubin -outform der | sha256sum`). It
//! pins the key, not the certificate, so a renewed certificate for the same key
//! keeps it. The same key authenticates TLS (both ways) and signs payloads.
//!
//! Why Ed25519: signatures are deterministic (no random number needed when a
//! board signs, at boot, with little entropy), verification is fast on
//! Cortex-A53/A72 cores that have no crypto extensions, keys are 32 bytes, and
//! rustls, ring, OpenSSL (so curl) and webpki all support it in TLS 1.3.

use std::fmt;
use std::fs;
use std::path::{Path, PathBuf};

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer, UnixTime};
use sha2::{Digest, Sha256};

use crate::error::{Error, Kind, Result};

pub(crate) mod keys;
#[cfg(test)]
pub(crate) mod testing;
#[cfg(test)]
mod tests;
pub(crate) mod trusted;
pub(crate) mod validity;
mod verifier;
pub(crate) use verifier::Verifier;

pub(crate) const DEFAULT_DIR: &str = "/etc/ferry";
pub(crate) const KEY_FILE: &str = "key.pem";
pub(crate) const CERT_FILE: &str = "cert.pem";
pub(crate) const TRUST_FILE: &str = "trusted";
pub(crate) const CA_FILE: &str = "ca.pem";

/// The config folder: `$FERRY_CONFIG_DIR`, else `/etc/ferry`.
pub(crate) fn config_dir() -> PathBuf {
    std::env::var_os("FERRY_CONFIG_DIR").filter(|v| !v.is_empty()).map_or_else(|| PathBuf::from(DEFAULT_DIR), PathBuf::from)
}

/// Creates the config folder, 0755: the certificate and trust store in it are public.
pub(crate) fn create_config_dir(dir: &Path) -> Result<()> {
    use std::os::unix::fs::DirBuilderExt;
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o755)
        .create(dir)
        .map_err(|e| crate::error::io_error(format!("cannot create {}", dir.display()), e))
}

/// `sha256:` and the hex SHA-256 of a SubjectPublicKeyInfo.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize, serde::Deserialize)]
#[serde(transparent)]
pub(crate) struct Fingerprint(String);

impl Fingerprint {
    pub(crate) fn of_spki(spki_der: &[u8]) -> Fingerprint {
        Fingerprint(format!("sha256:{}", crate::payload::hex(&Sha256::digest(spki_der))))
    }

    /// The fingerprint of a DER certificate's key.
    pub(crate) fn of_cert(cert: &CertificateDer<'_>) -> Result<Fingerprint> {
        let parsed = webpki::EndEntityCert::try_from(cert)
            .map_err(|e| Error::new(Kind::Usage, format!("not a usable X.509 certificate: {e:?}")))?;
        Ok(Fingerprint::of_spki(parsed.subject_public_key_info().as_ref()))
    }

    /// Parses `sha256:` + 64 hex digits (upper or lower case; colons between
    /// byte pairs are accepted, as `openssl x509 -fingerprint` prints them).
    pub(crate) fn parse(text: &str) -> Option<Fingerprint> {
        let hex = text.trim().strip_prefix("sha256:").or_else(|| text.trim().strip_prefix("SHA256:"))?;
        let hex: String = hex.chars().filter(|c| *c != ':').collect::<String>().to_ascii_lowercase();
        (hex.len() == 64 && hex.bytes().all(|b| b.is_ascii_hexdigit())).then(|| Fingerprint(format!("sha256:{hex}")))
    }

    #[cfg(test)]
    pub(crate) fn as_str(&self) -> &str {
        &self.0
    }

    /// The 64 hex digits alone, for names of files and keys.
    pub(crate) fn hex(&self) -> &str {
        &self.0["sha256:".len()..]
    }
}

impl fmt::Display for Fingerprint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// This host's key and certificate.
pub(crate) struct Identity {
    pub cert: CertificateDer<'static>,
    pub key: PrivatePkcs8KeyDer<'static>,
    pub fingerprint: Fingerprint,
    signer: ring::signature::Ed25519KeyPair,
}

impl fmt::Debug for Identity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Identity").field("fingerprint", &self.fingerprint).finish_non_exhaustive()
    }
}

impl Identity {
    /// Loads `key.pem` and `cert.pem` from `dir`, and checks that they belong together.
    pub(crate) fn load(dir: &Path) -> Result<Identity> {
        let key_path = dir.join(KEY_FILE);
        let cert_path = dir.join(CERT_FILE);
        if !key_path.exists() {
            return Err(Error::new(
                Kind::Usage,
                format!("this host has no key ({} is missing): run `ferry keys init` first", key_path.display()),
            ));
        }
        let key = match PrivateKeyDer::from_pem_file(&key_path) {
            Ok(PrivateKeyDer::Pkcs8(key)) => key,
            Ok(_) => return Err(unusable(&key_path, "not a PKCS#8 key: ferry's keys are Ed25519 in PKCS#8")),
            Err(e) => return Err(unusable(&key_path, &format!("{e:?}"))),
        };
        let cert = CertificateDer::from_pem_file(&cert_path).map_err(|e| unusable(&cert_path, &format!("{e:?}")))?;
        let signer = ring::signature::Ed25519KeyPair::from_pkcs8_maybe_unchecked(key.secret_pkcs8_der())
            .map_err(|e| unusable(&key_path, &format!("not an Ed25519 key ({e})")))?;
        let fingerprint = Fingerprint::of_cert(&cert).map_err(|e| unusable(&cert_path, &e.message))?;
        let ours = Fingerprint::of_spki(&ed25519_spki(ring::signature::KeyPair::public_key(&signer).as_ref()));
        if ours != fingerprint {
            return Err(unusable(&cert_path, "it is for another key than key.pem: install the certificate issued for this key"));
        }
        Ok(Identity { cert, key, fingerprint, signer })
    }

    /// An Ed25519 signature of `message`.
    pub(crate) fn sign(&self, message: &[u8]) -> Vec<u8> {
        self.signer.sign(message).as_ref().to_vec()
    }
}

fn unusable(path: &Path, why: &str) -> Error {
    Error::new(Kind::Usage, format!("{} is unusable: {why}", path.display()))
}

/// The DER SubjectPublicKeyInfo of an Ed25519 public key (RFC 8410).
pub(crate) fn ed25519_spki(public_key: &[u8]) -> Vec<u8> {
    const PREFIX: [u8; 12] = [0x30, 0x2a, 0x30, 0x05, 0x06, 0x03, 0x2b, 0x65, 0x70, 0x03, 0x21, 0x00];
    let mut spki = PREFIX.to_vec();
    spki.extend_from_slice(public_key);
    spki
}

/// A peer's certificate is checked for what it is about to be used for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Usage {
    /// An agent answering a source (TLS server).
    Agent,
    /// A source calling an agent (TLS client), or signing a payload.
    Source,
}

/// Who a verified peer is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Peer {
    /// The name it was pinned under, or the certificate's subject common name
    /// when the fleet CA vouched for it.
    pub name: String,
    pub fingerprint: Fingerprint,
}

/// A pinned peer: a line of the `trusted` file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Pinned {
    pub name: String,
    pub fingerprint: Fingerprint,
}

/// Whom this host trusts: pinned keys and, optionally, a fleet CA.
#[derive(Debug, Clone, Default)]
pub(crate) struct Trust {
    pub pinned: Vec<Pinned>,
    pub ca: Vec<CertificateDer<'static>>,
}

impl Trust {
    /// Loads `trusted` and `ca.pem` from `dir`; either may be missing.
    pub(crate) fn load(dir: &Path) -> Result<Trust> {
        let trust_path = dir.join(TRUST_FILE);
        let pinned = match fs::read_to_string(&trust_path) {
            Ok(text) => parse_pinned(&text).map_err(|why| unusable(&trust_path, &why))?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Vec::new(),
            Err(e) => return Err(unusable(&trust_path, &e.to_string())),
        };
        let ca_path = dir.join(CA_FILE);
        let ca = if ca_path.exists() {
            let certs: std::result::Result<Vec<_>, _> =
                CertificateDer::pem_file_iter(&ca_path).map_err(|e| unusable(&ca_path, &format!("{e:?}")))?.collect();
            let certs = certs.map_err(|e| unusable(&ca_path, &format!("{e:?}")))?;
            if certs.is_empty() {
                return Err(unusable(&ca_path, "it holds no certificate"));
            }
            for cert in &certs {
                webpki::anchor_from_trusted_cert(cert)
                    .map_err(|e| unusable(&ca_path, &format!("not a usable CA certificate ({e:?})")))?;
            }
            certs
        } else {
            Vec::new()
        };
        Ok(Trust { pinned, ca })
    }

    /// The same trust, and this host's own key pinned as "NAME (this host)":
    /// a host trusts itself, for its own payload files and its own tools
    /// (curl with its certificate, `ferry snapshots --peer` on itself).
    pub(crate) fn with_own(mut self, own: &Identity) -> Trust {
        if !self.pinned.iter().any(|p| p.fingerprint == own.fingerprint) {
            self.pinned.push(Pinned { name: format!("{} (this host)", crate::host::hostname()), fingerprint: own.fingerprint.clone() });
        }
        self
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.pinned.is_empty() && self.ca.is_empty()
    }

    /// Verifies a peer's certificate (and the intermediates it sent) for
    /// `usage` at `now`: its key is pinned (and the certificate, self-signed or
    /// not, is within its validity), or it chains to the fleet CA. Names are
    /// not checked here: see [`Trust::check_name`].
    pub(crate) fn identify(
        &self,
        cert: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
        usage: Usage,
    ) -> std::result::Result<Peer, String> {
        let parsed = webpki::EndEntityCert::try_from(cert).map_err(|e| format!("unreadable certificate: {e:?}"))?;
        let fingerprint = Fingerprint::of_spki(parsed.subject_public_key_info().as_ref());
        let key_usage = match usage {
            Usage::Agent => webpki::KeyUsage::server_auth(),
            Usage::Source => webpki::KeyUsage::client_auth(),
        };
        if let Some(pin) = self.pinned.iter().find(|p| p.fingerprint == fingerprint) {
            // The pin vouches for the key; the certificate must still be in
            // its validity period. A self-signed certificate is its own
            // anchor, which checks its dates, signature and key usage.
            let intermediates: Vec<CertificateDer<'_>> = intermediates.to_vec();
            if parsed.issuer() == parsed.subject() {
                let anchor = webpki::anchor_from_trusted_cert(cert).map_err(|e| format!("unusable certificate: {e:?}"))?;
                parsed
                    .verify_for_usage(webpki::ALL_VERIFICATION_ALGS, &[anchor], &intermediates, now, key_usage, None, None)
                    .map_err(|e| format!("the certificate of pinned peer {} is not valid: {e:?}", pin.name))?;
                return Ok(Peer { name: pin.name.clone(), fingerprint });
            }
            // Issued by someone else (the fleet CA after `ferry keys
            // install-cert`): accepted when the CA is configured here and
            // vouches for it; else on the pin alone once its dates are
            // checked, since peers that pinned the self-signed certificate
            // must go on trusting the same key in its CA-issued one.
            let anchors = self.ca_anchors()?;
            let vouched = !anchors.is_empty()
                && parsed
                    .verify_for_usage(webpki::ALL_VERIFICATION_ALGS, &anchors, &intermediates, now, key_usage, None, None)
                    .is_ok();
            if !vouched {
                let now_secs = i64::try_from(now.as_secs()).unwrap_or(i64::MAX);
                match validity::Validity::of(cert) {
                    Some(v) if v.contains(now_secs) => {}
                    Some(v) => {
                        return Err(format!(
                            "the certificate of pinned peer {} is not valid now: it is valid from {} to {}",
                            pin.name,
                            validity::utc(v.not_before),
                            validity::utc(v.not_after)
                        ));
                    }
                    None => return Err(format!("the certificate of pinned peer {} has unreadable dates", pin.name)),
                }
            }
            return Ok(Peer { name: pin.name.clone(), fingerprint });
        }
        if self.ca.is_empty() {
            return Err(format!("its key {fingerprint} is not trusted here (add it with `ferry trust add NAME {fingerprint}`)"));
        }
        let anchors = self.ca_anchors()?;
        let intermediates: Vec<CertificateDer<'_>> = intermediates.to_vec();
        parsed
            .verify_for_usage(webpki::ALL_VERIFICATION_ALGS, &anchors, &intermediates, now, key_usage, None, None)
            .map_err(|e| format!("its key {fingerprint} is not pinned and its certificate is not valid under the fleet CA: {e:?}"))?;
        let name = common_name(cert).unwrap_or_else(|| fingerprint.to_string());
        Ok(Peer { name, fingerprint })
    }

    fn ca_anchors(&self) -> std::result::Result<Vec<rustls::pki_types::TrustAnchor<'_>>, String> {
        self.ca
            .iter()
            .map(|c| webpki::anchor_from_trusted_cert(c).map_err(|e| format!("unusable fleet CA certificate: {e:?}")))
            .collect()
    }

    /// Whether `cert` is valid for the host name or IP address the source dialled.
    pub(crate) fn check_name(cert: &CertificateDer<'_>, name: &rustls::pki_types::ServerName<'_>) -> std::result::Result<(), String> {
        let parsed = webpki::EndEntityCert::try_from(cert).map_err(|e| format!("unreadable certificate: {e:?}"))?;
        parsed
            .verify_is_valid_for_subject_name(name)
            .map_err(|e| format!("its certificate is not for {}: {e:?}", name.to_str()))
    }
}

/// Parses the `trusted` file: `NAME FINGERPRINT` per line, `#` comments.
pub(crate) fn parse_pinned(text: &str) -> std::result::Result<Vec<Pinned>, String> {
    let mut pinned = Vec::new();
    for (number, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let mut words = line.split_whitespace();
        let (Some(name), Some(fingerprint)) = (words.next(), words.next()) else {
            return Err(format!("line {}: expected NAME FINGERPRINT", number + 1));
        };
        let fingerprint = Fingerprint::parse(fingerprint)
            .ok_or_else(|| format!("line {}: {fingerprint:?} is not a fingerprint (sha256: and 64 hex digits)", number + 1))?;
        pinned.push(Pinned { name: name.to_string(), fingerprint });
    }
    Ok(pinned)
}

/// The subject's common name, if the certificate has a plain one.
pub(crate) fn common_name(cert: &CertificateDer<'_>) -> Option<String> {
    let parsed = webpki::EndEntityCert::try_from(cert).ok()?;
    name_cn(parsed.subject())
}

/// The common name in a DER distinguished name (a certificate's subject or
/// issuer), if it has a plain one that is a ferry name.
pub(crate) fn name_cn(subject: &[u8]) -> Option<String> {
    // id-at-commonName (2.5.4.3), then a UTF8String or PrintableString.
    const CN: [u8; 5] = [0x06, 0x03, 0x55, 0x04, 0x03];
    let at = subject.windows(CN.len()).position(|w| w == CN)? + CN.len();
    let (tag, len) = (*subject.get(at)?, *subject.get(at + 1)? as usize);
    if !(tag == 0x0c || tag == 0x13) || len >= 0x80 {
        return None;
    }
    let value = subject.get(at + 2..at + 2 + len)?;
    String::from_utf8(value.to_vec()).ok().filter(|n| crate::payload::is_name(n))
}
