//! Mutual TLS through the real agent server on loopback, with certificates
//! made here: pinned self-signed keys, a fleet CA, an expired certificate,
//! one for another address.

use std::io::Read;
use std::net::{SocketAddr, TcpStream};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::thread;

use rcgen::{BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair, KeyUsagePurpose};
use rustls::crypto::ring::cipher_suite::{TLS13_AES_256_GCM_SHA384, TLS13_CHACHA20_POLY1305_SHA256};
use rustls::{ClientConnection, ServerConnection};
use sha2::{Digest, Sha256};
use ureq::unversioned::resolver::DefaultResolver;
use ureq::unversioned::transport::{Connector, TcpConnector};

use super::connector::{TlsConnector, describe};
use super::*;
use crate::identity::{Fingerprint, Pinned};
use crate::testing::TempDir;
use crate::transfer::http::{self, Limits, Method, Request};

/// A host's key and certificate, as `ferry keys init` or the fleet CA makes them.
struct Made {
    key: KeyPair,
    params: CertificateParams,
    cert_pem: String,
}

fn params(name: &str, sans: &[&str]) -> CertificateParams {
    let mut params = CertificateParams::new(sans.iter().map(|s| s.to_string()).collect::<Vec<_>>()).unwrap();
    params.distinguished_name.push(DnType::CommonName, name);
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth, ExtendedKeyUsagePurpose::ClientAuth];
    params
}

fn self_signed(name: &str, sans: &[&str]) -> Made {
    let key = KeyPair::generate_for(&rcgen::PKCS_ED25519).unwrap();
    let params = params(name, sans);
    let cert_pem = params.self_signed(&key).unwrap().pem();
    Made { key, params, cert_pem }
}

fn expired(name: &str) -> Made {
    let key = KeyPair::generate_for(&rcgen::PKCS_ED25519).unwrap();
    let mut params = params(name, &["127.0.0.1"]);
    params.not_before = rcgen::date_time_ymd(2000, 1, 1);
    params.not_after = rcgen::date_time_ymd(2001, 1, 1);
    let cert_pem = params.self_signed(&key).unwrap().pem();
    Made { key, params, cert_pem }
}

fn fleet_ca() -> Made {
    let key = KeyPair::generate_for(&rcgen::PKCS_ED25519).unwrap();
    let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
    params.distinguished_name.push(DnType::CommonName, "fleet CA");
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::DigitalSignature];
    let cert_pem = params.self_signed(&key).unwrap().pem();
    Made { key, params, cert_pem }
}

fn issued_by(ca: &Made, name: &str, sans: &[&str]) -> Made {
    let key = KeyPair::generate_for(&rcgen::PKCS_ED25519).unwrap();
    let params = params(name, sans);
    let issuer = Issuer::from_params(&ca.params, &ca.key);
    let cert_pem = params.signed_by(&key, &issuer).unwrap().pem();
    Made { key, params, cert_pem }
}

impl Made {
    fn der(&self) -> CertificateDer<'static> {
        use rustls::pki_types::pem::PemObject;
        CertificateDer::from_pem_slice(self.cert_pem.as_bytes()).unwrap()
    }

    fn fingerprint(&self) -> Fingerprint {
        Fingerprint::of_cert(&self.der()).unwrap()
    }

    fn pin(&self, name: &str) -> Pinned {
        Pinned { name: name.to_string(), fingerprint: self.fingerprint() }
    }

    /// This host as ferry loads it from its config folder.
    fn tls(&self, trust: Trust) -> Tls {
        let dir = TempDir::new(&format!("tls-{}", &self.fingerprint().hex()[..12]));
        std::fs::write(dir.path().join(identity::KEY_FILE), self.key.serialize_pem()).unwrap();
        std::fs::write(dir.path().join(identity::CERT_FILE), &self.cert_pem).unwrap();
        Tls::new(std::sync::Arc::new(Identity::load(dir.path()).unwrap()), trust)
    }
}

fn pinned(pins: Vec<Pinned>) -> Trust {
    Trust { pinned: pins, ca: Vec::new() }
}

fn ca_only(ca: &Made) -> Trust {
    Trust { pinned: Vec::new(), ca: vec![ca.der()] }
}

