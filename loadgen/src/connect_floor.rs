//! The ramp's floor: how many WebSocket-shaped connections per second this
//! host's kernel alone can set up on loopback, with no application work on
//! either side. Servers accept, read the upgrade request and write a fixed
//! `101` (no key hashing, no parsing); clients connect from 127.0.0.1–8,
//! write a fixed upgrade request and read the answer. Every connection is
//! held until all are up, like a real ramp, so the kernel's hash tables
//! grow as they do under `pushscope load`.
//!
//! Sharded over processes (the per-process fd limit, 20,000 here): each
//! server shard has its own `SO_REUSEPORT` listener and one epoll loop,
//! each client shard one epoll loop with a bounded number of connects in
//! flight. The parent (`pushscope-loadgen connect-floor`) starts them,
//! waits for every client's "done", and reports the rate and the CPU each
//! side spent per connection. `cargo xtask bench scale` runs it beside the
//! NGINX ramp: a real server can ramp no faster than this.

use anyhow::{bail, Context, Result};
use std::{
    io::{BufRead, BufReader, Write},
    net::Ipv4Addr,
    os::fd::RawFd,
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

/// What `tungstenite` sends for `/sub/{channel}` (same length and shape).
const REQUEST: &[u8] = b"GET /sub/floor-0000 HTTP/1.1\r\nHost: 127.0.0.1\r\n\
Connection: Upgrade\r\nUpgrade: websocket\r\nSec-WebSocket-Version: 13\r\n\
Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n";
const RESPONSE_HEAD: &str = "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n\
Connection: Upgrade\r\nSec-WebSocket-Accept: ";
/// Connects in flight per client shard: enough to keep both cores busy,
/// few enough that the accept queues (somaxconn) never overflow.
const IN_FLIGHT: usize = 128;
const SOURCES: u64 = 8;
/// Connections per shard: each end's fds stay under the 20,000 limit.
const PER_SHARD: u64 = 14_000;

#[derive(Debug, clap::Args)]
pub struct FloorArgs {
    /// Connections to set up and hold.
    #[arg(long, default_value_t = 100_000)]
    pub connections: u64,
    /// Client shards (as many server shards): ≤ 14,000 connections each.
    #[arg(long)]
    pub shards: Option<u64>,
    /// Give up after this many seconds.
    #[arg(long, default_value_t = 120)]
    pub timeout_s: u64,
    /// Internal: run one server shard on this port.
    #[arg(long, hide = true)]
    pub serve_port: Option<u16>,
    /// Internal: run one client shard to this port.
    #[arg(long, hide = true)]
    pub client_port: Option<u16>,
}

/// The floor's figures (printed as JSON by the subcommand).
#[derive(Debug, serde::Serialize)]
pub struct Floor {
    pub connections: u64,
    pub shards: u64,
    pub failed: u64,
    pub seconds: f64,
    pub connections_per_s: f64,
    /// CPU (user + system, incl. softirq run in their context) per connection.
    pub server_cpu_us_per_connection: f64,
    pub client_cpu_us_per_connection: f64,
    /// The whole machine's busy time per connection (every core).
    pub machine_busy_us_per_connection: f64,
    pub machine_busy_pct: f64,
}

pub fn run(a: FloorArgs) -> Result<()> {
    if let Some(port) = a.serve_port {
        return serve(port);
    }
    if let Some(port) = a.client_port {
        return client(port, a.connections);
    }
    let shards = a
        .shards
        .unwrap_or_else(|| a.connections.div_ceil(PER_SHARD).max(1));
    if a.connections == 0 || shards == 0 || a.connections.div_ceil(shards) > PER_SHARD {
        return Err(crate::outcome::usage(format!(
            "connect-floor needs --connections ≥ 1 and at most {PER_SHARD} per shard: use --shards {} or more",
            a.connections.div_ceil(PER_SHARD).max(1)
        )));
    }
    let floor = measure(a.connections, shards, Duration::from_secs(a.timeout_s))?;
    println!("{}", serde_json::to_string(&floor)?);
    if floor.failed > 0 {
        bail!(
            "{} of {} floor connections failed",
            floor.failed,
            floor.connections
        );
    }
    Ok(())
}

/// Kills a shard when dropped (also on error paths).
struct Shard(Child);

impl Drop for Shard {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn measure(n: u64, shards: u64, timeout: Duration) -> Result<Floor> {
    let port = std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port();
    let exe = std::env::current_exe()?;
    let spawn = |args: &[String]| -> Result<Shard> {
        Ok(Shard(
            Command::new(&exe)
                .arg("connect-floor")
                .args(args)
                .stdin(Stdio::piped())
                .stdout(Stdio::piped())
                .spawn()
                .context("starting a floor shard")?,
        ))
    };
    let mut servers = Vec::new();
    for _ in 0..shards {
        let mut s = spawn(&["--serve-port".into(), port.to_string()])?;
        wait_line(&mut s, "listening")?;
        servers.push(s);
    }
    let (machine0, t0) = (machine_busy_ns(), Instant::now());
    let mut clients = Vec::new();
    for i in 0..shards {
        let share = n / shards + u64::from(i < n % shards);
        clients.push(spawn(&[
            "--client-port".into(),
            port.to_string(),
            "--connections".into(),
            share.to_string(),
        ])?);
    }
    let deadline = t0 + timeout;
    let mut failed = 0;
    for c in &mut clients {
        let line = wait_line_until(c, "done", deadline)?;
        failed += line
            .split_whitespace()
            .nth(1)
            .and_then(|v| v.parse::<u64>().ok())
            .unwrap_or(0);
    }
    let seconds = t0.elapsed().as_secs_f64();
    let machine = machine_busy_ns().saturating_sub(machine0);
    let cpu = |shards: &[Shard]| -> u64 { shards.iter().map(|s| cpu_ns(s.0.id())).sum() };
    let (server_ns, client_ns) = (cpu(&servers), cpu(&clients));
    let per = |ns: u64| ns as f64 / 1e3 / n as f64;
    let cores = std::thread::available_parallelism().map_or(1, |c| c.get()) as f64;
    Ok(Floor {
        connections: n,
        shards,
        failed,
        seconds,
        connections_per_s: (n - failed) as f64 / seconds,
        server_cpu_us_per_connection: per(server_ns),
        client_cpu_us_per_connection: per(client_ns),
        machine_busy_us_per_connection: per(machine),
        machine_busy_pct: machine as f64 / (seconds * 1e9 * cores) * 100.0,
    })
}

fn wait_line(s: &mut Shard, word: &str) -> Result<String> {
    wait_line_until(s, word, Instant::now() + Duration::from_secs(10))
}

/// Reads the shard's stdout until a line starting with `word`. The read
/// blocks, so the deadline is checked between lines and the shard itself
/// gives up at its own deadline (it prints "done" with its failures then).
fn wait_line_until(s: &mut Shard, word: &str, deadline: Instant) -> Result<String> {
    let out = s.0.stdout.as_mut().context("shard stdout")?;
    let mut reader = BufReader::new(out);
    loop {
        let mut line = String::new();
        if reader.read_line(&mut line)? == 0 {
            bail!("a floor shard exited before saying {word}");
        }
        if line.starts_with(word) {
            return Ok(line);
        }
        if Instant::now() > deadline {
            bail!("a floor shard did not say {word} in time");
        }
    }
}

fn cpu_ns(pid: u32) -> u64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // After the command's ")": state (field 3), ppid (4) … utime (14), stime (15).
    let rest = stat.rsplit_once(')').map_or("", |(_, r)| r);
    let f: Vec<&str> = rest.split_whitespace().collect();
    let at = |i: usize| f.get(i).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0);
    // USER_HZ is 100 on Linux x86-64
    (at(11) + at(12)) * 10_000_000
}

