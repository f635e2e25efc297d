//! report.html: one self-contained page (inline CSS and SVG, no scripts,
//! no network) a person reads to learn the verdict and where time goes.

use super::{
    svg::{bars, esc, line_chart_banded, short, Band, Series},
    RunSummary, Verdict,
};
use crate::gate::fmt_value;
use serde_json::Value;
use std::fmt::Write;

const CSS: &str = "body{font:14px/1.45 system-ui,sans-serif;margin:24px;color:#1d232b;max-width:1200px}\
h1{font-size:22px;margin:0 0 4px}h2{font-size:17px;margin:28px 0 8px;border-bottom:1px solid #ddd;padding-bottom:4px}\
.banner{padding:14px 18px;border-radius:6px;color:#fff;font-size:20px;font-weight:600;margin:14px 0}\
.admitted{background:#1f8a4c}.rejected{background:#c0392b}.incomplete{background:#d9822b}\
table{border-collapse:collapse;margin:6px 0}td,th{border:1px solid #d6dbe1;padding:4px 8px;text-align:left;vertical-align:top}\
th{background:#f2f4f7}td.pass{background:#e3f5e9}td.fail{background:#fbe3e0}.muted{color:#68707a}\
.charts{display:flex;flex-wrap:wrap;gap:12px}.chart{border:1px solid #e3e6ea;border-radius:4px;background:#fff}\
.chart.empty{width:560px;padding:8px}.ct{font-size:12px;font-weight:600}.ax{font-size:10px;fill:#555}\
.fault{fill:#f0b429;fill-opacity:.18;stroke:#d69e2e;stroke-opacity:.5}.fault-label{fill:#9c6d00}.grid{stroke:#eceef1}.stage{stroke:#999;stroke-dasharray:4 3}.flame img{width:100%;height:auto}.charts svg{flex:0 0 auto}\
code{background:#f2f4f7;padding:1px 4px;border-radius:3px}";

/// Renders the report; `flame_svg` is the observer's lifecycle.svg, if any.
pub fn render(s: &RunSummary, flame_svg: Option<&str>) -> String {
    let mut h = String::with_capacity(64 * 1024);
    let _ = write!(
        h,
        "<!DOCTYPE html><html lang=\"en\"><head><meta charset=\"utf-8\"><title>pushscope report: {v}</title><style>{CSS}</style></head><body>",
        v = verdict_word(s.verdict)
    );
    header(&mut h, s);
    banner(&mut h, s);
    criteria_table(&mut h, s);
    charts(&mut h, s);
    faults(&mut h, s);
    network(&mut h, s);
    heartbeats(&mut h, s);
    message_path(&mut h, s);
    profile(&mut h, s);
    phases(&mut h, s);
    flame(&mut h, flame_svg);
    slowest(&mut h, s);
    ids(&mut h, s);
    load_details(&mut h, s);
    scale(&mut h, s);
    not_measured(&mut h, s);
    h.push_str("</body></html>\n");
    h
}

fn verdict_word(v: Verdict) -> &'static str {
    match v {
        Verdict::Admitted => "ADMITTED",
        Verdict::Rejected => "REJECTED",
        Verdict::Incomplete => "INCOMPLETE",
    }
}

fn header(h: &mut String, s: &RunSummary) {
    let t = &s.target;
    let _ = write!(
        h,
        "<h1>pushscope admission report</h1><div class=\"muted\">{tool} · profile <code>{p}</code> · {d:.0} s · target {pid} <code>{url}</code> ({proto}){cmd}</div>",
        tool = esc(&s.tool),
        p = esc(&s.profile),
        d = s.duration_s,
        pid = t.pid.map(|p| format!("PID {p}")).unwrap_or_else(|| "(no PID: load only)".into()),
        url = esc(&t.url),
        proto = esc(&t.protocol),
        cmd = t.command.as_deref().map(|c| format!(" · <code>{}</code>", esc(c))).unwrap_or_default()
    );
}

fn banner(h: &mut String, s: &RunSummary) {
    let (class, text) = match s.verdict {
        Verdict::Admitted => (
            "admitted",
            "ADMITTED — every criterion of every stage passed".to_string(),
        ),
        Verdict::Rejected => (
            "rejected",
            format!("REJECTED — {} criterion(s) failed", s.failures().len()),
        ),
        Verdict::Incomplete => (
            "incomplete",
            format!(
                "INCOMPLETE — {}",
                s.incomplete_reason
                    .as_deref()
                    .unwrap_or("the run did not finish")
            ),
        ),
    };
    let _ = write!(
        h,
        "<div id=\"verdict\" class=\"banner {class}\">{}</div>",
        esc(&text)
    );
    let failures = s.failures();
    if !failures.is_empty() {
        h.push_str("<ul id=\"failures\">");
        for f in failures {
            let _ = write!(h, "<li>{}</li>", esc(&f));
        }
        h.push_str("</ul>");
    }
}

