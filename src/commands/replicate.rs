//! `ferry replicate`: snapshot a running container at every interval and keep
//! the snapshots on peers, so that a surviving peer can fail it over.
//!
//! Each snapshot is a leave-running checkpoint packed once into a file, then
//! streamed to every peer by a thread of its own. A peer still receiving the
//! previous snapshot is skipped this round: a slow or dead peer stalls no
//! other and piles nothing up (at most one file per peer in flight).

use std::fs::File;
use std::io::BufWriter;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use argh::FromArgs;

use super::checkpoint::take;
use super::{human_bytes, Context};
use crate::engine::Engine;
use crate::error::{io_error, Error, Kind, Result};
use crate::payload::{Mode, SnapshotTag};
use crate::transfer::{self, client::Peer};

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
    #[argh(option, from_str_fn(super::parse_duration))]
    pub every: Duration,
    /// snapshots each peer keeps of this container (default 3)
    #[argh(option, default = "3")]
    pub keep: usize,
    /// file holding the agents' shared token
    #[argh(option)]
    pub token_file: Option<PathBuf>,
    /// this host's agent, HOST:PORT, which peers ask before failing over (needed for their --failover-after)
    #[argh(option, long = "self")]
    pub self_agent: Option<String>,
    /// seconds a peer may take to store one snapshot (default 120)
    #[argh(option, default = "120")]
    pub timeout: u64,
}

static STOP: AtomicBool = AtomicBool::new(false);

extern "C" fn request_stop(_signal: libc::c_int) {
    STOP.store(true, Ordering::SeqCst);
}

/// One peer and whether a snapshot is on its way to it.
struct Target {
    peer: Arc<Peer>,
    busy: Arc<AtomicBool>,
}

/// A snapshot file, deleted once the last sender is done with it.
struct SnapshotFile(PathBuf);

impl Drop for SnapshotFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
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
    let token = args.token_file.as_deref().map(transfer::load_token).transpose()?;
    let targets: Vec<Target> = args
        .to
        .split(',')
        .filter(|a| !a.trim().is_empty())
        .map(|addr| Target {
            peer: Arc::new(Peer::new(addr.trim(), token.clone(), Duration::from_secs(args.timeout))),
            busy: Arc::new(AtomicBool::new(false)),
        })
        .collect();
    if targets.is_empty() {
        return Err(Error::new(Kind::Usage, "--to names no peer: give HOST:PORT[,HOST:PORT…]"));
    }
    let state_dir = context.work_dir.join("replicate");
    std::fs::create_dir_all(&state_dir).map_err(|e| io_error(state_dir.display(), e))?;
    let generation_file = state_dir.join(format!("{}.generation", args.container));
    let mut generation = read_generation(&generation_file);
    log::info!("replicating {} to {} every {:.1}s, keeping {} per peer", args.container, args.to, args.every.as_secs_f64(), args.keep);

    while !STOP.load(Ordering::SeqCst) {
        let round = Instant::now();
        stop_if_failed_over(&engine, &targets, &args.container)?;
        match snapshot(context, &engine, &args, &state_dir, generation + 1) {
            Ok(Some(file)) => {
                generation += 1;
                std::fs::write(&generation_file, generation.to_string()).map_err(|e| io_error(generation_file.display(), e))?;
                send_to_peers(&targets, file, generation, args.keep);
            }
            Ok(None) => {}
            Err(e) => log::error!("snapshot {} of {} failed: {e}", generation + 1, args.container),
        }
        while !STOP.load(Ordering::SeqCst) && round.elapsed() < args.every {
            thread::sleep(Duration::from_millis(50).min(args.every));
        }
    }
    log::info!("stopping: waiting for snapshots on their way to peers");
    let deadline = Instant::now() + Duration::from_secs(10);
    while targets.iter().any(|t| t.busy.load(Ordering::SeqCst)) && Instant::now() < deadline {
        thread::sleep(Duration::from_millis(50));
    }
    Ok(())
}

fn read_generation(path: &Path) -> u64 {
    std::fs::read_to_string(path).ok().and_then(|t| t.trim().parse().ok()).unwrap_or(0)
}

/// Takes one leave-running snapshot into a file; `None` when the container
/// does not run (it is waited for, not an error).
fn snapshot(context: &Context, engine: &Engine, args: &Args, state_dir: &Path, generation: u64) -> Result<Option<Arc<SnapshotFile>>> {
    let running = engine.inspect_container(&args.container).is_ok_and(|c| c.state.running);
    if !running {
        log::warn!("{} does not run here: no snapshot this round", args.container);
        return Ok(None);
    }
    let info = engine.info()?;
    let mut taken = take(engine, &info, &context.work_dir, &args.container, Mode::Criu, true, context.fast)?;
    taken.manifest.snapshot = Some(SnapshotTag { generation, source_agent: args.self_agent.clone() });
    let path = state_dir.join(format!("{}-{generation}.ferry", args.container));
    let file = Arc::new(SnapshotFile(path.clone()));
    let sink = BufWriter::with_capacity(64 * 1024, File::create(&path).map_err(|e| io_error(path.display(), e))?);
    let stats = taken.pack_into(sink)?;
    log::info!(
        "snapshot {generation} of {}: app frozen {:.3}s ({}), {} to send",
        args.container,
        taken.frozen_secs,
        taken.checkpoint_path,
        human_bytes(stats.compressed_bytes)
    );
    Ok(Some(file))
}

fn send_to_peers(targets: &[Target], file: Arc<SnapshotFile>, generation: u64, keep: usize) {
    for target in targets {
        if target.busy.swap(true, Ordering::SeqCst) {
            log::warn!("snapshot {generation}: {} still receives the previous one — skipped", target.peer.addr());
            continue;
        }
        let (peer, busy, file) = (target.peer.clone(), target.busy.clone(), file.clone());
        thread::spawn(move || {
            let started = Instant::now();
            let sent = File::open(&file.0)
                .map_err(|e| io_error(file.0.display(), e))
                .and_then(|mut payload| peer.send_snapshot(&mut payload, keep));
            match sent {
                Ok(stored) => log::info!(
                    "snapshot {generation} → {}: stored as {} in {:.2}s",
                    peer.addr(),
                    stored.id,
                    started.elapsed().as_secs_f64()
                ),
                Err(e) => log::warn!("snapshot {generation} → {}: {e}", peer.addr()),
            }
            drop(file);
            busy.store(false, Ordering::SeqCst);
        });
    }
}

/// Split brain guard: if a peer failed this container over and its copy runs
/// there, this host must not run a second one. Stops the local copy and ends.
fn stop_if_failed_over(engine: &Engine, targets: &[Target], container: &str) -> Result<()> {
    for target in targets {
        let Ok(failovers) = target.peer.failovers() else { continue };
        let Some(failover) = failovers.into_iter().find(|f| f.container == container && f.running) else { continue };
        let local = engine.inspect_container(container);
        if let Ok(local) = &local
            && local.state.running
        {
            log::warn!("{container} was failed over to {} (generation {}): stopping the copy here", target.peer.addr(), failover.generation);
            engine.stop_container(&local.id, 10)?;
        }
        return Err(Error::new(
            Kind::Refused,
            format!(
                "{container} was failed over to {} from snapshot {} and runs there; this host's copy is stopped — \
                 migrate it back or remove it there before replicating again",
                target.peer.addr(),
                failover.generation
            ),
        ));
    }
    Ok(())
}
