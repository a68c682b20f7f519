//! results.csv: one row per run and phase, every column filled.

use std::io::{self, Write};

use super::Exporter;
use crate::bench::telemetry::GROUPS;
use crate::bench::Results;

pub(crate) struct Csv;

pub(crate) fn header() -> Vec<String> {
    let mut columns: Vec<String> = [
        "size_mib", "method", "repetition", "phase", "seconds", "raw_bytes", "compressed_bytes", "checkpoint_path",
        "criu_frozen_ms", "criu_restore_ms",
    ]
    .iter()
    .map(|c| c.to_string())
    .collect();
    for group in GROUPS {
        columns.push(format!("{group}_user_pct"));
        columns.push(format!("{group}_system_pct"));
        columns.push(format!("{group}_rss_mib_peak"));
    }
    columns.extend(["host_cpu_pct_mean", "host_cpu_pct_peak", "host_mem_used_mib_peak", "sampled_secs"].map(String::from));
    columns
}

impl Exporter for Csv {
    fn file_name(&self) -> &'static str {
        "results.csv"
    }

    fn write(&self, results: &Results, out: &mut dyn Write) -> io::Result<()> {
        writeln!(out, "{}", header().join(","))?;
        for row in &results.rows {
            let u = &row.usage;
            let mut fields = vec![
                row.size_mib.to_string(),
                row.method.to_string(),
                row.repetition.to_string(),
                row.phase.to_string(),
                format!("{:.6}", row.seconds),
                row.raw_bytes.to_string(),
                row.compressed_bytes.to_string(),
                row.checkpoint_path.to_string(),
                format!("{:.3}", row.criu_frozen_ms),
                format!("{:.3}", row.criu_restore_ms),
            ];
            for g in 0..GROUPS.len() {
                fields.push(format!("{:.2}", u.user_pct[g]));
                fields.push(format!("{:.2}", u.system_pct[g]));
                fields.push(format!("{:.2}", u.rss_mib_peak[g]));
            }
            fields.extend([
                format!("{:.2}", u.host_cpu_pct_mean),
                format!("{:.2}", u.host_cpu_pct_peak),
                format!("{:.1}", u.host_mem_used_mib_peak),
                format!("{:.3}", u.sampled_secs),
            ]);
            writeln!(out, "{}", fields.join(","))?;
        }
        Ok(())
    }
}
