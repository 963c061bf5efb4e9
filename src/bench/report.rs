//! The results of one `kakoi bench`: the JSON document, the Markdown table and the SVG plot.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use plotters::coord::ranged1d::SegmentValue;
use plotters::prelude::*;
use serde::{Deserialize, Serialize};

use super::stats::Summary;

/// Issue 2's targets for `kakoi exec -- python -c pass`, relative to bare python.
pub const TARGET_MEDIAN: f64 = 1.15;
/// See [`TARGET_MEDIAN`].
pub const TARGET_P95: f64 = 1.30;

/// Errors writing the results.
#[derive(Debug, thiserror::Error)]
pub enum ReportError {
    /// A file or directory could not be written.
    #[error("cannot write {path}")]
    Io {
        /// The path.
        path: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// plotters failed to draw.
    #[error("cannot draw the plot {path}: {message}")]
    Plot {
        /// The SVG's path.
        path: PathBuf,
        /// plotters' message.
        message: String,
    },
}

/// Whether a row has numbers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RowStatus {
    /// Every run passed its check.
    Ok,
    /// At least one run failed its check: the row has no numbers.
    Failed,
    /// The backend is not available on this host (see the backend's reason).
    Unavailable,
    /// Not applicable to this backend (e.g. bwrap has no env store).
    NotApplicable,
}

/// The host and when.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Host {
    /// `uname -r`.
    pub kernel: String,
    /// Online CPUs.
    pub cpus: usize,
    /// `/proc/loadavg` (1, 5, 15 min) when the bench started.
    pub loadavg_start: Option<[f64; 3]>,
    /// The same when it ended.
    pub loadavg_end: Option<[f64; 3]>,
    /// `v1`/hybrid or `v2`.
    pub cgroup: String,
}

/// The settings of the run.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Settings {
    /// Timed runs per backend and workload.
    pub runs: usize,
    /// Untimed interleaved iterations after the first run.
    pub warmup: usize,
    /// Workload names.
    pub workloads: Vec<String>,
    /// Parallelism levels of the throughput test.
    pub concurrency: Vec<usize>,
    /// Runs per throughput batch, at least (a multiple of the parallelism).
    pub concurrency_runs: usize,
    /// Workload of the throughput test.
    pub concurrency_workload: String,
    /// Cold env builds per backend.
    pub cold_runs: usize,
    /// The env workload's requirements.
    pub requirements: String,
    /// The module the env workload imports.
    pub env_module: String,
}

/// A backend and whether it could run here.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BackendInfo {
    /// Label (`bare`, `kakoi`, `bwrap`, `docker`).
    pub name: String,
    /// It could run on this host.
    pub available: bool,
    /// Why not, if not.
    pub reason: Option<String>,
    /// How it runs a workload.
    pub description: String,
}

/// One (workload, backend) series with the env cached.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Row {
    /// Workload name.
    pub workload: String,
    /// Backend label.
    pub backend: String,
    /// Whether the numbers exist.
    pub status: RowStatus,
    /// Statistics of the timed runs (ms), for `ok` rows.
    pub summary: Option<Summary>,
    /// The first run in the bench process (ms): cold process caches, first container.
    pub first_ms: Option<f64>,
    /// Median / bare python's median for the same workload.
    pub ratio_median: Option<f64>,
    /// p95 / bare python's p95 for the same workload.
    pub ratio_p95: Option<f64>,
    /// Runs that failed their check.
    pub failures: usize,
    /// The first failure, or why the backend is unavailable.
    pub error: Option<String>,
    /// The command timed.
    pub command: Vec<String>,
    /// Every timed sample (ms), in run order.
    pub samples_ms: Vec<f64>,
}

/// The env workload with the env not cached yet.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ColdRow {
    /// Backend label.
    pub backend: String,
    /// What one sample covers.
    pub what: String,
    /// Whether the numbers exist.
    pub status: RowStatus,
    /// Statistics (ms).
    pub summary: Option<Summary>,
    /// Median / bare's median.
    pub ratio_median: Option<f64>,
    /// The first failure, or why not available.
    pub error: Option<String>,
    /// Every sample (ms).
    pub samples_ms: Vec<f64>,
}

