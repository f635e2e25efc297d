//! Phase reconstruction of one accepted connection from its first N
//! read/send calls seen by the kernel (`PS_EV_IO`): tls_handshake,
//! ws_upgrade and first_push. Pure functions over [`IoRec`] so they are unit
//! tested from fixtures.
//!
//! Reads and sends carry a class of their first bytes (TLS record header,
//! `GET `, `HTTP/1.1 101`, other HTTP status, WebSocket frame header).
//! They are seen at the raw tracepoints `sock:sock_recv_length` and
//! `sock:sock_send_length`, after the call (a call's time is its *end*);
//! the kernel classifies them from the syscall's user buffer. A call made
//! outside the read/write-family syscalls (io_uring, sendfile) is
//! [`abi::CLASS_UNINSPECTED`]: not inspected, and then inferred from its
//! place in the order of calls.
//!
//! # What is exact and what is a heuristic
//!
//! Plain WebSocket is exact at syscall granularity: ws_upgrade runs from
//! the read that returned `GET ` to the first send after it when that send
//! starts `HTTP/1.1 101`; first_push from that send to the next send that
//! is a WebSocket data frame (a ping or close is no push). A GET answered
//! with any other status (4xx, a redirect) is a refused upgrade: no
//! ws_upgrade and no first_push, counted as `upgrade_refused`. When the
//! response was not inspected (CLASS_UNINSPECTED), the first send after
//! the GET is taken for the 101 and the next send for the first push.
//! Failed calls (EAGAIN, EOF) are not calls here (the kernel emits only
//! calls that moved bytes).
//!
//! TLS is inferred from the read record headers and the turn-taking of
//! reads and sends (a *turn* is a run of calls in one direction), because
//! after the ServerHello a TLS 1.3 connection shows only 0x17 records:
//!
//! * turn 0 (read) carries the ClientHello (0x16): the handshake starts at
//!   the first read;
//! * turn 1 (send) is the server's first flight; turn 2 (read) the
//!   client's second flight. If turn 2 starts with a handshake record (0x16:
//!   ClientKeyExchange/Certificate) the connection is TLS 1.2: the handshake
//!   ends at the server's CCS/Finished flight, the first send of turn 3.
//!   Otherwise (0x14 compat CCS or 0x17) it is TLS 1.3: the handshake ends
//!   at the first read of turn 2, when the client Finished arrives (the
//!   server verifies it within that read's processing; error: the
//!   verification time, microseconds).
//! * A handshake counts only once the traffic after it confirms it, since
//!   a client that rejects the certificate answers the server's first
//!   flight with an alert that looks like the Finished (turn 2, record
//!   type 0x14 or 0x17) and then closes: TLS 1.3 is confirmed by a turn-3
//!   send larger than an encrypted alert ([`TLS13_ALERT_MAX`] bytes:
//!   tickets, a response) or by a turn 4; TLS 1.2 by a turn-3 send that is
//!   not an alert. A turn 2 (or turn-3 send) that is a plain alert record
//!   is a failure. lifecycle.rs counts a connection closed with its
//!   handshake unconfirmed as failed, by who closed it.
//! * TLS 1.3 servers send session tickets right after the handshake. If
//!   turn 2 carried no more than [`FINISHED_FLIGHT_MAX`] bytes, turn 3 is
//!   taken to be tickets and the upgrade runs from the first read of turn 4
//!   (the request) to the first send of turn 5 (the 101). If turn 2
//!   carried more, the request arrived with the Finished: the upgrade
//!   starts at the handshake end, and the 101 is the second send of turn 3
//!   when its first read alone held the request (rustls writes all tickets
//!   in one writev), else the first send of turn 3 (no tickets were sent).
//!
//! Known errors of the TLS heuristic (the report says the TLS phases are
//! inferred): a TLS 1.2 resumed (abbreviated) handshake looks like TLS 1.3;
//! a HelloRetryRequest adds a round trip that shifts the turns; client
//! certificates make the client's second flight larger than
//! [`FINISHED_FLIGHT_MAX`]; a server sending no tickets while the request
//! was coalesced with the Finished has its first push taken for the 101;
//! encrypted, a refused upgrade cannot be told from a 101. Under TLS,
//! first_push ends at the next send after the 101 send. Send times are the
//! end of each send (a few µs after its start for these sizes).
//!
//! Where the target maps OpenSSL's libssl, uprobes on `SSL_do_handshake`
//! measure the handshake exactly (`tls_handshake_exact_ms`, lifecycle.rs);
//! against NGINX the inference came out ~0.1 ms (15 %) shorter at the
//! median, since it stops at the read of the client Finished.

