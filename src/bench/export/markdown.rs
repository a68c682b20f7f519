//! summary.md: the paper's Table 1 per method and size, the fits of time
//! against memory, CRIU's frozen time, and ferry's speed-up over the baseline.

use std::io::{self, Write};

use super::Exporter;
use crate::bench::{Phase, Results, Row};

pub(crate) struct Markdown;

impl Exporter for Markdown {
    fn file_name(&self) -> &'static str {
        "summary.md"
    }

    fn write(&self, results: &Results, out: &mut dyn Write) -> io::Result<()> {
        let h = &results.host;
        writeln!(out, "# ferry bench\n")?;
        writeln!(out, "{} · kernel {} · CRIU {} · Docker {} · {} CPUs · board {}\n", h.arch, h.kernel, h.criu, h.docker, h.cpus, h.board)?;
        writeln!(out, "## Seconds per phase (like the paper's Table 1)\n")?;
        writeln!(out, "| method | MiB | phase | n | min | median | mean | max |")?;
        writeln!(out, "|---|---:|---|---:|---:|---:|---:|---:|")?;
        for s in &results.summaries {
            let v = &s.summary;
            writeln!(
                out,
                "| {} | {} | {} | {} | {:.3} | {:.3} | {:.3} | {:.3} |",
                s.method, s.size_mib, s.phase, v.count, v.min, v.median, v.mean, v.max
            )?;
        }
        writeln!(out, "\n## Time against memory (least squares over every run)\n")?;
        writeln!(out, "| method | phase | slope (s/GiB) | intercept (s) | R² |")?;
        writeln!(out, "|---|---|---:|---:|---:|")?;
        for f in &results.fits {
            writeln!(out, "| {} | {} | {:.3} | {:.3} | {:.3} |", f.method, f.phase, f.slope_s_per_gib, f.intercept_s, f.r_squared)?;
        }
        writeln!(out, "\n## The app's frozen time (CRIU's own statistics, median ms)\n")?;
        writeln!(out, "| MiB | frozen (dump) | restore (CRIU) |")?;
        writeln!(out, "|---:|---:|---:|")?;
        for size in results.sizes() {
            let frozen = results.median_of(|r| (r.method == "ferry-criu" && r.size_mib == size && r.phase == Phase::Checkpoint).then_some(r.criu_frozen_ms));
            let restore = results.median_of(|r| (r.method == "ferry-criu" && r.size_mib == size && r.phase == Phase::Restore).then_some(r.criu_restore_ms));
            writeln!(out, "| {size} | {} | {} |", cell(frozen, 1), cell(restore, 1))?;
        }
        writeln!(out, "\n## Checkpoint + restore total, and ferry's speed-up over the paper's method\n")?;
        writeln!(out, "| MiB | ferry criu (s) | ferry commit (s) | baseline (s) | speed-up |")?;
        writeln!(out, "|---:|---:|---:|---:|---:|")?;
        for size in results.sizes() {
            let criu = results.median("ferry-criu", size, Phase::Total);
            let commit = results.median("ferry-commit", size, Phase::Total);
            let baseline = results.median("baseline", size, Phase::Total);
            let speedup = match (criu, baseline) {
                (Some(c), Some(b)) if c > 0.0 => format!("{:.1}×", b / c),
                _ => "–".into(),
            };
            writeln!(out, "| {size} | {} | {} | {} | {speedup} |", cell(criu, 3), cell(commit, 3), cell(baseline, 3))?;
        }
        writeln!(out, "\n## CPU during each phase (mean % of one core; host: % of all cores)\n")?;
        writeln!(out, "| method | phase | dockerd | containerd | shims | criu+runc | ferry | host mean | host peak |")?;
        writeln!(out, "|---|---|---:|---:|---:|---:|---:|---:|---:|")?;
        for method in results.methods() {
            for phase in Phase::MEASURED {
                let rows: Vec<_> = results.rows.iter().filter(|r| r.method == method && r.phase == phase).collect();
                if rows.is_empty() {
                    continue;
                }
                let mean = |f: &dyn Fn(&Row) -> f64| rows.iter().map(|r| f(r)).sum::<f64>() / rows.len() as f64;
                let cpu = |g: usize| mean(&|r| r.usage.user_pct[g] + r.usage.system_pct[g]);
                let peak = rows.iter().map(|r| r.usage.host_cpu_pct_peak).fold(0.0, f64::max);
                writeln!(
                    out,
                    "| {method} | {phase} | {:.0} | {:.0} | {:.0} | {:.0} | {:.0} | {:.0} | {peak:.0} |",
                    cpu(0),
                    cpu(1),
                    cpu(2),
                    cpu(3),
                    cpu(4),
                    mean(&|r| r.usage.host_cpu_pct_mean)
                )?;
            }
        }
        Ok(())
    }
}

fn cell(value: Option<f64>, decimals: usize) -> String {
    value.map_or("–".into(), |v| format!("{v:.decimals$}"))
}
