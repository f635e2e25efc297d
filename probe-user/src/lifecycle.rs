//! Connection lifecycle state machine: consumes the probes' ring-buffer
//! events (`sock:inet_sock_set_state`, accept, close, classified I/O, RST,
//! fork/exit) keyed by `struct sock *`, rebuilds each accepted connection's
//! phases (accept_wait, tls_handshake, ws_upgrade, first_push, lifetime),
//! who closed it, and per-connection totals, and aggregates them into HDR
//! histograms for the current stage and for the whole run. A TLS
//! connection closed before its handshake completed is a failure counted
//! by who closed it, never a handshake duration; values over a histogram's
//! 1 h bound are counted as clipped.

use crate::abi::{self, Event};
use crate::observe_summary::{Clipped, FailedByCloser};
use crate::phases::{self, IoPhases, IoRec, Span, TlsKind};
use hdrhistogram::Histogram;
use std::collections::{BTreeMap, HashMap};

/// Who closed a connection first.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub enum Closer {
    Local,
    Peer,
    Reset,
}

/// Microsecond histogram, 1 µs .. 1 h, 3 significant digits.
pub fn new_hist() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 3_600_000_000, 3).expect("static bounds are valid")
}

/// Records `v` or, beyond the histogram's bound, counts it in `clipped`.
fn rec(h: &mut Histogram<u64>, clipped: &mut u64, v: u64) {
    if h.record(v).is_err() {
        *clipped += 1;
    }
}

/// Per-destination outbound connects.
#[derive(Debug, Clone)]
pub struct OutAgg {
    pub count: u64,
    pub errors: u64,
    pub connect_us: Histogram<u64>,
}

/// Sums of phase time for the flame graph (µs).
#[derive(Debug, Clone, Copy, Default)]
pub struct FlameSums {
    pub accept_wait: u64,
    /// The TLS handshake, split by whose turn it was (phases::time_by_turn).
    pub tls_target_turns: u64,
    pub tls_peer_turns: u64,
    pub ws_upgrade: u64,
    pub first_push: u64,
    /// Lifetime after setup: not drawn in the setup graph (it would dwarf
    /// setup), kept for the record.
    pub rest_of_lifetime: u64,
}

/// Aggregates of one stage (or the whole run).
#[derive(Debug, Clone)]
pub struct Aggregates {
    pub accept_wait: Histogram<u64>,
    pub tls_handshake: Histogram<u64>,
    pub ws_upgrade: Histogram<u64>,
    pub first_push: Histogram<u64>,
    pub lifetime: Histogram<u64>,
    /// TLS handshakes measured by the OpenSSL uprobes (first entry → success).
    pub tls_exact: Histogram<u64>,
    pub srtt: Histogram<u64>,
    pub accepted: u64,
    /// Accepts whose connection the probes track (the rest: coverage gaps).
    pub accepted_tracked: u64,
    pub closed_local: u64,
    pub closed_peer: u64,
    pub reset: u64,
    /// Plain GETs answered with another status than 101.
    pub upgrade_refused: u64,
    pub bytes_in: u64,
    pub bytes_out: u64,
    pub max_send_queue: u64,
    pub tls12: u64,
    pub tls13: u64,
    /// Connections whose first read was a ClientHello.
    pub tls_attempts: u64,
    /// Handshakes completed (recorded or clipped in `tls_handshake`).
    pub tls_completed: u64,
    pub tls_failed: FailedByCloser,
    pub outbound: BTreeMap<String, OutAgg>,
    pub flame: FlameSums,
    pub clipped: Clipped,
}

impl Default for Aggregates {
    fn default() -> Self {
        Aggregates {
            accept_wait: new_hist(),
            tls_handshake: new_hist(),
            ws_upgrade: new_hist(),
            first_push: new_hist(),
            lifetime: new_hist(),
            tls_exact: new_hist(),
            srtt: new_hist(),
            accepted: 0,
            accepted_tracked: 0,
            closed_local: 0,
            closed_peer: 0,
            reset: 0,
            upgrade_refused: 0,
            bytes_in: 0,
            bytes_out: 0,
            max_send_queue: 0,
            tls12: 0,
            tls13: 0,
            tls_attempts: 0,
            tls_completed: 0,
            tls_failed: FailedByCloser::default(),
            outbound: BTreeMap::new(),
            flame: FlameSums::default(),
            clipped: Clipped::default(),
        }
    }
}

