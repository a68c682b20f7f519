//! Certificates for tests: self-signed or issued by a test CA, with chosen
//! names and validity. Host certificates are made by the same
//! [`host_params`] as `ferry keys init`, so tests see what hosts use.

use std::path::Path;
use std::time::{Duration, SystemTime};

use rcgen::{BasicConstraints, CertificateParams, DistinguishedName, DnType, IsCa, Issuer, KeyPair, KeyUsagePurpose};
use rustls::pki_types::CertificateDer;

use super::keys::host_params;
use super::{CA_FILE, CERT_FILE, Fingerprint, KEY_FILE, Pinned};

/// A certificate and its key.
pub(crate) struct TestCert {
    pub cert: CertificateDer<'static>,
    pub pem: String,
    pub key: KeyPair,
    params: CertificateParams,
}

impl TestCert {
    pub(crate) fn fingerprint(&self) -> Fingerprint {
        Fingerprint::of_cert(&self.cert).unwrap()
    }

    /// A pin of this certificate's key under `name`.
    pub(crate) fn pinned_as(&self, name: &str) -> Pinned {
        Pinned { name: name.to_string(), fingerprint: self.fingerprint() }
    }

    /// Writes its key (0600, as `ferry keys init` does) and certificate as
    /// `dir`'s key.pem and cert.pem.
    pub(crate) fn install(&self, dir: &Path) {
        crate::host::write_durably_as(dir, KEY_FILE, self.key.serialize_pem().as_bytes(), 0o600).unwrap();
        std::fs::write(dir.join(CERT_FILE), &self.pem).unwrap();
    }

    /// Writes this (CA) certificate as `dir`'s ca.pem.
    pub(crate) fn install_as_ca(&self, dir: &Path) {
        std::fs::write(dir.join(CA_FILE), &self.pem).unwrap();
    }
}

/// Validity in days from now: `-2..-1` has expired, `-1..3650` is current.
pub(crate) type Days = std::ops::Range<i64>;

fn at(days: i64) -> SystemTime {
    let offset = Duration::from_secs(days.unsigned_abs() * 86_400);
    if days < 0 { SystemTime::now() - offset } else { SystemTime::now() + offset }
}

fn host(name: &str, sans: &[&str], days: Days) -> (KeyPair, CertificateParams) {
    let sans: Vec<String> = sans.iter().map(|s| s.to_string()).collect();
    let params = host_params(name, &sans, at(days.start), at(days.end)).unwrap();
    (KeyPair::generate_for(&rcgen::PKCS_ED25519).unwrap(), params)
}

/// A host certificate signed by its own key, as `ferry keys init` makes.
pub(crate) fn self_signed(name: &str, sans: &[&str], days: Days) -> TestCert {
    let (key, params) = host(name, sans, days);
    let cert = params.self_signed(&key).unwrap();
    TestCert { pem: cert.pem(), cert: cert.der().clone(), key, params }
}

/// A fleet CA, valid for ten years.
pub(crate) fn ca(name: &str) -> TestCert {
    let mut params = CertificateParams::default();
    params.distinguished_name = DistinguishedName::new();
    params.distinguished_name.push(DnType::CommonName, name);
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::DigitalSignature];
    params.not_before = at(-1).into();
    params.not_after = at(3650).into();
    let key = KeyPair::generate_for(&rcgen::PKCS_ED25519).unwrap();
    let cert = params.self_signed(&key).unwrap();
    TestCert { pem: cert.pem(), cert: cert.der().clone(), key, params }
}

/// A host certificate issued by `ca`, for a new key.
pub(crate) fn issued_by(ca: &TestCert, name: &str, sans: &[&str], days: Days) -> TestCert {
    let (key, params) = host(name, sans, days);
    reissued(ca, key, params)
}

/// A host certificate named `name` issued by `ca` for an existing `key` (a
/// renewal, or what the CA answers to `ferry keys csr`).
pub(crate) fn issued_for(ca: &TestCert, key: &KeyPair, name: &str, days: Days) -> TestCert {
    let (_, params) = host(name, &[], days);
    reissued(ca, KeyPair::from_pem(&key.serialize_pem()).unwrap(), params)
}

fn reissued(ca: &TestCert, key: KeyPair, params: CertificateParams) -> TestCert {
    let issuer = Issuer::from_params(&ca.params, &ca.key);
    let cert = params.signed_by(&key, &issuer).unwrap();
    TestCert { pem: cert.pem(), cert: cert.der().clone(), key, params }
}