fn machine_busy_ns() -> u64 {
    let text = std::fs::read_to_string("/proc/stat").unwrap_or_default();
    let f: Vec<u64> = text
        .lines()
        .next()
        .unwrap_or_default()
        .split_whitespace()
        .skip(1)
        .filter_map(|v| v.parse().ok())
        .collect();
    let at = |i: usize| f.get(i).copied().unwrap_or(0);
    // user nice system idle iowait irq softirq steal
    ((0..8).map(at).sum::<u64>() - at(3) - at(4)) * 10_000_000
}

fn check(rc: libc::c_int, what: &str) -> Result<libc::c_int> {
    if rc < 0 {
        return Err(std::io::Error::last_os_error()).context(what.to_string());
    }
    Ok(rc)
}

fn epoll_add(ep: RawFd, fd: RawFd, events: u32) -> Result<()> {
    let mut ev = libc::epoll_event {
        events,
        u64: fd as u64,
    };
    // SAFETY: valid epoll and socket fds, `ev` outlives the call.
    check(
        unsafe { libc::epoll_ctl(ep, libc::EPOLL_CTL_ADD, fd, &mut ev) },
        "epoll_ctl",
    )?;
    Ok(())
}

fn set_int(fd: RawFd, level: libc::c_int, opt: libc::c_int, v: libc::c_int) -> Result<()> {
    // SAFETY: setsockopt on our socket with an int value.
    check(
        unsafe {
            libc::setsockopt(
                fd,
                level,
                opt,
                (&v as *const libc::c_int).cast(),
                std::mem::size_of::<libc::c_int>() as libc::socklen_t,
            )
        },
        "setsockopt",
    )?;
    Ok(())
}