/// One finished (or still open) connection, for trace.json.
#[derive(Debug, Clone, serde::Serialize)]
pub struct ConnRecord {
    pub sk: u64,
    pub tgid: u32,
    pub fd: u32,
    pub established: Option<u64>,
    pub accepted: Option<u64>,
    pub closed: Option<u64>,
    pub tls: Option<TlsKind>,
    pub tls_handshake: Option<Span>,
    /// Exact handshake from the OpenSSL uprobes, when attached.
    pub tls_exact: Option<Span>,
    pub ws_upgrade: Option<Span>,
    pub first_push: Option<Span>,
    pub closer: Option<Closer>,
    pub bytes_in: u64,
    pub bytes_out: u64,
    pub max_send_queue: u32,
    pub srtt_us: u32,
    pub retransmits: u32,
}

impl ConnRecord {
    /// Time from establishment to the end of the last known setup phase.
    pub fn setup_ns(&self) -> u64 {
        let start = self.established.or(self.accepted).unwrap_or(0);
        let end = [
            self.accepted,
            self.tls_handshake.map(|s| s.end),
            self.ws_upgrade.map(|s| s.end),
            self.first_push.map(|s| s.end),
        ]
        .into_iter()
        .flatten()
        .max()
        .unwrap_or(start);
        end.saturating_sub(start)
    }
}

#[derive(Debug, Default)]
struct Conn {
    tgid: u32,
    fd: u32,
    est: Option<u64>,
    accept: Option<u64>,
    io: Vec<IoRec>,
    phases: IoPhases,
    tls_exact: Option<Span>,
    accept_wait_done: bool,
    first_close: Option<Closer>,
    reset: bool,
    /// The RST that came first was the peer's (received).
    reset_by_peer: bool,
    /// The first read was a ClientHello.
    tls_attempt: bool,
    stats: Option<Event>,
}

impl Conn {
    fn record(&self, sk: u64, closed: Option<u64>, closer: Option<Closer>) -> ConnRecord {
        let s = self.stats.unwrap_or_default();
        ConnRecord {
            sk,
            tgid: self.tgid,
            fd: self.fd,
            established: self.est,
            accepted: self.accept,
            closed,
            tls: self.phases.tls,
            tls_handshake: self.phases.tls_handshake,
            tls_exact: self.tls_exact,
            ws_upgrade: self.phases.ws_upgrade,
            first_push: self.phases.first_push,
            closer,
            bytes_in: s.bytes_in,
            bytes_out: s.bytes_out,
            max_send_queue: s.max_wmem,
            srtt_us: s.srtt_us,
            retransmits: s.retrans,
        }
    }
}

struct Pending {
    start: u64,
    dest: String,
}

/// A bounded sample of connections for trace.json: the first ones and the
/// slowest (by setup time).
#[derive(Debug, Default, Clone)]
pub struct TraceSample {
    pub first: Vec<ConnRecord>,
    pub slowest: Vec<ConnRecord>,
}

pub const TRACE_FIRST: usize = 100;
pub const TRACE_SLOWEST: usize = 20;

impl TraceSample {
    fn offer(&mut self, r: ConnRecord) {
        if self.first.len() < TRACE_FIRST {
            self.first.push(r.clone());
        }
        let setup = r.setup_ns();
        if self.slowest.len() < TRACE_SLOWEST {
            self.slowest.push(r);
        } else if let Some((i, min)) = self
            .slowest
            .iter()
            .enumerate()
            .min_by_key(|(_, c)| c.setup_ns())
        {
            if setup > min.setup_ns() {
                self.slowest[i] = r;
            }
        }
    }
}

/// The state machine over all connections of the target.
pub struct Tracker {
    io_limit: usize,
    target: u32,
    conns: HashMap<u64, Conn>,
    outs: HashMap<u64, Pending>,
    pub stage: Aggregates,
    pub total: Aggregates,
    pub trace: TraceSample,
    pub target_exited: bool,
    pub tasks_followed: u64,
}

