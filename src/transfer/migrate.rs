//! The source side of a migration: check the peer, ship the image if needed,
//! checkpoint, stream the payload to the peer's agent, and remove the source
//! only once the peer answers that the app runs there.
//!
//! The steps, as the paper's Table 1 names them: Save (checkpoint), Transfer
//! (pack and stream to the peer's agent, no intermediate file; the agent
//! unpacks, verifies and creates the container as the bytes arrive), Resume
//! (the commit: the peer starts it).
//!
//! The handover has two phases so that the app never runs on both hosts.
//! Until the commit is sent, any failure starts the app again here: the peer
//! never runs a prepared container without a commit, and discards it. Once
//! the commit may have been sent, only the peer knows: if its answer is lost
//! and it stays out of reach, the app stays stopped here, its checkpoint and
//! journal entry kept, and ferry exits with "outcome unknown" (10) for
//! `ferry recover` to settle when the peer answers again.

use std::io::{self, BufWriter, Read, Write};
use std::sync::atomic::{AtomicU64, Ordering};
use std::thread;
use std::time::{Duration, Instant};

use serde::Serialize;

use super::client::Peer;
use super::journal::{Entry, Journal, Phase};
use super::downtime::{critical_path, Step};
use super::pace::{Pace, Paced};
use super::{Outcome, PeerInfo, RestoreReport};
use crate::board::Tuning;
use crate::engine::Engine;
use crate::error::{io_error, Error, Kind, Result};
use crate::host;
use crate::migration::checkpoint::{self, Taken};
use crate::migration::preflight;
use crate::payload::delta::Offer;
use crate::payload::{normalize_arch, Mode, PackStats};
use crate::units::{seconds_since, Progress};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum ShipImage {
    Auto,
    Always,
    Never,
}

impl std::str::FromStr for ShipImage {
    type Err = String;

    fn from_str(text: &str) -> std::result::Result<ShipImage, String> {
        match text {
            "auto" => Ok(ShipImage::Auto),
            "always" => Ok(ShipImage::Always),
            "never" => Ok(ShipImage::Never),
            other => Err(format!("unknown --ship-image '{other}': use auto, always or never")),
        }
    }
}

/// How to migrate, beside the container and the peer.
#[derive(Clone, Copy)]
pub(crate) struct Options<'a> {
    pub tuning: &'a Tuning,
    pub fast: bool,
    pub ship_image: ShipImage,
    /// Leave the stopped source container instead of removing it.
    pub keep_source: bool,
    /// Bytes per second toward the peer (image and payload), if limited.
    pub limit_rate: Option<u64>,
    /// Pre-copy: at most this many rounds while the app runs (`--precopy`).
    pub precopy: Option<u32>,
    /// Called once the container is prepared on the peer, just before the
    /// commit is sent: an error gives the migration up (the app runs on
    /// here, the peer discards its copy). A fleet records the move in etcd
    /// here, so that the decision and the commit cannot part.
    pub before_commit: Option<&'a dyn Fn() -> Result<()>>,
}

