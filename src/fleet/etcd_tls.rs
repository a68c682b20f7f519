//! TLS to etcd (issue 15): `https://` client URLs, with etcd's client
//! certificates (`--client-cert-auth`).
//!
//! etcd's certificate is checked the standard way, by rustls's WebPKI
//! verifier: a chain to the CA given with `--etcd-ca` (by default the fleet CA,
//! `ca.pem` in the config dir), and the host name or IP address of the URL
//! among its names. ferry's own trust store (pinned keys) plays no part: etcd
//! is no ferry agent and has no ferry key.
//!
//! ferry presents this host's own identity (`key.pem` and `cert.pem`): one
//! key per host for everything, and a host gets its certificate from the CA
//! etcd trusts with `ferry keys csr` and `ferry keys install-cert`. etcd 3.4
//! (Go's crypto/tls) accepts Ed25519 certificates in TLS 1.3; the fleet's
//! tests run against the real etcd to keep that true.
//!
//! TLS 1.3 only, as between agents (rustls is built without TLS 1.2): etcd
//! 3.4 built with Go 1.13 or newer speaks it unless its `--cipher-suites`
//! is set, which limits it to TLS 1.2.

use std::fs;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::{AlertDescription, CertificateError, ClientConfig, RootCertStore};

use crate::error::{Error, Kind, Result};
use crate::identity::{self, Identity};

#[cfg(test)]
mod tests;

/// How ferry reaches etcd over TLS, and the files to name when it fails.
pub(crate) struct EtcdTls {
    pub(crate) config: Arc<ClientConfig>,
    /// The CA that must have issued etcd's certificate.
    ca_file: PathBuf,
    /// This host's certificate, which etcd must accept.
    cert_file: PathBuf,
}

impl EtcdTls {
    /// The CA in `etcd_ca`, else the fleet CA in `dir`; this host's key and
    /// certificate from `dir`.
    pub(crate) fn load(dir: &Path, etcd_ca: Option<&Path>) -> Result<EtcdTls> {
        let ca_file = match etcd_ca {
            Some(file) => file.to_path_buf(),
            None => {
                let fleet_ca = dir.join(identity::CA_FILE);
                if !fleet_ca.exists() {
                    return Err(Error::new(
                        Kind::Usage,
                        format!(
                            "etcd over https:// needs the CA that issued etcd's certificate: give --etcd-ca FILE (PEM), \
                             or install the fleet CA as {} if it is the one",
                            fleet_ca.display()
                        ),
                    ));
                }
                fleet_ca
            }
        };
        let roots = read_ca(&ca_file)?;
        let identity = Identity::load(dir).map_err(|error| {
            Error::new(error.kind, format!("etcd over https:// is reached with this host's key and certificate, but {}", error.message))
        })?;
        EtcdTls::new(&identity, roots, ca_file, dir.join(identity::CERT_FILE))
    }

    fn new(identity: &Identity, roots: RootCertStore, ca_file: PathBuf, cert_file: PathBuf) -> Result<EtcdTls> {
        let unusable = |error: rustls::Error| {
            Error::new(Kind::Usage, format!("this host's key or certificate cannot be used for TLS to etcd: {error}"))
        };
        // ring's default suites in their default order: etcd's calls are a
        // few hundred bytes, not worth choosing by the CPU as agents do.
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let config = ClientConfig::builder_with_provider(provider)
            .with_protocol_versions(&[&rustls::version::TLS13])
            .map_err(unusable)?
            .with_root_certificates(roots)
            .with_client_auth_cert(vec![identity.cert.clone()], PrivateKeyDer::Pkcs8(identity.key.clone_key()))
            .map_err(unusable)?;
        Ok(EtcdTls { config: Arc::new(config), ca_file, cert_file })
    }

    /// What went wrong in a TLS handshake that failed a call, with what to
    /// do about it; None when the failure was not the handshake's. A failed
    /// handshake means etcd did not read the request.
    pub(crate) fn describe(&self, error: &ureq::Error) -> Option<String> {
        let ureq::Error::Io(io) = error else { return None };
        let rustls = io.get_ref()?.downcast_ref::<rustls::Error>()?;
        let ca = self.ca_file.display();
        Some(match rustls {
            rustls::Error::InvalidCertificate(
                CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. },
            ) => format!(
                "etcd's certificate does not name the host of its URL ({rustls}): give --etcd the name or address \
                 its certificate is for, or reissue it (etcd's --cert-file) with that one among its names"
            ),
            rustls::Error::InvalidCertificate(
                why @ (CertificateError::Expired
                | CertificateError::ExpiredContext { .. }
                | CertificateError::NotValidYet
                | CertificateError::NotValidYetContext { .. }),
            ) => format!("etcd's certificate is not valid now ({why:?}): renew etcd's --cert-file, or check this host's clock"),
            rustls::Error::InvalidCertificate(why) => format!(
                "etcd's certificate is not trusted: it is not issued by the CA in {ca} ({why:?}) — give --etcd-ca the \
                 CA that issued etcd's --cert-file"
            ),
            rustls::Error::AlertReceived(
                alert @ (AlertDescription::BadCertificate
                | AlertDescription::UnknownCA
                | AlertDescription::CertificateUnknown
                | AlertDescription::CertificateRequired
                | AlertDescription::UnsupportedCertificate
                | AlertDescription::CertificateExpired
                | AlertDescription::CertificateRevoked
                | AlertDescription::AccessDenied),
            ) => format!(
                "etcd refused this host's certificate ({alert:?}): {} must be issued by the CA in etcd's \
                 --trusted-ca-file and be valid — run `ferry keys csr`, have that CA sign it, then `ferry keys \
                 install-cert FILE`",
                self.cert_file.display()
            ),
            rustls::Error::AlertReceived(AlertDescription::ProtocolVersion | AlertDescription::HandshakeFailure) => {
                format!("etcd does not speak TLS 1.3 ({rustls}): drop etcd's --cipher-suites (which limits it to TLS 1.2)")
            }
            rustls::Error::InvalidMessage(_) | rustls::Error::InappropriateMessage { .. } => {
                format!("etcd does not answer in TLS ({rustls}): is it serving http:// at that address?")
            }
            rustls::Error::PeerIncompatible(_)
            | rustls::Error::PeerMisbehaved(_)
            | rustls::Error::NoCertificatesPresented
            | rustls::Error::AlertReceived(_) => format!("the TLS handshake with etcd failed: {rustls}"),
            // Not the handshake: the request may have been read, and the
            // caller treats it as any broken connection.
            _ => return None,
        })
    }
}

/// The CA certificates in `file` (PEM), as trust anchors.
fn read_ca(file: &Path) -> Result<RootCertStore> {
    let unusable = |why: String| Error::new(Kind::Usage, format!("--etcd-ca {} is unusable: {why}", file.display()));
    let pem = fs::read(file).map_err(|e| unusable(e.to_string()))?;
    let mut roots = RootCertStore::empty();
    for cert in CertificateDer::pem_slice_iter(&pem) {
        let cert = cert.map_err(|e| unusable(format!("{e:?}")))?;
        roots.add(cert).map_err(|e| unusable(format!("not a CA certificate ({e})")))?;
    }
    if roots.is_empty() {
        return Err(unusable("it holds no PEM certificate".to_string()));
    }
    Ok(roots)
}
