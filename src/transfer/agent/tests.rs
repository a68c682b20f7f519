//! The agent's handlers against the fake engine: no socket, no Docker.

use super::*;
use crate::testing::{api_path, info_answer, version_answer, FakeDocker, TempDir};

fn agent(spool: &std::path::Path, max_payload: Option<u64>) -> (Agent, FakeDocker) {
    let root = spool.to_path_buf();
    let fake = FakeDocker::start("agent", move |method, path| match (method, api_path(path)) {
        ("GET", "/version") => (200, version_answer("1.41")),
        ("GET", "/info") => (200, info_answer(&root)),
        ("GET", "/images/json") => (200, r#"[{"Id":"sha256:app","RepoTags":["app:1"]}]"#.into()),
        _ => (404, format!(r#"{{"message":"the fake has no {method} {path}"}}"#)),
    });
    let settings = Settings {
        token: Some("a-long-enough-token".into()),
        spool: spool.to_path_buf(),
        max_payload,
        fast: true,
        tuning: Tuning::new(None, None, spool),
        failover_after: None,
        handover_timeout: Duration::from_secs(300),
        fleet: None,
        verifier: crate::identity::Verifier::new(crate::identity::Trust::default(), None, false),
        link: crate::transfer::client::Link::default(),
    };
    (Agent::new(fake.engine(), settings), fake)
}

/// A body that fails the test if anything reads it.
struct Untouched;

impl Read for Untouched {
    fn read(&mut self, _: &mut [u8]) -> std::io::Result<usize> {
        panic!("the body was read");
    }
}

#[test]
fn info_says_what_this_host_is_and_has() {
    let spool = TempDir::new("agent-info");
    let (agent, _fake) = agent(spool.path(), Some(1 << 30));
    let info = agent.info().unwrap();
    assert_eq!(info.arch, "x86_64");
    assert_eq!(info.images.len(), 1);
    assert_eq!(info.images[0].tags, ["app:1"]);
    assert_eq!(info.max_payload_bytes, Some(1 << 30));
    assert!(!info.busy);
    assert!(info.spool_free_bytes > 0);
}

#[test]
fn a_bad_name_or_an_oversized_payload_is_refused_before_the_body_is_read() {
    let spool = TempDir::new("agent-refuse");
    let (agent, fake) = agent(spool.path(), Some(1 << 20));
    let bad_name = agent.restore(&mut Untouched, Some(10), Some("../etc"), None, false, None).unwrap_err();
    assert_eq!(bad_name.status, 400);
    let too_large = agent.restore(&mut Untouched, Some(2 << 20), Some("web"), Some("m1"), true, None).unwrap_err();
    assert_eq!(too_large.status, 413);
    assert!(too_large.error.message.contains("--max-payload"), "{}", too_large.error);
    assert!(!fake.lines().iter().any(|l| l.contains("/containers/")), "nothing created: {:?}", fake.lines());
}

#[test]
fn a_restore_that_fails_is_remembered_for_a_late_asker() {
    let spool = TempDir::new("agent-outcome");
    let (agent, _fake) = agent(spool.path(), None);
    let garbage = b"not a payload at all".to_vec();
    let error = agent.restore(&mut garbage.as_slice(), Some(garbage.len() as u64), None, Some("m2"), true, None).unwrap_err();
    assert_eq!(error.status, 422);
    match agent.outcome("m2").unwrap() {
        Outcome::Failed { error } => assert!(error.contains("corrupt"), "{error}"),
        other => panic!("expected a failure, got {other:?}"),
    }
    assert_eq!(agent.outcome("never-sent").unwrap_err().status, 404);
    let kept: Vec<_> = std::fs::read_dir(spool.path().join("handovers")).unwrap().flatten().map(|e| e.file_name()).collect();
    assert_eq!(kept, ["m2.json"], "the spool keeps the record, nothing of the refused payload");
    let abort = agent.abort("m2").unwrap();
    assert!(matches!(abort, Outcome::Failed { .. }), "a failed migration stays failed: {abort:?}");
}

#[test]
fn an_abort_before_the_payload_arrives_refuses_it_and_a_commit_needs_a_prepare() {
    let spool = TempDir::new("agent-abort");
    let (agent, fake) = agent(spool.path(), None);
    assert_eq!(agent.abort("m3").unwrap(), Outcome::Aborted);
    let late = agent.restore(&mut Untouched, Some(10), Some("web"), Some("m3"), true, None).unwrap_err();
    assert_eq!(late.status, 409, "{}", late.error);
    assert_eq!(agent.commit("m3", None).unwrap_err().status, 409);
    assert_eq!(agent.commit("never-prepared", None).unwrap_err().status, 404);
    assert_eq!(agent.abort("../escape").unwrap_err().status, 400);
    assert!(!fake.lines().iter().any(|l| l.contains("/containers/")), "{:?}", fake.lines());
}

#[test]
fn only_containers_this_agent_restored_can_be_removed() {
    let spool = TempDir::new("agent-remove");
    let (agent, fake) = agent(spool.path(), None);
    let refused = agent.remove_restored("someone-elses", None).unwrap_err();
    assert_eq!(refused.status, 403);
    assert!(!fake.lines().iter().any(|l| l.starts_with("DELETE")), "{:?}", fake.lines());
}

#[test]
fn a_peer_removes_only_the_containers_it_sent() {
    let spool = TempDir::new("agent-remove-owner");
    let (agent, fake) = agent(spool.path(), None);
    let peer = |name: &str, byte: &str| crate::identity::Peer {
        name: name.into(),
        fingerprint: crate::identity::Fingerprint::parse(&format!("sha256:{}", byte.repeat(32))).unwrap(),
    };
    let (a, b) = (peer("a", "aa"), peer("b", "bb"));
    agent.record_restored("web", "0123456789abcdef", Some(&a));
    let refused = agent.remove_restored("web", Some(&b)).unwrap_err();
    assert_eq!(refused.status, 403);
    assert!(refused.error.message.contains("sent by a"), "{}", refused.error.message);
    let refused = agent.remove_restored("web", None).unwrap_err();
    assert_eq!(refused.status, 403, "a caller without a certificate is nobody's sender");
    assert!(!fake.lines().iter().any(|l| l.starts_with("DELETE")), "{:?}", fake.lines());
}

#[test]
fn a_peer_is_offered_only_blocks_of_copies_it_sent_and_only_while_they_are_fresh() {
    let spool = TempDir::new("agent-kept");
    let (agent, _fake) = agent(spool.path(), None);
    let peer = |name: &str| crate::identity::Peer {
        name: name.into(),
        fingerprint: crate::identity::testing::self_signed(name, &[], -1..30).fingerprint(),
    };
    let (sender, stranger) = (peer("sender"), peer("stranger"));
    let staged = spool.path().join("kept").join(sender.fingerprint.hex()).join("web").join("staged");
    std::fs::create_dir_all(staged.join("checkpoint")).unwrap();
    let pages: Vec<u8> = (0..256 * 1024u32).map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8).collect();
    std::fs::write(staged.join("checkpoint/pages-1.img"), &pages).unwrap();

    let offered = agent.blocks("web", Some(&sender)).unwrap();
    assert_eq!((offered.blocks, offered.base.as_str()), (64, "staged"));
    assert_eq!(agent.blocks("web", Some(&stranger)).unwrap().blocks, 0, "another peer's copy is not offered");
    assert_eq!(agent.blocks("web", None).unwrap().blocks, 0, "nor to a client without TLS");
    assert_eq!(agent.blocks("../web", Some(&sender)).unwrap_err().status, 400);

    // Older than KEPT_FOR: removed, not offered.
    let old = std::process::Command::new("touch").args(["-d", "1 hour ago"]).arg(&staged).status().unwrap();
    assert!(old.success());
    assert_eq!(agent.blocks("web", Some(&sender)).unwrap().blocks, 0);
    assert!(!staged.exists(), "an expired copy is removed");
}
