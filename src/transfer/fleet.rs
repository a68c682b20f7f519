//! What an agent in a fleet (`ferry serve --etcd`) does for the fleet:
//! moves a container it runs to another node when asked (the balancer's
//! `POST /v1/fleet/migrate`), and takes over the containers of a node whose
//! lease expired when it holds their newest snapshot. Every such decision is
//! an etcd transaction conditioned on the placement it read (`fleet/placement.rs`).

use std::cell::Cell;
use std::collections::BTreeSet;
use std::sync::TryLockError;
use std::thread;
use std::time::Duration;

use super::agent::{Agent, Handled, WithStatus};
use super::client::Peer;
use super::migrate::{self, ShipImage};
use super::FleetMove;
use crate::error::{Error, Kind, Result};
use crate::fleet::moves::{self, LastMove, Made};
use crate::fleet::placement::{self, Moved};
use crate::fleet::{self, node_key, Node, Seat, Status};
use crate::migration::failover::failover;
use crate::units::short_id;

/// How long a move may take, image included (a board's SD card and link
/// are slow; under emulation much slower).
const MOVE_TIMEOUT: Duration = Duration::from_secs(600);
/// How often the placements are read for nodes that went.
const WATCH: Duration = Duration::from_secs(1);

impl Agent {
    /// Migrates `container` from here to fleet node `to`, if its placement is
    /// still `generation` on this node. The move is recorded in etcd just
    /// before the commit (a transaction on that generation): if another
    /// decision won meanwhile, the migration is given up and the app runs
    /// on here.
    pub(crate) fn fleet_migrate(&self, container: &str, to: &str, generation: u64) -> Handled<FleetMove> {
        let seat = self.seat()?;
        fleet::checked_name("name", container)?;
        fleet::checked_name("to", to)?;
        if to == seat.node {
            return Err(Error::new(Kind::Usage, format!("{container} is placed on '{to}' already: move it to another node")).into());
        }
        let _one_at_a_time = match self.fleet_moving.try_lock() {
            Ok(guard) => guard,
            Err(TryLockError::WouldBlock) => {
                return Err(Error::new(Kind::Refused, "this agent is moving another container — try again shortly").with_status(503));
            }
            Err(TryLockError::Poisoned(poisoned)) => poisoned.into_inner(),
        };
        match placement::placement(&seat.etcd, container)? {
            Some(placed) if placed.node == seat.node && placed.generation == generation => {}
            Some(placed) => {
                return Err(Error::new(
                    Kind::Refused,
                    format!(
                        "{container} is placed on '{}' at generation {}, not here ('{}') at generation {generation}: the fleet \
                         changed since it was read — read it again (`ferry fleet status`)",
                        placed.node, placed.generation, seat.node
                    ),
                )
                .into());
            }
            None => {
                return Err(Error::new(Kind::NotFound, format!("{container} is not managed by the fleet — `ferry fleet manage {container}` first")).into());
            }
        }
        let target: Node = match seat.etcd.get(&node_key(to)).map_err(Error::from)? {
            Some(kv) => fleet::decode(&kv.key, &kv.value)?,
            None => return Err(Error::new(Kind::Refused, format!("node '{to}' is not a member of the fleet (no live record)")).into()),
        };
        let peer = Peer::new(&target.agent, &self.settings.link, MOVE_TIMEOUT);
        let recorded = Cell::new(false);
        let record = || -> Result<()> {
            let moved = placement::move_to(&seat.etcd, container, generation, to);
            match moved {
                Ok(Moved::Won(_)) => {
                    recorded.set(true);
                    Ok(())
                }
                Ok(Moved::Lost(now)) => Err(Error::new(
                    Kind::Refused,
                    format!("{container} was placed on '{}' (generation {}) meanwhile: not moved", now.node, now.generation),
                )),
                // The answer may be what was lost: read what etcd holds.
                Err(error) => match placement::placement(&seat.etcd, container) {
                    Ok(Some(now)) if now.node == to && now.generation == generation + 1 => {
                        recorded.set(true);
                        Ok(())
                    }
                    _ => Err(Error::new(Kind::Refused, format!("cannot record the move of {container} in etcd: {error}"))),
                },
            }
        };
        let options = migrate::Options {
            tuning: &self.settings.tuning,
            fast: self.settings.fast,
            ship_image: ShipImage::Auto,
            keep_source: false,
            limit_rate: None,
            precopy: None,
            before_commit: Some(&record),
        };
        log::info!("fleet: moving {container} (generation {generation}) to '{to}' at {}", target.agent);
        match migrate::migrate(&self.engine, &peer, container, &options) {
            Ok(report) => Ok(FleetMove {
                container: container.to_string(),
                from: seat.node.clone(),
                to: to.to_string(),
                generation: generation + 1,
                save_secs: report.save_secs,
                transfer_secs: report.transfer_secs,
                resume_secs: report.resume_secs,
                commit_secs: report.commit_secs,
                downtime_secs: report.downtime_secs,
                elapsed_secs: report.elapsed_secs,
                bytes_sent: report.bytes_sent,
            }),
            Err(error) => {
                // Recorded, then given back here (the peer never ran it): the
                // placement follows the app home. When the commit's outcome is
                // unknown the app stays stopped and the record as it is.
                if recorded.get() && error.kind != Kind::OutcomeUnknown {
                    match placement::move_to(&seat.etcd, container, generation + 1, &seat.node) {
                        Ok(Moved::Won(_)) => log::warn!("fleet: {container} stays here: its placement is back on '{}'", seat.node),
                        other => log::error!("fleet: {container} runs here again but its placement could not follow: {other:?}"),
                    }
                }
                Err(error.into())
            }
        }
    }

