//! The bench report as an SVG plot: publish→receive latency percentiles against N on the
//! left, deliveries/s against N on the right, both on log scales; Raven solid, NATS
//! dashed. Hand-written SVG, so the plot needs no plotting library.

use std::fmt::Write as _;

use super::report::{BenchReport, Entry, Row};

const PANEL_W: f64 = 440.0;
const PANEL_H: f64 = 330.0;
/// Plot area inside a panel: left, top, right, bottom margins.
const MARGIN: (f64, f64, f64, f64) = (64.0, 36.0, 16.0, 84.0);

/// Reads one value off a row.
type Metric = fn(&Row) -> f64;

struct Series {
    label: String,
    color: &'static str,
    dashed: bool,
    values: Vec<Option<f64>>,
}

/// The plot of `report`.
pub fn svg(report: &BenchReport) -> String {
    let labels: Vec<String> = report
        .rows
        .iter()
        .map(|e| format!("N={}", e.clients))
        .collect();
    let pick = |system: fn(&Entry) -> Option<&Row>, f: Metric| {
        report
            .rows
            .iter()
            .map(|e| system(e).map(f))
            .collect::<Vec<_>>()
    };
    fn raven(e: &Entry) -> Option<&Row> {
        e.raven.as_ref()
    }
    fn nats(e: &Entry) -> Option<&Row> {
        e.nats.as_ref()
    }
    let has_nats = report.rows.iter().any(|e| e.nats.is_some());
    let percentiles: [(&str, &'static str, Metric); 3] = [
        ("p50", "#1f77b4", |r| r.latency_us.p50 as f64),
        ("p99", "#d62728", |r| r.latency_us.p99 as f64),
        ("p99.9", "#9467bd", |r| r.latency_us.p999 as f64),
    ];
    let mut latency: Vec<Series> = percentiles
        .iter()
        .map(|&(name, color, f)| Series {
            label: format!("Raven {name}"),
            color,
            dashed: false,
            values: pick(raven, f),
        })
        .collect();
    if has_nats {
        latency.extend(percentiles.iter().map(|&(name, color, f)| Series {
            label: format!("NATS {name}"),
            color,
            dashed: true,
            values: pick(nats, f),
        }));
    }
    let mut throughput = vec![Series {
        label: "Raven".into(),
        color: "#2ca02c",
        dashed: false,
        values: pick(raven, |r| r.delivered_per_s),
    }];
    if has_nats {
        throughput.push(Series {
            label: "NATS".into(),
            color: "#ff7f0e",
            dashed: true,
            values: pick(nats, |r| r.delivered_per_s),
        });
    }
    let title = if report.max {
        "highest sustained rate per N"
    } else {
        "fixed publish rate"
    };
    let mut out = format!(
        "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{w}\" height=\"{h}\" \
         viewBox=\"0 0 {w} {h}\" font-family=\"sans-serif\" font-size=\"11\">\n\
         <rect width=\"100%\" height=\"100%\" fill=\"white\"/>\n\
         <text x=\"{cx}\" y=\"18\" text-anchor=\"middle\" font-size=\"14\">raven bench: {title}, \
         {d:.1} s per row</text>\n",
        w = 2.0 * PANEL_W,
        h = PANEL_H + 24.0,
        cx = PANEL_W,
        d = report.duration_s,
    );
    panel(
        &mut out,
        (0.0, 24.0),
        "publish→receive latency",
        &labels,
        &latency,
        format_us,
    );
    panel(
        &mut out,
        (PANEL_W, 24.0),
        "deliveries per second",
        &labels,
        &throughput,
        format_count,
    );
    out.push_str("</svg>\n");
    out
}

fn panel(
    out: &mut String,
    (x0, y0): (f64, f64),
    title: &str,
    labels: &[String],
    series: &[Series],
    format: fn(f64) -> String,
) {
    let (ml, mt, mr, mb) = MARGIN;
    let (left, top) = (x0 + ml, y0 + mt);
    let (width, height) = (PANEL_W - ml - mr, PANEL_H - mt - mb);
    let values = series
        .iter()
        .flat_map(|s| s.values.iter().flatten())
        .filter(|v| **v > 0.0);
    let (lo, hi) = values.fold((f64::MAX, f64::MIN), |(lo, hi), v| (lo.min(*v), hi.max(*v)));
    let (lo_decade, hi_decade) = if lo > hi {
        (0, 1)
    } else {
        let lo_decade = lo.log10().floor() as i32;
        (lo_decade, (hi.log10().ceil() as i32).max(lo_decade + 1))
    };
    let y = |v: f64| {
        let f = (v.max(1e-9).log10() - f64::from(lo_decade)) / f64::from(hi_decade - lo_decade);
        top + height * (1.0 - f)
    };
    let x = |i: usize| {
        if labels.len() <= 1 {
            left + width / 2.0
        } else {
            left + width * (0.05 + 0.9 * i as f64 / (labels.len() - 1) as f64)
        }
    };
    let _ = writeln!(
        out,
        "<text x=\"{}\" y=\"{}\" text-anchor=\"middle\" font-size=\"12\">{title}</text>",
        left + width / 2.0,
        top - 10.0
    );
    let _ = writeln!(
        out,
        "<rect x=\"{left}\" y=\"{top}\" width=\"{width}\" height=\"{height}\" fill=\"none\" stroke=\"#888\"/>"
    );
    for decade in lo_decade..=hi_decade {
        let v = 10f64.powi(decade);
        let gy = y(v);
        let _ = writeln!(
            out,
            "<line x1=\"{left}\" y1=\"{gy:.1}\" x2=\"{}\" y2=\"{gy:.1}\" stroke=\"#ddd\"/>\
             <text x=\"{}\" y=\"{:.1}\" text-anchor=\"end\">{}</text>",
            left + width,
            left - 6.0,
            gy + 4.0,
            format(v)
        );
    }
    for (i, label) in labels.iter().enumerate() {
        let _ = writeln!(
            out,
            "<text x=\"{:.1}\" y=\"{}\" text-anchor=\"middle\">{label}</text>",
            x(i),
            top + height + 16.0
        );
    }
    for s in series {
        let dash = if s.dashed {
            " stroke-dasharray=\"6 4\""
        } else {
            ""
        };
        let mut points = String::new();
        for (i, v) in s.values.iter().enumerate() {
            match v {
                Some(v) if *v > 0.0 => {
                    let _ = write!(points, "{:.1},{:.1} ", x(i), y(*v));
                    let _ = writeln!(
                        out,
                        "<circle cx=\"{:.1}\" cy=\"{:.1}\" r=\"3\" fill=\"{}\"><title>{}: {}</title></circle>",
                        x(i),
                        y(*v),
                        s.color,
                        s.label,
                        format(*v)
                    );
                }
                _ => flush_line(out, &mut points, s.color, dash),
            }
        }
        flush_line(out, &mut points, s.color, dash);
    }
    for (k, s) in series.iter().enumerate() {
        let (lx, ly) = (
            left + (k % 3) as f64 * (width / 3.0),
            top + height + 34.0 + (k / 3) as f64 * 16.0,
        );
        let dash = if s.dashed {
            " stroke-dasharray=\"6 4\""
        } else {
            ""
        };
        let _ = writeln!(
            out,
            "<line x1=\"{lx}\" y1=\"{ly}\" x2=\"{}\" y2=\"{ly}\" stroke=\"{}\" stroke-width=\"2\"{dash}/>\
             <text x=\"{}\" y=\"{}\">{}</text>",
            lx + 22.0,
            s.color,
            lx + 26.0,
            ly + 4.0,
            s.label
        );
    }
}

fn flush_line(out: &mut String, points: &mut String, color: &str, dash: &str) {
    if !points.is_empty() {
        let _ = writeln!(
            out,
            "<polyline points=\"{}\" fill=\"none\" stroke=\"{color}\" stroke-width=\"2\"{dash}/>",
            points.trim_end()
        );
        points.clear();
    }
}

fn format_us(v: f64) -> String {
    match v {
        v if v >= 1e6 => scaled(v / 1e6, " s"),
        v if v >= 1e3 => scaled(v / 1e3, " ms"),
        v => scaled(v, " µs"),
    }
}

fn format_count(v: f64) -> String {
    match v {
        v if v >= 1e6 => scaled(v / 1e6, "M"),
        v if v >= 1e3 => scaled(v / 1e3, "k"),
        v => scaled(v, ""),
    }
}

/// `v` with at most two decimals, trailing zeros dropped, then `suffix`.
fn scaled(v: f64, suffix: &str) -> String {
    let text = format!("{v:.2}");
    let text = text.trim_end_matches('0').trim_end_matches('.');
    format!("{text}{suffix}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn axis_labels_are_short() {
        assert_eq!(format_us(1.0), "1 µs");
        assert_eq!(format_us(150.0), "150 µs");
        assert_eq!(format_us(2_500.0), "2.5 ms");
        assert_eq!(format_us(1_000_000.0), "1 s");
        assert_eq!(format_count(7_593_700.0), "7.59M");
        assert_eq!(format_count(10_000.0), "10k");
        assert_eq!(format_count(10.0), "10");
    }
}
