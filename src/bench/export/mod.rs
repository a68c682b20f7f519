//! Every output of `ferry bench` is one small type behind one trait; the
//! bench only loops over them (the shape of hyperfine's exporters).

mod csv;
mod json;
mod markdown;
mod svg;

use std::io::{self, Write};

use super::{Phase, Results};

pub(crate) trait Exporter {
    fn file_name(&self) -> &'static str;
    fn write(&self, results: &Results, out: &mut dyn Write) -> io::Result<()>;
}

pub(crate) fn all() -> Vec<Box<dyn Exporter>> {
    vec![
        Box::new(csv::Csv),
        Box::new(json::Json),
        Box::new(markdown::Markdown),
        Box::new(svg::TimeVsMemory),
        Box::new(svg::CriuVsCommit),
        Box::new(svg::CpuDuring { phase: Phase::Checkpoint, file: "fig4-cpu-checkpoint.svg" }),
        Box::new(svg::CpuDuring { phase: Phase::Restore, file: "fig5-cpu-restore.svg" }),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bench::{HostFacts, Row};

    /// Two sizes × two repetitions of ferry-criu and the baseline, with
    /// seconds that make every median, fit and column known in advance.
    fn sample() -> Results {
        let host = HostFacts {
            arch: "x86_64".into(),
            kernel: "6.1".into(),
            criu: "4.2".into(),
            docker: "20.10.24".into(),
            cpus: 2,
            board: "none".into(),
        };
        let mut rows = Vec::new();
        for (method, per_mib) in [("ferry-criu", 0.001), ("baseline", 0.01)] {
            for size in [16u32, 64] {
                for repetition in 1..=2 {
                    for phase in Phase::ALL {
                        let seconds = match phase {
                            Phase::Total => 2.0 * per_mib * f64::from(size),
                            Phase::Checkpoint | Phase::Restore => per_mib * f64::from(size),
                            _ => 0.0,
                        };
                        rows.push(Row {
                            size_mib: size,
                            method,
                            repetition,
                            phase,
                            seconds,
                            raw_bytes: u64::from(size) << 20,
                            compressed_bytes: u64::from(size) << 20,
                            checkpoint_path: if method == "baseline" { "baseline" } else { "runc" },
                            criu_frozen_ms: 50.0,
                            criu_restore_ms: 100.0,
                            usage: Default::default(),
                        });
                    }
                }
            }
        }
        Results::new(host, rows)
    }

    fn render(exporter: &dyn Exporter, results: &Results) -> String {
        let mut out = Vec::new();
        exporter.write(results, &mut out).unwrap();
        String::from_utf8(out).unwrap()
    }

    #[test]
    fn every_exporter_writes_the_same_fixed_sample_faithfully() {
        let results = sample();
        assert_eq!(results.rows.len(), 2 * 2 * 2 * Phase::ALL.len());
        let fit = results.fits.iter().find(|f| f.method == "ferry-criu" && f.phase == Phase::Checkpoint).unwrap();
        assert!((fit.slope_s_per_gib - 1.024).abs() < 1e-9 && fit.r_squared > 0.999, "{fit:?}");

        let csv = render(&csv::Csv, &results);
        assert_eq!(csv.lines().count(), 1 + results.rows.len(), "a header and one line per row");
        assert!(csv.lines().nth(1).unwrap().starts_with("16,ferry-criu,1,checkpoint,0.016"), "{csv}");

        let json: serde_json::Value = serde_json::from_str(&render(&json::Json, &results)).unwrap();
        assert_eq!(json["rows"].as_array().unwrap().len(), results.rows.len());
        assert_eq!(json["rows"][0]["phase"], "checkpoint");

        let markdown = render(&markdown::Markdown, &results);
        assert!(markdown.contains("| ferry-criu | 64 | total | 2 |"), "{markdown}");

        for exporter in all().iter().filter(|e| e.file_name().ends_with(".svg")) {
            let svg = render(exporter.as_ref(), &results);
            assert!(svg.starts_with("<svg") && svg.trim_end().ends_with("</svg>"), "{}", exporter.file_name());
            assert_eq!(svg.matches("<g").count(), svg.matches("</g>").count(), "{}", exporter.file_name());
        }
    }
}