use crate::abi::{self, DIR_READ, DIR_WRITE};
use serde::Serialize;

/// Largest client second flight of a TLS 1.3 handshake without client
/// certificates: CCS (6) + Finished record (5 + 4 + 48 + 1 + 16), rounded up.
pub const FINISHED_FLIGHT_MAX: i64 = 100;

/// Largest encrypted TLS 1.3 alert record: header (5) + alert (2) +
/// content type (1) + AEAD tag (16).
pub const TLS13_ALERT_MAX: i32 = 24;

/// One read or send of a connection (from `PS_EV_IO`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IoRec {
    pub ts: u64,
    pub dir: u8,
    pub class: u8,
    pub detail: u8,
    pub ret: i32,
}

/// A phase: kernel monotonic timestamps (ns).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct Span {
    pub start: u64,
    pub end: u64,
}

impl Span {
    pub fn ns(&self) -> u64 {
        self.end.saturating_sub(self.start)
    }
}

/// Whose turn the time of `span` was, from the target's calls inside it:
/// after the target read something the ball is in its court until it
/// writes (its own work), after it wrote it waits for the peer until its
/// next read. Returns (target's turns, peer's turns) in ns; they add up to
/// the span.
pub fn time_by_turn(io: &[IoRec], span: Span) -> (u64, u64) {
    let (mut target, mut peer) = (0, 0);
    // The span opens with the target's read of the peer's first record.
    let mut at = span.start;
    let mut targets_turn = true;
    for r in io.iter().filter(|r| r.ts > span.start && r.ts <= span.end) {
        // Calls from several CPUs may arrive slightly out of time order.
        let d = r.ts.saturating_sub(at);
        if targets_turn {
            target += d;
        } else {
            peer += d;
        }
        at = at.max(r.ts);
        targets_turn = r.dir == abi::DIR_READ;
    }
    let rest = span.end.saturating_sub(at);
    if targets_turn {
        target += rest;
    } else {
        peer += rest;
    }
    (target, peer)
}

/// How the TLS handshake end was found.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub enum TlsKind {
    /// TLS 1.2 (read record types): end at the server's CCS/Finished send.
    Tls12,
    /// TLS 1.3: end inferred from turn-taking.
    Tls13Heuristic,
}

/// Phases derived from the I/O calls seen so far (None: not yet or never).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct IoPhases {
    pub tls: Option<TlsKind>,
    pub tls_handshake: Option<Span>,
    pub ws_upgrade: Option<Span>,
    pub first_push: Option<Span>,
    /// A plain GET answered with another status than 101.
    pub upgrade_refused: bool,
}

#[derive(Debug, Clone, Copy)]
struct Turn {
    dir: u8,
    first: usize,
    calls: usize,
    bytes: i64,
}

fn turns(io: &[IoRec]) -> Vec<Turn> {
    let mut out: Vec<Turn> = Vec::new();
    for (i, r) in io.iter().enumerate() {
        match out.last_mut() {
            Some(t) if t.dir == r.dir => {
                t.calls += 1;
                t.bytes += i64::from(r.ret);
            }
            _ => out.push(Turn {
                dir: r.dir,
                first: i,
                calls: 1,
                bytes: i64::from(r.ret),
            }),
        }
    }
    out
}

/// The send after index `i` (any turn), as the end of first_push.
fn next_write(io: &[IoRec], i: usize) -> Option<&IoRec> {
    io.iter().skip(i + 1).find(|r| r.dir == DIR_WRITE)
}

/// Derives the phases from a connection's first read/send calls.
pub fn derive(io: &[IoRec]) -> IoPhases {
    let Some(first_read) = io.iter().find(|r| r.dir == DIR_READ) else {
        return IoPhases::default();
    };
    if first_read.class == abi::CLASS_TLS_HANDSHAKE {
        derive_tls(io)
    } else {
        derive_plain(io)
    }
}

