//! Minimal inline SVG line charts for report.html (no scripts, no network).

use std::fmt::Write;

/// One line of a chart: a label, a colour, and (x, y) points; `None` y
/// values break the line (not measured there).
pub struct Series<'a> {
    pub label: &'a str,
    pub color: &'a str,
    pub points: Vec<(f64, Option<f64>)>,
}

const W: f64 = 560.0;
const H: f64 = 200.0;
const PAD_L: f64 = 56.0;
const PAD_R: f64 = 12.0;
const PAD_T: f64 = 22.0;
const PAD_B: f64 = 28.0;

/// Renders a titled line chart; stage boundaries (x values) are drawn as
/// dashed vertical lines. Returns a note instead when nothing was measured.
pub fn line_chart(title: &str, unit: &str, series: &[Series], stage_marks: &[f64]) -> String {
    line_chart_banded(title, unit, series, stage_marks, &[])
}

/// A span of the x axis drawn as a shaded band under the lines, labelled
/// (e.g. a scheduled fault from its start to its end).
pub struct Band<'a> {
    pub from: f64,
    pub to: f64,
    pub label: &'a str,
}

/// [`line_chart`] with shaded bands (faults) behind the lines.
pub fn line_chart_banded(
    title: &str,
    unit: &str,
    series: &[Series],
    stage_marks: &[f64],
    bands: &[Band],
) -> String {
    let ys: Vec<f64> = series
        .iter()
        .flat_map(|s| s.points.iter().filter_map(|p| p.1))
        .filter(|v| v.is_finite())
        .collect();
    let xs: Vec<f64> = series
        .iter()
        .flat_map(|s| s.points.iter().map(|p| p.0))
        .collect();
    if ys.is_empty() || xs.is_empty() {
        return format!(
            "<div class=\"chart empty\"><b>{}</b><p>not measured in this run</p></div>",
            esc(title)
        );
    }
    let x_max = xs.iter().cloned().fold(f64::MIN, f64::max).max(1e-9);
    let x_min = xs.iter().cloned().fold(f64::MAX, f64::min).min(x_max);
    let y_max = nice_ceiling(ys.iter().cloned().fold(0.0, f64::max));
    let sx = |x: f64| PAD_L + (x - x_min) / (x_max - x_min).max(1e-9) * (W - PAD_L - PAD_R);
    let sy = |y: f64| H - PAD_B - (y / y_max) * (H - PAD_T - PAD_B);
    let mut out = String::new();
    let _ = write!(
        out,
        "<svg class=\"chart\" viewBox=\"0 0 {W} {H}\" width=\"{W}\" height=\"{H}\" role=\"img\" aria-label=\"{t}\">\
         <text x=\"{PAD_L}\" y=\"14\" class=\"ct\">{t} ({u})</text>",
        t = esc(title),
        u = esc(unit)
    );
    for i in 0..=4 {
        let v = y_max * i as f64 / 4.0;
        let y = sy(v);
        let _ = write!(
            out,
            "<line x1=\"{PAD_L}\" x2=\"{x2}\" y1=\"{y:.1}\" y2=\"{y:.1}\" class=\"grid\"/>\
             <text x=\"{tx}\" y=\"{ty:.1}\" class=\"ax\" text-anchor=\"end\">{label}</text>",
            x2 = W - PAD_R,
            tx = PAD_L - 4.0,
            ty = y + 4.0,
            label = short(v)
        );
    }
    for b in bands {
        let (from, to) = (b.from.max(x_min), b.to.min(x_max));
        if to >= from && b.to > x_min && b.from < x_max {
            let (x1, x2) = (sx(from), sx(to));
            let _ = write!(
                out,
                "<rect x=\"{x1:.1}\" y=\"{PAD_T}\" width=\"{w:.1}\" height=\"{h:.1}\" class=\"fault\"><title>{l}</title></rect>\
                 <text x=\"{x1:.1}\" y=\"{ty:.1}\" class=\"ax fault-label\">{l}</text>",
                w = (x2 - x1).max(1.5),
                h = H - PAD_T - PAD_B,
                ty = PAD_T + 10.0,
                l = esc(b.label)
            );
        }
    }
    for &m in stage_marks {
        if m > x_min && m < x_max {
            let x = sx(m);
            let _ = write!(
                out,
                "<line x1=\"{x:.1}\" x2=\"{x:.1}\" y1=\"{PAD_T}\" y2=\"{y2}\" class=\"stage\"/>",
                y2 = H - PAD_B
            );
        }
    }
    let _ = write!(
        out,
        "<text x=\"{PAD_L}\" y=\"{y}\" class=\"ax\">{a}s</text><text x=\"{x}\" y=\"{y}\" class=\"ax\" text-anchor=\"end\">{b}s</text>",
        y = H - 8.0,
        x = W - PAD_R,
        a = short(x_min),
        b = short(x_max)
    );
    for (i, s) in series.iter().enumerate() {
        let mut segment: Vec<String> = Vec::new();
        let flush = |seg: &mut Vec<String>, out: &mut String| {
            if seg.len() > 1 {
                let _ = write!(
                    out,
                    "<polyline fill=\"none\" stroke=\"{}\" stroke-width=\"1.6\" points=\"{}\"/>",
                    s.color,
                    seg.join(" ")
                );
            } else if seg.len() == 1 {
                let (x, y) = seg[0].split_once(',').unwrap();
                let _ = write!(
                    out,
                    "<circle cx=\"{x}\" cy=\"{y}\" r=\"2\" fill=\"{}\"/>",
                    s.color
                );
            }
            seg.clear();
        };
        for &(x, y) in &s.points {
            match y.filter(|v| v.is_finite()) {
                Some(v) => segment.push(format!("{:.1},{:.1}", sx(x), sy(v))),
                None => flush(&mut segment, &mut out),
            }
        }
        flush(&mut segment, &mut out);
        let lx = W - PAD_R - (series.len() - i) as f64 * 70.0;
        let _ = write!(
            out,
            "<rect x=\"{lx}\" y=\"6\" width=\"10\" height=\"10\" fill=\"{c}\"/><text x=\"{tx}\" y=\"15\" class=\"ax\">{l}</text>",
            c = s.color,
            tx = lx + 14.0,
            l = esc(s.label)
        );
    }
    out.push_str("</svg>");
    out
}

