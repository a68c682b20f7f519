//! Pre-copy by content (`ferry migrate --precopy`, issue 14): while the app
//! runs, leave-running checkpoints are sent to the peer, each a delta against
//! the one before, so that the final, frozen send carries only what changed
//! since the last round.
//!
//! CRIU's own pre-copy (`pre-dump`) needs the kernel's soft-dirty bits, which
//! arm64 has never had (CRIU issue 2676). ferry finds what changed by the
//! content of each 4 KiB block instead (payload/delta.rs): no kernel support,
//! at the cost of a full dump per round — each round freezes the app for
//! as long as a dump takes, and every such freeze is reported.
//!
//! When to stop: once sending the last round's delta took less time than a
//! dump freezes the app (another round cannot shorten the downtime by more
//! than it freezes the app; on a fast link that is right after round 0), after
//! the round whose delta is not clearly smaller than the one before (the app
//! dirties memory about as fast as the rounds send it), or when the rounds
//! are spent. An app that dirties memory faster than the
//! link carries it is seen after round 1 (its delta is most of round 0) and
//! migrated without more rounds: pre-copy never loops on a losing race.

use std::io::{self, BufWriter};
use std::sync::atomic::AtomicU64;
use std::thread;
use std::time::Instant;

use serde::Serialize;

use super::client::Peer;
use super::migrate::{ask_blocks, Options, Tally};
use super::pace::{Pace, Paced};
use crate::engine::{Engine, Info};
use crate::error::{io_error, Error, Kind, Result};
use crate::migration::checkpoint;
use crate::migration::preflight::Carryable;
use crate::units::{human_bytes, seconds_since};

/// One pre-copy round, as `migrate --json` reports it.
#[derive(Debug, Clone, Default, Serialize)]
pub(crate) struct Round {
    /// How long the app was frozen for this round's dump.
    pub freeze_secs: f64,
    /// The whole round: dump, pack and send, the peer's check.
    pub secs: f64,
    pub bytes_sent: u64,
    /// The checkpoint's size (what the delta rebuilds).
    pub raw_bytes: u64,
}

/// A round whose delta is above this share of the one before ends the rounds.
const SHRINKING: f64 = 0.8;
/// Round 1 above this share of round 0: memory changes as fast as the link carries it.
const LOSING: f64 = 0.5;

/// Runs up to `max_rounds` rounds; returns them and why they ended. A round
/// that fails ends the rounds (the migration goes on without them).
pub(crate) fn rounds(
    engine: &Engine,
    info: &Info,
    carryable: &Carryable,
    peer: &Peer,
    options: &Options<'_>,
    max_rounds: u32,
    pace: Option<Pace>,
) -> (Vec<Round>, String) {
    let name = carryable.inspect.short_name().to_string();
    let mut done: Vec<Round> = Vec::new();
    for number in 0..max_rounds {
        let round = match one_round(engine, info, carryable, peer, options, pace.clone()) {
            Ok(round) => round,
            Err(e) => {
                log::warn!("pre-copy round {number} of {name} failed: {e}");
                return (done, format!("round {number} failed: {e}"));
            }
        };
        log::info!(
            "pre-copy round {number} of {name}: frozen {:.2}s, {} sent in {:.2}s",
            round.freeze_secs,
            human_bytes(round.bytes_sent),
            round.secs
        );
        let sent = round.bytes_sent as f64;
        let (sending_secs, freeze_secs) = ((round.secs - round.freeze_secs).max(0.0), round.freeze_secs);
        done.push(round);
        if sending_secs < freeze_secs {
            return (done, format!("converged: the round was sent in {sending_secs:.2}s, less than a dump freezes the app"));
        }
        if number == 1 && sent > LOSING * done[0].bytes_sent as f64 {
            return (
                done,
                "memory changes about as fast as the link carries it: no more rounds, the last delta goes frozen".into(),
            );
        }
        if number >= 1 && sent > SHRINKING * done[done.len() - 2].bytes_sent as f64 {
            return (done, "converged: the delta stopped shrinking".into());
        }
    }
    (done, "rounds spent".into())
}

fn one_round(
    engine: &Engine,
    info: &Info,
    carryable: &Carryable,
    peer: &Peer,
    options: &Options<'_>,
    pace: Option<Pace>,
) -> Result<Round> {
    let started = Instant::now();
    let offer = ask_blocks(peer, carryable.inspect.short_name());
    let checkpoint_options = checkpoint::Options { tuning: options.tuning, leave_running: true, fast: options.fast };
    let mut taken = checkpoint::take(engine, info, carryable, &checkpoint_options)?;
    let freeze_secs = taken.frozen_secs;
    let (mut reader, writer) = io::pipe().map_err(|e| io_error("cannot make a pipe", e))?;
    let sent = AtomicU64::new(0);
    let (answer, packed) = thread::scope(|scope| {
        let packer = scope.spawn(|| {
            let sink = BufWriter::with_capacity(options.tuning.io_buffer, Tally { inner: Paced::new(writer, pace), sent: &sent });
            taken.pack_into(sink, peer.signer(), offer.as_ref().map(|(offer, base)| (offer, base.as_str())))
        });
        let answer = peer.stage(&mut reader);
        drop(reader);
        let packed = packer.join().unwrap_or_else(|_| Err(Error::new(Kind::Failure, "the packer thread panicked")));
        (answer, packed)
    });
    answer?;
    let stats = packed?;
    Ok(Round { freeze_secs, secs: seconds_since(started), bytes_sent: stats.compressed_bytes, raw_bytes: stats.raw_bytes })
}