/// An agent on loopback that answers who called (GET) or the SHA-256 of
/// the body (POST); counts the requests its handler saw.
fn agent(tls: Option<&Tls>) -> (SocketAddr, Arc<AtomicUsize>) {
    // Short, for the stalled-handshake test; room enough for a handshake under qemu.
    let limits = Limits { head_timeout: Duration::from_secs(3), ..Limits::default() };
    let mut server = http::Server::bind("127.0.0.1:0", limits).unwrap();
    if let Some(tls) = tls {
        server = server.with_tls(tls.acceptor().unwrap());
    }
    let addr = server.local_addr().unwrap();
    let calls = Arc::new(AtomicUsize::new(0));
    let counted = calls.clone();
    thread::spawn(move || server.serve(&move |request| handle(&counted, request)));
    (addr, calls)
}

fn handle(calls: &AtomicUsize, mut request: Request<'_>) {
    calls.fetch_add(1, Ordering::SeqCst);
    let caller = request.peer().map_or_else(|| "nobody".to_string(), |p| format!("{} {}", p.name, p.fingerprint));
    if request.method() != Method::Post {
        let _ = request.respond(200, "text/plain", caller.as_bytes());
        return;
    }
    let mut hash = Sha256::new();
    let mut buffer = vec![0; 64 << 10];
    let mut total = 0;
    loop {
        match request.as_reader().read(&mut buffer) {
            Ok(0) => break,
            Ok(n) => {
                hash.update(&buffer[..n]);
                total += n;
            }
            Err(e) => {
                let _ = request.respond(500, "text/plain", e.to_string().as_bytes());
                return;
            }
        }
    }
    let answer = format!("{total} {}", crate::payload::hex(&hash.finalize()));
    let _ = request.respond(200, "text/plain", answer.as_bytes());
}

fn client(config: Arc<ClientConfig>) -> ureq::Agent {
    // A bound for a hung test, not a speed target: `make arm-test` runs these
    // unoptimized under qemu, where a few MiB take seconds.
    let settings = ureq::Agent::config_builder().http_status_as_error(false).timeout_global(Some(Duration::from_secs(120))).build();
    ureq::Agent::with_parts(settings, ().chain(TcpConnector::default()).chain(TlsConnector { config }), DefaultResolver::default())
}

fn get(tls: &Tls, url: &str) -> std::result::Result<String, ureq::Error> {
    let mut response = client(tls.client_config().unwrap()).get(url).call()?;
    Ok(response.body_mut().read_to_string().unwrap())
}

fn failure(result: std::result::Result<String, ureq::Error>) -> String {
    let error = result.expect_err("the call should fail");
    describe(&error).unwrap_or_else(|| panic!("not a TLS failure: {error}"))
}

#[test]
fn mutual_tls_names_the_pinned_client() {
    let (agent_host, source) = (self_signed("agent", &["127.0.0.1"]), self_signed("source", &["127.0.0.1"]));
    let agent_tls = agent_host.tls(pinned(vec![source.pin("source-a")]));
    let source_tls = source.tls(pinned(vec![agent_host.pin("agent-b")]));
    let (addr, calls) = agent(Some(&agent_tls));
    let answer = get(&source_tls, &format!("https://{addr}/who")).unwrap();
    assert_eq!(answer, format!("source-a {}", source.fingerprint()));
    // A second call (a pooled or a new connection) works as well.
    let answer = get(&source_tls, &format!("https://{addr}/who")).unwrap();
    assert!(answer.starts_with("source-a "), "{answer}");
    assert_eq!(calls.load(Ordering::SeqCst), 2);
}

#[test]
fn plain_tcp_has_no_peer() {
    let (addr, _) = agent(None);
    let mut response = ureq::get(format!("http://{addr}/who")).call().unwrap();
    assert_eq!(response.body_mut().read_to_string().unwrap(), "nobody");
}

#[test]
fn a_large_body_streams_through_intact() {
    let (agent_host, source) = (self_signed("agent", &["127.0.0.1"]), self_signed("source", &["127.0.0.1"]));
    let agent_tls = agent_host.tls(pinned(vec![source.pin("source")]));
    let source_tls = source.tls(pinned(vec![agent_host.pin("agent")]));
    let (addr, _) = agent(Some(&agent_tls));
    // 2 MiB: 128 TLS records, through `100 Continue` and the guard's body reads.
    let body: Vec<u8> = (0..2u32 << 20).map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8).collect();
    let expected = format!("{} {}", body.len(), crate::payload::hex(&Sha256::digest(&body)));
    let reader: &mut dyn Read = &mut &body[..];
    let mut response = client(source_tls.client_config().unwrap())
        .post(format!("https://{addr}/upload"))
        .header("Expect", "100-continue")
        .send(ureq::SendBody::from_reader(reader))
        .unwrap();
    assert_eq!(response.body_mut().read_to_string().unwrap(), expected);
}

