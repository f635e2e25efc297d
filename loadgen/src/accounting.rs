//! Per-message accounting: one `SubAcct` per subscriber judges every
//! received marker (fresh, duplicate, out of order, late; or not to be
//! judged: history replay, another run's, below the baseline) and, when a
//! stage is closed (stage end + grace), turns still-open gaps into losses.
//! `StageStats` holds one stage's counters and HDR histograms; it merges
//! exactly across lanes and worker processes (histograms travel as V2
//! serialized bytes).

use crate::marker::{Marker, Schedule};
use hdrhistogram::{
    serialization::{Deserializer, Serializer, V2Serializer},
    Histogram,
};
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, BTreeSet};

/// Histogram bounds: 1 µs .. 60 s, 3 significant digits (values in µs).
pub const HIST_MAX_US: u64 = 60_000_000;

pub fn new_hist() -> Histogram<u64> {
    Histogram::new_with_bounds(1, HIST_MAX_US, 3).expect("static bounds")
}

/// Records a duration in µs, clamped to the histogram's range; true when
/// it was above the range (recorded as the maximum: count it).
pub fn record_us(h: &mut Histogram<u64>, us: u64) -> bool {
    let _ = h.record(us.clamp(1, HIST_MAX_US));
    us > HIST_MAX_US
}

/// What one received message was, for one subscriber.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    Fresh {
        out_of_order: bool,
    },
    Duplicate,
    /// Arrived after its gap had already been declared lost.
    Late,
    /// Arrived where losses were declared but no longer remembered one by
    /// one (past the lost-set cap): late or duplicate, cannot tell.
    LateUntracked,
    /// Older than what this subscriber was ever expected to see.
    PreBaseline,
    /// Scheduled before the subscriber's first upgrade: the server's
    /// history (e.g. nchan's buffer), not a delivery to judge.
    Replay,
    /// A marker of another run.
    Foreign,
}

/// One subscriber's view of its channel's per-channel publish seqs.
#[derive(Debug, Clone)]
pub struct SubAcct {
    pub channel: u32,
    /// First pseq this subscriber must see.
    baseline: Option<u64>,
    /// Every pseq in `[baseline, contig]` was received or declared lost.
    contig: u64,
    max_seen: u64,
    /// Received pseqs above `contig + 1` (only while a gap is open).
    ahead: BTreeSet<u64>,
    /// Declared lost; a later arrival counts as late, not duplicate.
    lost_set: BTreeSet<u64>,
    /// Most pseqs `lost_set` remembers.
    lost_cap: usize,
    /// Smallest range holding every declared-lost pseq `lost_set` had no
    /// room for: an arrival there is `LateUntracked`.
    untracked: Option<(u64, u64)>,
    /// Highest pseq already judged by a stage close.
    closed_hi: u64,
    /// CLOCK_MONOTONIC ns when the first WebSocket upgrade completed.
    pub up_ns: Option<u64>,
    /// CLOCK_MONOTONIC ns of the latest re-upgrade (a resumed session).
    pub resumed_at_ns: Option<u64>,
    /// Last server seq received (resume point for protocols that have one).
    pub last_server_seq: Option<u64>,
    /// Last server message id (resume point for protocols that use ids).
    pub last_message_id: String,
    /// The server history id of the last upgrade (reference pusher): sent
    /// with `last_seq`, which counts in that history only.
    pub history: Option<u64>,
    /// Set when the subscriber was closed on purpose: nothing above this
    /// pseq is expected from it any more.
    cap: Option<u64>,
}

impl SubAcct {
    pub fn new(channel: u32) -> Self {
        Self::with_lost_cap(channel, LOST_SET_CAP)
    }

    /// A subscriber remembering at most `lost_cap` declared-lost pseqs.
    pub fn with_lost_cap(channel: u32, lost_cap: usize) -> Self {
        SubAcct {
            channel,
            baseline: None,
            contig: 0,
            max_seen: 0,
            ahead: BTreeSet::new(),
            lost_set: BTreeSet::new(),
            lost_cap,
            untracked: None,
            closed_hi: 0,
            up_ns: None,
            resumed_at_ns: None,
            last_server_seq: None,
            last_message_id: String::new(),
            history: None,
            cap: None,
        }
    }

