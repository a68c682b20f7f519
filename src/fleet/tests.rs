//! The fleet's records and transactions against a real etcd (the `etcd`
//! binary from tests/scripts/setup-host.sh): `#[ignore]`d like the other
//! tests that need something installed; `make test` runs them.

use std::sync::{Arc, Barrier};
use std::thread;

use super::etcd::{Cmp, Compare, Etcd, Op, Txn};
use super::membership::Membership;
use super::testing::LocalEtcd;
use super::placement::*;
use super::*;

fn node(name: &str) -> Node {
    Node {
        name: name.to_string(),
        agent: format!("{name}.local:7070"),
        arch: "aarch64".to_string(),
        mem_available_mib: 100,
        board: Some("edge-128m".to_string()),
        containers: vec![Hosted { name: "web".to_string(), memory_mib: 16 }],
        snapshots: Vec::new(),
        ferry_version: "0.1.0".to_string(),
    }
}

/// Registers `name` under a lease long enough for one test.
fn member(etcd: &Etcd, name: &str) -> Membership {
    Membership::join(etcd.clone(), node(name), 60).unwrap()
}

#[test]
#[ignore = "needs the etcd binary (tests/scripts/setup-host.sh)"]
fn the_client_speaks_etcd_34s_gateway_put_range_delete_and_leases() {
    let local = LocalEtcd::start("client");
    let etcd = Etcd::connect(&local.url).unwrap();
    assert!(etcd.put("/ferry/test/a", b"1", None).unwrap() > 0);
    etcd.put("/ferry/test/b", b"\xff\x00binary", None).unwrap();
    etcd.put("/ferry/testz", b"outside the prefix", None).unwrap();
    let a = etcd.get("/ferry/test/a").unwrap().unwrap();
    assert_eq!((a.value.as_slice(), a.version, a.lease), (&b"1"[..], 1, 0));
    assert!(etcd.get("/ferry/test/none").unwrap().is_none());
    let listed: Vec<String> = etcd.get_prefix("/ferry/test/").unwrap().into_iter().map(|kv| kv.key).collect();
    assert_eq!(listed, ["/ferry/test/a", "/ferry/test/b"]);
    assert_eq!(etcd.get("/ferry/test/b").unwrap().unwrap().value, b"\xff\x00binary");
    assert_eq!(etcd.delete("/ferry/test/a").unwrap(), 1);
    assert_eq!(etcd.delete("/ferry/test/a").unwrap(), 0);

    let lease = etcd.grant(30).unwrap();
    assert_eq!(lease.ttl_secs, 30);
    etcd.put("/ferry/test/leased", b"x", Some(lease.id)).unwrap();
    assert_eq!(etcd.get("/ferry/test/leased").unwrap().unwrap().lease, lease.id);
    assert_eq!(etcd.keep_alive(lease.id).unwrap(), Some(30));
    assert!(matches!(etcd.time_to_live(lease.id).unwrap(), Some(ttl) if ttl > 25));
    etcd.revoke(lease.id).unwrap();
    assert!(etcd.get("/ferry/test/leased").unwrap().is_none(), "revoking a lease deletes its keys");
    assert_eq!(etcd.keep_alive(lease.id).unwrap(), None, "a revoked lease cannot be renewed");
    assert_eq!(etcd.time_to_live(lease.id).unwrap(), None);
    etcd.revoke(lease.id).unwrap();
    // A put under a lease that does not exist is etcd's error, by name.
    let refused = etcd.put("/ferry/test/x", b"x", Some(lease.id)).unwrap_err().to_string();
    assert!(refused.contains("lease not found"), "{refused}");
}

