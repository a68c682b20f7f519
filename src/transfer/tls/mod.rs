//! TLS 1.3 with mutual authentication between sources and agents (issue 12).
//!
//! Both ends present this host's certificate ([`Identity`]) and accept the
//! other's only when [`Trust::identify`] does: the agent requires a client
//! certificate good for [`Usage::Source`], the source requires the agent's to
//! be good for [`Usage::Agent`]. A pinned key is an identity by itself; a key
//! vouched for only by the fleet CA must also be issued for the address the
//! source dialled ([`Trust::check_name`]). Signatures inside the handshake are
//! checked by ring's TLS 1.3 algorithms.
//!
//! Only TLS 1.3 is spoken, without session resumption: every connection
//! presents and checks certificates afresh, so a key removed from `trusted`
//! is refused from its next connection on. On CPUs without AES instructions
//! (many ARM boards) ChaCha20-Poly1305 is preferred, being several times
//! faster there in software than AES-GCM.
//!
//! The agent side is [`Acceptor`] (used by `http::Server`); the source side is
//! [`connector::TlsConnector`], a ureq connector over ureq's TCP one.

pub(crate) mod connector;
#[cfg(test)]
mod tests;

use std::fmt;
use std::io::{self, Write};
use std::net::{Shutdown, TcpStream};
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::{CryptoProvider, WebPkiSupportedAlgorithms};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::server::NoServerSessionStorage;
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::{
    CertificateError, ClientConfig, DigitallySignedStruct, DistinguishedName, OtherError, ServerConfig, ServerConnection,
    SignatureScheme, StreamOwned, SupportedCipherSuite,
};

use super::http::Stream;
use crate::error::{Error, Kind, Result};
use crate::identity::{self, Identity, Trust, Usage};

/// This host's identity and whom it trusts, ready to make TLS configs.
pub(crate) struct Tls {
    identity: Arc<Identity>,
    trust: Arc<Trust>,
}

impl fmt::Debug for Tls {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Tls").field("identity", &self.identity).finish_non_exhaustive()
    }
}

impl Tls {
    /// This host's key and trust store from `dir`: the key must exist and
    /// at least one peer (or the fleet CA) must be trusted.
    pub(crate) fn load(dir: &Path) -> Result<Tls> {
        let identity = Identity::load(dir)?;
        let trust = Trust::load(dir)?;
        if trust.is_empty() {
            return Err(Error::new(
                Kind::Usage,
                format!(
                    "this host trusts no other host yet ({} has no entry and there is no {}): pin a peer's key with \
                     `ferry trust add NAME sha256:…`, or install the fleet CA as {}",
                    dir.join(identity::TRUST_FILE).display(),
                    dir.join(identity::CA_FILE).display(),
                    dir.join(identity::CA_FILE).display(),
                ),
            ));
        }
        Ok(Tls::new(Arc::new(identity), trust))
    }

    /// `trust`, and this host's own key: its agent answers its own tools.
    pub(crate) fn new(identity: Arc<Identity>, trust: Trust) -> Tls {
        let trust = trust.with_own(&identity);
        Tls { identity, trust: Arc::new(trust) }
    }

    /// This host's key, which also signs its payloads.
    pub(crate) fn identity(&self) -> &Arc<Identity> {
        &self.identity
    }

    pub(crate) fn trust(&self) -> &Trust {
        &self.trust
    }

    /// The agent's side, with the cipher suites this CPU runs fastest.
    pub(crate) fn acceptor(&self) -> Result<Arc<Acceptor>> {
        Ok(Arc::new(Acceptor { config: Arc::new(self.server_config(cpu_has_aes())?), trust: self.trust.clone() }))
    }

    /// The source's side, with the cipher suites this CPU runs fastest.
    pub(crate) fn client_config(&self) -> Result<Arc<ClientConfig>> {
        Ok(Arc::new(self.client_config_for(cpu_has_aes())?))
    }

