//! Fault tolerance with two real engines: periodic snapshots from A to B,
//! failover on B (by command and automatically), no second copy when A comes
//! back, retention, and snapshots that must never be listed. Run by `make test`.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use common::*;

const EVERY: &str = "2s";
/// The counter's period is 100 ms: one interval of 2 s is 20 counts.
const COUNTS_PER_INTERVAL: u64 = 20;

/// What the replication tests do with the two hosts.
trait Replication {
    fn spool_b(&self) -> PathBuf;
    fn counter(&mut self, name: &str, mib: u32) -> String;
    fn replicate(&self, name: &str, to: &str, extra: &[&str]) -> Child;
    fn stored(&self, name: &str) -> Vec<u64>;
    fn wait_for_snapshots(&self, name: &str, count: usize);
    fn kill_a(&mut self, replicate: &mut Child, name: &str) -> u64;
}

impl Replication for TwoHosts {
    fn spool_b(&self) -> PathBuf {
        self.scratch.path("spool-b")
    }

    fn counter(&mut self, name: &str, mib: u32) -> String {
        let name = self.on_a.track(name);
        self.on_b.track(&name);
        start_counter(ENGINE_A, &name, mib);
        latest_count(ENGINE_A, &name);
        memory_sum(ENGINE_A, &name)
    }

    /// `ferry replicate` on A, in the background.
    fn replicate(&self, name: &str, to: &str, extra: &[&str]) -> Child {
        ferry_command(ENGINE_A)
            .args(["--docker-socket", ENGINE_A, "--work-dir"])
            .arg(self.scratch.path("work-a"))
            .args(["replicate", name, "--to", to, "--every", EVERY, "--token-file"])
            .arg(&self.token)
            .args(["--self", &self.agent_a.addr])
            .args(extra)
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("ferry replicate starts")
    }

    /// Generations of `name` stored in B's spool, oldest first.
    fn stored(&self, name: &str) -> Vec<u64> {
        stored_generations(&self.spool_b(), name)
    }

    fn wait_for_snapshots(&self, name: &str, count: usize) {
        let deadline = Instant::now() + Duration::from_secs(40);
        while self.stored(name).len() < count {
            assert!(Instant::now() < deadline, "B never stored {count} snapshots of {name}");
            thread::sleep(Duration::from_millis(100));
        }
    }

    /// A dies: its replicate process, its agent and the app.
    fn kill_a(&mut self, replicate: &mut Child, name: &str) -> u64 {
        terminate(replicate);
        self.agent_a.kill();
        let last = latest_count(ENGINE_A, name);
        docker_ok(ENGINE_A, &["kill", name]);
        last
    }
}

/// SIGTERM, as an init system stops it; waits for it to end.
fn terminate(child: &mut Child) {
    let _ = Command::new("kill").args(["-TERM", &child.id().to_string()]).status();
    let deadline = Instant::now() + Duration::from_secs(20);
    while child.try_wait().unwrap().is_none() {
        assert!(Instant::now() < deadline, "replicate ignored SIGTERM");
        thread::sleep(Duration::from_millis(50));
    }
}

/// Asserts the failed-over counter on B carried on from at most one interval back.
fn assert_resumed_on_b(name: &str, last_on_a: u64, sum: &str) {
    latest_count(ENGINE_B, name);
    let first = first_count(ENGINE_B, name);
    assert!(!logs(ENGINE_B, name).contains("born="), "B started the app afresh instead of restoring it");
    assert!(
        first + COUNTS_PER_INTERVAL + 5 >= last_on_a && first <= last_on_a + 1,
        "B resumed at {first}, A was at {last_on_a}: more than one interval lost"
    );
    assert_eq!(memory_check(ENGINE_B, name), sum, "memory checksum changed");
}

