//! End to end on one real engine: checkpoint a running container, restore it
//! into a new one, and prove its state came along. Run by `make test`.

mod common;

use common::*;

/// Waits for the counter to be well under way and returns the count seen.
fn settle(socket: &str, name: &str) -> u64 {
    wait_for_count(socket, name, 5, std::time::Duration::from_secs(30))
}

#[test]
#[ignore = "needs a real dockerd + CRIU: run `make test`"]
fn criu_restore_into_new_container_carries_counter_memory_and_files() {
    restore_into_new_container(&[], "runc");
}

#[test]
#[ignore = "needs a real dockerd + CRIU: run `make test`"]
fn portable_path_through_dockers_api_carries_the_same_state() {
    restore_into_new_container(&["--portable"], "docker-api");
}

fn restore_into_new_container(global: &[&str], expected_path: &str) {
    let scratch = Scratch::new("criu");
    let mut containers = Containers::new(ENGINE_A);
    let source = containers.track("ferry-e2e-src");
    let restored = containers.track("ferry-e2e-dst");
    start_counter(ENGINE_A, &source, 16);
    let sum = memory_sum(ENGINE_A, &source);
    let born = wait_for(ENGINE_A, &source, "born=", |l| field(l, "born").map(str::to_owned));
    let before = settle(ENGINE_A, &source);
    let leftovers = containerd_leftovers();

    let payload = scratch.path("app.ferry");
    let checkpoint = [global, &["checkpoint", &source, "-o", payload.to_str().unwrap(), "--json"]].concat();
    let out = ferry_ok(ENGINE_A, &scratch.work_dir(), &checkpoint);
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).expect("--json prints one object");
    assert_eq!(report["mode"], "criu");
    assert_eq!(report["checkpoint_path"], expected_path);
    assert!(report["raw_bytes"].as_u64().unwrap() > 16 << 20, "{report}");
    assert!(report["compressed_bytes"].as_u64().unwrap() > 0);
    assert!(!is_running(ENGINE_A, &source), "checkpoint without --leave-running stops the source");
    let last_before = latest_count(ENGINE_A, &source);
    assert!(last_before >= before);

    let restore = [global, &["restore", payload.to_str().unwrap(), "--name", &restored, "--json"]].concat();
    let out = ferry_ok(ENGINE_A, &scratch.work_dir(), &restore);
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(report["container"], restored.as_str());
    assert!(is_running(ENGINE_A, &restored));

    // The restored process goes on counting: its first line continues the old
    // count, and it never printed born= again (no cold start).
    latest_count(ENGINE_A, &restored);
    let first = first_count(ENGINE_A, &restored);
    assert!(first > before && first <= last_before + 5, "counter restarted: {first} after {last_before}");
    assert!(!logs(ENGINE_A, &restored).contains("born="), "the app started afresh");
    assert_eq!(memory_check(ENGINE_A, &restored), sum, "memory checksum changed");
    // The file it wrote into its rootfs before the checkpoint is there.
    let state = read_container_file(ENGINE_A, &restored, "/ferry-state.txt", &scratch).expect("state file");
    assert_eq!(state.trim(), format!("born={born}"));
    // The file it deleted from its image stays deleted.
    assert!(read_container_file(ENGINE_A, &restored, "/ferry-delete-me", &scratch).is_none());
    // Nothing left behind: no containerd extraction, no work files.
    assert_eq!(containerd_leftovers(), leftovers, "containerd's checkpoint extraction was not removed");
    let work_left: Vec<_> = std::fs::read_dir(scratch.work_dir()).unwrap().collect();
    assert!(work_left.is_empty(), "work dir not cleaned: {work_left:?}");
}

