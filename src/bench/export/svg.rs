//! The paper's figures as small hand-written SVG line charts: time against
//! memory with the fit (Fig. 2), CRIU against commit (Fig. 3), and CPU during
//! checkpoint and restore (Figs. 4, 5). No crate: a chart is a few dozen
//! elements, and the board builds carry this code at no cost worth a feature.

use std::fmt::Write as _;
use std::io::{self, Write};

use super::Exporter;
use crate::bench::stats::{least_squares, Fit};
use crate::bench::telemetry::GROUPS;
use crate::bench::{Phase, Results, Row};

const WIDTH: f64 = 760.0;
/// The plot's height; the legend adds rows below it.
const HEIGHT: f64 = 440.0;
const LEGEND_ROW: f64 = 20.0;
const LEFT: f64 = 70.0;
const RIGHT: f64 = 30.0;
const TOP: f64 = 50.0;
const BOTTOM: f64 = 60.0;
const COLORS: [&str; 7] = ["#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b", "#17becf"];

pub(crate) struct Series {
    pub name: String,
    /// One point per measured size: (MiB, value).
    pub points: Vec<(f64, f64)>,
    pub fit: Option<Fit>,
}

pub(crate) struct Chart {
    pub title: String,
    pub x_label: String,
    pub y_label: String,
    pub series: Vec<Series>,
}

/// A round step for about five ticks up to `max`.
fn tick_step(max: f64) -> f64 {
    let raw = (max / 5.0).max(f64::MIN_POSITIVE);
    let magnitude = 10f64.powf(raw.log10().floor());
    [1.0, 2.0, 2.5, 5.0, 10.0].iter().map(|m| m * magnitude).find(|s| *s >= raw).unwrap_or(10.0 * magnitude)
}

fn escape(text: &str) -> String {
    text.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;")
}

