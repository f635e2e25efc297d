//! Joining the load generator's samples with the target's traced I/O into
//! legs. A sample that cannot be joined exactly is counted with its reason,
//! never guessed.

use super::{ConnIo, Sample};
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, HashMap};

/// One message's latency, leg by leg (ns). `publish_wait + publish_send +
/// publish_net + server + delivery + client` is the message's e2e latency
/// exactly.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct Legs {
    pub msg_id: u64,
    pub sub_port: u16,
    /// Scheduled time (ns, CLOCK_MONOTONIC), to place the message on the
    /// trace's timeline.
    pub sched_ns: u64,
    /// Scheduled time → the publisher began the request: waiting behind
    /// earlier publishes on its connection (each waits for the target's
    /// answer) and the load generator's scheduling.
    pub publish_wait: u64,
    /// Began → the write call carrying the request's last byte began (the
    /// load generator's HTTP stack).
    pub publish_send: u64,
    /// That write → the target's read of the request's last byte: transit
    /// and the time the request waited for the target to read it.
    pub publish_net: u64,
    /// The target's read of the request → its write of the frame to this
    /// subscriber.
    pub server: u64,
    /// The target's write → the load generator's read of the frame's last byte.
    pub delivery: u64,
    /// That read → accounted.
    pub client: u64,
    /// The load generator's own e2e latency of this message (accounted −
    /// scheduled), which the gate's histogram holds; the legs add up to it.
    pub e2e: u64,
}

impl Legs {
    pub fn publish(&self) -> u64 {
        self.publish_wait + self.publish_send + self.publish_net
    }

    pub fn total(&self) -> u64 {
        self.publish() + self.server + self.delivery + self.client
    }

    /// The legs' absolute stamps, in order: scheduled, publish began,
    /// written, read by the target, written by the target, read by the
    /// client, accounted.
    pub fn stamps(&self) -> [u64; 7] {
        let b = self.sched_ns + self.publish_wait;
        let w = b + self.publish_send;
        let r = w + self.publish_net;
        let s = r + self.server;
        let d = s + self.delivery;
        [self.sched_ns, b, w, r, s, d, d + self.client]
    }
}

/// Why a sample could not be joined.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Unjoined {
    /// The load generator has no record of the publish request that
    /// carried the message (e.g. beyond its record cap).
    PublishNotRecorded,
    /// The probes saw no traced socket for the publisher connection.
    PublisherNotTraced,
    /// The probes saw no traced socket for the subscriber connection.
    SubscriberNotTraced,
    /// The target had not (yet) read up to the request's last byte.
    PublishReadMissing,
    /// The target had not (yet) written up to the frame's last byte.
    FrameWriteMissing,
    /// The stamps are out of causal order (e.g. the target wrote the frame
    /// before it read the publish: it did not come from this publish).
    OutOfOrder,
}

/// The result of one join: legs of the joined samples, and the rest by reason.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Joined {
    pub legs: Vec<Legs>,
    pub unjoined: BTreeMap<Unjoined, u64>,
    /// Joined messages whose frame the client read before the target's send
    /// call returned (delivery counted as 0).
    pub overlapped: u64,
}

/// Joins samples with the target's traced I/O per connection (keyed by the
/// load generator's local port of that connection).
pub fn join(samples: &[Sample], io: &HashMap<u16, ConnIo>) -> Joined {
    let mut out = Joined::default();
    for s in samples {
        match join_one(s, io) {
            Ok((l, overlapped)) => {
                out.overlapped += u64::from(overlapped);
                out.legs.push(l)
            }
            Err(why) => *out.unjoined.entry(why).or_default() += 1,
        }
    }
    out
}

