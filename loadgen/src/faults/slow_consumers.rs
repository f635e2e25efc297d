//! `slow-consumers`: a share of the subscribers (`share = "10%"`, default
//! 10 %) stops reading its sockets (and pinging) for the fault's duration,
//! then resumes (`PoolCmd::Slow` through the run's [`Control`]). While it
//! holds, a sampler thread reads the target's side of those connections
//! every 100 ms through sock_diag (`sockdiag`: send queue bytes,
//! `sk_wmem_queued`, state) and the target's RSS. What the server did is
//! classified by [`judge`] once the stage is judged, from measurements
//! only:
//!
//! * `disconnected`: the server closed slow connections: their server
//!   socket left ESTABLISHED or vanished during the window, or (a server
//!   that notices an overflow only when the socket drains, like the
//!   reference pusher) the slow subscribers saw the server cut them once
//!   they read again (any reason but their own missed pongs);
//! * `dropped`: they stayed up, but the slow subscribers lost messages
//!   the others did not;
//! * `buffered`: no closes, no loss on the slow subscribers, and their send
//!   queues (or the target's RSS) grew: they got everything, later.

use super::{FaultEnv, FaultOutcome, Injector, Keys, TargetPid};
use crate::{
    pool::{PoolCmd, PoolReply},
    report::StageReport,
    runner::Control,
    sockdiag,
};
use serde::{Deserialize, Serialize};
use std::{
    collections::{HashMap, HashSet},
    net::SocketAddr,
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc, Mutex,
    },
    time::Duration,
};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Spec {
    /// Share of subscribers, parts per million.
    pub share_ppm: u32,
}

impl Spec {
    /// `share = "10%"` or `share = 0.1` (default 10 %).
    pub fn parse(keys: &mut Keys) -> Result<Spec, String> {
        let bad = |v: &str| {
            format!(
                "`share` = {v} is not a share of subscribers: write e.g. share = \"10%\" or 0.1"
            )
        };
        let share = match keys.take("share") {
            None => 0.1,
            Some(toml::Value::String(s)) => {
                let pct: f64 = s
                    .trim()
                    .strip_suffix('%')
                    .ok_or_else(|| bad(&s))?
                    .trim()
                    .parse()
                    .map_err(|_| bad(&s))?;
                pct / 100.0
            }
            Some(toml::Value::Float(f)) => f,
            Some(toml::Value::Integer(i)) => i as f64,
            Some(v) => return Err(bad(&v.to_string())),
        };
        if !(share > 0.0 && share <= 1.0) {
            return Err(bad(&share.to_string()));
        }
        Ok(Spec {
            share_ppm: (share * 1e6).round() as u32,
        })
    }
}

/// What the sampler measured on the target while the fault held.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Measured {
    pub share: f64,
    /// Subscribers made slow, and how many of their connections were up
    /// (and found on the target through sock_diag) at the start.
    pub subscribers: u64,
    pub connections_found: u64,
    pub samples: u64,
    /// Largest `sk_wmem_queued` of one slow connection (bytes).
    pub max_send_queue_bytes: u64,
    /// Largest unacknowledged/unsent bytes of one slow connection (Send-Q).
    pub max_unacked_bytes: u64,
    /// Largest sum of `sk_wmem_queued` over the slow connections at one sample.
    pub max_total_send_queue_bytes: u64,
    /// Largest `sk_wmem_queued` of any other connection of the target.
    pub others_max_send_queue_bytes: u64,
    /// The target's RSS (process tree) at the start and its peak, bytes.
    pub rss_start_bytes: Option<u64>,
    pub rss_max_bytes: Option<u64>,
    /// Slow connections whose server side left ESTABLISHED or vanished
    /// while the fault held: the server closed or reset them.
    pub server_closed: u64,
    /// Ms from the fault's start to the first such close.
    pub first_close_ms: Option<f64>,
    pub error: Option<String>,
}