#[test]
#[ignore = "needs the etcd binary (tests/scripts/setup-host.sh)"]
fn a_transaction_runs_one_branch_on_its_compares() {
    let local = LocalEtcd::start("txn");
    let etcd = Etcd::connect(&local.url).unwrap();
    let create = |value: &[u8]| Txn {
        compare: vec![Compare::CreateRevision("k".into(), Cmp::Equal, 0)],
        success: vec![Op::Put { key: "k".into(), value: value.to_vec(), lease: None }],
        failure: vec![Op::Get("k".into())],
    };
    let first = etcd.txn(&create(b"one")).unwrap();
    assert!(first.succeeded && first.gets.is_empty());
    let second = etcd.txn(&create(b"two")).unwrap();
    assert!(!second.succeeded);
    assert_eq!(second.gets[0][0].value, b"one");
    let by_value = Txn {
        compare: vec![Compare::Value("k".into(), Cmp::Equal, b"one".to_vec()), Compare::Version("k".into(), Cmp::Equal, 1)],
        success: vec![Op::Delete("k".into()), Op::Get("k".into())],
        failure: vec![],
    };
    let deleted = etcd.txn(&by_value).unwrap();
    assert!(deleted.succeeded);
    assert_eq!(deleted.gets, vec![vec![]], "the Get after the Delete in the same transaction sees nothing");
}

#[test]
#[ignore = "needs the etcd binary (tests/scripts/setup-host.sh)"]
fn an_unreachable_endpoint_is_skipped_for_the_next() {
    let local = LocalEtcd::start("endpoints");
    // Port 1 on loopback refuses connections: nothing is sent there.
    let etcd = Etcd::connect(&format!("http://127.0.0.1:1,{}", local.url)).unwrap();
    etcd.put("k", b"v", None).unwrap();
    let outcome = etcd.txn(&Txn { compare: vec![], success: vec![Op::Get("k".into())], failure: vec![] }).unwrap();
    assert_eq!(outcome.gets[0][0].value, b"v");
    let none = Etcd::connect("http://127.0.0.1:1").unwrap().get("k").unwrap_err().to_string();
    assert!(none.contains("etcd cannot be reached at http://127.0.0.1:1") && none.contains("--etcd"), "{none}");
}

#[test]
#[ignore = "needs the etcd binary (tests/scripts/setup-host.sh)"]
fn a_claim_wins_once_and_only_on_a_member() {
    let local = LocalEtcd::start("claim");
    let etcd = Etcd::connect(&local.url).unwrap();
    let refused = claim(&etcd, "web", "a").unwrap_err();
    assert!(refused.to_string().contains("node 'a' is not a member"), "{refused}");
    let _a = member(&etcd, "a");
    let _b = member(&etcd, "b");
    assert_eq!(claim(&etcd, "web", "a").unwrap(), Claimed::Won(Placement { node: "a".into(), generation: 1 }));
    assert_eq!(claim(&etcd, "web", "b").unwrap(), Claimed::Taken(Placement { node: "a".into(), generation: 1 }));
    assert_eq!(placement(&etcd, "web").unwrap(), Some(Placement { node: "a".into(), generation: 1 }));
}

#[test]
#[ignore = "needs the etcd binary (tests/scripts/setup-host.sh)"]
fn of_two_concurrent_moves_from_one_generation_exactly_one_wins() {
    let local = LocalEtcd::start("cas");
    let etcd = Etcd::connect(&local.url).unwrap();
    let _members: Vec<Membership> = ["a", "b", "c"].iter().map(|n| member(&etcd, n)).collect();
    claim(&etcd, "web", "a").unwrap();
    // Many rounds, each with two movers released at once from the same
    // generation towards different nodes.
    for round in 1..=20u64 {
        let start = Arc::new(Barrier::new(2));
        let movers: Vec<_> = ["b", "c"]
            .into_iter()
            .map(|target| {
                let (etcd, start) = (etcd.clone(), start.clone());
                thread::spawn(move || {
                    start.wait();
                    move_to(&etcd, "web", round, target).unwrap()
                })
            })
            .collect();
        let outcomes: Vec<Moved> = movers.into_iter().map(|m| m.join().unwrap()).collect();
        let won: Vec<&Placement> = outcomes.iter().filter_map(|o| if let Moved::Won(p) = o { Some(p) } else { None }).collect();
        assert_eq!(won.len(), 1, "round {round}: {outcomes:?}");
        let now = placement(&etcd, "web").unwrap().unwrap();
        assert_eq!(&now, won[0]);
        assert_eq!(now.generation, round + 1);
        for outcome in &outcomes {
            if let Moved::Lost(seen) = outcome {
                assert_eq!(seen, &now, "the loser is told the placement that won");
            }
        }
    }
    // A move from a generation already passed loses without writing.
    let stale = move_to(&etcd, "web", 1, "a").unwrap();
    assert!(matches!(stale, Moved::Lost(Placement { generation: 21, .. })), "{stale:?}");
    // A target that is not a member is refused; an unmanaged container too.
    assert!(move_to(&etcd, "web", 21, "ghost").unwrap_err().to_string().contains("not a member"));
    assert_eq!(move_to(&etcd, "db", 1, "a").unwrap_err().kind, Kind::NotFound);
}

