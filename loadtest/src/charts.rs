//! SVG charts of a report, drawn with `plotters` (SVG backend only): latency
//! percentiles per transport, deliveries/s and CPU per delivery against
//! subscriber count, memory per connection and bytes per delivery.

use std::path::{Path, PathBuf};

use anyhow::anyhow;
use plotters::prelude::*;

use crate::run::RunResult;

/// Chart size in pixels.
const SIZE: (u32, u32) = (900, 500);

/// Series colours, picked in order.
const COLOURS: [RGBColor; 10] = [
    RGBColor(31, 119, 180),
    RGBColor(255, 127, 14),
    RGBColor(44, 160, 44),
    RGBColor(214, 39, 40),
    RGBColor(148, 103, 189),
    RGBColor(140, 86, 75),
    RGBColor(227, 119, 194),
    RGBColor(127, 127, 127),
    RGBColor(188, 189, 34),
    RGBColor(23, 190, 207),
];

fn colour(i: usize) -> RGBColor {
    COLOURS[i % COLOURS.len()]
}

fn series_name(r: &RunResult) -> String {
    format!(
        "{} {}",
        r.target,
        r.transport.map(|t| t.name()).unwrap_or("?")
    )
}

/// Draw every chart into `dir`; returns the files written. Latency, memory
/// and bytes charts are drawn per scenario (`latency-SCENARIO.svg`, ...);
/// the scaling charts put every scenario's series on one set of axes.
pub fn write_all(dir: &Path, results: &[RunResult]) -> anyhow::Result<Vec<PathBuf>> {
    std::fs::create_dir_all(dir)?;
    let ok: Vec<&RunResult> = results.iter().filter(|r| r.delivered > 0).collect();
    let mut files = Vec::new();

    let mut scenarios: Vec<&str> = ok.iter().map(|r| r.scenario.as_str()).collect();
    scenarios.sort_unstable();
    scenarios.dedup();
    for scenario in scenarios {
        let runs: Vec<&RunResult> = ok
            .iter()
            .copied()
            .filter(|r| r.scenario == scenario)
            .collect();
        let largest = largest_per_series(&runs);
        let slug: String = scenario
            .chars()
            .map(|c| {
                if c.is_ascii_alphanumeric() || c == '-' {
                    c
                } else {
                    '_'
                }
            })
            .collect();

        // Latency percentiles: per series, the largest run.
        let latency_series: Vec<(String, Vec<(f64, f64)>)> = largest
            .iter()
            .map(|r| {
                let p = &r.latency_us;
                let points = [p.p50, p.p90, p.p99, p.p999, p.max]
                    .iter()
                    .enumerate()
                    .map(|(i, v)| (i as f64, (*v as f64 / 1000.0).max(0.001)))
                    .collect();
                (series_name(r), points)
            })
            .collect();
        let path = dir.join(format!("latency-{slug}.svg"));
        lines(
            &path,
            &format!("Publish-to-receive latency percentiles ({scenario})"),
            "percentile",
            "milliseconds (log)",
            &latency_series,
            true,
            Some(&["p50", "p90", "p99", "p99.9", "max"]),
        )?;
        files.push(path);

        let memory: Vec<(String, f64)> = largest
            .iter()
            .map(|r| (series_name(r), r.pss_per_conn / 1024.0))
            .collect();
        let path = dir.join(format!("memory-{slug}.svg"));
        bars(
            &path,
            &format!("Target memory per idle connection, KiB ({scenario})"),
            "KiB per connection (PSS growth / connections)",
            &memory,
        )?;
        files.push(path);

        let bytes: Vec<(String, f64)> = largest
            .iter()
            .map(|r| (series_name(r), r.server_bytes_per_delivery))
            .collect();
        let path = dir.join(format!("bytes-{slug}.svg"));
        bars(
            &path,
            &format!("Bytes the target sent per delivery ({scenario})"),
            "bytes per delivery",
            &bytes,
        )?;
        files.push(path);
    }

    // Scaling with subscribers, one series per scenario, target and
    // transport; only series with several points (sweeps) when there are any.
    let by_subs = |value: fn(&RunResult) -> f64| {
        let key = |r: &RunResult| format!("{}: {}", r.scenario, series_name(r));
        let mut names: Vec<String> = ok.iter().map(|r| key(r)).collect();
        names.sort();
        names.dedup();
        let all: Vec<(String, Vec<(f64, f64)>)> = names
            .into_iter()
            .map(|name| {
                let mut points: Vec<(f64, f64)> = ok
                    .iter()
                    .filter(|r| key(r) == name)
                    .map(|r| (r.connected as f64, value(r)))
                    .collect();
                points.sort_by(|a, b| a.0.total_cmp(&b.0));
                (name, points)
            })
            .collect();
        if all.iter().any(|(_, p)| p.len() > 1) {
            all.into_iter().filter(|(_, p)| p.len() > 1).collect()
        } else {
            all
        }
    };
    let path = dir.join("deliveries.svg");
    lines(
        &path,
        "Deliveries per second against subscribers",
        "subscribers",
        "deliveries/s",
        &by_subs(|r| r.deliveries_per_s),
        false,
        None,
    )?;
    files.push(path);

    let path = dir.join("cpu_per_delivery.svg");
    lines(
        &path,
        "Target CPU per delivery against subscribers",
        "subscribers",
        "CPU µs per delivery",
        &by_subs(|r| r.cpu_us_per_delivery),
        false,
        None,
    )?;
    files.push(path);

    Ok(files)
}

