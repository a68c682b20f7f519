//! Hostile input against a real engine and agent: payloads edited by an
//! attacker and strangers on the agent's port. Each attack is refused or
//! harmless — nothing created outside ferry's folders, no container left —
//! and in the same test a normal case still works. Run by `make test`.

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::os::unix::fs::PermissionsExt;


use common::*;

/// A payload as (path, bytes) entries, manifest first, without its seal: an
/// attacker who edits a payload cannot sign it again, so these edited
/// payloads are unsigned, and restored with --accept-untrusted to reach the
/// checks behind the signature (refusals.rs tests the seal itself).
fn entries(payload: &[u8]) -> Vec<(String, Vec<u8>)> {
    let mut archive = tar::Archive::new(lz4_flex::frame::FrameDecoder::new(payload));
    archive
        .entries()
        .unwrap()
        .map(|entry| {
            let mut entry = entry.unwrap();
            let path = entry.path().unwrap().to_string_lossy().into_owned();
            let mut bytes = Vec::new();
            entry.read_to_end(&mut bytes).unwrap();
            (path, bytes)
        })
        .filter(|(path, _)| !matches!(path.as_str(), "manifest.sig" | "manifest.final.json" | "manifest.final.sig"))
        .collect()
}

/// Packs entries again the way an attacker who knows the format would (one
/// pass, format 5): every entry's size in the leading manifest, which `edit`
/// may change, and the same manifest with every digest at the end.
fn rebuild(mut files: Vec<(String, Vec<u8>)>, edit: impl Fn(&mut serde_json::Value)) -> Vec<u8> {
    let mut manifest: serde_json::Value = serde_json::from_slice(&files[0].1).unwrap();
    assert_eq!(manifest["format"], 5, "ferry checkpoint writes one-pass payloads");
    edit(&mut manifest);
    manifest["entries"] =
        files[1..].iter().map(|(path, bytes)| serde_json::json!({"path": path, "size": bytes.len()})).collect();
    files[0].1 = serde_json::to_vec(&manifest).unwrap();
    manifest["entries"] = files[1..]
        .iter()
        .map(|(path, bytes)| serde_json::json!({"path": path, "size": bytes.len(), "blake3": blake3::hash(bytes).to_hex().to_string()}))
        .collect();
    files.push(("manifest.final.json".into(), serde_json::to_vec(&manifest).unwrap()));
    let mut builder = tar::Builder::new(lz4_flex::frame::FrameEncoder::new(Vec::new()));
    for (path, bytes) in &files {
        let mut header = tar::Header::new_gnu();
        header.set_size(bytes.len() as u64);
        header.set_mode(0o600);
        builder.append_data(&mut header, path, bytes.as_slice()).unwrap();
    }
    builder.into_inner().unwrap().finish().unwrap()
}

fn varint(mut value: u64) -> Vec<u8> {
    let mut bytes = Vec::new();
    while value >= 0x80 {
        bytes.push(value as u8 | 0x80);
        value >>= 7;
    }
    bytes.push(value as u8);
    bytes
}

/// A tar holding one symlink `link -> target`.
fn tar_with_link(target: &str) -> Vec<u8> {
    let mut builder = tar::Builder::new(Vec::new());
    let mut header = tar::Header::new_gnu();
    header.set_entry_type(tar::EntryType::Symlink);
    header.set_size(0);
    header.set_mode(0o777);
    builder.append_link(&mut header, "link", target).unwrap();
    builder.into_inner().unwrap()
}

struct Restores<'a> {
    scratch: &'a Scratch,
    target: String,
}

impl Restores<'_> {
    fn restore(&self, label: &str, payload: &[u8]) -> std::process::Output {
        let path = self.scratch.path(&format!("{label}.ferry"));
        std::fs::write(&path, payload).unwrap();
        ferry(ENGINE_A, &self.scratch.work_dir(), &["restore", path.to_str().unwrap(), "--name", &self.target, "--accept-untrusted"])
    }
}