fn us(ns: u64) -> u64 {
    ns / 1000
}

impl Tracker {
    pub fn new(target: u32, io_limit: usize) -> Tracker {
        Tracker {
            io_limit,
            target,
            conns: HashMap::new(),
            outs: HashMap::new(),
            stage: Aggregates::default(),
            total: Aggregates::default(),
            trace: TraceSample::default(),
            target_exited: false,
            tasks_followed: 0,
        }
    }

    /// The target `pid` is killed on purpose (kill-restart fault): its
    /// exit does not end the run.
    pub fn expect_exit(&mut self, pid: u32) {
        if self.target == pid {
            self.target = 0;
        }
    }

    /// Follows a restarted target.
    pub fn retarget(&mut self, pid: u32) {
        self.target = pid;
        self.target_exited = false;
    }

    /// Starts a new stage: the stage aggregates restart from zero.
    pub fn reset_stage(&mut self) {
        self.stage = Aggregates::default();
    }

    fn both(&mut self, f: impl Fn(&mut Aggregates)) {
        f(&mut self.stage);
        f(&mut self.total);
    }

    /// Accepted connections not closed yet.
    pub fn open_connections(&self) -> u64 {
        self.conns.values().filter(|c| c.accept.is_some()).count() as u64
    }

    /// Connections established in the kernel but never accepted (yet).
    pub fn established_not_accepted(&self) -> u64 {
        self.conns
            .values()
            .filter(|c| c.est.is_some() && c.accept.is_none())
            .count() as u64
    }

    /// Records of connections still open (for trace.json at the end).
    pub fn open_records(&self) -> Vec<ConnRecord> {
        self.conns
            .iter()
            .filter(|(_, c)| c.accept.is_some())
            .map(|(sk, c)| c.record(*sk, None, None))
            .collect()
    }

    pub fn handle(&mut self, e: &Event) {
        match e.kind {
            abi::EV_STATE if e.dir == 1 => self.on_outbound(e),
            abi::EV_STATE => self.on_state(e),
            abi::EV_ACCEPT => self.on_accept(e),
            abi::EV_IO => self.on_io(e),
            abi::EV_CLOSE_FD => self.on_close_fd(e),
            abi::EV_RESET => {
                if let Some(c) = self.conns.get_mut(&e.sk) {
                    if !c.reset {
                        c.reset_by_peer = e.dir == 0;
                    }
                    c.reset = true;
                }
            }
            abi::EV_TLS_DONE => self.on_tls_done(e),
            // Processes only: the probe ignores new threads.
            abi::EV_FORK => self.tasks_followed += 1,
            abi::EV_EXIT if e.tgid == self.target => self.target_exited = true,
            _ => {}
        }
    }

    fn on_state(&mut self, e: &Event) {
        match e.new_state {
            abi::TCP_ESTABLISHED => {
                let c = self.conns.entry(e.sk).or_default();
                if c.accept.is_some() && c.est.is_some() {
                    // The sock was reused without a CLOSE we saw: start over.
                    *c = Conn::default();
                }
                c.est = Some(e.ts_ns);
                self.maybe_accept_wait(e.sk);
            }
            abi::TCP_FIN_WAIT1 => {
                if let Some(c) = self.conns.get_mut(&e.sk) {
                    c.first_close.get_or_insert(Closer::Local);
                }
            }
            abi::TCP_CLOSE_WAIT => {
                if let Some(c) = self.conns.get_mut(&e.sk) {
                    c.first_close.get_or_insert(Closer::Peer);
                }
            }
            abi::TCP_CLOSE => {
                if let Some(c) = self.conns.remove(&e.sk) {
                    self.finish(e.sk, c, e.ts_ns);
                }
            }
            _ => {}
        }
    }

