//! The fleet on etcd (issue 15): `ferry serve --etcd` joins under a lease,
//! `ferry fleet status` shows it, and a node leaves when its lease is
//! revoked (clean stop) or expires (killed). Each test starts its own etcd
//! on a free loopback port. Those that run an agent need engine A; the
//! compare-and-swap of placements is tested against a real etcd in
//! src/fleet/tests.rs. Run by `make test`.

mod common;

use std::os::unix::process::ExitStatusExt;
use std::path::PathBuf;
use std::process::{Child, Command, Output, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use common::*;
use serde_json::Value;

const SIGTERM: i32 = 15;

/// `ferry fleet status --etcd URL --json`, parsed.
fn status(etcd: &LocalEtcd) -> Value {
    let out = fleet_status(&etcd.url, &["--json"]);
    assert!(out.status.success(), "ferry fleet status failed: {}", stderr(&out));
    serde_json::from_slice(&out.stdout).expect("fleet status --json prints one JSON object")
}

fn fleet_status(url: &str, extra: &[&str]) -> Output {
    Command::new(ferry_bin()).args(["fleet", "status", "--etcd", url]).args(extra).output().expect("ferry runs")
}

/// The node named `name` in the fleet, if it is a member.
fn node(etcd: &LocalEtcd, name: &str) -> Option<Value> {
    status(etcd)["nodes"].as_array().unwrap().iter().find(|n| n["name"] == name).cloned()
}

/// Polls until `node(name)` satisfies `until`, for at most `limit`; returns
/// what was last seen and how long it took.
fn wait_for_node(etcd: &LocalEtcd, name: &str, limit: Duration, until: impl Fn(&Option<Value>) -> bool) -> (Option<Value>, Duration) {
    let started = Instant::now();
    loop {
        let seen = node(etcd, name);
        if until(&seen) || started.elapsed() > limit {
            return (seen, started.elapsed());
        }
        thread::sleep(Duration::from_millis(100));
    }
}

/// `ferry serve --etcd` on engine A, its log in the scratch folder, killed
/// by its PID when dropped.
struct FleetAgent {
    addr: String,
    child: Child,
    log: PathBuf,
}

impl FleetAgent {
    fn start(scratch: &Scratch, etcd: &LocalEtcd, node: &str, lease_ttl: u32) -> FleetAgent {
        FleetAgent::start_on(ENGINE_A, scratch, &etcd.url, node, lease_ttl)
    }

    /// An agent for the engine at `socket` (A, or B or C inside its mount
    /// namespace) joining the fleet through `etcd_url`.
    fn start_on(socket: &str, scratch: &Scratch, etcd_url: &str, node: &str, lease_ttl: u32) -> FleetAgent {
        FleetAgent::start_with(socket, scratch, etcd_url, node, lease_ttl, &[])
    }

    fn start_with(socket: &str, scratch: &Scratch, etcd_url: &str, node: &str, lease_ttl: u32, extra: &[&str]) -> FleetAgent {
        let addr = format!("127.0.0.1:{}", free_port());
        let log = scratch.path(&format!("agent-{node}.log"));
        let work_dir = scratch.path(&format!("work-{node}"));
        std::fs::create_dir_all(&work_dir).unwrap();
        let mut command = match engine_pid(socket) {
            Some(pid) => {
                let mut c = Command::new("nsenter");
                c.arg(format!("--mount=/proc/{pid}/ns/mnt")).arg("--").arg(ferry_bin());
                c
            }
            None => Command::new(ferry_bin()),
        };
        let child = command
            .env("FERRY_CONFIG_DIR", config_dir(socket))
            .args(["--docker-socket", socket, "--work-dir"])
            .arg(&work_dir)
            .args(["serve", "--insecure", "--listen", &addr, "--etcd", etcd_url, "--node", node])
            .args(["--lease-ttl", &lease_ttl.to_string()])
            .args(extra)
            .stdout(Stdio::null())
            .stderr(Stdio::from(std::fs::File::create(&log).unwrap()))
            .spawn()
            .expect("ferry serve starts");
        FleetAgent { addr, child, log }
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    fn signal(&mut self, signal: &str) {
        let _ = Command::new("kill").args([&format!("-{signal}"), &self.child.id().to_string()]).status();
    }
}

impl Drop for FleetAgent {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[test]
#[ignore = "needs engine A (tests/scripts/with-engines.sh) and etcd (setup-host.sh)"]
fn a_serving_node_is_listed_with_its_lease_and_containers_and_leaves_at_once_on_sigterm() {
    let scratch = Scratch::new("fleet-status");
    let etcd = LocalEtcd::start("fleet-status");
    let mut agent = FleetAgent::start(&scratch, &etcd, "e2e-a", 6);
    let (seen, _) = wait_for_node(&etcd, "e2e-a", Duration::from_secs(15), Option::is_some);
    let seen = seen.unwrap_or_else(|| panic!("node e2e-a never joined; its log:\n{}", agent.log()));
    assert_eq!(seen["agent"], agent.addr.as_str());
    assert_eq!(seen["ferry_version"], env!("CARGO_PKG_VERSION"));
    assert!(!seen["arch"].as_str().unwrap().is_empty());
    assert!(seen["mem_available_mib"].as_u64().unwrap() > 0);
    let ttl = seen["lease_ttl_secs"].as_i64().unwrap();
    assert!((1..=6).contains(&ttl), "lease TTL {ttl} of a 6 s lease");

    // A container started on the node shows up at a renewal (every 2 s),
    // with the memory it holds.
    let mut containers = Containers::new(ENGINE_A);
    let name = containers.track("ferry-e2e-fleet-counter");
    start_counter(ENGINE_A, &name, 16);
    wait_for_count(ENGINE_A, &name, 1, Duration::from_secs(30));
    let holds = |node: &Option<Value>| -> Option<u64> {
        let listed = node.as_ref()?["containers"].as_array()?.iter().find(|c| c["name"] == name.as_str())?.clone();
        listed["memory_mib"].as_u64()
    };
    let (seen, _) = wait_for_node(&etcd, "e2e-a", Duration::from_secs(10), |n| holds(n).is_some());
    let mib = holds(&seen).unwrap_or_else(|| panic!("{name} never listed on e2e-a: {seen:?}"));
    assert!(mib >= 16, "a 16 MiB counter holds {mib} MiB");

    // The human listing names the node and its container.
    let text = String::from_utf8_lossy(&fleet_status(&etcd.url, &[]).stdout).into_owned();
    assert!(text.contains("e2e-a") && text.contains(&agent.addr) && text.contains(&name), "{text}");

    // SIGTERM: the lease is revoked, so the node leaves at once rather than
    // after its TTL, and the agent still dies of the signal.
    agent.signal("TERM");
    let (seen, took) = wait_for_node(&etcd, "e2e-a", Duration::from_secs(6), Option::is_none);
    assert!(seen.is_none(), "e2e-a still listed 6 s after SIGTERM; its log:\n{}", agent.log());
    assert!(took < Duration::from_secs(3), "e2e-a left only after {took:?}: its lease expired, it was not revoked");
    let exit = agent.child.wait().unwrap();
    assert_eq!(exit.signal(), Some(SIGTERM), "{exit:?}; log:\n{}", agent.log());
    assert!(agent.log().contains("left the fleet"), "{}", agent.log());
}

#[test]
#[ignore = "needs engine A (tests/scripts/with-engines.sh) and etcd (setup-host.sh)"]
fn a_killed_agents_node_leaves_the_fleet_once_its_lease_expires() {
    let scratch = Scratch::new("fleet-kill");
    let etcd = LocalEtcd::start("fleet-kill");
    let mut agent = FleetAgent::start(&scratch, &etcd, "e2e-doomed", 3);
    let (seen, _) = wait_for_node(&etcd, "e2e-doomed", Duration::from_secs(15), Option::is_some);
    assert!(seen.is_some(), "node never joined; its log:\n{}", agent.log());
    // Renewals keep it there well past one TTL.
    thread::sleep(Duration::from_secs(4));
    assert!(node(&etcd, "e2e-doomed").is_some(), "the lease was not renewed; log:\n{}", agent.log());

    agent.signal("KILL");
    let _ = agent.child.wait();
    // Nothing revoked it: the record is still there until the lease runs out…
    assert!(node(&etcd, "e2e-doomed").is_some(), "gone before its lease could expire");
    // …which is within one TTL of the last renewal (renewed every TTL/3),
    // plus etcd's expiry check (every 0.5 s).
    let (seen, took) = wait_for_node(&etcd, "e2e-doomed", Duration::from_secs(8), Option::is_none);
    assert!(seen.is_none(), "e2e-doomed still listed {took:?} after SIGKILL: {seen:?}");
    assert!(took <= Duration::from_secs(4), "a 3 s lease took {took:?} to expire");
}

#[test]
#[ignore = "needs engine A (tests/scripts/with-engines.sh) and etcd (setup-host.sh)"]
fn a_second_agent_under_a_live_nodes_name_is_refused() {
    let scratch = Scratch::new("fleet-names");
    let etcd = LocalEtcd::start("fleet-names");
    let first = FleetAgent::start(&scratch, &etcd, "e2e-twin", 10);
    let (seen, _) = wait_for_node(&etcd, "e2e-twin", Duration::from_secs(15), Option::is_some);
    assert!(seen.is_some(), "node never joined; its log:\n{}", first.log());
    // The same name through a second agent: refused, naming the fix.
    let out = Command::new(ferry_bin())
        .env("FERRY_CONFIG_DIR", config_dir(ENGINE_A))
        .args(["--docker-socket", ENGINE_A, "--work-dir"])
        .arg(scratch.work_dir())
        .args(["serve", "--insecure", "--listen", &format!("127.0.0.1:{}", free_port()), "--etcd", &etcd.url])
        .args(["--node", "e2e-twin"])
        .output()
        .unwrap();
    expect_failure(&out, REFUSED, "node 'e2e-twin' is already a member of the fleet");
    assert!(stderr(&out).contains("another --node"), "{}", stderr(&out));
    assert_eq!(node(&etcd, "e2e-twin").unwrap()["agent"], first.addr.as_str(), "the first agent's record stays");
}

#[test]
#[ignore = "needs etcd (tests/scripts/setup-host.sh)"]
fn fleet_status_lists_an_empty_fleet_and_names_what_is_wrong_with_etcd() {
    let etcd = LocalEtcd::start("fleet-empty");
    let empty = status(&etcd);
    assert_eq!(empty, serde_json::json!({ "nodes": [], "placements": [], "last_moves": [] }));

    let unreachable = fleet_status("http://127.0.0.1:1", &[]);
    expect_failure(&unreachable, PEER, "etcd cannot be reached at http://127.0.0.1:1");
    // The next endpoint is tried when one cannot be reached.
    let second = fleet_status(&format!("http://127.0.0.1:1,{}", etcd.url), &["--json"]);
    assert!(second.status.success(), "{}", stderr(&second));
    expect_failure(&fleet_status("https://127.0.0.1:2379", &[]), USAGE, "give --etcd-ca FILE");
    expect_failure(&fleet_status("127.0.0.1:2379", &[]), USAGE, "give http://HOST:PORT");
}

#[test]
fn serve_refuses_fleet_options_that_cannot_work_before_touching_anything() {
    let run = |args: &[&str]| Command::new(ferry_bin()).args(["serve", "--insecure"]).args(args).output().unwrap();
    expect_failure(&run(&["--listen", "127.0.0.1:1", "--node", "a"]), USAGE, "give --etcd URL too");
    expect_failure(&run(&["--listen", "127.0.0.1:1", "--etcd-ca", "/nonexistent/ca.pem"]), USAGE, "give --etcd URL too");
    let etcd = ["--etcd", "http://127.0.0.1:1"];
    let wildcard = run(&[&["--listen", "0.0.0.0:7070"][..], &etcd].concat());
    expect_failure(&wildcard, USAGE, "--listen 0.0.0.0:7070 is no address other nodes can reach: give --advertise");
    let slash = run(&[&["--listen", "127.0.0.1:1", "--node", "a/b"][..], &etcd].concat());
    expect_failure(&slash, USAGE, "--node 'a/b' cannot name a fleet record");
    let short = run(&[&["--listen", "127.0.0.1:1", "--lease-ttl", "1"][..], &etcd].concat());
    expect_failure(&short, USAGE, "--lease-ttl 1: give 2 seconds or more");
}

/// A link to etcd that can be partitioned: while cut, every connection
/// through it is closed and new ones are held without an answer, as a
/// network that drops packets would; healed, it forwards again.
struct Partition {
    url: String,
    cut: std::sync::Arc<std::sync::atomic::AtomicBool>,
}

impl Partition {
    fn start(etcd: &LocalEtcd) -> Partition {
        use std::net::{Shutdown, TcpListener, TcpStream};
        use std::sync::atomic::Ordering;
        let target = etcd.url.trim_start_matches("http://").to_string();
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let cut = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let is_cut = cut.clone();
        thread::spawn(move || {
            for client in listener.incoming() {
                let Ok(client) = client else { return };
                let (is_cut, target) = (is_cut.clone(), target.clone());
                thread::spawn(move || {
                    // Held while cut: the client waits for an answer that never comes.
                    while is_cut.load(Ordering::SeqCst) {
                        thread::sleep(Duration::from_millis(50));
                    }
                    let Ok(server) = TcpStream::connect(&target) else { return };
                    let pipe = |mut from: TcpStream, mut to: TcpStream, is_cut: std::sync::Arc<std::sync::atomic::AtomicBool>| {
                        thread::spawn(move || {
                            from.set_read_timeout(Some(Duration::from_millis(50))).unwrap();
                            let mut buffer = [0u8; 16 * 1024];
                            loop {
                                if is_cut.load(Ordering::SeqCst) {
                                    break;
                                }
                                match std::io::Read::read(&mut from, &mut buffer) {
                                    Ok(0) => break,
                                    Ok(n) => {
                                        if std::io::Write::write_all(&mut to, &buffer[..n]).is_err() {
                                            break;
                                        }
                                    }
                                    Err(e) if matches!(e.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut) => {}
                                    Err(_) => break,
                                }
                            }
                            let _ = from.shutdown(Shutdown::Both);
                            let _ = to.shutdown(Shutdown::Both);
                        })
                    };
                    pipe(client.try_clone().unwrap(), server.try_clone().unwrap(), is_cut.clone());
                    pipe(server, client, is_cut);
                });
            }
        });
        Partition { url, cut }
    }

    fn cut(&self) {
        self.cut.store(true, std::sync::atomic::Ordering::SeqCst);
    }

    fn heal(&self) {
        self.cut.store(false, std::sync::atomic::Ordering::SeqCst);
    }
}

/// `docker inspect` of `name`: (running and not paused, paused); (false,
/// false) when there is no such container.
fn run_state(socket: &str, name: &str) -> (bool, bool) {
    let out = docker(socket, &["inspect", "-f", "{{.State.Running}} {{.State.Paused}}", name]);
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let mut words = text.split_whitespace();
    let running = words.next() == Some("true");
    let paused = words.next() == Some("true");
    (running && !paused, paused)
}

/// The placement of `container` as `ferry fleet status --json` shows it.
fn placement_of(etcd: &LocalEtcd, container: &str) -> Option<(String, u64)> {
    let status = status(etcd);
    let placed = status["placements"].as_array()?.iter().find(|p| p["container"] == container)?.clone();
    Some((placed["node"].as_str()?.to_string(), placed["generation"].as_u64()?))
}

fn manage(etcd: &LocalEtcd, container: &str) -> Output {
    Command::new(ferry_bin()).args(["fleet", "manage", container, "--etcd", &etcd.url]).output().expect("ferry runs")
}

/// Waits until node `name` lists `container` among its running containers.
fn wait_until_listed(etcd: &LocalEtcd, agent: &FleetAgent, name: &str, container: &str) {
    let (seen, _) = wait_for_node(etcd, name, Duration::from_secs(20), |n| {
        n.as_ref().is_some_and(|n| n["containers"].as_array().unwrap().iter().any(|c| c["name"] == container))
    });
    assert!(seen.is_some_and(|n| n["containers"].to_string().contains(container)), "{container} never listed on {name}; log:\n{}", agent.log());
}

/// `POST /v1/fleet/migrate` on an `--insecure` agent: (status, body).
fn ask_to_move(agent: &FleetAgent, container: &str, to: &str, generation: u64) -> (u16, Value) {
    use std::io::{Read, Write};
    let mut stream = std::net::TcpStream::connect(&agent.addr).unwrap();
    write!(
        stream,
        "POST /v1/fleet/migrate?name={container}&to={to}&generation={generation} HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut answer = String::new();
    stream.read_to_string(&mut answer).unwrap();
    let status = answer.get(9..12).and_then(|s| s.parse().ok()).unwrap_or(0);
    let body = answer.split_once("\r\n\r\n").map_or("", |(_, body)| body);
    (status, serde_json::from_str(body).unwrap_or(Value::Null))
}

#[test]
#[ignore = "needs engines A and B (tests/scripts/with-engines.sh) and etcd (setup-host.sh)"]
fn a_fleet_move_is_recorded_with_its_commit_and_a_stale_decision_moves_nothing() {
    let scratch = Scratch::new("fleet-move");
    let etcd = LocalEtcd::start("fleet-move");
    let a = FleetAgent::start_on(ENGINE_A, &scratch, &etcd.url, "e2e-a", 6);
    let b = FleetAgent::start_on(ENGINE_B, &scratch, &etcd.url, "e2e-b", 6);
    let (mut on_a, mut on_b) = (Containers::new(ENGINE_A), Containers::new(ENGINE_B));
    let name = on_a.track("ferry-e2e-fleet-move");
    on_b.track(&name);
    start_counter(ENGINE_A, &name, 16);
    wait_for_count(ENGINE_A, &name, 3, Duration::from_secs(30));
    let checksum = memory_sum(ENGINE_A, &name);
    wait_until_listed(&etcd, &a, "e2e-a", &name);
    wait_for_node(&etcd, "e2e-b", Duration::from_secs(15), Option::is_some);

    // Not managed yet: no move.
    let (status, body) = ask_to_move(&a, &name, "e2e-b", 1);
    assert_eq!(status, 404, "{body}");
    assert!(body["error"].as_str().unwrap().contains("fleet manage"), "{body}");
    let managed = manage(&etcd, &name);
    assert!(managed.status.success(), "{}", stderr(&managed));
    assert_eq!(placement_of(&etcd, &name), Some(("e2e-a".to_string(), 1)));

    // A decision taken from a generation that is not the placement's: refused
    // before anything stops.
    let (status, body) = ask_to_move(&a, &name, "e2e-b", 7);
    assert_eq!(status, 409, "{body}");
    assert!(body["error"].as_str().unwrap().contains("generation 1"), "{body}");
    assert!(is_running(ENGINE_A, &name) && !exists(ENGINE_B, &name));
    // Nor to a node that is not a member.
    let (status, body) = ask_to_move(&a, &name, "e2e-ghost", 1);
    assert_eq!(status, 409, "{body}");

    let before = latest_count(ENGINE_A, &name);
    let (status, moved) = ask_to_move(&a, &name, "e2e-b", 1);
    assert_eq!(status, 200, "{moved}; log of a:\n{}", a.log());
    assert_eq!((moved["from"].as_str(), moved["to"].as_str(), moved["generation"].as_u64()), (Some("e2e-a"), Some("e2e-b"), Some(2)));
    for phase in ["save_secs", "transfer_secs", "resume_secs", "downtime_secs"] {
        assert!(moved[phase].as_f64().unwrap() > 0.0, "{phase}: {moved}");
    }
    assert_eq!(placement_of(&etcd, &name), Some(("e2e-b".to_string(), 2)));
    assert!(!exists(ENGINE_A, &name), "the source is removed once the move is committed");
    assert!(wait_for_count(ENGINE_B, &name, before + 1, Duration::from_secs(30)) > before);
    assert_eq!(memory_check(ENGINE_B, &name), checksum);

    // And back, asked of B's agent with the generation it now has.
    wait_until_listed(&etcd, &b, "e2e-b", &name);
    let (status, back) = ask_to_move(&b, &name, "e2e-a", 2);
    assert_eq!(status, 200, "{back}; log of b:\n{}", b.log());
    assert_eq!(placement_of(&etcd, &name), Some(("e2e-a".to_string(), 3)));
    assert!(is_running(ENGINE_A, &name) && !exists(ENGINE_B, &name));
    assert_eq!(memory_check(ENGINE_A, &name), checksum);
}

#[test]
#[ignore = "needs engines A and B (tests/scripts/with-engines.sh) and etcd (setup-host.sh)"]
fn a_node_cut_off_from_etcd_freezes_its_container_before_the_failover_starts_it_elsewhere() {
    let scratch = Scratch::new("fleet-partition");
    let etcd = LocalEtcd::start("fleet-partition");
    let link = Partition::start(&etcd);
    let ttl = 6;
    let a = FleetAgent::start_on(ENGINE_A, &scratch, &link.url, "e2e-a", ttl);
    let b = FleetAgent::start_on(ENGINE_B, &scratch, &etcd.url, "e2e-b", ttl);
    let (mut on_a, mut on_b) = (Containers::new(ENGINE_A), Containers::new(ENGINE_B));
    let name = on_a.track("ferry-e2e-fleet-fenced");
    on_b.track(&name);
    start_counter(ENGINE_A, &name, 16);
    wait_for_count(ENGINE_A, &name, 3, Duration::from_secs(30));
    let checksum = memory_sum(ENGINE_A, &name);
    wait_until_listed(&etcd, &a, "e2e-a", &name);
    wait_for_node(&etcd, "e2e-b", Duration::from_secs(15), Option::is_some);
    let managed = manage(&etcd, &name);
    assert!(managed.status.success(), "{}", stderr(&managed));

    // A snapshot on B: what the failover restores.
    let before_snapshot = latest_count(ENGINE_A, &name);
    let replicated = ferry(ENGINE_A, &scratch.work_dir(), &["replicate", &name, "--to", &b.addr, "--insecure", "--every", "1s", "--once"]);
    assert!(replicated.status.success(), "{}", stderr(&replicated));
    let (seen, _) = wait_for_node(&etcd, "e2e-b", Duration::from_secs(10), |n| {
        n.as_ref().is_some_and(|n| n["snapshots"].to_string().contains(name.as_str()))
    });
    assert!(seen.is_some_and(|n| n["snapshots"].to_string().contains(name.as_str())), "B never listed its snapshot; log:\n{}", b.log());
    // Renewals have told A which containers are managed.
    thread::sleep(Duration::from_secs(3));

    // A loses etcd but keeps its container and engine.
    let cut_at = Instant::now();
    link.cut();
    let (mut frozen_at, mut gone_at, mut failed_over_at) = (None, None, None);
    let mut samples = 0;
    while failed_over_at.is_none() && cut_at.elapsed() < Duration::from_secs(60) {
        let (live_a, paused_a) = run_state(ENGINE_A, &name);
        let (live_b, _) = run_state(ENGINE_B, &name);
        samples += 1;
        assert!(!(live_a && live_b), "{name} ran on A and B at once, {:?} after the cut", cut_at.elapsed());
        if paused_a && frozen_at.is_none() {
            frozen_at = Some(cut_at.elapsed());
        }
        if gone_at.is_none() && node(&etcd, "e2e-a").is_none() {
            gone_at = Some(cut_at.elapsed());
        }
        if live_b {
            failed_over_at = Some(cut_at.elapsed());
        }
        thread::sleep(Duration::from_millis(50));
    }
    let frozen_at = frozen_at.unwrap_or_else(|| panic!("A never froze {name}; log of a:\n{}", a.log()));
    let gone_at = gone_at.unwrap_or_else(|| panic!("A's record never went; log of a:\n{}", a.log()));
    let failed_over_at = failed_over_at.unwrap_or_else(|| panic!("{name} never came back on B; log of b:\n{}", b.log()));
    eprintln!("cut → frozen on A {frozen_at:?}, A's record gone {gone_at:?}, running on B {failed_over_at:?} ({samples} samples)");
    assert!(frozen_at < gone_at, "A froze {name} at {frozen_at:?}, after its record went at {gone_at:?}");
    assert!(gone_at <= failed_over_at);
    assert!(failed_over_at < Duration::from_secs(ttl as u64) + Duration::from_secs(20), "{failed_over_at:?}");
    assert!(a.log().contains("froze 1 managed container"), "{}", a.log());
    assert_eq!(placement_of(&etcd, &name), Some(("e2e-b".to_string(), 2)));
    // It carries on from the snapshot (taken after `before_snapshot`), its memory intact.
    assert!(first_count(ENGINE_B, &name) >= before_snapshot);
    assert_eq!(memory_check(ENGINE_B, &name), checksum);

    // A comes back: its lease is gone, it joins again and removes its stale copy.
    link.heal();
    let deadline = Instant::now() + Duration::from_secs(30);
    while exists(ENGINE_A, &name) {
        assert!(!run_state(ENGINE_A, &name).0 || !is_running(ENGINE_B, &name), "two copies after the heal");
        assert!(Instant::now() < deadline, "A kept its stale copy of {name}; log of a:\n{}", a.log());
        thread::sleep(Duration::from_millis(100));
    }
    assert!(node(&etcd, "e2e-a").is_some(), "A joined again");
    assert!(run_state(ENGINE_B, &name).0, "{name} runs on B");
}

/// Which of `names` run (and are not paused) on the engine at `socket`, from
/// one `GET /containers/json` over its socket: fast enough to sample three
/// engines every 100 ms.
fn running_on(socket: &str, names: &[String]) -> Vec<String> {
    use std::io::{Read, Write};
    let Ok(mut stream) = std::os::unix::net::UnixStream::connect(socket) else { return Vec::new() };
    let _ = stream.write_all(b"GET /containers/json HTTP/1.0\r\nHost: docker\r\n\r\n");
    let mut answer = String::new();
    let _ = stream.read_to_string(&mut answer);
    let body = answer.split_once("\r\n\r\n").map_or("", |(_, body)| body);
    let listed: Vec<Value> = serde_json::from_str(body).unwrap_or_default();
    listed
        .iter()
        .filter(|c| c["State"] == "running")
        .filter_map(|c| c["Names"][0].as_str().map(|n| n.trim_start_matches('/').to_string()))
        .filter(|n| names.contains(n))
        .collect()
}

/// Samples every 100 ms where each of `names` runs on `engines`, until
/// `stop`: (the instants any ran on two engines at once, each one's longest
/// time on none).
fn watch_copies(
    engines: &'static [&'static str],
    names: Vec<String>,
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
) -> thread::JoinHandle<(Vec<String>, Vec<Duration>)> {
    thread::spawn(move || {
        let mut twice = Vec::new();
        let mut longest_gap = vec![Duration::ZERO; names.len()];
        let mut missing_since: Vec<Option<Instant>> = vec![None; names.len()];
        while !stop.load(std::sync::atomic::Ordering::SeqCst) {
            let sampled = Instant::now();
            let seen: Vec<Vec<String>> = engines.iter().map(|socket| running_on(socket, &names)).collect();
            for (i, name) in names.iter().enumerate() {
                let copies = seen.iter().filter(|on| on.contains(name)).count();
                if copies > 1 {
                    twice.push(format!("{name} on {copies} engines"));
                }
                match (copies, missing_since[i]) {
                    (0, None) => missing_since[i] = Some(sampled),
                    (0, Some(_)) => {}
                    (_, Some(since)) => {
                        longest_gap[i] = longest_gap[i].max(sampled - since);
                        missing_since[i] = None;
                    }
                    (_, None) => {}
                }
            }
            thread::sleep(Duration::from_millis(100).saturating_sub(sampled.elapsed()));
        }
        for (i, since) in missing_since.iter().enumerate() {
            if let Some(since) = since {
                longest_gap[i] = longest_gap[i].max(since.elapsed());
            }
        }
        (twice, longest_gap)
    })
}

const THREE: &[&str] = &[ENGINE_A, ENGINE_B, ENGINE_C];

#[test]
#[ignore = "needs engines A, B and C (tests/scripts/with-engines.sh) and etcd (setup-host.sh)"]
fn three_nodes_balanced_every_two_seconds_never_run_a_counter_twice_nor_lose_one() {
    let scratch = Scratch::new("fleet-balance");
    let etcd = LocalEtcd::start("fleet-balance");
    let nodes = ["e2e-a", "e2e-b", "e2e-c"];
    let agents: Vec<FleetAgent> = THREE
        .iter()
        .zip(nodes)
        .map(|(socket, node)| FleetAgent::start_with(socket, &scratch, &etcd.url, node, 6, &["--board", "edge-128m"]))
        .collect();
    let mut tracked: Vec<Containers> = THREE.iter().map(|socket| Containers::new(socket)).collect();
    let names: Vec<String> = (1..=3).map(|i| format!("ferry-e2e-fleet-{i}")).collect();
    for name in &names {
        for containers in tracked.iter_mut() {
            containers.track(name);
        }
    }
    let mut checksums = Vec::new();
    for (i, name) in names.iter().enumerate() {
        start_counter(THREE[i], name, 16);
        wait_for_count(THREE[i], name, 2, Duration::from_secs(30));
        checksums.push(memory_sum(THREE[i], name));
        wait_until_listed(&etcd, &agents[i], nodes[i], name);
        let managed = manage(&etcd, name);
        assert!(managed.status.success(), "{}", stderr(&managed));
    }
    let counts_before: Vec<u64> = names.iter().enumerate().map(|(i, name)| latest_count(THREE[i], name)).collect();

    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let watcher = watch_copies(THREE, names.clone(), stop.clone());
    let log = scratch.path("balance.jsonl");
    let balance_err = scratch.path("balance.err");
    let mut balancer = Command::new(ferry_bin())
        .env("FERRY_CONFIG_DIR", config_dir(ENGINE_A))
        .args(["--work-dir"])
        .arg(scratch.work_dir())
        .args(["balance", "--etcd", &etcd.url, "--every", "2s", "--policy", "rotate", "--insecure", "--log"])
        .arg(&log)
        .stdout(Stdio::null())
        .stderr(Stdio::from(std::fs::File::create(&balance_err).unwrap()))
        .spawn()
        .expect("ferry balance starts");
    thread::sleep(Duration::from_secs(90));
    let _ = Command::new("kill").args(["-TERM", &balancer.id().to_string()]).status();
    let ended = balancer.wait().unwrap();
    stop.store(true, std::sync::atomic::Ordering::SeqCst);
    let (twice, gaps) = watcher.join().unwrap();
    let balance_log = std::fs::read_to_string(&balance_err).unwrap_or_default();
    assert!(ended.success() || ended.signal() == Some(SIGTERM), "{ended:?}: {balance_log}");

    let moves: Vec<Value> = std::fs::read_to_string(&log)
        .unwrap_or_default()
        .lines()
        .map(|line| serde_json::from_str(line).expect("one JSON object per line"))
        .collect();
    let failed: Vec<&Value> = moves.iter().filter(|m| m["ok"] != true).collect();
    eprintln!("{} moves in 90 s, {} failed; longest time on no engine per counter: {gaps:?}", moves.len(), failed.len());
    assert!(moves.len() >= 10, "only {} moves in 90 s; balancer log:\n{balance_log}", moves.len());
    assert!(failed.is_empty(), "failed moves: {failed:?}");
    assert!(twice.is_empty(), "a counter ran twice: {twice:?}");
    let longest_downtime = moves.iter().filter_map(|m| m["downtime_secs"].as_f64()).fold(0.0, f64::max);
    let mut table = [Vec::new(), Vec::new(), Vec::new()];
    for m in &moves {
        for (i, phase) in ["save_secs", "transfer_secs", "resume_secs"].iter().enumerate() {
            table[i].push(m[*phase].as_f64().unwrap());
        }
    }
    for (i, phase) in ["Save", "Transfer", "Resume"].iter().enumerate() {
        let mut v = table[i].clone();
        v.sort_by(f64::total_cmp);
        eprintln!("{phase}: min {:.3} median {:.3} max {:.3} s", v[0], v[v.len() / 2], v[v.len() - 1]);
    }
    for (i, gap) in gaps.iter().enumerate() {
        // A sample every 100 ms, and Docker reports a start a little after it.
        assert!(gap.as_secs_f64() <= longest_downtime + 1.0, "{} ran nowhere for {gap:?}; the longest downtime was {longest_downtime:.2}s", names[i]);
    }
    // Each counter runs on exactly one engine, carries on, its memory intact.
    for (i, name) in names.iter().enumerate() {
        let on: Vec<&str> = THREE.iter().copied().filter(|socket| is_running(socket, name)).collect();
        assert_eq!(on.len(), 1, "{name} runs on {on:?}");
        assert!(latest_count(on[0], name) > counts_before[i], "{name} did not carry on");
        assert_eq!(memory_check(on[0], name), checksums[i], "{name}'s memory changed");
        let node = nodes[THREE.iter().position(|s| *s == on[0]).unwrap()];
        assert_eq!(placement_of(&etcd, name).map(|p| p.0).as_deref(), Some(node), "{name}'s placement is where it runs");
    }
}

/// Starts engine C again when dropped: a test that killed it leaves the
/// engines as it found them.
struct RestartC;

impl Drop for RestartC {
    fn drop(&mut self) {
        let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/scripts/engines.sh");
        let _ = Command::new("bash").args([script, "start", "c"]).status();
    }
}

#[test]
#[ignore = "needs engines A, B and C (tests/scripts/with-engines.sh) and etcd (setup-host.sh)"]
fn a_dead_nodes_counter_comes_back_once_elsewhere_from_its_newest_snapshot() {
    let scratch = Scratch::new("fleet-death");
    let etcd = LocalEtcd::start("fleet-death");
    let ttl = 4;
    let a = FleetAgent::start_on(ENGINE_A, &scratch, &etcd.url, "e2e-a", ttl);
    let b = FleetAgent::start_on(ENGINE_B, &scratch, &etcd.url, "e2e-b", ttl);
    let mut c = FleetAgent::start_on(ENGINE_C, &scratch, &etcd.url, "e2e-c", ttl);
    let (mut on_a, mut on_b, mut on_c) = (Containers::new(ENGINE_A), Containers::new(ENGINE_B), Containers::new(ENGINE_C));
    let name = on_c.track("ferry-e2e-fleet-doomed");
    on_a.track(&name);
    on_b.track(&name);
    start_counter(ENGINE_C, &name, 16);
    wait_for_count(ENGINE_C, &name, 2, Duration::from_secs(30));
    let checksum = memory_sum(ENGINE_C, &name);
    wait_until_listed(&etcd, &c, "e2e-c", &name);
    let managed = manage(&etcd, &name);
    assert!(managed.status.success(), "{}", stderr(&managed));

    // Snapshots on A, then a newer one on B: B is the heir.
    let before_snapshot = latest_count(ENGINE_C, &name);
    for peer in [&a, &b] {
        let out = ferry_on(ENGINE_C, &scratch.work_dir(), &["replicate", &name, "--to", &peer.addr, "--insecure", "--every", "1s", "--once"]);
        assert!(out.status.success(), "{}", stderr(&out));
        thread::sleep(Duration::from_millis(1100));
    }
    for (agent, node_name) in [(&a, "e2e-a"), (&b, "e2e-b")] {
        let (seen, _) = wait_for_node(&etcd, node_name, Duration::from_secs(10), |n| {
            n.as_ref().is_some_and(|n| n["snapshots"].to_string().contains(name.as_str()))
        });
        assert!(seen.is_some(), "{node_name} never listed its snapshot; log:\n{}", agent.log());
    }

    // Host C dies: its agent, its engine and the counter, SIGKILLed.
    let _restart = RestartC;
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let watcher = watch_copies(&[ENGINE_A, ENGINE_B], vec![name.clone()], stop.clone());
    c.signal("KILL");
    let killed = Command::new("bash").args([concat!(env!("CARGO_MANIFEST_DIR"), "/tests/scripts/engines.sh"), "kill", "c"]).status().unwrap();
    assert!(killed.success());
    let died = Instant::now();
    let deadline = died + Duration::from_secs(ttl as u64 + 30);
    while !is_running(ENGINE_B, &name) && !is_running(ENGINE_A, &name) {
        assert!(Instant::now() < deadline, "{name} never came back; log of b:\n{}\nlog of a:\n{}", b.log(), a.log());
        thread::sleep(Duration::from_millis(100));
    }
    let back_after = died.elapsed();
    thread::sleep(Duration::from_secs(3));
    stop.store(true, std::sync::atomic::Ordering::SeqCst);
    let (twice, _) = watcher.join().unwrap();
    eprintln!("host C killed → {name} running again after {back_after:?}");
    assert!(twice.is_empty(), "{twice:?}");
    assert!(is_running(ENGINE_B, &name) && !exists(ENGINE_A, &name), "the heir (newest snapshot: B) restored it, and only it");
    assert_eq!(placement_of(&etcd, &name), Some(("e2e-b".to_string(), 2)));
    assert!(first_count(ENGINE_B, &name) >= before_snapshot);
    assert_eq!(memory_check(ENGINE_B, &name), checksum);
    let last = status(&etcd)["last_moves"].as_array().unwrap().iter().find(|m| m["container"] == name.as_str()).cloned();
    let last = last.unwrap_or_else(|| panic!("no failover recorded"));
    assert_eq!((last["failover"].as_bool(), last["from"].as_str(), last["to"].as_str()), (Some(true), Some("e2e-c"), Some("e2e-b")), "{last}");
}