    pub fn baseline(&self) -> Option<u64> {
        self.baseline
    }

    pub fn closed_hi(&self) -> u64 {
        self.closed_hi
    }

    /// Records an upgrade: only the first one sets `up_ns`.
    pub fn upgraded(&mut self, now_ns: u64) {
        self.up_ns.get_or_insert(now_ns);
    }

    /// Records the server history id an upgrade named. If it differs from
    /// the one the resume was sent with, the server (reference pusher)
    /// replayed everything it retains and `last_server_seq` of the old
    /// history means nothing: seqs of the new history count from 0.
    pub fn new_history(&mut self, history: Option<u64>) {
        if let (Some(old), Some(new)) = (self.history, history) {
            if old != new && self.last_server_seq.is_some() {
                self.last_server_seq = Some(0);
            }
        }
        self.history = history;
    }

    /// The subscriber was closed on purpose: expect nothing beyond what it
    /// had seen (gaps below that still count).
    pub fn end_intended(&mut self) {
        self.cap = Some(self.max_seen.max(self.contig));
    }

    /// The subscriber must see every message scheduled at least `settle_ns`
    /// after its first upgrade, and everything after the first one it got.
    fn ensure_baseline(
        &mut self,
        first_seen: Option<u64>,
        sched: &Schedule,
        settle_ns: u64,
    ) -> Option<u64> {
        if self.baseline.is_none() {
            let by_time = self
                .up_ns
                .map(|t| sched.first_pseq_at_or_after(self.channel, t.saturating_add(settle_ns)));
            let b = match (first_seen, by_time) {
                (Some(a), Some(b)) => Some(a.min(b)),
                (a, b) => a.or(b),
            }?;
            // Gaps already closed by earlier stages are not this subscriber's;
            // pseqs start at 1.
            let b = b.max(self.closed_hi.saturating_add(1)).max(1);
            self.baseline = Some(b);
            self.contig = b - 1;
        }
        self.baseline
    }

    /// Judges one marker of this subscriber's channel: another run's marker
    /// is `Foreign`, one scheduled before the first upgrade is `Replay`;
    /// neither touches the accounting (a replay must not become the
    /// baseline, or the server's whole history would be expected).
    pub fn on_marker(&mut self, m: &Marker, run: u32, sched: &Schedule, settle_ns: u64) -> Verdict {
        if m.run != run {
            return Verdict::Foreign;
        }
        if self.up_ns.is_some_and(|up| m.sched_ns < up) {
            return Verdict::Replay;
        }
        self.on_receive(m.pseq, sched, settle_ns)
    }

    pub fn on_receive(&mut self, pseq: u64, sched: &Schedule, settle_ns: u64) -> Verdict {
        let base = self
            .ensure_baseline(Some(pseq), sched, settle_ns)
            .unwrap_or(pseq);
        if pseq < base {
            return Verdict::PreBaseline;
        }
        if self.lost_set.remove(&pseq) {
            return Verdict::Late;
        }
        if pseq <= self.contig || self.ahead.contains(&pseq) {
            if self.untracked.is_some_and(|(a, b)| a <= pseq && pseq <= b) {
                return Verdict::LateUntracked;
            }
            return Verdict::Duplicate;
        }
        let out_of_order = pseq < self.max_seen;
        self.max_seen = self.max_seen.max(pseq);
        if pseq == self.contig.saturating_add(1) {
            self.contig = pseq;
            while self.contig < u64::MAX && self.ahead.remove(&(self.contig + 1)) {
                self.contig += 1;
            }
        } else {
            self.ahead.insert(pseq);
        }
        Verdict::Fresh { out_of_order }
    }

