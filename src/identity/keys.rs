//! Making this host's key and certificate: `ferry keys init`, `csr` and
//! `install-cert`.

use std::net::IpAddr;
use std::path::Path;
use std::time::{Duration, SystemTime};

use rcgen::{
    CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa, KeyPair, KeyUsagePurpose, PublicKeyData, SanType,
};
use rustls::pki_types::CertificateDer;
use rustls::pki_types::pem::PemObject;

use super::validity::{Validity, utc};
use super::{CERT_FILE, Fingerprint, Identity, KEY_FILE, common_name};
use crate::error::{Error, Kind, Result, io_error};
use crate::host;

/// Beyond a century, the date no longer fits what every X.509 reader accepts.
pub(crate) const MAX_DAYS: u32 = 36_500;

/// A new certificate is valid from an hour ago: a peer whose clock is a little
/// behind must not refuse it as "not yet valid" (boards without an RTC boot
/// with a stale clock until NTP catches up).
const BACKDATE: Duration = Duration::from_secs(3600);

const KEY_MODE: u32 = 0o600;
const CERT_MODE: u32 = 0o644;

/// What `ferry keys init` makes.
#[derive(Debug)]
pub(crate) struct NewKey<'a> {
    /// The certificate's subject CN and first SAN: what peers call this host.
    pub name: &'a str,
    /// More names or IP addresses sources may dial this host by.
    pub sans: &'a [String],
    pub days: u32,
    /// Replace an existing key.
    pub force: bool,
}

/// Creates `key.pem` (a new Ed25519 key) and a self-signed `cert.pem` in
/// `dir`, and returns the key's fingerprint.
pub(crate) fn init(dir: &Path, new: &NewKey<'_>) -> Result<Fingerprint> {
    if new.days == 0 || new.days > MAX_DAYS {
        return Err(Error::new(Kind::Usage, format!("--days {} is out of range: give 1 to {MAX_DAYS}", new.days)));
    }
    let key_path = dir.join(KEY_FILE);
    if !new.force && key_path.exists() {
        return Err(Error::new(
            Kind::Usage,
            format!(
                "{} already exists: this host has a key (`ferry keys show`); pass --force to replace it, and then \
                 every peer that trusts the old one must trust the new fingerprint",
                key_path.display()
            ),
        ));
    }
    let now = SystemTime::now();
    let params = host_params(new.name, new.sans, now - BACKDATE, now + Duration::from_secs(u64::from(new.days) * 86_400))?;
    let generated = KeyPair::generate_for(&rcgen::PKCS_ED25519).map_err(|e| cannot("make a key", e))?;
    let key = as_pkcs8_v1(&generated)?;
    let cert = params.self_signed(&key).map_err(|e| cannot("make the certificate", e))?;
    super::create_config_dir(dir)?;
    host::write_durably_as(dir, KEY_FILE, key.serialize_pem().as_bytes(), KEY_MODE)
        .map_err(|e| io_error(format!("cannot write {}", key_path.display()), e))?;
    write_cert(dir, CERT_FILE, cert.pem().as_bytes())?;
    Fingerprint::of_cert(cert.der())
}

/// The same Ed25519 key as a PKCS#8 v1 document (RFC 8410: the private key
/// alone). ring writes v2 (RFC 5958, with the public key), which OpenSSL 3.0
/// — the curl of Debian bookworm and Raspberry Pi OS — cannot read ("unable to
/// set private key file"); v1 is what OpenSSL itself writes, and ring, rustls
/// and rcgen read it too.
fn as_pkcs8_v1(key: &KeyPair) -> Result<KeyPair> {
    let malformed = |e: yasna::ASN1Error| Error::new(Kind::Failure, format!("cannot re-encode the new key: {e}"));
    let private_key = yasna::parse_der(key.serialized_der(), |r| {
        r.read_sequence(|r| {
            r.next().read_u8()?;
            r.next().read_sequence(|r| r.next().read_oid().map(drop))?;
            let private_key = r.next().read_bytes()?;
            r.read_optional(|r| r.read_tagged_implicit(yasna::Tag::context(1), |r| r.read_bitvec_bytes().map(drop)))?;
            Ok(private_key)
        })
    })
    .map_err(malformed)?;
    let ed25519 = yasna::models::ObjectIdentifier::from_slice(&[1, 3, 101, 112]);
    let v1 = yasna::construct_der(|w| {
        w.write_sequence(|w| {
            w.next().write_u8(0);
            w.next().write_sequence(|w| w.next().write_oid(&ed25519));
            w.next().write_bytes(&private_key);
        })
    });
    KeyPair::from_pkcs8_der_and_sign_algo(&v1.into(), &rcgen::PKCS_ED25519).map_err(|e| cannot("re-encode the new key", e))
}

