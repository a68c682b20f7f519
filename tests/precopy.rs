//! Sending less (issue 14) between two real engines: pre-copy rounds while
//! the app runs, deltas against what the peer already holds (a snapshot, the
//! part of an upload that arrived before its connection broke), and what
//! happens when that base is damaged or gone. Each case checks the app's
//! counter and memory where it ends up. Run by `make test`.

mod common;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::path::Path;
use std::process::{Child, Output, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use common::*;

const MIB: u64 = 1 << 20;

/// What the tests here do with the two hosts.
trait Deltas {
    fn counter(&mut self, name: &str, mib: u32) -> (String, String);
    fn dirtying_counter(&mut self, name: &str, mib: u32) -> String;
    fn migrate_a_to(&self, name: &str, to: &str, extra: &[&str]) -> Output;
    fn replicate_once(&self, name: &str) -> u64;
}

impl Deltas for TwoHosts {
    /// A counter on A that leaves its memory alone, tracked on both engines:
    /// its name and memory sum.
    fn counter(&mut self, name: &str, mib: u32) -> (String, String) {
        let name = self.on_a.track(name);
        self.on_b.track(&name);
        start_counter(ENGINE_A, &name, mib);
        let sum = memory_sum(ENGINE_A, &name);
        wait_for_count(ENGINE_A, &name, 3, Duration::from_secs(20));
        (name, sum)
    }

    /// A counter on A that rewrites 1 MiB of its memory every second.
    fn dirtying_counter(&mut self, name: &str, mib: u32) -> String {
        let name = self.on_a.track(name);
        self.on_b.track(&name);
        docker_ok(ENGINE_A, &["run", "-d", "--name", &name, WORKLOAD, "/counter", &mib.to_string(), "100", "1"]);
        wait_for_count(ENGINE_A, &name, 3, Duration::from_secs(30));
        name
    }

    fn migrate_a_to(&self, name: &str, to: &str, extra: &[&str]) -> Output {
        let args = [&["migrate", name, "--to", to, "--token-file", self.token.to_str().unwrap()], extra, &self.client_flags[..]].concat();
        ferry(ENGINE_A, &self.scratch.work_dir(), &args)
    }

    /// `ferry replicate --once` of `name` to B; the generation B stored.
    fn replicate_once(&self, name: &str) -> u64 {
        let spool_b = self.scratch.path("spool-b");
        let before = stored_generations(&spool_b, name);
        let token = self.token.to_str().unwrap();
        let args = [&["replicate", name, "--to", &self.agent_b.addr, "--every", "60s", "--once", "--token-file", token], &self.client_flags[..]].concat();
        let started = Instant::now();
        let out = ferry(ENGINE_A, &self.scratch.path("work-a"), &args);
        assert!(out.status.success(), "replicate --once exited {:?}: {}", out.status.code(), stderr(&out));
        assert!(started.elapsed() < Duration::from_secs(50), "replicate --once did not exit after its snapshot");
        let after = stored_generations(&spool_b, name);
        let new: Vec<u64> = after.iter().copied().filter(|g| !before.contains(g)).collect();
        assert_eq!(new.len(), 1, "replicate --once stored {new:?} on B (before {before:?}, after {after:?})");
        new[0]
    }
}

fn json_report(out: &Output) -> serde_json::Value {
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| panic!("migrate --json printed no report ({e}): {}", String::from_utf8_lossy(&out.stdout)))
}

fn number(report: &serde_json::Value, field: &str) -> f64 {
    report[field].as_f64().unwrap_or_else(|| panic!("{field} missing: {report}"))
}

