//! A fleet of ferry agents coordinated through etcd (issue 15): the records
//! the fleet keeps there, and the transactions that change them.
//!
//! Everything lives under [`PREFIX`], as JSON:
//! - `/ferry/nodes/<node>` — a node's membership ([`Node`]): written by its
//!   agent under a lease the agent keeps alive (see `membership.rs`), so
//!   the record disappears by itself when the agent stops renewing it;
//! - `/ferry/placements/<container>` — where a managed container runs
//!   ([`Placement`]): the single truth about which node should run it.
//!   Written only by transactions conditioned on what was read, so that of
//!   two decisions taken from the same state exactly one wins.
//!
//! How a node acts on them: `fence.rs` (it stops what it runs before its
//! lease can expire elsewhere, and on its return runs only what is placed
//! on it); the agent's side of moves and failovers is in `transfer/fleet.rs`.

pub(crate) mod etcd;
mod etcd_tls;
pub(crate) mod fence;
pub(crate) mod leader;
pub(crate) mod membership;
pub(crate) mod moves;
pub(crate) mod placement;
pub(crate) mod plan;
#[cfg(test)]
pub(crate) mod testing;

use serde::{Deserialize, Serialize};

use crate::error::{Error, Kind, Result};
use etcd::Etcd;

/// Where the fleet's keys start: one etcd may serve other users.
pub(crate) const PREFIX: &str = "/ferry/";
const NODES: &str = "/ferry/nodes/";
pub(crate) const PLACEMENTS: &str = "/ferry/placements/";

pub(crate) fn node_key(node: &str) -> String {
    format!("{NODES}{node}")
}

/// `name` if it can be a node's or container's name in a key: what Docker
/// allows in a container name (`[a-zA-Z0-9][a-zA-Z0-9_.-]*`), so no `/`
/// makes one record look like another's.
pub(crate) fn checked_name(option: &str, name: &str) -> Result<String> {
    let mut chars = name.chars();
    let first_ok = chars.next().is_some_and(|c| c.is_ascii_alphanumeric());
    if first_ok && chars.all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-')) {
        return Ok(name.to_string());
    }
    Err(Error::new(
        Kind::Usage,
        format!("{option} '{name}' cannot name a fleet record: use letters, digits, '_', '.' and '-', starting with a letter or digit"),
    ))
}

/// The agent address a node records: `--advertise`, else `--listen` when it
/// names an address others can dial.
pub(crate) fn advertised_agent(listen: &str, advertise: Option<&str>) -> Result<String> {
    if let Some(advertise) = advertise {
        return Ok(advertise.to_string());
    }
    let host = listen.rsplit_once(':').map_or(listen, |(host, _)| host);
    if matches!(host, "" | "0.0.0.0" | "[::]" | "::") {
        return Err(Error::new(
            Kind::Usage,
            format!("--listen {listen} is no address other nodes can reach: give --advertise HOST:PORT for the fleet"),
        ));
    }
    Ok(listen.to_string())
}

/// Where an agent sits in a fleet: etcd, and its own node's name.
pub(crate) struct Seat {
    pub etcd: Etcd,
    pub node: String,
}

/// A node as its agent describes itself: what a planner needs to choose
/// where a container goes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct Node {
    pub name: String,
    /// Where other agents reach this one's agent (HOST:PORT).
    pub agent: String,
    /// As the engine reports it (`uname -m`): a checkpoint restores only on
    /// the same architecture.
    pub arch: String,
    /// MemAvailable, in MiB.
    pub mem_available_mib: u64,
    /// The board profile the agent caps its containers with, if any.
    pub board: Option<String>,
    /// The containers running on this node's engine.
    pub containers: Vec<Hosted>,
    /// The newest verified snapshot this node holds of each container
    /// (`ferry replicate`): where a container goes when its node fails.
    #[serde(default)]
    pub snapshots: Vec<Held>,
    pub ferry_version: String,
}

/// A snapshot a node holds, as a failover chooses among them.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct Held {
    pub container: String,
    pub generation: u64,
    /// When its source took it (the source's clock).
    pub taken_unix: u64,
}

/// A container on a node, and the memory it holds (what a migration moves).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct Hosted {
    pub name: String,
    pub memory_mib: u64,
}

/// Where a managed container should run. `generation` counts its placements:
/// 1 when claimed, one more with every move.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct Placement {
    pub node: String,
    pub generation: u64,
}

/// A node's record with the time its lease has left.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct Member {
    #[serde(flatten)]
    pub node: Node,
    /// Seconds until the node's lease expires unless renewed; None when the
    /// record has no lease or it just went.
    pub lease_ttl_secs: Option<i64>,
}

/// A managed container and where it should run.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct Placed {
    pub container: String,
    #[serde(flatten)]
    pub placement: Placement,
}

/// The fleet as etcd holds it now, nodes and placements by name.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct Status {
    pub nodes: Vec<Member>,
    pub placements: Vec<Placed>,
    /// The last move or failover of each container that had one.
    pub last_moves: Vec<moves::LastMove>,
}

/// Every node and placement, with each node's remaining lease time.
pub(crate) fn status(etcd: &Etcd) -> Result<Status> {
    let mut nodes = Vec::new();
    let mut placements = Vec::new();
    let mut last_moves = Vec::new();
    for kv in etcd.get_prefix(PREFIX)? {
        if kv.key.starts_with(NODES) {
            let node: Node = decode(&kv.key, &kv.value)?;
            let lease_ttl_secs = if kv.lease == 0 { None } else { etcd.time_to_live(kv.lease)? };
            nodes.push(Member { node, lease_ttl_secs });
        } else if let Some(container) = kv.key.strip_prefix(PLACEMENTS) {
            placements.push(Placed { container: container.to_string(), placement: decode(&kv.key, &kv.value)? });
        } else if kv.key.starts_with(moves::MIGRATIONS) {
            match decode(&kv.key, &kv.value) {
                Ok(last) => last_moves.push(last),
                Err(error) => log::warn!("{error}"),
            }
        }
    }
    Ok(Status { nodes, placements, last_moves })
}

pub(crate) fn decode<T: serde::de::DeserializeOwned>(key: &str, value: &[u8]) -> Result<T> {
    serde_json::from_slice(value).map_err(|e| {
        Error::new(
            Kind::Failure,
            format!("etcd's {key} is not a record this ferry can read ({e}) — was it written by another version or tool?"),
        )
    })
}

#[cfg(test)]
mod tests;
