//! Periodic snapshots of a running container, kept on peers, so that a
//! surviving peer can fail it over.
//!
//! Each snapshot is a leave-running checkpoint packed once into a file, then
//! streamed to every peer by a thread of its own. A peer still receiving the
//! previous snapshot is skipped this round: a slow or dead peer stalls no
//! other and piles nothing up (at most one file per peer in flight).

use std::fs::File;
use std::io::BufWriter;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use super::client::Peer;
use super::pace::{Pace, Paced};
use crate::board::Tuning;
use crate::engine::Engine;
use crate::error::{io_error, Error, Kind, Result};
use crate::migration::{checkpoint, preflight};
use crate::payload::delta::Offer;
use crate::payload::{Mode, SnapshotTag};
use crate::units::human_bytes;

/// What to replicate, where, and how often.
pub(crate) struct Options<'a> {
    pub container: &'a str,
    pub peers: Vec<Peer>,
    pub every: Duration,
    /// Snapshots each peer keeps of this container.
    pub keep: usize,
    /// This host's agent, which peers ask before failing over.
    pub self_agent: Option<String>,
    pub tuning: &'a Tuning,
    pub fast: bool,
    /// Signs every snapshot (None: unsigned, for peers run with --insecure).
    pub signer: Option<&'a dyn crate::payload::Sign>,
    /// `--limit-rate`: one pace for every peer, as they share the uplink.
    pub pace: Option<Pace>,
    /// One snapshot to every peer, then return (an error if a peer did not store it).
    pub once: bool,
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

/// Snapshots at every interval until `stop` is set, then waits (a bounded
/// time) for the snapshots still on their way.
pub(crate) fn replicate(engine: &Engine, options: Options<'_>, stop: &AtomicBool) -> Result<()> {
    let Options { container, peers, every, keep, .. } = options;
    let targets: Vec<Target> =
        peers.into_iter().map(|peer| Target { peer: Arc::new(peer), busy: Arc::new(AtomicBool::new(false)) }).collect();
    if targets.is_empty() {
        return Err(Error::new(Kind::Usage, "--to names no peer: give HOST:PORT[,HOST:PORT…]"));
    }
    // A peer that could not run a snapshot is refused now, not at failover.
    // Snapshots go in one pass if every peer reads that format.
    let cpu = crate::host::cpu();
    let mut one_pass = true;
    for target in &targets {
        let info = target.peer.info();
        one_pass &= info.as_ref().is_ok_and(|info| info.reads_one_pass());
        if let Ok(info) = info
            && let Some(why) = cpu.cannot_run_on(&info.cpu)
        {
            return Err(Error::new(Kind::Refused, format!("the peer {} could not fail {container} over: {why}", target.peer.addr())));
        }
    }
    let state_dir = options.tuning.work_dir.join("replicate");
    std::fs::create_dir_all(&state_dir).map_err(|e| io_error(state_dir.display(), e))?;
    let generation_file = state_dir.join(format!("{container}.generation"));
    let mut generation = read_generation(&generation_file);
    let names: Vec<&str> = targets.iter().map(|t| t.peer.addr()).collect();
    log::info!("replicating {container} to {} every {:.1}s, keeping {keep} per peer", names.join(","), every.as_secs_f64());

    let failed = Arc::new(AtomicUsize::new(0));
    while !stop.load(Ordering::SeqCst) {
        let round = Instant::now();
        stop_if_failed_over(engine, &targets, container)?;
        let tag = SnapshotTag { generation: generation + 1, source_agent: options.self_agent.clone() };
        let offer = common_offer(&targets, container);
        let how = (options.tuning, options.fast, options.signer, one_pass);
        match snapshot(engine, container, how, &state_dir, tag, offer.as_ref()) {
            Ok(Some(file)) => {
                generation += 1;
                std::fs::write(&generation_file, generation.to_string()).map_err(|e| io_error(generation_file.display(), e))?;
                send_to_peers(&targets, file, generation, keep, options.pace.as_ref(), &failed);
            }
            Ok(None) if options.once => return Err(Error::new(Kind::Refused, format!("{container} does not run here: no snapshot taken"))),
            Ok(None) => {}
            Err(e) if options.once => return Err(e),
            Err(e) => log::error!("snapshot {} of {container} failed: {e}", generation + 1),
        }
        if options.once {
            break;
        }
        while !stop.load(Ordering::SeqCst) && round.elapsed() < every {
            thread::sleep(Duration::from_millis(50).min(every));
        }
    }
    log::info!("stopping: waiting for snapshots on their way to peers");
    // --once waits as long as a peer may take to answer; a stop, briefly.
    let wait = if options.once { targets.iter().map(|t| t.peer.timeout()).max().unwrap_or_default() } else { Duration::from_secs(10) };
    let deadline = Instant::now() + wait;
    while targets.iter().any(|t| t.busy.load(Ordering::SeqCst)) && Instant::now() < deadline {
        thread::sleep(Duration::from_millis(50));
    }
    let failed = failed.load(Ordering::SeqCst);
    if options.once && (failed > 0 || targets.iter().any(|t| t.busy.load(Ordering::SeqCst))) {
        return Err(Error::new(Kind::Peer, format!("snapshot {generation} of {container} was not stored by every peer (see above)")));
    }
    Ok(())
}

