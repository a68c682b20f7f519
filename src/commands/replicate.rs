//! `ferry replicate`: snapshot a running container at every interval and keep
//! the snapshots on peers (see transfer/replicate.rs).

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use argh::FromArgs;

use super::Context;
use crate::error::{Error, Kind, Result};
use crate::transfer::client::Peer;
use crate::transfer::pace::Pace;
use crate::transfer::replicate::{replicate, Options};
use crate::units::parse_duration;

#[derive(FromArgs, Debug)]
/// Snapshot a running container at every interval and store the snapshots on peers.
#[argh(subcommand, name = "replicate")]
pub(crate) struct Args {
    /// the container's name or id
    #[argh(positional)]
    pub container: String,
    /// the peers' agents, HOST:PORT[,HOST:PORT…]
    #[argh(option)]
    pub to: String,
    /// time between snapshots, e.g. 2s, 30s, 5m
    #[argh(option, from_str_fn(parse_duration))]
    pub every: Duration,
    /// snapshots each peer keeps of this container (default 3)
    #[argh(option, default = "3")]
    pub keep: usize,
    /// file holding the agents' shared token
    #[argh(option)]
    pub token_file: Option<PathBuf>,
    /// plain HTTP, no TLS, payloads unsigned: for a network you trust (logs a warning)
    #[argh(switch)]
    pub insecure: bool,
    /// this host's agent, HOST:PORT, which peers ask before failing over (needed for their --failover-after)
    #[argh(option, long = "self")]
    pub self_agent: Option<String>,
    /// bytes per second toward all peers together, e.g. 2M (= 2 MiB/s): spares the uplink
    #[argh(option, from_str_fn(super::parse_rate))]
    pub limit_rate: Option<u64>,
    /// take one snapshot, send it to every peer, and exit (non-zero if a peer did not store it)
    #[argh(switch)]
    pub once: bool,
    /// seconds a peer may take to store one snapshot (default 120)
    #[argh(option, default = "120")]
    pub timeout: u64,
}

static STOP: AtomicBool = AtomicBool::new(false);

extern "C" fn request_stop(_signal: libc::c_int) {
    STOP.store(true, Ordering::SeqCst);
}

pub(crate) fn run(context: &Context, args: Args) -> Result<()> {
    if args.keep == 0 {
        return Err(Error::new(Kind::Usage, "--keep must be 1 or more"));
    }
    // SIGTERM (init systems) and SIGINT end the loop between snapshots.
    // SAFETY: the handler only stores to an atomic.
    unsafe {
        libc::signal(libc::SIGTERM, request_stop as *const () as libc::sighandler_t);
        libc::signal(libc::SIGINT, request_stop as *const () as libc::sighandler_t);
    }
    let engine = context.engine()?;
    let link = super::link(args.token_file.as_deref(), args.insecure)?;
    let timeout = Duration::from_secs(args.timeout);
    let peers = args.to.split(',').filter(|a| !a.trim().is_empty()).map(|addr| Peer::new(addr.trim(), &link, timeout)).collect();
    // Replicate keeps no board profile of its own: the global work dir and default buffers.
    let tuning = context.tuning(None)?;
    let options = Options {
        container: &args.container,
        peers,
        every: args.every,
        keep: args.keep,
        self_agent: args.self_agent,
        tuning: &tuning,
        fast: context.fast,
        signer: link.signer.as_deref().map(|s| s as &dyn crate::payload::Sign),
        pace: args.limit_rate.map(Pace::new),
        once: args.once,
    };
    replicate(&engine, options, &STOP)
}
