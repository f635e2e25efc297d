//! Per-stage report: the `summary.json` shape of `pushscope load`, built
//! from merged `StageStats` and what the publisher did in the stage.

use crate::{accounting::StageStats, publisher::StagePublish, scenario::Scenario};
use hdrhistogram::Histogram;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// Above this share of one core a load process may be the bottleneck.
pub const CPU_WARN_PCT: f64 = 80.0;

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Connections {
    pub target: u64,
    /// Subscribers connected at least once by the end of the stage (and not closed on purpose).
    pub opened: u64,
    /// Connection attempts (WebSocket upgrades tried, retries included)
    /// that finished in the stage: `new_connections + reconnects + failed`.
    pub attempts: u64,
    /// Attempts that failed (by reason in `failed_by_reason`).
    pub failed: u64,
    pub unexpected_disconnects: u64,
    pub reconnects: u64,
    /// 1 − unexpected disconnects per connection held for the whole stage
    /// (connection-time normalised by the stage's duration).
    pub stability: f64,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Messages {
    pub published: u64,
    pub expected: u64,
    pub received: u64,
    pub lost: u64,
    pub duplicates: u64,
    pub out_of_order: u64,
    pub duplicate_rate: f64,
    /// Frames of the server's history: scheduled before the receiving
    /// subscriber's first upgrade (nchan sends its buffer to new
    /// subscribers). Neither latency nor loss/duplicate accounting.
    pub replayed: u64,
    /// Frames carrying another run's marker (e.g. a previous run's
    /// messages still buffered by the server). Never accounted.
    pub foreign: u64,
}

/// Quantiles in milliseconds; `None` when nothing was measured.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Latency {
    pub p50: Option<f64>,
    pub p90: Option<f64>,
    pub p99: Option<f64>,
    pub p999: Option<f64>,
    pub max: Option<f64>,
    /// Latencies above 60 s, recorded as 60 s (quantiles at 60 s are clipped).
    pub clipped: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Phase {
    pub p50: Option<f64>,
    pub p99: Option<f64>,
    pub max: Option<f64>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct ClientPhases {
    pub connect: Phase,
    pub tls: Phase,
    pub upgrade: Phase,
    pub first_message: Phase,
}

/// Load-generator health during the stage.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct LoadgenHealth {
    /// CPU of each load process (coordinator and workers), % of one core.
    pub cpu_pct: Vec<f64>,
    /// True when a process used more than 80 % of a core: figures may be the generator's.
    pub cpu_warning: bool,
    /// Resident memory of each load process at the stage's end (same order as `cpu_pct`).
    #[serde(default)]
    pub rss_bytes: Vec<u64>,
    /// Their sum ÷ the connections held at the stage's end: what one more
    /// connection costs the load generator (`null` with none held).
    #[serde(default)]
    pub rss_per_connection_bytes: Option<f64>,
    /// Messages received (replayed, foreign and unmarked included) ÷
    /// subscriber reads (`recv` calls that returned bytes, pings and pongs
    /// alone included): how many queued messages one read took; the
    /// receive cost per message falls as it grows (`null` with no read).
    #[serde(default)]
    pub messages_per_read: Option<f64>,
    pub publish_errors: BTreeMap<String, u64>,
    pub publish_failed: u64,
    /// Stage messages not yet published when the stage was judged (the
    /// publish path lags the schedule); they are judged with the next stage.
    pub publish_backlog: u64,
}

/// One stage of `summary.json`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct StageReport {
    pub stage: u32,
    /// Hold part of the stage: from the end of the ramp to the stage end
    /// (the stage lasts `ramp_s + hold_s`).
    pub hold_s: f64,
    /// Ramp part of the stage (connections opened at the connect rate).
    pub ramp_s: f64,
    /// Stage start and end, CLOCK_MONOTONIC ns (the clock of every
    /// latency stamp and of the kernel's `bpf_ktime_get_ns`).
    pub started_mono_ns: u64,
    pub ended_mono_ns: u64,
    /// The same instants as unix ns, for display only (wall clock at the
    /// run's start + monotonic offset: an NTP step moves nothing).
    pub started_unix_ns: u64,
    pub ended_unix_ns: u64,
    pub connections: Connections,
    pub messages: Messages,
    pub latency_ms: Latency,
    pub client_phases_ms: ClientPhases,
    /// Subscribers whose first connection succeeded during this stage.
    pub new_connections: u64,
    pub intended_disconnects: u64,
    pub connection_seconds: f64,
    pub failed_by_reason: BTreeMap<String, u64>,
    pub disconnects_by_reason: BTreeMap<String, u64>,
    /// Received after their gap had been declared lost.
    pub late: u64,
    /// Arrivals in a span of declared losses too long to remember one by
    /// one (past 10,000 per subscriber): each is late or a duplicate.
    pub late_untracked: u64,
    /// Second copies of messages the publisher re-posted after a failed POST
    /// (not counted as duplicates: the server accepted two publishes).
    pub republished: u64,
    /// Frames without a marker of the subscriber's channel.
    pub unmarked: u64,
    /// Heartbeat round trips the subscribers saw (ping sent → pong read).
    #[serde(default = "no_phase")]
    pub heartbeat_rtt_ms: Phase,
    /// The subscribers' sockets as the kernel saw them (`TCP_INFO`, sampled
    /// at every pong): smoothed RTT and retransmitted segments.
    #[serde(default = "no_phase")]
    pub tcp_srtt_ms: Phase,
    #[serde(default)]
    pub tcp_retransmits: u64,
    pub loadgen: LoadgenHealth,
    /// Subscribers a `slow-consumers` fault made stop reading, apart
    /// (their received/expected/lost are also in `messages`; their
    /// latencies only here). Absent when the stage had none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub slow_consumers: Option<SlowConsumers>,
}