#[test]
#[ignore = "needs two real engines + CRIU: run `make test`"]
fn failover_restores_from_the_newest_snapshot_and_a_returning_source_stands_down() {
    let mut hosts = TwoHosts::new("failover", &[]);
    let name = "ferry-e2e-replicated";
    let sum = hosts.counter(name, 16);
    let mut replicate = hosts.replicate(name, &hosts.agent_b.addr.clone(), &["--keep", "3"]);
    hosts.wait_for_snapshots(name, 2);
    let last_on_a = hosts.kill_a(&mut replicate, name);
    assert!(replicate.wait().unwrap().success(), "SIGTERM ends replicate cleanly");

    let out = ferry_on_b(&hosts.spool_b(), &["failover", name, "--json"]);
    assert!(out.status.success(), "failover failed: {}", stderr(&out));
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert!(report["snapshot_age_secs"].as_u64().unwrap() <= 10, "{report}");
    assert!(is_running(ENGINE_B, name));
    assert_resumed_on_b(name, last_on_a, &sum);

    // A comes back (its restart policy starts the app afresh) and its init
    // script starts replicate again: A must stop its copy instead of running twice.
    hosts.agent_a = AgentProcess::start(false, &hosts.scratch.path("spool-a"), &hosts.token, &[]);
    docker_ok(ENGINE_A, &["start", name]);
    let out = hosts.replicate(name, &hosts.agent_b.addr.clone(), &[]).wait_with_output().unwrap();
    assert_eq!(out.status.code(), Some(8), "replicate must refuse: {}", String::from_utf8_lossy(&out.stderr));
    assert!(String::from_utf8_lossy(&out.stderr).contains("was failed over to"));
    assert!(!is_running(ENGINE_A, name), "A runs a second copy");
    assert!(is_running(ENGINE_B, name));
}

#[test]
#[ignore = "needs two real engines + CRIU: run `make test`"]
fn automatic_failover_when_snapshots_stop_and_the_source_is_silent() {
    let mut hosts = TwoHosts::new("auto-failover", &["--failover-after", "4s"]);
    let name = "ferry-e2e-auto-failover";
    let sum = hosts.counter(name, 16);
    let mut replicate = hosts.replicate(name, &hosts.agent_b.addr.clone(), &[]);
    hosts.wait_for_snapshots(name, 2);
    let last_on_a = hosts.kill_a(&mut replicate, name);
    let deadline = Instant::now() + Duration::from_secs(30);
    while !is_running(ENGINE_B, name) {
        assert!(Instant::now() < deadline, "B never failed {name} over by itself");
        thread::sleep(Duration::from_millis(200));
    }
    assert_resumed_on_b(name, last_on_a, &sum);
}

#[test]
#[ignore = "needs two real engines + CRIU: run `make test`"]
fn retention_keeps_exactly_n_and_never_more_than_n_plus_one() {
    let mut hosts = TwoHosts::new("retention", &[]);
    let name = "ferry-e2e-retention";
    hosts.counter(name, 4);
    let mut replicate = hosts.replicate(name, &hosts.agent_b.addr.clone(), &["--keep", "2"]);
    let snapshots = hosts.spool_b().join("snapshots");
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut most = 0;
    while hosts.stored(name).last().copied().unwrap_or(0) < 5 {
        assert!(Instant::now() < deadline, "replicate did not reach generation 5");
        // Numbered snapshots plus the one being received, at every moment. A
        // snapshot renamed into place between the two reads would count
        // twice: a sample during which the stored ones changed is dropped.
        let stored = hosts.stored(name).len();
        let incoming = std::fs::read_dir(&snapshots)
            .map(|d| d.flatten().filter(|e| e.file_name().to_string_lossy().starts_with(".incoming")).count())
            .unwrap_or(0);
        if hosts.stored(name).len() == stored {
            most = most.max(stored + incoming);
        }
        thread::sleep(Duration::from_millis(20));
    }
    terminate(&mut replicate);
    assert_eq!(hosts.stored(name).len(), 2, "retention keeps exactly --keep 2");
    assert!(most <= 3, "the spool held {most} snapshots of {name} at once");
    let out = ferry(ENGINE_A, &hosts.scratch.work_dir(), &["snapshots", "--peer", &hosts.agent_b.addr, "--token-file", hosts.token.to_str().unwrap(), "--json"]);
    let listed: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(listed.as_array().unwrap().len(), 2);
    assert!(listed.as_array().unwrap().iter().all(|s| s["verified"] == true));
}