/// Throughput of one backend at one parallelism.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ConcurrencyRow {
    /// Backend label.
    pub backend: String,
    /// Parallel runs.
    pub parallel: usize,
    /// Whether the numbers exist.
    pub status: RowStatus,
    /// Runs in the batch.
    pub runs: usize,
    /// Wall time of the batch (s).
    pub seconds: Option<f64>,
    /// Checked runs per second.
    pub runs_per_s: Option<f64>,
    /// runs/s / bare's runs/s at the same parallelism.
    pub ratio_to_bare: Option<f64>,
    /// The first failure, or why not available.
    pub error: Option<String>,
}

/// Everything one `kakoi bench` measured.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Report {
    /// kakoi's version.
    pub kakoi_version: String,
    /// Start, RFC 3339 UTC.
    pub date: String,
    /// The host.
    pub host: Host,
    /// The settings.
    pub settings: Settings,
    /// The backends.
    pub backends: Vec<BackendInfo>,
    /// Env cached, interleaved series.
    pub warm: Vec<Row>,
    /// Env not cached.
    pub cold: Vec<ColdRow>,
    /// Throughput.
    pub concurrency: Vec<ConcurrencyRow>,
    /// Remarks for the reader.
    pub notes: Vec<String>,
}

impl Report {
    /// Fill every ratio to bare python from the same run.
    pub fn fill_ratios(&mut self) {
        let bare_of = |rows: &[Row], wl: &str| {
            rows.iter()
                .find(|r| r.backend == "bare" && r.workload == wl)
                .and_then(|r| r.summary.clone())
        };
        let snapshot = self.warm.clone();
        for row in &mut self.warm {
            if let (Some(s), Some(b)) = (&row.summary, bare_of(&snapshot, &row.workload)) {
                row.ratio_median = Some(s.median / b.median);
                row.ratio_p95 = Some(s.p95 / b.p95);
            }
        }
        let bare_cold = self
            .cold
            .iter()
            .find(|r| r.backend == "bare")
            .and_then(|r| r.summary.clone());
        for row in &mut self.cold {
            if let (Some(s), Some(b)) = (&row.summary, &bare_cold) {
                row.ratio_median = Some(s.median / b.median);
            }
        }
        let snapshot = self.concurrency.clone();
        for row in &mut self.concurrency {
            let bare = snapshot
                .iter()
                .find(|r| r.backend == "bare" && r.parallel == row.parallel)
                .and_then(|r| r.runs_per_s);
            if let (Some(x), Some(b)) = (row.runs_per_s, bare) {
                row.ratio_to_bare = Some(x / b);
            }
        }
    }

    /// Issue 2's target for `pass`: `Some((median met, p95 met, median ratio, p95 ratio))`
    /// when the kakoi and bare rows of `pass` have numbers.
    pub fn pass_target(&self) -> Option<(bool, bool, f64, f64)> {
        self.pass_target_of("kakoi")
    }

    /// [`Report::pass_target`] for another backend's `pass` row (e.g. `kakoi-nocg`).
    pub fn pass_target_of(&self, backend: &str) -> Option<(bool, bool, f64, f64)> {
        let row = self
            .warm
            .iter()
            .find(|r| r.backend == backend && r.workload == "pass")?;
        let (m, p) = (row.ratio_median?, row.ratio_p95?);
        Some((m <= TARGET_MEDIAN, p <= TARGET_P95, m, p))
    }

    /// Any row whose runs failed.
    pub fn any_failed(&self) -> bool {
        self.warm.iter().any(|r| r.status == RowStatus::Failed)
            || self.cold.iter().any(|r| r.status == RowStatus::Failed)
            || self
                .concurrency
                .iter()
                .any(|r| r.status == RowStatus::Failed)
    }

