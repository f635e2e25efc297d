//! Channels in memory: the retained replay window, the subscribers and the
//! fan-out of durable messages into each subscriber's bounded send queue.
//!
//! Ordering: messages enter a channel only through [`Channel::commit`], in
//! seq order, after the writer made them durable. Subscribing fixes the
//! replay range (up to the current head) and registers the live queue under
//! the same lock as `commit`, so a resuming client sees every seq above
//! `last_seq` exactly once: older ones replayed from the retained window,
//! newer ones from its queue.

use std::{
    collections::{HashMap, VecDeque},
    sync::{
        atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering},
        Arc, Mutex, RwLock,
    },
};

use futures_util::task::AtomicWaker;
use prometheus::IntGauge;
use tokio_tungstenite::tungstenite::Utf8Bytes;

use crate::metrics::Metrics;

/// One durable message, shared by the retained window and every queue.
#[derive(Debug)]
pub struct Msg {
    pub seq: u64,
    pub id: Arc<str>,
    /// The complete text frame `{"channel":…,"seq":…,"id":…,"data":…}`,
    /// encoded once for all subscribers.
    pub frame: Utf8Bytes,
    /// Bytes counted by retention and queue limits (id + body).
    pub size: usize,
}

#[derive(serde::Serialize)]
struct FrameJson<'a> {
    channel: &'a str,
    seq: u64,
    id: &'a str,
    data: &'a str,
}

impl Msg {
    pub fn new(channel: &str, seq: u64, id: &str, data: &str) -> Msg {
        let frame = serde_json::to_string(&FrameJson {
            channel,
            seq,
            id,
            data,
        })
        .expect("strings always serialize");
        Msg {
            seq,
            id: id.into(),
            frame: frame.into(),
            size: id.len() + data.len(),
        }
    }
}

/// Limits shared by all channels.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    pub retain_messages: usize,
    pub retain_bytes: usize,
    pub send_queue: usize,
    pub send_queue_bytes: usize,
}

/// A subscriber's bounded send queue, filled by `commit`, drained by its
/// connection task.
pub struct Subscriber {
    pub id: u64,
    queue: Mutex<SubQueue>,
    /// Wakes the connection task: new messages or overflow.
    pub waker: AtomicWaker,
    overflowed: AtomicBool,
    /// Messages the task took from the queue but has not written yet; they
    /// count against the bound too.
    pub unsent: AtomicUsize,
}

#[derive(Default)]
struct SubQueue {
    msgs: VecDeque<Arc<Msg>>,
    bytes: usize,
}

impl Subscriber {
    /// True once the queue overflowed: the connection must be closed.
    pub fn overflowed(&self) -> bool {
        self.overflowed.load(Ordering::Acquire)
    }

    /// Moves every queued message into `out` (which must be empty).
    pub fn drain_into(&self, out: &mut VecDeque<Arc<Msg>>) {
        let mut q = self.queue.lock().unwrap_or_else(|p| p.into_inner());
        std::mem::swap(&mut q.msgs, out);
        q.bytes = 0;
    }

    /// Pushes one message; `Err(n)` if the bound is exceeded: the queue is
    /// then emptied (its `n` messages freed) and the subscriber marked overflowed.
    fn push(&self, msg: &Arc<Msg>, limits: &Limits) -> Result<(), usize> {
        let mut q = self.queue.lock().unwrap_or_else(|p| p.into_inner());
        let len = q.msgs.len() + self.unsent.load(Ordering::Relaxed);
        if len >= limits.send_queue || q.bytes + msg.size > limits.send_queue_bytes {
            let cleared = std::mem::take(&mut q.msgs).len();
            q.bytes = 0;
            drop(q);
            self.overflowed.store(true, Ordering::Release);
            self.waker.wake();
            return Err(cleared);
        }
        let was_empty = q.msgs.is_empty();
        q.msgs.push_back(msg.clone());
        q.bytes += msg.size;
        drop(q);
        if was_empty {
            self.waker.wake();
        }
        Ok(())
    }

    fn queued(&self) -> usize {
        self.queue
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .msgs
            .len()
    }
}

struct ChanState {
    retained: VecDeque<Arc<Msg>>,
    retained_bytes: usize,
    /// Highest committed seq (0: none yet).
    last_seq: u64,
    /// Msg id → seq of the retained messages (idempotent publish).
    ids: HashMap<Arc<str>, u64>,
    subs: HashMap<u64, Arc<Subscriber>>,
}