fn criteria_table(h: &mut String, s: &RunSummary) {
    h.push_str("<h2>Criteria per stage</h2>");
    if s.stages.is_empty() {
        h.push_str("<p>No stage was measured.</p>");
        return;
    }
    h.push_str("<table id=\"criteria\"><tr><th>criterion</th><th>threshold</th>");
    for st in &s.stages {
        let mark = if st.complete { "" } else { " (cut short)" };
        let _ = write!(h, "<th>{}{mark}</th>", esc(&st.name));
    }
    h.push_str("</tr>");
    let mut names: Vec<(&str, &str)> = Vec::new();
    for st in &s.stages {
        for c in &st.criteria {
            if !names.iter().any(|(n, _)| *n == c.name) {
                names.push((&c.name, &c.threshold));
            }
        }
    }
    for (name, threshold) in names {
        let _ = write!(h, "<tr><td>{}</td><td>{}</td>", esc(name), esc(threshold));
        for st in &s.stages {
            match st.criteria.iter().find(|c| c.name == name) {
                Some(c) => {
                    let (class, word) = if c.pass {
                        ("pass", "pass")
                    } else {
                        ("fail", "FAIL")
                    };
                    let value = c
                        .value
                        .map(|v| format!("{} {}", fmt_value(v), c.unit))
                        .unwrap_or_else(|| "not measured".into());
                    let detail = c
                        .detail
                        .as_deref()
                        .map(|d| format!("<br><small>{}</small>", esc(d)))
                        .unwrap_or_default();
                    let _ = write!(
                        h,
                        "<td class=\"{class}\">{} · {word}{detail}</td>",
                        esc(&value)
                    );
                }
                None => h.push_str("<td class=\"muted\">—</td>"),
            }
        }
        h.push_str("</tr>");
    }
    h.push_str("</table>");
}

fn charts(h: &mut String, s: &RunSummary) {
    h.push_str("<h2>Over time</h2><div class=\"charts\">");
    let marks: Vec<f64> = s.stages.iter().skip(1).map(|st| st.start_s).collect();
    let labels: Vec<String> = s
        .faults
        .iter()
        .map(|f| format!("fault {} {}", f.fault, f.kind))
        .collect();
    let bands: Vec<Band> = s
        .faults
        .iter()
        .zip(&labels)
        .filter_map(|(f, l)| {
            Some(Band {
                from: f.start_s?,
                to: f.end_s?,
                label: l,
            })
        })
        .collect();
    let line_chart =
        |t: &str, u: &str, se: &[Series], m: &[f64]| line_chart_banded(t, u, se, m, &bands);
    let pts = |f: fn(&super::TimelinePoint) -> Option<f64>| {
        s.timeline.iter().map(|p| (p.t_s, f(p))).collect::<Vec<_>>()
    };
    let one = |title: &str,
               unit: &str,
               label: &str,
               color: &str,
               f: fn(&super::TimelinePoint) -> Option<f64>| {
        line_chart(
            title,
            unit,
            &[Series {
                label,
                color,
                points: pts(f),
            }],
            &marks,
        )
    };
    h.push_str(&one("Connections", "open", "connections", "#4a7bd0", |p| {
        p.connections
    }));
    h.push_str(&one(
        "Messages received",
        "msgs/s",
        "msgs/s",
        "#7a4ad0",
        |p| p.msgs_per_s,
    ));
    h.push_str(&one(
        "End-to-end latency p99, stage so far",
        "ms",
        "p99",
        "#c0392b",
        |p| p.e2e_p99_ms,
    ));
    h.push_str(&one("Target CPU", "% of machine", "cpu", "#d9822b", |p| {
        p.cpu_pct
    }));
    h.push_str(&one("Target RSS", "bytes", "rss", "#2b8fa3", |p| {
        p.rss_bytes
    }));
    h.push_str(&line_chart(
        "Target fds",
        "count",
        &[
            Series {
                label: "open",
                color: "#4a7bd0",
                points: pts(|p| p.fds_open),
            },
            Series {
                label: "limit",
                color: "#c0392b",
                points: pts(|p| p.fd_limit),
            },
        ],
        &marks,
    ));
    h.push_str("</div>");
}