    /// The Markdown tables.
    pub fn markdown(&self) -> String {
        let mut out = String::new();
        let load = |l: &Option<[f64; 3]>| match l {
            Some([a, b, c]) => format!("{a:.2} {b:.2} {c:.2}"),
            None => "unknown".into(),
        };
        let _ = writeln!(out, "# kakoi bench {}\n", self.date);
        let _ = writeln!(
            out,
            "kakoi {} · kernel {} · {} CPUs · cgroup {} · load average (1/5/15 min) {} at \
             start, {} at end{}\n",
            self.kakoi_version,
            self.host.kernel,
            self.host.cpus,
            self.host.cgroup,
            load(&self.host.loadavg_start),
            load(&self.host.loadavg_end),
            match self.host.loadavg_start {
                Some([l, ..]) if l > self.host.cpus as f64 =>
                    " — **busy host: absolute times are inflated, compare the ratios**",
                _ => "",
            }
        );
        let _ = writeln!(out, "Backends:\n");
        for b in &self.backends {
            let state = if b.available {
                String::new()
            } else {
                format!(
                    " — **unavailable**: {}",
                    cell(b.reason.as_deref().unwrap_or("?"))
                )
            };
            let _ = writeln!(out, "- `{}`: {}{state}", b.name, b.description);
        }
        let _ = writeln!(
            out,
            "\n## Warm (env cached): {} timed runs per cell, interleaved round-robin, after \
             one first run and {} warm-up iterations\n",
            self.settings.runs, self.settings.warmup
        );
        out.push_str(
            "| workload | backend | median ms | p95 ms | median / bare | p95 / bare | first run ms |\n\
             |---|---|---:|---:|---:|---:|---:|\n",
        );
        for r in &self.warm {
            match (&r.status, &r.summary) {
                (RowStatus::Ok, Some(s)) => {
                    let _ = writeln!(
                        out,
                        "| {} | {} | {:.2} | {:.2} | {} | {} | {} |",
                        r.workload,
                        r.backend,
                        s.median,
                        s.p95,
                        ratio(r.ratio_median),
                        ratio(r.ratio_p95),
                        r.first_ms.map_or("–".into(), |v| format!("{v:.1}"))
                    );
                }
                (status, _) => {
                    let _ = writeln!(
                        out,
                        "| {} | {} | {} | | | | |",
                        r.workload,
                        r.backend,
                        status_cell(*status, r.failures, r.error.as_deref())
                    );
                }
            }
        }
        if !self.cold.is_empty() {
            let _ = writeln!(
                out,
                "\n## Cold (env not cached): `import {}` with requirements `{}`\n",
                self.settings.env_module,
                self.settings.requirements.replace('\n', " ")
            );
            out.push_str("| backend | one sample is | median ms | n | median / bare |\n|---|---|---:|---:|---:|\n");
            for r in &self.cold {
                match (&r.status, &r.summary) {
                    (RowStatus::Ok, Some(s)) => {
                        let _ = writeln!(
                            out,
                            "| {} | {} | {:.0} | {} | {} |",
                            r.backend,
                            r.what,
                            s.median,
                            s.n,
                            ratio(r.ratio_median)
                        );
                    }
                    (status, _) => {
                        let _ = writeln!(
                            out,
                            "| {} | {} | {} | | |",
                            r.backend,
                            r.what,
                            status_cell(*status, 0, r.error.as_deref())
                        );
                    }
                }
            }
        }
        if !self.concurrency.is_empty() {
            let _ = writeln!(
                out,
                "\n## Concurrency: workload `{}`, batches of at least {} runs, each slot starting its next run when its previous one ends\n",
                self.settings.concurrency_workload, self.settings.concurrency_runs
            );
            out.push_str("| backend | parallel | runs | seconds | runs/s | runs/s / bare |\n|---|---:|---:|---:|---:|---:|\n");
            for r in &self.concurrency {
                match (r.status, r.seconds, r.runs_per_s) {
                    (RowStatus::Ok, Some(secs), Some(rps)) => {
                        let _ = writeln!(
                            out,
                            "| {} | {} | {} | {:.2} | {:.1} | {} |",
                            r.backend,
                            r.parallel,
                            r.runs,
                            secs,
                            rps,
                            ratio(r.ratio_to_bare)
                        );
                    }
                    (status, ..) => {
                        let _ = writeln!(
                            out,
                            "| {} | {} | {} | {} | | |",
                            r.backend,
                            r.parallel,
                            r.runs,
                            status_cell(status, 0, r.error.as_deref())
                        );
                    }
                }
            }
        }
        let _ = writeln!(out, "\n## Target (issue 2)\n");
        match self.pass_target() {
            Some((m_ok, p_ok, m, p)) => {
                let _ = writeln!(
                    out,
                    "`kakoi exec -- python -c pass`: median {m:.3}× bare (target ≤ {TARGET_MEDIAN}×: \
                     **{}**), p95 {p:.3}× bare (target ≤ {TARGET_P95}×: **{}**).",
                    met(m_ok),
                    met(p_ok)
                );
            }
            None => out.push_str("not measured (needs the `pass` workload on bare and kakoi).\n"),
        }
        if let Some((m_ok, p_ok, m, p)) = self.pass_target_of("kakoi-nocg") {
            let _ = writeln!(
                out,
                "\n`kakoi exec --no-cgroup -- python -c pass`: median {m:.3}× (**{}**), p95 {p:.3}× \
                 (**{}**) — the gap to the row above is the cgroup's cost.",
                met(m_ok),
                met(p_ok)
            );
        }
        for note in &self.notes {
            let _ = writeln!(out, "\n- note: {note}");
        }
        out
    }