/// The paper's Table 1 for one migration.
#[derive(Debug, Clone, Default, Serialize)]
pub(crate) struct Report {
    pub container: String,
    pub peer: String,
    pub peer_container_id: String,
    pub image_shipped: bool,
    pub image_secs: f64,
    /// Checkpoint: from the freeze to CRIU's images on disk.
    pub save_secs: f64,
    /// Packing and streaming the payload to the peer.
    pub transfer_secs: f64,
    /// The peer's restore: creating the container until it runs.
    pub resume_secs: f64,
    /// The commit request, sent to its answer: the peer's start plus what the
    /// two-phase handover adds (a journal write here, a round trip, a ledger
    /// write there).
    pub commit_secs: f64,
    /// From the freeze to the peer's answer: how long the app was away.
    pub total_secs: f64,
    pub bytes_sent: u64,
    pub raw_bytes: u64,
    /// `--limit-rate`: the pace of the bytes sent to the peer (None: unlimited).
    pub limit_rate_bytes_per_sec: Option<u64>,
    /// Which checkpoint path ran: `docker-api` or `runc` (see README).
    pub checkpoint_path: &'static str,
    /// ferry's own peak RSS here, and the agent's on the peer.
    pub peak_rss_kib: u64,
    pub peer_peak_rss_kib: u64,
    /// How long the app was away: from the (last) freeze until it ran on the
    /// peer (= `total_secs`).
    pub downtime_secs: f64,
    /// The whole command, pre-copy rounds and image included.
    pub elapsed_secs: f64,
    /// The pre-copy rounds (`--precopy`), each a leave-running checkpoint
    /// sent as a delta while the app ran.
    pub precopy_rounds: Vec<super::precopy::Round>,
    /// Why the rounds ended.
    pub precopy_stopped: Option<String>,
    /// What the peer held that the payload was a delta against (None: sent whole).
    pub delta_base: Option<String>,
    /// Payload sends: more than one after a broken connection was resumed or
    /// a delta fell back to a whole payload.
    pub attempts: u32,
    /// Payload bytes handed to the connection across every attempt: after a
    /// broken connection, an upper bound of what crossed (what was still in
    /// the sockets' buffers at the break is counted too).
    pub bytes_sent_total: u64,
    /// The peer no longer held the delta's base: the payload was sent whole.
    pub fallback_full: bool,
    /// The peer's receiving and checking of the payload, and its creating
    /// the container and putting its files back (before the commit).
    pub peer_unpack_secs: f64,
    pub peer_prepare_secs: f64,
    /// Where the downtime went: each step from and to, in seconds since the
    /// freeze. The stream and the peer's receive overlap (one pass: the peer
    /// checks as the bytes arrive); the rest follow one another.
    pub critical_path: Vec<Step>,
    /// How long the source's sending and the peer's receiving ran at once.
    pub overlap_secs: f64,
    /// CRIU's own figures, from its statistics (0 when it kept none): how
    /// long the app's processes were frozen for the dump here, and how long
    /// the restore took on the peer. Everything else in `save_secs` and
    /// `resume_secs` is runc's and Docker's work around them.
    pub criu_frozen_secs: f64,
    pub peer_criu_restore_secs: f64,
}

