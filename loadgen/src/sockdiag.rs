//! TCP sockets of this network namespace as the kernel sees them, through
//! sock_diag (`NETLINK_SOCK_DIAG`, what `ss` uses): `inet_diag_req_v2`
//! dumps of AF_INET and AF_INET6, built and read with the
//! `netlink-packet-sock-diag` / `netlink-sys` crates. One client serves
//! three callers:
//! - the slow-consumers fault (`tcp_sockets`): per socket of the target's
//!   port its send queue (`sk_wmem_queued` from `INET_DIAG_SKMEMINFO`,
//!   bytes queued for sending including unacked ones), unacked/unsent
//!   bytes (`idiag_wqueue`, ss' Send-Q), receive queue and buffer size;
//! - kill-restart (`listening_inodes`): the inodes of a port's listening
//!   sockets, by which it finds the restarted target;
//! - the observer (`listen_sockets`): every listener of the namespace with
//!   its accept-queue depth.
//!
//! Asking for the LISTEN state only, the kernel walks its listening hash
//! and never the established one, so the cost does not grow with the
//! number of connections or TIME_WAIT sockets — unlike reading
//! `/proc/net/tcp`, which prints every socket of the namespace (tens of
//! thousands of TIME_WAIT sockets after a load made one read of it take
//! seconds on a busy machine). A local port asked for goes into the
//! request's `inet_diag_sockid`, where the kernel's dump skips other
//! ports before building a message for them.
//!
//! Why sock_diag and not the probes' send hook for slow consumers: a slow
//! consumer's socket matters most once the server has *stopped* writing
//! to it (waiting for EPOLLOUT, or keeping the backlog in its own memory):
//! the send hook never fires then, so it cannot see the queue stay full,
//! and the hook is the observer's hottest path. A dump every 100 ms of the
//! sockets of the target's port costs the target nothing and needs no
//! root.

use std::{
    io,
    net::{IpAddr, SocketAddr},
};

use netlink_packet_core::{
    NetlinkHeader, NetlinkMessage, NetlinkPayload, NLM_F_DUMP, NLM_F_REQUEST,
};
use netlink_packet_sock_diag::{
    constants::{AF_INET, AF_INET6, IPPROTO_TCP},
    inet::{nlas::Nla, ExtensionFlags, InetRequest, InetResponse, SocketId, StateFlags},
    SockDiagMessage,
};
use netlink_sys::{protocols::NETLINK_SOCK_DIAG, Socket};

/// One TCP socket (the target's side of a connection when its local port
/// is the target's).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TcpSock {
    /// IPv4-mapped IPv6 addresses (a dual-stack listener's IPv4 peers)
    /// are given as IPv4.
    pub local: SocketAddr,
    pub peer: SocketAddr,
    /// TCP state (include/net/tcp_states.h: 1 ESTABLISHED, 4 FIN_WAIT1,
    /// 10 LISTEN, …).
    pub state: u8,
    /// Bytes written and not yet acknowledged by the peer (Send-Q).
    pub send_q: u32,
    /// Bytes received and not yet read (Recv-Q); for a listener, the
    /// connections waiting in its accept queue.
    pub recv_q: u32,
    /// `sk_wmem_queued`: bytes of the send queue's buffers (skb truesize);
    /// 0 unless the query asked for `skmeminfo`.
    pub wmem_queued: u32,
    /// `sk_sndbuf`; 0 unless the query asked for `skmeminfo`.
    pub sndbuf: u32,
    pub inode: u32,
}

pub const TCP_ESTABLISHED: u8 = netlink_packet_sock_diag::constants::TCP_ESTABLISHED;
pub const TCP_LISTEN: u8 = netlink_packet_sock_diag::constants::TCP_LISTEN;

