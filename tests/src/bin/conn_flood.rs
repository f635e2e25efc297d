//! Bench helper of `cargo xtask bench observer`: opens `--count`
//! connections to `--addr` at `--rate` per second from source address
//! `--src` (spread 127.0.0.x to avoid ephemeral-port exhaustion), sends a
//! WebSocket upgrade request on each (`--path`), waits for the status line,
//! holds each connection `--hold-ms`, then closes it. Prints `key=value`
//! lines: established, upgraded, failed, seconds, rate. Every loop is
//! bounded by the count and a deadline.

use std::{
    collections::VecDeque,
    io::{Read, Write},
    net::{Ipv4Addr, SocketAddr, SocketAddrV4, TcpStream},
    os::fd::FromRawFd,
    time::{Duration, Instant},
};

fn arg(name: &str) -> Option<String> {
    let args: Vec<String> = std::env::args().collect();
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1))
        .cloned()
}

/// connect() from a chosen loopback source address (port chosen at connect).
fn connect_from(src: Ipv4Addr, dst: SocketAddrV4) -> std::io::Result<TcpStream> {
    // SAFETY: plain socket syscalls on an fd we own; it is wrapped in a
    // TcpStream (which closes it) before any early return after socket().
    unsafe {
        let fd = libc::socket(libc::AF_INET, libc::SOCK_STREAM | libc::SOCK_CLOEXEC, 0);
        if fd < 0 {
            return Err(std::io::Error::last_os_error());
        }
        let stream = TcpStream::from_raw_fd(fd);
        let one: libc::c_int = 1;
        // Defer port choice to connect(): ports are then unique per 4-tuple.
        libc::setsockopt(
            fd,
            libc::IPPROTO_IP,
            libc::IP_BIND_ADDRESS_NO_PORT,
            (&one as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>() as u32,
        );
        let sin = |a: SocketAddrV4| libc::sockaddr_in {
            sin_family: libc::AF_INET as u16,
            sin_port: a.port().to_be(),
            sin_addr: libc::in_addr {
                s_addr: u32::from(*a.ip()).to_be(),
            },
            sin_zero: [0; 8],
        };
        let s = sin(SocketAddrV4::new(src, 0));
        let len = std::mem::size_of::<libc::sockaddr_in>() as u32;
        if libc::bind(fd, (&s as *const libc::sockaddr_in).cast(), len) != 0 {
            return Err(std::io::Error::last_os_error());
        }
        let d = sin(dst);
        if libc::connect(fd, (&d as *const libc::sockaddr_in).cast(), len) != 0 {
            return Err(std::io::Error::last_os_error());
        }
        Ok(stream)
    }
}

fn main() -> anyhow::Result<()> {
    let addr: SocketAddr = arg("--addr")
        .ok_or_else(|| anyhow::anyhow!("--addr HOST:PORT is required"))?
        .parse()?;
    let SocketAddr::V4(dst) = addr else {
        anyhow::bail!("--addr must be IPv4");
    };
    let count: usize = arg("--count").map_or(Ok(1000), |v| v.parse())?;
    let rate: f64 = arg("--rate").map_or(Ok(500.0), |v| v.parse())?;
    let hold = Duration::from_millis(arg("--hold-ms").map_or(Ok(1000), |v| v.parse())?);
    let src: Ipv4Addr = arg("--src").map_or(Ok(Ipv4Addr::LOCALHOST), |v| v.parse())?;
    let path = arg("--path").unwrap_or_else(|| "/ws?channel=bench".to_string());
    let request = format!(
        "GET {path} HTTP/1.1\r\nHost: localhost\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
    );
    let started = Instant::now();
    let deadline = started + Duration::from_secs_f64(count as f64 / rate * 3.0 + 30.0);
    let (mut established, mut upgraded, mut failed) = (0u64, 0u64, 0u64);
    let mut open: VecDeque<(Instant, TcpStream)> = VecDeque::new();
    for i in 0..count {
        if Instant::now() > deadline {
            break;
        }
        // Open-model schedule: connection i starts at i / rate.
        let due = started + Duration::from_secs_f64(i as f64 / rate);
        if let Some(wait) = due.checked_duration_since(Instant::now()) {
            std::thread::sleep(wait);
        }
        while open.front().is_some_and(|(t, _)| t.elapsed() >= hold) {
            open.pop_front();
        }
        match connect_from(src, dst) {
            Ok(mut s) => {
                established += 1;
                let _ = s.set_read_timeout(Some(Duration::from_secs(5)));
                let mut buf = [0u8; 12];
                if s.write_all(request.as_bytes()).is_ok() && s.read_exact(&mut buf).is_ok() {
                    if &buf == b"HTTP/1.1 101" {
                        upgraded += 1;
                    }
                } else {
                    failed += 1;
                }
                open.push_back((Instant::now(), s));
            }
            Err(_) => failed += 1,
        }
    }
    let connect_secs = started.elapsed().as_secs_f64();
    while let Some((t, s)) = open.pop_front() {
        if let Some(w) = hold.checked_sub(t.elapsed()) {
            std::thread::sleep(w);
        }
        drop(s);
    }
    println!("established={established}");
    println!("upgraded={upgraded}");
    println!("failed={failed}");
    println!("seconds={connect_secs:.3}");
    println!("rate={:.0}", established as f64 / connect_secs);
    Ok(())
}