/// Moves `container` to the agent `peer`. Everything that can be checked is
/// checked before the app is frozen.
pub(crate) fn migrate(engine: &Engine, peer: &Peer, container: &str, options: &Options<'_>) -> Result<Report> {
    let began = Instant::now();
    let info = engine.info()?;
    let carryable = preflight::check(engine, &info, container, Mode::Criu)?;
    let peer_info = peer.info()?;
    if normalize_arch(&peer_info.arch) != normalize_arch(&info.architecture) {
        return Err(Error::new(
            Kind::Refused,
            format!(
                "the peer {} is {} and this host is {}: CRIU images cannot cross CPU architectures",
                peer.addr(),
                peer_info.arch,
                info.architecture
            ),
        ));
    }
    if let Some(why) = host::cpu().cannot_run_on(&peer_info.cpu) {
        return Err(Error::new(Kind::Refused, format!("the peer {} cannot run {container}: {why}", peer.addr())));
    }
    if peer_info.busy {
        return Err(Error::new(Kind::Peer, format!("the agent at {} is busy with another restore — try again shortly", peer.addr())));
    }
    let mut report = Report {
        container: carryable.inspect.short_name().to_string(),
        peer: peer.addr().to_string(),
        limit_rate_bytes_per_sec: options.limit_rate,
        ..Report::default()
    };
    // One pace for the image and the payload: they share the uplink.
    let pace = options.limit_rate.map(Pace::new);
    let image_started = Instant::now();
    report.image_shipped = ship_image(engine, peer, &peer_info, &carryable.inspect.image, options.ship_image, pace.clone())?;
    report.image_secs = seconds_since(image_started);

    if let Some(rounds) = options.precopy {
        let (done, stopped) = super::precopy::rounds(engine, &info, &carryable, peer, options, rounds, pace.clone());
        report.precopy_rounds = done;
        report.precopy_stopped = Some(stopped);
    }
    // What the peer holds of this container already (a snapshot, a pre-copy
    // round): the payload is then a delta against it.
    let mut offer = ask_blocks(peer, &report.container);

    let journal = Journal::new(&options.tuning.work_dir);
    let mut entry = Entry {
        id: migration_id(),
        container: report.container.clone(),
        container_id: carryable.inspect.id.clone(),
        peer: peer.addr().to_string(),
        phase: Phase::Checkpointing,
        checkpoint: None,
        fast: options.fast,
        started_unix: host::unix_now(),
    };
    journal.record(&entry)?;
    let freeze = Instant::now();
    let checkpoint_options = checkpoint::Options { tuning: options.tuning, leave_running: false, fast: options.fast };
    let mut taken = checkpoint::take(engine, &info, &carryable, &checkpoint_options).inspect_err(|_| journal.remove(&entry.id))?;
    report.save_secs = taken.checkpoint_secs;
    report.checkpoint_path = taken.checkpoint_path;
    report.criu_frozen_secs =
        crate::bench::criu_stats::read_dump(&taken.stats_dump()).map_or(0.0, |s| s.frozen_time_us as f64 / 1e6);
    entry.phase = Phase::Transferring;
    entry.checkpoint = Some(taken.job_path().to_path_buf());
    if let Err(error) = journal.record(&entry) {
        let error = taken.give_back(engine, &info, error);
        journal.remove(&entry.id);
        return Err(error);
    }
    let name = taken.name.clone();
    // A broken connection is tried again (each attempt a new migration id,
    // a delta against what the peer kept of the last) a few times, within
    // the timeout and a minute at most: the app is frozen meanwhile, and a
    // peer that refuses connections is not retried at all.
    let deadline = Instant::now() + peer.timeout().min(RESUME_WINDOW);
    let mut pause = Duration::from_millis(500);
    let sent = AtomicU64::new(0);
    let saved = seconds_since(freeze);
    let (handed, sending) = loop {
        report.attempts += 1;
        report.delta_base = offer.as_ref().map(|(_, base)| base.clone());
        let id = entry.id.clone();
        let sending = Sending {
            io_buffer: options.tuning.io_buffer,
            pace: pace.clone(),
            offer: offer.as_ref(),
            sent: &sent,
            one_pass: peer_info.reads_one_pass(),
        };
        let attempt = seconds_since(freeze);
        let handed = hand_over(peer, &mut taken, &name, &id, sending, || {
            if let Some(before_commit) = options.before_commit {
                before_commit()?;
            }
            entry.phase = Phase::Committing;
            journal.record(&entry)
        });
        let error = match handed {
            Handover::Done(handed) => break (handed, attempt),
            Handover::NotStarted(error) => error,
            Handover::Unknown(error) => {
                let kept = taken.keep_for_recovery();
                return Err(Error::new(
                    Kind::OutcomeUnknown,
                    format!(
                        "{error} — the commit of {name} was sent to {} but its outcome is unknown: {name} stays stopped here \
                         so that it never runs twice, its checkpoint is kept in {}; run `ferry recover` once the peer \
                         answers (migration {})",
                        peer.addr(),
                        kept.display(),
                        id
                    ),
                ));
            }
        };
        let retry = match error.kind {
            Kind::BaseMissing if offer.is_some() => {
                log::warn!("{error}: sending {name} whole");
                report.fallback_full = true;
                offer = None;
                true
            }
            Kind::Disconnected if report.attempts < MAX_ATTEMPTS && Instant::now() + pause < deadline => {
                log::warn!("{error}: trying again in {:.1}s", pause.as_secs_f64());
                thread::sleep(pause);
                pause = (pause * 2).min(Duration::from_secs(8));
                offer = if report.fallback_full { None } else { ask_blocks(peer, &name) };
                true
            }
            _ => false,
        };
        journal.remove(&id);
        if !retry {
            return Err(taken.give_back(engine, &info, error.context(format!("moving {name} to {}", peer.addr()))));
        }
        entry.id = migration_id();
        entry.phase = Phase::Transferring;
        if let Err(error) = journal.record(&entry) {
            return Err(taken.give_back(engine, &info, error));
        }
    };
    let id = entry.id.clone();
    report.total_secs = seconds_since(freeze);
    report.downtime_secs = report.total_secs;
    (report.critical_path, report.overlap_secs) = critical_path(saved, sending, &handed, report.total_secs);
    let Handed { restored, stats, transfer_secs, commit_secs, peer: prepared, .. } = *handed;
    report.transfer_secs = transfer_secs;
    report.commit_secs = commit_secs;
    report.peer_unpack_secs = prepared.unpack_secs;
    report.peer_prepare_secs = prepared.prepare_secs;
    report.bytes_sent = stats.compressed_bytes;
    report.bytes_sent_total = sent.load(Ordering::Relaxed);
    report.raw_bytes = stats.raw_bytes;
    report.resume_secs = restored.restore_secs;
    report.peer_criu_restore_secs = restored.criu_restore_secs;
    report.peer_container_id = restored.id.clone();
    report.peer_peak_rss_kib = restored.peak_rss_kib;

    if options.keep_source {
        log::info!("{name} runs on {}; the stopped source is kept (--keep-source)", peer.addr());
    } else if let Err(e) = engine.remove_container(&taken.container_id, true) {
        log::warn!("{name} runs on {}, but the stopped source could not be removed: {e}", peer.addr());
    }
    journal.remove(&id);
    report.peak_rss_kib = crate::host::peak_rss_kib();
    report.elapsed_secs = seconds_since(began);
    Ok(report)
}

