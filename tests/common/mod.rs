//! Helpers for the end-to-end tests: a real dockerd, real CRIU, the real
//! `ferry` binary, and the counter workload from tests/scripts/workload.
//!
//! These tests are `#[ignore]`d so that `cargo test` runs anywhere; `make test`
//! sets the host up, starts the engines and runs them with `--ignored`.
#![allow(dead_code)]

mod etcd;
mod tls;
#[allow(unused_imports)]
pub use etcd::LocalEtcd;
#[allow(unused_imports)]
pub use tls::{https, keys, keys_init, trust, ClientCert, Keys};

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::thread;
use std::time::{Duration, Instant};

pub const ENGINE_A: &str = "/var/run/docker.sock";
pub const ENGINE_B: &str = "/run/dockerb.sock";
pub const ENGINE_C: &str = "/run/dockerc.sock";
pub const WORKLOAD: &str = "ferry-workload:latest";
pub const REDIS: &str = "ferry-redis:latest";

/// ferry's exit codes, as the README documents them.
pub const USAGE: i32 = 2;
pub const DOCKER: i32 = 3;
pub const NOT_FOUND: i32 = 4;
pub const BAD_PAYLOAD: i32 = 6;
pub const REFUSED: i32 = 8;
pub const PEER: i32 = 9;

/// Waits (up to `limit`) until the counter in `name` has counted to at least
/// `at_least`: its memory is filled and it runs. Returns the count seen.
pub fn wait_for_count(socket: &str, name: &str, at_least: u64, limit: Duration) -> u64 {
    let deadline = Instant::now() + limit;
    loop {
        let count = latest_count(socket, name);
        if count >= at_least {
            return count;
        }
        assert!(Instant::now() < deadline, "{name} is not counting (count {count} after {limit:?})");
        thread::sleep(Duration::from_millis(100));
    }
}

pub fn ferry_bin() -> &'static str {
    env!("CARGO_BIN_EXE_ferry")
}

/// A folder for one test, removed at the end.
pub struct Scratch(pub PathBuf);

