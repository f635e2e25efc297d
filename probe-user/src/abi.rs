//! Rust mirror of `probe-ebpf/include/pushscope.h`: the config written
//! before attach, the per-CPU counter slots and the ring-buffer event. Keep
//! in sync with the header: the tests below assert sizes and offsets, and
//! decode events from byte fixtures laid out as the kernel writes them.

/// Per-CPU counter slots (enum ps_counter).
pub const CNT_EVENTS: u32 = 0;
pub const CNT_RINGBUF_DROPS: u32 = 1;
pub const CNT_FD_OK: u32 = 2;
pub const CNT_EMFILE: u32 = 3;
pub const CNT_ENFILE: u32 = 4;
pub const CNT_RETRANS: u32 = 5;
pub const CNT_RST_SENT: u32 = 6;
pub const CNT_RST_RECV: u32 = 7;
pub const CNT_ACCEPT_NOSK: u32 = 8;
pub const CNT_FORKS: u32 = 9;
pub const CNT_MAP_FULL: u32 = 10;
pub const CNT_IO_CALLS: u32 = 11;
pub const CNT_CLOSES: u32 = 12;
/// Accepts of the target and why some are not tracked (coverage).
pub const CNT_ACCEPTS: u32 = 13;
pub const CNT_UNTRACKED_FD: u32 = 14;
pub const CNT_UNTRACKED_SLOT: u32 = 15;
pub const CNT_UNTRACKED_MAP_FULL: u32 = 16;
pub const CNT_SOCKS_EVICTED: u32 = 17;
pub const CNT_SLOTS_RECYCLED: u32 = 18;
pub const CNT_UNTRACKED_CLOSED: u32 = 19;
pub const CNT_TLS_ABORTED: u32 = 20;
/// Connections whose every call is marked for the message path.
pub const CNT_MSGPATH_TRACED: u32 = 21;
/// Receives and sends of the target on any socket.
pub const CNT_SOCK_CALLS: u32 = 22;
/// ... of those, the calls that looked their connection up (hot or sampled).
pub const CNT_SOCK_LOOKUPS: u32 = 23;
/// Tracked connections made hot at accept (their first calls are classified).
pub const CNT_HOT_ENTERED: u32 = 24;
/// ... that left the hot set (classified and untraced, closed, process exited).
pub const CNT_HOT_LEFT: u32 = 25;
pub const CNT_MAX: u32 = 32;

/// PS_SLOTS: processes of the target with an fd table slot at once.
pub const SLOTS: u32 = 8;

/// enum ps_event_kind
pub const EV_STATE: u32 = 1;
pub const EV_ACCEPT: u32 = 2;
pub const EV_CLOSE_FD: u32 = 3;
pub const EV_IO: u32 = 4;
pub const EV_RESET: u32 = 5;
/// A process of the target forked a process (not a thread): fd = child pid.
pub const EV_FORK: u32 = 6;
pub const EV_EXIT: u32 = 7;
/// OpenSSL handshake done (uprobes): ts_ns = return, bytes_in = first entry.
pub const EV_TLS_DONE: u32 = 8;
/// Message path: one receive/send of a traced connection: dir, ret, dport =
/// its peer port, bytes_in = cumulative bytes in that direction after it.
pub const EV_IO_MARK: u32 = 9;

/// enum ps_dir
pub const DIR_READ: u8 = 0;
pub const DIR_WRITE: u8 = 1;

/// ps_config.msgpath bits: ports registered; OpenSSL I/O uprobes attached.
pub const MSGPATH_PORTS: u32 = 1;
pub const MSGPATH_SSL: u32 = 2;

/// PS_HINT_MASK: slot of a tgid in the map `tgid_hint`.
pub const HINT_MASK: u32 = 0xffff;

/// enum ps_class: what the first bytes of one read or send look like.
pub const CLASS_OTHER: u8 = 0;
pub const CLASS_TLS_HANDSHAKE: u8 = 1;
pub const CLASS_TLS_CCS: u8 = 2;
pub const CLASS_TLS_ALERT: u8 = 3;
pub const CLASS_TLS_APPDATA: u8 = 4;
pub const CLASS_HTTP_GET: u8 = 5;
pub const CLASS_HTTP_101: u8 = 6;
pub const CLASS_HTTP_OTHER: u8 = 7;
pub const CLASS_WS_FRAME: u8 = 8;
/// A call not made by a read/write-family syscall (io_uring, sendfile):
/// its content is not inspected.
pub const CLASS_UNINSPECTED: u8 = 9;