/// Per (scenario, target, transport), the run with the most connections.
pub fn largest_per_series<'a>(results: &[&'a RunResult]) -> Vec<&'a RunResult> {
    let mut out: Vec<&RunResult> = Vec::new();
    for r in results {
        let same = |o: &RunResult| o.scenario == r.scenario && series_name(o) == series_name(r);
        match out.iter_mut().find(|o| same(o)) {
            Some(o) if o.connected < r.connected => *o = r,
            Some(_) => {}
            None => out.push(r),
        }
    }
    out
}

fn err<E: std::fmt::Debug>(e: E) -> anyhow::Error {
    anyhow!("chart: {e:?}")
}

/// A line chart, one series per name.
fn lines(
    path: &Path,
    title: &str,
    x_desc: &str,
    y_desc: &str,
    series: &[(String, Vec<(f64, f64)>)],
    log_y: bool,
    x_names: Option<&[&str]>,
) -> anyhow::Result<()> {
    let root = SVGBackend::new(path, SIZE).into_drawing_area();
    root.fill(&WHITE).map_err(err)?;

    let points = series.iter().flat_map(|(_, p)| p.iter());
    let (mut x_max, mut y_max, mut y_min) = (1.0f64, 1.0f64, f64::MAX);
    for (x, y) in points {
        x_max = x_max.max(*x);
        y_max = y_max.max(*y);
        y_min = y_min.min(*y);
    }
    if y_min == f64::MAX {
        y_min = 0.001;
    }
    let x_range = 0.0..x_max * 1.05;

    let names: Vec<String> = x_names
        .map(|n| n.iter().map(|s| s.to_string()).collect())
        .unwrap_or_default();
    let x_format = |x: &f64| -> String {
        if names.is_empty() {
            format!("{x:.0}")
        } else {
            let i = x.round() as usize;
            if (x - x.round()).abs() < 0.01 {
                names.get(i).cloned().unwrap_or_default()
            } else {
                String::new()
            }
        }
    };

    let mut builder = ChartBuilder::on(&root);
    builder
        .caption(title, ("sans-serif", 20))
        .margin(15)
        .x_label_area_size(40)
        .y_label_area_size(70);

    macro_rules! draw {
        ($chart:expr) => {{
            let mut chart = $chart;
            chart
                .configure_mesh()
                .x_desc(x_desc)
                .y_desc(y_desc)
                .x_label_formatter(&x_format)
                .x_labels(if names.is_empty() {
                    10
                } else {
                    names.len() * 4
                })
                .draw()
                .map_err(err)?;
            for (i, (name, pts)) in series.iter().enumerate() {
                let c = colour(i);
                chart
                    .draw_series(LineSeries::new(pts.iter().copied(), c.stroke_width(2)))
                    .map_err(err)?
                    .label(name.clone())
                    .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], c));
                chart
                    .draw_series(pts.iter().map(|p| Circle::new(*p, 3, c.filled())))
                    .map_err(err)?;
            }
            chart
                .configure_series_labels()
                .position(SeriesLabelPosition::UpperLeft)
                .background_style(WHITE.mix(0.85))
                .border_style(BLACK)
                .draw()
                .map_err(err)?;
        }};
    }

    if log_y {
        let chart = builder
            .build_cartesian_2d(x_range, ((y_min / 2.0).max(0.001)..y_max * 2.0).log_scale())
            .map_err(err)?;
        draw!(chart);
    } else {
        let chart = builder
            .build_cartesian_2d(x_range, 0.0..y_max * 1.1)
            .map_err(err)?;
        draw!(chart);
    }
    root.present().map_err(err)?;
    Ok(())
}

/// A bar chart, one bar per named value.
fn bars(path: &Path, title: &str, y_desc: &str, items: &[(String, f64)]) -> anyhow::Result<()> {
    let root = SVGBackend::new(path, SIZE).into_drawing_area();
    root.fill(&WHITE).map_err(err)?;
    let y_max = items.iter().map(|(_, v)| *v).fold(1e-9, f64::max) * 1.15;
    let n = items.len().max(1);
    let names: Vec<String> = items.iter().map(|(n, _)| n.clone()).collect();
    let x_format = |x: &f64| -> String {
        let i = x.floor() as usize;
        if (x - (i as f64 + 0.5)).abs() < 0.01 {
            names.get(i).cloned().unwrap_or_default()
        } else {
            String::new()
        }
    };

    let mut chart = ChartBuilder::on(&root)
        .caption(title, ("sans-serif", 20))
        .margin(15)
        .x_label_area_size(40)
        .y_label_area_size(70)
        .build_cartesian_2d(0.0..n as f64, 0.0..y_max)
        .map_err(err)?;
    chart
        .configure_mesh()
        .disable_x_mesh()
        .y_desc(y_desc)
        .x_labels(n * 2 + 1)
        .x_label_formatter(&x_format)
        .draw()
        .map_err(err)?;
    chart
        .draw_series(items.iter().enumerate().map(|(i, (_, v))| {
            Rectangle::new(
                [(i as f64 + 0.15, 0.0), (i as f64 + 0.85, *v)],
                colour(i).filled(),
            )
        }))
        .map_err(err)?;
    chart
        .draw_series(items.iter().enumerate().map(|(i, (_, v))| {
            Text::new(
                format!("{v:.1}"),
                (i as f64 + 0.35, *v + y_max * 0.02),
                ("sans-serif", 14),
            )
        }))
        .map_err(err)?;
    root.present().map_err(err)?;
    Ok(())
}