    /// Draw the plot: one panel per warm workload (bar = median, whisker = p95, label =
    /// ratio to bare), one for the cold env and one for throughput.
    pub fn write_svg(&self, path: &Path) -> Result<(), ReportError> {
        let plot_err = |e: &dyn std::fmt::Display| ReportError::Plot {
            path: path.to_path_buf(),
            message: e.to_string(),
        };
        let mut panels: Vec<Panel> = Vec::new();
        for wl in &self.settings.workloads {
            let bars: Vec<Bar> = self
                .warm
                .iter()
                .filter(|r| &r.workload == wl)
                .map(|r| Bar {
                    label: r.backend.clone(),
                    value: r.summary.as_ref().map(|s| s.median),
                    whisker: r.summary.as_ref().map(|s| s.p95),
                    text: match (&r.summary, r.ratio_median) {
                        (Some(s), Some(x)) => format!("{:.1} ms  {x:.2}×", s.median),
                        (Some(s), None) => format!("{:.1} ms", s.median),
                        _ => status_word(r.status).into(),
                    },
                })
                .collect();
            let title = super::workload(wl).map_or(wl.clone(), |w| {
                if w.needs_env {
                    format!("import {} (env cached)", self.settings.env_module)
                } else {
                    w.title.to_string()
                }
            });
            panels.push(Panel {
                title: format!("{title} — median ms (log axis), whisker p95"),
                bars,
            });
        }
        if !self.cold.is_empty() {
            panels.push(Panel {
                title: format!(
                    "import {} with the env not cached (build + run) — ms (log axis)",
                    self.settings.env_module
                ),
                bars: self
                    .cold
                    .iter()
                    .map(|r| Bar {
                        label: r.backend.clone(),
                        value: r.summary.as_ref().map(|s| s.median),
                        whisker: None,
                        text: match (&r.summary, r.ratio_median) {
                            (Some(s), Some(x)) => format!("{:.1} s  {x:.2}×", s.median / 1000.0),
                            (Some(s), None) => format!("{:.1} s", s.median / 1000.0),
                            _ => status_word(r.status).into(),
                        },
                    })
                    .collect(),
            });
        }
        if !self.concurrency.is_empty() {
            panels.push(Panel {
                title: format!(
                    "throughput, workload {} — runs/s, log axis (higher is better)",
                    self.settings.concurrency_workload
                ),
                bars: self
                    .concurrency
                    .iter()
                    .map(|r| Bar {
                        label: format!("{} ×{}", r.backend, r.parallel),
                        value: r.runs_per_s,
                        whisker: None,
                        text: match r.runs_per_s {
                            Some(x) => format!("{x:.1}/s"),
                            None => status_word(r.status).into(),
                        },
                    })
                    .collect(),
            });
        }
        let heights: Vec<u32> = panels
            .iter()
            .map(|p| 60 + 22 * p.bars.len() as u32)
            .collect();
        let header = 56;
        let size = (960, header + heights.iter().sum::<u32>());
        let root = SVGBackend::new(path, size).into_drawing_area();
        root.fill(&WHITE).map_err(|e| plot_err(&e))?;
        let (top, mut rest) = root.split_vertically(header);
        let load = match self.host.loadavg_start {
            Some([a, ..]) => format!("load {a:.2}"),
            None => "load unknown".into(),
        };
        top.draw(&Text::new(
            "kakoi bench: bare python, kakoi, bubblewrap, Docker mode (interleaved)",
            (10, 10),
            ("sans-serif", 18).into_font(),
        ))
        .map_err(|e| plot_err(&e))?;
        top.draw(&Text::new(
            format!(
                "{} · kernel {} · {} CPUs · cgroup {} · {load} · n={} per cell",
                self.date, self.host.kernel, self.host.cpus, self.host.cgroup, self.settings.runs
            ),
            (10, 34),
            ("sans-serif", 12).into_font().color(&RGBColor(80, 80, 80)),
        ))
        .map_err(|e| plot_err(&e))?;
        for (panel, h) in panels.iter().zip(&heights) {
            let (area, below) = rest.split_vertically(*h);
            rest = below;
            draw_panel(&area, panel).map_err(|e| plot_err(&e))?;
        }
        root.present().map_err(|e| plot_err(&e))?;
        Ok(())
    }

