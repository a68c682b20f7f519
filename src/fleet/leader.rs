//! One balancer at a time: an election on `/ferry/balancer`.
//!
//! The key is created only when it does not exist (`create_revision == 0`),
//! under a lease of the process that created it, so it is held by exactly one
//! live process and goes by itself when that process stops renewing — a
//! balancer that dies or loses etcd steps down by etcd's clock, not by
//! ferry's. Two balancers deciding from the same state could only waste
//! migrations (the moves themselves are compare-and-swaps on the placement),
//! but two leaders rotating containers would double the paper's rate.

use serde::{Deserialize, Serialize};

use super::etcd::{Cmp, Compare, Etcd, Op, Txn};
use super::decode;
use crate::error::{Error, Kind, Result};

pub(crate) const BALANCER: &str = "/ferry/balancer";

/// Who holds the balancer's key, as it wrote itself there.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct Balancer {
    /// Host name and process id, for a person looking for it.
    pub who: String,
    pub since_unix: u64,
}

/// What a [`campaign`](Leadership::campaign) found.
pub(crate) enum Campaign {
    Won(Leadership),
    /// Another live balancer leads; `holder` is its record (None if the key
    /// went between the transaction and the read, or cannot be read).
    Lost { holder: Option<Balancer> },
}

/// This process leads the balancing while its lease lives.
pub(crate) struct Leadership {
    etcd: Etcd,
    lease: i64,
    ttl_secs: i64,
    record: Balancer,
}

impl Leadership {
    /// Tries once to become the balancer as `who`, under a new lease of
    /// `ttl_secs`. Losing is no error: the caller tries again next round.
    pub(crate) fn campaign(etcd: &Etcd, who: &str, ttl_secs: i64) -> Result<Campaign> {
        let record = Balancer { who: who.to_string(), since_unix: crate::host::unix_now() };
        let value = serde_json::to_vec(&record)
            .map_err(|e| Error::new(Kind::Failure, format!("cannot encode the record for {BALANCER}: {e}")))?;
        let lease = etcd.grant(ttl_secs)?;
        let txn = Txn {
            compare: vec![Compare::CreateRevision(BALANCER.to_string(), Cmp::Equal, 0)],
            success: vec![Op::Put { key: BALANCER.to_string(), value, lease: Some(lease.id) }],
            failure: vec![Op::Get(BALANCER.to_string())],
        };
        let outcome = match etcd.txn(&txn) {
            Ok(outcome) => outcome,
            Err(error) => {
                // Whether or not it was applied, a revoked lease holds nothing.
                let _ = etcd.revoke(lease.id);
                return Err(error.into());
            }
        };
        if !outcome.succeeded {
            let _ = etcd.revoke(lease.id);
            let holder = outcome.gets.first().and_then(|kvs| kvs.first()).and_then(|kv| decode(&kv.key, &kv.value).ok());
            return Ok(Campaign::Lost { holder });
        }
        log::info!("{who} is the fleet's balancer (lease {:x}, {} s)", lease.id, lease.ttl_secs);
        Ok(Campaign::Won(Leadership { etcd: etcd.clone(), lease: lease.id, ttl_secs: lease.ttl_secs.max(1), record }))
    }

    /// Renews the lease and checks the key is still this process's: false
    /// once the lease is gone (expired while etcd could not be reached, or
    /// revoked) or the key was deleted or taken by another lease, after which
    /// this process must plan nothing more until it wins again. An error
    /// (etcd unreachable) decides nothing: the lease may still live.
    pub(crate) fn still_leader(&self) -> Result<bool> {
        if self.etcd.keep_alive(self.lease)?.is_none() {
            return Ok(false);
        }
        Ok(self.etcd.get(BALANCER)?.is_some_and(|kv| kv.lease == self.lease))
    }

    /// The lease's TTL as granted: renew well within it.
    pub(crate) fn ttl_secs(&self) -> i64 {
        self.ttl_secs
    }

    #[cfg(test)]
    pub(crate) fn record(&self) -> &Balancer {
        &self.record
    }

    /// Steps down now: revokes the lease, which deletes the key, so another
    /// balancer can win at its next round instead of after the TTL.
    pub(crate) fn resign(self) {
        match self.etcd.revoke(self.lease) {
            Ok(()) => log::info!("{} resigned as the fleet's balancer", self.record.who),
            Err(error) => log::warn!(
                "{} cannot revoke its balancer lease, another balancer waits up to {} s for it to expire: {error}",
                self.record.who,
                self.ttl_secs
            ),
        }
    }

