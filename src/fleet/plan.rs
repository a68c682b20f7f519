//! The balancer's policy: from the fleet as etcd holds it, the one move to
//! make this round, if any. Pure, so that it can be tested on made-up fleets
//! and gives the same answer for the same fleet (every tie goes to the name
//! that sorts first).
//!
//! What may move: a *managed* container (it has a placement) whose placement
//! node is a live member that lists it as running — a container placed on a
//! node that does not run it is failover's business, not the balancer's.
//! Where it may go: another live member of the same architecture (a
//! checkpoint restores only there) that does not already run a container of
//! that name (its restore would collide).
//!
//! A node's load is the memory (MiB) of the managed containers placed on it,
//! the number of them breaking ties: memory is what a migration carries and
//! what a small board runs out of. A container counts on the node its
//! placement names even before that node's record lists it (records are
//! refreshed every third of a lease's TTL): counting it where it was just
//! moved from, or nowhere, would make the next round undo the last one.

use std::cmp::Reverse;
use std::collections::BTreeMap;
use std::fmt;
use std::str::FromStr;

use super::{Node, Status};

/// How the balancer chooses.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub(crate) enum Policy {
    /// Even out memory: from the most loaded node to the least loaded, only
    /// while that strictly lowers the larger of the two loads — a balanced
    /// fleet stays still, and no container moves back and forth.
    #[default]
    Spread,
    /// The paper's experiment (and the soak): one migration every round, of
    /// the container that has waited longest since its last move, to the
    /// least loaded node that can take it.
    Rotate,
}

impl FromStr for Policy {
    type Err = String;

    fn from_str(text: &str) -> Result<Policy, String> {
        match text {
            "spread" => Ok(Policy::Spread),
            "rotate" => Ok(Policy::Rotate),
            other => Err(format!(
                "'{other}' is not a balancing policy: use spread (even out memory, the default) or rotate (one move every round)"
            )),
        }
    }
}

impl fmt::Display for Policy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Policy::Spread => "spread",
            Policy::Rotate => "rotate",
        })
    }
}

/// One migration to ask the source node's agent for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Move {
    pub container: String,
    pub from: String,
    /// The source node's agent (HOST:PORT), which carries the move out.
    pub agent: String,
    pub to: String,
    /// The placement's generation the move is conditioned on.
    pub generation: u64,
    pub memory_mib: u64,
}

/// The move `policy` makes on `status`, if any. `last_moved` holds, by
/// container, when its last move was tried (any unit that orders; the
/// balancer gives milliseconds since the epoch); only `rotate` reads it.
pub(crate) fn plan(policy: Policy, status: &Status, last_moved: &BTreeMap<String, u64>) -> Option<Move> {
    let fleet = Fleet::read(status);
    match policy {
        Policy::Spread => fleet.spread(),
        Policy::Rotate => fleet.rotate(last_moved),
    }
}

/// A container that may move: running where its placement says.
struct Movable<'a> {
    name: &'a str,
    node: &'a Node,
    generation: u64,
    memory_mib: u64,
}

/// Load as the policies compare it: memory, then count.
type Load = (u64, usize);

struct Fleet<'a> {
    /// The live members, by name.
    nodes: Vec<&'a Node>,
    movable: Vec<Movable<'a>>,
    load: BTreeMap<&'a str, Load>,
}

