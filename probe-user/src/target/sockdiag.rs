//! LISTEN sockets of a network namespace from the kernel's `sock_diag`
//! netlink interface (what `ss` uses). Asking for the LISTEN state only, the
//! kernel walks its listening hash and never the established one, so the
//! cost does not grow with the number of connections — unlike reading
//! `/proc/net/tcp`, which prints every socket of the namespace.

use netlink_packet_core::{
    NetlinkHeader, NetlinkMessage, NetlinkPayload, NLM_F_DUMP, NLM_F_REQUEST,
};
use netlink_packet_sock_diag::{
    constants::{AF_INET, AF_INET6, IPPROTO_TCP},
    inet::{ExtensionFlags, InetRequest, SocketId, StateFlags},
    SockDiagMessage,
};
use netlink_sys::{protocols::NETLINK_SOCK_DIAG, Socket, SocketAddr};

use super::Listener;

/// Every TCP LISTEN socket (IPv4 and IPv6) of the caller's network
/// namespace: port, inode and accept-queue depth.
pub fn listen_sockets() -> std::io::Result<Vec<Listener>> {
    let mut socket = Socket::new(NETLINK_SOCK_DIAG)?;
    socket.bind_auto()?;
    socket.connect(&SocketAddr::new(0, 0))?;
    let mut out = Vec::new();
    for (family, id) in [
        (AF_INET, SocketId::new_v4()),
        (AF_INET6, SocketId::new_v6()),
    ] {
        dump(&socket, family, id, &mut out)?;
    }
    Ok(out)
}

fn dump(socket: &Socket, family: u8, id: SocketId, out: &mut Vec<Listener>) -> std::io::Result<()> {
    let mut header = NetlinkHeader::default();
    header.flags = NLM_F_REQUEST | NLM_F_DUMP;
    let mut request = NetlinkMessage::new(
        header,
        SockDiagMessage::InetRequest(InetRequest {
            family,
            protocol: IPPROTO_TCP,
            extensions: ExtensionFlags::empty(),
            states: StateFlags::LISTEN,
            socket_id: id,
        })
        .into(),
    );
    request.finalize();
    let mut buf = vec![0; request.buffer_len()];
    request.serialize(&mut buf);
    socket.send(&buf, 0)?;
    let bad = |e: String| std::io::Error::new(std::io::ErrorKind::InvalidData, e);
    // Bounded: a dump ends with NLMSG_DONE; a namespace has few listeners.
    for _ in 0..10_000 {
        let (bytes, _) = socket.recv_from_full()?;
        let mut at = 0;
        while at < bytes.len() {
            let msg = NetlinkMessage::<SockDiagMessage>::deserialize(&bytes[at..])
                .map_err(|e| bad(format!("sock_diag: {e}")))?;
            let len = msg.header.length as usize;
            match msg.payload {
                NetlinkPayload::InnerMessage(SockDiagMessage::InetResponse(r)) => {
                    out.push(Listener {
                        port: r.header.socket_id.source_port,
                        inode: u64::from(r.header.inode),
                        queue: u64::from(r.header.recv_queue),
                    })
                }
                NetlinkPayload::Done(_) => return Ok(()),
                NetlinkPayload::Error(e) => {
                    return Err(bad(format!("sock_diag answered an error: {e:?}")));
                }
                _ => {}
            }
            if len == 0 {
                break;
            }
            at += len;
        }
    }
    Err(bad("sock_diag dump did not end".into()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_a_listener_of_this_process_with_its_queue() {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = l.local_addr().unwrap().port();
        // Two connections wait in the accept queue: nobody accepts them.
        let _a = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
        let _b = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
        let found = listen_sockets().unwrap();
        let mine: Vec<_> = found.iter().filter(|x| x.port == port).collect();
        assert_eq!(mine.len(), 1, "{found:?}");
        assert!(mine[0].inode > 0);
        assert_eq!(mine[0].queue, 2);
    }
}