/// TCP states as the kernel numbers them (include/net/tcp_states.h).
pub const TCP_ESTABLISHED: u16 = 1;
pub const TCP_SYN_SENT: u16 = 2;
pub const TCP_FIN_WAIT1: u16 = 4;
pub const TCP_CLOSE: u16 = 7;
pub const TCP_CLOSE_WAIT: u16 = 8;

/// struct ps_config
#[repr(C)]
#[derive(Debug, Clone, Copy, Default)]
pub struct Config {
    pub target_tgid: u32,
    pub io_events_per_conn: u32,
    /// fd table entries per slot (the target's RLIMIT_NOFILE at attach).
    pub fds_per_slot: u32,
    /// MSGPATH_* bits (message path).
    pub msgpath: u32,
    /// Bench: also trace 1 in N connections (0: off).
    pub trace_one_in: u32,
    pub _pad: u32,
}

// SAFETY: repr(C), fixed-width fields, no implicit padding.
unsafe impl aya::Pod for Config {}

/// struct ps_event: one ring-buffer record.
#[repr(C)]
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Event {
    pub ts_ns: u64,
    pub sk: u64,
    pub kind: u32,
    pub tgid: u32,
    pub fd: u32,
    pub ret: i32,
    pub old_state: u16,
    pub new_state: u16,
    pub sport: u16,
    pub dport: u16,
    pub family: u16,
    pub dir: u8,
    pub class: u8,
    pub detail: u8,
    pub _pad1: [u8; 3],
    pub io_seq: u32,
    pub _pad3: u32,
    pub bytes_in: u64,
    pub bytes_out: u64,
    pub max_wmem: u32,
    pub srtt_us: u32,
    pub retrans: u32,
    pub _pad2: u32,
    pub daddr: [u8; 16],
}

/// Size of one ring-buffer record.
pub const EVENT_SIZE: usize = std::mem::size_of::<Event>();

impl Event {
    /// Decodes one ring-buffer record; None if it is too short.
    pub fn decode(bytes: &[u8]) -> Option<Event> {
        if bytes.len() < EVENT_SIZE {
            return None;
        }
        // SAFETY: Event is repr(C) plain data valid for any bit pattern and
        // the slice holds at least EVENT_SIZE bytes; read_unaligned copes
        // with any alignment.
        Some(unsafe { std::ptr::read_unaligned(bytes.as_ptr().cast::<Event>()) })
    }

    /// The record as the kernel lays it out (for fixtures and tests).
    pub fn to_bytes(&self) -> Vec<u8> {
        // SAFETY: Event is repr(C) with explicit padding: every byte is
        // initialised.
        unsafe {
            std::slice::from_raw_parts((self as *const Event).cast::<u8>(), EVENT_SIZE).to_vec()
        }
    }

    /// Remote address of a STATE event.
    pub fn remote(&self) -> std::net::SocketAddr {
        let ip: std::net::IpAddr = if self.family == libc::AF_INET as u16 {
            std::net::Ipv4Addr::new(self.daddr[0], self.daddr[1], self.daddr[2], self.daddr[3])
                .into()
        } else {
            std::net::Ipv6Addr::from(self.daddr).into()
        };
        std::net::SocketAddr::new(ip, self.dport)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::mem::{offset_of, size_of};

    proptest::proptest! {
        /// Arbitrary ring-buffer records (any length, any bytes) decode or
        /// are refused, never panic; a full record round-trips.
        #[test]
        fn arbitrary_records_never_panic(bytes in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..300)) {
            match Event::decode(&bytes) {
                Some(e) => proptest::prop_assert_eq!(&e.to_bytes()[..], &bytes[..EVENT_SIZE]),
                None => proptest::prop_assert!(bytes.len() < EVENT_SIZE),
            }
        }
    }

    #[test]
    fn config_layout_matches_header() {
        assert_eq!(size_of::<Config>(), 24);
        assert_eq!(offset_of!(Config, target_tgid), 0);
        assert_eq!(offset_of!(Config, io_events_per_conn), 4);
        assert_eq!(offset_of!(Config, fds_per_slot), 8);
        assert_eq!(offset_of!(Config, msgpath), 12);
        assert_eq!(offset_of!(Config, trace_one_in), 16);
    }

