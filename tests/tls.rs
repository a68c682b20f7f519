//! Mutual TLS and signed payloads with two real engines (issue 12): who may
//! talk to an agent, which agents a source talks to, whose payloads an agent
//! takes, and what crosses the wire. Run by `make test`.

mod common;

use std::path::Path;
use std::time::{Duration, SystemTime};

use common::*;
use rcgen::{BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair};

/// A host certificate's parameters, as `ferry keys init` makes them, with a
/// chosen validity.
fn host_params(name: &str, sans: &[&str], from: SystemTime, to: SystemTime) -> CertificateParams {
    let mut params = CertificateParams::new(sans.iter().map(|s| s.to_string()).collect::<Vec<_>>()).unwrap();
    params.distinguished_name = DistinguishedName::new();
    params.distinguished_name.push(DnType::CommonName, name);
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth, ExtendedKeyUsagePurpose::ClientAuth];
    params.not_before = from.into();
    params.not_after = to.into();
    params
}

fn days(n: i64) -> SystemTime {
    let offset = Duration::from_secs(n.unsigned_abs() * 86_400);
    if n < 0 { SystemTime::now() - offset } else { SystemTime::now() + offset }
}

/// Writes a config folder: key, certificate, and optionally a trust file and CA.
fn config(dir: &Path, key: &KeyPair, cert_pem: &str, trusted: Option<&str>, ca_pem: Option<&str>) {
    use std::os::unix::fs::PermissionsExt;
    std::fs::create_dir_all(dir).unwrap();
    std::fs::write(dir.join("key.pem"), key.serialize_pem()).unwrap();
    std::fs::set_permissions(dir.join("key.pem"), std::fs::Permissions::from_mode(0o600)).unwrap();
    std::fs::write(dir.join("cert.pem"), cert_pem).unwrap();
    if let Some(trusted) = trusted {
        std::fs::write(dir.join("trusted"), trusted).unwrap();
    }
    if let Some(ca) = ca_pem {
        std::fs::write(dir.join("ca.pem"), ca).unwrap();
    }
}

/// `ferry migrate` from A with the config folder `as_host`.
fn migrate_as(hosts: &TwoHosts, as_host: &Path, name: &str, to: &str) -> std::process::Output {
    ferry_command(ENGINE_A)
        .env("FERRY_CONFIG_DIR", as_host)
        .args(["--docker-socket", ENGINE_A, "--work-dir"])
        .arg(hosts.scratch.work_dir())
        .args(["migrate", name, "--to", to, "--token-file"])
        .arg(&hosts.token)
        .output()
        .unwrap()
}

fn receive_dirs(spool: &Path) -> usize {
    std::fs::read_dir(spool).map(|d| d.flatten().filter(|e| e.file_name().to_string_lossy().starts_with("receive-")).count()).unwrap_or(0)
}

#[test]
#[ignore = "needs two real engines + CRIU: run `make test`"]
fn clients_without_a_trusted_current_certificate_get_only_a_tls_alert() {
    let mut hosts = TwoHosts::new("tls-clients", &[]);
    let addr = hosts.agent_b.addr.clone();
    let token = format!("Bearer {}", std::fs::read_to_string(&hosts.token).unwrap().trim());
    let auth = [("Authorization", token.as_str())];
    // The normal case: A's certificate and the token.
    let (status, body) = https(&addr, ClientCert::Dir(&keys().a), "GET", "/v1/info", &auth, b"").expect("A is served");
    assert_eq!(status, 200, "{body}");

    // A stranger's key; A's own key in a certificate that has expired.
    let stranger = hosts.scratch.path("keys-c");
    keys_init(&stranger, "host-c");
    trust(&stranger, "host-b", &keys().fingerprint_b);
    let expired = hosts.scratch.path("expired-a");
    let key_a = KeyPair::from_pem(&std::fs::read_to_string(keys().a.join("key.pem")).unwrap()).unwrap();
    let cert = host_params("host-a", &["127.0.0.1"], days(-400), days(-35)).self_signed(&key_a).unwrap();
    config(&expired, &key_a, &cert.pem(), Some(&std::fs::read_to_string(keys().a.join("trusted")).unwrap()), None);

    let body = vec![0x5au8; 1 << 20];
    let spool = hosts.scratch.path("spool-b");
    let before = receive_dirs(&spool);
    for (who, client) in [
        ("no certificate", ClientCert::None),
        ("a stranger", ClientCert::Dir(&stranger)),
        ("an expired certificate", ClientCert::Dir(&expired)),
    ] {
        let answer = https(&addr, client, "POST", "/v1/restore?name=ferry-e2e-tls-stranger", &auth, &body);
        assert!(answer.is_err(), "{who} got an HTTP answer: {answer:?}");
    }
    assert_eq!(receive_dirs(&spool), before, "no body was read");
    assert!(!exists(ENGINE_B, "ferry-e2e-tls-stranger"));

    // A source with such an identity is refused before its app is frozen.
    let name = hosts.on_a.track("ferry-e2e-tls-refused");
    start_counter(ENGINE_A, &name, 2);
    let counted = wait_for_count(ENGINE_A, &name, 2, Duration::from_secs(20));
    for (who, dir) in [("stranger", &stranger), ("expired", &expired)] {
        let out = migrate_as(&hosts, dir, &name, &addr);
        assert_eq!(out.status.code(), Some(PEER), "{who}: {}", stderr(&out));
        assert!(stderr(&out).contains("refused our certificate"), "{who}: {}", stderr(&out));
    }
    assert!(is_running(ENGINE_A, &name) && !exists(ENGINE_B, &name));
    wait_for_count(ENGINE_A, &name, counted + 1, Duration::from_secs(10));
}

