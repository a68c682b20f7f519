//! `ferry migrate`: move a running container to a peer in one command (see
//! transfer/migrate.rs for the steps and the rollback).

use std::path::PathBuf;
use std::time::Duration;

use argh::FromArgs;

use super::{link, parse_rate, peer, print_report, Context};
use crate::error::Result;
use crate::transfer::migrate::{migrate, Options, ShipImage};
use crate::units::human_bytes;

#[derive(FromArgs, Debug)]
/// Move a running container to the ferry agent on another host.
#[argh(subcommand, name = "migrate")]
pub(crate) struct Args {
    /// the container's name or id
    #[argh(positional)]
    pub container: String,
    /// the peer's agent, HOST:PORT
    #[argh(option)]
    pub to: String,
    /// file holding the agent's shared token
    #[argh(option)]
    pub token_file: Option<PathBuf>,
    /// plain HTTP, no TLS, payloads unsigned: for a network you trust (logs a warning)
    #[argh(switch)]
    pub insecure: bool,
    /// send the image when the peer lacks it (auto, default), always, or never
    #[argh(option, default = "ShipImage::Auto")]
    pub ship_image: ShipImage,
    /// leave the source container stopped instead of removing it
    #[argh(switch)]
    pub keep_source: bool,
    /// seconds to wait for the peer's answer (default 300)
    #[argh(option, default = "300")]
    pub timeout: u64,
    /// bytes per second toward the peer, e.g. 2M (= 2 MiB/s): spares the uplink, lengthens the downtime
    #[argh(option, from_str_fn(parse_rate))]
    pub limit_rate: Option<u64>,
    /// use this board profile's buffer and lz4 block sizes and work dir
    #[argh(option)]
    pub board: Option<String>,
    /// pre-copy: send the app's memory while it runs, then freeze it and send only what changed (see --precopy-rounds)
    #[argh(switch)]
    pub precopy: bool,
    /// the most pre-copy rounds before the final freeze (default 4)
    #[argh(option, default = "4")]
    pub precopy_rounds: u32,
    /// print the report as one JSON object
    #[argh(switch)]
    pub json: bool,
}

pub(crate) fn run(context: &Context, args: Args) -> Result<()> {
    let tuning = context.tuning(args.board.as_deref())?;
    let engine = context.engine()?;
    let peer = peer(&args.to, &link(args.token_file.as_deref(), args.insecure)?, Duration::from_secs(args.timeout));
    let options = Options {
        tuning: &tuning,
        fast: context.fast,
        ship_image: args.ship_image,
        keep_source: args.keep_source,
        limit_rate: args.limit_rate,
        precopy: args.precopy.then_some(args.precopy_rounds),
        before_commit: None,
    };
    let report = migrate(&engine, &peer, &args.container, &options)?;
    let precopy = match &report.precopy_stopped {
        Some(why) => format!(
            ", after {} pre-copy round(s) in {:.2}s ({why})",
            report.precopy_rounds.len(),
            report.precopy_rounds.iter().map(|r| r.secs).sum::<f64>()
        ),
        None => String::new(),
    };
    let delta = match &report.delta_base {
        Some(base) if !report.fallback_full => format!(", a delta against {base}"),
        _ if report.fallback_full => ", whole (the peer had lost the delta's base)".to_string(),
        _ => String::new(),
    };
    let line = format!(
        "migrated {} to {}: save {:.2}s, transfer {:.2}s, resume {:.2}s, downtime {:.2}s, {} sent ({} raw){delta}{precopy}{}{}",
        report.container,
        report.peer,
        report.save_secs,
        report.transfer_secs,
        report.resume_secs,
        report.total_secs,
        human_bytes(report.bytes_sent),
        human_bytes(report.raw_bytes),
        if report.image_shipped { format!(", image shipped in {:.2}s", report.image_secs) } else { String::new() },
        report.limit_rate_bytes_per_sec.map(|rate| format!(", limited to {}/s", human_bytes(rate))).unwrap_or_default()
    );
    print_report(&line, &report, args.json, false);
    Ok(())
}
