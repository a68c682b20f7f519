//! Bad input against a real engine: each gets a clear error, the documented
//! exit code, and leaves no container behind. Run by `make test`.

mod common;

use std::io::Read;
use std::path::Path;

use common::*;

#[test]
#[ignore = "needs a real dockerd + CRIU: run `make test`"]
fn containers_ferry_cannot_take_are_refused_before_anything_stops() {
    let scratch = Scratch::new("refuse-containers");
    let work = scratch.work_dir();
    let mut containers = Containers::new(ENGINE_A);

    let out = ferry(ENGINE_A, &work, &["checkpoint", "ferry-e2e-no-such-container"]);
    expect_failure(&out, NOT_FOUND, "no container named 'ferry-e2e-no-such-container'");

    let stopped = containers.track("ferry-e2e-stopped");
    docker_ok(ENGINE_A, &["create", "--name", &stopped, WORKLOAD]);
    let out = ferry(ENGINE_A, &work, &["checkpoint", &stopped]);
    expect_failure(&out, REFUSED, "is not running (state: created)");

    // (Privileged containers cannot start in this VM; the unit tests cover
    // that refusal from an inspect document.)
    let powerful = containers.track("ferry-e2e-powerful");
    docker_ok(
        ENGINE_A,
        &["run", "-d", "--cap-add", "NET_ADMIN", "--network", "host", "-v", "/tmp:/host-tmp", "--name", &powerful, WORKLOAD],
    );
    let out = ferry(ENGINE_A, &work, &["checkpoint", &powerful, "-o", scratch.path("p.ferry").to_str().unwrap()]);
    expect_failure(&out, REFUSED, "cannot be carried");
    for reason in ["/host-tmp", "adds capabilities (CAP_NET_ADMIN)", "shares the network of host"] {
        assert!(stderr(&out).contains(reason), "{reason:?} is not named: {}", stderr(&out));
    }
    assert!(is_running(ENGINE_A, &powerful), "a refused container must keep running");
    assert!(!scratch.path("p.ferry").exists(), "no half payload left behind");

    let out = ferry("/nonexistent/docker.sock", &work, &["checkpoint", "x"]);
    expect_failure(&out, DOCKER, "cannot reach the Docker engine at /nonexistent/docker.sock");

    let out = ferry(ENGINE_A, &work, &["checkpoint", "x", "--mode", "teleport"]);
    expect_failure(&out, USAGE, "unknown mode 'teleport'");
}