impl<'a> Fleet<'a> {
    fn read(status: &'a Status) -> Fleet<'a> {
        let mut nodes: Vec<&Node> = status.nodes.iter().map(|m| &m.node).collect();
        nodes.sort_by(|a, b| a.name.cmp(&b.name));
        let member = |name: &str| nodes.iter().copied().find(|n| n.name == name);
        let mut load: BTreeMap<&str, Load> = nodes.iter().map(|n| (n.name.as_str(), (0, 0))).collect();
        let mut movable = Vec::new();
        let mut placements: Vec<_> = status.placements.iter().collect();
        placements.sort_by(|a, b| a.container.cmp(&b.container));
        for placed in placements {
            let name = placed.container.as_str();
            let Some(node) = member(&placed.placement.node) else { continue };
            let running_there = node.containers.iter().find(|c| c.name == name);
            // Its memory as its node reports it, else as any node still does.
            let memory = running_there
                .or_else(|| nodes.iter().flat_map(|n| &n.containers).find(|c| c.name == name))
                .map_or(0, |c| c.memory_mib);
            if let Some(entry) = load.get_mut(node.name.as_str()) {
                entry.0 += memory;
                entry.1 += 1;
            }
            if running_there.is_some() {
                movable.push(Movable { name, node, generation: placed.placement.generation, memory_mib: memory });
            }
        }
        Fleet { nodes, movable, load }
    }

    fn load(&self, node: &Node) -> Load {
        self.load.get(node.name.as_str()).copied().unwrap_or_default()
    }

    /// Where `container` could go, least loaded first (ties by name).
    fn targets(&self, container: &Movable) -> Vec<&'a Node> {
        let mut targets: Vec<&Node> = self
            .nodes
            .iter()
            .copied()
            .filter(|n| n.name != container.node.name && n.arch == container.node.arch)
            .filter(|n| !n.containers.iter().any(|c| c.name == container.name))
            .collect();
        targets.sort_by_key(|n| (self.load(n), n.name.as_str()));
        targets
    }

    fn spread(&self) -> Option<Move> {
        // Sources from the most loaded down (ties by name): the busiest node
        // may have no peer of its architecture while another does.
        let mut sources: Vec<&Node> = self.nodes.iter().copied().filter(|n| self.load(n).1 > 0).collect();
        sources.sort_by_key(|n| (Reverse(self.load(n)), n.name.as_str()));
        for source in sources {
            let (source_load, _) = self.load(source);
            let mut best: Option<(u64, &Movable, &Node)> = None;
            for container in self.movable.iter().filter(|c| c.node.name == source.name) {
                // The least loaded target gives this container its best move.
                let Some(target) = self.targets(container).into_iter().next() else { continue };
                let (target_load, _) = self.load(target);
                let (source_after, target_after) = (source_load - container.memory_mib, target_load + container.memory_mib);
                if source_after.max(target_after) >= source_load {
                    continue;
                }
                let gap = source_after.abs_diff(target_after);
                // Containers come in name order: a strict < keeps the first of equals.
                if best.is_none_or(|(best_gap, _, _)| gap < best_gap) {
                    best = Some((gap, container, target));
                }
            }
            if let Some((_, container, target)) = best {
                return Some(to_move(container, target));
            }
        }
        None
    }

    fn rotate(&self, last_moved: &BTreeMap<String, u64>) -> Option<Move> {
        let mut waiting: Vec<&Movable> = self.movable.iter().collect();
        // Never moved first (None sorts before Some), then the oldest move.
        waiting.sort_by_key(|c| (last_moved.get(c.name), c.name));
        waiting.into_iter().find_map(|container| Some(to_move(container, self.targets(container).into_iter().next()?)))
    }
}

