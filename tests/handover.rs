//! The two-phase handover between two real engines: whatever the network or
//! a kill does, the app never runs on both, and `ferry recover` settles what
//! was left unfinished. Run by `make test`.

mod common;

use std::io::{Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use common::*;

/// A proxy to an agent that can cut the link at the worst moment: the first
/// request whose head contains `trigger` is delivered whole, its answer is
/// swallowed, and from then on every connection is closed at once, until
/// `heal`. It can also slow the client's bytes to `rate` bytes per second.
struct Partition {
    addr: String,
    cut: Arc<AtomicBool>,
}

impl Partition {
    fn start(target: &str, trigger: Option<&'static str>, rate: Option<u64>) -> Partition {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        let cut = Arc::new(AtomicBool::new(false));
        let armed = Arc::new(Mutex::new(trigger));
        let (target, cut_by_proxy) = (target.to_string(), cut.clone());
        thread::spawn(move || {
            for client in listener.incoming() {
                let Ok(client) = client else { return };
                if cut_by_proxy.load(Ordering::SeqCst) {
                    let _ = client.shutdown(Shutdown::Both);
                    continue;
                }
                let Ok(server) = TcpStream::connect(&target) else { continue };
                let swallow = Arc::new(AtomicBool::new(false));
                let (mut from_client, mut to_server) = (client.try_clone().unwrap(), server.try_clone().unwrap());
                let (armed, cut, swallow_up) = (armed.clone(), cut_by_proxy.clone(), swallow.clone());
                thread::spawn(move || {
                    let mut buffer = vec![0u8; 16 * 1024];
                    let started = Instant::now();
                    let sent = AtomicU64::new(0);
                    loop {
                        let n = match from_client.read(&mut buffer) {
                            Ok(0) | Err(_) => break,
                            Ok(n) => n,
                        };
                        let head = String::from_utf8_lossy(&buffer[..n.min(512)]).into_owned();
                        let mut trigger = armed.lock().unwrap();
                        if let Some(t) = *trigger
                            && head.contains(t)
                        {
                            *trigger = None;
                            swallow_up.store(true, Ordering::SeqCst);
                        }
                        drop(trigger);
                        if to_server.write_all(&buffer[..n]).is_err() {
                            break;
                        }
                        let total = sent.fetch_add(n as u64, Ordering::SeqCst) + n as u64;
                        if let Some(rate) = rate {
                            let due = Duration::from_secs_f64(total as f64 / rate as f64);
                            if let Some(wait) = due.checked_sub(started.elapsed()) {
                                thread::sleep(wait);
                            }
                        }
                    }
                    if swallow_up.load(Ordering::SeqCst) {
                        cut.store(true, Ordering::SeqCst);
                    }
                });
                let (mut from_server, mut to_client) = (server, client);
                let cut = cut_by_proxy.clone();
                thread::spawn(move || {
                    let mut buffer = vec![0u8; 16 * 1024];
                    loop {
                        let n = match from_server.read(&mut buffer) {
                            Ok(0) | Err(_) => break,
                            Ok(n) => n,
                        };
                        if swallow.load(Ordering::SeqCst) {
                            // The answer to the trigger never arrives; the link is down.
                            cut.store(true, Ordering::SeqCst);
                            let _ = to_client.shutdown(Shutdown::Both);
                            break;
                        }
                        if cut.load(Ordering::SeqCst) || to_client.write_all(&buffer[..n]).is_err() {
                            let _ = to_client.shutdown(Shutdown::Both);
                            break;
                        }
                    }
                });
            }
        });
        Partition { addr, cut }
    }

    fn heal(&self) {
        self.cut.store(false, Ordering::SeqCst);
    }
}

/// Samples both engines every ~100 ms while it lives; counts the samples in
/// which the app ran on both.
struct TwoCopies {
    stop: Arc<AtomicBool>,
    sampler: Option<thread::JoinHandle<(u32, u32)>>,
}

impl TwoCopies {
    fn watch(name: &str) -> TwoCopies {
        let stop = Arc::new(AtomicBool::new(false));
        let (name, stopped) = (name.to_string(), stop.clone());
        let sampler = thread::spawn(move || {
            let (mut samples, mut both) = (0, 0);
            while !stopped.load(Ordering::SeqCst) {
                if is_running(ENGINE_A, &name) && is_running(ENGINE_B, &name) {
                    both += 1;
                }
                samples += 1;
                thread::sleep(Duration::from_millis(100));
            }
            (samples, both)
        });
        TwoCopies { stop, sampler: Some(sampler) }
    }

    /// (samples, samples with two copies)
    fn finish(mut self) -> (u32, u32) {
        self.stop.store(true, Ordering::SeqCst);
        self.sampler.take().unwrap().join().unwrap()
    }
}

fn counter_on_a(hosts: &mut TwoHosts, name: &str) -> (String, String, u64) {
    let name = hosts.on_a.track(name);
    hosts.on_b.track(&name);
    start_counter(ENGINE_A, &name, 16);
    let sum = memory_sum(ENGINE_A, &name);
    let counted = wait_for_count(ENGINE_A, &name, 3, Duration::from_secs(20));
    (name, sum, counted)
}

fn migrate(hosts: &TwoHosts, name: &str, to: &str, timeout: &str) -> std::process::Output {
    let token = hosts.token.to_str().unwrap();
    let args = [&["migrate", name, "--to", to, "--token-file", token, "--timeout", timeout], &hosts.client_flags[..]].concat();
    ferry(ENGINE_A, &hosts.scratch.work_dir(), &args)
}

fn recover(hosts: &TwoHosts) -> std::process::Output {
    let args = [&["recover", "--token-file", hosts.token.to_str().unwrap(), "--timeout", "10"], &hosts.client_flags[..]].concat();
    ferry(ENGINE_A, &hosts.scratch.work_dir(), &args)
}

/// Folders ferry keeps a migration's state in on the source.
fn left_on_source(hosts: &TwoHosts) -> Vec<String> {
    let work = hosts.scratch.work_dir();
    let mut left: Vec<String> = std::fs::read_dir(&work)
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with("checkpoint-"))
        .collect();
    left.extend(std::fs::read_dir(work.join("journal")).into_iter().flatten().flatten().map(|e| e.file_name().to_string_lossy().into_owned()));
    left
}

