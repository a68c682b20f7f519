//! `ferry serve`: the agent that receives containers from peers.

use std::path::PathBuf;
use std::time::Duration;

use argh::FromArgs;

use super::Context;
use crate::error::Result;
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
}

pub(crate) fn run(context: &Context, args: Args) -> Result<()> {
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
        spool: args.spool.unwrap_or_else(|| tuning.work_dir.clone()),
        max_payload: args.max_payload,
        fast: context.fast,
        tuning,
        failover_after: args.failover_after,
        handover_timeout: args.handover_timeout,
    };
    server::serve(&Agent::new(engine, settings), &args.listen, acceptor)
}