/// What one dump asks the kernel for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Query {
    /// TCP states to dump, a bit per state (`1 << TCP_LISTEN`, …).
    pub states: u32,
    /// Only sockets whose local port is this one (all when `None`).
    pub local_port: Option<u16>,
    /// Ask for `INET_DIAG_SKMEMINFO` (`wmem_queued`, `sndbuf`): a 36-byte
    /// attribute more per socket, so only where it is read.
    pub skmeminfo: bool,
}

/// Listening sockets only: the kernel walks its listening hash alone.
pub const LISTEN_STATES: u32 = 1 << TCP_LISTEN;
/// Every state but LISTEN: a port's connections (TIME_WAIT included).
pub const CONNECTION_STATES: u32 = !LISTEN_STATES;

/// Every TCP socket (of the caller's network namespace) whose local port
/// is `port`, but the listener: the target's side of its connections,
/// with their send-queue memory.
pub fn tcp_sockets(port: u16) -> io::Result<Vec<TcpSock>> {
    dump(Query {
        states: CONNECTION_STATES,
        local_port: Some(port),
        skmeminfo: true,
    })
}

/// Inodes of the sockets listening on `port` (IPv4 and IPv6).
pub fn listening_inodes(port: u16) -> io::Result<Vec<u64>> {
    let socks = dump(Query {
        states: LISTEN_STATES,
        local_port: Some(port),
        skmeminfo: false,
    })?;
    Ok(socks.iter().map(|s| u64::from(s.inode)).collect())
}

/// Every TCP listener (IPv4 and IPv6) of the caller's network namespace:
/// port in `local`, inode, accept-queue depth in `recv_q`.
pub fn listen_sockets() -> io::Result<Vec<TcpSock>> {
    dump(Query {
        states: LISTEN_STATES,
        local_port: None,
        skmeminfo: false,
    })
}

/// The TCP sockets of both families that `q` asks for.
pub fn dump(q: Query) -> io::Result<Vec<TcpSock>> {
    let mut socket = Socket::new(NETLINK_SOCK_DIAG)?;
    socket.bind_auto()?;
    socket.connect(&netlink_sys::SocketAddr::new(0, 0))?;
    let mut out = Vec::new();
    let mut buf = vec![0u8; RECV_BUF];
    for (seq, family) in [(1, AF_INET), (2, AF_INET6)] {
        send_request(&socket, seq, family, q)?;
        // Bounded: a dump of 1M sockets with SKMEMINFO is ~7,000 reads of
        // 32 KiB (the kernel's largest dump skb).
        let mut done = false;
        for _ in 0..MAX_READS {
            let n = match socket.recv(&mut &mut buf[..], libc::MSG_TRUNC) {
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(e),
            };
            if n > buf.len() {
                return Err(bad(format!(
                    "a sock_diag read of {n} bytes does not fit the {} byte buffer",
                    buf.len()
                )));
            }
            if parse_batch(&buf[..n], &mut |s| {
                // The kernel filters by port already; kept as a guard.
                if q.local_port.is_none_or(|p| p == s.local.port()) {
                    out.push(s);
                }
            })? {
                done = true;
                break;
            }
        }
        if !done {
            return Err(bad(format!(
                "sock_diag dump did not end after {MAX_READS} reads"
            )));
        }
    }
    Ok(out)
}

/// Larger than the kernel's largest dump skb (32 KiB).
const RECV_BUF: usize = 64 * 1024;
const MAX_READS: usize = 100_000;

fn bad(msg: String) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, msg)
}

fn send_request(socket: &Socket, seq: u32, family: u8, q: Query) -> io::Result<()> {
    let mut socket_id = if family == AF_INET {
        SocketId::new_v4()
    } else {
        SocketId::new_v6()
    };
    socket_id.source_port = q.local_port.unwrap_or(0);
    let mut header = NetlinkHeader::default();
    header.flags = NLM_F_REQUEST | NLM_F_DUMP;
    header.sequence_number = seq;
    let mut request = NetlinkMessage::new(
        header,
        SockDiagMessage::InetRequest(InetRequest {
            family,
            protocol: IPPROTO_TCP,
            extensions: if q.skmeminfo {
                ExtensionFlags::SKMEMINFO
            } else {
                ExtensionFlags::empty()
            },
            states: StateFlags::from_bits_retain(q.states),
            socket_id,
        })
        .into(),
    );
    request.finalize();
    let mut bytes = vec![0; request.buffer_len()];
    request.serialize(&mut bytes);
    socket.send(&bytes, 0)?;
    Ok(())
}