/// One row per scheduled fault: when it ran and what it did to the clients.
fn faults(h: &mut String, s: &RunSummary) {
    if s.faults.is_empty() {
        return;
    }
    let ms = |v: Option<f64>| v.map(|v| format!("{} ms", short(v))).unwrap_or("—".into());
    let n = |v: Option<u64>| v.map(|v| v.to_string()).unwrap_or("—".into());
    h.push_str("<h2>Faults</h2><table><tr><th>fault</th><th>stage</th><th>at</th><th>held</th><th>status</th><th>detection</th><th>disconnected → reconnected</th><th>recovery p50 / p99 / max</th><th>resumed msgs</th><th>lost / dup</th><th>e2e p99 / max</th><th>notes</th></tr>");
    for f in &s.faults {
        let o = &f.outcome;
        let held = f
            .start_mono_ns
            .zip(f.end_mono_ns)
            .map(|(a, b)| format!("{:.2} s", b.saturating_sub(a) as f64 / 1e9))
            .unwrap_or("—".into());
        let mut notes: Vec<String> = o.notes.clone();
        if let Some(e) = &f.error {
            notes.insert(0, e.clone());
        }
        notes.extend(kind_notes(o));
        if let Some(p) = o.new_pid {
            notes.push(format!(
                "restarted as PID {p} in {}{}",
                ms(o.restart_ms),
                match o.observer_reattached {
                    Some(true) => ", observer followed",
                    Some(false) => ", observer did NOT follow",
                    None => "",
                }
            ));
        }
        let _ = write!(
            h,
            "<tr><td>{} {}</td><td>{}</td><td>{:.1} s</td><td>{held}</td><td>{:?}</td><td>{}</td><td>{} → {}</td><td>{} / {} / {}</td><td>{}</td><td>{} / {}</td><td>{} / {}</td><td>{}</td></tr>",
            f.fault,
            esc(&f.kind),
            f.stage,
            f.at_s,
            f.status,
            ms(o.detection_ms),
            n(o.disconnected),
            n(o.reconnected),
            ms(o.recovery_p50_ms),
            ms(o.recovery_p99_ms),
            ms(o.recovery_max_ms),
            n(o.resumed_messages),
            n(o.lost),
            n(o.duplicates),
            ms(o.latency_p99_ms),
            ms(o.latency_max_ms),
            esc(&notes.join("; "))
        );
    }
    h.push_str("</table>");
}

/// What a kind measured beyond the common figures, in words: the
/// slow-consumers verdict (buffered / dropped / disconnected, why) and
/// the cert-rotate handshakes failed by reason during and after it.
fn kind_notes(o: &loadgen::faults::FaultOutcome) -> Vec<String> {
    use loadgen::faults::{cert_rotate, slow_consumers};
    let mut out = Vec::new();
    let extra = |k: &str| o.extra.get(k).cloned();
    if let Some(j) = extra("slow_consumers")
        .and_then(|v| serde_json::from_value::<slow_consumers::Judged>(v).ok())
    {
        out.push(format!("server {}: {}", j.behaviour, j.why));
    }
    if let Some(r) =
        extra("cert_rotate").and_then(|v| serde_json::from_value::<cert_rotate::Rotated>(v).ok())
    {
        let window = |name: &str, w: &cert_rotate::Window| {
            let reasons: Vec<String> = w
                .failed_by_reason
                .iter()
                .map(|(k, v)| format!("{k}: {v}"))
                .collect();
            format!(
                "{name}: {} of {} connection attempts failed{}, {} unexpected disconnects",
                w.failed,
                w.attempts,
                if reasons.is_empty() {
                    String::new()
                } else {
                    format!(" ({})", reasons.join(", "))
                },
                w.unexpected_disconnects
            )
        };
        if let Some(c) = &r.client_cert {
            out.push(format!("client certificate → {}", c.display()));
        }
        if let Some(rl) = &r.reload {
            out.push(format!(
                "reload_cmd exit {} in {}",
                rl.exit_code.map_or("—".into(), |c| c.to_string()),
                short(rl.ms) + " ms"
            ));
        }
        out.push(window("during", &r.during));
        if let Some(a) = &r.after {
            out.push(window("after", a));
        }
    }
    out
}

const PHASE_ORDER: &[&str] = &[
    "accept_wait",
    "tls_handshake",
    "ws_upgrade",
    "first_push",
    "lifetime",
];

/// Legs of a message in path order, as drawn (publish split in two).
const PATH_LEGS: [(&str, &str); 6] = [
    ("publish_wait", "publish: wait"),
    ("publish_send", "publish: send"),
    ("publish_net", "publish: to target read"),
    ("server", "server"),
    ("delivery", "delivery"),
    ("client", "client"),
];

