//! The load generator's half of the message path (see probe-user's
//! `msgpath`): on sampled connections it knows the cumulative wire offset
//! of every publish request's last byte and of every pushed frame's last
//! byte, and when its own write and read of those bytes returned
//! (CLOCK_MONOTONIC). The observer, told each sampled connection's local
//! port before the connection sends its first byte, records the target's
//! calls on the same streams; the run joins both by offset.
//!
//! Offsets are of the application's bytes (above TLS): over TLS the
//! observer matches them with the target's OpenSSL reads and writes.

use std::{
    collections::VecDeque,
    sync::{
        atomic::{AtomicU64, Ordering},
        Arc, Mutex,
    },
};

/// Registers a connection's local port with the observer; false when it
/// could not (the connection is then not sampled).
pub type TraceHook = Arc<dyn Fn(u16) -> bool + Send + Sync>;

/// Records kept per kind at most; beyond, they are counted in `dropped`.
const MAX_RECORDS: usize = 4 << 20;

/// The publisher's record of one successful publish request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PublishMark {
    pub msg_id: u64,
    pub attempt: u32,
    /// Local port of the publisher connection that carried it.
    pub port: u16,
    /// When the publisher began this request (its connection is free only
    /// once the previous publish on it was answered).
    pub began_ns: u64,
    /// Cumulative bytes written on that connection through the request's last byte.
    pub end_offset: u64,
    /// When the write call that carried that last byte began (on loopback
    /// the target may read the bytes before the call returns).
    pub written_ns: u64,
}

/// A sampled subscriber's record of one accounted message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DeliveryMark {
    pub msg_id: u64,
    pub attempt: u32,
    /// The message's stage (its marker's).
    pub stage: u32,
    pub sched_ns: u64,
    /// Local port of the subscriber connection.
    pub port: u16,
    /// Cumulative bytes read on it through the frame's last byte.
    pub frame_end_offset: u64,
    /// When the read that returned that last byte returned.
    pub read_ns: u64,
    /// When the message was accounted (its e2e latency ends here).
    pub accounted_ns: u64,
}

/// What the run asks of the load generator's message-path sampling.
pub struct Tracer {
    hook: TraceHook,
    /// Subscribers whose id is below this are sampled (every message).
    pub sample_below: u64,
    publishes: Mutex<Vec<PublishMark>>,
    deliveries: Mutex<Vec<DeliveryMark>>,
    /// Records not kept (over the cap).
    pub dropped: AtomicU64,
}

impl Tracer {
    pub fn new(hook: TraceHook, sample_below: u64) -> Tracer {
        Tracer {
            hook,
            sample_below,
            publishes: Mutex::new(Vec::new()),
            deliveries: Mutex::new(Vec::new()),
            dropped: AtomicU64::new(0),
        }
    }

    /// Registers a connection's local port; true when it is traced.
    pub fn register(&self, port: u16) -> bool {
        (self.hook)(port)
    }

    pub fn samples_subscriber(&self, id: u64) -> bool {
        id < self.sample_below
    }

    fn push<T>(&self, v: &Mutex<Vec<T>>, rec: T) {
        let mut v = v.lock().unwrap_or_else(|p| p.into_inner());
        if v.len() < MAX_RECORDS {
            v.push(rec);
        } else {
            self.dropped.fetch_add(1, Ordering::Relaxed);
        }
    }

    pub fn published(&self, m: PublishMark) {
        self.push(&self.publishes, m);
    }

    pub fn delivered(&self, m: DeliveryMark) {
        self.push(&self.deliveries, m);
    }

    /// The deliveries of one stage recorded so far and every publish, left
    /// in place (for a stage's join while the run goes on).
    pub fn stage_snapshot(&self, stage: u32) -> (Vec<PublishMark>, Vec<DeliveryMark>) {
        let d: Vec<DeliveryMark> = self
            .deliveries
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
            .filter(|d| d.stage == stage)
            .copied()
            .collect();
        let p = self
            .publishes
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        (p, d)
    }

    /// Everything recorded so far (the tracer starts empty again).
    pub fn take(&self) -> (Vec<PublishMark>, Vec<DeliveryMark>) {
        let p = std::mem::take(&mut *self.publishes.lock().unwrap_or_else(|p| p.into_inner()));
        let d = std::mem::take(&mut *self.deliveries.lock().unwrap_or_else(|p| p.into_inner()));
        (p, d)
    }
}

impl std::fmt::Debug for Tracer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tracer")
            .field("sample_below", &self.sample_below)
            .finish_non_exhaustive()
    }
}