#[test]
#[ignore = "needs two real engines + CRIU: run `make test`"]
fn a_source_refuses_an_agent_it_does_not_trust_and_a_fleet_ca_works() {
    let mut hosts = TwoHosts::new("tls-agents", &[]);
    let name = hosts.on_a.track("ferry-e2e-tls-agents");
    hosts.on_b.track(&name);
    start_counter(ENGINE_A, &name, 4);
    let counted = wait_for_count(ENGINE_A, &name, 2, Duration::from_secs(20));

    // An agent with a key A never pinned (it would accept A).
    let stranger = hosts.scratch.path("keys-c");
    keys_init(&stranger, "host-c");
    trust(&stranger, "host-a", &keys().fingerprint_a);
    let agent = AgentProcess::start_as(true, &format!("127.0.0.1:{}", free_port()), &stranger, &hosts.scratch.path("spool-c"), &hosts.token, &[]);
    let out = ferry(ENGINE_A, &hosts.scratch.work_dir(), &["migrate", &name, "--to", &agent.addr, "--token-file", hosts.token.to_str().unwrap()]);
    expect_failure(&out, PEER, "is not trusted");
    drop(agent);

    // A fleet CA: A's and two agents' certificates issued by it, no pins.
    let mut ca_params = CertificateParams::default();
    ca_params.distinguished_name.push(DnType::CommonName, "ferry e2e fleet CA");
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca_params.not_before = days(-1).into();
    ca_params.not_after = days(30).into();
    let ca_key = KeyPair::generate_for(&rcgen::PKCS_ED25519).unwrap();
    let ca_pem = ca_params.clone().self_signed(&ca_key).unwrap().pem();
    let issuer = Issuer::from_params(&ca_params, &ca_key);
    let issue = |dir: &Path, cn: &str, san: &str| {
        let key = KeyPair::generate_for(&rcgen::PKCS_ED25519).unwrap();
        let cert = host_params(cn, &[san], days(-1), days(30)).signed_by(&key, &issuer).unwrap();
        config(dir, &key, &cert.pem(), None, Some(&ca_pem));
    };
    let (fleet_a, wrong_name, right_name) =
        (hosts.scratch.path("fleet-a"), hosts.scratch.path("fleet-b-other"), hosts.scratch.path("fleet-b"));
    issue(&fleet_a, "fleet-a", "127.0.0.1");
    issue(&wrong_name, "fleet-b", "other-host.example");
    issue(&right_name, "fleet-b", "127.0.0.1");

    let agent = AgentProcess::start_as(true, &format!("127.0.0.1:{}", free_port()), &wrong_name, &hosts.scratch.path("spool-w"), &hosts.token, &[]);
    let out = migrate_as(&hosts, &fleet_a, &name, &agent.addr);
    assert_eq!(out.status.code(), Some(PEER), "{}", stderr(&out));
    assert!(stderr(&out).contains("is not for 127.0.0.1"), "{}", stderr(&out));
    drop(agent);
    assert!(is_running(ENGINE_A, &name) && !exists(ENGINE_B, &name), "refused before the freeze");
    let counted = wait_for_count(ENGINE_A, &name, counted + 1, Duration::from_secs(10));

    // The normal case: the certificate for the address dialled.
    let agent = AgentProcess::start_as(true, &format!("127.0.0.1:{}", free_port()), &right_name, &hosts.scratch.path("spool-r"), &hosts.token, &[]);
    let out = migrate_as(&hosts, &fleet_a, &name, &agent.addr);
    assert!(out.status.success(), "{}", stderr(&out));
    wait_for_count(ENGINE_B, &name, counted + 1, Duration::from_secs(20));
}

