//! `ferry failover`: on a surviving host, restore a container from the newest
//! verified snapshot a peer replicated here.

use std::path::PathBuf;

use argh::FromArgs;

use super::{print_report, Context};
use crate::error::{Error, Kind, Result};
use crate::identity::Verifier;
use crate::migration::failover::failover;
use crate::migration::restore::Options;
use crate::snapshots::Store;
use crate::units::short_id;

#[derive(FromArgs, Debug)]
/// Restore a container here from its newest verified replicated snapshot.
#[argh(subcommand, name = "failover")]
pub(crate) struct Args {
    /// the container's name, as it was on its source host
    #[argh(positional)]
    pub container: String,
    /// a snapshot id (NAME@GENERATION, or the generation) instead of the newest
    #[argh(option)]
    pub snapshot: Option<String>,
    /// the agent's spool holding the snapshots (default: the work dir)
    #[argh(option)]
    pub spool: Option<PathBuf>,
    /// cap the restored container as this board profile says
    #[argh(option)]
    pub board: Option<String>,
    /// restore a snapshot that is unsigned (replicated with --insecure) or
    /// signed by a key this host no longer trusts
    #[argh(switch)]
    pub accept_untrusted: bool,
    /// print the report as one JSON object
    #[argh(switch)]
    pub json: bool,
}

pub(crate) fn run(context: &Context, args: Args) -> Result<()> {
    let tuning = context.tuning(args.board.as_deref())?;
    let spool = args.spool.clone().unwrap_or(tuning.work_dir);
    let generation = match args.snapshot.as_deref() {
        None => None,
        Some(id) => {
            let number = id.rsplit_once('@').map_or(id, |(_, g)| g);
            Some(number.parse::<u64>().map_err(|_| {
                Error::new(Kind::Usage, format!("'{id}' is not a snapshot id (NAME@GENERATION) — `ferry snapshots` lists them"))
            })?)
        }
    };
    let engine = context.engine()?;
    let verifier = Verifier::load(args.accept_untrusted)?;
    let options = Options {
        name: None,
        fast: context.fast,
        board: tuning.board.as_ref(),
        size_limit: None,
        allow_host_mismatch: false,
        verify: &verifier,
    };
    let done = failover(&engine, &Store::new(&spool), &args.container, generation, &options)?;
    let line = format!(
        "failed over {} from snapshot {} taken {}s ago on {}: restored in {:.2}s as {}",
        done.container,
        done.generation,
        done.snapshot_age_secs,
        done.source_host,
        done.restore_secs,
        short_id(&done.container_id)
    );
    print_report(&line, &done, args.json, false);
    Ok(())
}