/// The slow subscribers' side of a stage (`accounting::SlowStats`).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct SlowConsumers {
    pub subscribers: u64,
    pub expected: u64,
    pub received: u64,
    pub lost: u64,
    pub unexpected_disconnects: u64,
    pub disconnects_by_reason: BTreeMap<String, u64>,
    pub latency_ms: Latency,
}

fn no_phase() -> Phase {
    Phase {
        p50: None,
        p99: None,
        max: None,
    }
}

fn q(h: &Histogram<u64>, quantile: f64) -> Option<f64> {
    (!h.is_empty()).then(|| h.value_at_quantile(quantile) as f64 / 1000.0)
}

fn max(h: &Histogram<u64>) -> Option<f64> {
    (!h.is_empty()).then(|| h.max() as f64 / 1000.0)
}

fn phase(h: &Histogram<u64>) -> Phase {
    Phase {
        p50: q(h, 0.5),
        p99: q(h, 0.99),
        max: max(h),
    }
}

pub struct StageMeta {
    pub stage: u32,
    pub target: u64,
    /// Cumulative `opened` at the end of this stage.
    pub opened_total: u64,
    /// Seconds from the stage start until its connections were opened.
    pub ramp_s: f64,
    pub started_mono_ns: u64,
    pub ended_mono_ns: u64,
    /// Converts the monotonic instants to unix time for display.
    pub anchor: crate::clock::Anchor,
}