fn to_move(container: &Movable, target: &Node) -> Move {
    Move {
        container: container.name.to_string(),
        from: container.node.name.clone(),
        agent: container.node.agent.clone(),
        to: target.name.clone(),
        generation: container.generation,
        memory_mib: container.memory_mib,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fleet::{Hosted, Member, Placed, Placement};

    /// A node as `(name, arch, [(container, MiB)])`.
    type NodeSpec<'a> = (&'a str, &'a str, &'a [(&'a str, u64)]);

    /// A fleet of `nodes`, every container placed where it runs at
    /// generation 1.
    fn fleet(nodes: &[NodeSpec]) -> Status {
        let mut status = Status { nodes: Vec::new(), placements: Vec::new(), last_moves: Vec::new() };
        for (name, arch, containers) in nodes {
            let hosted = containers.iter().map(|(c, mib)| Hosted { name: c.to_string(), memory_mib: *mib }).collect();
            status.nodes.push(Member {
                node: Node {
                    name: name.to_string(),
                    agent: format!("{name}:7070"),
                    arch: arch.to_string(),
                    mem_available_mib: 100,
                    board: None,
                    containers: hosted,
                    snapshots: Vec::new(),
                    ferry_version: "0.1.0".into(),
                },
                lease_ttl_secs: Some(10),
            });
            for (container, _) in containers.iter() {
                status.placements.push(Placed {
                    container: container.to_string(),
                    placement: Placement { node: name.to_string(), generation: 1 },
                });
            }
        }
        status
    }

    fn spread(status: &Status) -> Option<(String, String, String)> {
        plan(Policy::Spread, status, &BTreeMap::new()).map(|m| (m.container, m.from, m.to))
    }

    fn step(container: &str, from: &str, to: &str) -> Option<(String, String, String)> {
        Some((container.into(), from.into(), to.into()))
    }

    /// Applies `planned` to `status` as a successful move would, records
    /// refreshed at once.
    fn apply(status: &mut Status, planned: &Move) {
        let from = status.nodes.iter_mut().find(|m| m.node.name == planned.from).unwrap();
        let at = from.node.containers.iter().position(|c| c.name == planned.container).unwrap();
        let hosted = from.node.containers.remove(at);
        status.nodes.iter_mut().find(|m| m.node.name == planned.to).unwrap().node.containers.push(hosted);
        let placed = status.placements.iter_mut().find(|p| p.container == planned.container).unwrap();
        placed.placement = Placement { node: planned.to.clone(), generation: planned.generation + 1 };
    }

    #[test]
    fn spread_moves_from_the_busiest_to_the_idlest_the_container_that_evens_them_best() {
        let status = fleet(&[
            ("a", "aarch64", &[("big", 60), ("mid", 30), ("small", 10)]),
            ("b", "aarch64", &[("x", 20)]),
            ("c", "aarch64", &[]),
        ]);
        // a: 100, c: 0 — moving big leaves 40/60, mid 70/30, small 90/10.
        assert_eq!(spread(&status), step("big", "a", "c"));
        let planned = plan(Policy::Spread, &status, &BTreeMap::new()).unwrap();
        assert_eq!((planned.generation, planned.memory_mib, planned.agent.as_str()), (1, 60, "a:7070"));
    }

    #[test]
    fn spread_leaves_a_balanced_fleet_still_and_never_ping_pongs() {
        // Moving the one container would only swap the loads.
        assert_eq!(spread(&fleet(&[("a", "x86_64", &[("web", 50)]), ("b", "x86_64", &[])])), None);
        assert_eq!(spread(&fleet(&[("a", "x86_64", &[("w", 10), ("v", 10)]), ("b", "x86_64", &[("u", 10), ("t", 10)])])), None);
        // From any start, repeated rounds settle, each round lowering the peak.
        let mut status = fleet(&[
            ("a", "x86_64", &[("p", 64), ("q", 32), ("r", 16), ("s", 8), ("t", 8)]),
            ("b", "x86_64", &[("u", 4)]),
            ("c", "x86_64", &[]),
        ]);
        let mut rounds = 0;
        while let Some(planned) = plan(Policy::Spread, &status, &BTreeMap::new()) {
            apply(&mut status, &planned);
            rounds += 1;
            assert!(rounds < 10, "spread does not settle: {planned:?}");
        }
        let loads: Vec<u64> = status.nodes.iter().map(|m| m.node.containers.iter().map(|c| c.memory_mib).sum()).collect();
        assert_eq!((loads, rounds), (vec![32, 36, 64], 2), "p alone is 64: nothing lowers that peak");
    }

    #[test]
    fn only_a_managed_container_running_on_its_placement_node_moves_and_only_to_its_arch() {
        let mut status = fleet(&[
            ("a", "aarch64", &[("web", 40)]),
            ("b", "x86_64", &[]),
            ("c", "aarch64", &[("web", 5)]),
        ]);
        // c already runs a "web" (unmanaged), b is another architecture.
        status.placements.retain(|p| p.placement.node == "a");
        assert_eq!(spread(&status), None);
        assert_eq!(plan(Policy::Rotate, &status, &BTreeMap::new()), None);
        // Unmanaged: no placement at all.
        let unmanaged = fleet(&[("a", "aarch64", &[("web", 40)]), ("b", "aarch64", &[])]);
        let mut unplaced = unmanaged.clone();
        unplaced.placements.clear();
        assert_eq!(spread(&unplaced), None);
        // Placed on a node that is not a member, or does not list it running.
        let mut elsewhere = unmanaged.clone();
        elsewhere.placements[0].placement.node = "gone".into();
        assert_eq!(spread(&elsewhere), None);
        let mut stopped = unmanaged;
        stopped.nodes[0].node.containers.clear();
        assert_eq!(spread(&stopped), None);
    }

    #[test]
    fn a_container_counts_on_its_new_node_before_that_node_reports_it() {
        // web moved a → b; b's record does not list it yet, a's still does.
        let mut status = fleet(&[("a", "x86_64", &[("web", 100), ("db", 100), ("cache", 100)]), ("b", "x86_64", &[])]);
        status.placements.iter_mut().find(|p| p.container == "web").unwrap().placement.node = "b".into();
        // a holds 200, b 100: moving another 100 would not lower the peak.
        assert_eq!(spread(&status), None);
    }

    #[test]
    fn spread_looks_past_the_busiest_node_when_it_has_no_peer_of_its_arch() {
        let status = fleet(&[
            ("arm", "aarch64", &[("big", 500)]),
            ("x1", "x86_64", &[("p", 30), ("q", 30)]),
            ("x2", "x86_64", &[]),
        ]);
        assert_eq!(spread(&status), step("p", "x1", "x2"));
    }

    #[test]
    fn rotate_moves_every_round_the_container_that_waited_longest() {
        let status = fleet(&[("a", "aarch64", &[("web", 10), ("db", 30)]), ("b", "aarch64", &[("cache", 5)]), ("c", "aarch64", &[])]);
        let mut last = BTreeMap::new();
        // Never moved first, by name: cache, db, web.
        let first = plan(Policy::Rotate, &status, &last).unwrap();
        assert_eq!((first.container.as_str(), first.from.as_str(), first.to.as_str()), ("cache", "b", "c"));
        last.insert("cache".to_string(), 100);
        last.insert("db".to_string(), 200);
        // web never moved: it goes, to the least loaded other node (c: 0).
        let second = plan(Policy::Rotate, &status, &last).unwrap();
        assert_eq!((second.container.as_str(), second.to.as_str()), ("web", "c"));
        last.insert("web".to_string(), 300);
        // All moved: the oldest move (cache) goes again, even on a balanced fleet.
        assert_eq!(plan(Policy::Rotate, &status, &last).unwrap().container, "cache");
        // Two nodes, one container: back and forth, one move each round.
        let mut pair = fleet(&[("a", "aarch64", &[("web", 10)]), ("b", "aarch64", &[])]);
        for (round, to) in ["b", "a", "b"].into_iter().enumerate() {
            let planned = plan(Policy::Rotate, &pair, &BTreeMap::new()).unwrap();
            assert_eq!(planned.to, to);
            assert_eq!(planned.generation, round as u64 + 1);
            apply(&mut pair, &planned);
        }
    }

    #[test]
    fn rotate_ties_between_targets_go_to_the_first_name_and_a_stuck_container_is_skipped() {
        let status = fleet(&[("z", "x86_64", &[("web", 10)]), ("m", "x86_64", &[]), ("b", "x86_64", &[])]);
        assert_eq!(plan(Policy::Rotate, &status, &BTreeMap::new()).unwrap().to, "b");
        // "alone" is the only container of its arch: nowhere to go; web moves.
        let status = fleet(&[("arm", "aarch64", &[("alone", 1)]), ("x1", "x86_64", &[("web", 10)]), ("x2", "x86_64", &[])]);
        assert_eq!(plan(Policy::Rotate, &status, &BTreeMap::new()).unwrap().container, "web");
    }

    #[test]
    fn policies_parse_by_name_and_a_wrong_one_names_both() {
        assert_eq!("spread".parse::<Policy>().unwrap(), Policy::Spread);
        assert_eq!("rotate".parse::<Policy>().unwrap(), Policy::Rotate);
        let wrong = "even".parse::<Policy>().unwrap_err();
        assert!(wrong.contains("'even'") && wrong.contains("spread") && wrong.contains("rotate"), "{wrong}");
        assert_eq!(Policy::default().to_string(), "spread");
    }
}
