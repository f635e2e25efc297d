//! Property tests: `SubAcct` (per-subscriber accounting) and `verify`
//! (the same judgement recomputed from `--log-dir` logs) against a small
//! reference model that keeps every pseq in plain sets. Arbitrary
//! interleavings of upgrades (first one and reconnects), deliveries
//! (before their stage is judged, i.e. before the publish was answered;
//! dropped, repeated, reordered, re-posted copies, history replays, other
//! runs' frames), stage closes at arbitrary points, intended closes, and
//! subscribers that never connect. Neither may panic, and both must agree
//! with the model exactly.

use loadgen::{
    accounting::{SubAcct, Verdict},
    marker::{Marker, Schedule},
    oplog::LogWriter,
};
use proptest::prelude::*;
use std::collections::{BTreeMap, BTreeSet};

const RUN: u32 = 7;
const OTHER_RUN: u32 = 8;
/// Pseqs published on the channel: 1..=N.
const N: u64 = 40;
const SETTLE_NS: u64 = 5_000_000;

/// 1000 msgs/s on one channel: pseq p is due at t0 + (p - 1) ms.
fn sched() -> Schedule {
    Schedule {
        run: RUN,
        t0_ns: 1_000_000_000,
        rate: 1000.0,
        channels: 1,
    }
}

fn msg_id(p: u64) -> u64 {
    p * 7 + 3
}

#[derive(Debug, Clone)]
enum Ev {
    /// Upgrade completed at t0 + this many ms.
    Upgrade(u64),
    Deliver {
        pseq: u64,
        attempt: u32,
        foreign: bool,
    },
    /// Stage judged up to this pseq.
    Close(u64),
    EndIntended,
}

fn ev() -> impl Strategy<Value = Ev> {
    prop_oneof![
        2 => (0u64..60).prop_map(Ev::Upgrade),
        12 => (1u64..=N, prop_oneof![6 => Just(0u32), 1 => Just(1u32)], prop::bool::weighted(0.1))
            .prop_map(|(pseq, attempt, foreign)| Ev::Deliver { pseq, attempt, foreign }),
        2 => (0u64..=N).prop_map(Ev::Close),
        1 => Just(Ev::EndIntended),
    ]
}

/// Figures of one subscriber, as `SubAcct` and the lane count them.
#[derive(Debug, Default, PartialEq, Eq, Clone)]
struct Counts {
    expected: u64,
    lost: u64,
    fresh: u64,
    out_of_order: u64,
    duplicates: u64,
    republished: u64,
    late: u64,
    late_untracked: u64,
    pre_baseline: u64,
    replayed: u64,
    foreign: u64,
}

fn tally(c: &mut Counts, v: Verdict, attempt: u32) {
    match v {
        Verdict::Fresh { out_of_order } => {
            c.fresh += 1;
            c.out_of_order += u64::from(out_of_order);
        }
        Verdict::Duplicate if attempt > 0 => c.republished += 1,
        Verdict::Duplicate => c.duplicates += 1,
        Verdict::Late => c.late += 1,
        Verdict::LateUntracked => c.late_untracked += 1,
        Verdict::PreBaseline => c.pre_baseline += 1,
        Verdict::Replay => c.replayed += 1,
        Verdict::Foreign => c.foreign += 1,
    }
}

/// The reference: every pseq's fate in plain sets, no contiguity tricks.
struct Model {
    lost_cap: usize,
    up_ns: Option<u64>,
    baseline: Option<u64>,
    /// Received fresh (before being judged).
    received: BTreeSet<u64>,
    max_fresh: u64,
    /// Declared lost and remembered (room for `lost_cap`).
    tracked: BTreeSet<u64>,
    /// Span of declared-lost pseqs not remembered.
    hull: Option<(u64, u64)>,
    /// Every pseq ever declared lost.
    declared: BTreeSet<u64>,
    closed_hi: u64,
    cap: Option<u64>,
    c: Counts,
}

impl Model {
    fn new(lost_cap: usize) -> Model {
        Model {
            lost_cap,
            up_ns: None,
            baseline: None,
            received: BTreeSet::new(),
            max_fresh: 0,
            tracked: BTreeSet::new(),
            hull: None,
            declared: BTreeSet::new(),
            closed_hi: 0,
            cap: None,
            c: Counts::default(),
        }
    }

    fn ensure_baseline(&mut self, first_seen: Option<u64>) -> Option<u64> {
        if self.baseline.is_none() {
            let s = sched();
            let by_time = self.up_ns.map(|t| {
                // First pseq due at or after the upgrade + settle, by scanning.
                (1..).find(|&p| s.sched_of(0, p) >= t + SETTLE_NS).unwrap()
            });
            let b = match (first_seen, by_time) {
                (Some(a), Some(b)) => a.min(b),
                (Some(a), None) => a,
                (None, Some(b)) => b,
                (None, None) => return None,
            };
            self.baseline = Some(b.max(self.closed_hi + 1).max(1));
        }
        self.baseline
    }