/// Asks a dirtying counter to checksum its memory; returns (check, expect)
/// from the new `check=X expect=Y count=N` line.
fn dirty_memory_check(socket: &str, name: &str) -> (String, String) {
    let checks_before = logs(socket, name).lines().filter(|line| field(line, "check").is_some()).count();
    docker_ok(socket, &["kill", "--signal", "USR1", name]);
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let text = logs(socket, name);
        let checks: Vec<&str> = text.lines().filter(|line| field(line, "check").is_some()).collect();
        if checks.len() > checks_before {
            let line = checks[checks_before];
            let expect = field(line, "expect").unwrap_or_else(|| panic!("{name}'s check line has no expect=: {line}"));
            return (field(line, "check").unwrap().to_string(), expect.to_string());
        }
        assert!(Instant::now() < deadline, "{name} never answered SIGUSR1; its log:\n{text}");
        thread::sleep(Duration::from_millis(100));
    }
}

fn assert_memory_intact(socket: &str, name: &str) {
    let (check, expect) = dirty_memory_check(socket, name);
    assert_eq!(check, expect, "{name}'s memory is not what it wrote");
}

/// Follows a container's log on A while it lives: the last count it printed
/// before it was frozen for good.
struct LastCount {
    follower: Child,
    reader: Option<thread::JoinHandle<()>>,
    last: Arc<Mutex<Option<u64>>>,
}

impl LastCount {
    fn follow(name: &str) -> LastCount {
        let mut follower = std::process::Command::new("docker")
            .args(["-H", &format!("unix://{ENGINE_A}"), "logs", "--follow", name])
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("docker logs --follow starts");
        let stdout = follower.stdout.take().unwrap();
        let last = Arc::new(Mutex::new(None));
        let seen = last.clone();
        let reader = thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if let Some(count) = field(&line, "count").and_then(|c| c.parse().ok()) {
                    *seen.lock().unwrap() = Some(count);
                }
            }
        });
        LastCount { follower, reader: Some(reader), last }
    }

    /// Once the container is gone from A (its log then ends).
    fn last(mut self) -> u64 {
        let deadline = Instant::now() + Duration::from_secs(10);
        while self.follower.try_wait().unwrap().is_none() && Instant::now() < deadline {
            thread::sleep(Duration::from_millis(50));
        }
        self.stop();
        self.last.lock().unwrap().expect("the container printed a count on A")
    }

    fn stop(&mut self) {
        let _ = self.follower.kill();
        let _ = self.follower.wait();
        if let Some(reader) = self.reader.take() {
            let _ = reader.join();
        }
    }
}

impl Drop for LastCount {
    fn drop(&mut self) {
        self.stop();
    }
}

/// What is on the machine outside a test: the containers on either engine
/// and containerd's leftover extractions, compared before and after.
struct Machine {
    on_a: Vec<String>,
    on_b: Vec<String>,
    leftovers: usize,
}

impl Machine {
    fn now() -> Machine {
        let sorted = |socket| {
            let mut names = all_containers(socket);
            names.sort();
            names
        };
        Machine { on_a: sorted(ENGINE_A), on_b: sorted(ENGINE_B), leftovers: containerd_leftovers() }
    }

    /// Asserts the machine is as it was, but for `moved` (on A before, on B
    /// now) and `added_on_b`.
    fn assert_unchanged_but(&self, moved: &[&str], added_on_b: &[&str]) {
        let now = Machine::now();
        let mut expected_a: Vec<String> = self.on_a.iter().filter(|n| !moved.contains(&n.as_str())).cloned().collect();
        expected_a.sort();
        let mut expected_b: Vec<String> = self.on_b.iter().cloned().chain(moved.iter().chain(added_on_b).map(|n| n.to_string())).collect();
        expected_b.sort();
        expected_b.dedup();
        assert_eq!(now.on_a, expected_a, "containers on A");
        assert_eq!(now.on_b, expected_b, "containers on B");
        assert!(now.leftovers <= self.leftovers, "containerd's checkpoint extractions in /tmp: {} before, {} after", self.leftovers, now.leftovers);
    }
}