fn derive_plain(io: &[IoRec]) -> IoPhases {
    let mut p = IoPhases::default();
    let Some(gi) = io
        .iter()
        .position(|r| r.dir == DIR_READ && r.class == abi::CLASS_HTTP_GET)
    else {
        return p;
    };
    // The response to the GET: the first send after it.
    let Some(ui) = io
        .iter()
        .skip(gi + 1)
        .position(|r| r.dir == DIR_WRITE)
        .map(|k| k + gi + 1)
    else {
        return p;
    };
    let inspected = io[ui].class != abi::CLASS_UNINSPECTED;
    if inspected && io[ui].class != abi::CLASS_HTTP_101 {
        p.upgrade_refused = true;
        return p;
    }
    p.ws_upgrade = Some(Span {
        start: io[gi].ts,
        end: io[ui].ts,
    });
    // The first push: the next data frame (text, binary, continuation), or
    // the next send at all when sends are not inspected.
    p.first_push = io
        .iter()
        .skip(ui + 1)
        .find(|r| {
            r.dir == DIR_WRITE
                && (r.class == abi::CLASS_UNINSPECTED
                    || (r.class == abi::CLASS_WS_FRAME && r.detail <= 2))
        })
        .map(|w| Span {
            start: io[ui].ts,
            end: w.ts,
        });
    p
}

fn derive_tls(io: &[IoRec]) -> IoPhases {
    let mut p = IoPhases::default();
    let t = turns(io);
    // Turn 0 must be the ClientHello read (the server never speaks first).
    if t.first().map(|x| x.dir) != Some(DIR_READ) || t.len() < 3 {
        return p;
    }
    let hs_start = io[t[0].first].ts;
    let t2_first = io[t[2].first];
    if t2_first.class == abi::CLASS_TLS_ALERT {
        return p; // the client refused the server's flight
    }
    // A turn-3 send that is an alert (plain, or as small as an encrypted
    // one) ends a failed handshake; a send that cannot be an alert, or
    // the client speaking again (turn 4), confirms it.
    let t3_first = t.get(3).map(|w| io[w.first]);
    let t3_alert = t3_first.is_some_and(|w| {
        w.class == abi::CLASS_TLS_ALERT
            || (w.class != abi::CLASS_TLS_HANDSHAKE
                && w.class != abi::CLASS_TLS_CCS
                && w.ret <= TLS13_ALERT_MAX)
    });
    let confirmed = t3_first.is_some() && (!t3_alert || t.len() > 4);
    if !confirmed {
        return p;
    }
    // Index of the 101 write and start of the upgrade, once known.
    let upgrade: Option<(u64, usize)>;
    if t2_first.class == abi::CLASS_TLS_HANDSHAKE {
        p.tls = Some(TlsKind::Tls12);
        let Some(t3) = t.get(3) else { return p };
        let hs_end = io[t3.first].ts;
        p.tls_handshake = Some(Span {
            start: hs_start,
            end: hs_end,
        });
        upgrade = match (t.get(4), t.get(5)) {
            (Some(r), Some(w)) => Some((io[r.first].ts, w.first)),
            _ => None,
        };
    } else {
        p.tls = Some(TlsKind::Tls13Heuristic);
        let hs_end = t2_first.ts;
        p.tls_handshake = Some(Span {
            start: hs_start,
            end: hs_end,
        });
        if t[2].bytes <= FINISHED_FLIGHT_MAX {
            // Turn 3 = session tickets; request in turn 4, 101 in turn 5.
            upgrade = match (t.get(4), t.get(5)) {
                (Some(r), Some(w)) => Some((io[r.first].ts, w.first)),
                _ => None,
            };
        } else {
            // The request came within turn 2.
            upgrade = t.get(3).map(|w3| {
                let coalesced = i64::from(t2_first.ret) > FINISHED_FLIGHT_MAX;
                let idx = if coalesced && w3.calls >= 2 {
                    w3.first + 1
                } else {
                    w3.first
                };
                (hs_end, idx)
            });
        }
    }
    if let Some((start, wi)) = upgrade {
        p.ws_upgrade = Some(Span {
            start,
            end: io[wi].ts,
        });
        p.first_push = next_write(io, wi).map(|w| Span {
            start: io[wi].ts,
            end: w.ts,
        });
    }
    p
}

#[cfg(test)]
mod turn_tests {
    use super::*;