    /// Judges all pseqs up to `hi` (the stage's last published pseq on this
    /// channel): returns (expected, lost). `failed` says which pseqs the
    /// publisher never managed to publish. Pseqs received before their
    /// publish was answered (so above `hi`) stay received for the next close.
    pub fn close(
        &mut self,
        hi: u64,
        failed: &[u64],
        sched: &Schedule,
        settle_ns: u64,
    ) -> (u64, u64) {
        let Some(base) = self.ensure_baseline(None, sched, settle_ns) else {
            return (0, 0);
        };
        let hi = self.cap.map_or(hi, |c| hi.min(c));
        let lo = self.closed_hi.max(base - 1);
        if hi <= lo {
            return (0, 0);
        }
        let failed_in =
            |a: u64, b: u64| failed.iter().filter(|&&p| a <= p && p <= b).count() as u64;
        let expected = (hi - lo) - failed_in(lo + 1, hi);
        // Everything ≤ contig is settled; walk only the gaps between the
        // pseqs received ahead of it, so judging costs O(gaps), not O(messages).
        let cap = self.lost_cap;
        let mut lost = 0;
        let mut gap = |from: u64, to: u64, acct: &mut SubAcct| {
            if from > to {
                return;
            }
            lost += (to - from + 1) - failed_in(from, to);
            for p in from..=to {
                if acct.lost_set.len() >= cap {
                    // No room: remember the span of what is left, exactly.
                    let first = (p..=to).find(|q| !failed.contains(q));
                    let last = (p..=to).rev().find(|q| !failed.contains(q));
                    if let (Some(a), Some(b)) = (first, last) {
                        acct.untracked = Some(match acct.untracked {
                            Some((x, y)) => (x.min(a), y.max(b)),
                            None => (a, b),
                        });
                    }
                    break;
                }
                if !failed.contains(&p) {
                    acct.lost_set.insert(p);
                }
            }
        };
        let mut next = self.contig.max(lo).saturating_add(1);
        // A server may push before it answers the publish: then `contig`
        // is already past `hi` and there is no gap to walk.
        if next <= hi {
            let received: Vec<u64> = self.ahead.range(next..=hi).copied().collect();
            for p in received {
                gap(next, p - 1, self);
                self.ahead.remove(&p);
                next = p + 1;
            }
            gap(next, hi, self);
        }
        self.contig = self.contig.max(hi);
        while self.contig < u64::MAX && self.ahead.remove(&(self.contig + 1)) {
            self.contig += 1;
        }
        self.closed_hi = hi;
        (expected, lost)
    }
}

/// Declared-lost pseqs remembered per subscriber (to tell late arrivals
/// from duplicates); beyond it an arrival in the forgotten span counts as
/// `late_untracked`.
pub const LOST_SET_CAP: usize = 10_000;

/// One stage's figures from one lane, process or the whole run.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct StageStats {
    /// Connection attempts that finished in the stage (opened + reconnects + failed).
    pub attempts: u64,
    pub opened: u64,
    pub failed: u64,
    pub failed_by_reason: BTreeMap<String, u64>,
    pub unexpected_disconnects: u64,
    pub disconnects_by_reason: BTreeMap<String, u64>,
    pub intended_disconnects: u64,
    pub reconnects: u64,
    /// Sum over connections of the time they were up during the stage.
    pub connection_ns: u64,
    pub received: u64,
    pub expected: u64,
    pub lost: u64,
    pub duplicates: u64,
    /// Second copies of a message the publisher re-posted after a failed POST.
    pub republished: u64,
    pub out_of_order: u64,
    pub late: u64,
    /// Arrivals in a span of declared losses no longer remembered one by one.
    pub late_untracked: u64,
    /// Frames of the server's history: scheduled before the subscriber's first upgrade.
    pub replayed: u64,
    /// Frames carrying another run's marker.
    pub foreign: u64,
    /// Latencies above the histogram's range (recorded as its maximum).
    pub latency_clipped: u64,
    /// Frames without a marker (or not parseable).
    pub unmarked: u64,
    /// Subscriber reads that returned bytes (each is one `recv`): with
    /// `received`, how many frames one read took on average.
    #[serde(default)]
    pub reads: u64,
    /// CPU used by each process during the stage, % of one core.
    pub cpu_pct: Vec<f64>,
    /// Resident memory of each process at the stage's end.
    #[serde(default)]
    pub rss_bytes: Vec<u64>,
    #[serde(with = "hist_b64")]
    pub latency: Histogram<u64>,
    #[serde(with = "hist_b64")]
    pub connect: Histogram<u64>,
    #[serde(with = "hist_b64")]
    pub tls: Histogram<u64>,
    #[serde(with = "hist_b64")]
    pub upgrade: Histogram<u64>,
    #[serde(with = "hist_b64")]
    pub first_message: Histogram<u64>,
    /// Heartbeat round trips (ping sent → pong read), µs.
    #[serde(with = "hist_b64")]
    pub heartbeat_rtt: Histogram<u64>,
    /// The kernel's smoothed RTT of subscriber sockets (`TCP_INFO`
    /// `tcpi_rtt`), sampled at every pong, µs.
    #[serde(with = "hist_b64")]
    pub tcp_srtt: Histogram<u64>,
    /// Segments the subscribers' sockets retransmitted (`TCP_INFO`
    /// `tcpi_total_retrans` increments seen at pongs and at session ends).
    pub tcp_retransmits: u64,
    /// Subscribers a `slow-consumers` fault made stop reading, apart.
    #[serde(default)]
    pub slow: SlowStats,
}