/// Bytes written on a counted connection and when the last write began.
#[derive(Debug, Default)]
pub struct WriteCount {
    pub bytes: AtomicU64,
    pub last_ns: AtomicU64,
}

/// Where a frame ended in the stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FrameEnd {
    /// Cumulative offset just past the frame's last byte.
    pub end_offset: u64,
    /// When the read that returned that byte returned.
    pub read_ns: u64,
    pub kind: FrameKind,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FrameKind {
    /// The last frame of a data message (text/binary/continuation with FIN).
    MessageEnd,
    /// A data frame that does not end its message.
    Fragment,
    /// Ping, pong or close.
    Control,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Scan {
    /// Inside the HTTP response: how much of "\r\n\r\n" matched.
    Http(u8),
    /// Collecting a frame header: bytes so far.
    Header,
    /// Skipping a payload: bytes left.
    Payload(u64),
}

/// Follows WebSocket frame boundaries in the bytes a client reads (after
/// the HTTP response head), without keeping any payload: the header's
/// length fields are all it reads.
#[derive(Debug, Clone)]
pub struct FrameScanner {
    scan: Scan,
    offset: u64,
    hdr: [u8; 14],
    hdr_len: usize,
    kind: FrameKind,
    /// Frames completed and not yet claimed by a message, oldest first.
    pub ends: VecDeque<FrameEnd>,
}

impl Default for FrameScanner {
    fn default() -> Self {
        FrameScanner {
            scan: Scan::Http(0),
            offset: 0,
            hdr: [0; 14],
            hdr_len: 0,
            kind: FrameKind::Control,
            ends: VecDeque::new(),
        }
    }
}

/// Frames remembered at most: a client that never claims them (it reads
/// nothing) must not grow without bound.
const MAX_PENDING_ENDS: usize = 4096;

impl FrameScanner {
    /// Cumulative bytes seen.
    pub fn offset(&self) -> u64 {
        self.offset
    }

    /// Feeds the bytes one read returned at `read_ns`.
    pub fn feed(&mut self, mut bytes: &[u8], read_ns: u64) {
        while !bytes.is_empty() {
            match self.scan {
                Scan::Http(matched) => {
                    const END: &[u8; 4] = b"\r\n\r\n";
                    let b = bytes[0];
                    bytes = &bytes[1..];
                    self.offset += 1;
                    let m = if b == END[matched as usize] {
                        matched + 1
                    } else if b == b'\r' {
                        1
                    } else {
                        0
                    };
                    self.scan = if m == 4 { Scan::Header } else { Scan::Http(m) };
                    if m == 4 {
                        self.hdr_len = 0;
                    }
                }
                Scan::Header => {
                    self.hdr[self.hdr_len] = bytes[0];
                    self.hdr_len += 1;
                    bytes = &bytes[1..];
                    self.offset += 1;
                    if let Some(payload) = self.header_done() {
                        self.scan = Scan::Payload(payload);
                        if payload == 0 {
                            self.frame_done(read_ns);
                        }
                    }
                }
                Scan::Payload(left) => {
                    let n = left.min(bytes.len() as u64);
                    bytes = &bytes[n as usize..];
                    self.offset += n;
                    self.scan = Scan::Payload(left - n);
                    if left == n {
                        self.frame_done(read_ns);
                    }
                }
            }
        }
    }

    /// The payload length once the header is complete.
    fn header_done(&mut self) -> Option<u64> {
        if self.hdr_len < 2 {
            return None;
        }
        let (b0, b1) = (self.hdr[0], self.hdr[1]);
        let masked = b1 & 0x80 != 0;
        let len7 = u64::from(b1 & 0x7f);
        let ext = match len7 {
            126 => 2,
            127 => 8,
            _ => 0,
        };
        let need = 2 + ext + if masked { 4 } else { 0 };
        if self.hdr_len < need {
            return None;
        }
        let payload = match ext {
            2 => u64::from(u16::from_be_bytes([self.hdr[2], self.hdr[3]])),
            8 => u64::from_be_bytes(self.hdr[2..10].try_into().unwrap_or([0; 8])),
            _ => len7,
        };
        let opcode = b0 & 0x0f;
        self.kind = match (opcode, b0 & 0x80 != 0) {
            (8.., _) => FrameKind::Control,
            (_, true) => FrameKind::MessageEnd,
            (_, false) => FrameKind::Fragment,
        };
        Some(payload)
    }

    fn frame_done(&mut self, read_ns: u64) {
        self.scan = Scan::Header;
        self.hdr_len = 0;
        if self.kind == FrameKind::Fragment {
            return;
        }
        if self.ends.len() >= MAX_PENDING_ENDS {
            self.ends.pop_front();
        }
        self.ends.push_back(FrameEnd {
            end_offset: self.offset,
            read_ns,
            kind: self.kind,
        });
    }

    /// The end of the data message just handed to the client (the oldest
    /// unclaimed message end; control frames before it are dropped).
    pub fn claim_message(&mut self) -> Option<FrameEnd> {
        while let Some(e) = self.ends.pop_front() {
            if e.kind == FrameKind::MessageEnd {
                return Some(e);
            }
        }
        None
    }

    /// A control frame was handed to the client: drop its end.
    pub fn claim_control(&mut self) {
        if let Some(i) = self.ends.iter().position(|e| e.kind == FrameKind::Control) {
            self.ends.remove(i);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn frame(opcode: u8, fin: bool, payload: usize, masked: bool) -> Vec<u8> {
        let mut f = vec![opcode | if fin { 0x80 } else { 0 }];
        let m = if masked { 0x80 } else { 0 };
        match payload {
            0..=125 => f.push(m | payload as u8),
            126..=65535 => {
                f.push(m | 126);
                f.extend((payload as u16).to_be_bytes());
            }
            _ => {
                f.push(m | 127);
                f.extend((payload as u64).to_be_bytes());
            }
        }
        if masked {
            f.extend([1, 2, 3, 4]);
        }
        f.extend(std::iter::repeat_n(b'x', payload));
        f
    }

    const HEAD: &[u8] = b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n\r\n";

    #[test]
    fn frame_ends_follow_the_stream_whatever_the_reads() {
        let mut stream = HEAD.to_vec();
        stream.extend(frame(1, true, 10, false)); // text
        stream.extend(frame(9, true, 0, false)); // ping
        stream.extend(frame(2, false, 200, false)); // fragment
        stream.extend(frame(0, true, 70_000, false)); // continuation, FIN
        let ends = [
            HEAD.len() + 12,
            HEAD.len() + 14,
            HEAD.len() + 14 + 204 + 10 + 70_000,
        ];
        for chunk in [1, 3, 7, 64, 100_000] {
            let mut s = FrameScanner::default();
            for (i, c) in stream.chunks(chunk).enumerate() {
                s.feed(c, i as u64);
            }
            assert_eq!(s.offset(), stream.len() as u64);
            let got: Vec<(u64, FrameKind)> =
                s.ends.iter().map(|e| (e.end_offset, e.kind)).collect();
            assert_eq!(
                got,
                vec![
                    (ends[0] as u64, FrameKind::MessageEnd),
                    (ends[1] as u64, FrameKind::Control),
                    (ends[2] as u64, FrameKind::MessageEnd),
                ],
                "chunk {chunk}"
            );
            // The read that returned a frame's last byte stamps it.
            let last = s.ends[2];
            assert_eq!(last.read_ns, ((ends[2] - 1) / chunk) as u64);
            s.claim_control();
            assert_eq!(s.claim_message().unwrap().end_offset, ends[0] as u64);
            assert_eq!(s.claim_message().unwrap().end_offset, ends[2] as u64);
            assert_eq!(s.claim_message(), None);
        }
    }

    proptest! {
        /// Arbitrary frames cut into arbitrary reads: every message end is
        /// found at its exact offset; arbitrary bytes never panic.
        #[test]
        fn scanner_matches_the_frames_it_was_fed(
            frames in proptest::collection::vec((0u8..3, any::<bool>(), 0usize..300, any::<bool>()), 0..20),
            cuts in proptest::collection::vec(1usize..50, 1..10),
            junk in proptest::collection::vec(any::<u8>(), 0..200),
        ) {
            let mut stream = HEAD.to_vec();
            let mut want = vec![];
            for &(op, fin, len, masked) in &frames {
                stream.extend(frame(op, fin, len, masked));
                if fin {
                    want.push(stream.len() as u64);
                }
            }
            let mut s = FrameScanner::default();
            let mut at = 0;
            let mut i = 0;
            while at < stream.len() {
                let n = cuts[i % cuts.len()].min(stream.len() - at);
                s.feed(&stream[at..at + n], 0);
                at += n;
                i += 1;
            }
            let got: Vec<u64> = std::iter::from_fn(|| s.claim_message()).map(|e| e.end_offset).collect();
            prop_assert_eq!(got, want);
            let mut s = FrameScanner::default();
            s.feed(&junk, 0);
            s.feed(HEAD, 0);
            s.feed(&junk, 0);
            prop_assert!(s.ends.len() <= MAX_PENDING_ENDS);
        }
    }
}