    /// Write `<stamp>.json`, `<stamp>.md` and `<stamp>.svg` (and the same as `latest.*`)
    /// into `dir`; returns the JSON's path.
    pub fn write_all(&self, dir: &Path, stamp: &str) -> Result<PathBuf, ReportError> {
        let io = |path: &Path| {
            let path = path.to_path_buf();
            move |source| ReportError::Io { path, source }
        };
        std::fs::create_dir_all(dir).map_err(io(dir))?;
        let json = serde_json::to_string_pretty(self).expect("a report serializes");
        let md = self.markdown();
        let mut written = None;
        for name in [format!("bench-{stamp}"), "bench-latest".to_string()] {
            let p = dir.join(format!("{name}.json"));
            std::fs::write(&p, format!("{json}\n")).map_err(io(&p))?;
            written.get_or_insert(p);
            let p = dir.join(format!("{name}.md"));
            std::fs::write(&p, &md).map_err(io(&p))?;
            self.write_svg(&dir.join(format!("{name}.svg")))?;
        }
        Ok(written.expect("written once"))
    }
}

struct Bar {
    label: String,
    value: Option<f64>,
    whisker: Option<f64>,
    text: String,
}

struct Panel {
    title: String,
    bars: Vec<Bar>,
}

fn color_of(label: &str) -> RGBColor {
    match label.split_whitespace().next().unwrap_or("") {
        "bare" => RGBColor(107, 114, 128),
        "kakoi" => RGBColor(37, 99, 235),
        "kakoi-nocg" => RGBColor(96, 165, 250),
        "bwrap" => RGBColor(217, 119, 6),
        "docker" => RGBColor(147, 51, 234),
        _ => RGBColor(16, 185, 129),
    }
}

fn draw_panel<DB: DrawingBackend>(
    area: &DrawingArea<DB, plotters::coord::Shift>,
    panel: &Panel,
) -> Result<(), DrawingAreaErrorKind<DB::ErrorType>> {
    let n = panel.bars.len().max(1);
    let values = || {
        panel
            .bars
            .iter()
            .flat_map(|b| [b.value, b.whisker])
            .flatten()
            .filter(|v| *v > 0.0)
    };
    // A log axis: bare python, kakoi and a container differ by up to two orders of magnitude.
    let top = values().fold(0.0f64, f64::max);
    let bottom = values().fold(f64::INFINITY, f64::min);
    let (lo, hi) = if top > 0.0 {
        // Room on the right for the labels.
        (bottom / 2.0, top * 4.0)
    } else {
        (0.1, 1.0)
    };
    let labels: Vec<String> = panel.bars.iter().map(|b| b.label.clone()).collect();
    let formatter = |v: &SegmentValue<usize>| match v {
        // The first bar on top.
        SegmentValue::CenterOf(i) if *i < n => labels[n - 1 - i].clone(),
        _ => String::new(),
    };
    let mut chart = ChartBuilder::on(area)
        .caption(&panel.title, ("sans-serif", 14))
        .margin(6)
        .margin_right(20)
        .x_label_area_size(22)
        .y_label_area_size(100)
        .build_cartesian_2d((lo..hi).log_scale(), (0..n).into_segmented())?;
    chart
        .configure_mesh()
        .disable_y_mesh()
        .y_labels(n)
        .y_label_formatter(&formatter)
        .x_labels(8)
        .x_label_formatter(&|v| format!("{v}"))
        .label_style(("sans-serif", 11))
        .draw()?;
    for (k, bar) in panel.bars.iter().enumerate() {
        let i = n - 1 - k;
        let color = color_of(&bar.label);
        let end = bar.value.unwrap_or(lo);
        if bar.value.is_some() {
            let mut rect = Rectangle::new(
                [
                    (lo, SegmentValue::Exact(i)),
                    (end, SegmentValue::Exact(i + 1)),
                ],
                color.mix(0.85).filled(),
            );
            rect.set_margin(3, 3, 0, 0);
            chart.draw_series(std::iter::once(rect))?;
        }
        let mut text_at = end;
        if let (Some(v), Some(w)) = (bar.value, bar.whisker) {
            chart.draw_series(std::iter::once(PathElement::new(
                vec![
                    (v, SegmentValue::CenterOf(i)),
                    (w, SegmentValue::CenterOf(i)),
                ],
                BLACK.stroke_width(2),
            )))?;
            text_at = w;
        }
        let text_color = if bar.value.is_some() {
            BLACK
        } else {
            RGBColor(185, 28, 28)
        };
        chart.draw_series(std::iter::once(
            EmptyElement::at((text_at, SegmentValue::CenterOf(i)))
                + Text::new(
                    bar.text.clone(),
                    (6, -6),
                    ("sans-serif", 11).into_font().color(&text_color),
                ),
        ))?;
    }
    Ok(())
}