    fn finish(&mut self, sk: u64, c: Conn, ts: u64) {
        if c.accept.is_none() {
            // Never accepted (backlog overflow, or closed in the queue).
            return;
        }
        let closer = if c.reset {
            Closer::Reset
        } else {
            // Leaving ESTABLISHED straight to CLOSE without a FIN is an abort.
            c.first_close.unwrap_or(Closer::Reset)
        };
        let life = c.est.map(|est| ts.saturating_sub(est));
        let p = c.phases;
        // A handshake that never completed failed; who ended it: a RST
        // received is always seen (the socket is still open in the
        // target), one the server sends at close() is not (close() already
        // dropped the sock from the probes' map), so a close without FIN
        // or RST seen is the server's abort.
        let tls_failed = c.tls_attempt && p.tls_handshake.is_none();
        let peer_rst = c.reset && c.reset_by_peer;
        let peer_fin = !c.reset && c.first_close == Some(Closer::Peer);
        self.both(|a| {
            match closer {
                Closer::Local => a.closed_local += 1,
                Closer::Peer => a.closed_peer += 1,
                Closer::Reset => a.reset += 1,
            }
            if tls_failed {
                if peer_rst {
                    a.tls_failed.peer_rst += 1;
                } else if peer_fin {
                    a.tls_failed.peer_fin += 1;
                } else {
                    a.tls_failed.server += 1;
                }
            }
            if let Some(l) = life {
                rec(&mut a.lifetime, &mut a.clipped.lifetime, us(l));
                let used = [
                    c.est.zip(c.accept).map(|(e, x)| x.saturating_sub(e)),
                    p.tls_handshake.map(|s| s.ns()),
                    p.ws_upgrade.map(|s| s.ns()),
                    p.first_push.map(|s| s.ns()),
                ];
                let used: u64 = used.into_iter().flatten().sum();
                a.flame.rest_of_lifetime += us(l.saturating_sub(used));
            }
        });
        let rec = c.record(sk, Some(ts), Some(closer));
        self.trace.offer(rec);
    }

    fn maybe_accept_wait(&mut self, sk: u64) {
        let Some(c) = self.conns.get_mut(&sk) else {
            return;
        };
        if c.accept_wait_done {
            return;
        }
        if let (Some(est), Some(acc)) = (c.est, c.accept) {
            c.accept_wait_done = true;
            // accept() can return before the softirq's ESTABLISHED event
            // is reserved on another CPU: clamp at zero.
            let w = us(acc.saturating_sub(est));
            self.both(|a| {
                rec(&mut a.accept_wait, &mut a.clipped.accept_wait, w);
                a.flame.accept_wait += w;
            });
        }
    }

    fn on_accept(&mut self, e: &Event) {
        let c = self.conns.entry(e.sk).or_default();
        if c.accept.is_some() {
            *c = Conn::default();
        }
        c.accept = Some(e.ts_ns);
        c.tgid = e.tgid;
        c.fd = e.fd;
        let tracked = u64::from(e.dir == 1);
        self.both(|a| {
            a.accepted += 1;
            a.accepted_tracked += tracked;
        });
        self.maybe_accept_wait(e.sk);
    }