    fn seat(&self) -> Handled<&Seat> {
        self.settings.fleet.as_ref().ok_or_else(|| {
            Error::new(Kind::NotFound, "this agent is not in a fleet — start it with `ferry serve --etcd URL`").with_status(404)
        })
    }
}

/// Every second: a placement whose node has no record any more (its lease
/// expired: it froze what it ran, see `fleet/fence.rs`) is taken over by
/// the live node that holds the newest verified snapshot of that container
/// — chosen alike by every node from the same records, and taken by a
/// transaction that only one can win — which restores it from there.
pub(super) fn watch_for_failover(agent: &Agent, seat: &Seat) {
    let mut warned = BTreeSet::new();
    loop {
        thread::sleep(WATCH);
        let status = match fleet::status(&seat.etcd) {
            Ok(status) => status,
            Err(error) => {
                log::debug!("fleet: cannot read the placements: {error}");
                continue;
            }
        };
        for placed in &status.placements {
            let (container, gone) = (&placed.container, &placed.placement.node);
            if status.nodes.iter().any(|m| &m.node.name == gone) {
                continue;
            }
            let Some(heir) = heir(&status, container) else {
                if warned.insert((container.clone(), placed.placement.generation)) {
                    log::error!("fleet: node '{gone}' is gone and no member holds a snapshot of {container}: it cannot be failed over");
                }
                continue;
            };
            if heir != seat.node {
                continue;
            }
            if let Err(error) = take_over(agent, seat, container, placed.placement.generation, gone) {
                log::error!("fleet: failing {container} over from '{gone}' failed: {error}");
            }
        }
    }
}

/// The member that holds the newest snapshot of `container` (by when it
/// was taken, then generation; ties go to the first name).
pub(crate) fn heir(status: &Status, container: &str) -> Option<String> {
    status
        .nodes
        .iter()
        .filter_map(|m| m.node.snapshots.iter().find(|s| s.container == container).map(|s| (s, &m.node.name)))
        .max_by(|(a, an), (b, bn)| (a.taken_unix, a.generation).cmp(&(b.taken_unix, b.generation)).then(bn.cmp(an)))
        .map(|(_, name)| name.clone())
}

fn take_over(agent: &Agent, seat: &Seat, container: &str, generation: u64, gone: &str) -> Result<()> {
    let Ok(_one_at_a_time) = agent.restore_lock.lock() else {
        return Err(Error::new(Kind::Failure, "the restore lock is poisoned"));
    };
    match placement::take_over(&seat.etcd, container, generation, gone, &seat.node)? {
        Moved::Lost(now) => {
            log::info!("fleet: {container} was taken by '{}' (generation {})", now.node, now.generation);
            return Ok(());
        }
        Moved::Won(now) => log::warn!("fleet: node '{gone}' is gone: {container} is placed here (generation {})", now.generation),
    }
    let restored = failover(&agent.engine, &agent.store, container, None, &agent.restore_options(None));
    let record = LastMove {
        unix_ms: crate::host::unix_now() * 1000,
        ok: restored.is_ok(),
        container: container.to_string(),
        from: gone.to_string(),
        to: seat.node.clone(),
        made: restored.as_ref().ok().map(|done| Made { generation: generation + 1, resume_secs: done.restore_secs, ..Made::default() }),
        error: restored.as_ref().err().map(|e| e.to_string()),
        failover: true,
    };
    if let Err(error) = moves::record(&seat.etcd, &record) {
        log::warn!("fleet: cannot record the failover of {container}: {error}");
    }
    let done = restored?;
    log::warn!(
        "fleet: failed {container} over from snapshot generation {} ({} s old): runs here as {}",
        done.generation,
        done.snapshot_age_secs,
        short_id(&done.container_id)
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fleet::{Held, Member};

    fn member(name: &str, snapshots: &[(&str, u64, u64)]) -> Member {
        let node = Node {
            name: name.to_string(),
            agent: format!("{name}:7070"),
            arch: "aarch64".to_string(),
            mem_available_mib: 512,
            board: None,
            containers: Vec::new(),
            snapshots: snapshots
                .iter()
                .map(|(container, generation, taken_unix)| Held { container: container.to_string(), generation: *generation, taken_unix: *taken_unix })
                .collect(),
            ferry_version: "0".to_string(),
        };
        Member { node, lease_ttl_secs: Some(10) }
    }

    #[test]
    fn the_heir_holds_the_newest_snapshot_and_ties_go_to_the_first_name() {
        let status = |nodes| Status { nodes, placements: Vec::new(), last_moves: Vec::new() };
        let fleet = status(vec![member("c", &[("web", 7, 100)]), member("b", &[("web", 8, 100), ("db", 1, 50)]), member("a", &[])]);
        assert_eq!(heir(&fleet, "web").as_deref(), Some("b"), "same time: the later generation");
        assert_eq!(heir(&fleet, "db").as_deref(), Some("b"));
        assert_eq!(heir(&fleet, "cache"), None, "nobody holds a snapshot: no failover");
        let newer = status(vec![member("b", &[("web", 9, 100)]), member("c", &[("web", 2, 160)])]);
        assert_eq!(heir(&newer, "web").as_deref(), Some("c"), "taken later wins over a higher generation from another source");
        let tie = status(vec![member("c", &[("web", 3, 100)]), member("b", &[("web", 3, 100)])]);
        assert_eq!(heir(&tie, "web").as_deref(), Some("b"), "every node picks the same heir");
    }
}