    #[test]
    fn event_layout_matches_header() {
        assert_eq!(size_of::<Event>(), 104);
        assert_eq!(offset_of!(Event, ts_ns), 0);
        assert_eq!(offset_of!(Event, sk), 8);
        assert_eq!(offset_of!(Event, kind), 16);
        assert_eq!(offset_of!(Event, tgid), 20);
        assert_eq!(offset_of!(Event, fd), 24);
        assert_eq!(offset_of!(Event, ret), 28);
        assert_eq!(offset_of!(Event, old_state), 32);
        assert_eq!(offset_of!(Event, new_state), 34);
        assert_eq!(offset_of!(Event, sport), 36);
        assert_eq!(offset_of!(Event, dport), 38);
        assert_eq!(offset_of!(Event, family), 40);
        assert_eq!(offset_of!(Event, dir), 42);
        assert_eq!(offset_of!(Event, class), 43);
        assert_eq!(offset_of!(Event, detail), 44);
        assert_eq!(offset_of!(Event, io_seq), 48);
        assert_eq!(offset_of!(Event, bytes_in), 56);
        assert_eq!(offset_of!(Event, bytes_out), 64);
        assert_eq!(offset_of!(Event, max_wmem), 72);
        assert_eq!(offset_of!(Event, srtt_us), 76);
        assert_eq!(offset_of!(Event, retrans), 80);
        assert_eq!(offset_of!(Event, daddr), 88);
    }

    #[test]
    fn constants_match_the_header() {
        let h = include_str!("../../probe-ebpf/include/pushscope.h");
        for (name, v) in [
            ("PS_CNT_ACCEPTS = ", CNT_ACCEPTS),
            ("PS_CNT_UNTRACKED_FD = ", CNT_UNTRACKED_FD),
            ("PS_CNT_UNTRACKED_SLOT = ", CNT_UNTRACKED_SLOT),
            ("PS_CNT_UNTRACKED_MAP_FULL = ", CNT_UNTRACKED_MAP_FULL),
            ("PS_CNT_SOCKS_EVICTED = ", CNT_SOCKS_EVICTED),
            ("PS_CNT_SLOTS_RECYCLED = ", CNT_SLOTS_RECYCLED),
            ("PS_CNT_UNTRACKED_CLOSED = ", CNT_UNTRACKED_CLOSED),
            ("PS_CNT_TLS_ABORTED = ", CNT_TLS_ABORTED),
            ("PS_CNT_MSGPATH_TRACED = ", CNT_MSGPATH_TRACED),
            ("PS_CNT_SOCK_CALLS = ", CNT_SOCK_CALLS),
            ("PS_CNT_SOCK_LOOKUPS = ", CNT_SOCK_LOOKUPS),
            ("PS_CNT_HOT_ENTERED = ", CNT_HOT_ENTERED),
            ("PS_CNT_HOT_LEFT = ", CNT_HOT_LEFT),
            ("PS_EV_IO_MARK = ", EV_IO_MARK),
            ("#define PS_MSGPATH_PORTS ", MSGPATH_PORTS),
            ("#define PS_MSGPATH_SSL ", MSGPATH_SSL),
            ("PS_CNT_MAX = ", CNT_MAX),
            ("#define PS_SLOTS ", SLOTS),
        ] {
            assert!(
                h.contains(&format!("{name}{v}")),
                "{name}{v} not in pushscope.h"
            );
        }
    }

    #[test]
    fn decodes_state_event_from_kernel_bytes() {
        // A STATE record as the kernel writes it: little-endian fields at the
        // header's offsets.
        let mut b = vec![0u8; EVENT_SIZE];
        b[0..8].copy_from_slice(&123_456u64.to_le_bytes());
        b[8..16].copy_from_slice(&0xffff_8880_1234_5678u64.to_le_bytes());
        b[16..20].copy_from_slice(&EV_STATE.to_le_bytes());
        b[32..34].copy_from_slice(&3u16.to_le_bytes());
        b[34..36].copy_from_slice(&TCP_ESTABLISHED.to_le_bytes());
        b[36..38].copy_from_slice(&8080u16.to_le_bytes());
        b[38..40].copy_from_slice(&40000u16.to_le_bytes());
        b[40..42].copy_from_slice(&(libc::AF_INET as u16).to_le_bytes());
        b[88..92].copy_from_slice(&[127, 0, 0, 9]);
        let e = Event::decode(&b).unwrap();
        assert_eq!(e.ts_ns, 123_456);
        assert_eq!(e.sk, 0xffff_8880_1234_5678);
        assert_eq!(e.kind, EV_STATE);
        assert_eq!(e.new_state, TCP_ESTABLISHED);
        assert_eq!(e.sport, 8080);
        assert_eq!(e.remote().to_string(), "127.0.0.9:40000");
        assert_eq!(e.to_bytes(), b);
        assert!(Event::decode(&b[..50]).is_none());
    }
}
