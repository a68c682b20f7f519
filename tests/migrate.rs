//! Migration between real engines (A, and B and C each in its own mount and network
//! namespace) through real agents, and every way it can fail: after each, the
//! app runs on exactly one engine and nothing half-restored is left.
//! Run by `make test`.

mod common;

use std::path::{Path, PathBuf};
use std::thread;
use std::time::{Duration, Instant};

use common::*;

/// What the migration tests do with the two hosts.
trait Migration {
    fn counter_on_a(&mut self, name: &str, mib: u32, extra: &[&str]) -> (String, String);
    fn migrate_a_to(&self, name: &str, to: &str, extra: &[&str]) -> std::process::Output;
    fn still_on_a_only(&self, name: &str, counted: u64, sum: &str);
}

impl Migration for TwoHosts {
    /// A counter on A, tracked on both engines; returns its name and memory sum.
    fn counter_on_a(&mut self, name: &str, mib: u32, extra: &[&str]) -> (String, String) {
        let name = self.on_a.track(name);
        self.on_b.track(&name);
        let mib = mib.to_string();
        let args = [&["run", "-d", "--name", name.as_str()], extra, &[WORKLOAD, "/counter", &mib, "100"]].concat();
        docker_ok(ENGINE_A, &args);
        let sum = memory_sum(ENGINE_A, &name);
        wait_until_counting(ENGINE_A, &name);
        (name, sum)
    }

    fn migrate_a_to(&self, name: &str, to: &str, extra: &[&str]) -> std::process::Output {
        let args = [&["migrate", name, "--to", to, "--token-file", self.token.to_str().unwrap()], extra, &self.client_flags[..]].concat();
        ferry(ENGINE_A, &self.scratch.work_dir(), &args)
    }

    /// Asserts the app runs on A only, still counting from where it was.
    fn still_on_a_only(&self, name: &str, counted: u64, sum: &str) {
        assert!(is_running(ENGINE_A, name), "{name} does not run on A after the failed migration");
        assert!(!exists(ENGINE_B, name), "{name} was left behind on B");
        let now = {
            thread::sleep(Duration::from_millis(300));
            latest_count(ENGINE_A, name)
        };
        assert!(now > counted, "{name} on A did not carry on: {now} after {counted}");
        assert_eq!(memory_check(ENGINE_A, name), sum, "memory changed");
    }
}

fn wait_until_counting(socket: &str, name: &str) -> u64 {
    wait_for_count(socket, name, 3, Duration::from_secs(20))
}

fn expect_peer_failure(out: &std::process::Output, message: &str) {
    expect_failure(out, PEER, message);
}

#[test]
#[ignore = "needs two real engines + CRIU: run `make test`"]
fn migrate_a_to_b_and_back_keeps_counter_and_memory() {
    let mut hosts = TwoHosts::new("hop", &[]);
    let (name, sum) = hosts.counter_on_a("ferry-e2e-hop", 16, &[]);
    let leftovers = containerd_leftovers();
    let on_b = all_containers(ENGINE_B);
    let state = read_container_file(ENGINE_A, &name, "/ferry-state.txt", &hosts.scratch).expect("the counter's state file");

    let before = latest_count(ENGINE_A, &name);
    let out = hosts.migrate_a_to(&name, &hosts.agent_b.addr, &["--json"]);
    assert!(out.status.success(), "A → B failed: {}", stderr(&out));
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    // CRIU's own figures inside the save and the resume, from its statistics.
    for phase in ["save_secs", "transfer_secs", "resume_secs", "total_secs", "criu_frozen_secs", "peer_criu_restore_secs"] {
        assert!(report[phase].as_f64().unwrap() > 0.0, "{phase} missing: {report}");
    }
    assert!(report["bytes_sent"].as_u64().unwrap() > 16 << 20);
    assert_eq!(report["checkpoint_path"], "runc");
    assert!(!exists(ENGINE_A, &name), "the source stays on A after a successful migration");
    assert!(is_running(ENGINE_B, &name));
    latest_count(ENGINE_B, &name);
    let first_on_b = first_count(ENGINE_B, &name);
    assert!(first_on_b > before, "counter restarted on B: {first_on_b} after {before}");
    assert_eq!(memory_check(ENGINE_B, &name), sum);
    // Its files came too (put in while its memory still arrived), and what
    // it deleted from its image stays deleted.
    assert_eq!(read_container_file(ENGINE_B, &name, "/ferry-state.txt", &hosts.scratch).as_ref(), Some(&state));
    assert!(read_container_file(ENGINE_B, &name, "/ferry-delete-me", &hosts.scratch).is_none());
    // One container more on B, under the app's name: none created early is left.
    let mut expected = on_b.clone();
    expected.push(name.clone());
    expected.sort();
    let mut now_on_b = all_containers(ENGINE_B);
    now_on_b.sort();
    assert_eq!(now_on_b, expected);

    // And back, driven from B's side.
    let before = wait_until_counting(ENGINE_B, &name);
    let out = ferry_on_b(
        &hosts.scratch.path("work-b"),
        &["migrate", &name, "--to", &hosts.agent_a.addr, "--token-file", hosts.token.to_str().unwrap()],
    );
    assert!(out.status.success(), "B → A failed: {}", stderr(&out));
    assert!(!exists(ENGINE_B, &name));
    assert!(is_running(ENGINE_A, &name));
    latest_count(ENGINE_A, &name);
    let first_on_a = first_count(ENGINE_A, &name);
    assert!(first_on_a > before, "counter restarted on A: {first_on_a} after {before}");
    assert_eq!(memory_check(ENGINE_A, &name), sum);
    assert_eq!(read_container_file(ENGINE_A, &name, "/ferry-state.txt", &hosts.scratch).as_ref(), Some(&state));
    assert_eq!(containerd_leftovers(), leftovers, "containerd's checkpoint extractions were left in /tmp");
}