#[test]
fn a_client_without_certificate_is_refused_before_http() {
    let (agent_host, source) = (self_signed("agent", &["127.0.0.1"]), self_signed("source", &["127.0.0.1"]));
    let agent_tls = agent_host.tls(pinned(vec![source.pin("source")]));
    let (addr, calls) = agent(Some(&agent_tls));
    let provider = provider(true);
    let verifier = Arc::new(AgentVerifier { trust: Arc::new(pinned(vec![agent_host.pin("agent")])), algorithms: provider.signature_verification_algorithms });
    let config = ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])
        .unwrap()
        .dangerous()
        .with_custom_certificate_verifier(verifier)
        .with_no_client_auth();
    let result = client(Arc::new(config)).get(format!("https://{addr}/who")).call();
    let why = describe(&result.expect_err("no certificate, no answer")).unwrap();
    assert!(why.contains("refused our certificate"), "{why}");
    assert_eq!(calls.load(Ordering::SeqCst), 0, "the handler ran");
}

#[test]
fn untrusted_and_expired_clients_are_refused() {
    let agent_host = self_signed("agent", &["127.0.0.1"]);
    let (stranger, old) = (self_signed("stranger", &["127.0.0.1"]), expired("old"));
    // The old key is pinned: the pin does not make its expired certificate valid.
    let agent_tls = agent_host.tls(pinned(vec![old.pin("old")]));
    let (addr, calls) = agent(Some(&agent_tls));
    for source in [&stranger, &old] {
        let source_tls = source.tls(pinned(vec![agent_host.pin("agent")]));
        let why = failure(get(&source_tls, &format!("https://{addr}/who")));
        assert!(why.contains("refused our certificate"), "{why}");
    }
    assert_eq!(calls.load(Ordering::SeqCst), 0, "the handler ran");
}

#[test]
fn the_client_refuses_an_untrusted_agent() {
    let (agent_host, source, other) =
        (self_signed("agent", &["127.0.0.1"]), self_signed("source", &["127.0.0.1"]), self_signed("other", &["127.0.0.1"]));
    let agent_tls = agent_host.tls(pinned(vec![source.pin("source")]));
    let source_tls = source.tls(pinned(vec![other.pin("other")]));
    let (addr, calls) = agent(Some(&agent_tls));
    let why = failure(get(&source_tls, &format!("https://{addr}/who")));
    assert!(why.contains(&format!("its key {} is not trusted here", agent_host.fingerprint())), "{why}");
    assert!(why.contains("ferry trust add"), "{why}");
    assert_eq!(calls.load(Ordering::SeqCst), 0);
    // Through the typed client, the error names the agent.
    let peer = crate::transfer::client::Peer::new(&addr.to_string(), &crate::transfer::client::Link { tls: Some(source_tls.client_config().unwrap()), ..Default::default() }, Duration::from_secs(5));
    let error = peer.info().unwrap_err().to_string();
    assert!(error.contains(&format!("the agent at {addr} is not trusted: its key")), "{error}");
}

#[test]
fn under_the_fleet_ca_the_agent_must_be_named_for_the_address_dialled() {
    let ca = fleet_ca();
    let source = issued_by(&ca, "source-ca", &["10.0.0.1"]);
    let source_tls = source.tls(ca_only(&ca));
    // Issued for 127.0.0.1: accepted; the agent names the source by its CN.
    let right = issued_by(&ca, "agent-right", &["127.0.0.1"]);
    let (addr, _) = agent(Some(&right.tls(ca_only(&ca))));
    let answer = get(&source_tls, &format!("https://{addr}/who")).unwrap();
    assert!(answer.starts_with("source-ca sha256:"), "{answer}");
    // Issued for another address: refused, though the CA vouches for it.
    let wrong = issued_by(&ca, "agent-wrong", &["10.9.9.9", "elsewhere.example"]);
    let (addr, calls) = agent(Some(&wrong.tls(ca_only(&ca))));
    let why = failure(get(&source_tls, &format!("https://{addr}/who")));
    assert!(why.contains("not trusted") && why.contains("127.0.0.1"), "{why}");
    assert_eq!(calls.load(Ordering::SeqCst), 0);
    // Pinned, the same certificate is accepted whatever the address.
    let pinning = source.tls(Trust { pinned: vec![wrong.pin("wrong")], ca: vec![ca.der()] });
    assert!(get(&pinning, &format!("https://{addr}/who")).unwrap().starts_with("source-ca "));
}

