//! Placements: which node should run each managed container, changed only
//! by compare-and-swap transactions on the record that was read.
//!
//! `claim` (`ferry fleet manage`), `move_to` (a move, by the source's agent
//! just before its commit) and `take_over` (a failover) are the only writers.

use serde::Serialize;

use super::etcd::{self, Cmp, Compare, Etcd, Op, Txn};
use super::{decode, node_key, Placement, PLACEMENTS};
use crate::error::{Error, Kind, Result};

pub(crate) fn placement_key(container: &str) -> String {
    format!("{PLACEMENTS}{container}")
}

/// What a [`claim`] found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Claimed {
    /// The container had no placement: it now has this one.
    Won(Placement),
    /// It already had this one, which stays.
    Taken(Placement),
}

/// What a [`move_to`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Moved {
    /// The placement was the generation expected, and is now this one.
    Won(Placement),
    /// Someone changed it first: this is the placement now, unchanged by us.
    Lost(Placement),
}

/// Gives `container` its first placement, on `node`, unless it has one: a
/// transaction that writes only if the key was never created, so two claims
/// cannot both win. The node must be a member (its record alive).
pub(crate) fn claim(etcd: &Etcd, container: &str, node: &str) -> Result<Claimed> {
    let key = placement_key(container);
    let placement = Placement { node: node.to_string(), generation: 1 };
    let txn = Txn {
        compare: vec![Compare::CreateRevision(key.clone(), Cmp::Equal, 0), member(node)],
        success: vec![put(&key, &placement)?],
        failure: vec![Op::Get(key.clone()), Op::Get(node_key(node))],
    };
    let outcome = etcd.txn(&txn)?;
    if outcome.succeeded {
        return Ok(Claimed::Won(placement));
    }
    match read_back(&outcome.gets) {
        Some(existing) => Ok(Claimed::Taken(decode(&existing.key, &existing.value)?)),
        None => Err(not_a_member(node, &format!("placing '{container}'"))),
    }
}

/// Moves `container` to `node` if its placement is still generation
/// `expected`: reads the placement, then one transaction conditioned on that
/// record's `mod_revision` — which etcd never hands out twice, so a record
/// rewritten or deleted and claimed again in between no longer matches —
/// writes generation `expected + 1`. Of any number of moves from the same
/// generation, exactly one wins; the others get [`Moved::Lost`] with the
/// placement that won. The target must be a member.
pub(crate) fn move_to(etcd: &Etcd, container: &str, expected: u64, node: &str) -> Result<Moved> {
    let key = placement_key(container);
    let Some(read) = etcd.get(&key)? else {
        return Err(not_placed(container));
    };
    let placement: Placement = decode(&read.key, &read.value)?;
    if placement.generation != expected {
        return Ok(Moved::Lost(placement));
    }
    let next = Placement { node: node.to_string(), generation: expected + 1 };
    let txn = Txn {
        compare: vec![Compare::ModRevision(key.clone(), Cmp::Equal, read.mod_revision), member(node)],
        success: vec![put(&key, &next)?],
        failure: vec![Op::Get(key.clone()), Op::Get(node_key(node))],
    };
    let outcome = etcd.txn(&txn)?;
    if outcome.succeeded {
        return Ok(Moved::Won(next));
    }
    match read_back(&outcome.gets) {
        None => Err(not_placed(container)),
        Some(now) if now.mod_revision != read.mod_revision => Ok(Moved::Lost(decode(&now.key, &now.value)?)),
        // The placement is as read: it was the target's membership that failed.
        Some(_) => Err(not_a_member(node, &format!("moving '{container}'"))),
    }
}

/// Fails `container` over to `node`: like [`move_to`], and only while the
/// node it was placed on, `gone`, has no record — its lease expired, so it
/// has frozen what it ran (see `fence.rs`). Of several nodes taking over
/// the same container, exactly one wins.
pub(crate) fn take_over(etcd: &Etcd, container: &str, expected: u64, gone: &str, node: &str) -> Result<Moved> {
    let key = placement_key(container);
    let Some(read) = etcd.get(&key)? else {
        return Err(not_placed(container));
    };
    let placement: Placement = decode(&read.key, &read.value)?;
    if placement.generation != expected || placement.node != gone {
        return Ok(Moved::Lost(placement));
    }
    let next = Placement { node: node.to_string(), generation: expected + 1 };
    let txn = Txn {
        compare: vec![
            Compare::ModRevision(key.clone(), Cmp::Equal, read.mod_revision),
            Compare::Version(node_key(gone), Cmp::Equal, 0),
            member(node),
        ],
        success: vec![put(&key, &next)?],
        failure: vec![Op::Get(key.clone()), Op::Get(node_key(gone))],
    };
    let outcome = etcd.txn(&txn)?;
    if outcome.succeeded {
        return Ok(Moved::Won(next));
    }
    let gone_is_back = outcome.gets.get(1).is_some_and(|kvs| !kvs.is_empty());
    match read_back(&outcome.gets) {
        None => Err(not_placed(container)),
        Some(now) if now.mod_revision != read.mod_revision => Ok(Moved::Lost(decode(&now.key, &now.value)?)),
        Some(_) if gone_is_back => Err(Error::new(
            Kind::Refused,
            format!("not failing '{container}' over: node '{gone}' is still a member of the fleet (its lease lives)"),
        )),
        Some(_) => Err(not_a_member(node, &format!("failing '{container}' over"))),
    }
}

/// Where `container` should run, if it is managed.
pub(crate) fn placement(etcd: &Etcd, container: &str) -> Result<Option<Placement>> {
    etcd.get(&placement_key(container))?.map(|kv| decode(&kv.key, &kv.value)).transpose()
}

/// The compare that `node` is a member: its record exists (it goes with
/// the node's lease).
fn member(node: &str) -> Compare {
    Compare::Version(node_key(node), Cmp::Greater, 0)
}

fn put(key: &str, record: &impl Serialize) -> Result<Op> {
    let value = serde_json::to_vec(record)
        .map_err(|e| Error::new(Kind::Failure, format!("cannot encode the record for {key}: {e}")))?;
    Ok(Op::Put { key: key.to_string(), value, lease: None })
}

/// The placement a failed transaction read back (its first Get), if any.
fn read_back(gets: &[Vec<etcd::Kv>]) -> Option<&etcd::Kv> {
    gets.first().and_then(|kvs| kvs.first())
}

fn not_placed(container: &str) -> Error {
    Error::new(
        Kind::NotFound,
        format!("container '{container}' has no placement in the fleet — claim it first (see `ferry fleet status`)"),
    )
}

fn not_a_member(node: &str, doing: &str) -> Error {
    Error::new(
        Kind::Refused,
        format!(
            "{doing}: node '{node}' is not a member of the fleet (no live record at {}) — is its `ferry serve --etcd` \
             running and renewing its lease?",
            node_key(node)
        ),
    )
}