pub struct Channel {
    pub name: Box<str>,
    state: Mutex<ChanState>,
    /// `pusher_push_queue_length{channel}`.
    pub backlog: IntGauge,
    metrics: Arc<Metrics>,
    limits: Limits,
}

/// What a new subscriber starts with.
pub struct Subscription {
    pub sub: Arc<Subscriber>,
    /// Retained messages with seq > last_seq, in order.
    pub replay: Replay,
}

/// Messages fetched from the retained window per lock.
const REPLAY_CHUNK: usize = 256;

/// The retained messages still to replay to one subscriber: a seq range
/// fixed at subscription, fetched in chunks, so a resume from far behind
/// holds no snapshot of the whole window.
pub struct Replay {
    /// Next seq to fetch (after `buf`).
    next: u64,
    /// Last seq to replay (inclusive); later ones come through the queue.
    to: u64,
    buf: VecDeque<Arc<Msg>>,
}

impl Replay {
    /// Messages still to replay (fetched or not).
    pub fn remaining(&self) -> usize {
        self.buf.len() + (self.to + 1).saturating_sub(self.next) as usize
    }

    /// The next message to replay, fetching a chunk from `channel` when needed.
    pub fn pop(&mut self, channel: &Channel) -> Option<Arc<Msg>> {
        if self.buf.is_empty() && self.next <= self.to {
            channel.fill_replay(self);
        }
        self.buf.pop_front()
    }
}

