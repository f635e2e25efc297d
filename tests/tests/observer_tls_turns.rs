//! The setup flame graph splits the TLS handshake by whose turn it was:
//! clients that wait a known 40 ms before answering the server's flight
//! (their Finished) put that time in `client_turns`, not in the target's.
//! Needs root (probes).

use pushscope_tests::{
    heavy_lock,
    observer::{tls_material, Observe},
    pusher::Pusher,
    skip_unless_root,
};
use std::{
    io::{Read, Write},
    net::TcpStream,
    sync::Arc,
    time::Duration,
};

const N: usize = 10;
const DELAY: Duration = Duration::from_millis(40);

/// A TCP stream whose second write (the client's answer to the server's
/// handshake flight) waits `DELAY` first: a slow client, injected.
struct SlowAnswer {
    tcp: TcpStream,
    writes: usize,
}

impl Read for SlowAnswer {
    fn read(&mut self, b: &mut [u8]) -> std::io::Result<usize> {
        self.tcp.read(b)
    }
}

impl Write for SlowAnswer {
    fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
        self.writes += 1;
        if self.writes == 2 {
            std::thread::sleep(DELAY); // the injected client delay
        }
        self.tcp.write(b)
    }
    fn flush(&mut self) -> std::io::Result<()> {
        self.tcp.flush()
    }
}

fn slow_client(addr: std::net::SocketAddr, cfg: Arc<rustls::ClientConfig>) {
    let name = rustls::pki_types::ServerName::try_from("localhost").unwrap();
    let conn = rustls::ClientConnection::new(cfg, name).unwrap();
    let tcp = TcpStream::connect(addr).unwrap();
    tcp.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let mut tls = rustls::StreamOwned::new(conn, SlowAnswer { tcp, writes: 0 });
    // The upgrade after the handshake confirms it (and ends the TLS phase).
    tls.write_all(
        b"GET /ws?channel=turns HTTP/1.1\r\nHost: localhost\r\nUpgrade: websocket\r\n\
          Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\
          Sec-WebSocket-Version: 13\r\n\r\n",
    )
    .unwrap();
    let mut head = Vec::new();
    let mut b = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        assert_eq!(tls.read(&mut b).unwrap(), 1, "EOF before the 101");
        head.push(b[0]);
    }
    assert!(head.starts_with(b"HTTP/1.1 101"), "{head:?}");
}

#[test]
fn a_slow_tls_client_shows_as_client_turns_in_the_setup_graph_needs_root() {
    if skip_unless_root("a_slow_tls_client_shows_as_client_turns_in_the_setup_graph_needs_root") {
        return;
    }
    let _l = heavy_lock();
    let dir = tempfile::tempdir().unwrap();
    let (cert, key, cfg) = tls_material(dir.path());
    let p = Pusher::start(&["--tls-cert", &cert, "--tls-key", &key]).unwrap();
    let mut obs = Observe::start(p.pid(), &[]).unwrap();
    for _ in 0..N {
        slow_client(p.addr, cfg.clone());
    }
    let summary = obs.stop().unwrap();
    assert_eq!(
        summary["observer"]["phases_ms"]["tls_handshake"]["count"], N as u64,
        "{:#}",
        summary["observer"]
    );
    let folded = std::fs::read_to_string(obs.out.join("lifecycle.folded")).unwrap();
    let us = |stack: &str| -> u64 {
        folded
            .lines()
            .find_map(|l| l.strip_prefix(stack)?.trim().parse().ok())
            .unwrap_or(0)
    };
    let client = us("setup;tls_handshake;client_turns ");
    let target = us("setup;tls_handshake;target_turns ");
    let injected = (N as u128 * DELAY.as_micros()) as u64;
    assert!(
        client >= injected,
        "client turns {client} µs < {injected}: {folded}"
    );
    assert!(target < injected / 2, "target turns {target} µs: {folded}");
}