#[test]
fn a_stalled_handshake_is_closed() {
    let agent_host = self_signed("agent", &["127.0.0.1"]);
    let (addr, calls) = agent(Some(&agent_host.tls(pinned(vec![self_signed("x", &[]).pin("x")]))));
    let mut socket = TcpStream::connect(addr).unwrap();
    socket.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    let started = Instant::now();
    // Nothing sent: the agent closes after head_timeout (3 s here), not before.
    let read = socket.read(&mut [0; 16]);
    assert!(matches!(read, Ok(0)) || matches!(&read, Err(e) if e.kind() == io::ErrorKind::ConnectionReset), "{read:?}");
    assert!(started.elapsed() >= Duration::from_millis(2900), "closed after {:?}", started.elapsed());
    assert_eq!(calls.load(Ordering::SeqCst), 0);
}

#[test]
fn chacha20_comes_first_without_aes() {
    assert_eq!(cipher_suites(false)[0].suite(), TLS13_CHACHA20_POLY1305_SHA256.suite());
    assert_eq!(cipher_suites(true)[0].suite(), TLS13_AES_256_GCM_SHA384.suite());
    let (agent_host, source) = (self_signed("agent", &["127.0.0.1"]), self_signed("source", &["127.0.0.1"]));
    let agent_tls = agent_host.tls(pinned(vec![source.pin("source")]));
    let source_tls = source.tls(pinned(vec![agent_host.pin("agent")]));
    // (agent has AES, source has AES) → AES; either without → ChaCha20: a
    // board without AES prefers it as a server, and asks for it as a client.
    for (agent_aes, source_aes, expected) in [
        (true, true, TLS13_AES_256_GCM_SHA384),
        (false, true, TLS13_CHACHA20_POLY1305_SHA256),
        (true, false, TLS13_CHACHA20_POLY1305_SHA256),
    ] {
        let server = agent_tls.server_config(agent_aes).unwrap();
        let client = source_tls.client_config_for(source_aes).unwrap();
        let name = ServerName::try_from("127.0.0.1").unwrap();
        let mut client = ClientConnection::new(Arc::new(client), name).unwrap();
        let mut server = ServerConnection::new(Arc::new(server)).unwrap();
        handshake_in_memory(&mut client, &mut server);
        assert_eq!(server.negotiated_cipher_suite().unwrap().suite(), expected.suite(), "agent AES {agent_aes}, source AES {source_aes}");
    }
}

fn handshake_in_memory(client: &mut ClientConnection, server: &mut ServerConnection) {
    fn carry(from: &mut dyn FnMut(&mut Vec<u8>) -> bool, to: &mut dyn FnMut(&mut &[u8])) {
        let mut bytes = Vec::new();
        while from(&mut bytes) {}
        let mut left = &bytes[..];
        while !left.is_empty() {
            to(&mut left);
        }
    }
    for _ in 0..8 {
        carry(&mut |out| client.wants_write() && client.write_tls(out).unwrap() > 0, &mut |input| {
            server.read_tls(input).unwrap();
            server.process_new_packets().unwrap();
        });
        carry(&mut |out| server.wants_write() && server.write_tls(out).unwrap() > 0, &mut |input| {
            client.read_tls(input).unwrap();
            client.process_new_packets().unwrap();
        });
        if !client.is_handshaking() && !server.is_handshaking() {
            return;
        }
    }
    panic!("the handshake did not complete");
}


#[test]
fn loading_says_what_is_missing() {
    let dir = TempDir::new("tls-load");
    let error = Tls::load(dir.path()).unwrap_err().to_string();
    assert!(error.contains("ferry keys init"), "{error}");
    let host = self_signed("host", &["127.0.0.1"]);
    std::fs::write(dir.path().join(identity::KEY_FILE), host.key.serialize_pem()).unwrap();
    std::fs::write(dir.path().join(identity::CERT_FILE), &host.cert_pem).unwrap();
    let error = Tls::load(dir.path()).unwrap_err().to_string();
    assert!(error.contains("ferry trust add NAME sha256:") && error.contains(identity::CA_FILE), "{error}");
    std::fs::write(dir.path().join(identity::TRUST_FILE), format!("peer {}\n", self_signed("peer", &[]).fingerprint())).unwrap();
    let tls = Tls::load(dir.path()).unwrap();
    assert!(tls.acceptor().is_ok() && tls.client_config().is_ok());
}
