//! `ferry bench` end to end on a real engine: its outputs are complete and
//! agree with each other. Run by `make test`.

mod common;

use std::collections::BTreeMap;

use common::*;

#[test]
#[ignore = "needs a real dockerd + CRIU: run `make test`"]
fn bench_outputs_are_complete_consistent_and_plot_every_size() {
    let scratch = Scratch::new("bench");
    let out = scratch.path("out");
    let run = ferry_ok(
        ENGINE_A,
        &scratch.work_dir(),
        &["-q", "bench", "--sizes", "16,64", "--repeat", "2", "--baseline", "--out", out.to_str().unwrap()],
    );
    assert!(String::from_utf8_lossy(&run.stdout).contains("12 runs"), "{}", String::from_utf8_lossy(&run.stdout));

    // results.csv: every column for every row; 2 sizes × 2 repetitions × 3 methods × 6 phases.
    let csv = std::fs::read_to_string(out.join("results.csv")).unwrap();
    let mut lines = csv.lines();
    let header: Vec<&str> = lines.next().unwrap().split(',').collect();
    let rows: Vec<Vec<&str>> = lines.map(|l| l.split(',').collect()).collect();
    assert_eq!(rows.len(), 72);
    for row in &rows {
        assert_eq!(row.len(), header.len(), "{row:?}");
        assert!(row.iter().all(|f| !f.is_empty()), "empty field in {row:?}");
    }
    let column = |name: &str| header.iter().position(|h| *h == name).unwrap_or_else(|| panic!("no column {name}"));
    for name in ["criu_frozen_ms", "criu_user_pct", "dockerd_rss_mib_peak", "host_cpu_pct_peak", "compressed_bytes"] {
        column(name);
    }

    // summary.md's medians are the CSV's.
    let mut seconds: BTreeMap<(String, String, String), Vec<f64>> = BTreeMap::new();
    for row in &rows {
        let key = (row[column("method")].to_string(), row[column("size_mib")].to_string(), row[column("phase")].to_string());
        seconds.entry(key).or_default().push(row[column("seconds")].parse().unwrap());
    }
    let summary = std::fs::read_to_string(out.join("summary.md")).unwrap();
    let mut checked = 0;
    for line in summary.lines().filter(|l| l.starts_with("| ferry-") || l.starts_with("| baseline")) {
        let cells: Vec<&str> = line.trim_matches('|').split('|').map(str::trim).collect();
        if cells.len() != 8 {
            continue;
        }
        let values = &seconds[&(cells[0].to_string(), cells[1].to_string(), cells[2].to_string())];
        let mut sorted = values.clone();
        sorted.sort_by(f64::total_cmp);
        let median = (sorted[0] + sorted[1]) / 2.0;
        // The table prints milliseconds: equal to within its rounding.
        let close = |cell: &str, value: f64| (cell.parse::<f64>().unwrap() - value).abs() <= 0.0005 + 1e-9;
        assert!(close(cells[5], median), "median of {cells:?} is {median}");
        assert!(close(cells[4], sorted[0]) && close(cells[7], sorted[1]), "min and max of {cells:?}: {sorted:?}");
        assert_eq!(cells[3], "2", "two repetitions");
        checked += 1;
    }
    assert_eq!(checked, 36, "one summary row per method, size and phase");

    // Each fit of time against memory is the least-squares line through the
    // CSV's rows. Whether it rises is the machine's, not the bench's: ferry's
    // 16 and 64 MiB totals here differ by less than their noise; the paper's
    // method, which copies the memory several times, rises clearly.
    let json: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(out.join("results.json")).unwrap()).unwrap();
    let fits = json["fits"].as_array().unwrap();
    assert_eq!(fits.len(), 9, "checkpoint, restore and total for each of the 3 methods");
    for fit in fits {
        let points: Vec<(f64, f64)> = rows
            .iter()
            .filter(|r| r[column("method")] == fit["method"] && r[column("phase")] == fit["phase"])
            .map(|r| (r[column("size_mib")].parse::<f64>().unwrap() / 1024.0, r[column("seconds")].parse::<f64>().unwrap()))
            .collect();
        assert_eq!(points.len(), 4, "{fit}");
        let n = points.len() as f64;
        let (mean_x, mean_y) = (points.iter().map(|p| p.0).sum::<f64>() / n, points.iter().map(|p| p.1).sum::<f64>() / n);
        let slope = points.iter().map(|p| (p.0 - mean_x) * (p.1 - mean_y)).sum::<f64>()
            / points.iter().map(|p| (p.0 - mean_x).powi(2)).sum::<f64>();
        let close = |a: f64, b: f64| (a - b).abs() <= 1e-4 * (1.0 + b.abs());
        assert!(close(fit["slope_s_per_gib"].as_f64().unwrap(), slope), "{fit}: slope {slope} from the CSV");
        assert!(close(fit["intercept_s"].as_f64().unwrap(), mean_y - slope * mean_x), "{fit}");
    }
    for phase in ["checkpoint", "restore"] {
        let fit = fits.iter().find(|f| f["method"] == "baseline" && f["phase"] == phase).unwrap();
        assert!(fit["slope_s_per_gib"].as_f64().unwrap() > 0.0, "baseline {phase}: {fit}");
    }

    // Each figure is well-formed XML with one point per size in every series.
    for figure in ["fig2-time-vs-memory.svg", "fig3-criu-vs-commit.svg", "fig4-cpu-checkpoint.svg", "fig5-cpu-restore.svg"] {
        let svg = std::fs::read_to_string(out.join(figure)).unwrap();
        assert_well_formed(&svg, figure);
        let mut per_series: BTreeMap<&str, usize> = BTreeMap::new();
        for piece in svg.split(r#"class="point" data-series=""#).skip(1) {
            *per_series.entry(piece.split('"').next().unwrap()).or_default() += 1;
        }
        assert!(!per_series.is_empty(), "{figure} has no points");
        assert!(per_series.values().all(|&n| n == 2), "{figure}: {per_series:?}");
        assert!(svg.contains("(MiB)") && svg.contains("(s)") || svg.contains("(% of one core)"), "{figure}: axes carry units");
    }
}

