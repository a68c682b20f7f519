//! A node's membership: its record at `/ferry/nodes/<node>`, attached to a
//! lease its agent keeps alive from a thread. When the agent dies or loses
//! etcd for longer than the lease's TTL, etcd deletes the record by itself:
//! that expiry, not a timer of ferry's, is what tells the fleet a node is
//! gone.

use std::sync::atomic::{AtomicBool, Ordering};
use std::thread;
use std::time::{Duration, Instant};

use super::etcd::{Cmp, Compare, Etcd, Op, Txn};
use super::fence::{self, Fence};
use super::{node_key, Held, Hosted, Node};
use crate::engine::Engine;
use crate::error::{Error, Kind, Result};
use crate::snapshots::Store;

/// How often a renewal that failed is tried again, within the renewal period.
const RETRY: Duration = Duration::from_secs(1);

/// A node's record refreshed only when its free memory moved by this much
/// (or its containers changed): every put is a revision etcd keeps until it
/// is compacted, and MemAvailable moves all the time.
const MEMORY_NOISE_MIB: u64 = 32;

/// This node, registered in the fleet under a lease.
pub(crate) struct Membership {
    etcd: Etcd,
    name: String,
    lease: i64,
    ttl_secs: i64,
    /// The record as last written.
    written: Node,
}

impl Membership {
    /// Registers `node` under a new lease of `ttl_secs`. Refused while
    /// another live record holds the name: two agents under one name would
    /// renew each other's membership.
    pub(crate) fn join(etcd: Etcd, node: Node, ttl_secs: i64) -> Result<Membership> {
        let lease = etcd.grant(ttl_secs)?;
        let key = node_key(&node.name);
        let txn = Txn {
            compare: vec![Compare::CreateRevision(key.clone(), Cmp::Equal, 0)],
            success: vec![put(&node, lease.id)?],
            failure: vec![Op::Get(key.clone())],
        };
        let outcome = match etcd.txn(&txn) {
            Ok(outcome) => outcome,
            Err(error) => {
                let _ = etcd.revoke(lease.id);
                return Err(error.into());
            }
        };
        if !outcome.succeeded {
            let _ = etcd.revoke(lease.id);
            let holder = outcome.gets.first().and_then(|kvs| kvs.first()).map_or(0, |kv| kv.lease);
            let left = if holder == 0 { None } else { etcd.time_to_live(holder)? };
            let wait = left.map_or(String::new(), |secs| format!(", or wait {secs} s for its lease to expire if that agent is gone"));
            return Err(Error::new(
                Kind::Refused,
                format!(
                    "node '{}' is already a member of the fleet ({key} is held by lease {holder:x}) — another agent \
                     runs under this name: give this one another --node{wait}",
                    node.name
                ),
            ));
        }
        log::info!(
            "joined the fleet at {} as node '{}' (lease {:x}, {} s)",
            etcd.endpoints().join(","),
            node.name,
            lease.id,
            lease.ttl_secs
        );
        Ok(Membership { etcd, name: node.name.clone(), lease: lease.id, ttl_secs: lease.ttl_secs.max(1), written: node })
    }