    fn key(&self) -> PrivateKeyDer<'static> {
        PrivateKeyDer::Pkcs8(self.identity.key.clone_key())
    }

    pub(crate) fn server_config(&self, aes: bool) -> Result<ServerConfig> {
        let provider = provider(aes);
        let verifier = Arc::new(SourceVerifier { trust: self.trust.clone(), algorithms: provider.signature_verification_algorithms });
        let mut config = ServerConfig::builder_with_provider(provider)
            .with_protocol_versions(&[&rustls::version::TLS13])
            .map_err(unusable)?
            .with_client_cert_verifier(verifier)
            .with_single_cert(vec![self.identity.cert.clone()], self.key())
            .map_err(unusable)?;
        // Without AES instructions our preference (ChaCha20 first) wins over
        // a client that would pick AES-GCM because its own CPU is fast at it.
        config.ignore_client_order = !aes;
        config.session_storage = Arc::new(NoServerSessionStorage {});
        config.send_tls13_tickets = 0;
        Ok(config)
    }

    pub(crate) fn client_config_for(&self, aes: bool) -> Result<ClientConfig> {
        let provider = provider(aes);
        let verifier = Arc::new(AgentVerifier { trust: self.trust.clone(), algorithms: provider.signature_verification_algorithms });
        let mut config = ClientConfig::builder_with_provider(provider)
            .with_protocol_versions(&[&rustls::version::TLS13])
            .map_err(unusable)?
            .dangerous()
            .with_custom_certificate_verifier(verifier)
            .with_client_auth_cert(vec![self.identity.cert.clone()], self.key())
            .map_err(unusable)?;
        config.resumption = rustls::client::Resumption::disabled();
        Ok(config)
    }
}

fn unusable(error: rustls::Error) -> Error {
    Error::new(Kind::Usage, format!("this host's key or certificate cannot be used for TLS: {error}"))
}

/// Whether this CPU has AES instructions (AES-GCM is then the fastest suite).
pub(crate) fn cpu_has_aes() -> bool {
    #[cfg(any(target_arch = "x86_64", target_arch = "x86"))]
    let aes = std::arch::is_x86_feature_detected!("aes") && std::arch::is_x86_feature_detected!("pclmulqdq");
    #[cfg(target_arch = "aarch64")]
    let aes = std::arch::is_aarch64_feature_detected!("aes") && std::arch::is_aarch64_feature_detected!("pmull");
    // 32-bit ARM boards (Cortex-A7/A9) have no crypto extensions in practice.
    #[cfg(not(any(target_arch = "x86_64", target_arch = "x86", target_arch = "aarch64")))]
    let aes = false;
    aes
}

/// The TLS 1.3 suites in order of preference: ChaCha20 first without AES
/// instructions, ring's order (AES-GCM first) with them.
pub(crate) fn cipher_suites(aes: bool) -> Vec<SupportedCipherSuite> {
    use rustls::crypto::ring::cipher_suite::{TLS13_AES_128_GCM_SHA256, TLS13_AES_256_GCM_SHA384, TLS13_CHACHA20_POLY1305_SHA256};
    if aes {
        vec![TLS13_AES_256_GCM_SHA384, TLS13_AES_128_GCM_SHA256, TLS13_CHACHA20_POLY1305_SHA256]
    } else {
        vec![TLS13_CHACHA20_POLY1305_SHA256, TLS13_AES_256_GCM_SHA384, TLS13_AES_128_GCM_SHA256]
    }
}

fn provider(aes: bool) -> Arc<CryptoProvider> {
    Arc::new(CryptoProvider { cipher_suites: cipher_suites(aes), ..rustls::crypto::ring::default_provider() })
}

/// Why a certificate was refused, carried through rustls to the caller.
#[derive(Debug)]
pub(crate) struct Untrusted(pub String);

impl fmt::Display for Untrusted {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for Untrusted {}

fn untrusted(why: String) -> rustls::Error {
    rustls::Error::InvalidCertificate(CertificateError::Other(OtherError(Arc::new(Untrusted(why)))))
}

/// The agent's check of a source: a client certificate is required, and
/// accepted when the trust store identifies it as a source.
#[derive(Debug)]
struct SourceVerifier {
    trust: Arc<Trust>,
    algorithms: WebPkiSupportedAlgorithms,
}

impl ClientCertVerifier for SourceVerifier {
    fn client_auth_mandatory(&self) -> bool {
        true
    }

    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        &[]
    }

    fn verify_client_cert(&self, end_entity: &CertificateDer<'_>, intermediates: &[CertificateDer<'_>], now: UnixTime) -> std::result::Result<ClientCertVerified, rustls::Error> {
        self.trust.identify(end_entity, intermediates, now, Usage::Source).map_err(untrusted)?;
        Ok(ClientCertVerified::assertion())
    }

    fn verify_tls12_signature(&self, message: &[u8], cert: &CertificateDer<'_>, dss: &DigitallySignedStruct) -> std::result::Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.algorithms)
    }

    fn verify_tls13_signature(&self, message: &[u8], cert: &CertificateDer<'_>, dss: &DigitallySignedStruct) -> std::result::Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.algorithms.supported_schemes()
    }
}

/// The source's check of an agent: its key is pinned (the pin is the
/// identity, whatever address was dialled), or the fleet CA vouches for it
/// and its certificate names the address dialled.
#[derive(Debug)]
struct AgentVerifier {
    trust: Arc<Trust>,
    algorithms: WebPkiSupportedAlgorithms,
}

