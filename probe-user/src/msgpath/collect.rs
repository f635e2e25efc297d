//! The observer's half of the message path: `PS_EV_IO_MARK` events of
//! traced connections, kept per peer port in call order until the run
//! joins them with the load generator's samples. Socket marks and OpenSSL
//! plaintext marks are kept apart: over TLS only the plaintext ones match
//! the client's offsets.

use super::{ConnIo, IoMark};
use crate::abi::{Event, DIR_WRITE};
use std::collections::HashMap;

/// Marks kept at most (16 B each): beyond, marks are counted, not kept.
const MAX_MARKS: usize = 8 << 20;

/// One traced connection's marks: of the socket, and of OpenSSL's plaintext.
#[derive(Debug, Default, Clone)]
struct Marks {
    sk: u64,
    socket: ConnIo,
    plain: ConnIo,
}

impl Marks {
    fn len(&self) -> usize {
        [&self.socket, &self.plain]
            .iter()
            .map(|io| io.sends.len() + io.recvs.len())
            .sum()
    }

    /// The marks whose offsets are the application's: plaintext over TLS
    /// (none when OpenSSL's were not seen), the socket's otherwise.
    fn application(&self, tls: bool) -> Option<ConnIo> {
        if !tls {
            return Some(self.socket.clone());
        }
        let seen = !self.plain.sends.is_empty() || !self.plain.recvs.is_empty();
        seen.then(|| self.plain.clone())
    }
}

#[derive(Debug, Default)]
pub struct MarkStore {
    /// Peer port → the marks of the connection that port belongs to now.
    conns: HashMap<u16, Marks>,
    kept: usize,
    /// Marks not kept because the store was full.
    pub over_cap: u64,
}

impl MarkStore {
    pub fn record(&mut self, e: &Event) {
        if self.kept >= MAX_MARKS {
            self.over_cap += 1;
            return;
        }
        let entry = self.conns.entry(e.dport).or_insert_with(|| Marks {
            sk: e.sk,
            ..Default::default()
        });
        if entry.sk != e.sk {
            // The port was reused by a newer connection: its stream starts
            // again at byte 0, the older one's marks no longer apply.
            self.kept -= entry.len();
            *entry = Marks {
                sk: e.sk,
                ..Default::default()
            };
        }
        let mark = IoMark {
            end_offset: e.bytes_in,
            t_ns: e.ts_ns,
        };
        let io = if e.class == 1 {
            &mut entry.plain
        } else {
            &mut entry.socket
        };
        if e.dir == DIR_WRITE {
            io.sends.push(mark);
        } else {
            io.recvs.push(mark);
        }
        self.kept += 1;
    }

    /// Marks kept now.
    pub fn kept(&self) -> usize {
        self.kept
    }

    /// Everything recorded so far, by peer port, left in place; over TLS
    /// only connections with plaintext marks.
    pub fn snapshot(&self, tls: bool) -> HashMap<u16, ConnIo> {
        self.conns
            .iter()
            .filter_map(|(port, m)| Some((*port, m.application(tls)?)))
            .collect()
    }

    /// Like `snapshot`, and the store starts empty.
    pub fn take(&mut self, tls: bool) -> HashMap<u16, ConnIo> {
        let out = self.snapshot(tls);
        self.kept = 0;
        self.conns.clear();
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::abi::{DIR_READ, EV_IO_MARK};

    fn ev(sk: u64, port: u16, dir: u8, cum: u64, t: u64) -> Event {
        Event {
            kind: EV_IO_MARK,
            sk,
            dport: port,
            dir,
            bytes_in: cum,
            ts_ns: t,
            ..Default::default()
        }
    }

    #[test]
    fn marks_per_port_in_order_and_a_reused_port_starts_over() {
        let mut m = MarkStore::default();
        m.record(&ev(1, 5000, DIR_READ, 100, 10));
        m.record(&ev(1, 5000, DIR_WRITE, 129, 11));
        m.record(&ev(1, 5000, DIR_WRITE, 300, 12));
        m.record(&ev(2, 6000, DIR_WRITE, 50, 13));
        m.record(&ev(3, 6000, DIR_WRITE, 20, 14));
        let mut plain = ev(3, 6000, DIR_WRITE, 7, 15);
        plain.class = 1;
        m.record(&plain);
        let tls = m.snapshot(true);
        assert_eq!(tls.len(), 1, "over TLS only plaintext marks count");
        assert_eq!(
            tls[&6000].sends,
            vec![IoMark {
                end_offset: 7,
                t_ns: 15
            }]
        );
        let io = m.take(false);
        assert_eq!(
            io[&5000].recvs,
            vec![IoMark {
                end_offset: 100,
                t_ns: 10
            }]
        );
        assert_eq!(io[&5000].sends.len(), 2);
        assert_eq!(
            io[&6000].sends,
            vec![IoMark {
                end_offset: 20,
                t_ns: 14
            }]
        );
        assert!(m.take(false).is_empty());
        assert_eq!(m.kept(), 0);
    }
}