/// The classified outcome, with the figures it rests on (in
/// `FaultOutcome::extra["slow_consumers"]`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Judged {
    /// `buffered`, `dropped`, `disconnected`, or `inconclusive`.
    pub behaviour: String,
    pub why: String,
    #[serde(flatten)]
    pub measured: Measured,
    pub rss_growth_bytes: Option<i64>,
    pub slow_lost: u64,
    pub slow_expected: u64,
    pub slow_received: u64,
    pub others_lost: u64,
    /// Unexpected disconnects the slow subscribers saw (after resuming), by reason.
    pub slow_disconnects: u64,
    pub slow_disconnects_by_reason: std::collections::BTreeMap<String, u64>,
    pub slow_latency_p99_ms: Option<f64>,
    pub slow_latency_max_ms: Option<f64>,
}

const SAMPLE_EVERY: Duration = Duration::from_millis(100);
const ANSWER_WITHIN: Duration = Duration::from_secs(10);

pub struct SlowConsumers {
    spec: Spec,
    control: Control,
    port: u16,
    target: TargetPid,
    on: bool,
    started: Option<std::time::Instant>,
    stop: Arc<AtomicBool>,
    sampler: Option<std::thread::JoinHandle<()>>,
    measured: Arc<Mutex<Measured>>,
}

impl SlowConsumers {
    pub fn new(spec: Spec, index: usize, env: &FaultEnv) -> Result<SlowConsumers, String> {
        let control = env.control.clone().ok_or_else(|| {
            format!("fault {} (slow-consumers) needs the load generator's control, which this run has not set up", index + 1)
        })?;
        let port = env.target_port.ok_or_else(|| {
            format!(
                "fault {} (slow-consumers) needs the target's port: give it in --url",
                index + 1
            )
        })?;
        Ok(SlowConsumers {
            spec,
            control,
            port,
            target: env.target.clone(),
            on: false,
            started: None,
            stop: Arc::new(AtomicBool::new(false)),
            sampler: None,
            measured: Default::default(),
        })
    }

    fn switch(&self, on: bool) -> Result<crate::lane::SlowReply, String> {
        let mut total = crate::lane::SlowReply::default();
        let cmd = PoolCmd::Slow {
            share_ppm: self.spec.share_ppm,
            on,
        };
        for r in self.control.broadcast(cmd, ANSWER_WITHIN)? {
            if let PoolReply::Slow(s) = r {
                total.subscribers += s.subscribers;
                total.addrs.extend(s.addrs);
            }
        }
        Ok(total)
    }
}

impl Injector for SlowConsumers {
    fn start(&mut self) -> Result<(), String> {
        let reply = self.switch(true)?;
        self.on = true;
        let t0 = std::time::Instant::now();
        self.started = Some(t0);
        {
            let mut m = self.measured.lock().unwrap_or_else(|e| e.into_inner());
            m.share = f64::from(self.spec.share_ppm) / 1e6;
            m.subscribers = reply.subscribers;
            m.rss_start_bytes = self.target.get().and_then(tree_rss);
        }
        let slow: HashSet<SocketAddr> = reply.addrs.into_iter().collect();
        let (stop, measured, port, target) = (
            self.stop.clone(),
            self.measured.clone(),
            self.port,
            self.target.clone(),
        );
        let th = std::thread::Builder::new()
            .name("slow-consumers".into())
            .spawn(move || sample(&stop, &measured, port, &target, &slow, t0))
            .map_err(|e| format!("cannot start the sampler: {e}"))?;
        self.sampler = Some(th);
        Ok(())
    }

    fn end(&mut self) -> Result<(), String> {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.sampler.take() {
            let _ = t.join();
        }
        if self.on {
            self.switch(false)?;
            self.on = false;
        }
        Ok(())
    }

    fn outcome(&self, out: &mut FaultOutcome) {
        let m = self
            .measured
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        if let Some(e) = &m.error {
            out.notes
                .push(format!("slow-consumers: sock_diag failed: {e}"));
        }
        out.extra.insert(
            "slow_consumers".into(),
            serde_json::to_value(&m).unwrap_or_default(),
        );
    }
}

impl Drop for SlowConsumers {
    fn drop(&mut self) {
        let _ = self.end();
    }
}