/// Horizontal bars (label, value) for the per-phase breakdown.
pub fn bars(title: &str, unit: &str, rows: &[(String, f64)]) -> String {
    if rows.is_empty() {
        return format!(
            "<div class=\"chart empty\"><b>{}</b><p>not measured in this run</p></div>",
            esc(title)
        );
    }
    let max = nice_ceiling(rows.iter().map(|r| r.1).fold(0.0, f64::max));
    let h = 24.0 + rows.len() as f64 * 22.0;
    let mut out = format!(
        "<svg class=\"chart\" viewBox=\"0 0 {W} {h}\" width=\"{W}\" height=\"{h}\" role=\"img\"><text x=\"4\" y=\"14\" class=\"ct\">{} ({})</text>",
        esc(title),
        esc(unit)
    );
    for (i, (label, v)) in rows.iter().enumerate() {
        let y = 22.0 + i as f64 * 22.0;
        let w = (v / max) * (W - 220.0);
        let _ = write!(
            out,
            "<text x=\"4\" y=\"{ty}\" class=\"ax\">{l}</text><rect x=\"130\" y=\"{y}\" width=\"{w:.1}\" height=\"16\" fill=\"#4a7bd0\"/>\
             <text x=\"{vx:.1}\" y=\"{ty}\" class=\"ax\">{v}</text>",
            ty = y + 12.0,
            l = esc(label),
            vx = 134.0 + w,
            v = short(*v)
        );
    }
    out.push_str("</svg>");
    out
}