fn message_path(h: &mut String, s: &RunSummary) {
    h.push_str("<h2>Where message latency goes</h2>");
    let mut any = false;
    for st in &s.stages {
        let Some(mp) = &st.message_path else { continue };
        any = true;
        let _ = write!(h, "<h3>{}</h3>", esc(&st.name));
        if let Some(why) = &mp.not_measured {
            let _ = write!(h, "<p>Not measured: {}</p>", esc(why));
            continue;
        }
        let unjoined: u64 = mp.unjoined.values().sum();
        let _ = write!(
            h,
            "<p>Every message of {} sampled subscriber connection(s): {} deliveries joined exactly by byte offset",
            mp.sampled_connections, mp.messages
        );
        if unjoined > 0 {
            let why: Vec<String> = mp
                .unjoined
                .iter()
                .map(|(k, n)| {
                    format!(
                        "{} {n}",
                        serde_json::to_value(k)
                            .ok()
                            .and_then(|v| v.as_str().map(String::from))
                            .unwrap_or_default()
                    )
                })
                .collect();
            let _ = write!(h, ", {unjoined} not joined ({})", esc(&why.join(", ")));
        }
        h.push_str(".</p>");
        h.push_str("<table><tr><th>leg</th><th>count</th><th>p50 ms</th><th>p90 ms</th><th>p99 ms</th><th>max ms</th><th>tail p50 ms</th><th>tail p99 ms</th></tr>");
        let cell = |v: Option<f64>| v.map(short).unwrap_or_else(|| "—".into());
        for name in crate::msgpath::report::LEGS {
            let all = mp.legs.get(name).copied().flatten();
            let tail = mp.tail.get(name).copied().flatten();
            let _ = write!(
                h,
                "<tr><td>{name}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
                all.map(|l| l.count.to_string()).unwrap_or_else(|| "—".into()),
                cell(all.map(|l| l.p50)),
                cell(all.map(|l| l.p90)),
                cell(all.map(|l| l.p99)),
                cell(all.map(|l| l.max)),
                cell(tail.map(|l| l.p50)),
                cell(tail.map(|l| l.p99)),
            );
        }
        h.push_str("</table>");
        let bar = |label: &str, m: &Option<std::collections::BTreeMap<String, f64>>| {
            m.as_ref().map(|m| {
                (
                    label.to_string(),
                    PATH_LEGS
                        .iter()
                        .map(|(k, n)| (n.to_string(), m.get(*k).copied().unwrap_or(0.0)))
                        .collect::<Vec<_>>(),
                )
            })
        };
        let rows: Vec<_> = [
            bar("p50 message", &mp.p50_message),
            bar("p99 message", &mp.p99_message),
        ]
        .into_iter()
        .flatten()
        .collect();
        h.push_str(&super::svg::stacked(
            "a message's latency, leg by leg",
            "ms",
            &rows,
        ));
    }
    if !any {
        h.push_str("<p>The message path was not traced in this run.</p>");
    }
}

fn profile(h: &mut String, s: &RunSummary) {
    h.push_str("<h2>Where the target burns CPU and where it waits</h2>");
    let mut any = false;
    for st in &s.stages {
        let Some(p) = &st.profile else { continue };
        any = true;
        let _ = write!(
            h,
            "<h3>{}</h3><p>{} on-CPU samples at {} Hz per CPU over {:.1} s; {:.0} thread-ms blocked; run queue p50 {} µs, p99 {} µs ({} waits); longest stall {} ms.",
            esc(&st.name),
            p.cpu.samples,
            p.hz,
            p.duration_s,
            p.offcpu.blocked_ms,
            p.runqueue.p50_us.map(short).unwrap_or_else(|| "—".into()),
            p.runqueue.p99_us.map(short).unwrap_or_else(|| "—".into()),
            p.runqueue.count,
            short(p.stall_max_ms),
        );
        let prefix = format!("profile/stage{}", st.index + 1);
        let _ = write!(
            h,
            " Files: <code>{prefix}-cpu.pb.gz</code>, <code>{prefix}-offcpu.pb.gz</code> (pprof), <code>{prefix}-cpu.svg</code>, <code>{prefix}-offcpu.svg</code>.</p>"
        );
        if let Some(advice) = &p.frame_pointers.advice {
            let _ = write!(
                h,
                "<p><b>Stacks are shallow</b> ({:.0} % of user stacks 1–2 frames deep): {}</p>",
                p.frame_pointers.shallow_share * 100.0,
                esc(advice)
            );
        }
        let table = |title: &str, unit: &str, rows: &[crate::profile::FnShare]| {
            let mut t = format!(
                "<table><tr><th>{}</th><th>{}</th><th>share</th></tr>",
                esc(title),
                esc(unit)
            );
            for r in rows.iter().take(10) {
                let _ = write!(
                    t,
                    "<tr><td><code>{}</code> <small>{}</small></td><td>{}</td><td>{:.1} %</td></tr>",
                    esc(&r.name),
                    esc(&r.module),
                    short(r.value),
                    r.share * 100.0
                );
            }
            t.push_str("</table>");
            t
        };
        h.push_str(&table("on-CPU, self", "samples", &p.cpu.top_self));
        h.push_str(&table("on-CPU, total", "samples", &p.cpu.top_total));
        let kinds: Vec<(String, f64)> = p
            .offcpu
            .by_kind_ms
            .iter()
            .map(|(k, v)| (k.clone(), *v))
            .collect();
        h.push_str(&bars(
            "blocked time by what the threads waited on",
            "thread-ms",
            &kinds,
        ));
        h.push_str("<table><tr><th>off-CPU stack (innermost frames; hover for all)</th><th>waited on</th><th>ms</th><th>times</th></tr>");
        for s in p.offcpu.top_stacks.iter().take(5) {
            // The frames nearest the wait say what waited; the whole stack
            // is in the tooltip and the pprof file.
            const SHOWN: usize = 6;
            let inner = &s.frames[s.frames.len().saturating_sub(SHOWN)..];
            let elided = if s.frames.len() > SHOWN {
                "… → "
            } else {
                ""
            };
            let _ = write!(
                h,
                "<tr><td title=\"{}\"><code>{elided}{}</code></td><td>{}</td><td>{}</td><td>{}</td></tr>",
                esc(&s.frames.join(" → ")),
                esc(&inner.join(" → ")),
                esc(&s.kind),
                short(s.ms),
                s.count
            );
        }
        h.push_str("</table>");
        if !p.stalls.is_empty() {
            h.push_str("<table><tr><th>stall at (ms into the stage)</th><th>lasted ms</th></tr>");
            for s in p.stalls.iter().take(20) {
                let _ = write!(
                    h,
                    "<tr><td>{}</td><td>{}</td></tr>",
                    short(s.start_ms),
                    short(s.duration_ms)
                );
            }
            h.push_str("</table>");
        }
    }
    if !any {
        h.push_str("<p>The target was not profiled in this run.</p>");
    }
}

