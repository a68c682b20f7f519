//! `ferry serve`: the agent that receives containers from peers.

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicI32, Ordering};
use std::time::Duration;

use argh::FromArgs;

use super::Context;
use crate::error::{Error, Kind, Result};
use crate::engine::Engine;
use crate::fleet::{self, etcd::Etcd, membership, Seat};
use crate::snapshots::Store;
use crate::host;
use crate::identity::Verifier;
use crate::transfer::client::Link;
use crate::transfer::agent::{Agent, Settings};
use crate::transfer::{self, server};
use crate::units::{parse_duration, parse_size};

#[derive(FromArgs, Debug)]
/// Run the agent that receives payloads and images from peers and restores them here.
#[argh(subcommand, name = "serve")]
pub(crate) struct Args {
    /// address to listen on, e.g. 0.0.0.0:7070
    #[argh(option)]
    pub listen: String,
    /// file holding a shared token peers must present besides their
    /// certificate (a second factor; required with --insecure unless
    /// anyone on the network may use the agent)
    #[argh(option)]
    pub token_file: Option<PathBuf>,
    /// plain HTTP without TLS: peers are not authenticated and unsigned
    /// payloads are accepted (trusted networks only; logs a warning)
    #[argh(switch)]
    pub insecure: bool,
    /// folder where received payloads are unpacked (default: the work dir)
    #[argh(option)]
    pub spool: Option<PathBuf>,
    /// refuse payloads larger than this (e.g. 512M, 2G)
    #[argh(option, from_str_fn(parse_size))]
    pub max_payload: Option<u64>,
    /// cap the containers this agent creates as this board profile says
    #[argh(option)]
    pub board: Option<String>,
    /// restore a replicated container by itself when its snapshots stop for
    /// this long (e.g. 10s) and its source's agent does not answer
    #[argh(option, from_str_fn(parse_duration))]
    pub failover_after: Option<Duration>,
    /// discard a migrated container prepared here but not committed by its
    /// source within this long (default 5m)
    #[argh(option, default = "Duration::from_secs(300)", from_str_fn(parse_duration))]
    pub handover_timeout: Duration,
    /// join the fleet kept in etcd at these client URLs (http://HOST:PORT
    /// or https://, comma-separated): this node's record lives as long as
    /// the agent renews its lease
    #[argh(option)]
    pub etcd: Option<String>,
    /// the CA that issued etcd's certificate, for https:// --etcd URLs
    /// (default: the fleet CA, ca.pem in the config dir)
    #[argh(option)]
    pub etcd_ca: Option<PathBuf>,
    /// this node's name in the fleet (default: the host name)
    #[argh(option)]
    pub node: Option<String>,
    /// where other agents reach this one, as the fleet records it (default:
    /// --listen, which must then name an address, not 0.0.0.0)
    #[argh(option)]
    pub advertise: Option<String>,
    /// seconds the fleet keeps this node's record after its last lease
    /// renewal (renewed every third of it; default 10)
    #[argh(option, default = "10")]
    pub lease_ttl: u64,
}

/// Set by SIGTERM or SIGINT when the node is in a fleet: the lease's thread
/// revokes the lease, then ends the process with that signal.
static LEAVE: AtomicBool = AtomicBool::new(false);
static LEAVE_SIGNAL: AtomicI32 = AtomicI32::new(0);

extern "C" fn request_leave(signal: libc::c_int) {
    LEAVE_SIGNAL.store(signal, Ordering::SeqCst);
    LEAVE.store(true, Ordering::SeqCst);
}