    /// Renews the lease every TTL/3 and rewrites the record when `survey`
    /// says the node changed, until `stop` is set; then revokes the lease,
    /// so the fleet sees the node leave at once rather than after its TTL.
    ///
    /// A renewal that fails is logged and tried again every second: the
    /// record survives until the TTL runs out, and `fence` freezes the
    /// managed containers before it can. Each renewal tells `fence` when it
    /// was sent and which containers are managed. If the lease is gone
    /// anyway the node joins again under a new one and runs only what the
    /// placements assign to it.
    pub(crate) fn keep_alive(mut self, stop: &AtomicBool, fence: Option<&Fence>, mut survey: impl FnMut() -> Option<Node>) {
        let period = Duration::from_millis(self.ttl_secs as u64 * 1000 / 3);
        let mut last_renewed = Instant::now();
        let mut next = Instant::now() + period;
        while !stop.load(Ordering::SeqCst) {
            if Instant::now() < next {
                thread::sleep(Duration::from_millis(100).min(next - Instant::now()));
                continue;
            }
            let sent = Instant::now();
            match self.etcd.keep_alive(self.lease) {
                Ok(Some(_)) => {
                    last_renewed = Instant::now();
                    next = last_renewed + period;
                    if let Some(fence) = fence {
                        let managed = fence::managed(&self.etcd);
                        if let Err(error) = &managed {
                            log::warn!("node '{}': cannot read the placements: {error}", self.name);
                        }
                        fence.renewed(sent, managed.ok());
                        if fence.is_up() {
                            log::warn!("node '{}': its lease was renewed after all", self.name);
                            self.reconcile(fence);
                        }
                    }
                    if let Some(node) = survey() {
                        self.refresh(node);
                    }
                }
                Ok(None) => {
                    log::error!(
                        "node '{}': its lease {:x} expired (last renewed {:.0?} ago): the fleet saw it leave — joining again",
                        self.name,
                        self.lease,
                        last_renewed.elapsed()
                    );
                    next = Instant::now() + RETRY;
                    if let Some(node) = survey() {
                        self.written = node;
                    }
                    let sent = Instant::now();
                    match Membership::join(self.etcd.clone(), self.written.clone(), self.ttl_secs) {
                        Ok(joined) => {
                            self = joined;
                            if let Some(fence) = fence {
                                fence.renewed(sent, fence::managed(&self.etcd).ok());
                                self.reconcile(fence);
                            }
                            last_renewed = Instant::now();
                            next = last_renewed + period;
                        }
                        Err(error) => log::error!("node '{}' cannot join the fleet again: {error}", self.name),
                    }
                }
                Err(error) => {
                    let left = Duration::from_secs(self.ttl_secs as u64).saturating_sub(last_renewed.elapsed());
                    log::warn!(
                        "node '{}': cannot renew its lease: {error} — its record expires in {:.0?} unless a renewal gets through",
                        self.name,
                        left
                    );
                    next = Instant::now() + RETRY;
                }
            }
        }
        match self.etcd.revoke(self.lease) {
            Ok(()) => log::info!("node '{}' left the fleet (lease {:x} revoked)", self.name, self.lease),
            Err(error) => log::warn!("node '{}': cannot revoke its lease, its record expires with it: {error}", self.name),
        }
    }

    /// Runs only what the placements assign to this node (see
    /// [`Fence::reconcile`]); tried again at the next renewal if etcd or the
    /// engine fails.
    fn reconcile(&self, fence: &Fence) {
        match super::status(&self.etcd).and_then(|status| fence.reconcile(&status.placements)) {
            Ok(()) => {}
            Err(error) => log::error!("node '{}': cannot bring its containers in line with the placements: {error}", self.name),
        }
    }

    /// Rewrites the record if `node` differs from what was written beyond
    /// memory noise.
    fn refresh(&mut self, node: Node) {
        let moved = node.mem_available_mib.abs_diff(self.written.mem_available_mib) >= MEMORY_NOISE_MIB;
        let same = Node { mem_available_mib: self.written.mem_available_mib, ..node.clone() } == self.written;
        if same && !moved {
            return;
        }
        let written = serde_json::to_vec(&node)
            .map_err(|e| e.to_string())
            .and_then(|value| self.etcd.put(&node_key(&self.name), &value, Some(self.lease)).map_err(|e| e.to_string()));
        match written {
            Ok(_) => self.written = node,
            Err(error) => log::warn!("node '{}': cannot update its record: {error}", self.name),
        }
    }
}

/// Who this node is in the fleet, as `ferry serve` was told.
pub(crate) struct Who {
    pub name: String,
    /// Where other agents reach this one (HOST:PORT).
    pub agent: String,
    pub board: Option<String>,
}