fn sockaddr(ip: Ipv4Addr, port: u16) -> libc::sockaddr_in {
    libc::sockaddr_in {
        sin_family: libc::AF_INET as libc::sa_family_t,
        sin_port: port.to_be(),
        sin_addr: libc::in_addr {
            s_addr: u32::from(ip).to_be(),
        },
        sin_zero: [0; 8],
    }
}

fn new_socket() -> Result<RawFd> {
    // SAFETY: plain socket(2).
    check(
        unsafe {
            libc::socket(
                libc::AF_INET,
                libc::SOCK_STREAM | libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC,
                0,
            )
        },
        "socket",
    )
}

/// Reads until EAGAIN: (the bytes of the last read ended with a blank
/// line — the request or response is whole: both fit one segment —, its
/// length, EOF).
fn read_all(fd: RawFd, buf: &mut [u8]) -> (bool, usize, bool) {
    let (mut whole, mut len, mut eof) = (false, 0, false);
    // Bounded: a peer sends one request or response.
    for _ in 0..16 {
        // SAFETY: reading into our buffer.
        let r = unsafe { libc::read(fd, buf.as_mut_ptr().cast(), buf.len()) };
        if r == 0 {
            eof = true;
            break;
        }
        if r < 0 {
            break;
        }
        len = r as usize;
        whole |= buf[..len].ends_with(b"\r\n\r\n");
    }
    (whole, len, eof)
}

/// The 101 for a request: a real `Sec-WebSocket-Accept` (a SHA-1, ~1 µs),
/// so `pushscope load` itself can ramp against a floor server too.
fn response(request: &[u8]) -> Vec<u8> {
    const KEY: &[u8] = b"Sec-WebSocket-Key: ";
    let key = request
        .windows(KEY.len())
        .position(|w| w.eq_ignore_ascii_case(KEY))
        .map(|at| &request[at + KEY.len()..])
        .and_then(|rest| rest.split(|b| *b == b'\r').next())
        .unwrap_or_default();
    let accept = tokio_tungstenite::tungstenite::handshake::derive_accept_key(key);
    format!("{RESPONSE_HEAD}{accept}\r\n\r\n").into_bytes()
}

fn write_all(fd: RawFd, bytes: &[u8]) -> bool {
    // SAFETY: writing our static bytes; a fresh socket's buffer takes them.
    let r = unsafe { libc::write(fd, bytes.as_ptr().cast(), bytes.len()) };
    r == bytes.len() as isize
}

/// One server shard: accept, answer each request with the fixed 101, hold.
fn serve(port: u16) -> Result<()> {
    let lfd = new_socket()?;
    set_int(lfd, libc::SOL_SOCKET, libc::SO_REUSEADDR, 1)?;
    set_int(lfd, libc::SOL_SOCKET, libc::SO_REUSEPORT, 1)?;
    let addr = sockaddr(Ipv4Addr::LOCALHOST, port);
    // SAFETY: binding our socket to a valid sockaddr_in.
    check(
        unsafe {
            libc::bind(
                lfd,
                (&addr as *const libc::sockaddr_in).cast(),
                std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t,
            )
        },
        "bind",
    )?;
    // SAFETY: listen on our bound socket.
    check(unsafe { libc::listen(lfd, 4096) }, "listen")?;
    // SAFETY: a new epoll instance.
    let ep = check(unsafe { libc::epoll_create1(libc::EPOLL_CLOEXEC) }, "epoll")?;
    epoll_add(ep, lfd, libc::EPOLLIN as u32)?;
    println!("listening");
    std::io::stdout().flush()?;
    // The parent kills the shard when the floor is measured; bounded anyway.
    let deadline = Instant::now() + Duration::from_secs(600);
    let mut events = vec![libc::epoll_event { events: 0, u64: 0 }; 256];
    let mut buf = [0u8; 2048];
    while Instant::now() < deadline {
        // SAFETY: `events` has room for its length.
        let n = unsafe { libc::epoll_wait(ep, events.as_mut_ptr(), events.len() as i32, 1000) };
        for ev in events.iter().take(n.max(0) as usize) {
            let fd = ev.u64 as RawFd;
            if fd == lfd {
                // Bounded: the accept queue holds at most the backlog.
                for _ in 0..4096 {
                    // SAFETY: accept4 on our listener, no address wanted.
                    let c = unsafe {
                        libc::accept4(
                            lfd,
                            std::ptr::null_mut(),
                            std::ptr::null_mut(),
                            libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC,
                        )
                    };
                    if c < 0 {
                        break;
                    }
                    epoll_add(ep, c, (libc::EPOLLIN | libc::EPOLLET) as u32)?;
                }
            } else {
                let (whole, len, eof) = read_all(fd, &mut buf);
                if whole {
                    write_all(fd, &response(&buf[..len]));
                }
                if eof {
                    // SAFETY: closing a connection this shard owns.
                    unsafe { libc::close(fd) };
                }
            }
        }
    }
    Ok(())
}