/// Parses one read of netlink messages, handing each socket to `f`; true
/// at the dump's end.
fn parse_batch(b: &[u8], f: &mut dyn FnMut(TcpSock)) -> io::Result<bool> {
    let mut at = 0;
    // Bounded: every message is at least a 16-byte header.
    while at < b.len() {
        let msg = NetlinkMessage::<SockDiagMessage>::deserialize(&b[at..]).map_err(|e| {
            bad(format!(
                "sock_diag sent a message this client cannot read: {e}"
            ))
        })?;
        match msg.payload {
            NetlinkPayload::InnerMessage(SockDiagMessage::InetResponse(r)) => f(tcp_sock(&r)),
            NetlinkPayload::Done(_) => return Ok(true),
            // A code of 0 would be an ACK, which a dump does not ask for.
            NetlinkPayload::Error(e) if e.code.is_some() => {
                let os = e.to_io();
                return Err(io::Error::new(
                    os.kind(),
                    format!("sock_diag refused the dump: {os}"),
                ));
            }
            NetlinkPayload::Overrun(_) => {
                return Err(bad("sock_diag reported an overrun".into()));
            }
            _ => {}
        }
        // NLMSG_ALIGN: messages start on 4-byte boundaries.
        at += (msg.header.length as usize + 3) & !3;
    }
    Ok(false)
}

