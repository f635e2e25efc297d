//! Turns one stage's load report and observer report (their summary.json
//! shapes) into the figures the gate judges. Works on the JSON shapes, not
//! on the producers' Rust types, so the gate reads exactly what the user
//! reads in summary.json.

use crate::gate::{StageFigures, PHASES};
use crate::report::TimelinePoint;
use serde_json::Value;

fn num(v: &Value, path: &[&str]) -> Option<f64> {
    let mut cur = v;
    for key in path {
        cur = cur.get(*key)?;
    }
    cur.as_f64()
}

/// What the target's memory did while a stage held its connections.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RssWindow {
    pub at_hold_start: f64,
    pub at_hold_end: f64,
}

impl RssWindow {
    /// RSS samples of the stage's hold period (timeline points of `stage`
    /// whose /proc sample was taken at or after `hold_start_s`: a point
    /// carries the latest sample, which may predate the point by up to a
    /// second and so the end of the ramp).
    pub fn from_timeline(
        points: &[TimelinePoint],
        stage: usize,
        hold_start_s: f64,
    ) -> Option<RssWindow> {
        let mut hold = points
            .iter()
            .filter(|p| p.stage == stage && p.sampled_t_s.unwrap_or(p.t_s) >= hold_start_s)
            .filter_map(|p| p.rss_bytes);
        let first = hold.next()?;
        let last = hold.next_back()?;
        Some(RssWindow {
            at_hold_start: first,
            at_hold_end: last,
        })
    }

    /// Growth while holding, in percent of the RSS at hold start, scaled to
    /// 10k connections: a leak of 3 % over a 20k stage is 1.5 % per 10k.
    pub fn growth_per_10k_pct(&self, connections: u64) -> Option<f64> {
        if self.at_hold_start <= 0.0 {
            return None;
        }
        let growth = (self.at_hold_end - self.at_hold_start).max(0.0) / self.at_hold_start * 100.0;
        let per_10k = (connections as f64 / 10_000.0).max(1.0);
        Some(growth / per_10k)
    }
}

/// Builds the gate's figures for one stage.
///
/// * `load`: the load generator's stage report (`connections`, `messages`,
///   `latency_ms`, …).
/// * `observer`: the observer's report for the stage window, `None` when no
///   PID was observed.
/// * `cores`: CPU count, to express the target's CPU as a share of the machine.
pub fn stage_figures(
    load: &Value,
    observer: Option<&Value>,
    rss: Option<RssWindow>,
    connections: u64,
    cores: usize,
) -> StageFigures {
    let received = num(load, &["messages", "received"]).unwrap_or(0.0);
    let expected = num(load, &["messages", "expected"]);
    let duplicates = num(load, &["messages", "duplicates"]);
    let mut f = StageFigures {
        // A latency quantile of zero received messages means nothing.
        e2e_p99_ms: if received > 0.0 {
            num(load, &["latency_ms", "p99"])
        } else {
            None
        },
        lost: num(load, &["messages", "lost"]).map(|v| v as u64),
        duplicate_rate_pct: match (duplicates, expected) {
            (Some(d), Some(e)) if e > 0.0 => Some(d / e * 100.0),
            _ => None,
        },
        stability_pct: stability_pct(load),
        ..StageFigures::default()
    };
    connect_failures(load, &mut f);
    if let Some(obs) = observer {
        cpu_peak(obs, cores, &mut f);
        f.observer_coverage_pct = num(obs, &["coverage", "pct"]);
        if let (Some(acc), Some(tracked)) = (
            num(obs, &["coverage", "accepted"]),
            num(obs, &["coverage", "tracked"]),
        ) {
            let mut d = format!("{tracked} of {acc} accepted connections tracked");
            if let Some(Value::Object(why)) = obs.pointer("/coverage/untracked_by_reason") {
                let reasons = by_reason(why);
                if !reasons.is_empty() {
                    d.push_str(&format!("; untracked: {reasons}"));
                }
            }
            f.details.insert("observer_coverage".into(), d);
        }
        let open = num(obs, &["fd", "open_peak"]);
        let limit = num(obs, &["fd", "limit"]);
        f.fd_headroom_pct = match (open, limit) {
            (Some(o), Some(l)) if l > 0.0 => Some((1.0 - o / l) * 100.0),
            _ => None,
        };
        f.probe_drops = drops(obs);
        f.rss_growth_per_10k_pct = rss.and_then(|w| w.growth_per_10k_pct(connections));
        for phase in PHASES {
            let count = num(obs, &["phases_ms", phase, "count"]).unwrap_or(0.0);
            if count > 0.0 {
                if let Some(p99) = num(obs, &["phases_ms", phase, "p99"]) {
                    f.phase_p99_ms.insert(phase.to_string(), p99);
                }
            }
        }
    }
    f
}