#[test]
#[ignore = "needs a real dockerd + CRIU: run `make test`"]
fn edited_payloads_gain_no_power_and_write_nothing_outside() {
    let scratch = Scratch::new("hostile-payloads");
    let mut containers = Containers::new(ENGINE_A);
    let source = containers.track("ferry-e2e-hostile-src");
    let target = containers.track("ferry-e2e-hostile-dst");
    start_counter(ENGINE_A, &source, 4);
    wait_for_count(ENGINE_A, &source, 3, std::time::Duration::from_secs(20));
    let good = scratch.path("good.ferry");
    ferry_ok(ENGINE_A, &scratch.work_dir(), &["checkpoint", &source, "--leave-running", "-o", good.to_str().unwrap()]);
    let files = entries(&std::fs::read(&good).unwrap());
    let restores = Restores { scratch: &scratch, target: target.clone() };
    let before = all_containers(ENGINE_A);
    let host_dir = scratch.path("host-dir");
    std::fs::create_dir_all(&host_dir).unwrap();

    // 1. core-1.img's effective capabilities raised to CAP_SYS_ADMIN and more,
    //    digests recomputed: the images would decide the process's powers.
    const DEFAULT_CAPS: u64 = 0xa80425fb;
    let mut raised = files.clone();
    let core = raised.iter_mut().find(|(p, _)| p == "checkpoint/core-1.img").expect("core-1.img in the payload");
    let (from, to) = ([&[0x58][..], &varint(DEFAULT_CAPS)].concat(), [&[0x58][..], &varint(DEFAULT_CAPS | 1 << 21)].concat());
    let at = core.1.windows(from.len()).position(|w| w == from).expect("cap_eff in core-1.img");
    core.1[at..at + from.len()].copy_from_slice(&to);
    let out = restores.restore("caps", &rebuild(raised, |_| {}));
    expect_failure(&out, BAD_PAYLOAD, "cap_eff 0x00000000a82425fb exceeds what this host grants");

    // 1b. seccomp.img's program made to allow everything (its first
    //     instruction, "load the arch", turned into "return ALLOW"), digest
    //     recomputed: still filter mode, but no filter left in effect. The
    //     restore puts this host's program in its place: keyctl, which
    //     Docker's profile refuses, is refused to the restored process (and
    //     not to an unconfined one: the probe tells them apart).
    let mut opened = files.clone();
    let seccomp = opened.iter_mut().find(|(p, _)| p == "checkpoint/seccomp.img").expect("seccomp.img in the payload");
    let load_arch = [0x20, 0, 0, 0, 4, 0, 0, 0];
    let at = seccomp.1.windows(8).position(|w| w == load_arch).expect("a BPF program in seccomp.img");
    seccomp.1[at..at + 8].copy_from_slice(&[0x06, 0, 0, 0, 0, 0, 0xff, 0x7f]);
    let out = restores.restore("seccomp", &rebuild(opened, |_| {}));
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(keyctl_errno(ENGINE_A, &target), 1, "the restored process runs without this host's filter");
    docker_ok(ENGINE_A, &["rm", "-f", &target]);
    let unconfined = containers.track("ferry-e2e-hostile-unconfined");
    docker_ok(ENGINE_A, &["run", "-d", "--security-opt", "seccomp=unconfined", "--name", &unconfined, WORKLOAD, "/counter", "1", "100"]);
    assert_ne!(keyctl_errno(ENGINE_A, &unconfined), 1, "keyctl is refused even without seccomp here");
    docker_ok(ENGINE_A, &["rm", "-f", &unconfined]);

    // 2. A rootfs archive that plants `link -> <host dir>`, and a deleted
    //    `/link/x`: the whiteout would follow the link onto the host.
    let mut linked = files.clone();
    linked.push(("rootfs/99.tar".into(), tar_with_link(host_dir.to_str().unwrap())));
    let payload = rebuild(linked, |m| {
        m["rootfs"] = serde_json::json!({"archives": [{"entry": "rootfs/99.tar", "target_dir": "/"}], "deleted": ["/link/x", "/link/deep/y"]});
    });
    let out = restores.restore("link", &payload);
    expect_failure(&out, BAD_PAYLOAD, "deleting /link/x again");
    assert_eq!(std::fs::read_dir(&host_dir).unwrap().count(), 0, "something was written through the link");

    // 3. An entry far larger than the manifest lists, and folders nobody listed.
    let mut large = files.clone();
    large.push(("rootfs/9.tar".into(), vec![0u8; 64 << 20]));
    let payload = rebuild(large, |_| {});
    let mut lied: Vec<(String, Vec<u8>)> = entries(&payload);
    let mut manifest: serde_json::Value = serde_json::from_slice(&lied[0].1).unwrap();
    for entry in manifest["entries"].as_array_mut().unwrap() {
        if entry["path"] == "rootfs/9.tar" {
            entry["size"] = 10.into();
        }
    }
    lied[0].1 = serde_json::to_vec(&manifest).unwrap();
    let mut builder = tar::Builder::new(lz4_flex::frame::FrameEncoder::new(Vec::new()));
    for (path, bytes) in &lied {
        let mut header = tar::Header::new_gnu();
        header.set_size(bytes.len() as u64);
        header.set_mode(0o600);
        builder.append_data(&mut header, path, bytes.as_slice()).unwrap();
    }
    let out = restores.restore("large", &builder.into_inner().unwrap().finish().unwrap());
    expect_failure(&out, BAD_PAYLOAD, "67108864 bytes in the stream, manifest says 10");

    let mut builder = tar::Builder::new(lz4_flex::frame::FrameEncoder::new(Vec::new()));
    let mut header = tar::Header::new_gnu();
    header.set_size(files[0].1.len() as u64);
    header.set_mode(0o600);
    builder.append_data(&mut header, "manifest.json", files[0].1.as_slice()).unwrap();
    for i in 0..1000 {
        let mut folder = tar::Header::new_gnu();
        folder.set_entry_type(tar::EntryType::Directory);
        folder.set_size(0);
        folder.set_mode(0o700);
        builder.append_data(&mut folder, format!("checkpoint/unlisted-{i}/"), &[][..]).unwrap();
    }
    let out = restores.restore("folders", &builder.into_inner().unwrap().finish().unwrap());
    expect_failure(&out, BAD_PAYLOAD, "a folder no listed entry is in");

    assert_eq!(all_containers(ENGINE_A), before, "a container was left behind");
    let work_left: Vec<_> = std::fs::read_dir(scratch.work_dir()).unwrap().flatten().map(|e| e.file_name()).collect();
    assert!(work_left.is_empty(), "work dir not cleaned: {work_left:?}");
    // The normal payload still restores: the refusals were about the edits.
    ferry_ok(ENGINE_A, &scratch.work_dir(), &["restore", good.to_str().unwrap(), "--name", &target]);
    assert!(is_running(ENGINE_A, &target));
}