fn tcp_sock(r: &InetResponse) -> TcpSock {
    // A dual-stack listener's IPv4 peers come as ::ffff:a.b.c.d.
    let ip = |a: IpAddr| match a {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(IpAddr::V6(v6), IpAddr::V4),
        v4 => v4,
    };
    let id = &r.header.socket_id;
    let mut s = TcpSock {
        local: SocketAddr::new(ip(id.source_address), id.source_port),
        peer: SocketAddr::new(ip(id.destination_address), id.destination_port),
        state: r.header.state,
        send_q: r.header.send_queue,
        recv_q: r.header.recv_queue,
        wmem_queued: 0,
        sndbuf: 0,
        inode: r.header.inode,
    };
    for nla in &r.nlas {
        if let Nla::MemInfo(m) = nla {
            // The crate's names for SK_MEMINFO_WMEM_QUEUED / _SNDBUF.
            s.wmem_queued = m.send_queue;
            s.sndbuf = m.send_queue_max;
        }
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::{
        io::{Read, Write},
        time::{Duration, Instant},
    };

    #[test]
    fn listening_inodes_name_the_listener_only() {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = l.local_addr().unwrap().port();
        let _c = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
        let (_s, _) = l.accept().unwrap();
        let inodes = listening_inodes(port).unwrap();
        assert_eq!(inodes.len(), 1, "{inodes:?}");
        // The same inode as the listener's fd link, socket:[N].
        let fd = std::os::fd::AsRawFd::as_raw_fd(&l);
        let link = std::fs::read_link(format!("/proc/self/fd/{fd}")).unwrap();
        assert_eq!(link.to_str().unwrap(), format!("socket:[{}]", inodes[0]));
        drop(l);
        assert!(listening_inodes(port).unwrap().is_empty());
    }

    /// Writes `chunk`-byte blocks to a connection whose peer never reads
    /// until the kernel takes no more (bounded): the bytes written.
    fn fill_unread(server: &mut std::net::TcpStream, chunk: usize) -> u64 {
        server.set_nonblocking(true).unwrap();
        let block = vec![b'x'; chunk];
        let mut written = 0u64;
        for _ in 0..10_000 {
            match server.write(&block) {
                Ok(n) => written += n as u64,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) => panic!("{e}"),
            }
        }
        written
    }

    /// A connection whose reader never reads: the writer's socket shows
    /// the bytes queued, as the kernel counts them.
    #[test]
    fn a_never_read_connection_shows_its_send_queue() {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = l.local_addr().unwrap().port();
        let client = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
        let (mut server, _) = l.accept().unwrap();
        let written = fill_unread(&mut server, 64 * 1024) as usize;
        let socks = tcp_sockets(port).unwrap();
        let me = client.local_addr().unwrap();
        let s = socks
            .iter()
            .find(|s| s.peer == me)
            .expect("the accepted socket");
        assert_eq!(s.state, TCP_ESTABLISHED);
        // What the client's receive buffer did not take waits in the
        // server's send queue; together they hold every byte written
        // (bytes received but not yet acknowledged are in both).
        let mut probe = client.try_clone().unwrap();
        probe.set_nonblocking(true).unwrap();
        let peer_side = tcp_sockets(me.port()).unwrap();
        let c = peer_side.iter().find(|c| c.peer.port() == port).unwrap();
        assert!(s.send_q as usize <= written, "{s:?} {written}");
        assert!(
            s.send_q as usize + c.recv_q as usize >= written,
            "{s:?} {c:?} {written}"
        );
        assert!(s.send_q > 1 << 20 && s.wmem_queued >= s.send_q, "{s:?}");
        assert!(s.sndbuf > 0);
        let mut b = [0u8; 1];
        let _ = probe.read(&mut b);
    }

    /// A dual-stack (`[::]`) listener's connection from 127.0.0.1 is an
    /// AF_INET6 socket: its peer is given as IPv4, and once every ACK is
    /// in, the writer's Send-Q and the reader's Recv-Q add up to exactly
    /// the bytes written.
    #[test]
    fn an_ipv6_socket_of_an_unread_connection_accounts_every_byte() {
        let l = std::net::TcpListener::bind("[::]:0").unwrap();
        let port = l.local_addr().unwrap().port();
        let client = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
        let (mut server, _) = l.accept().unwrap();
        let written = fill_unread(&mut server, 16 * 1024);
        let me = client.local_addr().unwrap();
        let deadline = Instant::now() + Duration::from_secs(10);
        let (s, c) = loop {
            let s = tcp_sockets(port)
                .unwrap()
                .into_iter()
                .find(|s| s.peer == me)
                .expect("the accepted socket, its peer as IPv4");
            let c = tcp_sockets(me.port())
                .unwrap()
                .into_iter()
                .find(|c| c.peer.port() == port)
                .expect("the client's socket");
            if u64::from(s.send_q) + u64::from(c.recv_q) == written || Instant::now() > deadline {
                break (s, c);
            }
            std::thread::sleep(Duration::from_millis(20));
        };
        eprintln!(
            "written {written} B: server send_q {} wmem_queued {} sndbuf {}, client recv_q {}",
            s.send_q, s.wmem_queued, s.sndbuf, c.recv_q
        );
        assert_eq!(s.local, SocketAddr::from(([127, 0, 0, 1], port)), "{s:?}");
        assert_eq!(s.state, TCP_ESTABLISHED);
        assert_eq!(
            u64::from(s.send_q) + u64::from(c.recv_q),
            written,
            "{s:?} {c:?}"
        );
        assert!(s.send_q > 0, "{s:?}");
        // skb truesize: at least the payload queued.
        assert!(s.wmem_queued >= s.send_q, "{s:?}");
        assert!(s.sndbuf > 0, "{s:?}");
        // The listener is not among the port's connections, and is its
        // only listener.
        assert!(tcp_sockets(port)
            .unwrap()
            .iter()
            .all(|x| x.state != TCP_LISTEN));
        assert_eq!(listening_inodes(port).unwrap().len(), 1);
    }

    #[test]
    fn finds_a_listener_of_this_process_with_its_queue() {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = l.local_addr().unwrap().port();
        // Two connections wait in the accept queue: nobody accepts them.
        let _a = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
        let _b = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
        let found = listen_sockets().unwrap();
        let mine: Vec<_> = found.iter().filter(|x| x.local.port() == port).collect();
        assert_eq!(mine.len(), 1, "{found:?}");
        assert!(mine[0].inode > 0);
        assert_eq!(mine[0].state, TCP_LISTEN);
        assert_eq!(mine[0].recv_q, 2);
        // Without SKMEMINFO asked, no memory figures.
        assert_eq!((mine[0].wmem_queued, mine[0].sndbuf), (0, 0));
    }

    /// A port asked for is filtered by the kernel: a raw dump of it holds
    /// that port's sockets only, though other ports have connections.
    #[test]
    fn the_kernel_filters_by_local_port() {
        let a = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let b = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let pa = a.local_addr().unwrap().port();
        let _ca = std::net::TcpStream::connect(("127.0.0.1", pa)).unwrap();
        let _cb = std::net::TcpStream::connect(b.local_addr().unwrap()).unwrap();
        let mut raw = Vec::new();
        let mut socket = Socket::new(NETLINK_SOCK_DIAG).unwrap();
        socket.bind_auto().unwrap();
        socket.connect(&netlink_sys::SocketAddr::new(0, 0)).unwrap();
        let q = Query {
            states: CONNECTION_STATES,
            local_port: Some(pa),
            skmeminfo: false,
        };
        send_request(&socket, 7, AF_INET, q).unwrap();
        let mut buf = vec![0u8; RECV_BUF];
        let mut done = false;
        for _ in 0..1_000 {
            let n = socket.recv(&mut &mut buf[..], 0).unwrap();
            if parse_batch(&buf[..n], &mut |s| raw.push(s)).unwrap() {
                done = true;
                break;
            }
        }
        assert!(done);
        // The accepted (not yet accept()ed) socket of `a`, nothing else.
        assert_eq!(raw.len(), 1, "{raw:?}");
        assert_eq!(raw[0].local.port(), pa);
        assert_eq!(raw[0].peer, _ca.local_addr().unwrap());
    }

    fn nlmsg(kind: u16, payload: &[u8]) -> Vec<u8> {
        let mut m = Vec::new();
        m.extend_from_slice(&(16 + payload.len() as u32).to_ne_bytes());
        m.extend_from_slice(&kind.to_ne_bytes());
        m.extend_from_slice(&[0u8; 10]);
        m.extend_from_slice(payload);
        m
    }

    #[test]
    fn bad_data_and_kernel_errors_are_io_errors() {
        // NLMSG_ERROR carrying -EPERM.
        let mut err = (-libc::EPERM).to_ne_bytes().to_vec();
        err.extend_from_slice(&[0u8; 16]);
        let e = parse_batch(&nlmsg(2, &err), &mut |_| {}).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::PermissionDenied, "{e}");
        // A header claiming more bytes than were read.
        let mut cut = nlmsg(20, &[0u8; 72]);
        cut.truncate(40);
        let e = parse_batch(&cut, &mut |_| {}).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::InvalidData, "{e}");
        // A SOCK_DIAG_BY_FAMILY answer shorter than inet_diag_msg.
        let e = parse_batch(&nlmsg(20, &[libc::AF_INET as u8, 1, 0, 0]), &mut |_| {}).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::InvalidData, "{e}");
        // NLMSG_DONE ends the dump; nothing after it is read.
        let mut two = nlmsg(3, &[0u8; 4]);
        two.extend_from_slice(&[0xff; 7]);
        assert!(parse_batch(&two, &mut |_| {}).unwrap());
    }
}