    fn deliver(&mut self, m: &Marker) -> Verdict {
        if m.run != RUN {
            return Verdict::Foreign;
        }
        if self.up_ns.is_some_and(|up| m.sched_ns < up) {
            return Verdict::Replay;
        }
        let p = m.pseq;
        let base = self.ensure_baseline(Some(p)).unwrap();
        if p < base {
            return Verdict::PreBaseline;
        }
        if self.tracked.remove(&p) {
            return Verdict::Late;
        }
        if self.received.contains(&p) || p <= self.closed_hi {
            return if self.hull.is_some_and(|(a, b)| a <= p && p <= b) {
                Verdict::LateUntracked
            } else {
                Verdict::Duplicate
            };
        }
        let ooo = p < self.max_fresh;
        self.received.insert(p);
        self.max_fresh = self.max_fresh.max(p);
        Verdict::Fresh { out_of_order: ooo }
    }

    fn close(&mut self, hi: u64, failed: &BTreeSet<u64>) -> (u64, u64) {
        let Some(base) = self.ensure_baseline(None) else {
            return (0, 0);
        };
        let hi = self.cap.map_or(hi, |c| hi.min(c));
        let lo = self.closed_hi.max(base - 1);
        if hi <= lo {
            return (0, 0);
        }
        let (mut expected, mut lost) = (0, 0);
        for p in lo + 1..=hi {
            if failed.contains(&p) {
                continue;
            }
            expected += 1;
            if !self.received.contains(&p) {
                lost += 1;
                self.declared.insert(p);
                if self.tracked.len() < self.lost_cap {
                    self.tracked.insert(p);
                } else {
                    self.hull = Some(self.hull.map_or((p, p), |(a, b)| (a.min(p), b.max(p))));
                }
            }
        }
        self.closed_hi = hi;
        (expected, lost)
    }

    fn end_intended(&mut self) {
        let contig_floor = self.baseline.map_or(0, |b| b - 1);
        self.cap = Some(self.max_fresh.max(self.closed_hi).max(contig_floor));
    }
}