/// Failed connection attempts ÷ attempts (retries included), with the
/// reasons. No attempt and nothing open: not measured; a stage that only
/// held earlier connections attempted nothing and failed nothing.
fn connect_failures(load: &Value, f: &mut StageFigures) {
    let attempts = num(load, &["connections", "attempts"]);
    let failed = num(load, &["connections", "failed"]).unwrap_or(0.0);
    let opened = num(load, &["connections", "opened"]).unwrap_or(0.0);
    f.connect_failure_pct = match attempts {
        Some(a) if a > 0.0 => Some(failed / a * 100.0),
        Some(_) if opened > 0.0 => Some(0.0),
        _ => None,
    };
    if let Some(a) = attempts.filter(|a| *a > 0.0) {
        let mut d = format!("{failed} of {a} attempts failed");
        if let Some(Value::Object(why)) = load.get("failed_by_reason") {
            let reasons = by_reason(why);
            if !reasons.is_empty() {
                d.push_str(&format!(" ({reasons})"));
            }
        }
        f.details.insert("connect_failures".into(), d);
    }
}

/// "reason n, reason n" from a `{reason: count}` object, largest first.
fn by_reason(m: &serde_json::Map<String, Value>) -> String {
    let mut v: Vec<(&String, u64)> = m
        .iter()
        .filter_map(|(k, n)| n.as_u64().filter(|n| *n > 0).map(|n| (k, n)))
        .collect();
    v.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(b.0)));
    v.iter()
        .map(|(k, n)| format!("{k} {n}"))
        .collect::<Vec<_>>()
        .join(", ")
}

/// The target's CPU peak as a share of the cores it may really use: its
/// affinity mask or cgroup quota when the observer found one, else the
/// machine's cores. A single-threaded server pinned at 100 % of one core
/// must not pass a 65 % limit because the host has 16 cores.
fn cpu_peak(obs: &Value, machine_cores: usize, f: &mut StageFigures) {
    let Some(per_core) = num(obs, &["target", "cpu_peak_pct"]) else {
        return;
    };
    let (usable, source) = match num(obs, &["target", "cpu_cores_usable"]) {
        Some(c) if c > 0.0 => (
            c,
            obs.pointer("/target/cpu_cores_source")
                .and_then(Value::as_str)
                .unwrap_or("the target's usable cores")
                .to_string(),
        ),
        _ => (
            machine_cores.max(1) as f64,
            format!("machine ({machine_cores} cores)"),
        ),
    };
    f.cpu_peak_pct = Some(per_core / usable);
    f.details.insert(
        "cpu_peak".into(),
        format!(
            "{} % of one core = {} % of {} usable cores [{source}]; {} % of the machine's {machine_cores}",
            crate::gate::fmt_value(per_core),
            crate::gate::fmt_value(per_core / usable),
            crate::gate::fmt_value(usable),
            crate::gate::fmt_value(per_core / machine_cores.max(1) as f64),
        ),
    );
}