/// Joins the fleet at `etcd` under a lease of `ttl_secs`, brings the
/// containers here in line with the placements, and keeps the membership
/// alive from a thread of its own, so that a busy or stuck request handler
/// never delays a renewal; another thread fences (see `fence.rs`). When
/// `stop` is set the thread revokes the lease, then calls `on_leave`.
/// Returns once joined.
pub(crate) fn start(
    etcd: Etcd,
    engine: Engine,
    store: Store,
    who: Who,
    ttl_secs: i64,
    stop: &'static AtomicBool,
    on_leave: impl FnOnce() + Send + 'static,
) -> Result<()> {
    let node = survey(&engine, &store, &who.name, &who.agent, who.board.as_deref())?;
    // A renewal stuck for longer than a third of the TTL leaves no time to
    // try again (at least a second: etcd commits through Raft first).
    let patience = Duration::from_millis(ttl_secs as u64 * 1000 / 3).max(RETRY);
    let sent = Instant::now();
    let membership = Membership::join(etcd.answering_within(patience), node, ttl_secs)?;
    let ttl = Duration::from_secs(ttl_secs as u64);
    let fence: &'static Fence = Box::leak(Box::new(Fence::new(engine.clone(), &who.name, ttl)));
    fence.renewed(sent, Some(fence::managed(&membership.etcd)?));
    fence.reconcile(&super::status(&membership.etcd)?.placements)?;
    log::info!("node '{}': {}", who.name, fence::describe(ttl));
    thread::Builder::new()
        .name("fleet-fence".to_string())
        .spawn(move || fence.watch(stop))
        .map_err(|e| Error::new(Kind::Failure, format!("cannot start the fleet fence's thread: {e}")))?;
    thread::Builder::new()
        .name("fleet-lease".to_string())
        .spawn(move || {
            membership.keep_alive(stop, Some(fence), || match survey(&engine, &store, &who.name, &who.agent, who.board.as_deref()) {
                Ok(node) => Some(node),
                Err(error) => {
                    log::debug!("node '{}': cannot survey the engine, its record stays as it was: {error}", who.name);
                    None
                }
            });
            on_leave();
        })
        .map_err(|e| Error::new(Kind::Failure, format!("cannot start the fleet lease's thread: {e}")))?;
    Ok(())
}

/// What this node tells the fleet about itself: its engine's architecture
/// and running containers (with the memory each holds), the newest snapshot
/// it holds of each container, the host's free memory.
pub(crate) fn survey(engine: &Engine, store: &Store, name: &str, agent: &str, board: Option<&str>) -> Result<Node> {
    let arch = engine.info()?.architecture;
    let mut containers = Vec::new();
    for (container, id) in engine.running_containers()? {
        // A container that stopped between the list and its stats is just gone.
        let Ok(bytes) = engine.memory_in_use(&id) else { continue };
        containers.push(Hosted { name: container, memory_mib: bytes.div_ceil(1 << 20) });
    }
    containers.sort_by(|a, b| a.name.cmp(&b.name));
    let mut snapshots: Vec<Held> = Vec::new();
    for snapshot in store.list().into_iter().filter(|s| s.verified) {
        let held = Held { container: snapshot.container, generation: snapshot.generation, taken_unix: snapshot.taken_unix };
        match snapshots.iter_mut().find(|h| h.container == held.container) {
            Some(newest) if (newest.taken_unix, newest.generation) >= (held.taken_unix, held.generation) => {}
            Some(newest) => *newest = held,
            None => snapshots.push(held),
        }
    }
    snapshots.sort_by(|a, b| a.container.cmp(&b.container));
    Ok(Node {
        name: name.to_string(),
        agent: agent.to_string(),
        arch,
        mem_available_mib: crate::host::mem_available_bytes() >> 20,
        board: board.map(str::to_string),
        containers,
        snapshots,
        ferry_version: env!("CARGO_PKG_VERSION").to_string(),
    })
}

fn put(node: &Node, lease: i64) -> Result<Op> {
    let value = serde_json::to_vec(node)
        .map_err(|e| Error::new(Kind::Failure, format!("cannot encode node '{}': {e}", node.name)))?;
    Ok(Op::Put { key: node_key(&node.name), value, lease: Some(lease) })
}