#[test]
#[ignore = "needs two real engines + CRIU: run `make test`"]
fn precopy_migration_keeps_counter_and_memory() {
    let mut hosts = TwoHosts::new("precopy", &[]);
    let name = hosts.dirtying_counter("ferry-e2e-precopy", 32);
    let machine = Machine::now();
    let on_a = LastCount::follow(&name);

    let out = hosts.migrate_a_to(&name, &hosts.agent_b.addr, &["--precopy", "--precopy-rounds", "3", "--json"]);
    assert!(out.status.success(), "migrate --precopy exited {:?}: {}", out.status.code(), stderr(&out));
    let report = json_report(&out);
    let rounds = report["precopy_rounds"].as_array().unwrap_or_else(|| panic!("precopy_rounds missing: {report}"));
    assert!((1..=3).contains(&rounds.len()), "{} pre-copy rounds for --precopy-rounds 3: {report}", rounds.len());
    for round in rounds {
        for key in ["freeze_secs", "secs", "bytes_sent", "raw_bytes"] {
            assert!(round[key].is_number(), "round without {key}: {report}");
        }
    }
    assert!(report["precopy_stopped"].is_string(), "why the rounds ended is not said: {report}");
    let (downtime, elapsed) = (number(&report, "downtime_secs"), number(&report, "elapsed_secs"));
    assert!(downtime > 0.0 && downtime <= elapsed, "downtime {downtime}s, elapsed {elapsed}s: {report}");
    // The rounds carried the memory: the frozen send is a delta against them.
    let precopied: f64 = rounds.iter().map(|r| r["bytes_sent"].as_f64().unwrap()).sum();
    assert!(precopied >= 0.9 * (32 * MIB) as f64, "the rounds sent {precopied} bytes of a 32 MiB app: {report}");
    assert!(report["delta_base"].is_string(), "the final send was not a delta: {report}");
    let (sent, raw) = (number(&report, "bytes_sent"), number(&report, "raw_bytes"));
    assert!(sent < raw / 2.0, "the final send carried {sent} of {raw} bytes: {report}");

    let last_on_a = on_a.last();
    assert!(!exists(ENGINE_A, &name), "the source stays on A after a successful migration");
    assert!(is_running(ENGINE_B, &name));
    latest_count(ENGINE_B, &name);
    let first_on_b = first_count(ENGINE_B, &name);
    assert!(first_on_b >= last_on_a, "B carried on from {first_on_b}, A had counted to {last_on_a}: an older round was restored");
    assert_memory_intact(ENGINE_B, &name);
    machine.assert_unchanged_but(&[&name], &[]);
}

#[test]
#[ignore = "needs two real engines + CRIU: run `make test`"]
fn migrate_after_replicate_sends_only_a_delta() {
    let mut hosts = TwoHosts::new("delta-after-snapshot", &[]);
    let (name, sum) = hosts.counter("ferry-e2e-delta-snapshot", 32);
    let machine = Machine::now();
    hosts.replicate_once(&name);
    let counted = latest_count(ENGINE_A, &name);

    let out = hosts.migrate_a_to(&name, &hosts.agent_b.addr, &["--json"]);
    assert!(out.status.success(), "migrate exited {:?}: {}", out.status.code(), stderr(&out));
    let report = json_report(&out);
    assert!(report["delta_base"].is_string(), "B held a snapshot, yet the payload went whole: {report}");
    let (sent, raw) = (number(&report, "bytes_sent"), number(&report, "raw_bytes"));
    assert!(raw > (32 * MIB) as f64, "raw_bytes is not the whole checkpoint: {report}");
    assert!(sent < raw / 4.0, "a delta of an app that wrote nothing carried {sent} of {raw} bytes: {report}");
    assert_eq!(report["attempts"], 1, "{report}");
    assert_eq!(report["fallback_full"], false, "{report}");

    assert!(!exists(ENGINE_A, &name), "the source stays on A after a successful migration");
    latest_count(ENGINE_B, &name);
    let first_on_b = first_count(ENGINE_B, &name);
    assert!(first_on_b > counted, "counter restarted on B: {first_on_b} after {counted}");
    assert_eq!(memory_check(ENGINE_B, &name), sum, "memory checksum changed");
    machine.assert_unchanged_but(&[&name], &[]);
}