impl Channel {
    fn new(name: &str, metrics: Arc<Metrics>, limits: Limits) -> Channel {
        Channel {
            name: name.into(),
            state: Mutex::new(ChanState {
                retained: VecDeque::new(),
                retained_bytes: 0,
                last_seq: 0,
                ids: HashMap::new(),
                subs: HashMap::new(),
            }),
            backlog: metrics.push_queue_length.with_label_values(&[name]),
            metrics,
            limits,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, ChanState> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Highest committed seq.
    pub fn last_seq(&self) -> u64 {
        self.lock().last_seq
    }

    /// The retained message published with msg id `id`, if any.
    pub fn find_id(&self, id: &str) -> Option<Arc<Msg>> {
        let st = self.lock();
        let seq = *st.ids.get(id)?;
        let i = st.retained.partition_point(|m| m.seq < seq);
        st.retained.get(i).filter(|m| m.seq == seq).cloned()
    }

    /// Oldest retained seq (last_seq + 1 when nothing is retained).
    pub fn first_retained_seq(&self) -> u64 {
        let st = self.lock();
        st.retained.front().map_or(st.last_seq + 1, |m| m.seq)
    }

    /// Adds durable messages (ascending seqs) to the window and every queue.
    pub fn commit(&self, msgs: &[Arc<Msg>]) {
        let mut st = self.lock();
        let mut dropped: Vec<u64> = Vec::new();
        let mut queued = 0i64;
        for msg in msgs {
            debug_assert!(msg.seq > st.last_seq);
            st.last_seq = msg.seq;
            st.retained_bytes += msg.size;
            st.retained.push_back(msg.clone());
            st.ids.insert(msg.id.clone(), msg.seq);
            while st.retained.len() > self.limits.retain_messages
                || (st.retained_bytes > self.limits.retain_bytes && st.retained.len() > 1)
            {
                let old = st.retained.pop_front().expect("non-empty");
                st.retained_bytes -= old.size;
                if st.ids.get(&old.id) == Some(&old.seq) {
                    st.ids.remove(&old.id);
                }
            }
            for (id, sub) in &st.subs {
                if sub.overflowed() {
                    continue;
                }
                match sub.push(msg, &self.limits) {
                    Ok(()) => queued += 1,
                    Err(cleared) => {
                        queued -= cleared as i64;
                        dropped.push(*id);
                    }
                }
            }
        }
        for id in &dropped {
            st.subs.remove(id);
        }
        drop(st);
        self.backlog.add(queued);
        if !dropped.is_empty() {
            self.metrics
                .slow_consumer_drops
                .inc_by(dropped.len() as u64);
        }
    }

    /// Registers a subscriber; with `last_seq`, snapshots the retained
    /// messages above it for replay (atomically with the registration).
    pub fn subscribe(&self, id: u64, last_seq: Option<u64>) -> Subscription {
        let sub = Arc::new(Subscriber {
            id,
            queue: Mutex::new(SubQueue::default()),
            waker: AtomicWaker::new(),
            overflowed: AtomicBool::new(false),
            unsent: AtomicUsize::new(0),
        });
        let mut st = self.lock();
        let first_retained = st.retained.front().map_or(st.last_seq + 1, |m| m.seq);
        // Seqs in the window are contiguous: the range is the count.
        let replay = match last_seq {
            Some(n) => Replay {
                next: (n + 1).max(first_retained),
                to: st.last_seq,
                buf: VecDeque::new(),
            },
            None => Replay {
                next: 1,
                to: 0,
                buf: VecDeque::new(),
            },
        };
        st.subs.insert(id, sub.clone());
        drop(st);
        self.backlog.add(replay.remaining() as i64);
        Subscription { sub, replay }
    }

    /// Fetches the next chunk of `r` from the retained window. Seqs that
    /// retention dropped meanwhile are skipped (the client sees the jump).
    fn fill_replay(&self, r: &mut Replay) {
        let st = self.lock();
        let i = st.retained.partition_point(|m| m.seq < r.next);
        r.buf.extend(
            st.retained
                .range(i..)
                .take(REPLAY_CHUNK)
                .take_while(|m| m.seq <= r.to)
                .cloned(),
        );
        drop(st);
        let first = r.buf.front().map_or(r.to + 1, |m| m.seq);
        let skipped = first.saturating_sub(r.next);
        if skipped > 0 {
            self.backlog.sub(skipped as i64);
        }
        r.next = r.buf.back().map_or(r.to + 1, |m| m.seq + 1);
    }

    /// Removes a subscriber; `unsent` is what its task still held.
    pub fn unsubscribe(&self, sub: &Subscriber, unsent: usize) {
        self.lock().subs.remove(&sub.id);
        let queued = if sub.overflowed() { 0 } else { sub.queued() };
        self.backlog.sub((queued + unsent) as i64);
    }

    pub fn subscriber_count(&self) -> usize {
        self.lock().subs.len()
    }
}

/// All channels by name.
pub struct Hub {
    channels: RwLock<HashMap<Box<str>, Arc<Channel>>>,
    pub metrics: Arc<Metrics>,
    pub limits: Limits,
    next_sub: AtomicU64,
    /// Set on SIGTERM/SIGINT: connections close with 1001 (going away).
    shutting_down: AtomicBool,
}

impl Hub {
    pub fn new(metrics: Arc<Metrics>, limits: Limits) -> Hub {
        Hub {
            channels: RwLock::new(HashMap::new()),
            metrics,
            limits,
            next_sub: AtomicU64::new(1),
            shutting_down: AtomicBool::new(false),
        }
    }

    pub fn shutting_down(&self) -> bool {
        self.shutting_down.load(Ordering::Acquire)
    }

    /// Tells every connection to close (they check the flag when woken).
    pub fn shut_down(&self) {
        self.shutting_down.store(true, Ordering::Release);
        let channels: Vec<Arc<Channel>> = self
            .channels
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .values()
            .cloned()
            .collect();
        for c in channels {
            for sub in c.lock().subs.values() {
                sub.waker.wake();
            }
        }
    }

    /// The channel `name`, created empty on first use.
    pub fn channel(&self, name: &str) -> Arc<Channel> {
        if let Some(c) = self
            .channels
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .get(name)
        {
            return c.clone();
        }
        let mut w = self.channels.write().unwrap_or_else(|p| p.into_inner());
        w.entry(name.into())
            .or_insert_with(|| Arc::new(Channel::new(name, self.metrics.clone(), self.limits)))
            .clone()
    }

    /// Forgets `channel` if nothing uses it any more (no message ever
    /// committed, no subscriber, no other holder), so subscribing to random
    /// names cannot grow the map. Holders are counted under the write lock:
    /// a publish in flight holds an `Arc` and keeps the channel.
    pub fn release(&self, channel: Arc<Channel>) {
        let mut w = self.channels.write().unwrap_or_else(|p| p.into_inner());
        let unused = {
            let st = channel.lock();
            st.last_seq == 0 && st.subs.is_empty()
        };
        // The map's reference and ours.
        if unused && Arc::strong_count(&channel) == 2 {
            w.remove(&channel.name);
            let _ = self
                .metrics
                .push_queue_length
                .remove_label_values(&[&channel.name]);
        }
    }

    /// Number of channels in memory.
    pub fn channel_count(&self) -> usize {
        self.channels
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .len()
    }

    pub fn next_subscriber_id(&self) -> u64 {
        self.next_sub.fetch_add(1, Ordering::Relaxed)
    }
}

/// Channel names: 1..=64 of `[A-Za-z0-9_.-]`, not starting with `.`
/// (they name directories of the data dir).
pub fn valid_channel_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 64
        && !name.starts_with('.')
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.'))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits(q: usize) -> Limits {
        Limits {
            retain_messages: 3,
            retain_bytes: 1 << 20,
            send_queue: q,
            send_queue_bytes: 1 << 20,
        }
    }