#[test]
#[ignore = "needs three real engines + CRIU: run `make test`"]
fn a_counter_goes_round_three_hosts_keeping_count_and_memory() {
    let mut hosts = TwoHosts::new("round", &[]);
    let agent_c = AgentProcess::start_on(ENGINE_C, &hosts.scratch.path("spool-c"), &hosts.token, &[]);
    let mut on_c = Containers::new(ENGINE_C);
    let (name, sum) = hosts.counter_on_a("ferry-e2e-round", 16, &[]);
    on_c.track(&name);

    // A → B → C → A, each move driven by the host that has the counter,
    // as that host (C trusts A and B, and both trust C).
    let token = hosts.token.to_str().unwrap().to_string();
    let legs = [
        (ENGINE_A, ENGINE_B, hosts.agent_b.addr.clone()),
        (ENGINE_B, ENGINE_C, agent_c.addr.clone()),
        (ENGINE_C, ENGINE_A, hosts.agent_a.addr.clone()),
    ];
    for (from, to, addr) in legs {
        let before = wait_until_counting(from, &name);
        let out = ferry_on(from, &hosts.scratch.work_dir(), &["migrate", &name, "--to", &addr, "--token-file", &token]);
        assert!(out.status.success(), "{from} → {to} failed: {}", stderr(&out));
        assert!(!exists(from, &name), "{name} stays on {from} after moving to {to}");
        assert!(is_running(to, &name), "{name} does not run on {to}");
        latest_count(to, &name);
        let first = first_count(to, &name);
        assert!(first > before, "counter restarted on {to}: {first} after {before}");
        assert_eq!(memory_check(to, &name), sum, "memory changed on the way to {to}");
    }
}

#[test]
#[ignore = "needs two real engines + CRIU: run `make test`"]
fn an_agent_with_a_board_profile_caps_what_it_restores() {
    let mut hosts = TwoHosts::new("board", &[]);
    let capped = AgentProcess::start(true, &hosts.scratch.path("spool-capped"), &hosts.token, &["--board", "pi-zero-2w"]);
    let (name, sum) = hosts.counter_on_a("ferry-e2e-board-agent", 16, &[]);
    let out = hosts.migrate_a_to(&name, &capped.addr, &[]);
    assert!(out.status.success(), "{}", stderr(&out));
    let caps = docker_ok(ENGINE_B, &["inspect", "-f", "{{.HostConfig.Memory}} {{.HostConfig.MemorySwap}} {{.HostConfig.NanoCpus}}", &name]);
    assert_eq!(caps, format!("{} {} 1000000000", 96 << 20, 96 << 20), "pi-zero-2w caps");
    assert_eq!(memory_check(ENGINE_B, &name), sum);
}

#[test]
#[ignore = "needs two real engines + CRIU: run `make test`"]
fn wrong_token_is_refused_before_anything_stops() {
    let mut hosts = TwoHosts::new("token", &[]);
    let (name, sum) = hosts.counter_on_a("ferry-e2e-token", 4, &[]);
    let wrong = hosts.scratch.path("wrong-token");
    std::fs::write(&wrong, "not-the-token-not-the-token").unwrap();
    let counted = latest_count(ENGINE_A, &name);
    let out = ferry(
        ENGINE_A,
        &hosts.scratch.work_dir(),
        &["migrate", &name, "--to", &hosts.agent_b.addr, "--token-file", wrong.to_str().unwrap()],
    );
    expect_peer_failure(&out, "HTTP 401");
    hosts.still_on_a_only(&name, counted, &sum);
}