#[test]
#[ignore = "needs a real dockerd + CRIU: run `make test`"]
fn weakened_containers_are_refused_and_tmpfs_is_carried() {
    let scratch = Scratch::new("hostile-weakened");
    let mut containers = Containers::new(ENGINE_A);
    let unconfined = containers.track("ferry-e2e-unconfined");
    docker_ok(ENGINE_A, &["run", "-d", "--security-opt", "seccomp=unconfined", "--name", &unconfined, WORKLOAD, "/counter", "1", "100"]);
    let out = ferry(ENGINE_A, &scratch.work_dir(), &["checkpoint", &unconfined, "-o", scratch.path("u.ferry").to_str().unwrap()]);
    expect_failure(&out, REFUSED, "security option seccomp=unconfined");
    assert!(is_running(ENGINE_A, &unconfined), "a refused container keeps running");

    // Normal case: a tmpfs the app writes to comes back, and is granted.
    let with_tmpfs = containers.track("ferry-e2e-tmpfs");
    let restored = containers.track("ferry-e2e-tmpfs-restored");
    docker_ok(ENGINE_A, &["run", "-d", "--tmpfs", "/scratch", "--name", &with_tmpfs, WORKLOAD, "/counter", "1", "100"]);
    let counted = wait_for_count(ENGINE_A, &with_tmpfs, 3, std::time::Duration::from_secs(20));
    let payload = scratch.path("t.ferry");
    ferry_ok(ENGINE_A, &scratch.work_dir(), &["checkpoint", &with_tmpfs, "-o", payload.to_str().unwrap()]);
    ferry_ok(ENGINE_A, &scratch.work_dir(), &["restore", payload.to_str().unwrap(), "--name", &restored]);
    wait_for_count(ENGINE_A, &restored, counted + 1, std::time::Duration::from_secs(20));
}

