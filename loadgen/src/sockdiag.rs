//! The target's TCP sockets as the kernel sees them, through sock_diag
//! (`NETLINK_SOCK_DIAG`, `inet_diag_req_v2` dumps of AF_INET and AF_INET6
//! with `INET_DIAG_SKMEMINFO`): per socket its send queue (`sk_wmem_queued`,
//! bytes queued for sending including unacked ones), unacked/unsent bytes
//! (`idiag_wqueue`, ss' Send-Q), receive queue and buffer sizes; and the
//! inodes of a port's listening sockets (kill-restart finds the restarted
//! target by them).
//!
//! Why sock_diag and not the probes' send hook: a slow consumer's socket
//! matters most once the server has *stopped* writing to it (waiting for
//! EPOLLOUT, or keeping the backlog in its own memory): the send hook
//! never fires then, so it cannot see the queue stay full, and the hook is
//! the observer's hottest path. A dump every 100 ms of the sockets of the
//! target's port costs the target nothing and needs no root.

use std::{
    io,
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr},
};

/// One TCP socket (the target's side of a connection when its local port
/// is the target's).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TcpSock {
    pub local: SocketAddr,
    pub peer: SocketAddr,
    /// TCP state (include/net/tcp_states.h: 1 ESTABLISHED, 4 FIN_WAIT1, …).
    pub state: u8,
    /// Bytes written and not yet acknowledged by the peer (Send-Q).
    pub send_q: u32,
    /// Bytes received and not yet read (Recv-Q).
    pub recv_q: u32,
    /// `sk_wmem_queued`: bytes of the send queue's buffers (skb truesize).
    pub wmem_queued: u32,
    pub sndbuf: u32,
    pub inode: u32,
}

pub const TCP_ESTABLISHED: u8 = 1;

const NETLINK_SOCK_DIAG: libc::c_int = 4;
const SOCK_DIAG_BY_FAMILY: u16 = 20;
const NLMSG_ERROR: u16 = 2;
const NLMSG_DONE: u16 = 3;
const INET_DIAG_SKMEMINFO: u16 = 7;
const SK_MEMINFO_WMEM_QUEUED: usize = 5;
const SK_MEMINFO_SNDBUF: usize = 3;
const TCP_LISTEN: u32 = 10;

/// `struct nlmsghdr` + `struct inet_diag_req_v2` (include/uapi/linux/inet_diag.h).
#[repr(C)]
struct Request {
    len: u32,
    kind: u16,
    flags: u16,
    seq: u32,
    pid: u32,
    family: u8,
    protocol: u8,
    ext: u8,
    pad: u8,
    states: u32,
    // struct inet_diag_sockid: zero = every socket (a dump)
    id: [u8; 48],
}

/// Every TCP socket (of the caller's network namespace) whose local port
/// is `port`, but the listener: the target's side of its connections.
pub fn tcp_sockets(port: u16) -> io::Result<Vec<TcpSock>> {
    let mut out = Vec::new();
    for family in [libc::AF_INET as u8, libc::AF_INET6 as u8] {
        dump(family, !(1u32 << TCP_LISTEN), &mut |s| {
            if s.local.port() == port {
                out.push(s);
            }
        })?;
    }
    Ok(out)
}

/// Inodes of the sockets listening on `port` (IPv4 and IPv6). The kernel
/// dumps only its listening table for this query: the cost does not grow
/// with connections or TIME_WAIT sockets, as reading /proc/net/tcp does
/// (tens of thousands of TIME_WAIT sockets after a load made one read of
/// it take seconds on a busy machine).
pub fn listening_inodes(port: u16) -> io::Result<Vec<u64>> {
    let mut out = Vec::new();
    for family in [libc::AF_INET as u8, libc::AF_INET6 as u8] {
        dump(family, 1u32 << TCP_LISTEN, &mut |s| {
            if s.local.port() == port && u32::from(s.state) == TCP_LISTEN {
                out.push(u64::from(s.inode));
            }
        })?;
    }
    Ok(out)
}