/// Payload sends a broken connection may take, the first included.
const MAX_ATTEMPTS: u32 = 5;
/// The longest a migration retries broken connections, its app frozen.
const RESUME_WINDOW: Duration = Duration::from_secs(60);

/// The peer's blocks of `container`, if it has some and takes deltas; a
/// failure to ask only costs the delta.
pub(crate) fn ask_blocks(peer: &Peer, container: &str) -> Option<(Offer, String)> {
    match peer.blocks(container) {
        Ok(offer) => offer,
        Err(e) => {
            log::warn!("{e}: the payload goes whole");
            None
        }
    }
}

/// How a payload goes to the peer.
pub(crate) struct Sending<'a> {
    pub io_buffer: usize,
    pub pace: Option<Pace>,
    /// The peer's blocks, for a delta (and what they are, for the manifest).
    pub offer: Option<&'a (Offer, String)>,
    /// Counts the payload bytes sent, whatever becomes of the attempt.
    pub sent: &'a AtomicU64,
    /// The peer reads one-pass payloads (format 5).
    pub one_pass: bool,
}

/// A handover that ended with the app running on the peer.
pub(crate) struct Handed {
    /// The peer's report of the start.
    pub restored: RestoreReport,
    pub stats: PackStats,
    /// From the first byte sent until the last was packed.
    pub transfer_secs: f64,
    /// From the first byte sent until the peer answered that it prepared it.
    pub prepared_secs: f64,
    /// The commit request, sent to its answer.
    pub commit_secs: f64,
    /// The peer's report of the prepare (its receive and create).
    pub peer: RestoreReport,
}

/// How a handover ended, as far as the source can know.
pub(crate) enum Handover {
    /// The app runs on the peer.
    Done(Box<Handed>),
    /// The peer did not start it and never will: the source may run it again.
    NotStarted(Error),
    /// The commit may have reached the peer, which cannot be asked now.
    Unknown(Error),
}