impl Chart {
    pub(crate) fn render(&self) -> String {
        let max_x = self.series.iter().flat_map(|s| s.points.iter().map(|p| p.0)).fold(1.0, f64::max);
        let max_y = self.series.iter().flat_map(|s| s.points.iter().map(|p| p.1)).fold(0.0, f64::max).max(0.001);
        let (x_step, y_step) = (tick_step(max_x), tick_step(max_y * 1.1));
        let x_end = (max_x / x_step).ceil() * x_step;
        let y_end = ((max_y * 1.1) / y_step).ceil() * y_step;
        let plot_w = WIDTH - LEFT - RIGHT;
        let plot_h = HEIGHT - TOP - BOTTOM;
        let sx = |x: f64| LEFT + x / x_end * plot_w;
        let sy = |y: f64| TOP + plot_h - y / y_end * plot_h;
        // The legend sits below the plot, two entries a row, so it never hides data.
        let legend_rows = self.series.len().div_ceil(2) as f64;
        let height = HEIGHT + legend_rows * LEGEND_ROW + 10.0;
        let mut svg = String::new();
        let _ = write!(
            svg,
            r#"<svg xmlns="http://www.w3.org/2000/svg" width="{WIDTH}" height="{height}" viewBox="0 0 {WIDTH} {height}" font-family="sans-serif" font-size="12">"#
        );
        let _ = write!(svg, r#"<rect width="{WIDTH}" height="{height}" fill="white"/>"#);
        let _ = write!(svg, r#"<text x="{}" y="28" text-anchor="middle" font-size="16" font-weight="bold">{}</text>"#, WIDTH / 2.0, escape(&self.title));
        // Grid and ticks.
        let mut x = 0.0;
        while x <= x_end + x_step / 2.0 {
            let _ = write!(svg, r##"<line x1="{0:.1}" y1="{1:.1}" x2="{0:.1}" y2="{2:.1}" stroke="#ddd"/><text x="{0:.1}" y="{3:.1}" text-anchor="middle">{4}</text>"##, sx(x), TOP, TOP + plot_h, TOP + plot_h + 18.0, x);
            x += x_step;
        }
        let mut y = 0.0;
        while y <= y_end + y_step / 2.0 {
            let _ = write!(svg, r##"<line x1="{0:.1}" y1="{1:.1}" x2="{2:.1}" y2="{1:.1}" stroke="#ddd"/><text x="{3:.1}" y="{4:.1}" text-anchor="end">{5}</text>"##, LEFT, sy(y), LEFT + plot_w, LEFT - 8.0, sy(y) + 4.0, trim(y));
            y += y_step;
        }
        let _ = write!(svg, r##"<rect x="{LEFT}" y="{TOP}" width="{plot_w}" height="{plot_h}" fill="none" stroke="#333"/>"##);
        let _ = write!(svg, r#"<text x="{:.1}" y="{:.1}" text-anchor="middle">{}</text>"#, LEFT + plot_w / 2.0, HEIGHT - 18.0, escape(&self.x_label));
        let _ = write!(svg, r#"<text x="18" y="{0:.1}" text-anchor="middle" transform="rotate(-90 18 {0:.1})">{1}</text>"#, TOP + plot_h / 2.0, escape(&self.y_label));
        for (i, series) in self.series.iter().enumerate() {
            let color = COLORS[i % COLORS.len()];
            let name = escape(&series.name);
            if let Some(fit) = series.fit {
                let (x0, x1) = (0.0, x_end);
                let clamp = |v: f64| v.clamp(0.0, y_end);
                let _ = write!(svg, r#"<line class="fit" x1="{:.1}" y1="{:.1}" x2="{:.1}" y2="{:.1}" stroke="{color}" stroke-dasharray="5,4" stroke-width="1.5"/>"#, sx(x0), sy(clamp(fit.intercept)), sx(x1), sy(clamp(fit.intercept + fit.slope * x1)));
            }
            let path: Vec<String> = series.points.iter().map(|(x, y)| format!("{:.1},{:.1}", sx(*x), sy(*y))).collect();
            let _ = write!(svg, r#"<polyline points="{}" fill="none" stroke="{color}" stroke-width="2"/>"#, path.join(" "));
            for (x, y) in &series.points {
                let _ = write!(svg, r#"<circle class="point" data-series="{name}" cx="{:.1}" cy="{:.1}" r="4" fill="{color}"><title>{name}: {x} MiB, {}</title></circle>"#, sx(*x), sy(*y), trim(*y));
            }
            let column = (i % 2) as f64;
            let ly = HEIGHT + 10.0 + (i / 2) as f64 * LEGEND_ROW;
            let label = match series.fit {
                Some(fit) => format!("{name} (fit: {:.3} s/GiB, R² {:.2})", fit.slope * 1024.0, fit.r_squared),
                None => name.clone(),
            };
            let lx = LEFT + column * (WIDTH - LEFT - RIGHT) / 2.0;
            let _ = write!(svg, r#"<rect x="{:.1}" y="{:.1}" width="14" height="4" fill="{color}"/><text x="{:.1}" y="{:.1}">{label}</text>"#, lx, ly - 6.0, lx + 20.0, ly);
        }
        svg.push_str("</svg>\n");
        svg
    }
}

fn trim(value: f64) -> String {
    let text = format!("{value:.3}");
    text.trim_end_matches('0').trim_end_matches('.').to_string()
}

/// What a method is called in a legend.
fn label(method: &str) -> &str {
    match method {
        "ferry-criu" => "ferry, CRIU (process carries on)",
        "ferry-commit" => "ferry, docker commit + save/load (app restarts)",
        "baseline" => "the paper's scripts: docker checkpoint + tar",
        other => other,
    }
}

/// Median seconds of `phase` per size for `method`, one point per size.
fn medians(results: &Results, method: &str, phase: Phase) -> Vec<(f64, f64)> {
    results.sizes().into_iter().filter_map(|size| Some((f64::from(size), results.median(method, size, phase)?))).collect()
}

fn write_chart(chart: Chart, out: &mut dyn Write) -> io::Result<()> {
    out.write_all(chart.render().as_bytes())
}

/// Fig. 2: checkpoint and restore time against memory, with the fit.
pub(crate) struct TimeVsMemory;

impl Exporter for TimeVsMemory {
    fn file_name(&self) -> &'static str {
        "fig2-time-vs-memory.svg"
    }

    fn write(&self, results: &Results, out: &mut dyn Write) -> io::Result<()> {
        let series = [Phase::Checkpoint, Phase::Restore]
            .into_iter()
            .map(|phase| {
                let points = medians(results, "ferry-criu", phase);
                Series { name: format!("ferry criu {phase}"), fit: least_squares(&points), points }
            })
            .collect();
        write_chart(Chart { title: "Checkpoint and restore time against memory".into(), x_label: "container memory (MiB)".into(), y_label: "time (s)".into(), series }, out)
    }
}

/// Fig. 3: CRIU against commit (and the paper's baseline), checkpoint + restore.
pub(crate) struct CriuVsCommit;

impl Exporter for CriuVsCommit {
    fn file_name(&self) -> &'static str {
        "fig3-criu-vs-commit.svg"
    }

    fn write(&self, results: &Results, out: &mut dyn Write) -> io::Result<()> {
        let series = results
            .methods()
            .into_iter()
            .map(|method| Series { name: label(method).into(), points: medians(results, method, Phase::Total), fit: None })
            .filter(|s| !s.points.is_empty())
            .collect();
        write_chart(Chart { title: "CRIU against docker commit + save/load".into(), x_label: "container memory (MiB)".into(), y_label: "checkpoint + restore (s)".into(), series }, out)
    }
}

/// Figs. 4 and 5: CPU of each process group during one phase of ferry's CRIU path.
pub(crate) struct CpuDuring {
    pub phase: Phase,
    pub file: &'static str,
}

impl Exporter for CpuDuring {
    fn file_name(&self) -> &'static str {
        self.file
    }

    fn write(&self, results: &Results, out: &mut dyn Write) -> io::Result<()> {
        let mean_cpu = |size: u32, pick: &dyn Fn(&Row) -> f64| {
            let rows: Vec<_> = results.rows.iter().filter(|r| r.method == "ferry-criu" && r.phase == self.phase && r.size_mib == size).collect();
            (!rows.is_empty()).then(|| rows.iter().map(|r| pick(r)).sum::<f64>() / rows.len() as f64)
        };
        let mut series: Vec<Series> = GROUPS
            .iter()
            .enumerate()
            .map(|(g, group)| Series {
                name: format!("{group} (user+system)"),
                points: results.sizes().into_iter().filter_map(|s| Some((f64::from(s), mean_cpu(s, &|r| r.usage.user_pct[g] + r.usage.system_pct[g])?))).collect(),
                fit: None,
            })
            .collect();
        series.push(Series {
            name: "host, all cores".into(),
            points: results.sizes().into_iter().filter_map(|s| Some((f64::from(s), mean_cpu(s, &|r| r.usage.host_cpu_pct_mean)?))).collect(),
            fit: None,
        });
        let title = format!("CPU during {} (ferry, CRIU path)", self.phase);
        write_chart(Chart { title, x_label: "container memory (MiB)".into(), y_label: "CPU (% of one core)".into(), series }, out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_chart_has_one_point_per_size_and_balanced_tags() {
        let chart = Chart {
            title: "t <&>".into(),
            x_label: "MiB".into(),
            y_label: "s".into(),
            series: vec![Series { name: "a".into(), points: vec![(16.0, 0.5), (64.0, 1.0), (256.0, 3.0)], fit: least_squares(&[(16.0, 0.5), (64.0, 1.0), (256.0, 3.0)]) }],
        };
        let svg = chart.render();
        assert_eq!(svg.matches(r#"class="point""#).count(), 3);
        assert_eq!(svg.matches("<circle").count(), svg.matches("</circle>").count());
        assert!(svg.contains("t &lt;&amp;&gt;") && svg.starts_with("<svg") && svg.trim_end().ends_with("</svg>"));
        assert!(svg.contains("s/GiB"), "the legend gives the fit");
    }

    #[test]
    fn ticks_are_round() {
        assert_eq!(tick_step(256.0), 100.0);
        assert_eq!(tick_step(2.3), 0.5);
        assert_eq!(tick_step(12.0), 2.5);
    }
}
