//! Self-fencing: a node that cannot renew its lease stops the managed
//! containers it runs *before* the lease can expire at etcd — which is when
//! another node may fail them over — so that a container never runs twice,
//! even when this node is cut off from etcd but not from its containers.
//!
//! The guarantee rests on time measured on this node alone. A renewal sent
//! at `t` and answered means etcd extended the lease to at least `t + TTL`
//! (etcd extends from when it *receives* the renewal, which is after `t`).
//! So if this node has frozen its managed containers by `t + TTL − margin`
//! on its own monotonic clock, they are frozen before etcd can expire the
//! lease, provided (the assumptions, also in the README):
//! - this node's clock does not run slower than etcd's leader's by more than
//!   `margin` over one TTL (monotonic clocks drift by parts per million);
//! - freezing every managed container here takes less than the time left
//!   (a `docker pause` takes tens of milliseconds; the watcher checks every
//!   100 ms, on a thread no etcd request ever blocks);
//! - the failover only takes a container once etcd has deleted this node's
//!   record (its transaction checks that), which etcd does at the earliest
//!   at the lease's expiry.
//!
//! A fenced container is paused, not killed: if a renewal gets through after
//! all (the lease had not expired) or the node comes back to find it still
//! placed here, it carries on where it was. If it is placed elsewhere now,
//! the copy here is stale and is removed.

use std::collections::BTreeSet;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;
use std::thread;
use std::time::{Duration, Instant};

use super::{Placed, PLACEMENTS};
use super::etcd::Etcd;
use crate::engine::Engine;
use crate::error::Result;

/// How often the watcher compares the clock with the fencing deadline.
const TICK: Duration = Duration::from_millis(100);

/// The time before the lease's earliest expiry by which managed containers
/// are frozen: a quarter of the TTL, at least 1.5 s.
pub(crate) fn margin(ttl: Duration) -> Duration {
    (ttl / 4).max(Duration::from_millis(1500))
}

/// Names of the fleet's managed containers (every placement's key), read
/// at each renewal: the ones this node freezes when cut off. All of them,
/// not only those placed here, since a container moved here while this node
/// could not read etcd is still one of these names.
pub(crate) fn managed(etcd: &Etcd) -> Result<BTreeSet<String>> {
    Ok(etcd.get_prefix(PLACEMENTS)?.into_iter().filter_map(|kv| kv.key.strip_prefix(PLACEMENTS).map(str::to_string)).collect())
}

struct State {
    /// When the last renewal that etcd answered was sent.
    renewed_at: Instant,
    managed: BTreeSet<String>,
    /// Containers this node froze (by id, with their name).
    fenced: Vec<(String, String)>,
}

/// This node's fence: the renewals report to it, a thread of its own
/// freezes the managed containers when the deadline passes.
pub(crate) struct Fence {
    engine: Engine,
    node: String,
    ttl: Duration,
    state: Mutex<State>,
}

impl Fence {
    pub(crate) fn new(engine: Engine, node: &str, ttl: Duration) -> Fence {
        let state = State { renewed_at: Instant::now(), managed: BTreeSet::new(), fenced: Vec::new() };
        Fence { engine, node: node.to_string(), ttl, state: Mutex::new(state) }
    }

    /// A renewal sent at `sent` was answered: the lease lives until at least
    /// `sent + TTL`. `managed` is the set of managed names if it was read.
    pub(crate) fn renewed(&self, sent: Instant, managed: Option<BTreeSet<String>>) {
        let mut state = self.lock();
        state.renewed_at = state.renewed_at.max(sent);
        if let Some(managed) = managed {
            state.managed = managed;
        }
    }

    /// Freezes the managed containers once the deadline has passed, every
    /// [`TICK`], until `stop`.
    pub(crate) fn watch(&self, stop: &AtomicBool) {
        let margin = margin(self.ttl);
        while !stop.load(Ordering::SeqCst) {
            thread::sleep(TICK);
            let mut state = self.lock();
            let deadline = state.renewed_at + self.ttl.saturating_sub(margin);
            if Instant::now() < deadline || !state.fenced.is_empty() {
                continue;
            }
            let frozen = self.freeze(&state.managed);
            log::error!(
                "node '{}': no lease renewal for {:.1?}: its lease may expire in {:.1?} and its containers be failed over \
                 elsewhere — froze {} managed container(s) here: {}",
                self.node,
                state.renewed_at.elapsed(),
                margin,
                frozen.len(),
                frozen.iter().map(|(_, name)| name.as_str()).collect::<Vec<_>>().join(", ")
            );
            // Even none frozen marks the fence up, so it is not raised every tick.
            state.fenced = frozen;
            if state.fenced.is_empty() {
                state.fenced.push((String::new(), String::new()));
            }
        }
    }

    /// Whether the fence is up (set the first time the deadline passed).
    pub(crate) fn is_up(&self) -> bool {
        !self.lock().fenced.is_empty()
    }

    /// Runs what the placements assign here and nothing else: called when
    /// the node (re)joins or renews again after its fence went up. A
    /// managed container frozen or running here but placed on another node
    /// is a stale copy and is removed; one placed here and frozen is
    /// unfrozen.
    pub(crate) fn reconcile(&self, placements: &[Placed]) -> Result<()> {
        let running = self.engine.running_containers()?;
        for (name, id) in running {
            let Some(placed) = placements.iter().find(|p| p.container == name) else { continue };
            let state = match self.engine.inspect_container(&id) {
                Ok(inspect) => inspect.state,
                Err(_) => continue,
            };
            if placed.placement.node == self.node {
                if state.paused {
                    self.engine.unpause_container(&id)?;
                    log::warn!("node '{}': {name} is placed here (generation {}): unfrozen", self.node, placed.placement.generation);
                }
            } else {
                self.engine.remove_container(&id, true)?;
                log::warn!(
                    "node '{}': {name} runs on '{}' now (generation {}): removed the stale copy here",
                    self.node,
                    placed.placement.node,
                    placed.placement.generation
                );
            }
        }
        self.lock().fenced.clear();
        Ok(())
    }

    /// Pauses every running container here whose name is managed; one that
    /// cannot be paused is killed. Answers those it stopped.
    fn freeze(&self, managed: &BTreeSet<String>) -> Vec<(String, String)> {
        let running = match self.engine.running_containers() {
            Ok(running) => running,
            Err(error) => {
                log::error!("node '{}': cannot list its containers to fence them: {error}", self.node);
                return Vec::new();
            }
        };
        let mut frozen = Vec::new();
        for (name, id) in running.into_iter().filter(|(name, _)| managed.contains(name)) {
            if self.engine.inspect_container(&id).is_ok_and(|c| c.state.paused) {
                frozen.push((id, name));
                continue;
            }
            match self.engine.pause_container(&id) {
                Ok(()) => frozen.push((id, name)),
                Err(error) => {
                    log::error!("node '{}': cannot pause {name} ({error}): killing it", self.node);
                    match self.engine.kill_container(&id) {
                        Ok(()) => frozen.push((id, name)),
                        Err(error) => log::error!("node '{}': cannot kill {name} either: {error}", self.node),
                    }
                }
            }
        }
        frozen
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

/// The fence's deadline as a message, for `ferry serve`'s start-up log.
pub(crate) fn describe(ttl: Duration) -> String {
    format!(
        "managed containers are frozen {:.1}s after the last lease renewal (TTL {:.0}s less a margin of {:.1}s) when etcd cannot be reached",
        ttl.saturating_sub(margin(ttl)).as_secs_f64(),
        ttl.as_secs_f64(),
        margin(ttl).as_secs_f64()
    )
}
