//! `ferry failover`: on a surviving host, restore a container from the newest
//! verified snapshot a peer replicated here.

use std::path::PathBuf;

use argh::FromArgs;
use serde_json::json;

use super::restore::{restore_unpacked, Options};
use super::{print_report, Context};
use crate::engine::Engine;
use crate::error::{Error, Kind, Result};
use crate::host;
use crate::snapshots::{Failover, Store};

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
    let options = Options { name: None, fast: context.fast, board: tuning.board.as_ref(), max_raw_bytes: None };
    let done = failover(&engine, &Store::new(&spool), &args.container, generation, &options)?;
    let line = format!(
        "failed over {} from snapshot {} taken {}s ago on {}: restored in {:.2}s as {}",
        done.container,
        done.generation,
        done.snapshot_age_secs,
        done.source_host,
        done.restore_secs,
        &done.container_id[..12.min(done.container_id.len())]
    );
    let json = args.json.then(|| json!(done));
    print_report(&line, json.as_ref(), false);
    Ok(())
}

/// Restores `container` from a stored snapshot and records the failover, so
/// that its source, should it come back, stops its own copy. Shared by the
/// command and the agent's automatic failover.
pub(crate) fn failover(
    engine: &Engine,
    store: &Store,
    container: &str,
    generation: Option<u64>,
    options: &Options<'_>,
) -> Result<Failover> {
    if engine.inspect_container(container).is_ok_and(|c| c.state.running) {
        return Err(Error::new(
            Kind::Refused,
            format!("a container named '{container}' already runs on this host — nothing to fail over"),
        ));
    }
    let checkout = store.checkout(container, generation)?;
    let info = engine.info()?;
    log::info!("failing {container} over from snapshot {} (taken {}s ago)", checkout.info.id, host::unix_now().saturating_sub(checkout.info.taken_unix));
    let report = restore_unpacked(engine, &info, checkout.path(), &checkout.manifest, options)?;
    let done = Failover {
        container: container.to_string(),
        generation: checkout.info.generation,
        source_host: checkout.info.source_host.clone(),
        source_agent: checkout.info.source_agent.clone(),
        restored_unix: host::unix_now(),
        container_id: report.id,
        snapshot_age_secs: host::unix_now().saturating_sub(checkout.info.taken_unix),
        restore_secs: report.restore_secs,
        running: true,
    };
    store.record_failover(&done)?;
    checkout.used();
    Ok(done)
}