fn carries_on(socket: &str, name: &str, counted: u64, sum: &str) {
    let now = wait_for_count(socket, name, counted + 1, Duration::from_secs(20));
    assert!(now > counted, "{name} did not carry on: {now} after {counted}");
    assert_eq!(memory_check(socket, name), sum, "memory changed");
}

#[test]
#[ignore = "needs two real engines + CRIU: run `make test`"]
fn a_lost_commit_answer_leaves_one_copy_and_recover_settles_it() {
    // Plain HTTP: the proxy must read the requests to cut the right one (the
    // handover's rules do not depend on the transport).
    let mut hosts = TwoHosts::insecure("lost-commit", &[]);
    let (name, sum, counted) = counter_on_a(&mut hosts, "ferry-e2e-lost-commit");
    let proxy = Partition::start(&hosts.agent_b.addr, Some("/commit"), None);
    let copies = TwoCopies::watch(&name);

    let out = migrate(&hosts, &name, &proxy.addr, "5");
    expect_failure(&out, 10, "outcome is unknown");
    assert!(stderr(&out).contains("ferry recover"), "{}", stderr(&out));
    assert!(!is_running(ENGINE_A, &name), "the source must stay stopped while the outcome is unknown");
    assert!(!left_on_source(&hosts).is_empty(), "the checkpoint and journal are kept for recover");

    // Still cut: recover cannot know, and says so without starting anything.
    let out = recover(&hosts);
    expect_failure(&out, 10, "does not answer");
    assert!(!is_running(ENGINE_A, &name));

    proxy.heal();
    let hosts_token = hosts.token.to_str().unwrap().to_string();
    let out = ferry(ENGINE_A, &hosts.scratch.work_dir(), &["recover", "--token-file", &hosts_token, "--insecure"]);
    assert!(out.status.success(), "recover failed: {}", stderr(&out));
    assert!(String::from_utf8_lossy(&out.stdout).contains("runs peer"), "{}", String::from_utf8_lossy(&out.stdout));
    let (samples, both) = copies.finish();
    assert_eq!(both, 0, "the app ran on both engines in {both} of {samples} samples");
    assert!(!exists(ENGINE_A, &name), "the source is removed once the peer runs it");
    carries_on(ENGINE_B, &name, counted, &sum);
    assert!(left_on_source(&hosts).is_empty(), "nothing left: {:?}", left_on_source(&hosts));
}

#[test]
#[ignore = "needs two real engines + CRIU: run `make test`"]
fn a_partition_before_the_commit_rolls_back_and_the_peer_discards_its_copy() {
    // Plain HTTP, as above: the proxy cuts the link at the prepare request.
    let mut hosts = TwoHosts::insecure("lost-prepare", &["--handover-timeout", "3s"]);
    let (name, sum, counted) = counter_on_a(&mut hosts, "ferry-e2e-lost-prepare");
    let proxy = Partition::start(&hosts.agent_b.addr, Some("prepare=1"), None);
    let copies = TwoCopies::watch(&name);

    let out = migrate(&hosts, &name, &proxy.addr, "5");
    expect_failure(&out, PEER, "runs again here");
    carries_on(ENGINE_A, &name, counted, &sum);
    // B prepared a copy it never ran; it expires there and is removed.
    let deadline = Instant::now() + Duration::from_secs(20);
    while exists(ENGINE_B, &name) {
        assert!(Instant::now() < deadline, "B kept the prepared copy");
        thread::sleep(Duration::from_millis(200));
    }
    let (samples, both) = copies.finish();
    assert_eq!(both, 0, "the app ran on both engines in {both} of {samples} samples");
    assert!(left_on_source(&hosts).is_empty(), "nothing left: {:?}", left_on_source(&hosts));
}