/// What the subscribers a `slow-consumers` fault made stop reading saw,
/// in the stage: a subscriber counts here from the fault's start until its
/// stage is judged (so the backlog it reads after the fault is its own).
/// Their `received`, `lost`, `expected` and disconnects are *also* in the
/// stage's totals (a frame the server dropped is loss, whoever it was
/// for); their latencies are only here, not in the stage's histogram: a
/// frame waiting in a socket nobody reads measures the client's pause, not
/// the server.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SlowStats {
    /// Subscribers made slow (each counted once, at the fault's start).
    pub subscribers: u64,
    pub received: u64,
    pub expected: u64,
    pub lost: u64,
    pub unexpected_disconnects: u64,
    pub disconnects_by_reason: BTreeMap<String, u64>,
    pub latency_clipped: u64,
    #[serde(with = "hist_b64")]
    pub latency: Histogram<u64>,
}

impl Default for SlowStats {
    fn default() -> Self {
        SlowStats {
            subscribers: 0,
            received: 0,
            expected: 0,
            lost: 0,
            unexpected_disconnects: 0,
            disconnects_by_reason: BTreeMap::new(),
            latency_clipped: 0,
            latency: new_hist(),
        }
    }
}

impl SlowStats {
    pub fn merge(&mut self, o: &SlowStats) {
        self.subscribers += o.subscribers;
        self.received += o.received;
        self.expected += o.expected;
        self.lost += o.lost;
        self.unexpected_disconnects += o.unexpected_disconnects;
        for (k, v) in &o.disconnects_by_reason {
            *self.disconnects_by_reason.entry(k.clone()).or_default() += v;
        }
        self.latency
            .add(&o.latency)
            .expect("same bounds everywhere");
    }
}

/// Connection attempts and disconnects of a process since its start
/// (never reset at stage boundaries): a fault takes them before, at the
/// end of and after its window and reports the differences.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ConnCounters {
    pub attempts: u64,
    pub failed: u64,
    pub failed_by_reason: BTreeMap<String, u64>,
    pub unexpected_disconnects: u64,
    pub disconnects_by_reason: BTreeMap<String, u64>,
    pub received: u64,
}

impl ConnCounters {
    pub fn merge(&mut self, o: &ConnCounters) {
        self.attempts += o.attempts;
        self.failed += o.failed;
        self.unexpected_disconnects += o.unexpected_disconnects;
        self.received += o.received;
        for (k, v) in &o.failed_by_reason {
            *self.failed_by_reason.entry(k.clone()).or_default() += v;
        }
        for (k, v) in &o.disconnects_by_reason {
            *self.disconnects_by_reason.entry(k.clone()).or_default() += v;
        }
    }

    /// What happened between `earlier` and `self` (counters only grow).
    pub fn since(&self, earlier: &ConnCounters) -> ConnCounters {
        let diff = |a: &BTreeMap<String, u64>, b: &BTreeMap<String, u64>| {
            a.iter()
                .map(|(k, v)| (k.clone(), v.saturating_sub(b.get(k).copied().unwrap_or(0))))
                .filter(|(_, v)| *v > 0)
                .collect()
        };
        ConnCounters {
            attempts: self.attempts.saturating_sub(earlier.attempts),
            failed: self.failed.saturating_sub(earlier.failed),
            failed_by_reason: diff(&self.failed_by_reason, &earlier.failed_by_reason),
            unexpected_disconnects: self
                .unexpected_disconnects
                .saturating_sub(earlier.unexpected_disconnects),
            disconnects_by_reason: diff(
                &self.disconnects_by_reason,
                &earlier.disconnects_by_reason,
            ),
            received: self.received.saturating_sub(earlier.received),
        }
    }
}