fn phases(h: &mut String, s: &RunSummary) {
    h.push_str("<h2>Where connection time goes (server side, per phase)</h2>");
    let mut any = false;
    for st in &s.stages {
        let Some(ph) = st.observer.get("phases_ms").and_then(Value::as_object) else {
            continue;
        };
        any = true;
        let _ = write!(h, "<h3>{}</h3><table><tr><th>phase</th><th>count</th><th>p50 ms</th><th>p90 ms</th><th>p99 ms</th><th>max ms</th></tr>", esc(&st.name));
        let mut rows = Vec::new();
        for name in PHASE_ORDER {
            let Some(p) = ph.get(*name) else { continue };
            let g = |k: &str| p.get(k).and_then(Value::as_f64);
            let cell = |v: Option<f64>| v.map(short).unwrap_or_else(|| "—".into());
            let _ = write!(
                h,
                "<tr><td>{name}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
                cell(g("count")),
                cell(g("p50")),
                cell(g("p90")),
                cell(g("p99")),
                cell(g("max"))
            );
            if *name != "lifetime" {
                if let Some(v) = g("p99") {
                    rows.push((name.to_string(), v));
                }
            }
        }
        h.push_str("</table>");
        h.push_str(&bars("p99 by phase (lifetime excluded)", "ms", &rows));
    }
    if !any {
        h.push_str("<p>The observer did not run (no PID) or measured no connection.</p>");
    }
}

fn flame(h: &mut String, svg: Option<&str>) {
    use base64::Engine;
    h.push_str("<h2>Lifecycle flame graph</h2>");
    match svg {
        // As an image: the flame graph keeps its own layout, and its
        // interactive script stays inert inside the report.
        Some(svg) => {
            let b64 = base64::engine::general_purpose::STANDARD.encode(svg);
            let _ = write!(h, "<div class=\"flame\"><img alt=\"lifecycle flame graph\" src=\"data:image/svg+xml;base64,{b64}\"></div>");
        }
        None => h.push_str(
            "<p>No lifecycle.svg: the observer did not run or measured no connection.</p>",
        ),
    }
}

fn slowest(h: &mut String, s: &RunSummary) {
    h.push_str("<h2>Slowest connections</h2>");
    let Some(rows) = s.slowest_connections.as_array().filter(|a| !a.is_empty()) else {
        h.push_str("<p>None recorded.</p>");
        return;
    };
    h.push_str(&super::svg::timelines(rows, &SETUP_PHASES));
    h.push_str(&json_rows_table(rows));
}

/// Setup phases of a connection in order, with their timeline colours.
const SETUP_PHASES: [(&str, &str); 4] = [
    ("accept_wait_ms", "#d9822b"),
    ("tls_handshake_ms", "#7a4ad0"),
    ("ws_upgrade_ms", "#2b8fa3"),
    ("first_push_ms", "#4a7bd0"),
];