    fn on_io(&mut self, e: &Event) {
        let limit = self.io_limit;
        let Some(c) = self.conns.get_mut(&e.sk) else {
            return;
        };
        // Phases are learnt in order and count once: after the first push
        // (or a refused upgrade) no later call can add one, so neither
        // store nor derive again (each derive reads every stored call).
        if c.io.len() >= limit || c.phases.first_push.is_some() || c.phases.upgrade_refused {
            return;
        }
        let first_read = e.dir == abi::DIR_READ && c.io.iter().all(|r| r.dir != abi::DIR_READ);
        let attempt = first_read && e.class == abi::CLASS_TLS_HANDSHAKE;
        c.tls_attempt |= attempt;
        c.io.push(IoRec {
            ts: e.ts_ns,
            dir: e.dir,
            class: e.class,
            detail: e.detail,
            ret: e.ret,
        });
        let before = c.phases;
        let now = phases::derive(&c.io);
        let tls_turns = match (before.tls_handshake, now.tls_handshake) {
            (None, Some(s)) => phases::time_by_turn(&c.io, s),
            _ => (0, 0),
        };
        // A phase counts once, when it first becomes known.
        let mut next = before;
        let mut newly: [Option<u64>; 3] = [None; 3];
        let refused_now = now.upgrade_refused && !before.upgrade_refused;
        next.upgrade_refused |= now.upgrade_refused;
        if before.tls_handshake.is_none() {
            if let Some(s) = now.tls_handshake {
                next.tls_handshake = Some(s);
                next.tls = now.tls;
                newly[0] = Some(us(s.ns()));
            }
        }
        if before.ws_upgrade.is_none() {
            if let Some(s) = now.ws_upgrade {
                next.ws_upgrade = Some(s);
                newly[1] = Some(us(s.ns()));
            }
        }
        if before.first_push.is_none() {
            if let Some(s) = now.first_push {
                next.first_push = Some(s);
                newly[2] = Some(us(s.ns()));
            }
        }
        c.phases = next;
        if next.first_push.is_some() || next.upgrade_refused {
            // complete: the calls kept for deriving are not needed again
            c.io = Vec::new();
        }
        let tls = next.tls;
        self.both(|a| {
            a.upgrade_refused += u64::from(refused_now);
            a.tls_attempts += u64::from(attempt);
            if let Some(v) = newly[0] {
                a.tls_completed += 1;
                rec(&mut a.tls_handshake, &mut a.clipped.tls_handshake, v);
                a.flame.tls_target_turns += us(tls_turns.0);
                a.flame.tls_peer_turns += us(tls_turns.1);
                match tls {
                    Some(TlsKind::Tls12) => a.tls12 += 1,
                    Some(TlsKind::Tls13Heuristic) => a.tls13 += 1,
                    None => {}
                }
            }
            if let Some(v) = newly[1] {
                rec(&mut a.ws_upgrade, &mut a.clipped.ws_upgrade, v);
                a.flame.ws_upgrade += v;
            }
            if let Some(v) = newly[2] {
                rec(&mut a.first_push, &mut a.clipped.first_push, v);
                a.flame.first_push += v;
            }
        });
    }

    fn on_tls_done(&mut self, e: &Event) {
        // A handshake whose socket was never seen cannot be attributed.
        let Some(c) = self.conns.get_mut(&e.sk) else {
            return;
        };
        if c.tls_exact.is_some() {
            return;
        }
        let span = Span {
            start: e.bytes_in,
            end: e.ts_ns,
        };
        c.tls_exact = Some(span);
        let v = us(span.ns());
        self.both(|a| {
            rec(&mut a.tls_exact, &mut a.clipped.tls_handshake_exact, v);
        });
    }

    fn on_close_fd(&mut self, e: &Event) {
        let srtt = u64::from(e.srtt_us);
        self.both(|a| {
            a.bytes_in += e.bytes_in;
            a.bytes_out += e.bytes_out;
            a.max_send_queue = a.max_send_queue.max(u64::from(e.max_wmem));
            if srtt > 0 {
                rec(&mut a.srtt, &mut a.clipped.srtt, srtt);
            }
        });
        if let Some(c) = self.conns.get_mut(&e.sk) {
            c.stats = Some(*e);
        }
    }