#[test]
#[ignore = "needs a real dockerd + CRIU: run `make test`"]
fn leave_running_checkpoint_to_stdout_and_restore_from_stdin() {
    let scratch = Scratch::new("stdio");
    let mut containers = Containers::new(ENGINE_A);
    let source = containers.track("ferry-e2e-stdio-src");
    let restored = containers.track("ferry-e2e-stdio-dst");
    start_counter(ENGINE_A, &source, 8);
    let sum = memory_sum(ENGINE_A, &source);
    let before = settle(ENGINE_A, &source);

    let out = ferry_ok(ENGINE_A, &scratch.work_dir(), &["-q", "checkpoint", &source, "-o", "-", "--leave-running"]);
    assert!(is_running(ENGINE_A, &source), "--leave-running keeps the source running");
    assert!(out.stdout.len() > 8 << 20, "the payload went to stdout");
    let payload = scratch.path("stdout.ferry");
    std::fs::write(&payload, &out.stdout).unwrap();

    let status = ferry_command(ENGINE_A)
        .args(["--docker-socket", ENGINE_A, "--work-dir"])
        .arg(scratch.work_dir())
        .args(["-q", "restore", "-", "--name", &restored])
        .stdin(std::fs::File::open(&payload).unwrap())
        .stdout(std::process::Stdio::null())
        .status()
        .unwrap();
    assert!(status.success());
    let first = {
        latest_count(ENGINE_A, &restored);
        first_count(ENGINE_A, &restored)
    };
    assert!(first > before, "counter restarted at {first}");
    assert_eq!(memory_check(ENGINE_A, &restored), sum);
}

#[test]
#[ignore = "needs a real dockerd + CRIU: run `make test`"]
fn commit_mode_restarts_the_app_with_its_files() {
    let scratch = Scratch::new("commit");
    let mut containers = Containers::new(ENGINE_A);
    let source = containers.track("ferry-e2e-commit-src");
    let restored = containers.track("ferry-e2e-commit-dst");
    start_counter(ENGINE_A, &source, 8);
    let born = wait_for(ENGINE_A, &source, "born=", |l| field(l, "born").map(str::to_owned));
    settle(ENGINE_A, &source);

    let payload = scratch.path("commit.ferry");
    let out = ferry_ok(
        ENGINE_A,
        &scratch.work_dir(),
        &["checkpoint", &source, "--mode", "commit", "-o", payload.to_str().unwrap(), "--json"],
    );
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(report["mode"], "commit");
    ferry_ok(ENGINE_A, &scratch.work_dir(), &["restore", payload.to_str().unwrap(), "--name", &restored]);
    assert!(is_running(ENGINE_A, &restored));
    // Commit mode carries the filesystem, not the process: the counter starts
    // again from 1, and the app finds the file its previous life wrote.
    let first = {
        latest_count(ENGINE_A, &restored);
        first_count(ENGINE_A, &restored)
    };
    assert_eq!(first, 1, "commit mode cannot carry the counter");
    let found = wait_for(ENGINE_A, &restored, "found=", |l| field(l, "found").map(str::to_owned));
    assert_eq!(found, format!("born={born}"));
}

#[test]
#[ignore = "needs a real dockerd + CRIU: run `make test`"]
fn redis_keeps_its_data_and_answers_clients_after_restore() {
    let scratch = Scratch::new("redis");
    let mut containers = Containers::new(ENGINE_A);
    let source = containers.track("ferry-e2e-redis-src");
    let restored = containers.track("ferry-e2e-redis-dst");
    docker_ok(
        ENGINE_A,
        &[
            "run", "-d", "--name", &source, REDIS, "/usr/bin/redis-server", "--protected-mode", "no", "--save", "",
            "--appendonly", "no", "--enable-debug-command", "yes",
        ],
    );
    let ip = docker_ok(ENGINE_A, &["inspect", "-f", "{{.NetworkSettings.IPAddress}}", &source]);
    redis_wait(&ip);
    redis(&ip, &["SET", "greeting", "carried by ferry"]);
    redis(&ip, &["DEBUG", "POPULATE", "20000", "key", "64"]);
    assert_eq!(redis(&ip, &["DBSIZE"]), "20001");

    let payload = scratch.path("redis.ferry");
    ferry_ok(ENGINE_A, &scratch.work_dir(), &["checkpoint", &source, "-o", payload.to_str().unwrap()]);
    ferry_ok(ENGINE_A, &scratch.work_dir(), &["restore", payload.to_str().unwrap(), "--name", &restored]);
    let ip = docker_ok(ENGINE_A, &["inspect", "-f", "{{.NetworkSettings.IPAddress}}", &restored]);
    redis_wait(&ip);
    assert_eq!(redis(&ip, &["GET", "greeting"]), "carried by ferry");
    assert_eq!(redis(&ip, &["DBSIZE"]), "20001");
    // And it still takes writes.
    redis(&ip, &["SET", "after", "restore"]);
    assert_eq!(redis(&ip, &["GET", "after"]), "restore");
}