fn ratio(r: Option<f64>) -> String {
    r.map_or("–".into(), |x| format!("{x:.2}×"))
}

fn met(ok: bool) -> &'static str {
    if ok { "met" } else { "missed" }
}

fn status_word(status: RowStatus) -> &'static str {
    match status {
        RowStatus::Ok => "ok",
        RowStatus::Failed => "FAILED",
        RowStatus::Unavailable => "unavailable",
        RowStatus::NotApplicable => "n/a",
    }
}

fn status_cell(status: RowStatus, failures: usize, error: Option<&str>) -> String {
    let word = match (status, failures) {
        (RowStatus::Failed, n) if n > 0 => format!("**FAILED** ({n} runs)"),
        (RowStatus::Failed, _) => "**FAILED**".into(),
        (s, _) => status_word(s).into(),
    };
    match error {
        Some(e) => format!("{word}: {}", cell(e)),
        None => word,
    }
}

/// Make text safe inside a Markdown table cell.
fn cell(s: &str) -> String {
    let one_line: String = s.split_whitespace().collect::<Vec<_>>().join(" ");
    let short: String = one_line.chars().take(160).collect();
    short.replace('|', "\\|")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bench::stats::summarize;

    fn row(backend: &str, wl: &str, samples: &[f64]) -> Row {
        Row {
            workload: wl.into(),
            backend: backend.into(),
            status: RowStatus::Ok,
            summary: summarize(samples),
            first_ms: samples.first().copied(),
            ratio_median: None,
            ratio_p95: None,
            failures: 0,
            error: None,
            command: vec![backend.into()],
            samples_ms: samples.to_vec(),
        }
    }

    fn report() -> Report {
        let mut docker = row("docker", "pass", &[]);
        docker.status = RowStatus::Unavailable;
        docker.summary = None;
        docker.error = Some("no engine | at /var/run/docker.sock".into());
        let mut bwrap = row("bwrap", "pass", &[]);
        bwrap.status = RowStatus::Failed;
        bwrap.summary = None;
        bwrap.failures = 2;
        bwrap.error = Some("exit status: 1".into());
        let mut r = Report {
            kakoi_version: "0.1.0".into(),
            date: "2026-11-23T20:00:00Z".into(),
            host: Host {
                kernel: "6.18".into(),
                cpus: 2,
                loadavg_start: Some([3.0, 2.0, 1.0]),
                loadavg_end: None,
                cgroup: "v1".into(),
            },
            settings: Settings {
                runs: 3,
                warmup: 1,
                workloads: vec!["pass".into()],
                concurrency: vec![1, 4],
                concurrency_runs: 2,
                concurrency_workload: "pass".into(),
                cold_runs: 1,
                requirements: "numpy==2.2.6".into(),
                env_module: "numpy".into(),
            },
            backends: vec![],
            warm: vec![
                row("bare", "pass", &[10.0, 10.0, 12.0]),
                row("kakoi", "pass", &[11.0, 11.0, 13.0]),
                bwrap,
                docker,
            ],
            cold: vec![
                ColdRow {
                    backend: "bare".into(),
                    what: "uv".into(),
                    status: RowStatus::Ok,
                    summary: summarize(&[1000.0]),
                    ratio_median: None,
                    error: None,
                    samples_ms: vec![1000.0],
                },
                ColdRow {
                    backend: "kakoi".into(),
                    what: "kakoi run -r".into(),
                    status: RowStatus::Ok,
                    summary: summarize(&[1500.0]),
                    ratio_median: None,
                    error: None,
                    samples_ms: vec![1500.0],
                },
            ],
            concurrency: vec![
                ConcurrencyRow {
                    backend: "bare".into(),
                    parallel: 4,
                    status: RowStatus::Ok,
                    runs: 8,
                    seconds: Some(0.5),
                    runs_per_s: Some(16.0),
                    ratio_to_bare: None,
                    error: None,
                },
                ConcurrencyRow {
                    backend: "kakoi".into(),
                    parallel: 4,
                    status: RowStatus::Ok,
                    runs: 8,
                    seconds: Some(1.0),
                    runs_per_s: Some(8.0),
                    ratio_to_bare: None,
                    error: None,
                },
            ],
            notes: vec!["a note".into()],
        };
        r.fill_ratios();
        r
    }

    #[test]
    fn ratios_are_relative_to_bare_of_the_same_run() {
        let r = report();
        let kakoi = &r.warm[1];
        assert!((kakoi.ratio_median.unwrap() - 1.1).abs() < 1e-9);
        assert!(r.warm[0].ratio_median == Some(1.0));
        assert!(r.warm[2].ratio_median.is_none() && r.warm[3].ratio_median.is_none());
        assert_eq!(r.cold[1].ratio_median, Some(1.5));
        assert_eq!(r.concurrency[1].ratio_to_bare, Some(0.5));
        let (m_ok, p_ok, m, _) = r.pass_target().unwrap();
        assert!(m_ok && p_ok && (m - 1.1).abs() < 1e-9);
        assert!(r.any_failed());
    }

    #[test]
    fn table_shows_numbers_failures_and_unavailable_backends() {
        let md = report().markdown();
        assert!(
            md.contains("| pass | kakoi | 11.00 | 12.80 | 1.10× | 1.08× | 11.0 |"),
            "{md}"
        );
        assert!(
            md.contains("| pass | bwrap | **FAILED** (2 runs): exit status: 1 |"),
            "{md}"
        );
        // A pipe in a message cannot break the table.
        assert!(
            md.contains("unavailable: no engine \\| at /var/run/docker.sock"),
            "{md}"
        );
        assert!(
            md.contains("| kakoi | kakoi run -r | 1500 | 1 | 1.50× |"),
            "{md}"
        );
        assert!(
            md.contains("| kakoi | 4 | 8 | 1.00 | 8.0 | 0.50× |"),
            "{md}"
        );
        assert!(md.contains("**met**") && md.contains("busy host"), "{md}");
        assert!(md.contains("- note: a note"));
    }

    #[test]
    fn json_round_trips_and_svg_is_written() {
        let r = report();
        let json = serde_json::to_string(&r).unwrap();
        let back: Report = serde_json::from_str(&json).unwrap();
        assert_eq!(back, r);
        let v: serde_json::Value = serde_json::from_str(&json).unwrap();
        assert_eq!(v["warm"][3]["status"], "unavailable");
        let dir = tempfile::tempdir().unwrap();
        let json_path = r.write_all(dir.path(), "test").unwrap();
        assert!(json_path.ends_with("bench-test.json"));
        for name in ["bench-test.md", "bench-latest.json", "bench-latest.md"] {
            assert!(dir.path().join(name).is_file(), "{name}");
        }
        let svg = std::fs::read_to_string(dir.path().join("bench-test.svg")).unwrap();
        assert!(svg.starts_with("<svg") && svg.trim_end().ends_with("</svg>"));
        assert!(svg.contains("<rect"), "bars drawn");
        for text in ["kakoi", "bwrap", "FAILED", "unavailable", "1.10×", "16.0/s"] {
            assert!(svg.contains(text), "{text} missing from the svg");
        }
    }
}