#[test]
#[ignore = "needs a real dockerd + CRIU: run `make test`"]
fn checkpoint_output_is_private_even_over_an_open_file() {
    let scratch = Scratch::new("hostile-output");
    let mut containers = Containers::new(ENGINE_A);
    let source = containers.track("ferry-e2e-private-out");
    start_counter(ENGINE_A, &source, 1);
    wait_for_count(ENGINE_A, &source, 2, std::time::Duration::from_secs(20));
    let out_path = scratch.path("out.ferry");
    std::fs::write(&out_path, b"an older file").unwrap();
    std::fs::set_permissions(&out_path, std::fs::Permissions::from_mode(0o644)).unwrap();

    let failed = ferry(ENGINE_A, &scratch.work_dir(), &["checkpoint", "ferry-e2e-no-such", "-o", out_path.to_str().unwrap()]);
    expect_failure(&failed, NOT_FOUND, "no container named");
    assert_eq!(std::fs::read(&out_path).unwrap(), b"an older file", "a failed checkpoint leaves the old file as it was");

    ferry_ok(ENGINE_A, &scratch.work_dir(), &["checkpoint", &source, "--leave-running", "-o", out_path.to_str().unwrap()]);
    let mode = std::fs::metadata(&out_path).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600, "the payload holds the app's memory");
    assert!(std::fs::metadata(&out_path).unwrap().len() > 1 << 20);
}

/// Raw HTTPS to an agent as host A (its certificate and the token): (status, body).
fn http(addr: &str, token: &str, method: &str, path: &str, body: &[u8]) -> (u16, String) {
    let authorization = format!("Bearer {token}");
    https(addr, ClientCert::Dir(&keys().a), method, path, &[("Authorization", &authorization)], body).unwrap_or_else(|e| (0, e))
}

#[test]
#[ignore = "needs two real engines + CRIU: run `make test`"]
fn the_agent_checks_names_first_and_removes_only_what_it_restored() {
    let mut hosts = TwoHosts::new("hostile-agent", &[]);
    let token = std::fs::read_to_string(&hosts.token).unwrap().trim().to_string();
    let addr = hosts.agent_b.addr.clone();
    // 8. Names are checked before the body is read.
    let long = "a".repeat(300);
    for name in [long.as_str(), "..", "-rf", "_x"] {
        let (status, body) = http(&addr, &token, "POST", &format!("/v1/restore?name={name}"), b"not read");
        assert_eq!(status, 400, "{name}: {body}");
    }

    // 7. A container the agent restored, removed out of band; its name is
    //    also an id prefix of another container on B.
    let victim = hosts.on_b.track("ferry-e2e-victim");
    docker_ok(ENGINE_B, &["create", "--name", &victim, WORKLOAD]);
    let victim_id = docker_ok(ENGINE_B, &["inspect", "-f", "{{.Id}}", &victim]);
    let prefix = victim_id[..12].to_string();
    // (Not tracked on B: tracking removes by name first, and Docker would
    // take the prefix for the victim's id — the very confusion under test.)
    let name = hosts.on_a.track(&prefix);
    start_counter(ENGINE_A, &name, 1);
    wait_for_count(ENGINE_A, &name, 2, std::time::Duration::from_secs(20));
    let out = ferry(ENGINE_A, &hosts.scratch.work_dir(), &["migrate", &name, "--to", &addr, "--token-file", hosts.token.to_str().unwrap()]);
    assert!(out.status.success(), "{}", stderr(&out));
    let restored_id = docker_ok(ENGINE_B, &["inspect", "-f", "{{.Id}}", &name]);
    docker_ok(ENGINE_B, &["rm", "-f", &restored_id]);
    let (status, body) = http(&addr, &token, "DELETE", &format!("/v1/containers/{prefix}"), b"");
    assert_eq!(status, 200, "{body}");
    assert!(exists(ENGINE_B, &victim), "the agent removed a container it never restored");
    // The normal case: a foreign name is refused.
    let (status, _) = http(&addr, &token, "DELETE", &format!("/v1/containers/{victim}"), b"");
    assert_eq!(status, 403);
}