#[test]
#[ignore = "needs two real engines + CRIU: run `make test`"]
fn damaged_or_partial_snapshots_are_never_listed() {
    let mut hosts = TwoHosts::new("damaged", &[]);
    let name = "ferry-e2e-damaged";
    hosts.counter(name, 16);
    // Every snapshot crosses a wire that flips one bit.
    let proxy = flipping_proxy(&hosts.agent_b.addr, 2 << 20);
    let mut replicate = hosts.replicate(name, &proxy, &[]);
    thread::sleep(Duration::from_secs(5));
    terminate(&mut replicate);
    let mut log = String::new();
    std::io::Read::read_to_string(replicate.stderr.as_mut().unwrap(), &mut log).unwrap();
    assert!(log.contains("damaged"), "the agent refused the damaged snapshots: {log}");
    assert!(hosts.stored(name).is_empty(), "a damaged snapshot was stored");
    let out = ferry_on_b(&hosts.spool_b(), &["failover", name]);
    assert_eq!(out.status.code(), Some(4), "failover must find nothing to use: {}", stderr(&out));
    assert!(!exists(ENGINE_B, name));

    // The agent killed while a snapshot arrives: nothing listed, and the part
    // is removed when the agent starts again.
    let big = "ferry-e2e-partial";
    hosts.counter(big, 256);
    let spool = hosts.spool_b();
    let pid = hosts.agent_b.child.id();
    let mut replicate = hosts.replicate(big, &hosts.agent_b.addr.clone(), &[]);
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        if incoming_bytes(&spool) > 8 << 20 {
            let _ = Command::new("kill").args(["-KILL", &pid.to_string()]).status();
            break;
        }
        assert!(Instant::now() < deadline, "no snapshot ever reached B's spool");
        thread::sleep(Duration::from_millis(2));
    }
    terminate(&mut replicate);
    assert!(stored_generations(&spool, big).is_empty(), "a partial snapshot is visible");
    hosts.agent_b = AgentProcess::start(true, &spool, &hosts.token, &[]);
    assert_eq!(incoming_bytes(&spool), 0, "the restarted agent left the partial snapshot");
    let out = ferry(ENGINE_A, &hosts.scratch.work_dir(), &["snapshots", "--peer", &hosts.agent_b.addr, "--token-file", hosts.token.to_str().unwrap(), "--json"]);
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "[]");
}

fn incoming_bytes(spool: &Path) -> u64 {
    let Ok(entries) = std::fs::read_dir(spool.join("snapshots")) else { return 0 };
    entries
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().starts_with(".incoming"))
        .filter_map(|e| std::fs::metadata(e.path().join("checkpoint/pages-1.img")).ok())
        .map(|m| m.len())
        .sum::<u64>()
        + std::fs::read_dir(spool.join("snapshots"))
            .map(|d| d.flatten().filter(|e| e.file_name().to_string_lossy().starts_with(".incoming")).count() as u64)
            .unwrap_or(0)
}

#[test]
#[ignore = "needs two real engines + CRIU: run `make test`"]
fn a_snapshot_altered_on_the_peers_disk_is_never_used() {
    let mut hosts = TwoHosts::new("altered-snapshot", &[]);
    let name = "ferry-e2e-altered";
    let sum = hosts.counter(name, 8);
    let mut replicate = hosts.replicate(name, &hosts.agent_b.addr.clone(), &["--keep", "3"]);
    hosts.wait_for_snapshots(name, 2);
    let last_on_a = hosts.kill_a(&mut replicate, name);
    let stored = hosts.stored(name);
    let newest = *stored.last().unwrap();
    // One bit of the newest snapshot's memory image flipped on B's disk.
    let snapshot = hosts.spool_b().join("snapshots").join(name).join(format!("{newest:020}"));
    let pages = std::fs::read_dir(snapshot.join("checkpoint"))
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .find(|p| p.file_name().unwrap().to_string_lossy().starts_with("pages-"))
        .expect("a pages image");
    let mut bytes = std::fs::read(&pages).unwrap();
    let middle = bytes.len() / 2;
    bytes[middle] ^= 0x04;
    std::fs::write(&pages, bytes).unwrap();

    let out = ferry_on_b(&hosts.spool_b(), &["failover", name, "--snapshot", &format!("{name}@{newest}")]);
    expect_failure(&out, BAD_PAYLOAD, "altered on disk");
    assert!(!exists(ENGINE_B, name), "nothing was created from the altered snapshot");
    assert!(!hosts.stored(name).contains(&newest), "the altered snapshot is set aside, never listed again");

    // The normal case: the next failover takes the newest intact snapshot.
    let out = ferry_on_b(&hosts.spool_b(), &["failover", name]);
    assert!(out.status.success(), "failover failed: {}", stderr(&out));
    latest_count(ENGINE_B, name);
    let first = first_count(ENGINE_B, name);
    assert!(first <= last_on_a + 1, "B resumed at {first}, A was at {last_on_a}");
    assert_eq!(memory_check(ENGINE_B, name), sum, "memory checksum changed");
}