/// Streams a taken checkpoint to the peer's agent, which prepares it; then,
/// once `before_commit` has recorded that the commit may go out, commits it.
/// The payload is written through buffers of `io_buffer` bytes, at `pace` if
/// given. Shared by `migrate` and `bench --to`.
pub(crate) fn hand_over(
    peer: &Peer,
    taken: &mut Taken,
    name: &str,
    migration: &str,
    sending: Sending<'_>,
    before_commit: impl FnOnce() -> Result<()>,
) -> Handover {
    let started = Instant::now();
    let (prepared, transfer_secs) = send_payload(peer, taken, name, migration, sending);
    let prepared_secs = seconds_since(started);
    let committing = Instant::now();
    let prepared = prepared.and_then(|prepared| before_commit().map(|()| prepared));
    let (prepared, stats) = match prepared {
        Ok(prepared) => prepared,
        Err(error) => {
            // No commit was sent: the peer never runs it. Tell it to discard
            // its copy now rather than at its expiry (if it can be reached).
            if let Err(e) = peer.quick().abort(migration) {
                log::warn!("could not tell {} to discard migration {migration} (it expires there by itself): {e}", peer.addr());
            }
            return Handover::NotStarted(error);
        }
    };
    log::info!("{name} is prepared on {} (unpack {:.2}s, create {:.2}s): committing", peer.addr(), prepared.unpack_secs, prepared.prepare_secs);
    let done = |restored| {
        Handover::Done(Box::new(Handed {
            restored,
            stats,
            transfer_secs,
            prepared_secs,
            commit_secs: seconds_since(committing),
            peer: prepared.clone(),
        }))
    };
    match peer.commit(migration) {
        Ok(restored) => done(restored),
        Err(error) => {
            log::warn!("{error}; asking the agent what became of the commit");
            match settle(peer, migration, peer.timeout()) {
                Settled::Restored(restored) => done(restored),
                Settled::NotStarted(reason) => Handover::NotStarted(error.context(format!("the peer did not start it ({reason})"))),
                Settled::Unknown => Handover::Unknown(error),
            }
        }
    }
}

/// What the peer says became of a migration whose commit may have been sent.
pub(crate) enum Settled {
    Restored(RestoreReport),
    /// It did not run there and never will (the reason, for the log).
    NotStarted(String),
    /// The peer could not be asked within the time given.
    Unknown,
}

/// Asks the peer, with back-off for at most `within`, what became of
/// `migration`; a copy still only prepared there is aborted first, so that
/// the answer is final. Never guesses: no answer is `Unknown`.
pub(crate) fn settle(peer: &Peer, migration: &str, within: Duration) -> Settled {
    let quick = peer.quick();
    let deadline = Instant::now() + within;
    let mut pause = Duration::from_millis(250);
    loop {
        let outcome = match quick.outcome(migration) {
            // Unknown there, or prepared and not committed: abort it, which
            // either wins (it never runs) or answers that the commit won.
            Ok(None) | Ok(Some(Outcome::Prepared)) => quick.abort(migration).ok(),
            Ok(outcome) => outcome,
            Err(e) => {
                log::debug!("{e}");
                None
            }
        };
        match outcome {
            Some(Outcome::Restored { report }) => return Settled::Restored(report),
            Some(Outcome::Failed { error }) => return Settled::NotStarted(error),
            Some(Outcome::Aborted) => return Settled::NotStarted("aborted".into()),
            Some(Outcome::Running | Outcome::Prepared | Outcome::Committing) | None => {}
        }
        if Instant::now() + pause > deadline {
            return Settled::Unknown;
        }
        thread::sleep(pause);
        pause = (pause * 2).min(Duration::from_secs(4));
    }
}