pub fn stage_report(meta: &StageMeta, s: &StageStats, p: &StagePublish) -> StageReport {
    let dur_s = (meta.ended_mono_ns.saturating_sub(meta.started_mono_ns)) as f64 / 1e9;
    let conn_s = s.connection_ns as f64 / 1e9;
    let held = if dur_s > 0.0 { conn_s / dur_s } else { 0.0 };
    let stability = if held > 0.0 {
        (1.0 - s.unexpected_disconnects as f64 / held).max(0.0)
    } else if s.unexpected_disconnects > 0 {
        0.0
    } else {
        1.0
    };
    let delivered = s.received + s.duplicates;
    StageReport {
        stage: meta.stage,
        hold_s: (dur_s - meta.ramp_s).max(0.0),
        ramp_s: meta.ramp_s,
        started_mono_ns: meta.started_mono_ns,
        ended_mono_ns: meta.ended_mono_ns,
        started_unix_ns: meta.anchor.unix_of(meta.started_mono_ns),
        ended_unix_ns: meta.anchor.unix_of(meta.ended_mono_ns),
        connections: Connections {
            target: meta.target,
            opened: meta.opened_total,
            attempts: s.attempts,
            failed: s.failed,
            unexpected_disconnects: s.unexpected_disconnects,
            reconnects: s.reconnects,
            stability,
        },
        messages: Messages {
            published: p.published,
            expected: s.expected,
            received: s.received,
            lost: s.lost,
            duplicates: s.duplicates,
            out_of_order: s.out_of_order,
            duplicate_rate: if delivered > 0 {
                s.duplicates as f64 / delivered as f64
            } else {
                0.0
            },
            replayed: s.replayed,
            foreign: s.foreign,
        },
        latency_ms: Latency {
            p50: q(&s.latency, 0.5),
            p90: q(&s.latency, 0.9),
            p99: q(&s.latency, 0.99),
            p999: q(&s.latency, 0.999),
            max: max(&s.latency),
            clipped: s.latency_clipped,
        },
        client_phases_ms: ClientPhases {
            connect: phase(&s.connect),
            tls: phase(&s.tls),
            upgrade: phase(&s.upgrade),
            first_message: phase(&s.first_message),
        },
        new_connections: s.opened,
        intended_disconnects: s.intended_disconnects,
        connection_seconds: conn_s,
        failed_by_reason: s.failed_by_reason.clone(),
        disconnects_by_reason: s.disconnects_by_reason.clone(),
        late: s.late,
        late_untracked: s.late_untracked,
        republished: s.republished,
        unmarked: s.unmarked,
        heartbeat_rtt_ms: phase(&s.heartbeat_rtt),
        tcp_srtt_ms: phase(&s.tcp_srtt),
        tcp_retransmits: s.tcp_retransmits,
        loadgen: LoadgenHealth {
            cpu_pct: s.cpu_pct.clone(),
            cpu_warning: s.cpu_pct.iter().any(|&c| c > CPU_WARN_PCT),
            rss_bytes: s.rss_bytes.clone(),
            rss_per_connection_bytes: (meta.opened_total > 0 && !s.rss_bytes.is_empty())
                .then(|| s.rss_bytes.iter().sum::<u64>() as f64 / meta.opened_total as f64),
            messages_per_read: (s.reads > 0).then(|| {
                (s.received + s.replayed + s.foreign + s.unmarked) as f64 / s.reads as f64
            }),
            publish_errors: p.errors.clone(),
            publish_failed: p.failed.len() as u64,
            publish_backlog: p.backlog,
        },
        slow_consumers: (s.slow.subscribers > 0).then(|| SlowConsumers {
            subscribers: s.slow.subscribers,
            expected: s.slow.expected,
            received: s.slow.received,
            lost: s.slow.lost,
            unexpected_disconnects: s.slow.unexpected_disconnects,
            disconnects_by_reason: s.slow.disconnects_by_reason.clone(),
            latency_ms: Latency {
                p50: q(&s.slow.latency, 0.5),
                p90: q(&s.slow.latency, 0.9),
                p99: q(&s.slow.latency, 0.99),
                p999: q(&s.slow.latency, 0.999),
                max: max(&s.slow.latency),
                clipped: s.slow.latency_clipped,
            },
        }),
    }
}

/// `summary.json` of `pushscope load`.
#[derive(Debug, Clone, Serialize)]
pub struct Summary<'a> {
    pub schema: u32,
    pub complete: bool,
    pub scenario: &'a Scenario,
    /// Scheduled faults as they happened (empty without faults).
    #[serde(skip_serializing_if = "<[_]>::is_empty")]
    pub faults: &'a [crate::faults::FaultRecord],
    pub stages: &'a [StageReport],
    pub warnings: &'a [String],
    /// The emulated link: asked, mechanism, measured (absent without `--network`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub network: Option<&'a crate::link::NetworkReport>,
}

pub fn write_summary(
    dir: &std::path::Path,
    summary: &Summary<'_>,
) -> std::io::Result<std::path::PathBuf> {
    std::fs::create_dir_all(dir)?;
    let path = dir.join("summary.json");
    let text = serde_json::to_string_pretty(summary).map_err(std::io::Error::other)?;
    std::fs::write(&path, text + "\n")?;
    Ok(path)
}

/// One human line per stage.
pub fn stage_line(r: &StageReport) -> String {
    let f = |v: Option<f64>| v.map_or("-".into(), |v| format!("{v:.2}"));
    format!(
        "stage {}: {}/{} connections ({} failed, {} unexpected disconnects, stability {:.5}); messages published {} expected {} received {} lost {} duplicates {} out-of-order {} replayed {} foreign {}; latency ms p50 {} p99 {} max {}",
        r.stage,
        r.connections.opened,
        r.connections.target,
        r.connections.failed,
        r.connections.unexpected_disconnects,
        r.connections.stability,
        r.messages.published,
        r.messages.expected,
        r.messages.received,
        r.messages.lost,
        r.messages.duplicates,
        r.messages.out_of_order,
        r.messages.replayed,
        r.messages.foreign,
        f(r.latency_ms.p50),
        f(r.latency_ms.p99),
        f(r.latency_ms.max),
    )
}