/// One client shard: `n` connections, at most IN_FLIGHT connecting at once,
/// each upgraded with the fixed request; prints "done <failed>" when every
/// one is up or failed, then holds them until killed.
fn client(port: u16, n: u64) -> Result<()> {
    // SAFETY: a new epoll instance.
    let ep = check(unsafe { libc::epoll_create1(libc::EPOLL_CLOEXEC) }, "epoll")?;
    let (mut started, mut done, mut failed, mut in_flight) = (0u64, 0u64, 0u64, 0usize);
    let mut events = vec![libc::epoll_event { events: 0, u64: 0 }; 256];
    let mut buf = [0u8; 2048];
    // Each fd's step: 0 none, CONNECTING, SENT (request written), UP.
    const CONNECTING: u8 = 1;
    const SENT: u8 = 2;
    const UP: u8 = 3;
    let mut step = vec![0u8; 1 << 16];
    let deadline = Instant::now() + Duration::from_secs(300);
    while done + failed < n && Instant::now() < deadline {
        while in_flight < IN_FLIGHT && started < n {
            let fd = new_socket()?;
            set_int(fd, libc::IPPROTO_IP, libc::IP_BIND_ADDRESS_NO_PORT, 1)?;
            set_int(fd, libc::IPPROTO_TCP, libc::TCP_NODELAY, 1)?;
            let src = sockaddr(Ipv4Addr::new(127, 0, 0, 1 + (started % SOURCES) as u8), 0);
            let dst = sockaddr(Ipv4Addr::LOCALHOST, port);
            let len = std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t;
            // SAFETY: bind and connect our socket to valid sockaddr_in values.
            let ok = unsafe {
                libc::bind(fd, (&src as *const libc::sockaddr_in).cast(), len) == 0
                    && (libc::connect(fd, (&dst as *const libc::sockaddr_in).cast(), len) == 0
                        || std::io::Error::last_os_error().raw_os_error()
                            == Some(libc::EINPROGRESS))
            };
            started += 1;
            if !ok || fd as usize >= step.len() {
                failed += 1;
                // SAFETY: closing our failed socket.
                unsafe { libc::close(fd) };
                continue;
            }
            epoll_add(
                ep,
                fd,
                (libc::EPOLLIN | libc::EPOLLOUT | libc::EPOLLET) as u32,
            )?;
            step[fd as usize] = CONNECTING;
            in_flight += 1;
        }
        // SAFETY: `events` has room for its length.
        let k = unsafe { libc::epoll_wait(ep, events.as_mut_ptr(), events.len() as i32, 100) };
        for ev in events.iter().take(k.max(0) as usize) {
            let fd = ev.u64 as RawFd;
            let s = &mut step[fd as usize];
            let bad = ev.events & (libc::EPOLLERR | libc::EPOLLHUP) as u32 != 0;
            let mut ok = !bad;
            if ok && *s == CONNECTING && ev.events & libc::EPOLLOUT as u32 != 0 {
                ok = write_all(fd, REQUEST);
                *s = SENT;
            }
            if ok && *s == SENT && ev.events & libc::EPOLLIN as u32 != 0 {
                let (whole, _, _) = read_all(fd, &mut buf);
                ok = whole;
                if whole {
                    *s = UP;
                    done += 1;
                    in_flight -= 1;
                }
            }
            if !ok && *s != UP && *s != 0 {
                *s = 0;
                failed += 1;
                in_flight -= 1;
                // SAFETY: closing our failed socket (leaves the epoll set with it).
                unsafe { libc::close(fd) };
            }
        }
    }
    failed += n - done - failed;
    println!("done {failed}");
    std::io::stdout().flush()?;
    // Hold every connection until the parent kills the shard (bounded).
    let _ = std::io::stdin().read_line(&mut String::new());
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// RFC 6455's example key and accept value.
    #[test]
    fn the_101_carries_the_accept_key_of_the_request() {
        let r = String::from_utf8(response(REQUEST)).unwrap();
        assert!(r.starts_with("HTTP/1.1 101 "), "{r}");
        assert!(
            r.ends_with("Sec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\n\r\n"),
            "{r}"
        );
    }
}