#[test]
#[ignore = "needs two real engines + CRIU: run `make test`"]
fn unreachable_peer_is_refused_before_anything_stops() {
    let mut hosts = TwoHosts::new("unreachable", &[]);
    let (name, sum) = hosts.counter_on_a("ferry-e2e-unreachable", 4, &[]);
    let counted = latest_count(ENGINE_A, &name);
    let nobody = format!("127.0.0.1:{}", free_port());
    let out = hosts.migrate_a_to(&name, &nobody, &[]);
    expect_peer_failure(&out, "connection refused");
    hosts.still_on_a_only(&name, counted, &sum);
}

#[test]
#[ignore = "needs two real engines + CRIU: run `make test`"]
fn migrate_rolls_back_when_the_agent_dies_mid_transfer() {
    let mut hosts = TwoHosts::new("agent-dies", &[]);
    let (name, sum) = hosts.counter_on_a("ferry-e2e-dies", 256, &[]);
    let counted = latest_count(ENGINE_A, &name);
    // Kill B's agent once its spool holds part of the payload.
    let spool = hosts.scratch.path("spool-b");
    let spool_b = spool.clone();
    let pid = hosts.agent_b.child.id();
    let killer = thread::spawn(move || {
        let deadline = Instant::now() + Duration::from_secs(60);
        while Instant::now() < deadline {
            if receiving_bytes(&spool) > 8 << 20 {
                unsafe_kill(pid);
                return true;
            }
            thread::sleep(Duration::from_millis(2));
        }
        false
    });
    let out = hosts.migrate_a_to(&name, &hosts.agent_b.addr, &[]);
    assert!(killer.join().unwrap(), "the payload never reached B's spool");
    expect_peer_failure(&out, "runs again here");
    // B's agent created the container (never started) while the payload
    // arrived; the agent, started again as its unit would, removes it.
    assert!(!is_running(ENGINE_B, &name), "{name} runs on B after a migration that never arrived");
    let _ = hosts.agent_b.child.wait();
    let addr = hosts.agent_b.addr.clone();
    hosts.agent_b = AgentProcess::start_at(true, &addr, &spool_b, &hosts.token, &[]);
    let deadline = Instant::now() + Duration::from_secs(15);
    while exists(ENGINE_B, &name) && Instant::now() < deadline {
        thread::sleep(Duration::from_millis(100));
    }
    hosts.still_on_a_only(&name, counted, &sum);
}

/// Bytes in the agent's receive folders so far: a migration's payload
/// arrives in `handovers/<id>.payload`, a plain restore's in `receive-*`.
fn receiving_bytes(spool: &Path) -> u64 {
    let folders = |dir: &Path| std::fs::read_dir(dir).into_iter().flatten().flatten().map(|e| e.path()).collect::<Vec<_>>();
    let mut arriving = folders(spool);
    arriving.extend(folders(&spool.join("handovers")));
    arriving
        .iter()
        .filter(|p| p.file_name().is_some_and(|n| n.to_string_lossy().starts_with("receive-") || n.to_string_lossy().ends_with(".payload")))
        .filter_map(|p| std::fs::metadata(p.join("checkpoint/pages-1.img")).ok())
        .map(|m| m.len())
        .sum()
}

fn unsafe_kill(pid: u32) {
    let _ = std::process::Command::new("kill").args(["-KILL", &pid.to_string()]).status();
}

#[test]
#[ignore = "needs two real engines + CRIU: run `make test`"]
fn payload_corrupted_in_flight_is_refused_by_checksum() {
    // Over TLS a flipped bit fails the record's authentication: the agent
    // drops the connection and the app runs on A again.
    let mut hosts = TwoHosts::new("corrupt", &[]);
    let (name, sum) = hosts.counter_on_a("ferry-e2e-corrupt", 16, &[]);
    let counted = latest_count(ENGINE_A, &name);
    let proxy = flipping_proxy(&hosts.agent_b.addr, 4 << 20);
    let out = hosts.migrate_a_to(&name, &proxy, &[]);
    assert_eq!(out.status.code(), Some(PEER), "{}", stderr(&out));
    hosts.still_on_a_only(&name, counted, &sum);
    drop(hosts);
    // Over plain HTTP the payload's own digests catch it.
    let mut hosts = TwoHosts::insecure("corrupt-plain", &[]);
    let (name, sum) = hosts.counter_on_a("ferry-e2e-corrupt-plain", 16, &[]);
    let counted = latest_count(ENGINE_A, &name);
    let on_b = all_containers(ENGINE_B);
    let proxy = flipping_proxy(&hosts.agent_b.addr, 4 << 20);
    let out = hosts.migrate_a_to(&name, &proxy, &[]);
    expect_peer_failure(&out, "damaged");
    hosts.still_on_a_only(&name, counted, &sum);
    // The flip is in the app's memory, behind its files: the container B
    // created early, with those files put in, went when the digest failed.
    assert_eq!(all_containers(ENGINE_B), on_b);
}

