//! The observer's half of the message path: `PS_EV_IO_MARK` events of
//! traced connections, kept per peer port in call order until the run
//! joins them with the load generator's samples.

use super::{ConnIo, IoMark};
use crate::abi::{Event, DIR_WRITE};
use std::collections::HashMap;

/// Marks kept at most (16 B each): beyond, marks are counted, not kept.
const MAX_MARKS: usize = 8 << 20;

#[derive(Debug, Default)]
pub struct MarkStore {
    /// Peer port → (the sk that port belongs to now, its marks).
    conns: HashMap<u16, (u64, ConnIo)>,
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
        let entry = self
            .conns
            .entry(e.dport)
            .or_insert((e.sk, ConnIo::default()));
        if entry.0 != e.sk {
            // The port was reused by a newer connection: its stream starts
            // again at byte 0, the older one's marks no longer apply.
            self.kept -= entry.1.sends.len() + entry.1.recvs.len();
            *entry = (e.sk, ConnIo::default());
        }
        let mark = IoMark {
            end_offset: e.bytes_in,
            t_ns: e.ts_ns,
        };
        if e.dir == DIR_WRITE {
            entry.1.sends.push(mark);
        } else {
            entry.1.recvs.push(mark);
        }
        self.kept += 1;
    }

    /// Marks kept now.
    pub fn kept(&self) -> usize {
        self.kept
    }

    /// Everything recorded so far, by peer port, left in place.
    pub fn snapshot(&self) -> HashMap<u16, ConnIo> {
        self.conns
            .iter()
            .map(|(port, (_, io))| (*port, io.clone()))
            .collect()
    }

    /// Everything recorded so far, by peer port (the store starts empty).
    pub fn take(&mut self) -> HashMap<u16, ConnIo> {
        self.kept = 0;
        std::mem::take(&mut self.conns)
            .into_iter()
            .map(|(port, (_, io))| (port, io))
            .collect()
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
        let io = m.take();
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
        assert!(m.take().is_empty());
    }
}