#[test]
#[ignore = "needs two real engines + CRIU: run `make test`"]
fn an_agent_takes_only_payloads_signed_by_the_peer_that_sends_them() {
    let mut hosts = TwoHosts::new("tls-signed", &[]);
    let source = hosts.on_a.track("ferry-e2e-signed-src");
    start_counter(ENGINE_A, &source, 2);
    latest_count(ENGINE_A, &source);
    let work = hosts.scratch.work_dir();
    // The same checkpoint, signed by A and by a stranger C.
    let stranger = hosts.scratch.path("keys-c");
    keys_init(&stranger, "host-c");
    let (own, foreign) = (hosts.scratch.path("own.ferry"), hosts.scratch.path("foreign.ferry"));
    ferry_ok(ENGINE_A, &work, &["checkpoint", &source, "--leave-running", "-o", own.to_str().unwrap()]);
    checkpoint_as(&stranger, &work, &source, &foreign);

    let addr = hosts.agent_b.addr.clone();
    let token = format!("Bearer {}", std::fs::read_to_string(&hosts.token).unwrap().trim());
    let target = hosts.on_b.track("ferry-e2e-signed-dst");
    let before = all_containers(ENGINE_B);
    let post = |payload: &Path| {
        https(&addr, ClientCert::Dir(&keys().a), "POST", &format!("/v1/restore?name={target}"), &[("Authorization", &token)], &std::fs::read(payload).unwrap())
            .expect("the agent answers")
    };
    // A relays a payload C signed: refused, nothing created.
    let (status, body) = post(&foreign);
    assert_eq!(status, 422, "{body}");
    assert!(body.contains("not by the peer that sent it") && body.contains("\"exit_code\":6"), "{body}");
    assert_eq!(all_containers(ENGINE_B), before, "a container was created");
    // The normal case: A's own.
    let (status, body) = post(&own);
    assert_eq!(status, 200, "{body}");
    assert!(is_running(ENGINE_B, &target));
}

/// 64-byte runs of the counter's memory, read from /proc/PID/mem.
fn memory_samples(socket: &str, name: &str, mib: u64) -> Vec<Vec<u8>> {
    use std::io::{Read, Seek, SeekFrom};
    let pid = docker_ok(socket, &["inspect", "-f", "{{.State.Pid}}", name]);
    let maps = std::fs::read_to_string(format!("/proc/{pid}/maps")).unwrap();
    // The counter's buffer: its largest writable anonymous mapping.
    let (start, end) = maps
        .lines()
        .filter(|l| l.split_whitespace().nth(1).is_some_and(|p| p.starts_with("rw")) && l.split_whitespace().count() == 5)
        .filter_map(|l| {
            let (a, b) = l.split_whitespace().next()?.split_once('-')?;
            Some((u64::from_str_radix(a, 16).ok()?, u64::from_str_radix(b, 16).ok()?))
        })
        .max_by_key(|(a, b)| b - a)
        .unwrap();
    assert!(end - start >= mib << 20, "no mapping of {mib} MiB in {maps}");
    let mut mem = std::fs::File::open(format!("/proc/{pid}/mem")).unwrap();
    (0..32u64)
        .map(|i| {
            let mut sample = vec![0u8; 64];
            mem.seek(SeekFrom::Start(start + 4096 + i * ((end - start - 8192) / 32))).unwrap();
            mem.read_exact(&mut sample).unwrap();
            sample
        })
        .collect()
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}

#[test]
#[ignore = "needs two real engines + CRIU: run `make test`"]
fn the_wire_carries_neither_the_token_nor_the_apps_memory() {
    let mut hosts = TwoHosts::new("tls-wire", &[]);
    let token = std::fs::read_to_string(&hosts.token).unwrap().trim().to_string();
    let insecure = AgentProcess::start(true, &hosts.scratch.path("spool-plain"), &hosts.token, &["--insecure"]);
    for (label, agent, flags) in [("plain", &insecure.addr, &["--insecure"][..]), ("tls", &hosts.agent_b.addr, &[][..])] {
        let name = hosts.on_a.track(&format!("ferry-e2e-wire-{label}"));
        hosts.on_b.track(&name);
        start_counter(ENGINE_A, &name, 4);
        let counted = wait_for_count(ENGINE_A, &name, 2, Duration::from_secs(20));
        let samples = memory_samples(ENGINE_A, &name, 4);
        let proxy = RecordingProxy::start(agent);
        let args = [&["migrate", name.as_str(), "--to", proxy.addr.as_str(), "--token-file", hosts.token.to_str().unwrap()], flags].concat();
        let out = ferry(ENGINE_A, &hosts.scratch.work_dir(), &args);
        assert!(out.status.success(), "{label}: {}", stderr(&out));
        wait_for_count(ENGINE_B, &name, counted + 1, Duration::from_secs(20));
        let wire = proxy.bytes();
        assert!(wire.len() > 4 << 20, "{label}: the capture holds the migration ({} bytes)", wire.len());
        let seen = samples.iter().filter(|s| contains(&wire, s)).count();
        if label == "plain" {
            // The control: without TLS the capture shows the token and the memory.
            assert!(contains(&wire, token.as_bytes()), "the plain capture lacks the token: the search is broken");
            assert!(seen >= 30, "only {seen} of 32 memory samples in the plain capture: the search is broken");
        } else {
            assert!(!contains(&wire, token.as_bytes()), "the token crossed the wire in clear");
            assert_eq!(seen, 0, "{seen} runs of the app's memory crossed the wire in clear");
        }
    }
}
