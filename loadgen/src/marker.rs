//! The marker each published message carries inside its body, and the
//! open-model publish schedule. The marker is plain ASCII so it survives any
//! server that forwards the body as text:
//! `psm2.<run>.<channel>.<pseq>.<msg_id>.<stage>.<scheduled_mono_ns>.<attempt>.`
//! then padding. `run` is a random nonzero id drawn per run: a frame from
//! another run (a server's history, a previous run on the same server) is
//! told apart, and the id sent to the server (`<run>-<msg_id>`) never
//! repeats across runs, so an idempotent server never mistakes a new run's
//! message for a retry. `pseq` is the publisher's own per-channel sequence
//! (1, 2, …), so loss and order are judged the same way for every protocol;
//! the scheduled time (CLOCK_MONOTONIC, see `clock`) is the send time the
//! schedule *intended*, so replayed or late messages keep it. `attempt` > 0
//! marks a re-publish after a failed POST: if the first POST was in fact
//! accepted, the copy is the publisher's duplicate, not the server's.

use serde::{Deserialize, Serialize};

pub const PREFIX: &str = "psm2.";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Marker {
    pub run: u32,
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
            "{PREFIX}{}.{}.{}.{}.{}.{}.{}.",
            self.run, self.channel, self.pseq, self.msg_id, self.stage, self.sched_ns, self.attempt
        );
        if s.len() < payload_bytes {
            s.extend(std::iter::repeat_n('x', payload_bytes - s.len()));
        }
        s
    }

    /// The id sent to the server (`X-Msg-Id`): unique across runs.
    pub fn wire_id(&self) -> String {
        wire_id(self.run, self.msg_id)
    }

    /// Finds and parses the marker anywhere in a received frame: the first
    /// occurrence of the prefix followed by seven numbers each ended by a
    /// dot (a cut-off marker is not taken for a shorter number). One pass
    /// over the bytes, no allocation: it runs for every received frame.
    pub fn find(frame: &str) -> Option<Marker> {
        let b = frame.as_bytes();
        let mut at = 0;
        // Bounded by the frame's length: each round moves past one prefix.
        while let Some(i) = find_bytes(&b[at..], PREFIX.as_bytes()) {
            at += i + PREFIX.len();
            if let Some(m) = Self::parse_fields(&b[at..]) {
                return Some(m);
            }
        }
        None
    }

    fn parse_fields(s: &[u8]) -> Option<Marker> {
        let mut at = 0;
        // A field: 1 to 20 ASCII digits (no sign) that fit a u64, then a dot.
        let mut next = || -> Option<u64> {
            let digits = s[at..].iter().take_while(|c| c.is_ascii_digit()).count();
            if digits == 0 || digits > 20 || s.get(at + digits) != Some(&b'.') {
                return None;
            }
            let mut v: u64 = 0;
            for &c in &s[at..at + digits] {
                v = v.checked_mul(10)?.checked_add(u64::from(c - b'0'))?;
            }
            at += digits + 1;
            Some(v)
        };
        Some(Marker {
            run: u32::try_from(next()?).ok()?,
            channel: u32::try_from(next()?).ok()?,
            pseq: next()?,
            msg_id: next()?,
            stage: u32::try_from(next()?).ok()?,
            sched_ns: next()?,
            attempt: u32::try_from(next()?).ok()?,
        })
    }
}

/// Where `needle` (not empty) first starts in `hay`. A plain scan: on
/// frames of a few hundred bytes it beats building a two-way searcher,
/// which `str::find` does on every call.
pub(crate) fn find_bytes(hay: &[u8], needle: &[u8]) -> Option<usize> {
    let last = hay.len().checked_sub(needle.len())?;
    (0..=last).find(|&i| hay[i] == needle[0] && &hay[i..i + needle.len()] == needle)
}

/// `X-Msg-Id` of message `msg_id` of run `run`.
pub fn wire_id(run: u32, msg_id: u64) -> String {
    format!("{run}-{msg_id}")
}

/// Inverse of [`wire_id`]: `(run, msg_id)`.
pub fn parse_wire_id(s: &str) -> Option<(u32, u64)> {
    let (r, m) = s.trim().split_once('-')?;
    Some((r.parse().ok()?, m.parse().ok()?))
}

/// A random nonzero run id.
pub fn new_run_id() -> u32 {
    use rand::Rng;
    rand::thread_rng().gen_range(1..=u32::MAX)
}

/// Message `i` (0-based) is due at `t0 + i/rate`, goes to channel `i % C`
/// with per-channel seq `i / C + 1` and msg_id `i + 1`. Deterministic, so a
/// worker process can tell which messages a subscriber must have seen
/// without asking the publisher.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq)]
pub struct Schedule {
    /// Run id stamped in every marker (nonzero).
    pub run: u32,
    /// CLOCK_MONOTONIC ns of message 0.
    pub t0_ns: u64,
    pub rate: f64,
    pub channels: u32,
}

impl Schedule {
    pub fn sched_ns(&self, i: u64) -> u64 {
        self.t0_ns
            .saturating_add((i as f64 * 1e9 / self.rate) as u64)
    }

    fn c(&self) -> u64 {
        u64::from(self.channels.max(1))
    }