#[test]
#[ignore = "needs two real engines + CRIU: run `make test`"]
fn image_missing_on_peer_is_refused_with_never_and_shipped_with_auto() {
    let mut hosts = TwoHosts::new("image", &[]);
    // An image only A has: a commit of a counter's filesystem.
    let seed = hosts.on_a.track("ferry-e2e-image-seed");
    docker_ok(ENGINE_A, &["run", "-d", "--name", &seed, WORKLOAD, "/counter", "1", "100"]);
    latest_count(ENGINE_A, &seed);
    let image = "ferry-e2e-only-on-a:latest";
    docker_ok(ENGINE_A, &["commit", &seed, image]);
    let _images = ImageCleanup(image);
    let _ = docker(ENGINE_B, &["rmi", "-f", image]);

    let name = hosts.on_a.track("ferry-e2e-image");
    hosts.on_b.track(&name);
    docker_ok(ENGINE_A, &["run", "-d", "--name", &name, image, "/counter", "8", "100"]);
    let sum = memory_sum(ENGINE_A, &name);
    let counted = wait_until_counting(ENGINE_A, &name);

    let out = hosts.migrate_a_to(&name, &hosts.agent_b.addr, &["--ship-image", "never"]);
    expect_peer_failure(&out, "lacks the image");
    hosts.still_on_a_only(&name, counted, &sum);

    let out = hosts.migrate_a_to(&name, &hosts.agent_b.addr, &["--ship-image", "auto", "--json"]);
    assert!(out.status.success(), "auto did not ship the image: {}", stderr(&out));
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(report["image_shipped"], true);
    assert!(is_running(ENGINE_B, &name) && !exists(ENGINE_A, &name));
    assert_eq!(memory_check(ENGINE_B, &name), sum);
}

struct ImageCleanup(&'static str);

impl Drop for ImageCleanup {
    fn drop(&mut self) {
        for engine in [ENGINE_A, ENGINE_B] {
            let _ = docker(engine, &["rm", "-f", "ferry-e2e-image", "ferry-e2e-image-seed"]);
            let _ = docker(engine, &["rmi", "-f", self.0]);
        }
    }
}

#[test]
#[ignore = "needs two real engines + CRIU: run `make test`"]
fn peer_spool_too_small_is_refused_before_it_fills() {
    let mut hosts = TwoHosts::new("small-spool", &[]);
    // A 16 MiB tmpfs in B's mount namespace as the agent's spool.
    let small = hosts.scratch.path("small-spool");
    std::fs::create_dir_all(&small).unwrap();
    let pid = engine_b_pid();
    let mounted = std::process::Command::new("nsenter")
        .arg(format!("--mount=/proc/{pid}/ns/mnt"))
        .args(["--", "mount", "-t", "tmpfs", "-o", "size=16m", "tmpfs"])
        .arg(&small)
        .status()
        .unwrap();
    assert!(mounted.success());
    let _unmount = Unmount(small.clone(), pid);
    let small_agent = AgentProcess::start(true, &small, &hosts.token, &[]);

    let (name, sum) = hosts.counter_on_a("ferry-e2e-small-spool", 64, &[]);
    let counted = latest_count(ENGINE_A, &name);
    let out = hosts.migrate_a_to(&name, &small_agent.addr, &[]);
    expect_peer_failure(&out, "free");
    hosts.still_on_a_only(&name, counted, &sum);
}

struct Unmount(PathBuf, String);

impl Drop for Unmount {
    fn drop(&mut self) {
        let _ = std::process::Command::new("nsenter")
            .arg(format!("--mount=/proc/{}/ns/mnt", self.1))
            .args(["--", "umount", "-l"])
            .arg(&self.0)
            .status();
    }
}

#[test]
#[ignore = "needs two real engines + CRIU: run `make test`"]
fn restore_failing_on_the_peer_rolls_back() {
    let mut hosts = TwoHosts::new("port", &[]);
    // B already publishes the port the app needs.
    let squatter = hosts.on_b.track("ferry-e2e-port-squatter");
    docker_ok(ENGINE_B, &["run", "-d", "--name", &squatter, "-p", "18080:8080", WORKLOAD, "/counter", "1", "1000"]);
    let (name, sum) = hosts.counter_on_a("ferry-e2e-port", 8, &["-p", "18080:8080"]);
    let counted = latest_count(ENGINE_A, &name);
    let out = hosts.migrate_a_to(&name, &hosts.agent_b.addr, &[]);
    expect_peer_failure(&out, "runs again here");
    hosts.still_on_a_only(&name, counted, &sum);
}
