//! A real etcd for the fleet tests: Debian's `etcd` binary (installed by
//! tests/scripts/setup-host.sh) on free loopback ports with its own data
//! dir, so that tests never share one and need no engine of their own.

use std::net::TcpStream;
use std::process::{Child, Command, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use super::{free_port, Scratch};

/// One etcd, stopped by its PID (SIGTERM, then waited for) and its data dir
/// removed when dropped.
pub struct LocalEtcd {
    pub url: String,
    child: Child,
    _data: Scratch,
}

impl LocalEtcd {
    pub fn start(label: &str) -> LocalEtcd {
        let data = Scratch::new(&format!("etcd-{label}"));
        let (client, peer) = (free_port(), free_port());
        let url = format!("http://127.0.0.1:{client}");
        let peer_url = format!("http://127.0.0.1:{peer}");
        let child = Command::new("etcd")
            .args(["--name", "test", "--data-dir"])
            .arg(data.path("data"))
            .args(["--listen-client-urls", &url, "--advertise-client-urls", &url])
            .args(["--listen-peer-urls", &peer_url, "--initial-advertise-peer-urls", &peer_url])
            .args(["--initial-cluster", &format!("test={peer_url}")])
            .stdout(Stdio::null())
            .stderr(Stdio::from(std::fs::File::create(data.path("etcd.log")).unwrap()))
            .spawn()
            .expect("etcd runs (tests/scripts/setup-host.sh installs it)");
        let etcd = LocalEtcd { url, child, _data: data };
        let deadline = Instant::now() + Duration::from_secs(20);
        while !etcd.answers() {
            assert!(Instant::now() < deadline, "etcd did not come up on {}", etcd.url);
            thread::sleep(Duration::from_millis(50));
        }
        etcd
    }

    /// Whether it serves requests (it listens before it has a leader).
    fn answers(&self) -> bool {
        use std::io::{Read, Write};
        let Ok(mut stream) = TcpStream::connect(self.url.trim_start_matches("http://")) else { return false };
        let body = r#"{"key":"Lw=="}"#;
        let _ = write!(
            stream,
            "POST /v3/kv/range HTTP/1.1\r\nHost: x\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
            body.len()
        );
        let mut answer = String::new();
        let _ = stream.read_to_string(&mut answer);
        answer.starts_with("HTTP/1.1 200")
    }
}

impl Drop for LocalEtcd {
    fn drop(&mut self) {
        let _ = Command::new("kill").arg(self.child.id().to_string()).status();
        let _ = self.child.wait();
    }
}