    pub fn channel(&self, i: u64) -> u32 {
        (i % self.c()) as u32
    }

    pub fn pseq(&self, i: u64) -> u64 {
        (i / self.c()).saturating_add(1)
    }

    /// Scheduled time of `pseq` (≥ 1) on `channel`.
    pub fn sched_of(&self, channel: u32, pseq: u64) -> u64 {
        let i = pseq
            .saturating_sub(1)
            .saturating_mul(self.c())
            .saturating_add(u64::from(channel));
        self.sched_ns(i)
    }

    /// First per-channel seq of `channel` scheduled at or after `t_ns`.
    pub fn first_pseq_at_or_after(&self, channel: u32, t_ns: u64) -> u64 {
        if self.rate <= 0.0 {
            return u64::MAX;
        }
        let c = self.c();
        let i_min = if t_ns <= self.t0_ns {
            0
        } else {
            ((t_ns - self.t0_ns) as f64 * self.rate / 1e9).ceil() as u64
        };
        let i = i_min.saturating_add((u64::from(channel) % c + c - i_min % c) % c);
        (i / c).saturating_add(1)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn marker_roundtrips_inside_json_and_pads() {
        let m = Marker {
            run: 77,
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
        assert_eq!(Marker::find("psm2.1.2.x"), None);
        // Cut off after the attempt's digits: not taken for a shorter number.
        assert_eq!(Marker::find("psm2.1.0.5.5.0.123.1"), None);
        // A broken first occurrence does not hide a good second one.
        assert_eq!(Marker::find(&format!("psm2.9.{}", m.body(0))), Some(m));
        assert_eq!(
            Marker::find("psm1.0.1.1.0.5.0."),
            None,
            "the old version is not this run's"
        );
        assert_eq!(m.wire_id(), "77-4242");
        assert_eq!(parse_wire_id("77-4242"), Some((77, 4242)));
        assert_eq!(parse_wire_id("4242"), None);
        assert!(m.body(10).len() > 10, "marker is never truncated");
    }

    /// The parser as first written (str search, `splitn`, `parse`): the
    /// one-pass parser must agree with it on every input.
    fn reference_find(frame: &str) -> Option<Marker> {
        let mut rest = frame;
        while let Some(at) = rest.find(PREFIX) {
            rest = &rest[at + PREFIX.len()..];
            let parts: Vec<&str> = rest.splitn(8, '.').collect();
            let mut it = parts.iter();
            let mut next = || {
                let f = it.next()?;
                if f.is_empty() || f.len() > 20 || !f.bytes().all(|b| b.is_ascii_digit()) {
                    return None;
                }
                f.parse::<u64>().ok()
            };
            let m = (|| {
                let m = Marker {
                    run: u32::try_from(next()?).ok()?,
                    channel: u32::try_from(next()?).ok()?,
                    pseq: next()?,
                    msg_id: next()?,
                    stage: u32::try_from(next()?).ok()?,
                    sched_ns: next()?,
                    attempt: u32::try_from(next()?).ok()?,
                };
                // The dot after `attempt` must be there.
                (parts.len() == 8).then_some(m)
            })();
            if m.is_some() {
                return m;
            }
        }
        None
    }

    #[test]
    fn schedule_is_deterministic() {
        let s = Schedule {
            run: 1,
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
        assert_eq!(s.sched_of(2, 2), 1_060_000_000);
    }

    proptest::proptest! {
        #[test]
        fn arbitrary_frames_never_panic(frame in "\\PC{0,120}", bytes in proptest::collection::vec(0u8..=255, 0..120)) {
            let _ = Marker::find(&frame);
            let _ = Marker::find(&String::from_utf8_lossy(&bytes));
            let _ = Marker::find(&format!("psm2.{frame}"));
            let _ = parse_wire_id(&frame);
        }

        #[test]
        fn markers_round_trip_anywhere(run in 1u32.., channel: u32, pseq: u64, msg_id: u64, stage: u32,
                                       sched_ns: u64, attempt: u32, pad in 0usize..300,
                                       before in "[a-z{}\":, ]{0,20}", after in "[a-z{}\":, ]{0,20}") {
            let m = Marker { run, channel, pseq, msg_id, stage, sched_ns, attempt };
            let frame = format!("{before}{}{after}", m.body(pad));
            proptest::prop_assert_eq!(Marker::find(&frame), Some(m));
        }

        #[test]
        fn one_pass_parser_agrees_with_the_split_reference(
            frame in "(psm2\\.|[0-9]{1,22}\\.|[0-9x+.]|psm){0,24}",
            junk in "\\PC{0,40}",
        ) {
            for f in [frame.clone(), format!("{junk}{frame}"), format!("{frame}{junk}")] {
                proptest::prop_assert_eq!(Marker::find(&f), reference_find(&f), "{:?}", f);
            }
        }

        #[test]
        fn schedule_math_never_panics(t0: u64, rate in 0.001f64..1e7, channels: u32, ch: u32, t: u64, i: u64, pseq: u64) {
            let s = Schedule { run: 1, t0_ns: t0, rate, channels };
            let _ = (s.sched_ns(i), s.channel(i), s.pseq(i), s.sched_of(ch, pseq));
            let _ = s.first_pseq_at_or_after(ch, t);
        }
    }
}