/// The blocks every peer holds of `container`: a snapshot is packed once
/// for all of them, so its delta may refer only to blocks they all have.
fn common_offer(targets: &[Target], container: &str) -> Option<(Offer, String)> {
    let mut common: Option<(Offer, String)> = None;
    for target in targets {
        let (offer, base) = super::migrate::ask_blocks(&target.peer, container)?;
        common = Some(match common {
            None => (offer, base),
            Some((mut held, label)) => {
                held.ids.retain(|id| offer.ids.contains(id));
                (held, label)
            }
        });
    }
    common
}

fn read_generation(path: &Path) -> u64 {
    std::fs::read_to_string(path).ok().and_then(|t| t.trim().parse().ok()).unwrap_or(0)
}

/// Takes one leave-running snapshot into a file; `None` when the container
/// does not run (it is waited for, not an error).
fn snapshot(
    engine: &Engine,
    container: &str,
    (tuning, fast, signer, one_pass): (&Tuning, bool, Option<&dyn crate::payload::Sign>, bool),
    state_dir: &Path,
    tag: SnapshotTag,
    offer: Option<&(Offer, String)>,
) -> Result<Option<Arc<SnapshotFile>>> {
    let running = engine.inspect_container(container).is_ok_and(|c| c.state.running);
    if !running {
        log::warn!("{container} does not run here: no snapshot this round");
        return Ok(None);
    }
    let info = engine.info()?;
    let carryable = preflight::check(engine, &info, container, Mode::Criu)?;
    let options = checkpoint::Options { tuning, leave_running: true, fast };
    let mut taken = checkpoint::take(engine, &info, &carryable, &options)?;
    let generation = tag.generation;
    taken.manifest.snapshot = Some(tag);
    let path = state_dir.join(format!("{container}-{generation}.ferry"));
    let file = Arc::new(SnapshotFile(path.clone()));
    let sink = BufWriter::with_capacity(tuning.io_buffer, File::create(&path).map_err(|e| io_error(path.display(), e))?);
    let stats = taken.pack_into(sink, signer, offer.map(|(offer, base)| (offer, base.as_str())), one_pass)?;
    log::info!(
        "snapshot {generation} of {container}: app frozen {:.3}s ({}), {} to send",
        taken.frozen_secs,
        taken.checkpoint_path,
        human_bytes(stats.compressed_bytes)
    );
    Ok(Some(file))
}

fn send_to_peers(targets: &[Target], file: Arc<SnapshotFile>, generation: u64, keep: usize, pace: Option<&Pace>, failed: &Arc<AtomicUsize>) {
    for target in targets {
        if target.busy.swap(true, Ordering::SeqCst) {
            log::warn!("snapshot {generation}: {} still receives the previous one — skipped", target.peer.addr());
            continue;
        }
        let (peer, busy, file, pace, failed) = (target.peer.clone(), target.busy.clone(), file.clone(), pace.cloned(), failed.clone());
        thread::spawn(move || {
            let started = Instant::now();
            let sent = File::open(&file.0)
                .map_err(|e| io_error(file.0.display(), e))
                .and_then(|payload| peer.send_snapshot(&mut Paced::new(payload, pace), keep));
            match sent {
                Ok(stored) => log::info!(
                    "snapshot {generation} → {}: stored as {} in {:.2}s",
                    peer.addr(),
                    stored.id,
                    started.elapsed().as_secs_f64()
                ),
                Err(e) => {
                    log::warn!("snapshot {generation} → {}: {e}", peer.addr());
                    failed.fetch_add(1, Ordering::SeqCst);
                }
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