    #[cfg(test)]
    pub(crate) fn lease(&self) -> i64 {
        self.lease
    }
}

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Barrier};
    use std::thread;
    use std::time::{Duration, Instant};

    use super::*;
    use crate::fleet::testing::LocalEtcd;

    fn won(campaign: Campaign) -> Option<Leadership> {
        match campaign {
            Campaign::Won(lead) => Some(lead),
            Campaign::Lost { .. } => None,
        }
    }

    #[test]
    #[ignore = "needs the etcd binary (tests/scripts/setup-host.sh)"]
    fn of_two_contenders_at_once_exactly_one_leads() {
        let local = LocalEtcd::start("leader-race");
        let etcd = Etcd::connect(&local.url).unwrap();
        for round in 0..10 {
            let start = Arc::new(Barrier::new(2));
            let contenders: Vec<_> = ["one", "two"]
                .into_iter()
                .map(|who| {
                    let (etcd, start) = (etcd.clone(), start.clone());
                    thread::spawn(move || {
                        start.wait();
                        won(Leadership::campaign(&etcd, who, 30).unwrap())
                    })
                })
                .collect();
            let leaders: Vec<Leadership> = contenders.into_iter().filter_map(|c| c.join().unwrap()).collect();
            assert_eq!(leaders.len(), 1, "round {round}");
            let held: Balancer = decode(BALANCER, &etcd.get(BALANCER).unwrap().unwrap().value).unwrap();
            assert_eq!(&held, leaders[0].record());
            leaders.into_iter().for_each(Leadership::resign);
        }
    }

    #[test]
    #[ignore = "needs the etcd binary (tests/scripts/setup-host.sh)"]
    fn the_other_contender_wins_once_the_leader_resigns_or_its_lease_expires() {
        let local = LocalEtcd::start("leader-handover");
        let etcd = Etcd::connect(&local.url).unwrap();
        let first = won(Leadership::campaign(&etcd, "first", 30).unwrap()).unwrap();
        let Campaign::Lost { holder } = Leadership::campaign(&etcd, "second", 30).unwrap() else {
            panic!("a second balancer won while the first leads");
        };
        assert_eq!(holder.unwrap().who, "first", "the loser is told who leads");
        assert!(first.still_leader().unwrap());
        first.resign();
        let second = won(Leadership::campaign(&etcd, "second", 2).unwrap()).expect("wins once the first resigned");

        // The second stops renewing (it hangs, or loses etcd): its lease
        // expires by etcd's clock and a third wins without it resigning.
        let ttl = second.ttl_secs() as u64;
        let deadline = Instant::now() + Duration::from_secs(ttl + 10);
        let third = loop {
            if let Some(third) = won(Leadership::campaign(&etcd, "third", 30).unwrap()) {
                break third;
            }
            assert!(Instant::now() < deadline, "the second's lease of {ttl} s never expired");
            thread::sleep(Duration::from_millis(200));
        };
        assert!(!second.still_leader().unwrap(), "a leader whose lease expired learns it");
        assert!(third.still_leader().unwrap());
    }

    #[test]
    #[ignore = "needs the etcd binary (tests/scripts/setup-host.sh)"]
    fn a_leader_whose_lease_was_revoked_or_key_deleted_learns_it_leads_no_more() {
        let local = LocalEtcd::start("leader-fenced");
        let etcd = Etcd::connect(&local.url).unwrap();
        let revoked = won(Leadership::campaign(&etcd, "revoked", 30).unwrap()).unwrap();
        etcd.revoke(revoked.lease()).unwrap();
        assert!(!revoked.still_leader().unwrap());
        // Its lease alive but its key deleted (an operator's `etcdctl del`)
        // and taken by another: the lease alone does not make a leader.
        let deleted = won(Leadership::campaign(&etcd, "deleted", 30).unwrap()).unwrap();
        etcd.delete(BALANCER).unwrap();
        assert!(!deleted.still_leader().unwrap());
        let other = won(Leadership::campaign(&etcd, "other", 30).unwrap()).unwrap();
        assert!(!deleted.still_leader().unwrap());
        assert!(other.still_leader().unwrap());
        // An unreachable etcd decides nothing: an error, not "no longer leader".
        let lost = Leadership { etcd: Etcd::connect("http://127.0.0.1:1").unwrap(), ..other };
        assert!(lost.still_leader().is_err());
    }
}