/// The agent's peak RSS (VmHWM) in KiB.
fn peak_rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status.lines().find_map(|l| l.strip_prefix("VmHWM:")).and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok()).unwrap_or(0)
}

#[test]
#[ignore = "needs two real engines + CRIU: run `make test`"]
fn strangers_cannot_stall_or_swell_the_agent_and_a_migration_still_goes_through() {
    let mut hosts = TwoHosts::new("hostile-strangers", &[]);
    let token = std::fs::read_to_string(&hosts.token).unwrap().trim().to_string();
    let addr = hosts.agent_b.addr.clone();
    let pid = hosts.agent_b.child.id();
    // 4. Idle uploads without the token: a body announced and never sent.
    let mut idle = Vec::new();
    for _ in 0..4 {
        let mut stream = TcpStream::connect(&addr).unwrap();
        stream.write_all(b"POST /v1/restore HTTP/1.1\r\nHost: x\r\nContent-Length: 1000000\r\n\r\nabc").unwrap();
        idle.push(stream);
    }
    // 5. A header line without end: 64 MiB offered, no CRLF.
    let flood_addr = addr.clone();
    let flood = std::thread::spawn(move || {
        let mut stream = TcpStream::connect(&flood_addr).unwrap();
        let _ = stream.write_all(b"GET /health HTTP/1.1\r\nX-Flood: ");
        let chunk = vec![b'a'; 1 << 20];
        let mut sent = 0usize;
        while sent < 64 << 20 && stream.write_all(&chunk).is_ok() {
            sent += chunk.len();
        }
        sent
    });
    std::thread::sleep(std::time::Duration::from_millis(500));
    for _ in 0..5 {
        let started = std::time::Instant::now();
        assert_eq!(http(&addr, &token, "GET", "/health", b"").0, 200);
        assert_eq!(http(&addr, &token, "GET", "/v1/info", b"").0, 200);
        assert!(started.elapsed() < std::time::Duration::from_secs(2), "the agent answered in {:?}", started.elapsed());
    }
    let flooded = flood.join().unwrap();
    assert!(flooded < 64 << 20, "the agent read a header line of {flooded} bytes without cutting it");
    let peak = peak_rss_kib(pid);
    assert!(peak > 0 && peak <= 16 * 1024, "the agent's peak RSS is {peak} KiB");
    drop(idle);

    // The normal case: a migration to the same agent goes through.
    let name = hosts.on_a.track("ferry-e2e-after-strangers");
    hosts.on_b.track(&name);
    start_counter(ENGINE_A, &name, 4);
    let counted = wait_for_count(ENGINE_A, &name, 2, std::time::Duration::from_secs(20));
    let out = ferry(ENGINE_A, &hosts.scratch.work_dir(), &["migrate", &name, "--to", &addr, "--token-file", hosts.token.to_str().unwrap()]);
    assert!(out.status.success(), "{}", stderr(&out));
    wait_for_count(ENGINE_B, &name, counted + 1, std::time::Duration::from_secs(20));
}