#[test]
#[ignore = "needs two real engines + CRIU: run `make test`"]
fn broken_transfer_resumes_without_resending_what_arrived() {
    let mut hosts = TwoHosts::new("resume", &[]);
    let machine = Machine::now();

    // The normal case: through the proxy, uncut, a payload crosses once.
    let (whole, whole_sum) = hosts.counter("ferry-e2e-resume-whole", 32);
    let counted = latest_count(ENGINE_A, &whole);
    let proxy = CuttingProxy::start(&hosts.agent_b.addr, u64::MAX);
    let out = hosts.migrate_a_to(&whole, &proxy.addr, &["--json"]);
    assert!(out.status.success(), "migrate through the proxy exited {:?}: {}", out.status.code(), stderr(&out));
    let report = json_report(&out);
    let raw = number(&report, "raw_bytes");
    let forwarded = proxy.forwarded() as f64;
    assert!(!proxy.has_cut());
    assert!(forwarded > 0.8 * raw && forwarded < 1.15 * raw, "an uncut migration forwarded {forwarded} bytes for {raw} raw: {report}");
    assert_eq!(report["attempts"], 1, "{report}");
    wait_for_count(ENGINE_B, &whole, counted + 1, Duration::from_secs(20));
    assert_eq!(memory_check(ENGINE_B, &whole), whole_sum, "memory checksum changed");

    // The link breaks halfway through the 32 MiB upload.
    let (name, sum) = hosts.counter("ferry-e2e-resume-cut", 32);
    let counted = latest_count(ENGINE_A, &name);
    let proxy = CuttingProxy::start(&hosts.agent_b.addr, 16 * MIB);
    let out = hosts.migrate_a_to(&name, &proxy.addr, &["--json", "--timeout", "60"]);
    assert!(proxy.has_cut(), "the upload never reached 16 MiB");
    assert!(out.status.success(), "migrate did not resume after the cut, exited {:?}: {}", out.status.code(), stderr(&out));
    let report = json_report(&out);
    let attempts = report["attempts"].as_u64().unwrap_or_else(|| panic!("attempts missing: {report}"));
    assert!(attempts >= 2, "a cut upload, yet {attempts} attempt: {report}");
    let raw = number(&report, "raw_bytes");
    let forwarded = proxy.forwarded() as f64;
    // Sent again from zero, it would be 16 + 32 MiB: 1.5 times raw.
    assert!(forwarded < 1.3 * raw, "{forwarded} bytes crossed for {raw} raw: what arrived before the cut was sent again: {report}");
    assert!(number(&report, "bytes_sent_total") >= (16 * MIB) as f64, "bytes_sent_total misses the cut attempt: {report}");

    assert!(!exists(ENGINE_A, &name), "the source stays on A after a successful migration");
    wait_for_count(ENGINE_B, &name, counted + 1, Duration::from_secs(20));
    let first_on_b = first_count(ENGINE_B, &name);
    assert!(first_on_b > counted, "counter restarted on B: {first_on_b} after {counted}");
    assert_eq!(memory_check(ENGINE_B, &name), sum, "memory checksum changed");
    machine.assert_unchanged_but(&[&whole, &name], &[]);
}