/// The parameters of a host certificate: CN and SANs, usable as a TLS server
/// (agent) and client (source), not a CA.
pub(crate) fn host_params(name: &str, sans: &[String], not_before: SystemTime, not_after: SystemTime) -> Result<CertificateParams> {
    if !crate::payload::is_name(name) {
        return Err(Error::new(
            Kind::Usage,
            format!("{name:?} is not usable as a host name (letters, digits, '.', '_', '-'; up to 128): pass --name NAME"),
        ));
    }
    let mut params = CertificateParams::default();
    let mut names: Vec<&str> = vec![name];
    for san in sans {
        if !names.contains(&san.as_str()) {
            names.push(san);
        }
    }
    for san in names {
        params.subject_alt_names.push(match san.parse::<IpAddr>() {
            Ok(ip) => SanType::IpAddress(ip),
            Err(_) if crate::payload::is_name(san) => {
                SanType::DnsName(san.try_into().map_err(|e| Error::new(Kind::Usage, format!("--san {san:?}: {e}")))?)
            }
            Err(_) => {
                return Err(Error::new(Kind::Usage, format!("--san {san:?} is neither an IP address nor a host name")));
            }
        });
    }
    params.distinguished_name = DistinguishedName::new();
    params.distinguished_name.push(DnType::CommonName, name);
    params.is_ca = IsCa::ExplicitNoCa;
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth, ExtendedKeyUsagePurpose::ClientAuth];
    params.not_before = not_before.into();
    params.not_after = not_after.into();
    Ok(params)
}

/// A PEM certificate signing request for this host's key, for the fleet CA.
/// `name` defaults to the current certificate's CN, else the host name.
pub(crate) fn csr(dir: &Path, name: Option<&str>, sans: &[String]) -> Result<String> {
    let key = load_key(dir)?;
    let current_name = Identity::load(dir).ok().and_then(|identity| common_name(&identity.cert));
    let name = name.map(str::to_string).or(current_name).unwrap_or_else(host::hostname);
    let now = SystemTime::now();
    let params = host_params(&name, sans, now, now)?;
    let request = params.serialize_request(&key).map_err(|e| cannot("make the request", e))?;
    request.pem().map_err(|e| cannot("encode the request", e))
}

/// Installs a CA-issued certificate (and the intermediates after it) from
/// `file` as `cert.pem`, once it is known to be for this host's key and in
/// its validity period; the old one is kept as `cert.pem.old`.
pub(crate) fn install_cert(dir: &Path, file: &Path) -> Result<Fingerprint> {
    let ours = Fingerprint::of_spki(&load_key(dir)?.subject_public_key_info());
    let pem = std::fs::read(file).map_err(|e| io_error(format!("cannot read {}", file.display()), e))?;
    let chain: std::result::Result<Vec<_>, _> = CertificateDer::pem_slice_iter(&pem).collect();
    let chain = chain.map_err(|e| Error::new(Kind::Usage, format!("{} is not a PEM certificate: {e:?}", file.display())))?;
    let Some(cert) = chain.first() else {
        return Err(Error::new(Kind::Usage, format!("{} holds no PEM certificate", file.display())));
    };
    let theirs = Fingerprint::of_cert(cert).map_err(|e| e.context(file.display()))?;
    if theirs != ours {
        return Err(Error::new(
            Kind::Usage,
            format!(
                "{} is a certificate for key {theirs}, not this host's key {ours}: have the CA sign the request \
                 `ferry keys csr` prints",
                file.display()
            ),
        ));
    }
    let now = host::unix_now() as i64;
    match Validity::of(cert) {
        None => return Err(Error::new(Kind::Usage, format!("{}: cannot read the certificate's validity", file.display()))),
        Some(v) if now > v.not_after => {
            return Err(Error::new(Kind::Usage, format!("{} expired on {}: have it renewed", file.display(), utc(v.not_after))));
        }
        Some(_) => {}
    }
    let cert_path = dir.join(CERT_FILE);
    match std::fs::read(&cert_path) {
        Ok(old) => write_cert(dir, &format!("{CERT_FILE}.old"), &old)?,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(io_error(format!("cannot read {}", cert_path.display()), e)),
    }
    write_cert(dir, CERT_FILE, &pem)?;
    Ok(Identity::load(dir)?.fingerprint)
}

/// What `ferry keys show` prints.
#[derive(Debug)]
pub(crate) struct Summary {
    pub name: Option<String>,
    pub fingerprint: Fingerprint,
    pub validity: Option<Validity>,
    /// The issuer's CN, `None` when self-signed.
    pub issuer: Option<String>,
}

impl Summary {
    pub(crate) fn of(identity: &Identity) -> Summary {
        let parsed = webpki::EndEntityCert::try_from(&identity.cert).ok();
        let self_signed = parsed.as_ref().is_some_and(|p| p.issuer() == p.subject());
        let issuer = (!self_signed).then(|| parsed.as_ref().and_then(|p| super::name_cn(p.issuer())).unwrap_or_else(|| "a CA".into()));
        Summary {
            name: common_name(&identity.cert),
            fingerprint: identity.fingerprint.clone(),
            validity: Validity::of(&identity.cert),
            issuer,
        }
    }
}

fn load_key(dir: &Path) -> Result<KeyPair> {
    let key_path = dir.join(KEY_FILE);
    let pem = match std::fs::read_to_string(&key_path) {
        Ok(pem) => pem,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Err(Error::new(
                Kind::Usage,
                format!("this host has no key ({} is missing): run `ferry keys init` first", key_path.display()),
            ));
        }
        Err(e) => return Err(io_error(format!("cannot read {}", key_path.display()), e)),
    };
    KeyPair::from_pem(&pem).map_err(|e| Error::new(Kind::Usage, format!("{} is unusable: {e}", key_path.display())))
}

fn write_cert(dir: &Path, name: &str, pem: &[u8]) -> Result<()> {
    host::write_durably_as(dir, name, pem, CERT_MODE).map_err(|e| io_error(format!("cannot write {}", dir.join(name).display()), e))
}

fn cannot(doing: &str, error: rcgen::Error) -> Error {
    Error::new(Kind::Failure, format!("cannot {doing}: {error}"))
}