#[test]
#[ignore = "needs two real engines + CRIU: run `make test`"]
fn a_migrate_killed_mid_transfer_is_recovered_on_exactly_one_host() {
    let mut hosts = TwoHosts::new("killed", &[]);
    let (name, sum, counted) = counter_on_a(&mut hosts, "ferry-e2e-killed");
    // 2 MiB/s: the 16 MiB payload takes about 8 s to cross.
    let proxy = Partition::start(&hosts.agent_b.addr, None, Some(2 << 20));
    let token = hosts.token.to_str().unwrap().to_string();
    let mut migrate = ferry_command(ENGINE_A)
        .args(["--docker-socket", ENGINE_A, "--work-dir"])
        .arg(hosts.scratch.work_dir())
        .args(["migrate", &name, "--to", &proxy.addr, "--token-file", &token])
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    while is_running(ENGINE_A, &name) {
        assert!(Instant::now() < deadline, "the migration never froze the app");
        thread::sleep(Duration::from_millis(50));
    }
    thread::sleep(Duration::from_secs(2));
    migrate.kill().unwrap();
    migrate.wait().unwrap();
    assert!(!is_running(ENGINE_A, &name) && !is_running(ENGINE_B, &name), "killed mid-transfer: the app runs nowhere yet");

    let out = recover(&hosts);
    assert!(out.status.success(), "recover failed: {}", stderr(&out));
    carries_on(ENGINE_A, &name, counted, &sum);
    assert!(!is_running(ENGINE_B, &name));
    assert!(left_on_source(&hosts).is_empty(), "nothing left: {:?}", left_on_source(&hosts));
}

/// Raw HTTPS to an agent as host A (its certificate and the token): (status, body).
fn http(addr: &str, token: &str, method: &str, path: &str, headers: &[(&str, &str)], body: &[u8]) -> (u16, String) {
    let authorization = format!("Bearer {token}");
    let headers = [&[("Authorization", authorization.as_str())], headers].concat();
    https(addr, ClientCert::Dir(&keys().a), method, path, &headers, body).expect("the agent answers")
}

#[test]
#[ignore = "needs two real engines + CRIU: run `make test`"]
fn an_agent_restarted_between_prepare_and_commit_answers_truthfully() {
    let mut hosts = TwoHosts::new("agent-restart", &[]);
    let (name, sum, counted) = counter_on_a(&mut hosts, "ferry-e2e-agent-restart");
    let payload = hosts.scratch.path("app.ferry");
    ferry_ok(ENGINE_A, &hosts.scratch.work_dir(), &["checkpoint", &name, "-o", payload.to_str().unwrap()]);
    let token = std::fs::read_to_string(&hosts.token).unwrap().trim().to_string();
    let bytes = std::fs::read(&payload).unwrap();
    let addr = hosts.agent_b.addr.clone();
    let id = [("X-Ferry-Migration", "e2e-restart-1")];
    let (status, body) = http(&addr, &token, "POST", &format!("/v1/restore?name={name}&prepare=1"), &id, &bytes);
    assert_eq!(status, 200, "{body}");
    assert!(exists(ENGINE_B, &name) && !is_running(ENGINE_B, &name), "prepared: created, not running");

    // The agent dies and comes back on the same spool and address.
    hosts.agent_b.kill();
    hosts.agent_b = AgentProcess::start_at(true, &addr, &hosts.scratch.path("spool-b"), &hosts.token, &[]);
    let (status, body) = http(&addr, &token, "GET", "/v1/migrations/e2e-restart-1", &[], b"");
    assert_eq!((status, body.contains(r#""state":"prepared""#)), (200, true), "{body}");
    let (status, body) = http(&addr, &token, "POST", "/v1/migrations/e2e-restart-1/commit", &[], b"");
    assert_eq!(status, 200, "{body}");
    carries_on(ENGINE_B, &name, counted, &sum);
    // A commit repeated after the app runs answers the same, and an abort is too late.
    assert_eq!(http(&addr, &token, "POST", "/v1/migrations/e2e-restart-1/commit", &[], b"").0, 200);
    let (_, body) = http(&addr, &token, "POST", "/v1/migrations/e2e-restart-1/abort", &[], b"");
    assert!(body.contains(r#""state":"restored""#), "{body}");
    assert!(is_running(ENGINE_B, &name));
}
