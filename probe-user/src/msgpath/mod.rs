//! Where each message's latency goes: publish → server → kernel → client,
//! on one clock (CLOCK_MONOTONIC, which is `bpf_ktime_get_ns`).
//!
//! Joins two views of the same bytes without reading any payload:
//! * the probes record, for every send and receive of the target on a
//!   traced socket, its time and the socket's cumulative byte count after
//!   the call ([`IoMark`]);
//! * the load generator records, for every sampled message, the cumulative
//!   wire offset of the publish request's last byte on its publisher
//!   connection and of the frame's last byte on the subscriber connection,
//!   with its own write, read and accounting times ([`Sample`]).
//!
//! Both sides count the same TCP stream from its first byte, so the call
//! that carried a byte is the first mark whose cumulative count reaches it:
//! exact, not inferred from timing. Connections meet by the load
//! generator's local port (the target's peer port). The legs are
//! differences of one chain of stamps, so they add up to the end-to-end
//! latency the gate judges, to the nanosecond.

pub mod collect;
pub mod join;
pub mod report;

pub use join::{join, Joined, Legs, Unjoined};
pub use report::{LegStats, MessagePath};

/// One send or receive of the target on a traced socket.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct IoMark {
    /// Socket's cumulative bytes (this direction) after the call.
    pub end_offset: u64,
    /// When the call returned (CLOCK_MONOTONIC ns).
    pub t_ns: u64,
}

/// The target's side of one traced connection, in call order.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ConnIo {
    /// What the target wrote (frames to a subscriber).
    pub sends: Vec<IoMark>,
    /// What the target read (publish requests from a publisher).
    pub recvs: Vec<IoMark>,
}

impl ConnIo {
    /// The call that carried byte `offset - 1` (the first mark whose
    /// cumulative count reaches `offset`).
    fn carrying(marks: &[IoMark], offset: u64) -> Option<u64> {
        let i = marks.partition_point(|m| m.end_offset < offset);
        marks.get(i).map(|m| m.t_ns)
    }

    pub fn sent_at(&self, offset: u64) -> Option<u64> {
        Self::carrying(&self.sends, offset)
    }

    pub fn read_at(&self, offset: u64) -> Option<u64> {
        Self::carrying(&self.recvs, offset)
    }
}

/// The load generator's record of one sampled delivery of one message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Sample {
    pub msg_id: u64,
    /// Scheduled send time (the origin of the e2e latency).
    pub sched_ns: u64,
    /// Publisher connection (its local port) and the cumulative offset of
    /// the publish request's last byte on it.
    pub pub_port: u16,
    pub pub_end_offset: u64,
    /// When the publisher began the request (its connection was free: the
    /// previous publish on it had been answered).
    pub pub_began_ns: u64,
    /// When the publisher's write call carrying that last byte began.
    pub pub_written_ns: u64,
    /// Subscriber connection (its local port) and the cumulative offset of
    /// the frame's last byte on it.
    pub sub_port: u16,
    pub frame_end_offset: u64,
    /// When the load generator's read that returned the frame's last byte
    /// returned.
    pub read_ns: u64,
    /// When the message was accounted: the e2e latency is `accounted_ns -
    /// sched_ns`.
    pub accounted_ns: u64,
}

impl Sample {
    pub fn e2e_ns(&self) -> u64 {
        self.accounted_ns.saturating_sub(self.sched_ns)
    }
}

/// Builds the join's samples from the load generator's marks: every
/// accounted delivery of a sampled subscriber with the publish request
/// that carried its message (same msg_id and attempt), by stage. A
/// delivery whose publish was not recorded is counted, per stage.
pub fn samples(
    publishes: &[loadgen::msgpath::PublishMark],
    deliveries: &[loadgen::msgpath::DeliveryMark],
) -> std::collections::BTreeMap<u32, (Vec<Sample>, u64)> {
    let by_id: std::collections::HashMap<(u64, u32), &loadgen::msgpath::PublishMark> = publishes
        .iter()
        .map(|p| ((p.msg_id, p.attempt), p))
        .collect();
    let mut out: std::collections::BTreeMap<u32, (Vec<Sample>, u64)> = Default::default();
    for d in deliveries {
        let slot = out.entry(d.stage).or_default();
        let Some(p) = by_id.get(&(d.msg_id, d.attempt)) else {
            slot.1 += 1;
            continue;
        };
        slot.0.push(Sample {
            msg_id: d.msg_id,
            sched_ns: d.sched_ns,
            pub_port: p.port,
            pub_end_offset: p.end_offset,
            pub_began_ns: p.began_ns,
            pub_written_ns: p.written_ns,
            sub_port: d.port,
            frame_end_offset: d.frame_end_offset,
            read_ns: d.read_ns,
            accounted_ns: d.accounted_ns,
        });
    }
    out
}