/// One stacked bar per row: the row's segments (label, value) laid end to
/// end on a shared scale, e.g. a message's latency leg by leg.
pub fn stacked(title: &str, unit: &str, rows: &[(String, Vec<(String, f64)>)]) -> String {
    const COLORS: [&str; 6] = [
        "#9db4d8", "#4a7bd0", "#d0734a", "#6aa56a", "#a58bd0", "#c9b24a",
    ];
    let total = |r: &[(String, f64)]| r.iter().map(|s| s.1).sum::<f64>();
    if rows.iter().all(|(_, segs)| total(segs) <= 0.0) {
        return format!(
            "<div class=\"chart empty\"><b>{}</b><p>not measured in this run</p></div>",
            esc(title)
        );
    }
    let max = nice_ceiling(rows.iter().map(|(_, s)| total(s)).fold(0.0, f64::max));
    // Bars, then the legend in rows of three.
    let legend_rows = rows.first().map_or(0, |(_, s)| s.len().div_ceil(3)) as f64;
    let h = 30.0 + rows.len() as f64 * 22.0 + legend_rows * 16.0;
    let mut out = format!(
        "<svg class=\"chart\" viewBox=\"0 0 {W} {h}\" width=\"{W}\" height=\"{h}\" role=\"img\"><text x=\"4\" y=\"14\" class=\"ct\">{} ({})</text>",
        esc(title),
        esc(unit)
    );
    for (i, (label, segs)) in rows.iter().enumerate() {
        let y = 22.0 + i as f64 * 22.0;
        let _ = write!(
            out,
            "<text x=\"4\" y=\"{ty}\" class=\"ax\">{l}</text>",
            ty = y + 12.0,
            l = esc(label)
        );
        let mut x = 130.0;
        for (k, (name, v)) in segs.iter().enumerate() {
            let w = (v / max) * (W - 220.0);
            let _ = write!(
                out,
                "<rect x=\"{x:.1}\" y=\"{y}\" width=\"{w:.1}\" height=\"16\" fill=\"{c}\"><title>{n}: {v}</title></rect>",
                c = COLORS[k % COLORS.len()],
                n = esc(name),
                v = short(*v)
            );
            x += w;
        }
        let _ = write!(
            out,
            "<text x=\"{vx:.1}\" y=\"{ty}\" class=\"ax\">{v}</text>",
            vx = x + 4.0,
            ty = y + 12.0,
            v = short(total(segs))
        );
    }
    // Legend under the bars.
    let ly = 30.0 + rows.len() as f64 * 22.0;
    let names: Vec<&String> = rows
        .first()
        .map(|(_, s)| s.iter().map(|(n, _)| n).collect())
        .unwrap_or_default();
    for (k, n) in names.iter().enumerate() {
        let lx = 4.0 + (k % 3) as f64 * 180.0;
        let ly = ly + (k / 3) as f64 * 16.0;
        let _ = write!(
            out,
            "<rect x=\"{lx}\" y=\"{ly}\" width=\"10\" height=\"10\" fill=\"{c}\"/><text x=\"{tx}\" y=\"{ty}\" class=\"ax\">{n}</text>",
            c = COLORS[k % COLORS.len()],
            tx = lx + 14.0,
            ty = ly + 9.0,
            n = esc(n)
        );
    }
    out.push_str("</svg>");
    out
}

/// One row per connection: its setup phases laid end to end on a shared
/// millisecond scale, so the slowest connections show where they waited.
pub fn timelines(rows: &[serde_json::Value], phases: &[(&str, &str)]) -> String {
    let total = |r: &serde_json::Value| -> f64 {
        phases
            .iter()
            .filter_map(|(k, _)| r.get(*k).and_then(|v| v.as_f64()))
            .sum()
    };
    let max = nice_ceiling(rows.iter().map(total).fold(0.0, f64::max));
    let shown: Vec<&serde_json::Value> = rows.iter().take(12).collect();
    let h = 40.0 + shown.len() as f64 * 18.0;
    let (x0, w) = (200.0, W + 300.0);
    let mut out = format!(
        "<svg class=\"chart\" viewBox=\"0 0 {w} {h}\" width=\"{w}\" height=\"{h}\" role=\"img\"><text x=\"4\" y=\"14\" class=\"ct\">connection setup timelines (ms, 0 – {})</text>",
        short(max)
    );
    for (i, (name, color)) in phases.iter().enumerate() {
        let lx = x0 + i as f64 * 130.0;
        let _ = write!(
            out,
            "<rect x=\"{lx}\" y=\"20\" width=\"10\" height=\"10\" fill=\"{color}\"/><text x=\"{tx}\" y=\"29\" class=\"ax\">{l}</text>",
            tx = lx + 14.0,
            l = esc(name.trim_end_matches("_ms"))
        );
    }
    for (i, r) in shown.iter().enumerate() {
        let y = 36.0 + i as f64 * 18.0;
        let label = r.get("connection").and_then(|v| v.as_str()).unwrap_or("?");
        let _ = write!(
            out,
            "<text x=\"4\" y=\"{ty}\" class=\"ax\">{}</text>",
            esc(label),
            ty = y + 11.0
        );
        let mut x = x0;
        for (key, color) in phases {
            let Some(ms) = r.get(*key).and_then(|v| v.as_f64()) else {
                continue;
            };
            let bw = ms / max * (w - x0 - 80.0);
            let _ = write!(out, "<rect x=\"{x:.1}\" y=\"{y}\" width=\"{bw:.1}\" height=\"13\" fill=\"{color}\"><title>{key} {ms} ms</title></rect>");
            x += bw;
        }
        let _ = write!(
            out,
            "<text x=\"{tx:.1}\" y=\"{ty}\" class=\"ax\">{t}</text>",
            tx = x + 4.0,
            ty = y + 11.0,
            t = short(total(r))
        );
    }
    out.push_str("</svg>");
    out
}