#[test]
#[ignore = "needs a real dockerd + CRIU: run `make test`"]
fn bad_payloads_are_refused_and_leave_nothing() {
    let scratch = Scratch::new("refuse-payloads");
    let work = scratch.work_dir();
    let mut containers = Containers::new(ENGINE_A);
    let source = containers.track("ferry-e2e-bad-src");
    let target = containers.track("ferry-e2e-bad-dst");
    start_counter(ENGINE_A, &source, 4);
    latest_count(ENGINE_A, &source);
    let good = scratch.path("good.ferry");
    ferry_ok(ENGINE_A, &work, &["checkpoint", &source, "--leave-running", "-o", good.to_str().unwrap()]);
    let bytes = std::fs::read(&good).unwrap();
    let before = all_containers(ENGINE_A);

    let restore = |name: &str, payload: &[u8], extra: &[&str]| {
        let path = scratch.path(name);
        std::fs::write(&path, payload).unwrap();
        ferry(ENGINE_A, &work, &[&["restore", path.to_str().unwrap(), "--name", &target], extra].concat())
    };
    // A payload signed by a third host's key, which A does not trust.
    let stranger = scratch.path("keys-c");
    keys_init(&stranger, "host-c");
    let foreign = scratch.path("foreign.ferry");
    checkpoint_as(&stranger, &work, &source, &foreign);
    let foreign = std::fs::read(&foreign).unwrap();
    // Edited manifests lose their seal (the payload becomes unsigned) so that
    // the checks behind the signature are reached with --accept-untrusted.
    let untrusted: &[&str] = &["--accept-untrusted"];
    // (label, payload, extra restore flags, exit code, message)
    type Case<'a> = (&'a str, Vec<u8>, &'a [&'a str], i32, &'a str);
    let cases: Vec<Case> = vec![
        ("unsigned", repack(&bytes, |_| {}, None, false), &[], BAD_PAYLOAD, "it is not signed"),
        ("stranger", foreign.clone(), &[], BAD_PAYLOAD, "is not trusted here"),
        (
            "edited-sealed",
            repack(&bytes, |m| m["container"]["config"]["Env"] = serde_json::json!(["EVIL=1"]), None, true),
            untrusted,
            BAD_PAYLOAD,
            "its signature does not verify",
        ),
        ("truncated", bytes[..bytes.len() / 2].to_vec(), &[], BAD_PAYLOAD, "truncated or corrupt"),
        ("flipped", flip(&bytes, bytes.len() / 2), &[], BAD_PAYLOAD, "payload"),
        (
            "dotdot",
            repack(&bytes, |_| {}, Some("checkpoint/../../../../tmp/ferry-escaped"), false),
            untrusted,
            BAD_PAYLOAD,
            "'..' would leave the destination",
        ),
        (
            "arch",
            repack(&bytes, |m| m["source"]["arch"] = "aarch64".into(), None, false),
            untrusted,
            BAD_PAYLOAD,
            "made on aarch64",
        ),
        (
            "image",
            repack(&bytes, |m| m["container"]["image_id"] = format!("sha256:{}", "0".repeat(64)).into(), None, false),
            untrusted,
            NOT_FOUND,
            "is not on this host",
        ),
        (
            "format",
            repack(&bytes, |m| m["format"] = 99.into(), None, false),
            untrusted,
            BAD_PAYLOAD,
            "format 99 is newer than this ferry understands",
        ),
        (
            "page-size",
            repack(&bytes, |m| m["source"]["cpu"]["page_size"] = 16384.into(), None, false),
            untrusted,
            BAD_PAYLOAD,
            "16 KiB pages",
        ),
        (
            "newer-cpu",
            repack(&bytes, |m| m["source"]["cpu"]["hwcap"] = u64::MAX.into(), None, false),
            untrusted,
            BAD_PAYLOAD,
            "features the target CPU lacks",
        ),
    ];
    for (name, payload, extra, code, message) in cases {
        let out = restore(name, &payload, extra);
        assert_eq!(out.status.code(), Some(code), "{name}: {}", stderr(&out));
        assert!(stderr(&out).contains(message), "{name}: stderr lacks {message:?}: {}", stderr(&out));
        assert_eq!(all_containers(ENGINE_A), before, "{name}: a container was left behind");
        assert!(!Path::new("/tmp/ferry-escaped").exists(), "{name}: an entry escaped");
        let work_left: Vec<_> = std::fs::read_dir(&work).unwrap().collect();
        assert!(work_left.is_empty(), "{name}: work dir not cleaned: {work_left:?}");
    }

    let out = ferry(ENGINE_A, &work, &["restore", scratch.path("absent.ferry").to_str().unwrap()]);
    expect_failure(&out, NOT_FOUND, "cannot read the payload");
    // The good payload still restores: the refusals were about the damage;
    // and the stranger's, when the operator accepts it knowingly.
    ferry_ok(ENGINE_A, &work, &["restore", good.to_str().unwrap(), "--name", &target]);
    assert!(is_running(ENGINE_A, &target));
    let accepted = containers.track("ferry-e2e-bad-foreign");
    let path = scratch.path("stranger-accepted");
    std::fs::write(&path, &foreign).unwrap();
    let out = ferry(ENGINE_A, &work, &["restore", path.to_str().unwrap(), "--name", &accepted, "--accept-untrusted"]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(is_running(ENGINE_A, &accepted));
}