/// The sampler: every 100 ms until stopped (bounded by the fault's end).
fn sample(
    stop: &AtomicBool,
    measured: &Mutex<Measured>,
    port: u16,
    target: &TargetPid,
    slow: &HashSet<SocketAddr>,
    t0: std::time::Instant,
) {
    // Slow connections seen ESTABLISHED on the target, and whether closed since.
    let mut seen: HashMap<SocketAddr, bool> = HashMap::new();
    let mut first = true;
    loop {
        let socks = sockdiag::tcp_sockets(port);
        let rss = target.get().and_then(tree_rss);
        let mut m = measured.lock().unwrap_or_else(|e| e.into_inner());
        match socks {
            Err(e) => m.error = Some(e.to_string()),
            Ok(socks) => {
                m.samples += 1;
                let mut total = 0u64;
                let mut up: HashSet<SocketAddr> = HashSet::new();
                for s in &socks {
                    let q = u64::from(s.wmem_queued);
                    if slow.contains(&s.peer) {
                        if s.state == sockdiag::TCP_ESTABLISHED {
                            up.insert(s.peer);
                            if first {
                                seen.insert(s.peer, false);
                            }
                        }
                        total += q;
                        m.max_send_queue_bytes = m.max_send_queue_bytes.max(q);
                        m.max_unacked_bytes = m.max_unacked_bytes.max(u64::from(s.send_q));
                    } else {
                        m.others_max_send_queue_bytes = m.others_max_send_queue_bytes.max(q);
                    }
                }
                m.max_total_send_queue_bytes = m.max_total_send_queue_bytes.max(total);
                for (addr, closed) in seen.iter_mut() {
                    if !*closed && !up.contains(addr) {
                        *closed = true;
                        m.server_closed += 1;
                        m.first_close_ms
                            .get_or_insert(t0.elapsed().as_secs_f64() * 1e3);
                    }
                }
                m.connections_found = seen.len() as u64;
                first = false;
            }
        }
        if let Some(r) = rss {
            m.rss_max_bytes = Some(m.rss_max_bytes.map_or(r, |x| x.max(r)));
        }
        drop(m);
        // Sleep in small steps so the fault's end is not delayed.
        let next = std::time::Instant::now() + SAMPLE_EVERY;
        while std::time::Instant::now() < next {
            if stop.load(Ordering::SeqCst) {
                return;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}

/// RSS of a process and its children (e.g. NGINX workers), bytes.
fn tree_rss(pid: u32) -> Option<u64> {
    let page = 4096u64;
    let mut sum = 0;
    let mut any = false;
    for p in super::proc::tree(pid) {
        if let Ok(t) = std::fs::read_to_string(format!("/proc/{p}/statm")) {
            if let Some(r) = t
                .split_whitespace()
                .nth(1)
                .and_then(|v| v.parse::<u64>().ok())
            {
                sum += r * page;
                any = true;
            }
        }
    }
    any.then_some(sum)
}

fn reasons(by: &std::collections::BTreeMap<String, u64>) -> String {
    by.iter()
        .map(|(k, v)| format!("{k}: {v}"))
        .collect::<Vec<_>>()
        .join(", ")
}

/// Below this a send queue is an ordinary one (a few frames in flight).
const GREW_BYTES: u64 = 64 * 1024;

/// Classifies what the server did, once the fault's stage is judged:
/// reads the sampler's figures from `out.extra["slow_consumers"]` and the
/// stage's slow/other loss, and writes the judged figures back there.
pub fn judge(out: &mut FaultOutcome, stage: &StageReport) {
    let Some(m) = out
        .extra
        .get("slow_consumers")
        .and_then(|v| serde_json::from_value::<Measured>(v.clone()).ok())
    else {
        return;
    };
    let slow = stage.slow_consumers.clone();
    let (slow_lost, slow_expected, slow_received) = slow
        .as_ref()
        .map_or((0, 0, 0), |s| (s.lost, s.expected, s.received));
    let others_lost = stage.messages.lost.saturating_sub(slow_lost);
    let rss_growth = match (m.rss_start_bytes, m.rss_max_bytes) {
        (Some(a), Some(b)) => Some(b as i64 - a as i64),
        _ => None,
    };
    // Disconnects of slow subscribers the server caused: all but their
    // own heartbeat verdict (they sent no ping while not reading).
    let slow_server_cuts: std::collections::BTreeMap<String, u64> = slow
        .as_ref()
        .map(|s| {
            s.disconnects_by_reason
                .iter()
                .filter(|(k, _)| k.as_str() != "heartbeat lost")
                .map(|(k, v)| (k.clone(), *v))
                .collect()
        })
        .unwrap_or_default();
    let server_cut: u64 = slow_server_cuts.values().sum();
    let queued = m.max_send_queue_bytes >= GREW_BYTES;
    let rss_grew = rss_growth.is_some_and(|g| g > GREW_BYTES as i64 * m.subscribers.max(1) as i64);
    let (behaviour, why) = if m.samples == 0 {
        (
            "inconclusive",
            "the target's sockets could not be read (sock_diag)".to_string(),
        )
    } else if m.server_closed > 0 {
        (
            "disconnected",
            format!(
                "the server closed {} of {} slow connections while they did not read (first after {:.0} ms)",
                m.server_closed,
                m.connections_found,
                m.first_close_ms.unwrap_or(0.0)
            ),
        )
    } else if server_cut > 0 {
        (
            "disconnected",
            format!(
                "the server cut {server_cut} slow subscribers ({}) when they read again; their sockets stayed ESTABLISHED while they did not read (send queue up to {} bytes)",
                reasons(&slow_server_cuts),
                m.max_send_queue_bytes
            ),
        )
    } else if slow_lost > 0 {
        (
            "dropped",
            format!("the slow subscribers stayed connected and lost {slow_lost} of {slow_expected} messages (the others {others_lost})"),
        )
    } else if queued || rss_grew {
        (
            "buffered",
            format!(
                "the slow connections stayed up, their send queues reached {} bytes (max one connection) and the target's RSS grew {} bytes; they lost nothing",
                m.max_send_queue_bytes,
                rss_growth.unwrap_or(0)
            ),
        )
    } else {
        (
            "inconclusive",
            format!("no close, no loss and no send queue above {GREW_BYTES} bytes: too little was published to the slow subscribers while the fault held"),
        )
    };
    let j = Judged {
        behaviour: behaviour.into(),
        why,
        measured: m,
        rss_growth_bytes: rss_growth,
        slow_lost,
        slow_expected,
        slow_received,
        others_lost,
        slow_disconnects: slow.as_ref().map_or(0, |s| s.unexpected_disconnects),
        slow_disconnects_by_reason: slow
            .as_ref()
            .map(|s| s.disconnects_by_reason.clone())
            .unwrap_or_default(),
        slow_latency_p99_ms: slow.as_ref().and_then(|s| s.latency_ms.p99),
        slow_latency_max_ms: slow.as_ref().and_then(|s| s.latency_ms.max),
    };
    out.extra.insert(
        "slow_consumers".into(),
        serde_json::to_value(&j).unwrap_or_default(),
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(body: &str) -> Result<Spec, String> {
        let mut keys = Keys {
            table: toml::from_str(body).unwrap(),
            kind: "slow-consumers".into(),
        };
        let s = Spec::parse(&mut keys)?;
        keys.finish()?;
        Ok(s)
    }

    #[test]
    fn share_is_a_percentage_or_a_fraction() {
        assert_eq!(parse("").unwrap().share_ppm, 100_000);
        assert_eq!(parse("share = \"25%\"").unwrap().share_ppm, 250_000);
        assert_eq!(parse("share = 0.05").unwrap().share_ppm, 50_000);
        assert_eq!(parse("share = 1").unwrap().share_ppm, 1_000_000);
        for bad in [
            "share = \"25\"",
            "share = 0",
            "share = 1.5",
            "share = \"x%\"",
            "share = true",
        ] {
            assert!(parse(bad).unwrap_err().contains("`share`"), "{bad}");
        }
        assert!(parse("shares = 0.1")
            .unwrap_err()
            .contains("unknown key `shares`"));
    }

    fn stage_with(lost: u64, slow: Option<crate::report::SlowConsumers>) -> StageReport {
        let mut r: StageReport = serde_json::from_value(serde_json::json!({
            "stage": 0, "hold_s": 1.0, "ramp_s": 0.0, "started_mono_ns": 0, "ended_mono_ns": 1,
            "started_unix_ns": 0, "ended_unix_ns": 1,
            "connections": {"target": 10, "opened": 10, "attempts": 10, "failed": 0,
                "unexpected_disconnects": 0, "reconnects": 0, "stability": 1.0},
            "messages": {"published": 100, "expected": 1000, "received": 1000, "lost": 0,
                "duplicates": 0, "out_of_order": 0, "duplicate_rate": 0.0, "replayed": 0, "foreign": 0},
            "latency_ms": {"p50": 1.0, "p90": 1.0, "p99": 1.0, "p999": 1.0, "max": 1.0, "clipped": 0},
            "client_phases_ms": {"connect": {"p50": null, "p99": null, "max": null},
                "tls": {"p50": null, "p99": null, "max": null}, "upgrade": {"p50": null, "p99": null, "max": null},
                "first_message": {"p50": null, "p99": null, "max": null}},
            "new_connections": 10, "intended_disconnects": 0, "connection_seconds": 10.0,
            "failed_by_reason": {}, "disconnects_by_reason": {}, "late": 0, "late_untracked": 0,
            "republished": 0, "unmarked": 0,
            "loadgen": {"cpu_pct": [], "cpu_warning": false, "publish_errors": {}, "publish_failed": 0, "publish_backlog": 0}
        }))
        .unwrap();
        r.messages.lost = lost;
        r.slow_consumers = slow;
        r
    }

    fn slow(lost: u64) -> crate::report::SlowConsumers {
        crate::report::SlowConsumers {
            subscribers: 1,
            expected: 100,
            received: 100 - lost,
            lost,
            unexpected_disconnects: 0,
            disconnects_by_reason: Default::default(),
            latency_ms: stage_with(0, None).latency_ms,
        }
    }

    fn judged(m: Measured, stage: &StageReport) -> Judged {
        let mut out = FaultOutcome::default();
        out.extra
            .insert("slow_consumers".into(), serde_json::to_value(&m).unwrap());
        judge(&mut out, stage);
        serde_json::from_value(out.extra["slow_consumers"].clone()).unwrap()
    }

    #[test]
    fn classifies_from_the_figures() {
        let base = Measured {
            samples: 10,
            subscribers: 1,
            connections_found: 1,
            ..Default::default()
        };
        let closed = Measured {
            server_closed: 1,
            first_close_ms: Some(900.0),
            ..base.clone()
        };
        assert_eq!(
            judged(closed, &stage_with(5, Some(slow(5)))).behaviour,
            "disconnected"
        );
        // Cut when they read again: seen by the subscribers only.
        let mut cut = slow(0);
        cut.unexpected_disconnects = 2;
        cut.disconnects_by_reason
            .insert("connection reset".into(), 2);
        let queued_then_cut = Measured {
            max_send_queue_bytes: 4 << 20,
            ..base.clone()
        };
        let j = judged(queued_then_cut.clone(), &stage_with(0, Some(cut)));
        assert_eq!(j.behaviour, "disconnected", "{}", j.why);
        assert!(j.why.contains("connection reset: 2"), "{}", j.why);
        // Their own missed pongs are not the server's doing.
        let mut own = slow(0);
        own.unexpected_disconnects = 1;
        own.disconnects_by_reason.insert("heartbeat lost".into(), 1);
        assert_eq!(
            judged(queued_then_cut, &stage_with(0, Some(own))).behaviour,
            "buffered"
        );
        let j = judged(base.clone(), &stage_with(7, Some(slow(5))));
        assert_eq!(
            (j.behaviour.as_str(), j.slow_lost, j.others_lost),
            ("dropped", 5, 2)
        );
        let queued = Measured {
            max_send_queue_bytes: 2 << 20,
            ..base.clone()
        };
        assert_eq!(
            judged(queued, &stage_with(0, Some(slow(0)))).behaviour,
            "buffered"
        );
        assert_eq!(
            judged(base.clone(), &stage_with(0, Some(slow(0)))).behaviour,
            "inconclusive"
        );
        let unread = Measured { samples: 0, ..base };
        assert_eq!(
            judged(unread, &stage_with(0, None)).behaviour,
            "inconclusive"
        );
    }
}
