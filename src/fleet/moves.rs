//! The record of the last move tried for each managed container, at
//! `/ferry/migrations/<container>`: what `ferry fleet status` can show, and
//! what the `rotate` policy orders containers by. The balancer writes the
//! same record as one line of its log file.

use serde::{Deserialize, Serialize};

use super::etcd::Etcd;
use crate::error::{Error, Kind, Result};

/// Under the fleet's prefix, so that `status` reads these in the same range.
pub(crate) const MIGRATIONS: &str = "/ferry/migrations/";

pub(crate) fn migration_key(container: &str) -> String {
    format!("{MIGRATIONS}{container}")
}

/// One move a balancer asked for, and how it ended.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub(crate) struct LastMove {
    /// When the answer came (milliseconds since the epoch).
    pub unix_ms: u64,
    pub ok: bool,
    pub container: String,
    pub from: String,
    pub to: String,
    /// The move's figures when it was made (the paper's Table 1).
    #[serde(flatten, default, skip_serializing_if = "Option::is_none")]
    pub made: Option<Made>,
    /// Why it was not made, for a person.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// A failover (`from` had gone; restored on `to` from a snapshot), not
    /// a migration.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub failover: bool,
}

/// What a move that was made reports.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub(crate) struct Made {
    /// The container's placement generation after the move.
    pub generation: u64,
    pub save_secs: f64,
    pub transfer_secs: f64,
    pub resume_secs: f64,
    pub commit_secs: f64,
    pub downtime_secs: f64,
    pub elapsed_secs: f64,
    pub bytes_sent: u64,
}

/// Stores `last` as the container's last move. A plain put, no lease: the
/// history outlives the balancer that wrote it.
pub(crate) fn record(etcd: &Etcd, last: &LastMove) -> Result<()> {
    let key = migration_key(&last.container);
    let value = serde_json::to_vec(last)
        .map_err(|e| Error::new(Kind::Failure, format!("cannot encode the record for {key}: {e}")))?;
    etcd.put(&key, &value, None)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_move_made_carries_its_figures_and_a_failed_one_its_error_only() {
        let made = LastMove {
            unix_ms: 1,
            ok: true,
            container: "web".into(),
            from: "a".into(),
            to: "b".into(),
            made: Some(Made { generation: 3, bytes_sent: 42, ..Made::default() }),
            error: None,
            failover: false,
        };
        let line = serde_json::to_string(&made).unwrap();
        assert!(line.starts_with(r#"{"unix_ms":1,"ok":true,"container":"web","from":"a","to":"b","generation":3,"#), "{line}");
        assert!(line.contains(r#""bytes_sent":42"#) && !line.contains("error") && !line.contains("failover"), "{line}");
        assert_eq!(serde_json::from_str::<LastMove>(&line).unwrap(), made);

        let failed = LastMove { ok: false, made: None, error: Some("refused".into()), ..made };
        let line = serde_json::to_string(&failed).unwrap();
        assert_eq!(line, r#"{"unix_ms":1,"ok":false,"container":"web","from":"a","to":"b","error":"refused"}"#);
        assert_eq!(serde_json::from_str::<LastMove>(&line).unwrap(), failed);
    }
}
