//! Where a migration's downtime went: its steps from the freeze on, from
//! what the source measured and what the peer reported of its own part.

use serde::Serialize;

use super::migrate::Handed;

/// One step of a migration's downtime.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub(crate) struct Step {
    pub step: &'static str,
    pub start_secs: f64,
    pub end_secs: f64,
}

impl Step {
    pub(crate) fn new(step: &'static str, start_secs: f64, end_secs: f64) -> Step {
        let round = |secs: f64| (secs * 1000.0).round() / 1000.0;
        Step { step, start_secs: round(start_secs), end_secs: round(end_secs) }
    }
}

/// The downtime's steps, from what the source measured (`saved`: the images
/// on disk; `sending`: the payload's first byte; `handed`: the handover) and
/// what the peer reported of its own part.
pub(crate) fn critical_path(saved: f64, sending: f64, handed: &Handed, total: f64) -> (Vec<Step>, f64) {
    let Handed { transfer_secs, prepared_secs, peer, .. } = handed;
    let received = sending + peer.unpack_secs;
    let prepared = sending + prepared_secs;
    let steps = vec![
        Step::new("save", 0.0, saved),
        Step::new("stream", sending, sending + transfer_secs),
        Step::new("peer receive + check", sending, received),
        Step::new("peer create", received, received + peer.prepare_secs),
        Step::new("commit + start", prepared, total),
    ];
    let overlap = transfer_secs.min(peer.unpack_secs).max(0.0);
    (steps, (overlap * 1000.0).round() / 1000.0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::payload::PackStats;
    use crate::transfer::RestoreReport;

    #[test]
    fn the_critical_path_lays_the_peers_part_over_the_stream() {
        let peer = RestoreReport { unpack_secs: 0.30, prepare_secs: 0.05, ..RestoreReport::default() };
        let handed = Handed {
            restored: RestoreReport::default(),
            stats: PackStats::default(),
            transfer_secs: 0.25,
            prepared_secs: 0.36,
            commit_secs: 0.5,
            peer,
        };
        // Frozen at 0, images on disk at 0.2, first byte at 0.21, running at 1.1.
        let (steps, overlap) = critical_path(0.2, 0.21, &handed, 1.1);
        let spans: Vec<(&str, f64, f64)> = steps.iter().map(|s| (s.step, s.start_secs, s.end_secs)).collect();
        assert_eq!(
            spans,
            [
                ("save", 0.0, 0.2),
                ("stream", 0.21, 0.46),
                ("peer receive + check", 0.21, 0.51),
                ("peer create", 0.51, 0.56),
                ("commit + start", 0.57, 1.1),
            ]
        );
        assert_eq!(overlap, 0.25, "the peer received while the source sent");
    }
}