fn ids(h: &mut String, s: &RunSummary) {
    if s.lost_ids.is_empty() && s.duplicate_ids.is_empty() {
        return;
    }
    h.push_str("<h2>Messages that failed delivery</h2><table id=\"lost\">");
    for (kind, list) in [("lost", &s.lost_ids), ("duplicated", &s.duplicate_ids)] {
        if !list.is_empty() {
            let shown: Vec<String> = list.iter().take(50).map(|i| esc(i)).collect();
            let more = if list.len() > 50 {
                format!(" … and {} more", list.len() - 50)
            } else {
                String::new()
            };
            let _ = write!(
                h,
                "<tr><th>{kind}</th><td><code>{}</code>{more}</td></tr>",
                shown.join("</code> <code>")
            );
        }
    }
    h.push_str("</table>");
}

/// The emulated link: what was asked, how, and what it did.
fn network(h: &mut String, s: &RunSummary) {
    let Some(n) = &s.network else { return };
    h.push_str("<h2>Emulated network</h2>");
    let _ = write!(
        h,
        "<p id=\"network\">Asked <code>{}</code> (each direction: mean rtt/2, σ jitter/√2, order kept per flow), mechanism <b>{}</b>, load generator at {}.</p>",
        esc(&n.asked_text),
        esc(&n.mechanism),
        esc(&n.client_addr)
    );
    h.push_str("<table><tr><th>direction</th><th>packets</th><th>forwarded</th><th>dropped (loss)</th><th>dropped (partition)</th><th>dropped (queue)</th><th>loss measured</th><th>delay p50 ms</th><th>p99 ms</th><th>mean ms</th><th>stdev ms</th><th>late p99 ms</th></tr>");
    for (name, d) in [("to target", &n.to_target), ("from target", &n.from_target)] {
        let _ = write!(
            h,
            "<tr><td>{name}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{:.5} %</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
            d.packets,
            d.forwarded,
            d.dropped_loss,
            d.dropped_partition,
            d.dropped_overflow,
            d.loss_measured * 100.0,
            ms3(d.delay_p50_ms),
            ms3(d.delay_p99_ms),
            ms3(d.delay_mean_ms),
            ms3(d.delay_stdev_ms),
            ms3(d.late_p99_ms)
        );
    }
    h.push_str("</table>");
    let cell = |v: Option<f64>| v.map(ms3).unwrap_or_else(|| "—".into());
    let _ = write!(
        h,
        "<p>Applied round trip: mean {} ms, jitter (σ) {} ms.",
        ms3(n.applied_rtt_mean_ms),
        ms3(n.applied_jitter_ms)
    );
    if let Some(p) = &n.path {
        let _ = write!(
            h,
            " The host's own path through the link adds {} ms (p10 {}, p90 {}; {} handshakes with nothing added, measured at start): {} ms of it were taken off the drawn delays, so TCP sees the round trip asked for.",
            ms3(p.base_rtt_ms),
            ms3(p.base_rtt_p10_ms),
            ms3(p.base_rtt_p90_ms),
            p.samples,
            ms3(p.compensated_ms)
        );
    }
    if let Some(t) = &n.tcp {
        let _ = write!(
            h,
            " TCP smoothed RTT of the load generator's connections: p50 {} ms, p99 {} ms ({} samples); segments they retransmitted: {}.",
            cell(t.srtt_p50_ms),
            cell(t.srtt_p99_ms),
            t.srtt_samples,
            t.retransmits
        );
    }
    if let Some(r) = n.server_retransmits {
        let _ = write!(h, " Segments the target retransmitted (probes): {r}.");
    }
    h.push_str("</p>");
}

/// Heartbeat round trips and unexpected disconnects per stage: a server
/// timeout too tight for the link shows here.
fn heartbeats(h: &mut String, s: &RunSummary) {
    h.push_str("<h2>Heartbeat RTT and disconnects per stage</h2><table id=\"heartbeats\"><tr><th>stage</th><th>heartbeat RTT p50 ms</th><th>p99 ms</th><th>TCP srtt p50 ms</th><th>p99 ms</th><th>unexpected disconnects by reason</th></tr>");
    for st in &s.stages {
        let g = |p: &str| {
            st.load
                .pointer(p)
                .and_then(Value::as_f64)
                .map(ms3)
                .unwrap_or_else(|| "—".into())
        };
        let reasons = st
            .load
            .get("disconnects_by_reason")
            .filter(|v| v.as_object().is_some_and(|o| !o.is_empty()))
            .map(flat)
            .unwrap_or_else(|| "none".into());
        let _ = write!(
            h,
            "<tr><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
            esc(&st.name),
            g("/heartbeat_rtt_ms/p50"),
            g("/heartbeat_rtt_ms/p99"),
            g("/tcp_srtt_ms/p50"),
            g("/tcp_srtt_ms/p99"),
            reasons
        );
    }
    h.push_str("</table>");
}

/// Milliseconds with µs resolution (link delays are sub-millisecond).
fn ms3(v: f64) -> String {
    format!("{v:.3}")
}