/// Streams a taken checkpoint to the peer's agent, packing in a thread into a
/// pipe that the HTTP body reads: no intermediate file. Returns the peer's
/// prepare report with the pack statistics, and the seconds until the last
/// byte was packed.
fn send_payload(
    peer: &Peer,
    taken: &mut Taken,
    name: &str,
    migration: &str,
    sending: Sending<'_>,
) -> (Result<(RestoreReport, PackStats)>, f64) {
    let Sending { io_buffer, pace, offer, sent, one_pass } = sending;
    let (mut payload_reader, payload_writer) = match super::payload_pipe() {
        Ok(pipe) => pipe,
        Err(e) => return (Err(io_error("cannot make a pipe", e)), 0.0),
    };
    let started = Instant::now();
    let (answer, (packed, secs)) = thread::scope(|scope| {
        let packer = scope.spawn(|| {
            let counted = Tally { inner: Paced::new(payload_writer, pace), sent };
            let sink = Progress::new(BufWriter::with_capacity(io_buffer, counted), "sent");
            let stats = taken.pack_into(sink, peer.signer(), offer.map(|(offer, base)| (offer, base.as_str())), one_pass);
            (stats, seconds_since(started))
        });
        let answer = peer.prepare(&mut payload_reader, name, migration);
        // Unblocks the packer if the peer stopped reading early.
        drop(payload_reader);
        let packed = packer.join().unwrap_or_else(|_| (Err(Error::new(Kind::Failure, "the packer thread panicked")), 0.0));
        (answer, packed)
    });
    let result = match (answer, packed) {
        (Ok(prepared), Ok(stats)) => Ok((prepared, stats)),
        (Err(error), _) | (Ok(_), Err(error)) => Err(error),
    };
    (result, secs)
}

/// Adds what passes through it to a shared count.
pub(crate) struct Tally<'a, W> {
    pub inner: W,
    pub sent: &'a AtomicU64,
}

impl<W: Write> Write for Tally<'_, W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.sent.fetch_add(n as u64, Ordering::Relaxed);
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

/// Makes sure the peer has the container's image, sending it when needed.
/// Returns whether it was sent.
fn ship_image(
    engine: &Engine,
    peer: &Peer,
    peer_info: &PeerInfo,
    image_id: &str,
    policy: ShipImage,
    pace: Option<Pace>,
) -> Result<bool> {
    let present = peer_info.images.iter().any(|image| image.id == image_id);
    match (policy, present) {
        (ShipImage::Never, false) => {
            let tags = engine.inspect_image(image_id).ok().and_then(|i| i.repo_tags).unwrap_or_default();
            return Err(Error::new(
                Kind::Peer,
                format!(
                    "the peer {} lacks the image {image_id} ({}) — load it there, or migrate with --ship-image auto",
                    peer.addr(),
                    if tags.is_empty() { "untagged".into() } else { tags.join(", ") }
                ),
            ));
        }
        (ShipImage::Never, true) | (ShipImage::Auto, true) => return Ok(false),
        (ShipImage::Auto, false) | (ShipImage::Always, _) => {}
    }
    // Saved by tag when it has one, so that the peer gets the tag too.
    let tags = engine.inspect_image(image_id)?.repo_tags.unwrap_or_default();
    let names: Vec<&str> = if tags.is_empty() { vec![image_id] } else { tags.iter().map(String::as_str).collect() };
    log::info!("sending the image {} to {}", names.join(", "), peer.addr());
    let mut saved = Paced::new(engine.image_save(&names)?, pace);
    peer.load_image(&mut saved)?;
    if !peer.info()?.images.iter().any(|image| image.id == image_id) {
        return Err(Error::new(Kind::Peer, format!("the peer {} loaded the image but does not list {image_id}", peer.addr())));
    }
    Ok(true)
}

/// A random id for one migration, so the agent can be asked about it later.
pub(crate) fn migration_id() -> String {
    let mut bytes = [0u8; 8];
    if let Ok(mut random) = std::fs::File::open("/dev/urandom") {
        let _ = random.read_exact(&mut bytes);
    }
    crate::payload::hex(&bytes)
}