/// The legs of one sample, and whether its read overlapped the send.
fn join_one(s: &Sample, io: &HashMap<u16, ConnIo>) -> Result<(Legs, bool), Unjoined> {
    let publisher = io.get(&s.pub_port).ok_or(Unjoined::PublisherNotTraced)?;
    let subscriber = io.get(&s.sub_port).ok_or(Unjoined::SubscriberNotTraced)?;
    let read = publisher
        .read_at(s.pub_end_offset)
        .ok_or(Unjoined::PublishReadMissing)?;
    let sent_end = subscriber
        .sent_at(s.frame_end_offset)
        .ok_or(Unjoined::FrameWriteMissing)?;
    // The probes stamp a send when the call returns; on one host the
    // client can read the bytes before that (they are delivered inside the
    // call). The frame was written by the time it was read: the earlier of
    // the two is when it was out (delivery 0 for such overlaps).
    let sent = sent_end.min(s.read_ns);
    let chain = [
        s.sched_ns,
        s.pub_began_ns,
        s.pub_written_ns,
        read,
        sent,
        s.read_ns,
        s.accounted_ns,
    ];
    if chain.windows(2).any(|w| w[0] > w[1]) {
        return Err(Unjoined::OutOfOrder);
    }
    let legs = Legs {
        msg_id: s.msg_id,
        sub_port: s.sub_port,
        sched_ns: s.sched_ns,
        publish_wait: chain[1] - chain[0],
        publish_send: chain[2] - chain[1],
        publish_net: chain[3] - chain[2],
        server: chain[4] - chain[3],
        delivery: chain[5] - chain[4],
        client: chain[6] - chain[5],
        e2e: s.e2e_ns(),
    };
    Ok((legs, sent < sent_end))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::msgpath::IoMark;
    use proptest::prelude::*;

    fn mark(end_offset: u64, t_ns: u64) -> IoMark {
        IoMark { end_offset, t_ns }
    }

    fn sample() -> Sample {
        Sample {
            msg_id: 7,
            sched_ns: 1_000,
            pub_port: 40_000,
            pub_end_offset: 300,
            pub_began_ns: 1_060,
            pub_written_ns: 1_100,
            sub_port: 50_000,
            frame_end_offset: 450,
            read_ns: 2_000,
            accounted_ns: 2_050,
        }
    }

    fn io() -> HashMap<u16, ConnIo> {
        HashMap::from([
            (
                40_000,
                ConnIo {
                    sends: vec![],
                    // The request arrived in two reads: 0..200 and 200..300.
                    recvs: vec![mark(200, 1_150), mark(300, 1_200)],
                },
            ),
            (
                50_000,
                ConnIo {
                    // One writev carried frames ending at 400 and 450.
                    sends: vec![mark(129, 900), mark(450, 1_700), mark(600, 1_900)],
                    recvs: vec![],
                },
            ),
        ])
    }

    #[test]
    fn legs_come_from_the_calls_that_carried_the_last_bytes() {
        let j = join(&[sample()], &io());
        assert_eq!(j.unjoined, BTreeMap::new());
        let l = j.legs[0];
        assert_eq!(
            (
                l.publish_wait,
                l.publish_send,
                l.publish_net,
                l.server,
                l.delivery,
                l.client
            ),
            (60, 40, 100, 500, 300, 50)
        );
        assert_eq!(l.total(), sample().e2e_ns());
        assert_eq!(
            l.stamps(),
            [1_000, 1_060, 1_100, 1_200, 1_700, 2_000, 2_050]
        );
    }

    #[test]
    fn a_read_before_the_send_call_returned_is_an_overlap_not_a_negative_leg() {
        let mut io = io();
        // The target's writev returned at 2_100, after the client's read at 2_000.
        io.get_mut(&50_000).unwrap().sends[1].t_ns = 2_100;
        let j = join(&[sample()], &io);
        assert_eq!(j.overlapped, 1);
        let l = j.legs[0];
        assert_eq!((l.server, l.delivery), (800, 0));
        assert_eq!(l.total(), sample().e2e_ns());
    }

    #[test]
    fn what_cannot_be_joined_is_counted_by_reason() {
        let mut s = sample();
        let mut cases = vec![];
        s.pub_port = 1;
        cases.push((s, Unjoined::PublisherNotTraced));
        s = sample();
        s.sub_port = 1;
        cases.push((s, Unjoined::SubscriberNotTraced));
        s = sample();
        s.pub_end_offset = 301;
        cases.push((s, Unjoined::PublishReadMissing));
        s = sample();
        s.frame_end_offset = 601;
        cases.push((s, Unjoined::FrameWriteMissing));
        s = sample();
        s.frame_end_offset = 100; // written at 900, before the publish was read
        cases.push((s, Unjoined::OutOfOrder));
        for (s, why) in cases {
            let j = join(&[s], &io());
            assert!(j.legs.is_empty());
            assert_eq!(j.unjoined, BTreeMap::from([(why, 1)]), "{s:?}");
        }
    }

    proptest! {
        /// Arbitrary stamps and marks: never panics; every joined sample's
        /// legs add up to its e2e latency exactly, and each leg matches the
        /// linear-scan model of "first call reaching the byte".
        #[test]
        fn legs_always_sum_to_e2e_and_match_a_linear_model(
            sends in proptest::collection::vec((1u64..50, 0u64..1_000), 0..20),
            recvs in proptest::collection::vec((1u64..50, 0u64..1_000), 0..20),
            samples in proptest::collection::vec(
                (0u64..5_000, 0u64..3_000, 0u64..3_000, 0u64..600, 0u64..600, 0u64..3_000, (0u64..3_000, 0u64..100), any::<bool>()),
                0..20,
            ),
        ) {
            // Cumulative offsets and non-decreasing times, as a socket gives them.
            let cum = |v: &[(u64, u64)]| {
                let (mut off, mut t) = (0, 0);
                v.iter().map(|&(n, dt)| { off += n; t += dt; mark(off, t) }).collect::<Vec<_>>()
            };
            let conn = HashMap::from([
                (1u16, ConnIo { sends: vec![], recvs: cum(&recvs) }),
                (2u16, ConnIo { sends: cum(&sends), recvs: vec![] }),
            ]);
            let samples: Vec<Sample> = samples.iter().enumerate().map(|(i, &(sched, w, rd, po, fo, acc_after, (rdd, began), traced))| Sample {
                msg_id: i as u64,
                sched_ns: sched,
                pub_port: 1,
                pub_end_offset: po,
                pub_began_ns: sched + began.min(w),
                pub_written_ns: sched + w,
                sub_port: if traced { 2 } else { 3 },
                frame_end_offset: fo,
                read_ns: sched + w + rd + rdd,
                accounted_ns: sched + w + rd + rdd + acc_after,
            }).collect();
            let j = join(&samples, &conn);
            prop_assert_eq!(j.legs.len() as u64 + j.unjoined.values().sum::<u64>(), samples.len() as u64);
            let first = |marks: &[IoMark], off: u64| marks.iter().find(|m| m.end_offset >= off).map(|m| m.t_ns);
            for l in &j.legs {
                let s = samples[l.msg_id as usize];
                prop_assert_eq!(l.total(), s.e2e_ns());
                prop_assert_eq!(l.e2e, s.e2e_ns());
                let read = first(&conn[&1].recvs, s.pub_end_offset).unwrap();
                let sent = first(&conn[&2].sends, s.frame_end_offset).unwrap().min(s.read_ns);
                prop_assert_eq!(l.publish_net, read - s.pub_written_ns);
                prop_assert_eq!(l.server, sent - read);
                prop_assert_eq!(l.delivery, s.read_ns - sent);
            }
        }
    }
}