/// Dumps the TCP sockets of `family` in `states` (a bit per TCP state).
fn dump(family: u8, states: u32, f: &mut dyn FnMut(TcpSock)) -> io::Result<()> {
    // SAFETY: plain socket(2); the fd is owned below.
    let fd = unsafe {
        libc::socket(
            libc::AF_NETLINK,
            libc::SOCK_DGRAM | libc::SOCK_CLOEXEC,
            NETLINK_SOCK_DIAG,
        )
    };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: fd was just returned by socket(2) and is not used elsewhere.
    let fd = unsafe { <std::os::fd::OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(fd) };
    let raw = std::os::fd::AsRawFd::as_raw_fd(&fd);
    let req = Request {
        len: std::mem::size_of::<Request>() as u32,
        kind: SOCK_DIAG_BY_FAMILY,
        flags: (libc::NLM_F_REQUEST | libc::NLM_F_DUMP) as u16,
        seq: 1,
        pid: 0,
        family,
        protocol: libc::IPPROTO_TCP as u8,
        ext: 1 << (INET_DIAG_SKMEMINFO - 1),
        pad: 0,
        states,
        id: [0; 48],
    };
    // SAFETY: a zeroed sockaddr_nl addresses the kernel.
    let mut sa: libc::sockaddr_nl = unsafe { std::mem::zeroed() };
    sa.nl_family = libc::AF_NETLINK as u16;
    // SAFETY: req and sa are valid for their sizes for the call's duration.
    let n = unsafe {
        libc::sendto(
            raw,
            (&req as *const Request).cast(),
            std::mem::size_of::<Request>(),
            0,
            (&sa as *const libc::sockaddr_nl).cast(),
            std::mem::size_of::<libc::sockaddr_nl>() as u32,
        )
    };
    if n < 0 {
        return Err(io::Error::last_os_error());
    }
    let mut buf = vec![0u8; 64 * 1024];
    // Bounded: a dump of 1M sockets is ~2,000 reads of 64 KiB.
    for _ in 0..100_000 {
        // SAFETY: buf is valid for writes of its length.
        let n = unsafe { libc::recv(raw, buf.as_mut_ptr().cast(), buf.len(), 0) };
        if n < 0 {
            let e = io::Error::last_os_error();
            if e.kind() == io::ErrorKind::Interrupted {
                continue;
            }
            return Err(e);
        }
        if parse_batch(&buf[..n as usize], f)? {
            return Ok(());
        }
    }
    Err(io::Error::other("sock_diag dump did not end"))
}

fn u16_at(b: &[u8], at: usize) -> u16 {
    u16::from_ne_bytes([b[at], b[at + 1]])
}

fn u32_at(b: &[u8], at: usize) -> u32 {
    u32::from_ne_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}

/// Parses one read of netlink messages; true at the dump's end.
fn parse_batch(mut b: &[u8], f: &mut dyn FnMut(TcpSock)) -> io::Result<bool> {
    while b.len() >= 16 {
        let len = u32_at(b, 0) as usize;
        let kind = u16_at(b, 4);
        if len < 16 || len > b.len() {
            return Err(io::Error::other("truncated sock_diag message"));
        }
        match kind {
            NLMSG_DONE => return Ok(true),
            NLMSG_ERROR => {
                let errno = if len >= 20 {
                    -(u32_at(b, 16) as i32)
                } else {
                    0
                };
                return Err(io::Error::from_raw_os_error(errno));
            }
            SOCK_DIAG_BY_FAMILY => {
                if let Some(s) = parse_msg(&b[16..len]) {
                    f(s);
                }
            }
            _ => {}
        }
        let step = (len + 3) & !3;
        if step >= b.len() {
            break;
        }
        b = &b[step..];
    }
    Ok(false)
}

/// `struct inet_diag_msg` (72 bytes) and its attributes.
fn parse_msg(m: &[u8]) -> Option<TcpSock> {
    if m.len() < 72 {
        return None;
    }
    let family = m[0];
    let state = m[1];
    let sport = u16::from_be_bytes([m[4], m[5]]);
    let dport = u16::from_be_bytes([m[6], m[7]]);
    let addr = |at: usize| -> IpAddr {
        if family == libc::AF_INET as u8 {
            IpAddr::V4(Ipv4Addr::new(m[at], m[at + 1], m[at + 2], m[at + 3]))
        } else {
            let mut a = [0u8; 16];
            a.copy_from_slice(&m[at..at + 16]);
            let v6 = Ipv6Addr::from(a);
            v6.to_ipv4_mapped().map_or(IpAddr::V6(v6), IpAddr::V4)
        }
    };
    let mut s = TcpSock {
        local: SocketAddr::new(addr(8), sport),
        peer: SocketAddr::new(addr(24), dport),
        state,
        recv_q: u32_at(m, 56),
        send_q: u32_at(m, 60),
        wmem_queued: 0,
        sndbuf: 0,
        inode: u32_at(m, 68),
    };
    let mut a = &m[72..];
    while a.len() >= 4 {
        let len = u16_at(a, 0) as usize;
        let kind = u16_at(a, 2);
        if len < 4 || len > a.len() {
            break;
        }
        if kind == INET_DIAG_SKMEMINFO && len >= 4 + 4 * (SK_MEMINFO_WMEM_QUEUED + 1) {
            s.wmem_queued = u32_at(a, 4 + 4 * SK_MEMINFO_WMEM_QUEUED);
            s.sndbuf = u32_at(a, 4 + 4 * SK_MEMINFO_SNDBUF);
        }
        let step = (len + 3) & !3;
        if step >= a.len() {
            break;
        }
        a = &a[step..];
    }
    Some(s)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Read, Write};

    /// A connection whose reader never reads: the writer's socket shows
    /// the bytes queued, as the kernel counts them.
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

    #[test]
    fn a_never_read_connection_shows_its_send_queue() {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = l.local_addr().unwrap().port();
        let client = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
        let (mut server, _) = l.accept().unwrap();
        server.set_nonblocking(true).unwrap();
        let chunk = vec![b'x'; 64 * 1024];
        let mut written = 0usize;
        for _ in 0..10_000 {
            match server.write(&chunk) {
                Ok(n) => written += n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) => panic!("{e}"),
            }
        }
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
}