    fn on_outbound(&mut self, e: &Event) {
        match e.new_state {
            abi::TCP_SYN_SENT => {
                let dest = e.remote().to_string();
                self.both(|a| {
                    a.outbound
                        .entry(dest.clone())
                        .or_insert_with(|| OutAgg {
                            count: 0,
                            errors: 0,
                            connect_us: new_hist(),
                        })
                        .count += 1;
                });
                self.outs.insert(
                    e.sk,
                    Pending {
                        start: e.ts_ns,
                        dest,
                    },
                );
            }
            abi::TCP_ESTABLISHED => {
                if let Some(p) = self.outs.remove(&e.sk) {
                    let v = us(e.ts_ns.saturating_sub(p.start));
                    self.both(|a| {
                        if let Some(o) = a.outbound.get_mut(&p.dest) {
                            rec(&mut o.connect_us, &mut a.clipped.outbound_connect, v);
                        }
                    });
                }
            }
            abi::TCP_CLOSE => {
                if let Some(p) = self.outs.remove(&e.sk) {
                    self.both(|a| {
                        if let Some(o) = a.outbound.get_mut(&p.dest) {
                            o.errors += 1;
                        }
                    });
                }
            }
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::abi::*;

    /// A small model of what the tracker must count: an accept opens a
    /// connection (a second accept or a second ESTABLISHED of an accepted
    /// sock starts it over), a CLOSE of an accepted connection ends it.
    #[derive(Default, Clone, Copy)]
    struct ModelConn {
        accepted: bool,
        est: bool,
    }

    proptest::proptest! {
        /// Arbitrary interleavings of every event kind over a few socks,
        /// with arbitrary times and stage cuts: never panics, and accepts,
        /// closes and lifetimes agree with the model in every stage and in
        /// total.
        #[test]
        fn arbitrary_event_streams_agree_with_the_model(
            evs in proptest::collection::vec(
                (0u8..12, 1u64..5, 0u64..1_000_000_000, 0u8..10, proptest::prelude::any::<u8>()),
                0..200,
            ),
            cuts in proptest::collection::vec(0usize..200, 0..4),
        ) {
            let mut t = Tracker::new(1, 8);
            let mut model: HashMap<u64, ModelConn> = HashMap::new();
            let (mut acc, mut closes) = (vec![0u64], vec![0u64]);
            for (i, &(kind, sk, ts, class, b)) in evs.iter().enumerate() {
                if cuts.contains(&i) {
                    t.reset_stage();
                    acc.push(0);
                    closes.push(0);
                }
                let mut e = ev(EV_STATE, sk, ts);
                match kind {
                    0 => e.new_state = TCP_ESTABLISHED,
                    1 => e.new_state = TCP_FIN_WAIT1,
                    2 => e.new_state = TCP_CLOSE_WAIT,
                    3 => e.new_state = TCP_CLOSE,
                    4 => e.kind = EV_ACCEPT,
                    5 | 6 => {
                        e.kind = EV_IO;
                        e.dir = kind - 5;
                        e.class = class;
                        e.detail = b;
                        e.ret = i32::from(b) - 20;
                    }
                    7 => e.kind = EV_CLOSE_FD,
                    8 => {
                        e.kind = EV_RESET;
                        e.dir = b & 1;
                    }
                    9 => e.kind = EV_TLS_DONE,
                    10 => {
                        e.kind = EV_STATE;
                        e.dir = 1;
                        e.new_state = if b & 1 == 0 { TCP_SYN_SENT } else { TCP_CLOSE };
                    }
                    _ => e.kind = u32::from(b),
                }
                t.handle(&e);
                let k = acc.len() - 1;
                match (e.kind, e.dir, e.new_state) {
                    (EV_ACCEPT, _, _) => {
                        let c = model.entry(sk).or_default();
                        if c.accepted {
                            *c = ModelConn::default();
                        }
                        c.accepted = true;
                        acc[k] += 1;
                    }
                    (EV_STATE, 0, TCP_ESTABLISHED) => {
                        let c = model.entry(sk).or_default();
                        if c.accepted && c.est {
                            *c = ModelConn::default();
                        }
                        c.est = true;
                    }
                    (EV_STATE, 0, TCP_CLOSE) if model.remove(&sk).is_some_and(|c| c.accepted) => {
                        closes[k] += 1;
                    }
                    _ => {}
                }
            }
            let closed = |a: &Aggregates| a.closed_local + a.closed_peer + a.reset;
            proptest::prop_assert_eq!(t.stage.accepted, *acc.last().unwrap());
            proptest::prop_assert_eq!(closed(&t.stage), *closes.last().unwrap());
            proptest::prop_assert_eq!(t.total.accepted, acc.iter().sum::<u64>());
            proptest::prop_assert_eq!(closed(&t.total), closes.iter().sum::<u64>());
            proptest::prop_assert!(t.total.lifetime.len() <= closed(&t.total));
            proptest::prop_assert_eq!(
                t.open_connections(),
                model.values().filter(|c| c.accepted).count() as u64
            );
        }
    }

    fn ev(kind: u32, sk: u64, ts: u64) -> Event {
        Event {
            kind,
            sk,
            ts_ns: ts,
            ..Default::default()
        }
    }
    fn state(sk: u64, ts: u64, new: u16) -> Event {
        Event {
            new_state: new,
            ..ev(EV_STATE, sk, ts)
        }
    }
    fn io(sk: u64, ts: u64, dir: u8, class: u8, ret: i32) -> Event {
        Event {
            dir,
            class,
            ret,
            ..ev(EV_IO, sk, ts)
        }
    }

    /// Feeds events as the decoder would see them: through the byte layout.
    fn feed(t: &mut Tracker, events: &[Event]) {
        for e in events {
            let bytes = e.to_bytes();
            t.handle(&Event::decode(&bytes).unwrap());
        }
    }

    #[test]
    fn plain_connection_phases_and_peer_close() {
        let mut t = Tracker::new(1, 24);
        let ms = 1_000_000;
        feed(
            &mut t,
            &[
                state(7, 0, TCP_ESTABLISHED),
                ev(EV_ACCEPT, 7, 3 * ms),
                io(7, 4 * ms, DIR_READ, CLASS_HTTP_GET, 200),
                io(7, 5 * ms, DIR_WRITE, CLASS_UNINSPECTED, 129),
                io(7, 9 * ms, DIR_WRITE, CLASS_UNINSPECTED, 20),
                state(7, 20 * ms, TCP_CLOSE_WAIT),
                Event {
                    bytes_in: 200,
                    bytes_out: 149,
                    srtt_us: 50,
                    ..ev(EV_CLOSE_FD, 7, 21 * ms)
                },
                state(7, 22 * ms, TCP_CLOSE),
            ],
        );
        let a = &t.total;
        assert_eq!(a.accepted, 1);
        assert_eq!(a.closed_peer, 1);
        assert_eq!(a.accept_wait.len(), 1);
        assert!(a.accept_wait.equivalent(a.accept_wait.max(), 3000));
        assert!(a.ws_upgrade.equivalent(a.ws_upgrade.max(), 1000));
        assert!(a.first_push.equivalent(a.first_push.max(), 4000));
        assert!(a.lifetime.equivalent(a.lifetime.max(), 22000));
        assert_eq!(a.tls_handshake.len(), 0);
        assert_eq!(a.bytes_in, 200);
        assert_eq!(t.open_connections(), 0);
        assert_eq!(t.trace.first.len(), 1);
        assert_eq!(t.trace.first[0].bytes_out, 149);
    }

    #[test]
    fn local_close_reset_and_stage_reset() {
        let mut t = Tracker::new(1, 24);
        feed(
            &mut t,
            &[
                state(1, 0, TCP_ESTABLISHED),
                ev(EV_ACCEPT, 1, 10),
                state(1, 100, TCP_FIN_WAIT1),
                state(1, 200, TCP_CLOSE),
            ],
        );
        t.reset_stage();
        feed(
            &mut t,
            &[
                state(2, 0, TCP_ESTABLISHED),
                ev(EV_ACCEPT, 2, 10),
                ev(EV_RESET, 2, 50),
                state(2, 60, TCP_CLOSE),
                // A CLOSE of a sock never accepted is not a connection.
                state(3, 0, TCP_ESTABLISHED),
                state(3, 70, TCP_CLOSE),
            ],
        );
        assert_eq!(t.total.closed_local, 1);
        assert_eq!(t.total.reset, 1);
        assert_eq!(t.total.accepted, 2);
        assert_eq!(t.stage.accepted, 1);
        assert_eq!(t.stage.closed_local, 0);
        assert_eq!(t.stage.reset, 1);
    }

    #[test]
    fn accept_before_established_event_clamps_to_zero() {
        let mut t = Tracker::new(1, 24);
        feed(
            &mut t,
            &[ev(EV_ACCEPT, 5, 100), state(5, 120, TCP_ESTABLISHED)],
        );
        assert_eq!(t.total.accept_wait.len(), 1);
        assert!(t.total.accept_wait.equivalent(t.total.accept_wait.max(), 0));
    }

    #[test]
    fn outbound_latency_and_errors_per_destination() {
        let mut t = Tracker::new(1, 24);
        let mut syn = state(9, 1_000, TCP_SYN_SENT);
        syn.dir = 1;
        syn.family = libc::AF_INET as u16;
        syn.daddr[..4].copy_from_slice(&[127, 0, 0, 1]);
        syn.dport = 6379;
        let mut est = state(9, 2_001_000, TCP_ESTABLISHED);
        est.dir = 1;
        let mut syn2 = syn;
        syn2.sk = 10;
        let mut fail = state(10, 3_000_000, TCP_CLOSE);
        fail.dir = 1;
        feed(&mut t, &[syn, est, syn2, fail]);
        let o = &t.total.outbound["127.0.0.1:6379"];
        assert_eq!(o.count, 2);
        assert_eq!(o.errors, 1);
        assert_eq!(o.connect_us.len(), 1);
        assert!(o.connect_us.equivalent(o.connect_us.max(), 2000));
    }

    #[test]
    fn exact_tls_from_uprobes_is_kept_apart() {
        let mut t = Tracker::new(1, 24);
        let done = Event {
            bytes_in: 2_000_000,
            ..ev(EV_TLS_DONE, 4, 3_500_000)
        };
        feed(
            &mut t,
            &[
                state(4, 0, TCP_ESTABLISHED),
                ev(EV_ACCEPT, 4, 1_000_000),
                done,
            ],
        );
        assert_eq!(t.total.tls_exact.len(), 1);
        assert!(t.total.tls_exact.equivalent(t.total.tls_exact.max(), 1500));
        // Unknown socks and repeats are ignored.
        feed(&mut t, &[done, Event { sk: 99, ..done }]);
        assert_eq!(t.total.tls_exact.len(), 1);
        assert_eq!(t.total.tls_handshake.len(), 0);
    }

    #[test]
    fn a_failed_tls_handshake_is_a_failure_by_closer_not_a_duration() {
        let mut t = Tracker::new(1, 24);
        // Client rejects the certificate: CCS + encrypted alert, then FIN.
        let hs = |sk: u64| {
            vec![
                state(sk, 0, TCP_ESTABLISHED),
                ev(EV_ACCEPT, sk, 10),
                io(sk, 20, DIR_READ, CLASS_TLS_HANDSHAKE, 517),
                io(sk, 30, DIR_WRITE, CLASS_TLS_HANDSHAKE, 2000),
                io(sk, 40, DIR_READ, CLASS_TLS_CCS, 6),
                io(sk, 41, DIR_READ, CLASS_TLS_APPDATA, 24),
            ]
        };
        let mut evs = hs(1);
        evs.extend([state(1, 50, TCP_CLOSE_WAIT), state(1, 60, TCP_CLOSE)]);
        evs.extend(hs(2));
        evs.extend([
            Event {
                dir: 0,
                ..ev(EV_RESET, 2, 50)
            },
            state(2, 60, TCP_CLOSE),
        ]);
        evs.extend(hs(3));
        evs.extend([state(3, 50, TCP_FIN_WAIT1), state(3, 60, TCP_CLOSE)]);
        feed(&mut t, &evs);
        let a = &t.total;
        assert_eq!(a.tls_attempts, 3);
        assert_eq!(a.tls_completed, 0);
        assert_eq!(a.tls_handshake.len(), 0);
        assert_eq!(
            a.tls_failed,
            FailedByCloser {
                peer_fin: 1,
                peer_rst: 1,
                server: 1
            }
        );
    }

    #[test]
    fn values_over_an_hour_are_counted_as_clipped() {
        let mut t = Tracker::new(1, 24);
        let hour = 3_600_000_000_000u64;
        feed(
            &mut t,
            &[
                state(1, 0, TCP_ESTABLISHED),
                ev(EV_ACCEPT, 1, 10),
                state(1, 2 * hour, TCP_CLOSE_WAIT),
                state(1, 2 * hour + 1, TCP_CLOSE),
            ],
        );
        assert_eq!(t.total.lifetime.len(), 0);
        assert_eq!(t.total.clipped.lifetime, 1);
        assert_eq!(t.total.clipped.total(), 1);
    }

    #[test]
    fn target_exit_is_noticed() {
        let mut t = Tracker::new(42, 24);
        let mut e = ev(EV_EXIT, 0, 1);
        e.tgid = 41;
        t.handle(&e);
        assert!(!t.target_exited);
        e.tgid = 42;
        t.handle(&e);
        assert!(t.target_exited);
    }
}
