//! Host identities for the end-to-end tests, and a raw HTTPS client.
//!
//! Hosts A, B and C each get a key and certificate made by the real `ferry keys
//! init`, and trust one another with `ferry trust add`, once per test binary
//! run, in a folder under cargo's scratch space for integration tests. Every
//! ferry the tests start for A, B or C gets its folder as `FERRY_CONFIG_DIR`.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::{ClientConfig, DigitallySignedStruct, SignatureScheme};

pub struct Keys {
    pub a: PathBuf,
    pub b: PathBuf,
    pub c: PathBuf,
    pub fingerprint_a: String,
    pub fingerprint_b: String,
    pub fingerprint_c: String,
}

/// A's, B's and C's config folders, made on first use.
pub fn keys() -> &'static Keys {
    static KEYS: OnceLock<Keys> = OnceLock::new();
    KEYS.get_or_init(|| {
        let root = PathBuf::from(env!("CARGO_TARGET_TMPDIR"));
        // Folders of earlier runs whose process is gone.
        for entry in std::fs::read_dir(&root).into_iter().flatten().flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            if let Some(pid) = name.strip_prefix("e2e-keys-")
                && !Path::new(&format!("/proc/{pid}")).exists()
            {
                let _ = std::fs::remove_dir_all(entry.path());
            }
        }
        let dir = root.join(format!("e2e-keys-{}", std::process::id()));
        let (a, b, c) = (dir.join("a"), dir.join("b"), dir.join("c"));
        let fingerprint_a = keys_init(&a, "host-a");
        let fingerprint_b = keys_init(&b, "host-b");
        let fingerprint_c = keys_init(&c, "host-c");
        trust(&a, "host-b", &fingerprint_b);
        trust(&a, "host-c", &fingerprint_c);
        trust(&b, "host-a", &fingerprint_a);
        trust(&b, "host-c", &fingerprint_c);
        trust(&c, "host-a", &fingerprint_a);
        trust(&c, "host-b", &fingerprint_b);
        Keys { a, b, c, fingerprint_a, fingerprint_b, fingerprint_c }
    })
}

/// `ferry keys init` in `dir`; its fingerprint.
pub fn keys_init(dir: &Path, name: &str) -> String {
    let out = config_command(dir).args(["keys", "init", "--name", name, "--san", "127.0.0.1"]).output().unwrap();
    assert!(out.status.success(), "keys init: {}", String::from_utf8_lossy(&out.stderr));
    let text = String::from_utf8_lossy(&out.stdout);
    text.split_whitespace().find(|w| w.starts_with("sha256:")).expect("keys init prints the fingerprint").to_string()
}

/// `ferry trust add NAME FINGERPRINT` in `dir`.
pub fn trust(dir: &Path, name: &str, fingerprint: &str) {
    let out = config_command(dir).args(["trust", "add", name, fingerprint]).output().unwrap();
    assert!(out.status.success(), "trust add: {}", String::from_utf8_lossy(&out.stderr));
}

fn config_command(dir: &Path) -> Command {
    let mut command = Command::new(super::ferry_bin());
    command.env("FERRY_CONFIG_DIR", dir);
    command
}

/// Accepts any server certificate: the raw client tests what the agent
/// does with *its* certificate, not the agent's.
#[derive(Debug)]
struct AnyServer(Arc<rustls::crypto::CryptoProvider>);

impl ServerCertVerifier for AnyServer {
    fn verify_server_cert(
        &self,
        _: &CertificateDer<'_>,
        _: &[CertificateDer<'_>],
        _: &ServerName<'_>,
        _: &[u8],
        _: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.0.signature_verification_algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.0.signature_verification_algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

/// A client certificate to present: a config folder's, or explicit PEM files.
pub enum ClientCert<'a> {
    None,
    Dir(&'a Path),
    Pem { cert: &'a Path, key: &'a Path },
}

/// One HTTP/1.1 request over TLS 1.3 with `client`'s certificate; the status
/// and body, or the TLS error that ended it (an agent refusing the
/// certificate answers with an alert, never with HTTP).
pub fn https(addr: &str, client: ClientCert<'_>, method: &str, path: &str, headers: &[(&str, &str)], body: &[u8]) -> Result<(u16, String), String> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = ClientConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .unwrap()
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(AnyServer(provider)));
    let (cert, key) = match client {
        ClientCert::None => (None, None),
        ClientCert::Dir(dir) => (Some(dir.join("cert.pem")), Some(dir.join("key.pem"))),
        ClientCert::Pem { cert, key } => (Some(cert.to_path_buf()), Some(key.to_path_buf())),
    };
    let config = match (cert, key) {
        (Some(cert), Some(key)) => {
            let chain = vec![CertificateDer::from_pem_file(&cert).unwrap()];
            builder.with_client_auth_cert(chain, PrivateKeyDer::from_pem_file(&key).unwrap()).unwrap()
        }
        _ => builder.with_no_client_auth(),
    };
    let connection = rustls::ClientConnection::new(Arc::new(config), ServerName::try_from("127.0.0.1").unwrap()).unwrap();
    let socket = TcpStream::connect(addr).map_err(|e| format!("connect: {e}"))?;
    socket.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    let mut stream = rustls::StreamOwned::new(connection, socket);
    let mut head = format!("{method} {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\nContent-Length: {}\r\n", body.len());
    for (name, value) in headers {
        head.push_str(&format!("{name}: {value}\r\n"));
    }
    head.push_str("\r\n");
    stream.write_all(head.as_bytes()).map_err(|e| e.to_string())?;
    // An agent that refuses a request answers before it reads the body, and
    // may close before all of it is written: its answer is what counts.
    let _ = stream.write_all(body).and_then(|()| stream.flush());
    let mut answer = Vec::new();
    match stream.read_to_end(&mut answer) {
        Ok(_) => {}
        // Some agents close without close_notify after the answer.
        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof && !answer.is_empty() => {}
        Err(e) => return Err(e.to_string()),
    }
    let answer = String::from_utf8_lossy(&answer).into_owned();
    let status = answer.get(9..12).and_then(|s| s.parse().ok()).ok_or_else(|| format!("no HTTP answer: {answer:?}"))?;
    let body = answer.split_once("\r\n\r\n").map(|(_, b)| b.to_string()).unwrap_or_default();
    Ok((status, body))
}
