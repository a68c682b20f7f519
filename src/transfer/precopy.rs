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
//! When to stop: as soon as another round would shorten the downtime by
//! less than the freeze it costs — its delta sent faster than a dump freezes
//! the app (on a fast link: right after round 0), or the next delta, guessed
//! from this one scaled by the rounds' durations, smaller than this one by
//! less than the link carries during a freeze; after the round whose delta is
//! not clearly smaller than the one before; or when the rounds are spent. An app that dirties memory faster than the
//! link carries it is seen after round 1 (its delta is most of round 0) and
//! migrated without more rounds: pre-copy never loops on a losing race.

use std::io::BufWriter;
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
        done.push(round);
        if let Some(why) = stop_after(&done) {
            return (done, why);
        }
    }
    (done, "rounds spent".into())
}

/// Whether the rounds `done` so far should end, and why.
fn stop_after(done: &[Round]) -> Option<String> {
    let this = done.last()?;
    let (sent, freeze_secs) = (this.bytes_sent as f64, this.freeze_secs);
    let sending_secs = (this.secs - this.freeze_secs).max(0.0);
    if sending_secs < freeze_secs {
        return Some(format!("converged: the round was sent in {sending_secs:.2}s, less than a dump freezes the app"));
    }
    let (first, previous) = match done {
        [first, .., previous, _] => (first, previous),
        [first, _] => (first, first),
        _ => return None,
    };
    if done.len() == 2 && sent > LOSING * first.bytes_sent as f64 {
        return Some("memory changes about as fast as the link carries it: no more rounds, the last delta goes frozen".into());
    }
    if sent > SHRINKING * previous.bytes_sent as f64 {
        return Some("converged: the delta stopped shrinking".into());
    }
    // What another round would save: changes pile up for as long as a round
    // lasts, so the next delta is about this one scaled by the rounds'
    // durations; the saving is the difference, at the link's rate.
    let link_rate = first.bytes_sent as f64 / (first.secs - first.freeze_secs).max(0.001);
    let next = sent * (this.secs / previous.secs.max(0.001)).min(1.0);
    let saving_secs = (sent - next) / link_rate.max(1.0);
    (saving_secs < freeze_secs).then(|| {
        format!("converged: another round would shorten the downtime by ≈{saving_secs:.2}s, less than its {freeze_secs:.2}s freeze")
    })
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
    let (mut reader, writer) = super::payload_pipe().map_err(|e| io_error("cannot make a pipe", e))?;
    let sent = AtomicU64::new(0);
    let (answer, packed) = thread::scope(|scope| {
        let packer = scope.spawn(|| {
            let sink = BufWriter::with_capacity(options.tuning.io_buffer, Tally { inner: Paced::new(writer, pace), sent: &sent });
            // Not one pass: the app runs meanwhile, and after round 0 the
            // rounds are deltas, whose block hashes are a pass anyway.
            taken.pack_into(sink, peer.signer(), offer.as_ref().map(|(offer, base)| (offer, base.as_str())), false)
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

#[cfg(test)]
mod tests {
    use super::*;

    fn round(freeze_secs: f64, secs: f64, bytes_sent: u64) -> Round {
        Round { freeze_secs, secs, bytes_sent, raw_bytes: 134_519_000 }
    }

    // Rounds measured by `make bench-precopy` (128 MiB over 100 Mbit/s).
    #[test]
    fn rounds_end_when_another_would_save_less_than_it_freezes() {
        let first = round(0.50, 12.03, 134_519_047);
        // 1 MiB/s: round 1 carries 12 s of changes, worth another round…
        let one = round(0.45, 1.96, 12_620_967);
        assert_eq!(stop_after(&[first.clone(), one.clone()]), None);
        // …round 2 carries 2 s of them: a third would save ≈ 0.04 s.
        let two = round(0.46, 1.52, 2_395_641);
        assert!(stop_after(&[first.clone(), one, two]).unwrap().contains("another round"));
        // An app that writes nothing: round 1 is the block references alone.
        let idle = round(0.45, 1.23, 574_219);
        assert!(stop_after(&[first.clone(), idle]).is_some());
        // 8 MiB/s: round 1 is most of round 0.
        let losing = round(0.5, 9.0, 90_000_000);
        assert!(stop_after(&[first, losing]).unwrap().contains("as fast as the link"));
        // Loopback: round 0 crosses faster than a dump freezes the app.
        assert!(stop_after(&[round(0.44, 0.73, 67_142_348)]).unwrap().contains("less than a dump"));
    }
}