/// Stability in percent: the load generator's `stability`, a fraction
/// (1 − unexpected disconnects per connection-time, see loadgen's
/// report.rs), only when connections were opened at all.
fn stability_pct(load: &Value) -> Option<f64> {
    let opened = num(load, &["connections", "opened"])?;
    if opened <= 0.0 {
        return None;
    }
    num(load, &["connections", "stability"]).map(|f| f * 100.0)
}

/// Ring-buffer drops: a plain number, or an object whose numbers add up.
fn drops(obs: &Value) -> Option<u64> {
    match obs.get("drops")? {
        Value::Number(n) => n.as_u64(),
        Value::Object(o) => Some(o.values().filter_map(Value::as_u64).sum()),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn load() -> Value {
        json!({
            "connections": {"target": 1000, "opened": 1000, "attempts": 1000, "failed": 0, "unexpected_disconnects": 0, "reconnects": 0, "stability": 1.0},
            "messages": {"published": 100, "expected": 5000, "received": 5000, "lost": 0, "duplicates": 1, "out_of_order": 0, "duplicate_rate": 0.0002},
            "latency_ms": {"p50": 1.0, "p90": 2.0, "p99": 3.5, "p999": 9.0, "max": 12.0}
        })
    }

    fn observer() -> Value {
        json!({
            "phases_ms": {"accept_wait": {"count": 1000, "p50": 0.01, "p90": 0.02, "p99": 0.2, "max": 1.0},
                          "tls_handshake": {"count": 0, "p50": 0.0, "p90": 0.0, "p99": 0.0, "max": 0.0}},
            "fd": {"open_peak": 1500, "limit": 20000, "emfile": 0, "enfile": 0},
            "target": {"cpu_peak_pct": 90.0, "rss_start_bytes": 1, "rss_peak_bytes": 2, "threads_peak": 3},
            "coverage": {"accepted": 1000, "tracked": 1000, "pct": 100.0, "untracked_by_reason": {}},
            "drops": 0
        })
    }

    #[test]
    fn figures_from_both_reports() {
        let rss = RssWindow {
            at_hold_start: 100.0,
            at_hold_end: 103.0,
        };
        let f = stage_figures(&load(), Some(&observer()), Some(rss), 20_000, 2);
        assert_eq!(f.e2e_p99_ms, Some(3.5));
        assert_eq!(f.lost, Some(0));
        assert!((f.duplicate_rate_pct.unwrap() - 0.02).abs() < 1e-9);
        assert_eq!(f.stability_pct, Some(100.0));
        assert_eq!(f.connect_failure_pct, Some(0.0));
        assert_eq!(f.observer_coverage_pct, Some(100.0));
        assert_eq!(f.cpu_peak_pct, Some(45.0));
        assert_eq!(f.fd_headroom_pct, Some(92.5));
        assert_eq!(f.probe_drops, Some(0));
        assert!((f.rss_growth_per_10k_pct.unwrap() - 1.5).abs() < 1e-9);
        assert_eq!(
            f.phase_p99_ms.len(),
            1,
            "a phase with no sample is not a figure"
        );
    }

    #[test]
    fn without_observer_or_messages_figures_are_unmeasured() {
        let mut l = load();
        l["messages"]["received"] = json!(0);
        let f = stage_figures(&l, None, None, 1000, 2);
        assert_eq!(f.e2e_p99_ms, None);
        assert_eq!(f.cpu_peak_pct, None);
        assert_eq!(f.fd_headroom_pct, None);
        assert_eq!(f.probe_drops, None);
        assert_eq!(f.rss_growth_per_10k_pct, None);
    }

    #[test]
    fn refused_attempts_fail_the_establishment_criterion_with_reasons() {
        let mut l = load();
        l["connections"]["attempts"] = json!(142);
        l["connections"]["failed"] = json!(42);
        l["failed_by_reason"] = json!({"http_503": 40, "reset": 2});
        let f = stage_figures(&l, None, None, 100, 2);
        assert!((f.connect_failure_pct.unwrap() - 42.0 / 142.0 * 100.0).abs() < 1e-9);
        assert_eq!(
            f.details["connect_failures"],
            "42 of 142 attempts failed (http_503 40, reset 2)"
        );
        let mut none = load();
        none["connections"] = json!({"opened": 0, "attempts": 0, "failed": 0});
        let f = stage_figures(&none, None, None, 100, 2);
        assert_eq!(
            f.connect_failure_pct, None,
            "nothing attempted, nothing open"
        );
    }

    #[test]
    fn cpu_is_judged_on_the_cores_the_target_may_use() {
        // One core busy on a 16-core host, pinned to one core: 100 %, not 6.25 %.
        let mut o = observer();
        o["target"]["cpu_peak_pct"] = json!(100.0);
        o["target"]["cpu_cores_usable"] = json!(1.0);
        o["target"]["cpu_cores_source"] = json!("affinity 1 of 16 cpus");
        let f = stage_figures(&load(), Some(&o), None, 1000, 16);
        assert_eq!(f.cpu_peak_pct, Some(100.0));
        assert!(f.details["cpu_peak"].contains("affinity 1 of 16 cpus"));
        assert!(f.details["cpu_peak"].contains("6.25 % of the machine's 16"));
        // No sample in the stage: not measured, never 0.
        o["target"]["cpu_peak_pct"] = json!(null);
        let f = stage_figures(&load(), Some(&o), None, 1000, 16);
        assert_eq!(f.cpu_peak_pct, None);
    }

    #[test]
    fn coverage_null_when_nothing_accepted_is_not_measured() {
        let mut o = observer();
        o["coverage"] =
            json!({"accepted": 0, "tracked": 0, "pct": null, "untracked_by_reason": {}});
        let f = stage_figures(&load(), Some(&o), None, 1000, 2);
        assert_eq!(f.observer_coverage_pct, None);
        o["coverage"] = json!({"accepted": 10, "tracked": 9, "pct": 90.0, "untracked_by_reason": {"slots_full": 1}});
        let f = stage_figures(&load(), Some(&o), None, 1000, 2);
        assert_eq!(f.observer_coverage_pct, Some(90.0));
        assert_eq!(
            f.details["observer_coverage"],
            "9 of 10 accepted connections tracked; untracked: slots_full 1"
        );
    }

    #[test]
    fn rss_window_from_timeline_uses_hold_samples_of_the_stage() {
        let pts: Vec<TimelinePoint> = (0..10)
            .map(|i| TimelinePoint {
                t_s: i as f64,
                stage: i / 5,
                rss_bytes: Some(100.0 + i as f64),
                ..Default::default()
            })
            .collect();
        let w = RssWindow::from_timeline(&pts, 0, 2.0).unwrap();
        assert_eq!(
            w,
            RssWindow {
                at_hold_start: 102.0,
                at_hold_end: 104.0
            }
        );
        assert!(RssWindow::from_timeline(&pts, 3, 0.0).is_none());
    }

    #[test]
    fn rss_window_skips_a_sample_taken_before_the_hold() {
        // The point at t=2 carries the /proc sample of t=1.3 (mid-ramp, RSS
        // still low): it must not be the hold's starting RSS.
        let point = |t_s: f64, sampled: f64, rss: f64| TimelinePoint {
            t_s,
            stage: 0,
            rss_bytes: Some(rss),
            sampled_t_s: Some(sampled),
            ..Default::default()
        };
        let pts = [
            point(1.0, 0.3, 10.0),
            point(2.0, 1.3, 10.0),
            point(3.0, 2.3, 100.0),
            point(4.0, 3.3, 101.0),
        ];
        let w = RssWindow::from_timeline(&pts, 0, 2.0).unwrap();
        assert_eq!(
            w,
            RssWindow {
                at_hold_start: 100.0,
                at_hold_end: 101.0
            }
        );
    }
}