/// Whether subscriber `id` is among a `share_ppm` (parts per million)
/// share of subscribers: exactly `floor(n * share)` of ids `0..n`, spread
/// evenly, the same answer in every process of a sharded run.
pub fn in_share(id: u64, share_ppm: u32) -> bool {
    let p = u128::from(share_ppm.min(1_000_000));
    let id = u128::from(id);
    (id + 1) * p / 1_000_000 > id * p / 1_000_000
}

impl Default for StageStats {
    fn default() -> Self {
        StageStats {
            attempts: 0,
            opened: 0,
            failed: 0,
            failed_by_reason: BTreeMap::new(),
            unexpected_disconnects: 0,
            disconnects_by_reason: BTreeMap::new(),
            intended_disconnects: 0,
            reconnects: 0,
            connection_ns: 0,
            received: 0,
            expected: 0,
            lost: 0,
            duplicates: 0,
            republished: 0,
            out_of_order: 0,
            late: 0,
            late_untracked: 0,
            replayed: 0,
            foreign: 0,
            latency_clipped: 0,
            unmarked: 0,
            reads: 0,
            cpu_pct: Vec::new(),
            rss_bytes: Vec::new(),
            latency: new_hist(),
            connect: new_hist(),
            tls: new_hist(),
            upgrade: new_hist(),
            first_message: new_hist(),
            heartbeat_rtt: new_hist(),
            tcp_srtt: new_hist(),
            tcp_retransmits: 0,
            slow: SlowStats::default(),
        }
    }
}

impl StageStats {
    /// Exact merge: counters add, histograms add bucket by bucket.
    pub fn merge(&mut self, o: &StageStats) {
        self.attempts += o.attempts;
        self.opened += o.opened;
        self.failed += o.failed;
        for (k, v) in &o.failed_by_reason {
            *self.failed_by_reason.entry(k.clone()).or_default() += v;
        }
        self.unexpected_disconnects += o.unexpected_disconnects;
        for (k, v) in &o.disconnects_by_reason {
            *self.disconnects_by_reason.entry(k.clone()).or_default() += v;
        }
        self.intended_disconnects += o.intended_disconnects;
        self.reconnects += o.reconnects;
        self.connection_ns += o.connection_ns;
        self.received += o.received;
        self.expected += o.expected;
        self.lost += o.lost;
        self.duplicates += o.duplicates;
        self.republished += o.republished;
        self.out_of_order += o.out_of_order;
        self.late += o.late;
        self.late_untracked += o.late_untracked;
        self.replayed += o.replayed;
        self.foreign += o.foreign;
        self.latency_clipped += o.latency_clipped;
        self.unmarked += o.unmarked;
        self.reads += o.reads;
        self.tcp_retransmits += o.tcp_retransmits;
        self.cpu_pct.extend_from_slice(&o.cpu_pct);
        self.rss_bytes.extend_from_slice(&o.rss_bytes);
        self.slow.merge(&o.slow);
        for (a, b) in [
            (&mut self.latency, &o.latency),
            (&mut self.connect, &o.connect),
            (&mut self.tls, &o.tls),
            (&mut self.upgrade, &o.upgrade),
            (&mut self.first_message, &o.first_message),
            (&mut self.heartbeat_rtt, &o.heartbeat_rtt),
            (&mut self.tcp_srtt, &o.tcp_srtt),
        ] {
            a.add(b).expect("same bounds everywhere");
        }
    }

    pub fn count_reason(map: &mut BTreeMap<String, u64>, reason: &str) {
        *map.entry(reason.to_string()).or_default() += 1;
    }
}

mod hist_b64 {
    use super::*;
    use base64::Engine;

    pub fn serialize<S: serde::Serializer>(h: &Histogram<u64>, s: S) -> Result<S::Ok, S::Error> {
        let mut buf = Vec::new();
        V2Serializer::new()
            .serialize(h, &mut buf)
            .map_err(|e| serde::ser::Error::custom(format!("{e:?}")))?;
        s.serialize_str(&base64::engine::general_purpose::STANDARD.encode(buf))
    }

