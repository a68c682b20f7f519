//! Automatic failover (`ferry serve --failover-after`): a container whose
//! snapshots stopped coming, and whose source's agent does not answer, is
//! restored here from its newest snapshot.

use std::collections::BTreeSet;
use std::thread;
use std::time::Duration;

use super::agent::Agent;
use super::client::Peer;
use crate::host;
use crate::migration::failover::failover;
use crate::units::short_id;

/// Every second, a container whose newest snapshot is older than `after`,
/// that does not run here, was not failed over already, and whose source's
/// agent does not answer, is restored from that snapshot.
pub(super) fn watch_for_failover(agent: &Agent, after: Duration) {
    log::info!("automatic failover after {:.1}s without snapshots", after.as_secs_f64());
    let mut warned = BTreeSet::new();
    loop {
        thread::sleep(Duration::from_secs(1));
        let snapshots = agent.store.list();
        let failed_over = agent.store.failovers();
        let containers: BTreeSet<&str> = snapshots.iter().map(|s| s.container.as_str()).collect();
        for container in containers {
            let Some(latest) = snapshots.iter().filter(|s| s.container == container).max_by_key(|s| s.generation) else {
                continue;
            };
            let silent = host::unix_now().saturating_sub(latest.received_unix);
            if silent < after.as_secs().max(1) || failed_over.iter().any(|f| f.container == container && f.generation >= latest.generation) {
                continue;
            }
            let Some(source) = &latest.source_agent else {
                if warned.insert(container.to_string()) {
                    log::warn!("snapshots of {container} stopped {silent}s ago, but its source named no agent to ask (ferry replicate --self): not failing over");
                }
                continue;
            };
            if agent.engine.inspect_container(container).is_ok_and(|c| c.state.running) {
                continue;
            }
            if Peer::new(source, agent.settings.token.clone(), Duration::from_secs(3), None).healthy() {
                continue;
            }
            let Ok(_one_at_a_time) = agent.restore_lock.lock() else { continue };
            log::warn!("no snapshot of {container} for {silent}s and its source's agent {source} does not answer: failing over");
            match failover(&agent.engine, &agent.store, container, None, &agent.restore_options(None)) {
                Ok(done) => log::warn!(
                    "failed {container} over from generation {} ({}s old): runs here as {}",
                    done.generation,
                    done.snapshot_age_secs,
                    short_id(&done.container_id)
                ),
                Err(e) => log::error!("failover of {container} failed: {e}"),
            }
        }
    }
}
