//! Medians, the summary table and the SVG plots of a bench-compare document.

use std::path::Path;

use plotters::prelude::*;
use serde_json::{Value, json};

/// A metric of one figure: where it is in cpgbench's JSON and which way is better.
struct Metric {
    figure: &'static str,
    /// The parameter that varies within the figure (cpgbench's JSON key), if any.
    param: Option<&'static str>,
    name: &'static str,
    /// A key of cpgbench's result, `@cpu` for daemon CPU-s per million messages or
    /// `@rotations` for token rotations per second.
    key: &'static str,
    higher_is_better: bool,
}

const METRICS: &[Metric] = &[
    Metric {
        figure: "tput",
        param: Some("size"),
        name: "msg/s",
        key: "msgs_per_s",
        higher_is_better: true,
    },
    Metric {
        figure: "tput",
        param: Some("size"),
        name: "MB/s",
        key: "mb_per_s",
        higher_is_better: true,
    },
    Metric {
        figure: "tput",
        param: Some("size"),
        name: "daemon CPU-s per million msgs",
        key: "@cpu",
        higher_is_better: false,
    },
    // A faster-turning token is what lets a multi-node ring deliver sooner.
    Metric {
        figure: "tput",
        param: Some("size"),
        name: "token rotations/s",
        key: "@rotations",
        higher_is_better: true,
    },
    Metric {
        figure: "lat",
        param: Some("size"),
        name: "latency p50 µs",
        key: "p50_us",
        higher_is_better: false,
    },
    Metric {
        figure: "lat",
        param: Some("size"),
        name: "latency p99 µs",
        key: "p99_us",
        higher_is_better: false,
    },
    Metric {
        figure: "groups",
        param: Some("groups"),
        name: "total msg/s",
        key: "msgs_per_s",
        higher_is_better: true,
    },
    Metric {
        figure: "members",
        param: Some("members"),
        name: "grow to N members, s",
        key: "grow_s",
        higher_is_better: false,
    },
    Metric {
        figure: "members",
        param: Some("members"),
        name: "shrink to 1 member, s",
        key: "shrink_s",
        higher_is_better: false,
    },
];

pub fn median(mut v: Vec<f64>) -> Option<f64> {
    if v.is_empty() {
        return None;
    }
    v.sort_by(f64::total_cmp);
    let n = v.len();
    Some(if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    })
}

fn value(run: &Value, key: &str) -> Option<f64> {
    match key {
        "@cpu" => run["daemon_cpu_s_per_million_msgs"].as_f64(),
        "@rotations" => run["token_rotations_per_s"].as_f64(),
        _ => run["result"][key].as_f64(),
    }
}

/// Median of `metric` over the runs of one system, topology and parameter value.
fn median_of(runs: &[Value], m: &Metric, system: &str, nodes: u64, param: u64) -> Option<f64> {
    let values = runs
        .iter()
        .filter(|r| r["system"] == system && r["figure"] == m.figure)
        .filter(|r| r["nodes"].as_u64() == Some(nodes))
        .filter(|r| {
            m.param
                .is_none_or(|p| r["result"][p].as_u64() == Some(param))
        })
        .filter_map(|r| value(r, m.key))
        .collect();
    median(values)
}

/// Every (metric, topology, parameter) with both systems' medians and ringcast's
/// advantage (> 1: ringcast better, whichever way the metric points).
pub fn summary(runs: &Value) -> Value {
    // Failed runs (an "error", no result) are in the document but not in the medians.
    let runs: Vec<Value> = (runs.as_array().into_iter().flatten())
        .filter(|r| r.get("error").is_none())
        .cloned()
        .collect();
    let mut rows = Vec::new();
    for m in METRICS {
        let mut keys: Vec<(u64, u64)> = runs
            .iter()
            .filter(|r| r["figure"] == m.figure)
            .map(|r| {
                let nodes = r["nodes"].as_u64().unwrap_or(0);
                let param = m.param.and_then(|p| r["result"][p].as_u64()).unwrap_or(0);
                (nodes, param)
            })
            .collect();
        keys.sort_unstable();
        keys.dedup();
        for (nodes, param) in keys {
            let c = median_of(&runs, m, "corosync", nodes, param);
            let r = median_of(&runs, m, "ringcast", nodes, param);
            let advantage = match (c, r) {
                (Some(c), Some(r)) if c > 0.0 && r > 0.0 => {
                    Some(if m.higher_is_better { r / c } else { c / r })
                }
                _ => None,
            };
            rows.push(json!({
                "figure": m.figure,
                "metric": m.name,
                "nodes": nodes,
                "param": m.param,
                "value": param,
                "corosync": c,
                "ringcast": r,
                "ringcast_advantage": advantage,
                "runs_per_system": runs.iter().filter(|x| x["figure"] == m.figure
                    && x["nodes"].as_u64() == Some(nodes)
                    && x["system"] == "ringcast"
                    && m.param.is_none_or(|p| x["result"][p].as_u64() == Some(param))).count(),
            }));
        }
    }
    Value::Array(rows)
}

