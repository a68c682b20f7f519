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
        let addr = format!("127.0.0.1:{}", free_port());
        let log = scratch.path(&format!("agent-{node}.log"));
        let child = Command::new(ferry_bin())
            .env("FERRY_CONFIG_DIR", config_dir(ENGINE_A))
            .args(["--docker-socket", ENGINE_A, "--work-dir"])
            .arg(scratch.work_dir())
            .args(["serve", "--insecure", "--listen", &addr, "--etcd", &etcd.url, "--node", node])
            .args(["--lease-ttl", &lease_ttl.to_string()])
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
    assert_eq!(empty, serde_json::json!({ "nodes": [], "placements": [] }));

    let unreachable = fleet_status("http://127.0.0.1:1", &[]);
    expect_failure(&unreachable, PEER, "etcd cannot be reached at http://127.0.0.1:1");
    // The next endpoint is tried when one cannot be reached.
    let second = fleet_status(&format!("http://127.0.0.1:1,{}", etcd.url), &["--json"]);
    assert!(second.status.success(), "{}", stderr(&second));
    expect_failure(&fleet_status("https://127.0.0.1:2379", &[]), USAGE, "TLS to etcd is not supported yet");
    expect_failure(&fleet_status("127.0.0.1:2379", &[]), USAGE, "give http://HOST:PORT");
}

#[test]
fn serve_refuses_fleet_options_that_cannot_work_before_touching_anything() {
    let run = |args: &[&str]| Command::new(ferry_bin()).args(["serve", "--insecure"]).args(args).output().unwrap();
    expect_failure(&run(&["--listen", "127.0.0.1:1", "--node", "a"]), USAGE, "give --etcd URL too");
    let etcd = ["--etcd", "http://127.0.0.1:1"];
    let wildcard = run(&[&["--listen", "0.0.0.0:7070"][..], &etcd].concat());
    expect_failure(&wildcard, USAGE, "--listen 0.0.0.0:7070 is no address other nodes can reach: give --advertise");
    let slash = run(&[&["--listen", "127.0.0.1:1", "--node", "a/b"][..], &etcd].concat());
    expect_failure(&slash, USAGE, "--node 'a/b' cannot name a fleet record");
    let short = run(&[&["--listen", "127.0.0.1:1", "--lease-ttl", "1"][..], &etcd].concat());
    expect_failure(&short, USAGE, "--lease-ttl 1: give 2 seconds or more");
}
