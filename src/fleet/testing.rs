//! A real etcd for the fleet's unit tests: Debian's `etcd` binary (installed
//! by tests/scripts/setup-host.sh) on free loopback ports with a data dir of
//! its own, stopped by its PID and its data removed when dropped.

use std::net::{TcpListener, TcpStream};
use std::process::{Child, Command, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use crate::testing::TempDir;

pub(crate) struct LocalEtcd {
    pub url: String,
    child: Child,
    _data: TempDir,
}

impl LocalEtcd {
    pub(crate) fn start(label: &str) -> LocalEtcd {
        let data = TempDir::new(&format!("etcd-{label}"));
        let (client, peer) = (free_port(), free_port());
        let url = format!("http://127.0.0.1:{client}");
        let peer_url = format!("http://127.0.0.1:{peer}");
        let child = Command::new("etcd")
            .args(["--name", "test", "--data-dir"])
            .arg(data.path().join("data"))
            .args(["--listen-client-urls", &url, "--advertise-client-urls", &url])
            .args(["--listen-peer-urls", &peer_url, "--initial-advertise-peer-urls", &peer_url])
            .args(["--initial-cluster", &format!("test={peer_url}")])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("etcd runs (tests/scripts/setup-host.sh installs it)");
        let etcd = LocalEtcd { url, child, _data: data };
        let deadline = Instant::now() + Duration::from_secs(20);
        let addr = format!("127.0.0.1:{client}");
        while TcpStream::connect(&addr).is_err() || super::etcd::Etcd::connect(&etcd.url).unwrap().get("/").is_err() {
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