    fn msgs(ch: &str, seqs: std::ops::RangeInclusive<u64>) -> Vec<Arc<Msg>> {
        seqs.map(|s| Arc::new(Msg::new(ch, s, &format!("id{s}"), "x")))
            .collect()
    }

    #[test]
    fn frame_is_the_protocol_json() {
        let m = Msg::new("c", 7, "m-1", "hé \"q\"");
        assert_eq!(
            m.frame.as_str(),
            r#"{"channel":"c","seq":7,"id":"m-1","data":"hé \"q\""}"#
        );
    }

    #[test]
    fn resume_snapshot_and_live_queue_have_no_gap_and_no_dup() {
        let hub = Hub::new(Arc::new(Metrics::new()), limits(100));
        let ch = hub.channel("c");
        ch.commit(&msgs("c", 1..=5));
        let mut s = ch.subscribe(1, Some(3));
        // Retention keeps 3 (3, 4, 5); replay is above last_seq = 3.
        assert_eq!(s.replay.remaining(), 2);
        let replayed: Vec<u64> = std::iter::from_fn(|| s.replay.pop(&ch).map(|m| m.seq)).collect();
        assert_eq!(replayed, [4, 5]);
        ch.commit(&msgs("c", 6..=7));
        assert!(
            s.replay.pop(&ch).is_none(),
            "6 and 7 come through the queue"
        );
        let mut live = VecDeque::new();
        s.sub.drain_into(&mut live);
        assert_eq!(live.iter().map(|m| m.seq).collect::<Vec<_>>(), [6, 7]);
        assert_eq!(ch.first_retained_seq(), 5);
        assert_eq!(ch.backlog.get(), 4);
    }

    #[test]
    fn replay_skips_what_retention_dropped_meanwhile() {
        let hub = Hub::new(Arc::new(Metrics::new()), limits(100));
        let ch = hub.channel("c");
        ch.commit(&msgs("c", 1..=3));
        let mut s = ch.subscribe(1, Some(0));
        assert_eq!(ch.backlog.get(), 3);
        ch.commit(&msgs("c", 4..=5)); // evicts 1 and 2 (retain 3)
        assert_eq!(s.replay.pop(&ch).unwrap().seq, 3);
        assert!(s.replay.pop(&ch).is_none());
        // 3 replayed (not yet counted as written), 1 and 2 skipped, 4 and 5 queued.
        assert_eq!(ch.backlog.get(), 1 + 2);
    }

    #[test]
    fn ids_of_the_retained_window_are_found() {
        let hub = Hub::new(Arc::new(Metrics::new()), limits(100));
        let ch = hub.channel("c");
        ch.commit(&msgs("c", 1..=5));
        assert!(ch.find_id("id1").is_none(), "evicted by retention (3)");
        assert_eq!(ch.find_id("id4").unwrap().seq, 4);
        assert!(ch.find_id("nope").is_none());
    }

    #[test]
    fn overflow_marks_and_removes_the_subscriber() {
        let m = Arc::new(Metrics::new());
        let hub = Hub::new(m.clone(), limits(2));
        let ch = hub.channel("c");
        let s = ch.subscribe(1, None);
        ch.commit(&msgs("c", 1..=3));
        assert!(s.sub.overflowed());
        assert_eq!(ch.subscriber_count(), 0);
        assert_eq!(m.slow_consumer_drops.get(), 1);
        assert_eq!(ch.backlog.get(), 0);
    }

    #[test]
    fn unused_channels_are_forgotten_used_ones_kept() {
        let hub = Hub::new(Arc::new(Metrics::new()), limits(10));
        let ch = hub.channel("idle");
        let s = ch.subscribe(1, None);
        ch.unsubscribe(&s.sub, 0);
        hub.release(ch);
        assert_eq!(hub.channel_count(), 0);
        let ch = hub.channel("busy");
        ch.commit(&msgs("busy", 1..=1));
        hub.release(ch);
        assert_eq!(hub.channel_count(), 1);
        let held = hub.channel("held");
        let other = hub.channel("held");
        hub.release(other);
        assert_eq!(hub.channel_count(), 2, "a holder keeps it");
        drop(held);
    }

    #[test]
    fn channel_names() {
        assert!(valid_channel_name("prices.EUR-USD_1"));
        for bad in ["", ".", "..", ".x", "a/b", "a b", &"x".repeat(65)] {
            assert!(!valid_channel_name(bad), "{bad:?}");
        }
    }
}