#[test]
#[ignore = "needs two real engines + CRIU: run `make test`"]
fn bench_to_a_peer_measures_the_transfer_and_leaves_nothing_there() {
    let hosts = TwoHosts::new("bench-to", &[]);
    let out = hosts.scratch.path("out");
    ferry_ok(
        ENGINE_A,
        &hosts.scratch.work_dir(),
        &[
            "-q", "bench", "--sizes", "16", "--repeat", "1", "--mode", "criu", "--to", &hosts.agent_b.addr,
            "--token-file", hosts.token.to_str().unwrap(), "--out", out.to_str().unwrap(),
        ],
    );
    let csv = std::fs::read_to_string(out.join("results.csv")).unwrap();
    let transfer = csv.lines().find(|l| l.contains(",transfer,")).expect("a transfer row");
    let seconds: f64 = transfer.split(',').nth(4).unwrap().parse().unwrap();
    assert!(seconds > 0.0, "{transfer}");
    assert!(!exists(ENGINE_B, "ferry-bench-dst"), "the bench left its container on the peer");
}

/// A small XML well-formedness check: tags nest and close, attributes are quoted.
fn assert_well_formed(text: &str, name: &str) {
    let mut stack: Vec<String> = Vec::new();
    let mut rest = text;
    while let Some(open) = rest.find('<') {
        let close = rest[open..].find('>').unwrap_or_else(|| panic!("{name}: unclosed '<'")) + open;
        let tag = &rest[open + 1..close];
        assert_eq!(tag.matches('"').count() % 2, 0, "{name}: unbalanced quotes in <{tag}>");
        if let Some(end) = tag.strip_prefix('/') {
            assert_eq!(stack.pop().as_deref(), Some(end.trim()), "{name}: </{end}> closes the wrong element");
        } else if !tag.ends_with('/') && !tag.starts_with('?') && !tag.starts_with('!') {
            stack.push(tag.split_whitespace().next().unwrap().to_string());
        }
        assert!(!rest[close + 1..].split('<').next().unwrap().contains('&') || rest[close + 1..].split('<').next().unwrap().contains(';'), "{name}: bare '&'");
        rest = &rest[close + 1..];
    }
    assert!(stack.is_empty(), "{name}: unclosed {stack:?}");
}