    pub fn deserialize<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Histogram<u64>, D::Error> {
        let text = String::deserialize(d)?;
        let bytes = base64::engine::general_purpose::STANDARD
            .decode(text)
            .map_err(serde::de::Error::custom)?;
        let h: Histogram<u64> = Deserializer::new()
            .deserialize(&mut bytes.as_slice())
            .map_err(|e| serde::de::Error::custom(format!("{e:?}")))?;
        let mut out = new_hist();
        out.add(&h)
            .map_err(|e| serde::de::Error::custom(format!("{e:?}")))?;
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sched() -> Schedule {
        Schedule {
            run: 1,
            t0_ns: 0,
            rate: 1000.0,
            channels: 1,
        }
    }

    /// A resume answered by another history starts the seqs over; the
    /// same history, or none known, keeps them.
    #[test]
    fn a_new_history_restarts_the_resume_point() {
        let mut a = SubAcct::new(0);
        a.new_history(Some(7));
        assert_eq!((a.history, a.last_server_seq), (Some(7), None));
        a.last_server_seq = Some(40);
        a.new_history(Some(7));
        assert_eq!(a.last_server_seq, Some(40));
        a.new_history(Some(8));
        assert_eq!((a.history, a.last_server_seq), (Some(8), Some(0)));
        a.last_server_seq = Some(3);
        a.new_history(None);
        assert_eq!((a.history, a.last_server_seq), (None, Some(3)));
        a.new_history(Some(9));
        assert_eq!((a.history, a.last_server_seq), (Some(9), Some(3)));
    }

    #[test]
    fn counts_gaps_duplicates_order_and_late() {
        let s = sched();
        let mut a = SubAcct::new(0);
        a.up_ns = Some(0);
        let v: Vec<_> = [1, 2, 4, 4, 3, 6, 2]
            .iter()
            .map(|&p| a.on_receive(p, &s, 0))
            .collect();
        assert_eq!(
            v[2],
            Verdict::Fresh {
                out_of_order: false
            }
        );
        assert_eq!(v[3], Verdict::Duplicate);
        assert_eq!(v[4], Verdict::Fresh { out_of_order: true });
        assert_eq!(v[6], Verdict::Duplicate);
        // Stage closes at pseq 7: 5 and 7 are open gaps → lost.
        assert_eq!(a.close(7, &[], &s, 0), (7, 2));
        assert_eq!(a.on_receive(5, &s, 0), Verdict::Late);
        assert_eq!(
            a.on_receive(8, &s, 0),
            Verdict::Fresh {
                out_of_order: false
            }
        );
        assert_eq!(a.close(9, &[], &s, 0), (2, 1));
    }

    #[test]
    fn baseline_from_upgrade_time_catches_silent_subscribers() {
        let s = sched();
        let mut a = SubAcct::new(0);
        a.up_ns = Some(10_000_000); // up at 10 ms; settle 5 ms → first due pseq is i=15 → 16
        assert_eq!(a.close(20, &[], &s, 5_000_000), (5, 5));
        let mut b = SubAcct::new(0);
        assert_eq!(
            b.close(20, &[], &s, 0),
            (0, 0),
            "never connected: nothing expected"
        );
        let mut c = SubAcct::new(0);
        c.up_ns = Some(0);
        assert_eq!(
            c.on_receive(3, &s, 0),
            Verdict::Fresh {
                out_of_order: false
            }
        );
        assert_eq!(
            c.close(5, &[4], &s, 0),
            (4, 3),
            "failed publishes are not expected"
        );
    }

    #[test]
    fn judging_a_dead_subscriber_costs_its_gaps_not_its_messages() {
        let s = sched();
        let mut a = SubAcct::new(0);
        a.up_ns = Some(0);
        a.on_receive(1, &s, 0);
        a.on_receive(1_000_000, &s, 0);
        let t = std::time::Instant::now();
        assert_eq!(a.close(50_000_000, &[7], &s, 0), (49_999_999, 49_999_997));
        assert!(t.elapsed() < std::time::Duration::from_millis(500));
        assert_eq!(a.on_receive(5, &s, 0), Verdict::Late);
        // Past LOST_SET_CAP losses only their span is kept: an arrival in
        // it is counted as late_untracked, whatever it was.
        assert_eq!(a.on_receive(1_000_000, &s, 0), Verdict::LateUntracked);
        assert_eq!(a.on_receive(40_000_000, &s, 0), Verdict::LateUntracked);
        assert_eq!(a.on_receive(1, &s, 0), Verdict::Duplicate);
    }

    #[test]
    fn push_before_the_publish_answer_never_panics() {
        // The stage is judged up to pseq 3 (publishes answered), but the
        // server already pushed 1..=5.
        let s = sched();
        let mut a = SubAcct::new(0);
        a.up_ns = Some(0);
        for p in 1..=5 {
            a.on_receive(p, &s, 0);
        }
        assert_eq!(a.close(3, &[], &s, 0), (3, 0));
        assert_eq!(a.close(6, &[], &s, 0), (3, 1));
        assert_eq!(a.on_receive(6, &s, 0), Verdict::Late);
    }

    #[test]
    fn replay_and_foreign_markers_are_not_accounted() {
        let s = sched(); // 1000/s: pseq p is due at (p - 1) ms
        let mut a = SubAcct::new(0);
        a.upgraded(10_000_000); // first upgrade at 10 ms
        a.upgraded(50_000_000); // a reconnect does not move it
        let m = |pseq: u64, run: u32| Marker {
            run,
            channel: 0,
            pseq,
            msg_id: pseq,
            stage: 0,
            sched_ns: s.sched_of(0, pseq),
            attempt: 0,
        };
        assert_eq!(a.on_marker(&m(3, 1), 1, &s, 0), Verdict::Replay);
        assert_eq!(a.baseline(), None, "a replay never becomes the baseline");
        assert_eq!(a.on_marker(&m(12, 2), 1, &s, 0), Verdict::Foreign);
        assert_eq!(
            a.on_marker(&m(12, 1), 1, &s, 0),
            Verdict::Fresh {
                out_of_order: false
            }
        );
        assert_eq!(a.baseline(), Some(11), "by time: due at or after 10 ms");
        assert_eq!(a.on_marker(&m(3, 1), 1, &s, 0), Verdict::Replay);
        assert_eq!(a.close(12, &[], &s, 0), (2, 1));
    }

    #[test]
    fn histograms_merge_exactly_through_serde() {
        let mut a = StageStats::default();
        let mut b = StageStats::default();
        for v in 1..=1000 {
            record_us(&mut a.latency, v);
            record_us(&mut b.latency, v * 1000);
        }
        a.received = 3;
        b.received = 4;
        let b2: StageStats = serde_json::from_str(&serde_json::to_string(&b).unwrap()).unwrap();
        a.merge(&b2);
        assert_eq!(a.received, 7);
        assert_eq!(a.latency.len(), 2000);
        assert_eq!(a.latency.max(), b.latency.max());
        assert_eq!(a.latency.value_at_quantile(0.5), 1000);
    }
}

#[cfg(test)]
mod share_tests {
    use super::*;

    proptest::proptest! {
        /// Exactly floor(n * share) of ids 0..n are in the share, for any n.
        #[test]
        fn in_share_takes_exactly_the_share(ppm in 0u32..=1_000_000, n in 0u64..50_000) {
            let got = (0..n).filter(|&id| in_share(id, ppm)).count() as u64;
            proptest::prop_assert_eq!(got, n * u64::from(ppm) / 1_000_000);
        }

        /// The counters since an earlier snapshot add back up to the later one.
        #[test]
        fn since_undoes_merge(a in 0u64..1000, b in 0u64..1000, r in proptest::collection::vec(("[ab]", 1u64..5), 0..8)) {
            let mut early = ConnCounters { attempts: a, failed: a / 2, ..Default::default() };
            early.failed_by_reason.insert("x".into(), 1);
            let mut delta = ConnCounters { attempts: b, failed: b / 3, ..Default::default() };
            for (k, v) in r {
                *delta.failed_by_reason.entry(k).or_default() += v;
            }
            let mut late = early.clone();
            late.merge(&delta);
            proptest::prop_assert_eq!(late.since(&early), delta);
        }
    }
}