#[test]
#[ignore = "needs the etcd binary (tests/scripts/setup-host.sh)"]
fn a_failover_takes_a_container_only_from_a_node_that_is_gone_and_only_once() {
    let local = LocalEtcd::start("takeover");
    let etcd = Etcd::connect(&local.url).unwrap();
    let a = member(&etcd, "a");
    let _b = member(&etcd, "b");
    let _c = member(&etcd, "c");
    claim(&etcd, "web", "a").unwrap();
    // While a is a member, nobody takes its container.
    let refused = take_over(&etcd, "web", 1, "a", "b").unwrap_err();
    assert!(refused.to_string().contains("'a' is still a member"), "{refused}");
    assert_eq!(placement(&etcd, "web").unwrap().unwrap().node, "a");
    // a's lease goes: of two nodes taking over at once, one wins.
    let stop = std::sync::atomic::AtomicBool::new(true);
    a.keep_alive(&stop, None, || None);
    let start = Arc::new(Barrier::new(2));
    let takers: Vec<_> = ["b", "c"]
        .into_iter()
        .map(|node| {
            let (etcd, start) = (etcd.clone(), start.clone());
            thread::spawn(move || {
                start.wait();
                take_over(&etcd, "web", 1, "a", node).unwrap()
            })
        })
        .collect();
    let outcomes: Vec<Moved> = takers.into_iter().map(|t| t.join().unwrap()).collect();
    let won: Vec<&Placement> = outcomes.iter().filter_map(|o| if let Moved::Won(p) = o { Some(p) } else { None }).collect();
    assert_eq!(won.len(), 1, "{outcomes:?}");
    assert_eq!(placement(&etcd, "web").unwrap().as_ref(), Some(won[0]));
    assert_eq!(won[0].generation, 2);
    // A stale take-over (from the generation that was) changes nothing.
    assert!(matches!(take_over(&etcd, "web", 1, "a", "b").unwrap(), Moved::Lost(Placement { generation: 2, .. })));
}

#[test]
#[ignore = "needs the etcd binary (tests/scripts/setup-host.sh)"]
fn a_name_is_held_by_one_live_member_and_freed_by_its_revoke() {
    let local = LocalEtcd::start("names");
    let etcd = Etcd::connect(&local.url).unwrap();
    let first = member(&etcd, "a");
    let second = Membership::join(etcd.clone(), node("a"), 60).err().unwrap().to_string();
    assert!(second.contains("node 'a' is already a member") && second.contains("--node"), "{second}");
    let status = status(&etcd).unwrap();
    assert_eq!(status.nodes.len(), 1);
    assert_eq!(status.nodes[0].node, node("a"));
    assert!(matches!(status.nodes[0].lease_ttl_secs, Some(ttl) if ttl > 50));
    // Leaving: the keep-alive loop revokes the lease once told to stop.
    let stop = std::sync::atomic::AtomicBool::new(true);
    first.keep_alive(&stop, None, || None);
    assert!(super::status(&etcd).unwrap().nodes.is_empty());
    member(&etcd, "a");
}
