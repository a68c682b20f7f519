//! `ferry snapshots`: the replicated snapshots stored on this host or a peer.

use std::path::PathBuf;
use std::time::Duration;

use argh::FromArgs;

use super::{link, peer, Context};
use crate::error::Result;
use crate::host;
use crate::snapshots::{SnapshotInfo, Store};
use crate::units::human_bytes;

#[derive(FromArgs, Debug)]
/// List the verified snapshots stored here (or on a peer's agent).
#[argh(subcommand, name = "snapshots")]
pub(crate) struct Args {
    /// ask this agent (HOST:PORT) instead of reading the local spool
    #[argh(option)]
    pub peer: Option<String>,
    /// file holding the agent's shared token (with --peer)
    #[argh(option)]
    pub token_file: Option<PathBuf>,
    /// plain HTTP, no TLS, payloads unsigned: for a network you trust (logs a warning)
    #[argh(switch)]
    pub insecure: bool,
    /// the local spool (default: the work dir)
    #[argh(option)]
    pub spool: Option<PathBuf>,
    /// print the list as JSON
    #[argh(switch)]
    pub json: bool,
}

pub(crate) fn run(context: &Context, args: Args) -> Result<()> {
    let snapshots: Vec<SnapshotInfo> = match &args.peer {
        Some(addr) => peer(addr, &link(args.token_file.as_deref(), args.insecure)?, Duration::from_secs(30)).snapshots()?,
        None => Store::new(args.spool.as_deref().unwrap_or(&context.work_dir)).list(),
    };
    if args.json {
        say!("{}", serde_json::json!(snapshots));
        return Ok(());
    }
    say!("{:<24} {:>10} {:<16} {:>8} {:>10} {:>8}", "snapshot", "generation", "source", "age", "size", "verified");
    let now = host::unix_now();
    for s in &snapshots {
        say!(
            "{:<24} {:>10} {:<16} {:>7}s {:>10} {:>8}",
            s.id,
            s.generation,
            s.source_agent.as_deref().unwrap_or(&s.source_host),
            now.saturating_sub(s.taken_unix),
            human_bytes(s.compressed_bytes),
            if s.verified { "yes" } else { "no" }
        );
    }
    Ok(())
}
