//! The load generator's connection events around faults: when a client
//! detected an unexpected disconnect, when it was connected again, and
//! which messages a resumed session received that were scheduled before
//! it (the server's replay). Recorded only when the run has faults
//! (`RunOptions::conn_events`; in-process pools only), folded into each
//! fault's [`FaultOutcome`] by [`measure`].

use super::FaultOutcome;
use serde::{Deserialize, Serialize};
use std::sync::{
    atomic::{AtomicU64, Ordering},
    Mutex,
};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum ConnEventKind {
    /// The client noticed an unexpected disconnect (missed pongs, reset,
    /// EOF, server close).
    Lost,
    /// A subscriber that had been connected before is connected again.
    Reconnected,
    /// A message scheduled before its session's upgrade arrived on a
    /// resumed session.
    Resumed,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct ConnEvent {
    /// CLOCK_MONOTONIC ns.
    pub at_ns: u64,
    pub sub: u64,
    pub kind: ConnEventKind,
}

/// Most events kept (a few per subscriber per fault; 2M ≈ 48 MB worst case).
const CAP: usize = 2_000_000;

/// Shared by every lane of a process; a lock per event is fine, events
/// are rare (disconnects, reconnects, a resumed backlog).
#[derive(Debug, Default)]
pub struct ConnEvents {
    events: Mutex<Vec<ConnEvent>>,
    dropped: AtomicU64,
}

impl ConnEvents {
    pub fn record(&self, at_ns: u64, sub: u64, kind: ConnEventKind) {
        let mut ev = self.events.lock().unwrap_or_else(|e| e.into_inner());
        if ev.len() < CAP {
            ev.push(ConnEvent { at_ns, sub, kind });
        } else {
            self.dropped.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Every event so far, in time order, and how many were not kept.
    pub fn snapshot(&self) -> (Vec<ConnEvent>, u64) {
        let mut v = self
            .events
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        v.sort_by_key(|e| e.at_ns);
        (v, self.dropped.load(Ordering::Relaxed))
    }
}

/// Nearest-rank quantile of sorted values.
fn quantile(sorted: &[f64], q: f64) -> Option<f64> {
    if sorted.is_empty() {
        return None;
    }
    let rank = ((q * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len());
    Some(sorted[rank - 1])
}

/// Folds the events of `[start_ns, until_ns]` into the connection figures
/// of a fault that was in effect from `start_ns` to `end_ns`: detection
/// (start → first unexpected disconnect), per disconnected subscriber its
/// recovery (end → its first reconnect after its first disconnect, 0 when
/// it was back before the fault ended), resumed messages. `until_ns` ends
/// the window (the next fault's start or the run's end).
pub fn measure(
    events: &[ConnEvent],
    start_ns: u64,
    end_ns: u64,
    until_ns: u64,
    out: &mut FaultOutcome,
) {
    use std::collections::BTreeMap;
    let window = events
        .iter()
        .filter(|e| e.at_ns >= start_ns && e.at_ns <= until_ns);
    // Per subscriber: first loss, then the first reconnect after it.
    let mut subs: BTreeMap<u64, (u64, Option<u64>)> = BTreeMap::new();
    let mut resumed = 0u64;
    let mut first_loss: Option<u64> = None;
    for e in window {
        match e.kind {
            ConnEventKind::Lost => {
                first_loss = Some(first_loss.map_or(e.at_ns, |f| f.min(e.at_ns)));
                subs.entry(e.sub).or_insert((e.at_ns, None));
            }
            ConnEventKind::Reconnected => {
                if let Some((lost, back @ None)) = subs.get_mut(&e.sub) {
                    if e.at_ns >= *lost {
                        *back = Some(e.at_ns);
                    }
                }
            }
            ConnEventKind::Resumed => resumed += 1,
        }
    }
    let mut recovery: Vec<f64> = subs
        .values()
        .filter_map(|(_, back)| *back)
        .map(|b| b.saturating_sub(end_ns) as f64 / 1e6)
        .collect();
    recovery.sort_by(f64::total_cmp);
    out.disconnected = Some(subs.len() as u64);
    out.detection_ms = first_loss.map(|f| (f - start_ns) as f64 / 1e6);
    out.reconnected = Some(recovery.len() as u64);
    out.recovery_p50_ms = quantile(&recovery, 0.50);
    out.recovery_p99_ms = quantile(&recovery, 0.99);
    out.recovery_max_ms = recovery.last().copied();
    out.resumed_messages = Some(resumed);
}

#[cfg(test)]
mod tests {
    use super::*;
    use ConnEventKind::*;

    fn ev(at_ms: u64, sub: u64, kind: ConnEventKind) -> ConnEvent {
        ConnEvent {
            at_ns: at_ms * 1_000_000,
            sub,
            kind,
        }
    }

    #[test]
    fn partition_figures_from_events() {
        // Fault 1000..6000 ms; two subs lose at 3000/3100 ms, come back
        // at 6500/7000 ms; one resumed message each; events outside the
        // window are ignored.
        let events = [
            ev(500, 9, Lost),
            ev(3000, 1, Lost),
            ev(3100, 2, Lost),
            ev(4000, 1, Reconnected), // a failed-over reconnect before the end counts as 0
            ev(4100, 1, Lost),
            ev(6500, 2, Reconnected),
            ev(6600, 2, Resumed),
            ev(7000, 3, Reconnected), // never lost in the window
            ev(60_000, 2, Lost),
        ];
        let mut o = FaultOutcome::default();
        measure(
            &events,
            1_000_000_000,
            6_000_000_000,
            30_000_000_000,
            &mut o,
        );
        assert_eq!(o.disconnected, Some(2));
        assert_eq!(o.detection_ms, Some(2000.0));
        assert_eq!(o.reconnected, Some(2));
        assert_eq!(o.recovery_p50_ms, Some(0.0));
        assert_eq!(o.recovery_p99_ms, Some(500.0));
        assert_eq!(o.recovery_max_ms, Some(500.0));
        assert_eq!(o.resumed_messages, Some(1));
    }

    #[test]
    fn nothing_happened_is_zero_not_unmeasured() {
        let mut o = FaultOutcome::default();
        measure(&[], 0, 10, 20, &mut o);
        assert_eq!((o.disconnected, o.reconnected), (Some(0), Some(0)));
        assert_eq!((o.detection_ms, o.recovery_p99_ms), (None, None));
    }

    proptest::proptest! {
        #[test]
        fn folded_figures_are_consistent(raw in proptest::collection::vec((0u64..20_000, 0u64..20, 0u8..3), 0..300)) {
            let events: Vec<ConnEvent> = {
                let mut v: Vec<ConnEvent> = raw.iter().map(|(t, s, k)| ev(*t, *s, [Lost, Reconnected, Resumed][*k as usize])).collect();
                v.sort_by_key(|e| e.at_ns);
                v
            };
            let (start, end, until) = (2_000_000_000u64, 8_000_000_000u64, 15_000_000_000u64);
            let mut o = FaultOutcome::default();
            measure(&events, start, end, until, &mut o);
            let inw = |e: &&ConnEvent| e.at_ns >= start && e.at_ns <= until;
            let lost_subs: std::collections::BTreeSet<u64> = events.iter().filter(inw).filter(|e| e.kind == Lost).map(|e| e.sub).collect();
            proptest::prop_assert_eq!(o.disconnected, Some(lost_subs.len() as u64));
            proptest::prop_assert!(o.reconnected.unwrap() <= o.disconnected.unwrap());
            proptest::prop_assert_eq!(o.resumed_messages, Some(events.iter().filter(inw).filter(|e| e.kind == Resumed).count() as u64));
            if let (Some(p50), Some(p99), Some(max)) = (o.recovery_p50_ms, o.recovery_p99_ms, o.recovery_max_ms) {
                proptest::prop_assert!(0.0 <= p50 && p50 <= p99 && p99 <= max);
                proptest::prop_assert!(max <= (until - end) as f64 / 1e6);
            } else {
                proptest::prop_assert_eq!(o.reconnected, Some(0));
            }
            match o.detection_ms {
                Some(d) => proptest::prop_assert!(d >= 0.0 && d <= (until - start) as f64 / 1e6),
                None => proptest::prop_assert!(lost_subs.is_empty()),
            }
        }
    }
}
