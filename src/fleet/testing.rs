//! A real etcd for the fleet's unit tests: Debian's `etcd` binary (installed
//! by tests/scripts/setup-host.sh) on free loopback ports with a data dir of
//! its own, stopped by its PID and its data removed when dropped; over
//! plain http, or https with client certificates.

use std::ffi::OsString;
use std::net::{TcpListener, TcpStream};
use std::process::{Child, Command, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use super::etcd::{Etcd, EtcdTls};
use crate::identity::testing::{self, TestCert};
use crate::testing::TempDir;

pub(crate) struct LocalEtcd {
    pub url: String,
    child: Child,
    _data: TempDir,
    /// Its certificate and key, and its CA, when it serves https.
    _tls_files: Option<TempDir>,
}

impl LocalEtcd {
    pub(crate) fn start(label: &str) -> LocalEtcd {
        LocalEtcd::spawn(label, "http", &[], |url| Etcd::connect(url).unwrap())
    }

    /// etcd serving its clients over TLS as etcd's docs set it up: a
    /// certificate issued by `ca` for 127.0.0.1, and client certificates
    /// required and checked against `ca` (`--client-cert-auth`). All keys,
    /// the CA's too, are Ed25519 as ferry makes them.
    pub(crate) fn start_tls(label: &str, ca: &TestCert) -> LocalEtcd {
        let files = TempDir::new(&format!("etcd-{label}-tls"));
        let server = testing::issued_by(ca, "etcd", &["127.0.0.1"], -1..3650);
        let write = |name: &str, text: &str| {
            let path = files.path().join(name);
            std::fs::write(&path, text).unwrap();
            path.into_os_string()
        };
        let args = [
            "--cert-file".into(),
            write("server.pem", &server.pem),
            "--key-file".into(),
            write("server-key.pem", &server.key.serialize_pem()),
            "--client-cert-auth".into(),
            "--trusted-ca-file".into(),
            write("ca.pem", &ca.pem),
        ];
        // Whether it answers is asked as a host whose certificate `ca` issued.
        let client = TempDir::new(&format!("etcd-{label}-ready"));
        testing::issued_by(ca, "ready", &[], -1..3650).install(client.path());
        ca.install_as_ca(client.path());
        let mut etcd = LocalEtcd::spawn(label, "https", &args, |url| {
            Etcd::connect_with(url, Some(EtcdTls::load(client.path(), None).unwrap())).unwrap()
        });
        etcd._tls_files = Some(files);
        etcd
    }

    /// etcd with its client URL as `scheme` and `extra` arguments, once
    /// `connect` reaches it.
    fn spawn(label: &str, scheme: &str, extra: &[OsString], connect: impl Fn(&str) -> Etcd) -> LocalEtcd {
        let data = TempDir::new(&format!("etcd-{label}"));
        let (client, peer) = (free_port(), free_port());
        let url = format!("{scheme}://127.0.0.1:{client}");
        let peer_url = format!("http://127.0.0.1:{peer}");
        let child = Command::new("etcd")
            .args(["--name", "test", "--data-dir"])
            .arg(data.path().join("data"))
            .args(["--listen-client-urls", &url, "--advertise-client-urls", &url])
            .args(["--listen-peer-urls", &peer_url, "--initial-advertise-peer-urls", &peer_url])
            .args(["--initial-cluster", &format!("test={peer_url}")])
            .args(extra)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("etcd runs (tests/scripts/setup-host.sh installs it)");
        let etcd = LocalEtcd { url, child, _data: data, _tls_files: None };
        let deadline = Instant::now() + Duration::from_secs(20);
        let addr = format!("127.0.0.1:{client}");
        while TcpStream::connect(&addr).is_err() || connect(&etcd.url).get("/").is_err() {
            assert!(Instant::now() < deadline, "etcd did not come up on {}", etcd.url);
            thread::sleep(Duration::from_millis(50));
        }
        etcd
    }
}

impl Drop for LocalEtcd {
    fn drop(&mut self) {
        // SAFETY: kill(2) on the PID of a child not yet waited for.
        unsafe { libc::kill(self.child.id() as libc::pid_t, libc::SIGTERM) };
        let _ = self.child.wait();
    }
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}
