//! `ferry balance`: one balancer for the fleet, elected through etcd, moving
//! at most one container per round (see transfer/balance.rs).

use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use argh::FromArgs;

use super::Context;
use crate::error::{Error, Kind, Result};
use crate::fleet::moves::LastMove;
use crate::fleet::plan::Policy;
use crate::transfer::balance::{balance, Options};
use crate::units::parse_duration;

/// The shortest lease a balancer takes: etcd grants none much shorter, and a
/// lease of a few seconds lets a balancer ride out a slow etcd.
const MIN_LEASE_TTL_SECS: u64 = 6;

#[derive(FromArgs, Debug)]
/// Balance the fleet: one balancer at a time (elected through etcd) moves at most one container per round.
#[argh(subcommand, name = "balance")]
pub(crate) struct Args {
    /// etcd's client URLs, comma-separated (http://HOST:PORT or https://…)
    #[argh(option)]
    etcd: String,
    /// the CA that issued etcd's certificate, for https URLs (default: the
    /// fleet CA, ca.pem in the config dir)
    #[argh(option)]
    etcd_ca: Option<PathBuf>,
    /// time between rounds, at least 1s (default 10s)
    #[argh(option, from_str_fn(parse_duration), default = "Duration::from_secs(10)")]
    every: Duration,
    /// spread (default: even out memory, move only what lowers the busiest node) or rotate (one move every round)
    #[argh(option, from_str_fn(parse_policy), default = "Policy::Spread")]
    policy: Policy,
    /// one round, then exit: 0 if a container moved or nothing had to, the move's exit code if it failed
    #[argh(switch)]
    once: bool,
    /// stop after this many rounds
    #[argh(option)]
    rounds: Option<u64>,
    /// the JSON-lines log of every move tried (default: WORK_DIR/fleet-migrations.jsonl)
    #[argh(option)]
    log: Option<PathBuf>,
    /// seconds another balancer waits to take over if this one dies (default: 3 rounds, at least 6)
    #[argh(option)]
    lease_ttl: Option<u64>,
    /// file holding the agents' shared token
    #[argh(option)]
    token_file: Option<PathBuf>,
    /// plain HTTP, no TLS: for a network you trust (logs a warning)
    #[argh(switch)]
    insecure: bool,
    /// print each move as one JSON object (the log file's line)
    #[argh(switch)]
    json: bool,
}

fn parse_policy(text: &str) -> std::result::Result<Policy, String> {
    text.parse()
}

/// SIGTERM and SIGINT, counted: the first stops between rounds, a second
/// stops waiting for a move's answer.
static SIGNALS: AtomicUsize = AtomicUsize::new(0);

extern "C" fn count_signal(_signal: libc::c_int) {
    SIGNALS.fetch_add(1, Ordering::SeqCst);
}

pub(crate) fn run(context: &Context, args: Args) -> Result<()> {
    if args.every < Duration::from_secs(1) {
        return Err(Error::new(
            Kind::Usage,
            format!("--every {:?} is too short: give 1s or more (a round reads the whole fleet from etcd)", args.every),
        ));
    }
    if args.rounds == Some(0) {
        return Err(Error::new(Kind::Usage, "--rounds 0 would do nothing: give 1 or more, or leave it out to run until stopped"));
    }
    let lease_ttl_secs = match args.lease_ttl {
        Some(0) => return Err(Error::new(Kind::Usage, "--lease-ttl must be 1 or more seconds")),
        Some(secs) => secs,
        None => (3 * args.every.as_secs_f64().ceil() as u64).max(MIN_LEASE_TTL_SECS),
    };
    // SAFETY: the handler only adds to an atomic.
    unsafe {
        libc::signal(libc::SIGTERM, count_signal as *const () as libc::sighandler_t);
        libc::signal(libc::SIGINT, count_signal as *const () as libc::sighandler_t);
    }
    let etcd = super::etcd_client(&args.etcd, args.etcd_ca.as_deref())?;
    let link = super::link(args.token_file.as_deref(), args.insecure)?;
    let log = args.log.unwrap_or_else(|| context.work_dir.join("fleet-migrations.jsonl"));
    let options = Options {
        etcd,
        policy: args.policy,
        every: args.every,
        lease_ttl_secs: i64::try_from(lease_ttl_secs).unwrap_or(i64::MAX),
        link: &link,
        log: &log,
        once: args.once,
        rounds: args.rounds,
    };
    let json = args.json;
    balance(options, &SIGNALS, &mut |record| super::print_report(&line(record), record, json, false))
}

/// A move tried, for a person.
fn line(record: &LastMove) -> String {
    let route = format!("{} {} → {}", record.container, record.from, record.to);
    match (&record.made, &record.error) {
        (Some(made), _) => format!(
            "moved {route} (generation {}) in {:.1} s: downtime {:.2} s, {:.1} MiB sent",
            made.generation,
            made.elapsed_secs,
            made.downtime_secs,
            made.bytes_sent as f64 / (1 << 20) as f64
        ),
        (None, error) => format!("could not move {route}: {}", error.as_deref().unwrap_or("no reason given")),
    }
}
