//! A replicated snapshot stored here → a running container, recorded so that
//! its source, should it come back, stops its own copy.

use super::restore::{restore_unpacked, Options};
use crate::engine::Engine;
use crate::error::{Error, Kind, Result};
use crate::host;
use crate::snapshots::{Failover, Store};

/// Restores `container` from a stored snapshot (the newest, or `generation`)
/// and records the failover. Shared by `ferry failover` and the agent's
/// automatic failover.
pub(crate) fn failover(
    engine: &Engine,
    store: &Store,
    container: &str,
    generation: Option<u64>,
    options: &Options<'_>,
) -> Result<Failover> {
    if engine.inspect_container(container).is_ok_and(|c| c.state.running) {
        return Err(Error::new(
            Kind::Refused,
            format!("a container named '{container}' already runs on this host — nothing to fail over"),
        ));
    }
    let checkout = store.checkout(container, generation, options.verify)?;
    let info = engine.info()?;
    log::info!("failing {container} over from snapshot {} (taken {}s ago)", checkout.info.id, host::unix_now().saturating_sub(checkout.info.taken_unix));
    let restored = restore_unpacked(engine, &info, checkout.path(), &checkout.manifest, options)?;
    let done = Failover {
        container: container.to_string(),
        generation: checkout.info.generation,
        source_host: checkout.info.source_host.clone(),
        source_agent: checkout.info.source_agent.clone(),
        restored_unix: host::unix_now(),
        container_id: restored.id,
        snapshot_age_secs: host::unix_now().saturating_sub(checkout.info.taken_unix),
        restore_secs: restored.restore_secs,
        running: true,
    };
    store.record_failover(&done)?;
    checkout.used();
    Ok(done)
}