fn redis(ip: &str, args: &[&str]) -> String {
    let out = std::process::Command::new("redis-cli").args(["-h", ip]).args(args).output().expect("redis-cli runs");
    assert!(out.status.success(), "redis-cli {args:?}: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

fn redis_wait(ip: &str) {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    loop {
        let out = std::process::Command::new("redis-cli").args(["-h", ip, "PING"]).output().unwrap();
        if out.stdout.starts_with(b"PONG") {
            return;
        }
        assert!(std::time::Instant::now() < deadline, "redis at {ip} does not answer");
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
}

#[test]
#[ignore = "needs a real dockerd + CRIU: run `make test`"]
fn board_caps_are_applied_to_the_restored_container() {
    let scratch = Scratch::new("board");
    let mut containers = Containers::new(ENGINE_A);
    let source = containers.track("ferry-e2e-board-src");
    let restored = containers.track("ferry-e2e-board-dst");
    start_counter(ENGINE_A, &source, 16);
    let sum = memory_sum(ENGINE_A, &source);
    settle(ENGINE_A, &source);
    let payload = scratch.path("board.ferry");
    ferry_ok(ENGINE_A, &scratch.work_dir(), &["checkpoint", &source, "-o", payload.to_str().unwrap()]);
    ferry_ok(
        ENGINE_A,
        &scratch.work_dir(),
        &["restore", payload.to_str().unwrap(), "--name", &restored, "--board", "edge-128m"],
    );
    let caps = docker_ok(ENGINE_A, &["inspect", "-f", "{{.HostConfig.Memory}} {{.HostConfig.MemorySwap}} {{.HostConfig.NanoCpus}}", &restored]);
    assert_eq!(caps, "134217728 134217728 1000000000", "edge-128m caps: 128 MiB, no swap, one CPU");
    assert_eq!(memory_check(ENGINE_A, &restored), sum);

    // A profile file with a bad field is refused before anything is created.
    let bad = scratch.path("bad-board.json");
    std::fs::write(&bad, r#"{"name":"x","description":"","memory_mib":8,"cpus":1,"io_buffer_kib":64,"lz4_block_kib":64,"work_dir":"/tmp"}"#).unwrap();
    let out = ferry(ENGINE_A, &scratch.work_dir(), &["restore", payload.to_str().unwrap(), "--board", bad.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(2));
    assert!(stderr(&out).contains("field 'memory_mib' is 8; allowed: 16 to 65536"), "{}", stderr(&out));
}

#[test]
#[ignore = "needs a real dockerd + CRIU: run `make test`"]
fn doctor_passes_here_and_names_the_fix_when_docker_is_missing() {
    let scratch = Scratch::new("doctor");
    let out = ferry_ok(ENGINE_A, &scratch.work_dir(), &["doctor"]);
    let text = String::from_utf8_lossy(&out.stdout);
    for check in ["docker socket", "api version", "experimental", "criu", "kernel", "cgroup", "work dir", "arch"] {
        assert!(text.lines().any(|l| l.contains(check) && (l.starts_with("OK") || l.starts_with("WARN"))), "{check}: {text}");
    }
    let out = ferry("/nonexistent.sock", &scratch.work_dir(), &["doctor"]);
    assert_eq!(out.status.code(), Some(1));
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.lines().any(|l| l.starts_with("FAIL docker socket") && l.contains("start dockerd")), "{text}");
}