fn fmt(v: &Value) -> String {
    match v.as_f64() {
        Some(x) if x >= 100.0 => format!("{x:.0}"),
        Some(x) if x >= 1.0 => format!("{x:.2}"),
        Some(x) => format!("{x:.4}"),
        None => "-".into(),
    }
}

/// A Markdown table of the summary.
pub fn table(doc: &Value) -> String {
    let mut out = String::from(
        "| nodes | figure | parameter | Corosync | ringcast | ringcast advantage |\n\
         |---|---|---|---|---|---|\n",
    );
    for row in doc["summary"].as_array().into_iter().flatten() {
        out.push_str(&format!(
            "| {} | {} | {} {} | {} | {} | {}× |\n",
            row["nodes"],
            row["metric"].as_str().unwrap_or(""),
            row["param"].as_str().unwrap_or(""),
            row["value"],
            fmt(&row["corosync"]),
            fmt(&row["ringcast"]),
            fmt(&row["ringcast_advantage"]),
        ));
    }
    out
}

/// One progress line per run (stderr).
pub fn one_line(run: &Value) -> String {
    if let Some(e) = run.get("error") {
        return format!(
            "[{} {}n r{}] {} FAILED: {}",
            run["system"].as_str().unwrap_or(""),
            run["nodes"],
            run["round"],
            run["figure"].as_str().unwrap_or(""),
            e.as_str().unwrap_or("").lines().next().unwrap_or("")
        );
    }
    format!(
        "[{} {}n r{}] {} -> {} (daemon CPU {:.2} s, token rotations/s {})",
        run["system"].as_str().unwrap_or(""),
        run["nodes"],
        run["round"],
        run["args"]
            .as_array()
            .map(|a| a
                .iter()
                .filter_map(|x| x.as_str())
                .collect::<Vec<_>>()
                .join(" "))
            .unwrap_or_default(),
        run["result"],
        run["daemon_cpu_s"].as_f64().unwrap_or(0.0),
        run["token_rotations_per_s"]
            .as_f64()
            .map_or("-".to_string(), |r| format!("{r:.0}"))
    )
}

const SYSTEMS: [(&str, RGBColor); 2] = [("corosync", RED), ("ringcast", BLUE)];

/// Throughput by message size (MB/s, log-log; one line per system and topology) and
/// latency percentiles (µs, log; one line per system and topology).
pub fn plots(doc: &Value, out: &Path, stem: &str) -> Result<(), String> {
    let runs = doc["runs"].as_array().cloned().unwrap_or_default();
    let tput = out.join(format!("{stem}-throughput.svg"));
    chart(
        &tput,
        "throughput by message size (own agreed delivery, median)",
        "message bytes",
        "MB/s",
        &series(&runs, "tput", |r| {
            Some((
                r["result"]["size"].as_f64()?,
                r["result"]["mb_per_s"].as_f64()?,
            ))
        }),
        true,
    )?;
    let percentiles = [
        ("p50_us", 50.0),
        ("p90_us", 90.0),
        ("p99_us", 99.0),
        ("p999_us", 99.9),
    ];
    let mut lat = Vec::new();
    for (name, pct) in percentiles {
        let one = series(&runs, "lat", |r| Some((pct, r["result"][name].as_f64()?)));
        for (label, points) in one {
            match lat
                .iter_mut()
                .find(|(l, _): &&mut (String, Vec<(f64, f64)>)| *l == label)
            {
                Some((_, p)) => p.extend(points),
                None => lat.push((label, points)),
            }
        }
    }
    let lat_path = out.join(format!("{stem}-latency.svg"));
    chart(
        &lat_path,
        "latency send -> own agreed delivery (median of runs)",
        "percentile",
        "µs",
        &lat,
        false,
    )?;
    Ok(())
}