impl Scratch {
    pub fn new(label: &str) -> Scratch {
        let dir = std::env::temp_dir().join(format!("ferry-e2e-{label}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        Scratch(dir)
    }

    pub fn path(&self, name: &str) -> PathBuf {
        self.0.join(name)
    }

    pub fn work_dir(&self) -> PathBuf {
        self.0.join("work")
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Runs the docker CLI against one engine.
pub fn docker(socket: &str, args: &[&str]) -> Output {
    Command::new("docker")
        .arg("-H")
        .arg(format!("unix://{socket}"))
        .args(args)
        .output()
        .expect("the docker CLI runs")
}

pub fn docker_ok(socket: &str, args: &[&str]) -> String {
    let out = docker(socket, args);
    assert!(out.status.success(), "docker {args:?} failed: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

/// Runs ferry against one engine with its own work dir.
pub fn ferry(socket: &str, work_dir: &Path, args: &[&str]) -> Output {
    Command::new(ferry_bin())
        .env("FERRY_CONFIG_DIR", config_dir(socket))
        .arg("--docker-socket")
        .arg(socket)
        .arg("--work-dir")
        .arg(work_dir)
        .args(args)
        .output()
        .expect("ferry runs")
}

pub fn ferry_ok(socket: &str, work_dir: &Path, args: &[&str]) -> Output {
    let out = ferry(socket, work_dir, args);
    assert!(
        out.status.success(),
        "ferry {args:?} exited {:?}: {}",
        out.status.code(),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

pub fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// Asserts ferry failed with the documented exit code and said `message`.
pub fn expect_failure(out: &Output, code: i32, message: &str) {
    let text = stderr(out);
    assert_eq!(out.status.code(), Some(code), "wrong exit code; stderr:
{text}");
    assert!(text.contains(message), "stderr lacks {message:?}:
{text}");
}

/// Removes the named containers when dropped, so a failed test leaves none.
pub struct Containers {
    pub socket: &'static str,
    pub names: Vec<String>,
}

impl Containers {
    pub fn new(socket: &'static str) -> Containers {
        Containers { socket, names: Vec::new() }
    }

    pub fn track(&mut self, name: &str) -> String {
        let _ = docker(self.socket, &["rm", "-f", name]);
        self.names.push(name.to_string());
        name.to_string()
    }
}

impl Drop for Containers {
    fn drop(&mut self) {
        for name in &self.names {
            let _ = docker(self.socket, &["rm", "-f", name]);
        }
    }
}

/// Starts the counter workload holding `mib` MiB of random memory.
pub fn start_counter(socket: &str, name: &str, mib: u32) {
    docker_ok(socket, &["run", "-d", "--name", name, WORKLOAD, "/counter", &mib.to_string(), "100"]);
}

pub fn logs(socket: &str, name: &str) -> String {
    let out = docker(socket, &["logs", name]);
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Waits until the container's log has a line for which `pick` returns Some.
pub fn wait_for<T>(socket: &str, name: &str, what: &str, pick: impl Fn(&str) -> Option<T>) -> T {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let text = logs(socket, name);
        if let Some(found) = text.lines().rev().find_map(&pick) {
            return found;
        }
        assert!(Instant::now() < deadline, "{name} never logged {what}; its log:\n{text}");
        thread::sleep(Duration::from_millis(100));
    }
}

pub fn field<'a>(line: &'a str, key: &str) -> Option<&'a str> {
    line.split_whitespace().find_map(|word| word.strip_prefix(key)?.strip_prefix('='))
}

/// The newest `count=N` the container logged.
pub fn latest_count(socket: &str, name: &str) -> u64 {
    wait_for(socket, name, "a count", |line| field(line, "count")?.parse().ok())
}

/// The first `count=N` in the container's log.
pub fn first_count(socket: &str, name: &str) -> u64 {
    let text = logs(socket, name);
    text.lines().find_map(|line| field(line, "count")?.parse().ok()).expect("a count line")
}

/// Asks the counter to checksum its memory again and returns the answer.
pub fn memory_check(socket: &str, name: &str) -> String {
    docker_ok(socket, &["kill", "--signal", "USR1", name]);
    wait_for(socket, name, "check=", |line| field(line, "check").map(str::to_owned))
}

/// Asks the counter to call keyctl, which Docker's default seccomp profile
/// refuses, and returns the errno it got: 1 (EPERM) under that profile.
pub fn keyctl_errno(socket: &str, name: &str) -> i32 {
    docker_ok(socket, &["kill", "--signal", "USR2", name]);
    wait_for(socket, name, "keyctl_errno=", |line| field(line, "keyctl_errno")?.parse().ok())
}

/// The checksum the counter printed when it filled its memory.
pub fn memory_sum(socket: &str, name: &str) -> String {
    wait_for(socket, name, "sum=", |line| field(line, "sum").map(str::to_owned))
}

pub fn is_running(socket: &str, name: &str) -> bool {
    docker(socket, &["inspect", "-f", "{{.State.Running}}", name]).stdout.starts_with(b"true")
}

pub fn exists(socket: &str, name: &str) -> bool {
    docker(socket, &["inspect", name]).status.success()
}

/// Names of all containers on an engine.
pub fn all_containers(socket: &str) -> Vec<String> {
    docker_ok(socket, &["ps", "-a", "--format", "{{.Names}}"]).lines().map(str::to_owned).collect()
}

/// A file from a container's filesystem (running or not), via `docker cp`.
pub fn read_container_file(socket: &str, name: &str, path: &str, scratch: &Scratch) -> Option<String> {
    let target = scratch.path("copied");
    let _ = std::fs::remove_dir_all(&target);
    std::fs::create_dir_all(&target).unwrap();
    let out = docker(socket, &["cp", &format!("{name}:{path}"), target.to_str().unwrap()]);
    if !out.status.success() {
        return None;
    }
    let file_name = Path::new(path).file_name().unwrap();
    std::fs::read_to_string(target.join(file_name)).ok()
}

/// containerd's leftover checkpoint extractions (containerd issue 10166).
pub fn containerd_leftovers() -> usize {
    std::fs::read_dir("/tmp")
        .map(|entries| entries.flatten().filter(|e| e.file_name().to_string_lossy().starts_with("ctrd-checkpoint")).count())
        .unwrap_or(0)
}

/// Runs ferry against engine B, inside B's mount namespace (where B's data
/// root and runc state are at the standard paths).
pub fn ferry_on_b(work_dir: &Path, args: &[&str]) -> Output {
    ferry_on(ENGINE_B, work_dir, args)
}

/// Runs ferry as the host of `socket`: for B and C inside that engine's
/// mount namespace, as their agents run; for A the same as [`ferry`].
pub fn ferry_on(socket: &str, work_dir: &Path, args: &[&str]) -> Output {
    ferry_in_namespace_of(socket).arg("--work-dir").arg(work_dir).args(args).output().expect("ferry runs")
}

/// A ferry command (socket and config folder set) in the mount namespace of
/// the engine at `socket`.
fn ferry_in_namespace_of(socket: &str) -> Command {
    let mut command = match engine_pid(socket) {
        Some(pid) => {
            let mut nsenter = Command::new("nsenter");
            nsenter.arg(format!("--mount=/proc/{pid}/ns/mnt")).arg("--").arg(ferry_bin());
            nsenter
        }
        None => Command::new(ferry_bin()),
    };
    command.env("FERRY_CONFIG_DIR", config_dir(socket)).args(["--docker-socket", socket]);
    command
}

/// The config folder (key, certificate, trusted peers) of the host whose
/// engine is at `socket`.
pub fn config_dir(socket: &str) -> &'static Path {
    match socket {
        ENGINE_B => &keys().b,
        ENGINE_C => &keys().c,
        _ => &keys().a,
    }
}

/// A ferry command for the host of `socket`, with its config folder.
pub fn ferry_command(socket: &str) -> Command {
    let mut command = Command::new(ferry_bin());
    command.env("FERRY_CONFIG_DIR", config_dir(socket));
    command
}

/// `ferry checkpoint --leave-running` of `container` on engine A into `out`,
/// signed by the key in `config` instead of host A's.
pub fn checkpoint_as(config: &Path, work_dir: &Path, container: &str, out: &Path) {
    let done = ferry_command(ENGINE_A)
        .env("FERRY_CONFIG_DIR", config)
        .args(["--docker-socket", ENGINE_A, "--work-dir"])
        .arg(work_dir)
        .args(["checkpoint", container, "--leave-running", "-o"])
        .arg(out)
        .output()
        .expect("ferry runs");
    assert!(done.status.success(), "checkpoint as {}: {}", config.display(), stderr(&done));
}

pub fn engine_b_pid() -> String {
    std::fs::read_to_string("/run/dockerb.pid").expect("engine B runs (tests/scripts/engines.sh start b)").trim().to_string()
}

pub fn engine_c_pid() -> String {
    std::fs::read_to_string("/run/dockerc.pid").expect("engine C runs (tests/scripts/engines.sh start c)").trim().to_string()
}

/// The dockerd PID of a namespaced engine (B or C), whose mount namespace its
/// ferry must enter; None for A, which lives in this namespace.
pub fn engine_pid(socket: &str) -> Option<String> {
    match socket {
        ENGINE_B => Some(engine_b_pid()),
        ENGINE_C => Some(engine_c_pid()),
        _ => None,
    }
}

/// A free TCP port on loopback.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// A `ferry serve` process, killed (by its PID) when dropped.
pub struct AgentProcess {
    pub addr: String,
    pub child: std::process::Child,
}

impl AgentProcess {
    /// Starts an agent for engine A (`on_b` false) or B, and waits for /health.
    pub fn start(on_b: bool, spool: &Path, token_file: &Path, extra: &[&str]) -> AgentProcess {
        AgentProcess::start_on(engine_of(on_b), spool, token_file, extra)
    }

    /// The same, listening on `addr`.
    pub fn start_at(on_b: bool, addr: &str, spool: &Path, token_file: &Path, extra: &[&str]) -> AgentProcess {
        AgentProcess::start_on_at(engine_of(on_b), addr, spool, token_file, extra)
    }

    /// The same, with the key and trust store in `config` instead of its host's.
    pub fn start_as(on_b: bool, addr: &str, config: &Path, spool: &Path, token_file: &Path, extra: &[&str]) -> AgentProcess {
        AgentProcess::start_on_as(engine_of(on_b), addr, config, spool, token_file, extra)
    }

    /// Starts the agent of the host whose engine is at `socket` (A, B or C).
    pub fn start_on(socket: &str, spool: &Path, token_file: &Path, extra: &[&str]) -> AgentProcess {
        AgentProcess::start_on_at(socket, &format!("127.0.0.1:{}", free_port()), spool, token_file, extra)
    }

    /// The same, listening on `addr`.
    pub fn start_on_at(socket: &str, addr: &str, spool: &Path, token_file: &Path, extra: &[&str]) -> AgentProcess {
        AgentProcess::start_on_as(socket, addr, config_dir(socket), spool, token_file, extra)
    }

    /// The same, with the key and trust store in `config` instead of its host's.
    pub fn start_on_as(socket: &str, addr: &str, config: &Path, spool: &Path, token_file: &Path, extra: &[&str]) -> AgentProcess {
        let addr = addr.to_string();
        let mut command = ferry_in_namespace_of(socket);
        command.env("FERRY_CONFIG_DIR", config);
        command.arg("--work-dir").arg(spool).args(["serve", "--listen", &addr, "--token-file"]).arg(token_file).args(extra);
        command.stdout(std::process::Stdio::null()).stderr(std::process::Stdio::null());
        let child = command.spawn().expect("ferry serve starts");
        let agent = AgentProcess { addr, child };
        let deadline = Instant::now() + Duration::from_secs(10);
        while std::net::TcpStream::connect(&agent.addr).is_err() {
            assert!(Instant::now() < deadline, "agent on {} did not come up", agent.addr);
            thread::sleep(Duration::from_millis(50));
        }
        agent
    }

    /// Whether it answers /health: over TLS with A's certificate (which
    /// every agent trusts), or over plain HTTP for an `--insecure` agent.
    pub fn healthy(&self) -> bool {
        use std::io::{Read, Write};
        if let Ok((status, _)) = https(&self.addr, ClientCert::Dir(&keys().a), "GET", "/health", &[], b"") {
            return status == 200;
        }
        let Ok(mut stream) = std::net::TcpStream::connect(&self.addr) else { return false };
        let _ = write!(stream, "GET /health HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
        let mut answer = String::new();
        let _ = stream.read_to_string(&mut answer);
        answer.starts_with("HTTP/1.1 200")
    }

    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for AgentProcess {
    fn drop(&mut self) {
        self.kill();
    }
}

fn engine_of(on_b: bool) -> &'static str {
    if on_b { ENGINE_B } else { ENGINE_A }
}

/// Writes a token file readable by root only.
pub fn token_file(scratch: &Scratch) -> PathBuf {
    use std::os::unix::fs::PermissionsExt;
    let path = scratch.path("token");
    std::fs::write(&path, "ferry-e2e-token-0123456789abcdef\n").unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
    path
}

/// A TCP proxy to `target` that flips one bit of the client's stream at
/// `offset` and every 4 MiB after it (pooled connections carry several
/// requests): payloads damaged on the wire.
pub fn flipping_proxy(target: &str, offset: u64) -> String {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    let target = target.to_string();
    thread::spawn(move || {
        for client in listener.incoming() {
            let Ok(mut client) = client else { return };
            let mut server = std::net::TcpStream::connect(&target).unwrap();
            let mut client_reader = client.try_clone().unwrap();
            let mut server_writer = server.try_clone().unwrap();
            thread::spawn(move || {
                let mut seen = 0u64;
                let mut buffer = vec![0u8; 64 * 1024];
                loop {
                    let n = match std::io::Read::read(&mut client_reader, &mut buffer) {
                        Ok(0) | Err(_) => break,
                        Ok(n) => n,
                    };
                    const PERIOD: u64 = 4 << 20;
                    let mut at = offset;
                    while at < seen + n as u64 {
                        if at >= seen {
                            buffer[(at - seen) as usize] ^= 0x10;
                        }
                        at += PERIOD;
                    }
                    seen += n as u64;
                    if std::io::Write::write_all(&mut server_writer, &buffer[..n]).is_err() {
                        break;
                    }
                }
                let _ = server_writer.shutdown(std::net::Shutdown::Write);
            });
            thread::spawn(move || {
                let _ = std::io::copy(&mut server, &mut client);
            });
        }
    });
    addr
}


/// A TCP proxy to `target` that records every byte in both directions.
pub struct RecordingProxy {
    pub addr: String,
    pub recorded: std::sync::Arc<std::sync::Mutex<Vec<u8>>>,
}

impl RecordingProxy {
    pub fn start(target: &str) -> RecordingProxy {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        let recorded = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let target = target.to_string();
        let log = recorded.clone();
        thread::spawn(move || {
            for client in listener.incoming() {
                let Ok(client) = client else { return };
                let Ok(server) = std::net::TcpStream::connect(&target) else { continue };
                for (mut from, mut to) in [(client.try_clone().unwrap(), server.try_clone().unwrap()), (server, client)] {
                    let log = log.clone();
                    thread::spawn(move || {
                        let mut buffer = vec![0u8; 64 * 1024];
                        loop {
                            let n = match std::io::Read::read(&mut from, &mut buffer) {
                                Ok(0) | Err(_) => break,
                                Ok(n) => n,
                            };
                            log.lock().unwrap().extend_from_slice(&buffer[..n]);
                            if std::io::Write::write_all(&mut to, &buffer[..n]).is_err() {
                                break;
                            }
                        }
                        let _ = to.shutdown(std::net::Shutdown::Write);
                    });
                }
            }
        });
        RecordingProxy { addr, recorded }
    }

    pub fn bytes(&self) -> Vec<u8> {
        self.recorded.lock().unwrap().clone()
    }
}

/// Engines A and B with an agent each, one token, and the containers a test
/// made on either, removed at the end.
pub struct TwoHosts {
    pub scratch: Scratch,
    pub token: PathBuf,
    /// What every client command must add for these agents: `--insecure`
    /// when they serve plain HTTP.
    pub client_flags: Vec<&'static str>,
    pub agent_a: AgentProcess,
    pub agent_b: AgentProcess,
    pub on_a: Containers,
    pub on_b: Containers,
}

impl TwoHosts {
    /// `b_extra`: more `ferry serve` options for B's agent.
    pub fn new(label: &str, b_extra: &[&str]) -> TwoHosts {
        let scratch = Scratch::new(label);
        let token = token_file(&scratch);
        let agent_a = AgentProcess::start(false, &scratch.path("spool-a"), &token, &[]);
        let agent_b = AgentProcess::start(true, &scratch.path("spool-b"), &token, b_extra);
        let (on_a, on_b) = (Containers::new(ENGINE_A), Containers::new(ENGINE_B));
        TwoHosts { scratch, token, client_flags: Vec::new(), agent_a, agent_b, on_a, on_b }
    }

    /// The same with agents that serve plain HTTP (`--insecure`): for tests
    /// of what a proxy does to requests it must be able to read.
    pub fn insecure(label: &str, b_extra: &[&str]) -> TwoHosts {
        let scratch = Scratch::new(label);
        let token = token_file(&scratch);
        let agent_a = AgentProcess::start(false, &scratch.path("spool-a"), &token, &["--insecure"]);
        let agent_b = AgentProcess::start(true, &scratch.path("spool-b"), &token, &[b_extra, &["--insecure"]].concat());
        let (on_a, on_b) = (Containers::new(ENGINE_A), Containers::new(ENGINE_B));
        TwoHosts { scratch, token, client_flags: vec!["--insecure"], agent_a, agent_b, on_a, on_b }
    }
}

/// A TCP proxy to `target` that counts every byte the clients send, and once
/// breaks the link in the middle of an upload: the first connection whose
/// client bytes pass `cut_after` gets exactly `cut_after` of them through, and
/// is then closed both ways. `u64::MAX` never cuts.
pub struct CuttingProxy {
    pub addr: String,
    forwarded: std::sync::Arc<std::sync::atomic::AtomicU64>,
    cut: std::sync::Arc<std::sync::atomic::AtomicBool>,
}

impl CuttingProxy {
    pub fn start(target: &str, cut_after: u64) -> CuttingProxy {
        use std::net::Shutdown;
        use std::sync::atomic::Ordering;
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        let forwarded = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
        let cut = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let (target, counted, cut_done) = (target.to_string(), forwarded.clone(), cut.clone());
        thread::spawn(move || {
            for client in listener.incoming() {
                let Ok(client) = client else { return };
                let Ok(server) = std::net::TcpStream::connect(&target) else { continue };
                let (mut from_client, mut to_server) = (client.try_clone().unwrap(), server.try_clone().unwrap());
                let (counted, cut_done) = (counted.clone(), cut_done.clone());
                thread::spawn(move || {
                    let mut buffer = vec![0u8; 64 * 1024];
                    let mut this_connection = 0u64;
                    loop {
                        let n = match std::io::Read::read(&mut from_client, &mut buffer) {
                            Ok(0) | Err(_) => break,
                            Ok(n) => n,
                        };
                        let mut through = n;
                        let cutting = this_connection.saturating_add(n as u64) > cut_after && !cut_done.swap(true, Ordering::SeqCst);
                        if cutting {
                            through = (cut_after - this_connection) as usize;
                        }
                        if std::io::Write::write_all(&mut to_server, &buffer[..through]).is_err() {
                            break;
                        }
                        this_connection += through as u64;
                        counted.fetch_add(through as u64, Ordering::SeqCst);
                        if cutting {
                            let _ = from_client.shutdown(Shutdown::Both);
                            let _ = to_server.shutdown(Shutdown::Both);
                            return;
                        }
                    }
                    let _ = to_server.shutdown(Shutdown::Write);
                });
                let (mut from_server, mut to_client) = (server, client);
                thread::spawn(move || {
                    let _ = std::io::copy(&mut from_server, &mut to_client);
                    let _ = to_client.shutdown(Shutdown::Write);
                });
            }
        });
        CuttingProxy { addr, forwarded, cut }
    }

    /// Bytes the clients sent that reached the target, over every connection.
    pub fn forwarded(&self) -> u64 {
        self.forwarded.load(std::sync::atomic::Ordering::SeqCst)
    }

    /// Whether the link was cut.
    pub fn has_cut(&self) -> bool {
        self.cut.load(std::sync::atomic::Ordering::SeqCst)
    }
}

/// Generations of `name` stored in an agent's spool, oldest first.
pub fn stored_generations(spool: &Path, name: &str) -> Vec<u64> {
    let Ok(entries) = std::fs::read_dir(spool.join("snapshots").join(name)) else { return Vec::new() };
    let mut found: Vec<u64> = entries.flatten().filter_map(|e| e.file_name().to_string_lossy().parse().ok()).collect();
    found.sort();
    found
}
