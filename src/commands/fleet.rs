//! `ferry fleet`: the fleet of agents as etcd holds it (issue 15).

use argh::FromArgs;

use crate::error::Result;
use crate::fleet::{self, etcd::Etcd};

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
}

#[derive(FromArgs, Debug)]
/// The nodes (with the time their lease has left) and where each managed container should run.
#[argh(subcommand, name = "status")]
struct StatusArgs {
    /// etcd's client URLs, comma-separated (http://HOST:PORT,…)
    #[argh(option)]
    etcd: String,
    /// print the status as one JSON object
    #[argh(switch)]
    json: bool,
}

pub(crate) fn run(args: Args) -> Result<()> {
    let FleetCommand::Status(args) = args.command;
    let status = fleet::status(&Etcd::connect(&args.etcd)?)?;
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
    Ok(())
}