fn load_details(h: &mut String, s: &RunSummary) {
    h.push_str("<h2>Load figures per stage</h2>");
    for st in &s.stages {
        let Some(obj) = st.load.as_object().filter(|o| !o.is_empty()) else {
            continue;
        };
        let _ = write!(h, "<h3>{}</h3><table>", esc(&st.name));
        for (section, v) in obj {
            let _ = write!(h, "<tr><th>{}</th><td>{}</td></tr>", esc(section), flat(v));
        }
        h.push_str("</table>");
    }
}

fn mib(b: f64) -> String {
    format!("{:.1} MiB", b / 1048576.0)
}

fn kib(b: f64) -> String {
    format!("{:.1} KiB", b / 1024.0)
}

/// What one more 10k connections costs each side.
fn scale(h: &mut String, s: &RunSummary) {
    let rows: Vec<_> = s
        .stages
        .iter()
        .filter_map(|st| Some((st, st.scale.as_ref()?)))
        .collect();
    if rows.is_empty() {
        return;
    }
    h.push_str("<h2>What the connections cost</h2><table><tr><th>stage</th><th>held</th><th>loadgen RSS (per conn)</th><th>target RSS (per conn)</th><th>kernel TCP memory (sockets)</th><th>observer CPU (% of a core)</th><th>observer maps</th><th>per 10k more: loadgen / target / kernel</th></tr>");
    let dash = || "—".to_string();
    for (st, sc) in rows {
        let pair = |total: Option<u64>, per: Option<f64>| match (total, per) {
            (Some(t), Some(p)) => format!("{} ({})", mib(t as f64), kib(p)),
            (Some(t), None) => mib(t as f64),
            _ => dash(),
        };
        let more = sc.per_10k_more.as_ref().map_or_else(dash, |m| {
            let f = |v: Option<f64>| v.map_or_else(dash, mib);
            format!(
                "{} / {} / {}",
                f(m.loadgen_rss_bytes),
                f(m.target_rss_bytes),
                f(m.kernel_tcp_mem_bytes)
            )
        });
        let _ = write!(
            h,
            "<tr><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
            esc(&st.name),
            sc.connections_held,
            pair(sc.loadgen_rss_bytes, sc.loadgen_rss_per_connection_bytes),
            pair(sc.target_rss_bytes, sc.target_rss_per_connection_bytes),
            sc.kernel_tcp.map_or_else(dash, |k| format!("{} ({})", mib(k.tcp_mem_bytes as f64), k.tcp_inuse)),
            sc.observer_cpu_pct.map_or_else(dash, |c| format!("{c:.2}")),
            sc.observer_bpf_map_bytes.map_or_else(dash, |b| mib(b as f64)),
            more
        );
    }
    h.push_str("</table><p>Per connection includes each process's fixed part; the last column is the growth from the previous stage per 10k more connections. Kernel TCP memory is the namespace's (both ends of loopback connections).</p>");
}

fn not_measured(h: &mut String, s: &RunSummary) {
    h.push_str("<h2>What this run could not measure</h2>");
    if s.not_measured.is_empty() {
        h.push_str("<p>Everything the profile asks for was measured.</p>");
        return;
    }
    h.push_str("<ul id=\"not-measured\">");
    for n in &s.not_measured {
        let _ = write!(h, "<li>{}</li>", esc(n));
    }
    h.push_str("</ul>");
}

/// A JSON value as compact "k: v" text, nested objects in braces.
fn flat(v: &Value) -> String {
    match v {
        Value::Object(o) => o
            .iter()
            .map(|(k, v)| format!("{}: {}", esc(k), flat(v)))
            .collect::<Vec<_>>()
            .join(" · "),
        Value::Number(n) => n.as_f64().map(short).unwrap_or_else(|| n.to_string()),
        Value::String(s) => esc(s),
        other => esc(&other.to_string()),
    }
}

fn json_rows_table(rows: &[Value]) -> String {
    let mut keys: Vec<&str> = Vec::new();
    for r in rows {
        if let Some(o) = r.as_object() {
            for k in o.keys() {
                if !keys.contains(&k.as_str()) {
                    keys.push(k);
                }
            }
        }
    }
    // The row's name first, then the figures.
    keys.sort_by_key(|k| *k != "connection");
    let mut t = String::from("<table><tr>");
    for k in &keys {
        let _ = write!(t, "<th>{}</th>", esc(k));
    }
    t.push_str("</tr>");
    for r in rows.iter().take(20) {
        t.push_str("<tr>");
        for k in &keys {
            let _ = write!(t, "<td>{}</td>", r.get(*k).map(flat).unwrap_or_default());
        }
        t.push_str("</tr>");
    }
    t.push_str("</table>");
    t
}

#[cfg(test)]
mod tests {
    use crate::report::fixtures::summary;