impl ServerCertVerifier for AgentVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        now: UnixTime,
    ) -> std::result::Result<ServerCertVerified, rustls::Error> {
        let peer = self.trust.identify(end_entity, intermediates, now, Usage::Agent).map_err(untrusted)?;
        if !self.trust.pinned.iter().any(|p| p.fingerprint == peer.fingerprint) {
            Trust::check_name(end_entity, server_name).map_err(untrusted)?;
        }
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(&self, message: &[u8], cert: &CertificateDer<'_>, dss: &DigitallySignedStruct) -> std::result::Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.algorithms)
    }

    fn verify_tls13_signature(&self, message: &[u8], cert: &CertificateDer<'_>, dss: &DigitallySignedStruct) -> std::result::Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.algorithms.supported_schemes()
    }
}

/// An accepted connection after its handshake.
pub(crate) type TlsStream = StreamOwned<ServerConnection, TcpStream>;

/// The agent's side: runs the handshake on an accepted connection.
pub(crate) struct Acceptor {
    config: Arc<ServerConfig>,
    trust: Arc<Trust>,
}

/// Why a handshake failed, and whether it is worth more than a debug line
/// (a certificate was refused, rather than a stranger or scanner going away).
#[derive(Debug)]
pub(crate) struct Refused {
    pub reason: String,
    pub notable: bool,
}

impl Acceptor {
    /// Runs the handshake within `within` as a whole, however slowly the
    /// client trickles it, and names the verified client. On failure the
    /// connection is closed after rustls's alert, if any, was sent.
    pub(crate) fn accept(&self, mut socket: TcpStream, within: Duration) -> std::result::Result<(TlsStream, identity::Peer), Refused> {
        let refused = |reason: String, notable: bool| Refused { reason, notable };
        let mut connection = ServerConnection::new(self.config.clone()).map_err(|e| refused(e.to_string(), true))?;
        if let Err(error) = handshake(&mut connection, &mut socket, Instant::now() + within) {
            let _ = socket.shutdown(Shutdown::Both);
            let notable = error.get_ref().is_some_and(|e| e.is::<rustls::Error>());
            return Err(refused(error.to_string(), notable));
        }
        let peer = match connection.peer_certificates() {
            Some([cert, intermediates @ ..]) => self.trust.identify(cert, intermediates, UnixTime::now(), Usage::Source),
            _ => Err("no client certificate".to_string()),
        };
        match peer {
            Ok(peer) => Ok((StreamOwned::new(connection, socket), peer)),
            Err(reason) => {
                let _ = socket.shutdown(Shutdown::Both);
                Err(refused(reason, true))
            }
        }
    }
}

/// Drives a server handshake to its end before `deadline`.
fn handshake(connection: &mut ServerConnection, socket: &mut TcpStream, deadline: Instant) -> io::Result<()> {
    let timed_out = || io::Error::new(io::ErrorKind::TimedOut, "the TLS handshake came too slowly");
    while connection.is_handshaking() {
        let left = deadline.checked_duration_since(Instant::now()).filter(|d| !d.is_zero()).ok_or_else(timed_out)?;
        socket.set_read_timeout(Some(left))?;
        socket.set_write_timeout(Some(left))?;
        while connection.wants_write() {
            connection.write_tls(socket)?;
        }
        if !connection.is_handshaking() {
            break;
        }
        match connection.read_tls(socket) {
            Ok(0) => return Err(io::Error::new(io::ErrorKind::UnexpectedEof, "the client closed during the TLS handshake")),
            Ok(_) => {}
            Err(e) if matches!(e.kind(), io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut) => return Err(timed_out()),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        }
        if let Err(error) = connection.process_new_packets() {
            // Tell the client why (the alert), best-effort.
            while connection.wants_write() {
                if connection.write_tls(socket).is_err() {
                    break;
                }
            }
            return Err(io::Error::new(io::ErrorKind::InvalidData, error));
        }
    }
    while connection.wants_write() {
        connection.write_tls(socket)?;
    }
    Ok(())
}

impl Stream for TlsStream {
    fn set_read_timeout(&self, timeout: Duration) -> io::Result<()> {
        self.sock.set_read_timeout(Some(timeout))
    }

    fn set_write_timeout(&self, timeout: Duration) -> io::Result<()> {
        self.sock.set_write_timeout(Some(timeout))
    }

    /// Says goodbye (close_notify) within the write timeout already set, then
    /// ends the TCP connection whatever happened.
    fn close(&mut self) {
        self.conn.send_close_notify();
        while self.conn.wants_write() {
            if self.conn.write_tls(&mut self.sock).is_err() {
                break;
            }
        }
        let _ = self.sock.flush();
        let _ = self.sock.shutdown(Shutdown::Both);
    }
}