fn nice_ceiling(v: f64) -> f64 {
    if v <= 0.0 || !v.is_finite() {
        return 1.0;
    }
    let mag = 10f64.powf(v.log10().floor());
    for m in [1.0, 2.0, 2.5, 5.0, 10.0] {
        if v <= m * mag {
            return m * mag;
        }
    }
    10.0 * mag
}

/// Compact number for axis labels: 1.2k, 3.4M, 0.25.
pub fn short(v: f64) -> String {
    let a = v.abs();
    if a >= 1e9 {
        format!("{:.1}G", v / 1e9)
    } else if a >= 1e6 {
        format!("{:.1}M", v / 1e6)
    } else if a >= 1e4 {
        format!("{:.1}k", v / 1e3)
    } else if a >= 100.0 || v == v.trunc() {
        format!("{v:.0}")
    } else if a >= 1.0 {
        format!("{v:.1}")
    } else {
        format!("{v:.3}")
    }
}

/// HTML/XML escaping for text and attribute values.
pub fn esc(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chart_breaks_lines_at_unmeasured_points() {
        let s = Series {
            label: "p99",
            color: "#c00",
            points: vec![
                (0.0, Some(1.0)),
                (1.0, Some(2.0)),
                (2.0, None),
                (3.0, Some(3.0)),
                (4.0, Some(1.0)),
            ],
        };
        let svg = line_chart("latency", "ms", &[s], &[2.0]);
        assert_eq!(svg.matches("<polyline").count(), 2);
        assert_eq!(svg.matches("class=\"fault\"").count(), 0);
        assert_eq!(svg.matches("class=\"stage\"").count(), 1);
        let empty = line_chart(
            "cpu",
            "%",
            &[Series {
                label: "cpu",
                color: "#000",
                points: vec![(0.0, None)],
            }],
            &[],
        );
        assert!(empty.contains("not measured"));
    }

    #[test]
    fn fault_bands_are_drawn_where_they_fall() {
        let s = || Series {
            label: "p99",
            color: "#c00",
            points: (0..=10).map(|i| (i as f64, Some(1.0))).collect(),
        };
        let bands = [
            Band {
                from: 2.0,
                to: 4.0,
                label: "fault 1 pause",
            },
            Band {
                from: 20.0,
                to: 30.0,
                label: "off the chart",
            },
        ];
        let svg = line_chart_banded("latency", "ms", &[s()], &[], &bands);
        assert_eq!(svg.matches("class=\"fault\"").count(), 1, "{svg}");
        // x 2..4 of 0..10 over the plot width (560 - 56 - 12 = 492): 98.4 px wide at 154.4.
        assert!(
            svg.contains("<rect x=\"154.4\" y=\"22\" width=\"98.4\""),
            "{svg}"
        );
        assert!(svg.contains("fault 1 pause"));
    }

    #[test]
    fn nice_ceilings() {
        assert_eq!(nice_ceiling(0.0), 1.0);
        assert_eq!(nice_ceiling(7.0), 10.0);
        assert_eq!(nice_ceiling(151.0), 200.0);
        assert_eq!(nice_ceiling(2.1), 2.5);
        assert_eq!(short(12_345.0), "12.3k");
    }
}