    #[test]
    fn a_span_splits_into_the_targets_and_the_peers_turns() {
        let io = |ts, dir| IoRec {
            ts,
            dir,
            class: 0,
            detail: 0,
            ret: 1,
        };
        // ClientHello read at 100; server flight written at 400 (target
        // worked 300), client Finished read at 1_000 (peer 600), then the
        // target's last write ends the span at 1_050 (target 50).
        let calls = [
            io(100, DIR_READ),
            io(400, DIR_WRITE),
            io(1_000, DIR_READ),
            io(1_050, DIR_WRITE),
        ];
        let span = Span {
            start: 100,
            end: 1_050,
        };
        assert_eq!(time_by_turn(&calls, span), (350, 600));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::abi::*;

    fn r(ts: u64, class: u8, ret: i32) -> IoRec {
        IoRec {
            ts,
            dir: DIR_READ,
            class,
            detail: 0,
            ret,
        }
    }
    /// A send the kernel could not inspect (not made by a write-family
    /// syscall): no class of its content.
    fn w(ts: u64, ret: i32) -> IoRec {
        wc(ts, CLASS_UNINSPECTED, 0, ret)
    }
    /// A send classified from its syscall buffer.
    fn wc(ts: u64, class: u8, detail: u8, ret: i32) -> IoRec {
        IoRec {
            ts,
            dir: DIR_WRITE,
            class,
            detail,
            ret,
        }
    }
    const TEXT: u8 = 1;
    const PING: u8 = 9;

    #[test]
    fn plain_websocket_phases_are_exact() {
        let io = [
            r(100, CLASS_HTTP_GET, 220),
            wc(150, CLASS_HTTP_101, 0, 129),
            wc(400, CLASS_WS_FRAME, TEXT, 40),
        ];
        let p = derive(&io);
        assert_eq!(p.tls, None);
        assert_eq!(p.tls_handshake, None);
        assert!(!p.upgrade_refused);
        assert_eq!(
            p.ws_upgrade,
            Some(Span {
                start: 100,
                end: 150
            })
        );
        assert_eq!(
            p.first_push,
            Some(Span {
                start: 150,
                end: 400
            })
        );
    }

    #[test]
    fn a_ping_before_the_first_push_is_not_the_push() {
        let io = [
            r(100, CLASS_HTTP_GET, 220),
            wc(150, CLASS_HTTP_101, 0, 129),
            wc(200, CLASS_WS_FRAME, PING, 2),
            r(250, CLASS_WS_FRAME, 6),
            wc(400, CLASS_WS_FRAME, TEXT, 40),
        ];
        let p = derive(&io);
        assert_eq!(
            p.first_push,
            Some(Span {
                start: 150,
                end: 400
            })
        );
    }

    #[test]
    fn a_refused_upgrade_is_no_upgrade_and_no_push() {
        let io = [
            r(1, CLASS_HTTP_GET, 200),
            wc(2, CLASS_HTTP_OTHER, 0, 300),
            wc(3, CLASS_OTHER, 0, 50),
        ];
        let p = derive(&io);
        assert!(p.upgrade_refused);
        assert_eq!(p.ws_upgrade, None);
        assert_eq!(p.first_push, None);
    }

    #[test]
    fn plain_without_push_yet_has_upgrade_only() {
        let io = [r(1, CLASS_HTTP_GET, 200), wc(2, CLASS_HTTP_101, 0, 129)];
        let p = derive(&io);
        assert!(p.ws_upgrade.is_some());
        assert_eq!(p.first_push, None);
        // No GET read: no phases.
        let io = [r(1, CLASS_HTTP_OTHER, 200), wc(2, CLASS_HTTP_OTHER, 0, 300)];
        assert_eq!(derive(&io), IoPhases::default());
    }

    #[test]
    fn uninspected_sends_are_inferred_from_their_order() {
        // io_uring or sendfile: the first send after the GET is taken for
        // the 101 even if it was a refusal (documented limitation).
        let io = [r(1, CLASS_HTTP_GET, 200), w(2, 300), w(9, 40)];
        let p = derive(&io);
        assert!(!p.upgrade_refused);
        assert_eq!(p.ws_upgrade, Some(Span { start: 1, end: 2 }));
        assert_eq!(p.first_push, Some(Span { start: 2, end: 9 }));
    }

    #[test]
    fn tls13_rustls_separate_request() {
        // R(CH) W(SH..Fin) R(CCS+Fin, 80 B) W(tickets) R(GET) W(101) W(push)
        let io = [
            r(10, CLASS_TLS_HANDSHAKE, 517),
            w(20, 2000),
            r(30, CLASS_TLS_CCS, 80),
            w(31, 500),
            r(40, CLASS_TLS_APPDATA, 250),
            w(45, 151),
            w(90, 60),
        ];
        let p = derive(&io);
        assert_eq!(p.tls, Some(TlsKind::Tls13Heuristic));
        assert_eq!(p.tls_handshake, Some(Span { start: 10, end: 30 }));
        assert_eq!(p.ws_upgrade, Some(Span { start: 40, end: 45 }));
        assert_eq!(p.first_push, Some(Span { start: 45, end: 90 }));
    }

    #[test]
    fn tls13_rustls_coalesced_request() {
        // Finished and GET in one read: tickets writev, then the 101.
        let io = [
            r(10, CLASS_TLS_HANDSHAKE, 517),
            w(20, 2000),
            r(30, CLASS_TLS_CCS, 330),
            w(31, 500),
            w(35, 151),
            w(70, 60),
        ];
        let p = derive(&io);
        assert_eq!(p.tls_handshake, Some(Span { start: 10, end: 30 }));
        assert_eq!(p.ws_upgrade, Some(Span { start: 30, end: 35 }));
        assert_eq!(p.first_push, Some(Span { start: 35, end: 70 }));
    }

    #[test]
    fn tls13_openssl_header_first_reads() {
        // OpenSSL reads 5-byte headers then bodies; tickets as two writes.
        let io = [
            r(10, CLASS_TLS_HANDSHAKE, 5),
            r(11, CLASS_OTHER, 512),
            w(20, 1800),
            r(30, CLASS_TLS_CCS, 5),
            r(31, CLASS_OTHER, 1),
            r(32, CLASS_TLS_APPDATA, 5),
            r(33, CLASS_OTHER, 53),
            w(34, 250),
            w(35, 250),
            r(50, CLASS_TLS_APPDATA, 5),
            r(51, CLASS_OTHER, 300),
            w(60, 180),
            w(99, 40),
        ];
        let p = derive(&io);
        assert_eq!(p.tls, Some(TlsKind::Tls13Heuristic));
        assert_eq!(p.tls_handshake, Some(Span { start: 10, end: 30 }));
        assert_eq!(p.ws_upgrade, Some(Span { start: 50, end: 60 }));
        assert_eq!(p.first_push, Some(Span { start: 60, end: 99 }));
    }

    #[test]
    fn tls12_uses_record_types() {
        let io = [
            r(10, CLASS_TLS_HANDSHAKE, 300),
            w(20, 3000),
            r(30, CLASS_TLS_HANDSHAKE, 126),
            w(40, 51),
            r(50, CLASS_TLS_APPDATA, 300),
            w(55, 160),
            w(80, 40),
        ];
        let p = derive(&io);
        assert_eq!(p.tls, Some(TlsKind::Tls12));
        assert_eq!(p.tls_handshake, Some(Span { start: 10, end: 40 }));
        assert_eq!(p.ws_upgrade, Some(Span { start: 50, end: 55 }));
        assert_eq!(p.first_push, Some(Span { start: 55, end: 80 }));
    }

    #[test]
    fn a_rejected_certificate_is_no_handshake() {
        // rustls rejects nginx's certificate: CCS + encrypted alert, close.
        let io = [
            r(10, CLASS_TLS_HANDSHAKE, 5),
            r(11, CLASS_OTHER, 512),
            w(20, 1800),
            r(30, CLASS_TLS_CCS, 5),
            r(31, CLASS_OTHER, 1),
            r(32, CLASS_TLS_APPDATA, 5),
            r(33, CLASS_OTHER, 19),
        ];
        assert_eq!(derive(&io), IoPhases::default());
        // A TLS 1.2 client alert in clear.
        let io = [
            r(10, CLASS_TLS_HANDSHAKE, 300),
            w(20, 3000),
            r(30, CLASS_TLS_ALERT, 7),
        ];
        assert_eq!(derive(&io), IoPhases::default());
        // The server answers a bad Finished with an (encrypted) alert.
        let io = [
            r(10, CLASS_TLS_HANDSHAKE, 517),
            w(20, 2000),
            r(30, CLASS_TLS_CCS, 80),
            wc(31, CLASS_TLS_APPDATA, 0, 24),
        ];
        assert_eq!(derive(&io).tls_handshake, None);
        // A small turn-3 send followed by the client's request is no alert.
        let io = [
            r(10, CLASS_TLS_HANDSHAKE, 517),
            w(20, 2000),
            r(30, CLASS_TLS_CCS, 80),
            wc(31, CLASS_TLS_APPDATA, 0, 24),
            r(40, CLASS_TLS_APPDATA, 250),
        ];
        assert_eq!(derive(&io).tls_handshake, Some(Span { start: 10, end: 30 }));
    }

    #[test]
    fn incomplete_tls_has_no_phases_yet() {
        let io = [r(10, CLASS_TLS_HANDSHAKE, 517), w(20, 2000)];
        let p = derive(&io);
        assert_eq!(p.tls_handshake, None);
        assert_eq!(p.ws_upgrade, None);
        // The Finished is read but nothing confirms it yet.
        let io = [
            r(10, CLASS_TLS_HANDSHAKE, 517),
            w(20, 2000),
            r(30, CLASS_TLS_CCS, 80),
        ];
        assert_eq!(derive(&io).tls_handshake, None);
    }
}
