//! `ferry fleet`: the fleet of agents as etcd holds it (issue 15).

use std::path::PathBuf;

use argh::FromArgs;

use crate::error::{Error, Kind, Result};
use crate::fleet::placement::{self, Claimed};
use crate::fleet;

#[derive(FromArgs, Debug)]
/// Look at the fleet of agents that joined etcd with `ferry serve --etcd`.
#[argh(subcommand, name = "fleet")]
pub(crate) struct Args {
    #[argh(subcommand)]
    command: FleetCommand,
}

#[derive(FromArgs, Debug)]
#[argh(subcommand)]
enum FleetCommand {
    Status(StatusArgs),
    Manage(ManageArgs),
}

#[derive(FromArgs, Debug)]
/// Make a running container one the fleet manages: record where it runs
/// (its placement), so that it is balanced, fenced and failed over.
#[argh(subcommand, name = "manage")]
struct ManageArgs {
    /// the container's name: one name for it in the whole fleet
    #[argh(positional)]
    container: String,
    /// etcd's client URLs, comma-separated (http://HOST:PORT,… or https://)
    #[argh(option)]
    etcd: String,
    /// the CA that issued etcd's certificate, for https:// (default: the fleet CA, ca.pem)
    #[argh(option)]
    etcd_ca: Option<PathBuf>,
    /// the node that runs it (default: the one member whose record lists it)
    #[argh(option)]
    node: Option<String>,
}

#[derive(FromArgs, Debug)]
/// The nodes (with the time their lease has left) and where each managed container should run.
#[argh(subcommand, name = "status")]
struct StatusArgs {
    /// etcd's client URLs, comma-separated (http://HOST:PORT,… or https://)
    #[argh(option)]
    etcd: String,
    /// the CA that issued etcd's certificate, for https:// (default: the fleet CA, ca.pem)
    #[argh(option)]
    etcd_ca: Option<PathBuf>,
    /// print the status as one JSON object
    #[argh(switch)]
    json: bool,
}

pub(crate) fn run(args: Args) -> Result<()> {
    match args.command {
        FleetCommand::Status(args) => status(args),
        FleetCommand::Manage(args) => manage(args),
    }
}

fn manage(args: ManageArgs) -> Result<()> {
    let container = fleet::checked_name("container", &args.container)?;
    let etcd = super::etcd_client(&args.etcd, args.etcd_ca.as_deref())?;
    let status = fleet::status(&etcd)?;
    let running_on: Vec<&str> = status
        .nodes
        .iter()
        .filter(|m| m.node.containers.iter().any(|c| c.name == container))
        .map(|m| m.node.name.as_str())
        .collect();
    let node = match (&args.node, running_on.as_slice()) {
        (Some(node), _) => fleet::checked_name("--node", node)?,
        (None, [one]) => one.to_string(),
        (None, []) => {
            return Err(Error::new(
                Kind::NotFound,
                format!("no member of the fleet lists {container} among its running containers (records are refreshed every third of a lease) — start it, or name its node with --node"),
            ));
        }
        (None, many) => {
            return Err(Error::new(
                Kind::Refused,
                format!("{container} runs on several nodes ({}): a managed container runs once — stop the extra copies, or name its node with --node", many.join(", ")),
            ));
        }
    };
    match placement::claim(&etcd, &container, &node)? {
        Claimed::Won(placed) => say!("{container} is managed by the fleet: placed on '{}' (generation {})", placed.node, placed.generation),
        Claimed::Taken(placed) => say!("{container} was managed already: placed on '{}' (generation {})", placed.node, placed.generation),
    }
    Ok(())
}

fn status(args: StatusArgs) -> Result<()> {
    let status = fleet::status(&super::etcd_client(&args.etcd, args.etcd_ca.as_deref())?)?;
    if args.json {
        say!("{}", serde_json::to_string(&status).unwrap_or_default());
        return Ok(());
    }
    say!("{:<16} {:<22} {:<8} {:>9} {:<12} {:>6}  containers", "node", "agent", "arch", "available", "board", "lease");
    for member in &status.nodes {
        let node = &member.node;
        let containers: Vec<String> = node.containers.iter().map(|c| format!("{} ({} MiB)", c.name, c.memory_mib)).collect();
        say!(
            "{:<16} {:<22} {:<8} {:>5} MiB {:<12} {:>6}  {}",
            node.name,
            node.agent,
            node.arch,
            node.mem_available_mib,
            node.board.as_deref().unwrap_or("-"),
            member.lease_ttl_secs.map_or("-".to_string(), |ttl| format!("{ttl}s")),
            if containers.is_empty() { "-".to_string() } else { containers.join(", ") }
        );
    }
    if status.placements.is_empty() {
        return Ok(());
    }
    say!("");
    say!("{:<24} {:<16} {:>10}", "container", "placed on", "generation");
    for placed in &status.placements {
        let absent = !status.nodes.iter().any(|m| m.node.name == placed.placement.node);
        say!(
            "{:<24} {:<16} {:>10}{}",
            placed.container,
            placed.placement.node,
            placed.placement.generation,
            if absent { "  (node not a member)" } else { "" }
        );
    }
    if status.last_moves.is_empty() {
        return Ok(());
    }
    say!("");
    say!("{:<24} {:<8} {:<16} {:<16} {}", "last move of", "kind", "from", "to", "outcome");
    for last in &status.last_moves {
        let outcome = match (&last.made, &last.error) {
            (Some(made), _) if last.failover => format!("restored in {:.2}s (generation {})", made.resume_secs, made.generation),
            (Some(made), _) => format!(
                "save {:.2}s, transfer {:.2}s, resume {:.2}s, downtime {:.2}s (generation {})",
                made.save_secs, made.transfer_secs, made.resume_secs, made.downtime_secs, made.generation
            ),
            (None, error) => format!("failed: {}", error.as_deref().unwrap_or("?")),
        };
        let kind = if last.failover { "failover" } else { "move" };
        say!("{:<24} {:<8} {:<16} {:<16} {outcome}", last.container, kind, last.from, last.to);
    }
    Ok(())
}