/// One subscriber's script, run through `SubAcct` and the model; the
/// receive log gets what the lane would write.
fn play(
    sub: u64,
    evs: &[Ev],
    failed: &BTreeSet<u64>,
    lost_cap: usize,
    log: &mut LogWriter,
    arrivals: &mut Vec<(u64, u64, u32)>,
) -> (Counts, Counts, SubAcct, Model) {
    let s = sched();
    let failed_v: Vec<u64> = failed.iter().copied().collect();
    let mut a = SubAcct::with_lost_cap(0, lost_cap);
    let mut m = Model::new(lost_cap);
    let mut got = Counts::default();
    for e in evs {
        match *e {
            Ev::Upgrade(ms) => {
                let t = s.t0_ns + ms * 1_000_000;
                a.upgraded(t);
                m.up_ns.get_or_insert(t);
            }
            Ev::Deliver {
                pseq,
                attempt,
                foreign,
            } => {
                let mk = Marker {
                    run: if foreign { OTHER_RUN } else { RUN },
                    channel: 0,
                    pseq,
                    msg_id: msg_id(pseq),
                    stage: 0,
                    sched_ns: s.sched_of(0, pseq),
                    attempt,
                };
                let v = a.on_marker(&mk, RUN, &s, SETTLE_NS);
                let want = m.deliver(&mk);
                assert_eq!(v, want, "verdict of {mk:?} after {evs:?}");
                tally(&mut got, v, attempt);
                tally(&mut m.c, want, attempt);
                match v {
                    Verdict::Replay => log.replayed(sub, mk.msg_id),
                    Verdict::Foreign => log.foreign(sub, mk.run, mk.msg_id),
                    _ => {
                        log.received(sub, mk.msg_id, attempt);
                        arrivals.push((sub, pseq, attempt));
                    }
                }
            }
            Ev::Close(hi) => {
                let (e, l) = a.close(hi, &failed_v, &s, SETTLE_NS);
                got.expected += e;
                got.lost += l;
                let (e2, l2) = m.close(hi, failed);
                m.c.expected += e2;
                m.c.lost += l2;
            }
            Ev::EndIntended => {
                a.end_intended();
                m.end_intended();
            }
        }
    }
    assert_eq!(a.baseline(), m.baseline);
    assert_eq!(a.closed_hi(), m.closed_hi);
    let want = m.c.clone();
    (got, want, a, m)
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

    #[test]
    fn subacct_and_verify_agree_with_the_model(
        subs in prop::collection::vec(prop::collection::vec(ev(), 0..60), 1..4),
        failed in prop::collection::btree_set(1u64..=N, 0..3),
        lost_cap in prop_oneof![Just(10_000usize), 0usize..4],
        final_close in prop::bool::ANY,
    ) {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        let mut publog = LogWriter::create(&d.join("publish.log")).unwrap();
        publog.run_header(RUN);
        let s = sched();
        for p in (1..=N).filter(|p| !failed.contains(p)) {
            publog.published(msg_id(p), 0, p, s.sched_of(0, p), None);
        }
        publog.flush();
        let mut log = LogWriter::create(&d.join("recv-0-0.log")).unwrap();
        let mut arrivals = Vec::new();
        let mut models = BTreeMap::new();
        for (i, evs) in subs.iter().enumerate() {
            let mut evs = evs.clone();
            if final_close {
                // The run's last stage judges everything published.
                evs.push(Ev::Close(N));
            }
            let sub = i as u64 * 3 + 1;
            let (got, want, acct, model) = play(sub, &evs, &failed, lost_cap, &mut log, &mut arrivals);
            prop_assert_eq!(&got, &want, "subscriber {} after {:?}", sub, evs);
            // What a judged stage must add up to.
            prop_assert!(got.lost <= got.expected);
            log.subscriber(sub, &acct);
            models.insert(sub, model);
        }
        // A subscriber that never connected: nothing expected of it.
        log.subscriber(99, &SubAcct::new(0));
        log.flush();

        let v = loadgen::verify::verify(d, None).unwrap();
        prop_assert_eq!(v.run, Some(RUN));
        let expected: u64 = models.values().map(|m| m.c.expected).sum();
        prop_assert_eq!(v.expected, expected);
        prop_assert_eq!(v.subscribers, subs.len() + 1);
        prop_assert_eq!(v.replayed, models.values().map(|m| m.c.replayed).sum::<u64>());
        prop_assert_eq!(v.foreign, models.values().map(|m| m.c.foreign).sum::<u64>());
        prop_assert_eq!(v.received, arrivals.len() as u64);

        // Lost: declared lost and never arrived afterwards (a late arrival is an arrival).
        let arrived: BTreeSet<(u64, u64)> = arrivals.iter().map(|&(s, p, _)| (s, p)).collect();
        let mut want_lost: Vec<(u64, u64)> = models
            .iter()
            .flat_map(|(&s, m)| m.declared.iter().map(move |&p| (s, p)))
            .filter(|sp| !arrived.contains(sp))
            .map(|(s, p)| (s, msg_id(p)))
            .collect();
        want_lost.sort_unstable();
        let mut lost = v.lost.clone();
        lost.sort_unstable();
        prop_assert_eq!(lost, want_lost);

        // Unexpected: copies of publishes that failed (never in the publish log).
        let want_unexpected: BTreeSet<(u64, u64)> = arrivals
            .iter()
            .filter(|(_, p, _)| failed.contains(p))
            .map(|&(s, p, _)| (s, msg_id(p)))
            .collect();
        prop_assert_eq!(v.unexpected.iter().copied().collect::<BTreeSet<_>>(), want_unexpected);

        // Duplicated: per judged id (≥ baseline), copies beyond the first
        // that the publisher's re-posts do not explain.
        let mut per_id: BTreeMap<(u64, u64), (u64, u64)> = BTreeMap::new();
        for &(s, p, attempt) in &arrivals {
            let e = per_id.entry((s, p)).or_default();
            e.0 += 1;
            e.1 += u64::from(attempt > 0);
        }
        let judged = |s: u64, p: u64| {
            !failed.contains(&p) && models[&s].baseline.is_some_and(|b| p >= b)
        };
        let want_dup: BTreeSet<(u64, u64, u64)> = per_id
            .iter()
            .filter(|(&(s, p), &(n, rp))| judged(s, p) && n - rp.min(n - 1) > 1)
            .map(|(&(s, p), &(n, _))| (s, msg_id(p), n))
            .collect();
        prop_assert_eq!(v.duplicated.iter().copied().collect::<BTreeSet<_>>(), want_dup);
        // And the same copies as the live accounting counted them, when
        // nothing was clipped or unexpected.
        for (&s, m) in &models {
            if m.hull.is_some() || arrivals.iter().any(|(s2, p, _)| *s2 == s && failed.contains(p)) {
                continue;
            }
            let extra: u64 = per_id
                .iter()
                .filter(|(&(s2, p), _)| s2 == s && judged(s, p))
                .map(|(_, &(n, _))| n - 1)
                .sum();
            prop_assert_eq!(extra, m.c.duplicates + m.c.republished, "subscriber {}", s);
        }
    }

    #[test]
    fn subacct_never_panics_on_arbitrary_input(
        ops in prop::collection::vec((0u8..5, any::<u64>(), any::<u64>()), 0..80),
        lost_cap in 0usize..4,
    ) {
        let s = Schedule { run: 1, t0_ns: 0, rate: 1e9, channels: 1 };
        let mut a = SubAcct::with_lost_cap(0, lost_cap);
        for (op, x, y) in ops {
            // Keep ranges walkable: a gap is walked pseq by pseq until the cap.
            let small = x % 1_000_000;
            match op {
                0 => a.upgraded(y),
                1 => { a.on_receive(x, &s, y % 1_000_000_000); }
                2 => { a.close(small, &[x % 50, y % 50], &s, 0); }
                3 => a.end_intended(),
                _ => {
                    let m = Marker { run: 1, channel: 0, pseq: x, msg_id: x, stage: 0, sched_ns: y, attempt: 0 };
                    a.on_marker(&m, (op as u32) % 2, &s, 0);
                }
            }
        }
    }
}