type Series = Vec<(String, Vec<(f64, f64)>)>;

/// Median y per x, one series per (system, topology).
fn series(runs: &[Value], figure: &str, point: impl Fn(&Value) -> Option<(f64, f64)>) -> Series {
    let mut out = Vec::new();
    for (system, _) in SYSTEMS {
        for nodes in [1, 3] {
            let mut xs: Vec<(f64, f64)> = runs
                .iter()
                .filter(|r| r["system"] == system && r["figure"] == figure)
                .filter(|r| r["nodes"].as_u64() == Some(nodes))
                .filter_map(&point)
                .collect();
            if xs.is_empty() {
                continue;
            }
            xs.sort_by(|a, b| a.0.total_cmp(&b.0));
            let mut points = Vec::new();
            let mut i = 0;
            while i < xs.len() {
                let x = xs[i].0;
                let ys: Vec<f64> = xs[i..]
                    .iter()
                    .take_while(|p| p.0 == x)
                    .map(|p| p.1)
                    .collect();
                i += ys.len();
                points.push((x, median(ys).unwrap_or(0.0)));
            }
            out.push((format!("{system}, {nodes} node(s)"), points));
        }
    }
    out
}

fn chart(
    path: &Path,
    title: &str,
    x_label: &str,
    y_label: &str,
    series: &Series,
    log_x: bool,
) -> Result<(), String> {
    let all: Vec<(f64, f64)> = series.iter().flat_map(|(_, p)| p.iter().copied()).collect();
    if all.is_empty() {
        return Ok(());
    }
    let (x0, x1) = bounds(all.iter().map(|p| p.0));
    let (y0, y1) = bounds(all.iter().map(|p| p.1));
    let root = SVGBackend::new(path, (900, 560)).into_drawing_area();
    let err = |e: &dyn std::fmt::Display| format!("plot {path:?}: {e}");
    root.fill(&WHITE).map_err(|e| err(&e))?;
    let mut builder = ChartBuilder::on(&root);
    builder
        .caption(title, ("sans-serif", 20))
        .margin(15)
        .x_label_area_size(45)
        .y_label_area_size(70);
    let y = (y0 / 2.0..y1 * 2.0).log_scale();
    if log_x {
        let mut c = builder
            .build_cartesian_2d((x0 / 2.0..x1 * 2.0).log_scale(), y)
            .map_err(|e| err(&e))?;
        c.configure_mesh()
            .x_desc(x_label)
            .y_desc(y_label)
            .draw()
            .map_err(|e| err(&e))?;
        draw_series(&mut c, series).map_err(|e| err(&e))?;
    } else {
        let mut c = builder
            .build_cartesian_2d(x0 - 5.0..x1 + 5.0, y)
            .map_err(|e| err(&e))?;
        c.configure_mesh()
            .x_desc(x_label)
            .y_desc(y_label)
            .draw()
            .map_err(|e| err(&e))?;
        draw_series(&mut c, series).map_err(|e| err(&e))?;
    }
    root.present().map_err(|e| err(&e))
}

fn bounds(v: impl Iterator<Item = f64>) -> (f64, f64) {
    let (lo, hi) = v.fold((f64::MAX, f64::MIN), |(l, h), x| (l.min(x), h.max(x)));
    (lo.max(1e-3), hi.max(lo.max(1e-3)))
}

fn draw_series<'a, X, Y>(
    chart: &mut ChartContext<'a, SVGBackend<'a>, Cartesian2d<X, Y>>,
    series: &Series,
) -> Result<(), DrawingAreaErrorKind<std::io::Error>>
where
    X: Ranged<ValueType = f64>,
    Y: Ranged<ValueType = f64>,
{
    for (label, points) in series {
        let color = SYSTEMS
            .iter()
            .find(|(s, _)| label.starts_with(s))
            .map(|(_, c)| *c)
            .unwrap_or(BLACK);
        let style = if label.contains("3 node") {
            ShapeStyle::from(&color.mix(0.6)).stroke_width(2)
        } else {
            ShapeStyle::from(&color).stroke_width(2)
        };
        chart
            .draw_series(LineSeries::new(points.iter().copied(), style))?
            .label(label.clone())
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], style));
        chart.draw_series(points.iter().map(|&p| Circle::new(p, 3, style.filled())))?;
    }
    chart
        .configure_series_labels()
        .border_style(BLACK)
        .background_style(WHITE.mix(0.8))
        .draw()?;
    Ok(())
}
