//! The marker each published message carries inside its body, and the
//! open-model publish schedule. The marker is plain ASCII so it survives any
//! server that forwards the body as text:
//! `psm1.<channel>.<pseq>.<msg_id>.<stage>.<scheduled_unix_ns>.<attempt>.` then padding.
//! `pseq` is the publisher's own per-channel sequence (1, 2, …), so loss and
//! order are judged the same way for every protocol; the scheduled time is
//! the send time the schedule *intended*, so replayed or late messages keep it.
//! `attempt` > 0 marks a re-publish after a failed POST: if the first POST
//! was in fact accepted, the copy is the publisher's duplicate, not the server's.

use serde::{Deserialize, Serialize};

pub const PREFIX: &str = "psm1.";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Marker {
    pub channel: u32,
    pub pseq: u64,
    pub msg_id: u64,
    pub stage: u32,
    pub sched_ns: u64,
    pub attempt: u32,
}

impl Marker {
    /// The message body: marker padded with `x` up to `payload_bytes`.
    pub fn body(&self, payload_bytes: usize) -> String {
        let mut s = format!(
            "{PREFIX}{}.{}.{}.{}.{}.{}.",
            self.channel, self.pseq, self.msg_id, self.stage, self.sched_ns, self.attempt
        );
        if s.len() < payload_bytes {
            s.extend(std::iter::repeat_n('x', payload_bytes - s.len()));
        }
        s
    }

    /// Finds and parses the marker anywhere in a received frame.
    pub fn find(frame: &str) -> Option<Marker> {
        let start = frame.find(PREFIX)? + PREFIX.len();
        let mut it = frame[start..].splitn(7, '.');
        let mut next = || it.next()?.parse::<u64>().ok();
        Some(Marker {
            channel: u32::try_from(next()?).ok()?,
            pseq: next()?,
            msg_id: next()?,
            stage: u32::try_from(next()?).ok()?,
            sched_ns: next()?,
            attempt: u32::try_from(next()?).ok()?,
        })
    }
}

/// Message `i` (0-based) is due at `t0 + i/rate`, goes to channel `i % C`
/// with per-channel seq `i / C + 1` and msg_id `i + 1`. Deterministic, so a
/// worker process can tell which messages a subscriber must have seen
/// without asking the publisher.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq)]
pub struct Schedule {
    pub t0_ns: u64,
    pub rate: f64,
    pub channels: u32,
}

impl Schedule {
    pub fn sched_ns(&self, i: u64) -> u64 {
        self.t0_ns + (i as f64 * 1e9 / self.rate) as u64
    }

    pub fn channel(&self, i: u64) -> u32 {
        (i % u64::from(self.channels)) as u32
    }

    pub fn pseq(&self, i: u64) -> u64 {
        i / u64::from(self.channels) + 1
    }

    /// First per-channel seq of `channel` scheduled at or after `t_ns`.
    pub fn first_pseq_at_or_after(&self, channel: u32, t_ns: u64) -> u64 {
        if self.rate <= 0.0 {
            return u64::MAX;
        }
        let c = u64::from(self.channels);
        let i_min = if t_ns <= self.t0_ns {
            0
        } else {
            ((t_ns - self.t0_ns) as f64 * self.rate / 1e9).ceil() as u64
        };
        let i = i_min + (u64::from(channel) + c - i_min % c) % c;
        i / c + 1
    }
}

/// Wall clock in unix nanoseconds: shared by publisher and worker processes.
pub fn now_ns() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn marker_roundtrips_inside_json_and_pads() {
        let m = Marker {
            channel: 3,
            pseq: 42,
            msg_id: 4242,
            stage: 1,
            sched_ns: 1_700_000_000_123_456_789,
            attempt: 2,
        };
        let body = m.body(200);
        assert_eq!(body.len(), 200);
        let frame =
            format!("{{\"channel\":\"ch3\",\"seq\":9,\"id\":\"4242\",\"data\":\"{body}\"}}");
        assert_eq!(Marker::find(&frame), Some(m));
        assert_eq!(Marker::find("no marker"), None);
        assert_eq!(Marker::find("psm1.1.2.x"), None);
        assert!(m.body(10).len() > 10, "marker is never truncated");
    }

    #[test]
    fn schedule_is_deterministic() {
        let s = Schedule {
            t0_ns: 1_000_000_000,
            rate: 100.0,
            channels: 4,
        };
        assert_eq!(s.sched_ns(0), 1_000_000_000);
        assert_eq!(s.sched_ns(100), 2_000_000_000);
        assert_eq!((s.channel(6), s.pseq(6)), (2, 2));
        // i = 6 is channel 2 at t0 + 60ms: first channel-2 message at/after t0+55ms is pseq 2.
        assert_eq!(s.first_pseq_at_or_after(2, 1_055_000_000), 2);
        assert_eq!(s.first_pseq_at_or_after(2, 1_060_000_000), 2);
        assert_eq!(s.first_pseq_at_or_after(2, 1_061_000_000), 3);
        assert_eq!(s.first_pseq_at_or_after(0, 0), 1);
    }
}