    #[test]
    fn report_shows_verdict_criteria_and_lost_ids() {
        let html = super::render(
            &summary(),
            Some("<?xml version=\"1.0\"?><svg id=\"flame\"></svg>"),
        );
        assert!(html.contains("id=\"verdict\" class=\"banner rejected\""));
        assert!(html.contains("REJECTED — 1 criterion(s) failed"));
        assert_eq!(html.matches("<td class=\"fail\">").count(), 1);
        assert_eq!(html.matches("<td class=\"pass\">").count(), 19);
        assert!(html.contains("<code>m-17</code>"));
        assert!(html.contains("src=\"data:image/svg+xml;base64,"));
        assert!(
            !html.contains("http://")
                || html.matches("http://").count() == html.matches("xmlns").count()
        );
        // No link asked: no network section, heartbeats still shown.
        assert!(!html.contains("Emulated network"));
        assert!(html.contains("id=\"heartbeats\""));
    }

    #[test]
    fn report_shows_the_emulated_network_and_heartbeats() {
        use loadgen::link::{DirReport, NetworkReport, NetworkSpec};
        let mut s = summary();
        let dir = |p50: f64| DirReport {
            packets: 1000,
            forwarded: 990,
            dropped_loss: 10,
            loss_measured: 0.01,
            delay_p50_ms: p50,
            ..Default::default()
        };
        s.network = Some(NetworkReport {
            asked: NetworkSpec::parse("financial-backbone").unwrap(),
            asked_text: "rtt=2ms,jitter=0.3ms,loss=0.0001%".into(),
            mechanism: "built-in".into(),
            to_target: dir(1.01),
            from_target: dir(0.99),
            applied_rtt_mean_ms: 2.0,
            applied_jitter_ms: 0.3,
            client_addr: "100.64.0.2".into(),
            path: None,
            tcp: None,
            server_retransmits: Some(7),
        });
        s.stages[0].load = serde_json::json!({
            "heartbeat_rtt_ms": {"p50": 2.1, "p99": 3.4, "max": 4.0},
            "tcp_srtt_ms": {"p50": 2.05, "p99": 2.9, "max": 3.0},
            "disconnects_by_reason": {"heartbeat lost": 2}
        });
        let html = super::render(&s, None);
        assert!(html.contains("Emulated network"));
        assert!(html.contains("<code>rtt=2ms,jitter=0.3ms,loss=0.0001%</code>"));
        assert!(html.contains("<b>built-in</b>"));
        assert!(html.contains("<td>1.010</td>") && html.contains("<td>0.990</td>"));
        assert!(html.contains("target retransmitted (probes): 7"));
        assert!(html.contains(
            "<td>2.100</td><td>3.400</td><td>2.050</td><td>2.900</td><td>heartbeat lost: 2</td>"
        ));
    }

    #[test]
    fn fault_rows_say_what_the_server_did() {
        let o = |k: &str, v: serde_json::Value| {
            let mut o = loadgen::faults::FaultOutcome::default();
            o.extra.insert(k.into(), v);
            o
        };
        let slow = o(
            "slow_consumers",
            serde_json::json!({"behaviour": "dropped", "why": "they lost 5 of 100", "share": 0.1,
                "subscribers": 2, "connections_found": 2, "samples": 9, "max_send_queue_bytes": 0,
                "max_unacked_bytes": 0, "max_total_send_queue_bytes": 0,
                "others_max_send_queue_bytes": 0, "rss_start_bytes": null, "rss_max_bytes": null,
                "server_closed": 0, "first_close_ms": null, "error": null, "rss_growth_bytes": null,
                "slow_lost": 5, "slow_expected": 100, "slow_received": 95, "others_lost": 0,
                "slow_disconnects": 0, "slow_disconnects_by_reason": {},
                "slow_latency_p99_ms": null, "slow_latency_max_ms": null}),
        );
        assert_eq!(
            super::kind_notes(&slow),
            ["server dropped: they lost 5 of 100"]
        );
        let rot = o(
            "cert_rotate",
            serde_json::json!({"client_cert": "/c/rogue.pem", "reload": null,
                "during": {"attempts": 10, "failed": 10, "failed_by_reason": {"http_400": 10},
                    "unexpected_disconnects": 0, "disconnects_by_reason": {}},
                "after": {"attempts": 4, "failed": 4, "failed_by_reason": {"http_400": 4},
                    "unexpected_disconnects": 0, "disconnects_by_reason": {}}}),
        );
        assert_eq!(
            super::kind_notes(&rot),
            [
                "client certificate → /c/rogue.pem",
                "during: 10 of 10 connection attempts failed (http_400: 10), 0 unexpected disconnects",
                "after: 4 of 4 connection attempts failed (http_400: 4), 0 unexpected disconnects"
            ]
        );
    }
}
