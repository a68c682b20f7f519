//! What a bench run produces, apart from how it runs: one row per run and
//! phase, the per-phase summaries (the paper's Table 1) and the fits of time
//! against memory (Figs. 2, 3). The exporters read only this.

use serde::Serialize;

use super::stats::{least_squares, summarize, Summary};
use super::telemetry::PhaseUsage;

/// The phases of every run, in order; `Total` is their sum.
/// `Transfer` is 0 without `--to` (the payload goes to a local file); with
/// it, packing and sending overlap and count as transfer, and the restore is
/// the peer's own figure.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub(crate) enum Phase {
    Checkpoint,
    Pack,
    Transfer,
    Restore,
    FirstLife,
    Total,
}

impl Phase {
    /// Every phase a run measures, in order; `Total` is their sum.
    pub(crate) const MEASURED: [Phase; 5] = [Phase::Checkpoint, Phase::Pack, Phase::Transfer, Phase::Restore, Phase::FirstLife];
    pub(crate) const ALL: [Phase; 6] =
        [Phase::Checkpoint, Phase::Pack, Phase::Transfer, Phase::Restore, Phase::FirstLife, Phase::Total];

    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Phase::Checkpoint => "checkpoint",
            Phase::Pack => "pack",
            Phase::Transfer => "transfer",
            Phase::Restore => "restore",
            Phase::FirstLife => "first_life",
            Phase::Total => "total",
        }
    }
}

impl std::fmt::Display for Phase {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}


/// One row per run and phase.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct Row {
    pub size_mib: u32,
    /// `ferry-criu`, `ferry-commit` or `baseline` (the paper's scripts).
    pub method: &'static str,
    pub repetition: u32,
    pub phase: Phase,
    pub seconds: f64,
    pub raw_bytes: u64,
    pub compressed_bytes: u64,
    /// `runc`, `docker-api`, `commit`, or `baseline`.
    pub checkpoint_path: &'static str,
    /// CRIU's own figures for the run (0 where CRIU did not report them).
    pub criu_frozen_ms: f64,
    pub criu_restore_ms: f64,
    pub usage: PhaseUsage,
}

#[derive(Debug, Clone, Serialize)]
pub(crate) struct HostFacts {
    pub arch: String,
    pub kernel: String,
    pub criu: String,
    pub docker: String,
    pub cpus: usize,
    pub board: String,
}

#[derive(Debug, Clone, Serialize)]
pub(crate) struct PhaseSummary {
    pub method: &'static str,
    pub size_mib: u32,
    pub phase: Phase,
    pub summary: Summary,
}

#[derive(Debug, Clone, Serialize)]
pub(crate) struct FitRow {
    pub method: &'static str,
    pub phase: Phase,
    pub slope_s_per_gib: f64,
    pub intercept_s: f64,
    pub r_squared: f64,
}

#[derive(Debug, Clone, Serialize)]
pub(crate) struct Results {
    pub host: HostFacts,
    pub rows: Vec<Row>,
    pub summaries: Vec<PhaseSummary>,
    pub fits: Vec<FitRow>,
}

impl Results {
    pub(crate) fn new(host: HostFacts, rows: Vec<Row>) -> Results {
        let mut results = Results { host, rows, summaries: Vec::new(), fits: Vec::new() };
        for method in results.methods() {
            for size in results.sizes() {
                for phase in Phase::ALL {
                    let values: Vec<f64> = results.select(method, size, phase).collect();
                    if !values.is_empty() {
                        results.summaries.push(PhaseSummary { method, size_mib: size, phase, summary: summarize(&values) });
                    }
                }
            }
            for phase in [Phase::Checkpoint, Phase::Restore, Phase::Total] {
                let points: Vec<(f64, f64)> = results
                    .rows
                    .iter()
                    .filter(|r| r.method == method && r.phase == phase)
                    .map(|r| (f64::from(r.size_mib) / 1024.0, r.seconds))
                    .collect();
                if let Some(fit) = least_squares(&points) {
                    results.fits.push(FitRow { method, phase, slope_s_per_gib: fit.slope, intercept_s: fit.intercept, r_squared: fit.r_squared });
                }
            }
        }
        results
    }

    pub(crate) fn sizes(&self) -> Vec<u32> {
        let mut sizes: Vec<u32> = self.rows.iter().map(|r| r.size_mib).collect();
        sizes.sort();
        sizes.dedup();
        sizes
    }

    pub(crate) fn methods(&self) -> Vec<&'static str> {
        let mut methods = Vec::new();
        for row in &self.rows {
            if !methods.contains(&row.method) {
                methods.push(row.method);
            }
        }
        methods
    }

    fn select<'a>(&'a self, method: &'a str, size: u32, phase: Phase) -> impl Iterator<Item = f64> + 'a {
        self.rows.iter().filter(move |r| r.method == method && r.size_mib == size && r.phase == phase).map(|r| r.seconds)
    }

    pub(crate) fn median(&self, method: &str, size: u32, phase: Phase) -> Option<f64> {
        let values: Vec<f64> = self.select(method, size, phase).collect();
        (!values.is_empty()).then(|| summarize(&values).median)
    }

    pub(crate) fn median_of(&self, pick: impl Fn(&Row) -> Option<f64>) -> Option<f64> {
        let values: Vec<f64> = self.rows.iter().filter_map(pick).collect();
        (!values.is_empty()).then(|| summarize(&values).median)
    }
}