#[test]
#[ignore = "needs two real engines + CRIU: run `make test`"]
fn corrupt_block_in_a_delta_is_refused_and_the_app_stays() {
    // Plain HTTP: over TLS a flipped bit ends the connection before any
    // block is looked at; here the payload's own checks must catch it.
    let mut hosts = TwoHosts::insecure("corrupt-delta", &[]);
    let name = hosts.dirtying_counter("ferry-e2e-corrupt-delta", 32);
    hosts.replicate_once(&name);
    // Some seconds of writes: the delta carries megabytes of literal blocks.
    thread::sleep(Duration::from_secs(4));
    let machine = Machine::now();
    let counted = latest_count(ENGINE_A, &name);

    // One bit flipped 1 MiB into every upload, and every 4 MiB after.
    let proxy = flipping_proxy(&hosts.agent_b.addr, MIB);
    let out = hosts.migrate_a_to(&name, &proxy, &["--json"]);
    let code = out.status.code();
    assert!(
        [Some(BAD_PAYLOAD), Some(REFUSED), Some(PEER)].contains(&code),
        "a damaged delta must be refused, migrate exited {code:?}: {}\n{}",
        stderr(&out),
        String::from_utf8_lossy(&out.stdout)
    );
    assert!(stderr(&out).contains("damaged"), "the refusal does not say the payload was damaged: {}", stderr(&out));
    assert!(is_running(ENGINE_A, &name), "{name} does not run on A after the refused migration");
    assert!(!exists(ENGINE_B, &name), "{name} was left behind on B");
    let now = wait_for_count(ENGINE_A, &name, counted + 1, Duration::from_secs(20));
    assert!(now > counted, "{name} on A did not carry on: {now} after {counted}");
    assert_memory_intact(ENGINE_A, &name);
    machine.assert_unchanged_but(&[], &[]);

    // The normal case: the same delta, undamaged, goes through.
    let out = hosts.migrate_a_to(&name, &hosts.agent_b.addr, &["--json"]);
    assert!(out.status.success(), "migrate exited {:?}: {}", out.status.code(), stderr(&out));
    let report = json_report(&out);
    assert!(report["delta_base"].is_string(), "B held a snapshot, yet the payload went whole: {report}");
    assert!(!exists(ENGINE_A, &name));
    wait_for_count(ENGINE_B, &name, 1, Duration::from_secs(20));
    assert_memory_intact(ENGINE_B, &name);
    machine.assert_unchanged_but(&[&name], &[]);
}

/// Deletes the memory images of B's snapshot `generation` of `name`, leaving
/// its manifest and the rest: B lost the blocks a delta would copy.
fn lose_snapshot_pages(spool_b: &Path, name: &str, generation: u64) {
    let images = spool_b.join("snapshots").join(name).join(format!("{generation:020}")).join("checkpoint");
    let mut removed = 0;
    for entry in std::fs::read_dir(&images).unwrap_or_else(|e| panic!("{}: {e}", images.display())).flatten() {
        if entry.file_name().to_string_lossy().starts_with("pages-") {
            std::fs::remove_file(entry.path()).unwrap();
            removed += 1;
        }
    }
    assert!(removed > 0, "the snapshot in {} has no pages-*.img", images.display());
}

type Action = Box<dyn FnOnce() + Send>;