#[test]
#[ignore = "needs a real dockerd + CRIU: run `make test`"]
fn a_peer_whose_cpu_could_not_run_the_app_is_refused_before_the_freeze() {
    let scratch = Scratch::new("refuse-peer-cpu");
    let mut containers = Containers::new(ENGINE_A);
    let source = containers.track("ferry-e2e-peer-cpu");
    start_counter(ENGINE_A, &source, 1);
    let counted = wait_for_count(ENGINE_A, &source, 2, std::time::Duration::from_secs(20));
    let token = token_file(&scratch);
    // A peer that says it runs 16 KiB pages (a Raspberry Pi 5 kernel).
    let mut info: serde_json::Value = serde_json::json!({
        "ferry_version": "0.1.0", "hostname": "pi5", "arch": std::env::consts::ARCH, "kernel": "6.6",
        "criu_version": "4.2", "docker_version": "20.10", "spool_free_bytes": 1u64 << 40, "max_payload_bytes": null,
        "images": [], "busy": false, "cpu": {"page_size": 16384, "hwcap": 0, "hwcap2": 0}, "cgroup_version": 2,
    });
    info["images"] = serde_json::json!([{"id": docker_ok(ENGINE_A, &["inspect", "-f", "{{.Image}}", &source]), "tags": []}]);
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let peer = listener.local_addr().unwrap().to_string();
    let answer = info.to_string();
    std::thread::spawn(move || {
        for stream in listener.incoming().flatten() {
            let mut stream = stream;
            let mut head = [0u8; 4096];
            let _ = stream.read(&mut head);
            let _ = std::io::Write::write_all(
                &mut stream,
                format!("HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{answer}", answer.len()).as_bytes(),
            );
        }
    });
    // A fake agent speaks plain HTTP: the client is told so.
    let out = ferry(ENGINE_A, &scratch.work_dir(), &["migrate", &source, "--to", &peer, "--insecure", "--token-file", token.to_str().unwrap()]);
    expect_failure(&out, REFUSED, "16 KiB pages");
    assert!(is_running(ENGINE_A, &source), "refused before the freeze: the app keeps running");
    wait_for_count(ENGINE_A, &source, counted + 1, std::time::Duration::from_secs(10));
}

fn flip(bytes: &[u8], at: usize) -> Vec<u8> {
    let mut damaged = bytes.to_vec();
    damaged[at] ^= 0x01;
    damaged
}

/// Rewrites a payload: edits its manifest (the leading one and the one that
/// closes a one-pass payload alike), optionally adds one raw-named entry, and
/// keeps or drops its seals.
fn repack(bytes: &[u8], edit: impl Fn(&mut serde_json::Value), extra: Option<&str>, keep_seal: bool) -> Vec<u8> {
    let mut archive = tar::Archive::new(lz4_flex::frame::FrameDecoder::new(bytes));
    let mut builder = tar::Builder::new(lz4_flex::frame::FrameEncoder::new(Vec::new()));
    for (index, entry) in archive.entries().unwrap().enumerate() {
        let mut entry = entry.unwrap();
        let mut header = entry.header().clone();
        let is_manifest = index == 0 || entry.path().unwrap().to_str() == Some("manifest.final.json");
        if is_manifest {
            let mut text = String::new();
            entry.read_to_string(&mut text).unwrap();
            let mut manifest: serde_json::Value = serde_json::from_str(&text).unwrap();
            edit(&mut manifest);
            let text = serde_json::to_vec(&manifest).unwrap();
            header.set_size(text.len() as u64);
            header.set_cksum();
            builder.append(&header, text.as_slice()).unwrap();
        }
        if index == 0
            && let Some(name) = extra
        {
            let mut evil = tar::Header::new_old();
            evil.as_old_mut().name[..name.len()].copy_from_slice(name.as_bytes());
            evil.set_size(5);
            evil.set_mode(0o644);
            evil.set_entry_type(tar::EntryType::Regular);
            evil.set_cksum();
            builder.append(&evil, &b"owned"[..]).unwrap();
        }
        if !is_manifest && (keep_seal || !matches!(entry.path().unwrap().to_str(), Some("manifest.sig" | "manifest.final.sig"))) {
            builder.append(&header, &mut entry).unwrap();
        }
    }
    builder.into_inner().unwrap().finish().unwrap()
}