pub(crate) fn run(context: &Context, args: Args) -> Result<()> {
    // Checked before anything starts: a fleet option that cannot work is a usage error.
    let fleet = args.etcd.as_deref().map(|urls| fleet_member(&args, urls)).transpose()?;
    if fleet.is_none() && (args.node.is_some() || args.advertise.is_some() || args.etcd_ca.is_some()) {
        return Err(Error::new(Kind::Usage, "--node, --advertise and --etcd-ca are about this node's fleet: give --etcd URL too"));
    }
    let token = args.token_file.as_deref().map(transfer::load_token).transpose()?;
    let credentials = if args.insecure {
        log::warn!(
            "serving over plain HTTP (--insecure): peers are not authenticated, payloads cross the network readable \
             and unsigned payloads are accepted{}",
            if token.is_none() { format!(" — and WITHOUT a token anyone who reaches {} can run containers here", args.listen) } else { String::new() }
        );
        None
    } else {
        Some(super::credentials()?)
    };
    let verifier = match &credentials {
        Some(tls) => Verifier::new(tls.trust().clone(), Some(tls.identity()), false),
        None => Verifier::load(true)?,
    };
    let tuning = context.tuning(args.board.as_deref())?;
    let engine = context.engine()?;
    let spool = args.spool.unwrap_or_else(|| tuning.work_dir.clone());
    // Before the first restore can ask for it, and before anyone is told
    // this agent is up.
    if let Err(e) = std::fs::create_dir_all(&spool) {
        log::warn!("creating the spool {}: {e}", spool.display());
    }
    crate::migration::confinement::warm(&engine, &spool);
    let seat = match fleet {
        Some((etcd, who, ttl)) => {
            let seat = Seat { etcd: etcd.clone(), node: who.name.clone() };
            join_fleet(engine.clone(), Store::new(&spool), etcd, who, ttl)?;
            Some(seat)
        }
        None => None,
    };
    if let Some(board) = &tuning.board {
        log::info!("board {}: containers capped at {} MiB and {} CPUs", board.name, board.memory_mib, board.cpus);
    }
    let link = Link {
        token: token.clone(),
        signer: credentials.as_ref().map(|tls| tls.identity().clone()),
        tls: credentials.as_ref().map(|tls| tls.client_config()).transpose()?,
    };
    let acceptor = credentials.as_ref().map(|tls| tls.acceptor()).transpose()?;
    let settings = Settings {
        token,
        verifier,
        link,
        spool,
        max_payload: args.max_payload,
        fast: context.fast,
        tuning,
        failover_after: args.failover_after,
        handover_timeout: args.handover_timeout,
        fleet: seat,
    };
    server::serve(&Agent::new(engine, settings), &args.listen, acceptor)
}

/// Where and as whom this agent joins a fleet, and its lease's TTL.
fn fleet_member(args: &Args, urls: &str) -> Result<(Etcd, membership::Who, i64)> {
    let ttl = i64::try_from(args.lease_ttl).ok().filter(|ttl| *ttl >= 2).ok_or_else(|| {
        Error::new(Kind::Usage, format!("--lease-ttl {}: give 2 seconds or more (renewed every third of it)", args.lease_ttl))
    })?;
    let name = args.node.clone().unwrap_or_else(host::hostname);
    let agent = fleet::advertised_agent(&args.listen, args.advertise.as_deref())?;
    let who = membership::Who { name: fleet::checked_name("--node", &name)?, agent, board: args.board.clone() };
    Ok((super::etcd_client(urls, args.etcd_ca.as_deref())?, who, ttl))
}

/// Joins the fleet and keeps this node's lease alive until SIGTERM or
/// SIGINT, which revoke it before the agent ends.
fn join_fleet(engine: Engine, store: Store, etcd: Etcd, who: membership::Who, ttl: i64) -> Result<()> {
    // SAFETY: the handler only stores to atomics.
    unsafe {
        libc::signal(libc::SIGTERM, request_leave as *const () as libc::sighandler_t);
        libc::signal(libc::SIGINT, request_leave as *const () as libc::sighandler_t);
    }
    membership::start(etcd, engine, store, who, ttl, &LEAVE, || {
        // Dying of the signal, as without a fleet: init systems read it.
        let signal = LEAVE_SIGNAL.load(Ordering::SeqCst);
        // SAFETY: restoring the default action and raising a signal.
        unsafe {
            libc::signal(signal, libc::SIG_DFL);
            libc::raise(signal);
        }
    })
}