/// A TCP proxy to `target` that, the first time a client's bytes contain
/// `trigger` (a request line: needs plain HTTP), runs `act` before it
/// forwards them: something happens on the peer between two requests of one
/// migration. Returns its address and whether `act` ran.
fn acting_proxy(target: &str, trigger: &'static str, act: impl FnOnce() + Send + 'static) -> (String, Arc<AtomicBool>) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    let pending: Arc<Mutex<Option<Action>>> = Arc::new(Mutex::new(Some(Box::new(act))));
    let acted = Arc::new(AtomicBool::new(false));
    let (target, done) = (target.to_string(), acted.clone());
    thread::spawn(move || {
        for client in listener.incoming() {
            let Ok(client) = client else { return };
            let Ok(server) = TcpStream::connect(&target) else { continue };
            let (mut from_client, mut to_server) = (client.try_clone().unwrap(), server.try_clone().unwrap());
            let (pending, done) = (pending.clone(), done.clone());
            thread::spawn(move || {
                let mut buffer = vec![0u8; 64 * 1024];
                loop {
                    let n = match from_client.read(&mut buffer) {
                        Ok(0) | Err(_) => break,
                        Ok(n) => n,
                    };
                    if String::from_utf8_lossy(&buffer[..n.min(4096)]).contains(trigger)
                        && let Some(act) = pending.lock().unwrap().take()
                    {
                        act();
                        done.store(true, Ordering::SeqCst);
                    }
                    if to_server.write_all(&buffer[..n]).is_err() {
                        break;
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
    (addr, acted)
}

#[test]
#[ignore = "needs two real engines + CRIU: run `make test`"]
fn delta_against_a_snapshot_the_peer_lost_falls_back_to_a_full_send() {
    // Plain HTTP: the proxy below must see which request is the upload.
    let mut hosts = TwoHosts::insecure("lost-base", &[]);
    let spool_b = hosts.scratch.path("spool-b");
    let (early, early_sum) = hosts.counter("ferry-e2e-lost-base-early", 32);
    let (name, sum) = hosts.counter("ferry-e2e-lost-base", 32);
    let machine = Machine::now();

    // B loses the pages before it is asked what it holds: it offers nothing
    // of them, and the payload goes whole (at once, or after a fallback).
    let generation = hosts.replicate_once(&early);
    lose_snapshot_pages(&spool_b, &early, generation);
    let counted = latest_count(ENGINE_A, &early);
    let out = hosts.migrate_a_to(&early, &hosts.agent_b.addr, &["--json"]);
    assert!(out.status.success(), "migrate exited {:?}: {}", out.status.code(), stderr(&out));
    let report = json_report(&out);
    assert!(report["delta_base"].is_null() || report["fallback_full"] == true, "a delta against lost pages: {report}");
    let (sent, raw) = (number(&report, "bytes_sent"), number(&report, "raw_bytes"));
    assert!(sent > raw / 2.0, "not a whole payload: {sent} of {raw} bytes: {report}");
    wait_for_count(ENGINE_B, &early, counted + 1, Duration::from_secs(20));
    assert_eq!(memory_check(ENGINE_B, &early), early_sum, "memory checksum changed");

    // B loses them after it offered them, as the delta is on its way: the
    // delta is refused for its missing base and sent again whole.
    let generation = hosts.replicate_once(&name);
    let (spool, lost) = (spool_b.clone(), name.clone());
    let (proxy, acted) = acting_proxy(&hosts.agent_b.addr, "POST /v1/restore", move || lose_snapshot_pages(&spool, &lost, generation));
    let counted = latest_count(ENGINE_A, &name);
    let out = hosts.migrate_a_to(&name, &proxy, &["--json"]);
    assert!(acted.load(Ordering::SeqCst), "no upload went through the proxy");
    assert!(out.status.success(), "migrate exited {:?}: {}", out.status.code(), stderr(&out));
    let report = json_report(&out);
    assert_eq!(report["fallback_full"], true, "{report}");
    let attempts = report["attempts"].as_u64().unwrap_or_else(|| panic!("attempts missing: {report}"));
    assert!(attempts >= 2, "a fallback is a second send, yet {attempts} attempt: {report}");
    let (sent, raw) = (number(&report, "bytes_sent"), number(&report, "raw_bytes"));
    assert!(sent > raw / 2.0, "the fallback was not a whole payload: {sent} of {raw} bytes: {report}");

    assert!(!exists(ENGINE_A, &name), "the source stays on A after a successful migration");
    latest_count(ENGINE_B, &name);
    let first_on_b = first_count(ENGINE_B, &name);
    assert!(first_on_b > counted, "counter restarted on B: {first_on_b} after {counted}");
    assert_eq!(memory_check(ENGINE_B, &name), sum, "memory checksum changed");
    machine.assert_unchanged_but(&[&early, &name], &[]);
}
