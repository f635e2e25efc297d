//! Load client of `cargo xtask bench pusher`, run as its own process so the
//! pusher's CPU and RSS are its own. Raw sockets, hand-rolled WebSocket
//! framing (server frames are unmasked: counting them costs almost nothing),
//! so the client is not the bottleneck on a 2-core machine.
//!
//! `fanout`: N subscribers on one channel, flow-controlled publishers (at
//! most `--window` messages ahead of the subscribers), deliveries/s and the
//! pusher's CPU (from /proc/PID/stat) over the measured window; every
//! subscriber's seqs are checked to be contiguous.
//! `publish`: publish throughput alone (answered per the fsync policy).
//! `idle`: N idle subscribers (answering pings), the pusher's RSS before and
//! after, per connection.
//! The client runs 2 runtime threads: on a 2-core machine it must keep up
//! with a pusher pinned to 1 worker.
//! Output: `key=value` lines on stdout.

use std::{
    net::SocketAddr,
    sync::{
        atomic::{AtomicU64, Ordering},
        Arc,
    },
    time::{Duration, Instant},
};

use anyhow::{anyhow, bail, Context, Result};
use tokio::{
    io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader},
    net::TcpStream,
};

struct Args {
    mode: String,
    addr: SocketAddr,
    pid: u32,
    subscribers: usize,
    size: usize,
    seconds: f64,
    warmup: f64,
    window: u64,
    publishers: usize,
    /// Messages/s over all publishers; 0 = flow-controlled maximum.
    rate: f64,
    /// A `pushscope observe --bench-toggle-signals` to switch off
    /// (SIGUSR1) and on (SIGUSR2) in alternate windows of the measured time.
    toggle_observer: Option<u32>,
    /// Length of one window (s) of those pairs.
    toggle_window: f64,
    /// The file the observer writes `1`/`0` to once a switch is done.
    toggle_state: Option<std::path::PathBuf>,
}

fn parse_args() -> Result<Args> {
    let mut it = std::env::args().skip(1);
    let mode = it.next().ok_or_else(|| anyhow!("usage: pushscope-pusher-bench fanout|idle --addr A --pid P [--subscribers N] [--size B] [--seconds S]"))?;
    let mut a = Args {
        mode,
        addr: "127.0.0.1:8080".parse()?,
        pid: 0,
        subscribers: 1000,
        size: 200,
        seconds: 5.0,
        warmup: 1.0,
        window: 64,
        publishers: 8,
        rate: 0.0,
        toggle_observer: None,
        toggle_window: 1.0,
        toggle_state: None,
    };
    while let Some(k) = it.next() {
        let v = it.next().ok_or_else(|| anyhow!("{k} needs a value"))?;
        match k.as_str() {
            "--addr" => a.addr = v.parse()?,
            "--pid" => a.pid = v.parse()?,
            "--subscribers" => a.subscribers = v.parse()?,
            "--size" => a.size = v.parse()?,
            "--seconds" => a.seconds = v.parse()?,
            "--warmup" => a.warmup = v.parse()?,
            "--window" => a.window = v.parse()?,
            "--publishers" => a.publishers = v.parse()?,
            "--rate" => a.rate = v.parse()?,
            "--toggle-observer" => a.toggle_observer = Some(v.parse()?),
            "--toggle-window" => a.toggle_window = v.parse()?,
            "--toggle-state" => a.toggle_state = Some(v.into()),
            _ => bail!("unknown option {k}"),
        }
    }
    Ok(a)
}

/// utime + stime of `pid` in seconds.
fn cpu_seconds(pid: u32) -> Result<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .with_context(|| format!("reading /proc/{pid}/stat"))?;
    // Fields after the ")" closing comm: state is field 3, utime 14, stime 15.
    let rest = stat.rsplit_once(')').map(|(_, r)| r).unwrap_or("");
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks: u64 = f[11].parse::<u64>()? + f[12].parse::<u64>()?;
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64;
    Ok(ticks as f64 / hz)
}

/// On-CPU time of every thread of `pid` (ns, /proc/PID/task/*/schedstat):
/// exact where utime + stime count 10 ms ticks.
fn cpu_ns_exact(pid: u32) -> Result<u64> {
    let mut sum = 0;
    for t in std::fs::read_dir(format!("/proc/{pid}/task"))
        .with_context(|| format!("reading /proc/{pid}/task"))?
        .flatten()
    {
        if let Ok(s) = std::fs::read_to_string(t.path().join("schedstat")) {
            sum += s
                .split_whitespace()
                .next()
                .and_then(|v| v.parse::<u64>().ok())
                .unwrap_or(0);
        }
    }
    Ok(sum)
}

/// Windows with and without the observer's probes, alternated within one
/// run (`--toggle-observer`): each pair's ratios (with ÷ without) of
/// deliveries/s and of the pusher's CPU per delivery. The order flips
/// every pair so a drift of the run favours neither side; each window
/// starts `SETTLE` after the observer says the switch is done
/// (`--toggle-state`: detaching waits for RCU grace periods, ~1 s).
async fn toggled_pairs(a: &Args, observer: u32, totals: &Totals) -> Result<()> {
    const SETTLE: Duration = Duration::from_millis(200);
    let signal = |on: bool| {
        let sig = if on { libc::SIGUSR2 } else { libc::SIGUSR1 };
        // SAFETY: kill(2) of the observer process the caller named.
        unsafe { libc::kill(observer as i32, sig) };
    };
    let state = a
        .toggle_state
        .as_deref()
        .ok_or_else(|| anyhow!("--toggle-observer needs --toggle-state FILE"))?;
    let window = |on: bool| async move {
        signal(on);
        let want = if on { "1" } else { "0" };
        let deadline = Instant::now() + Duration::from_secs(20);
        while std::fs::read_to_string(state).ok().as_deref() != Some(want) {
            if Instant::now() > deadline {
                bail!(
                    "the observer did not switch its probes {} within 20 s",
                    if on { "on" } else { "off" }
                );
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        tokio::time::sleep(SETTLE).await;
        let (f0, c0, t0) = (
            totals.frames.load(Ordering::Relaxed),
            cpu_ns_exact(a.pid)?,
            Instant::now(),
        );
        tokio::time::sleep(Duration::from_secs_f64(a.toggle_window)).await;
        let (f1, c1, t1) = (
            totals.frames.load(Ordering::Relaxed),
            cpu_ns_exact(a.pid)?,
            Instant::now(),
        );
        let dps = (f1 - f0) as f64 / (t1 - t0).as_secs_f64();
        let cpu_per = (c1 - c0) as f64 / (f1 - f0).max(1) as f64;
        anyhow::Ok((dps, cpu_per))
    };
    // A pair: one detach (~1 s) and one attach, two settles, two windows.
    let pair_s = 1.2 + 2.0 * (a.toggle_window + SETTLE.as_secs_f64());
    let pairs = ((a.seconds / pair_s) as usize).max(1);
    for i in 0..pairs {
        let (on, off) = if i % 2 == 0 {
            let on = window(true).await?;
            (on, window(false).await?)
        } else {
            let off = window(false).await?;
            (window(true).await?, off)
        };
        let pair = (on.0 / off.0, on.1 / off.1);
        println!(
            "toggle_pair={i} with_dps={:.0} without_dps={:.0} thr={:.4} cpu={:.4}",
            on.0, off.0, pair.0, pair.1
        );
    }
    signal(true);
    Ok(())
}

fn rss_kib(pid: u32) -> Result<u64> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    s.lines()
        .find(|l| l.starts_with("VmRSS:"))
        .and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
        .ok_or_else(|| anyhow!("no VmRSS for {pid}"))
}

/// WebSocket upgrade by hand; returns the stream and the bytes read past
/// the 101 response head (the first frames, if any).
async fn upgrade(addr: SocketAddr, channel: &str) -> Result<(TcpStream, Vec<u8>)> {
    let mut s = TcpStream::connect(addr).await?;
    s.set_nodelay(true)?;
    let req = format!(
        "GET /ws?channel={channel} HTTP/1.1\r\nHost: bench\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
    );
    s.write_all(req.as_bytes()).await?;
    let mut head = Vec::with_capacity(512);
    let mut chunk = [0u8; 512];
    loop {
        if let Some(end) = head.windows(4).position(|w| w == b"\r\n\r\n") {
            if !head.starts_with(b"HTTP/1.1 101") {
                bail!("upgrade refused: {}", String::from_utf8_lossy(&head));
            }
            let rest = head.split_off(end + 4);
            return Ok((s, rest));
        }
        let n = s.read(&mut chunk).await?;
        if n == 0 || head.len() > 8192 {
            bail!("upgrade failed: {}", String::from_utf8_lossy(&head));
        }
        head.extend_from_slice(&chunk[..n]);
    }
}

/// Per-subscriber state shared with the report.
#[derive(Default)]
struct Totals {
    frames: AtomicU64,
    order_errors: AtomicU64,
    closed: AtomicU64,
    /// Set during the measured window: latencies are sampled then.
    measuring: std::sync::atomic::AtomicBool,
    /// Publish-to-receive latencies (µs) of the sampled subscribers.
    latencies_us: std::sync::Mutex<Vec<u32>>,
}

/// Subscribers whose every message's latency is recorded.
const LATENCY_SAMPLED: usize = 20;

/// Wall clock in ns: publisher and subscribers share the host clock.
fn now_ns() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64)
}

/// The 20-digit send timestamp at the start of a bench message's data.
fn sent_ns(payload: &[u8]) -> Option<u64> {
    const KEY: &[u8] = b"\"data\":\"";
    let at = payload.windows(KEY.len()).position(|w| w == KEY)? + KEY.len();
    let digits = payload.get(at..at + 20)?;
    digits.iter().try_fold(0u64, |a, c| {
        c.is_ascii_digit().then(|| a * 10 + u64::from(c - b'0'))
    })
}

/// Reads frames until EOF: counts text frames, checks seqs are contiguous,
/// answers pings with (masked, zero-key) pongs.
async fn subscriber(
    mut s: TcpStream,
    leftover: Vec<u8>,
    prefix: Arc<Vec<u8>>,
    totals: Arc<Totals>,
    buf_size: usize,
    sampled: bool,
) {
    let mut lat: Vec<u32> = Vec::new();
    let mut buf = leftover;
    let mut have = buf.len();
    buf.resize(buf_size.max(have * 2), 0);
    let mut last_seq = 0u64;
    loop {
        // Parse what we have first: the upgrade may have read frames already.
        let mut pos = 0;
        let mut frames = 0u64;
        loop {
            let b = &buf[pos..have];
            if b.len() < 2 {
                break;
            }
            let opcode = b[0] & 0x0f;
            let (len, hdr) = match b[1] & 0x7f {
                126 if b.len() >= 4 => (u16::from_be_bytes([b[2], b[3]]) as usize, 4),
                127 if b.len() >= 10 => (
                    u64::from_be_bytes(b[2..10].try_into().unwrap()) as usize,
                    10,
                ),
                126 | 127 => break,
                l => (l as usize, 2),
            };
            if b.len() < hdr + len {
                break;
            }
            let payload = &b[hdr..hdr + len];
            match opcode {
                1 => {
                    frames += 1;
                    let seq = payload
                        .strip_prefix(prefix.as_slice())
                        .map(|r| {
                            r.iter()
                                .take_while(|c| c.is_ascii_digit())
                                .fold(0u64, |a, c| a * 10 + u64::from(c - b'0'))
                        })
                        .unwrap_or(0);
                    if last_seq != 0 && seq != last_seq + 1 {
                        totals.order_errors.fetch_add(1, Ordering::Relaxed);
                    }
                    last_seq = seq;
                    if sampled && totals.measuring.load(Ordering::Relaxed) {
                        if let Some(t) = sent_ns(payload) {
                            lat.push(
                                (now_ns().saturating_sub(t) / 1000).min(u64::from(u32::MAX)) as u32
                            );
                        }
                    }
                }
                9 => {
                    let mut pong = vec![0x8a, 0x80 | len as u8, 0, 0, 0, 0];
                    pong.extend_from_slice(payload);
                    if s.write_all(&pong).await.is_err() {
                        totals.closed.fetch_add(1, Ordering::Relaxed);
                        return;
                    }
                }
                8 => {
                    totals.closed.fetch_add(1, Ordering::Relaxed);
                    return;
                }
                _ => {}
            }
            pos += hdr + len;
        }
        if frames > 0 {
            totals.frames.fetch_add(frames, Ordering::Relaxed);
        }
        if !lat.is_empty() {
            totals.latencies_us.lock().unwrap().append(&mut lat);
        }
        buf.copy_within(pos..have, 0);
        have -= pos;
        if have == buf.len() {
            buf.resize(buf.len() * 2, 0);
        }
        match s.read(&mut buf[have..]).await {
            Ok(0) | Err(_) => break,
            Ok(n) => have += n,
        }
    }
    totals.latencies_us.lock().unwrap().append(&mut lat);
    totals.closed.fetch_add(1, Ordering::Relaxed);
}

/// A keep-alive HTTP/1.1 publisher connection.
struct Publisher {
    r: BufReader<tokio::net::tcp::OwnedReadHalf>,
    w: tokio::net::tcp::OwnedWriteHalf,
}

impl Publisher {
    async fn connect(addr: SocketAddr) -> Result<Publisher> {
        let s = TcpStream::connect(addr).await?;
        s.set_nodelay(true)?;
        let (r, w) = s.into_split();
        Ok(Publisher {
            r: BufReader::new(r),
            w,
        })
    }

    async fn publish(&mut self, channel: &str, body: &[u8]) -> Result<()> {
        let head = format!(
            "POST /publish/{channel} HTTP/1.1\r\nHost: bench\r\nContent-Length: {}\r\n\r\n",
            body.len()
        );
        self.w.write_all(head.as_bytes()).await?;
        self.w.write_all(body).await?;
        let mut line = String::new();
        self.r.read_line(&mut line).await?;
        if !line.starts_with("HTTP/1.1 200") {
            bail!("publish answered {line:?}");
        }
        let mut len = 0usize;
        loop {
            line.clear();
            self.r.read_line(&mut line).await?;
            if line == "\r\n" || line.is_empty() {
                break;
            }
            if let Some(v) = line.to_ascii_lowercase().strip_prefix("content-length:") {
                len = v.trim().parse()?;
            }
        }
        let mut body = vec![0u8; len];
        self.r.read_exact(&mut body).await?;
        Ok(())
    }
}

async fn connect_all(a: &Args, channel: &str, totals: &Arc<Totals>, buf: usize) -> Result<()> {
    let prefix = Arc::new(format!("{{\"channel\":\"{channel}\",\"seq\":").into_bytes());
    let mut pending = Vec::new();
    let mut done = 0usize;
    for i in 0..a.subscribers {
        pending.push(tokio::spawn({
            let (addr, channel) = (a.addr, channel.to_string());
            async move { upgrade(addr, &channel).await }
        }));
        // Bounded connect concurrency: the listen backlog is finite.
        if pending.len() == 500 || i + 1 == a.subscribers {
            for p in pending.drain(..) {
                let (s, leftover) = p.await??;
                let sampled = done < LATENCY_SAMPLED;
                done += 1;
                tokio::spawn(subscriber(
                    s,
                    leftover,
                    prefix.clone(),
                    totals.clone(),
                    buf,
                    sampled,
                ));
            }
        }
    }
    Ok(())
}

/// `measuring=1` at the start of the measured window, `measuring=0` at its
/// end, flushed at once.
fn window_mark(v: u8) {
    use std::io::Write;
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "measuring={v}");
    let _ = out.flush();
}

async fn fanout(a: Args) -> Result<()> {
    let channel = "bench";
    let totals = Arc::new(Totals::default());
    connect_all(&a, channel, &totals, 64 * 1024).await?;
    let subs = a.subscribers as u64;
    let published = Arc::new(AtomicU64::new(0));
    let stop = Instant::now() + Duration::from_secs_f64(a.warmup + a.seconds);
    let body_len = a.size.saturating_sub(70).max(20);
    let mut tasks = Vec::new();
    let start = Instant::now();
    for w in 0..a.publishers {
        let (addr, totals, published) = (a.addr, totals.clone(), published.clone());
        let (window, rate, publishers) = (a.window, a.rate, a.publishers as f64);
        tasks.push(tokio::spawn(async move {
            let mut p = Publisher::connect(addr).await?;
            let mut body = vec![b'x'; body_len];
            let mut k = 0u64;
            while Instant::now() < stop {
                if rate > 0.0 {
                    // Paced: publisher w sends its k-th message at
                    // start + (k + w/publishers) * publishers/rate.
                    let at = start
                        + Duration::from_secs_f64(
                            (k as f64 + w as f64 / publishers) * publishers / rate,
                        );
                    k += 1;
                    tokio::time::sleep_until(at.into()).await;
                } else {
                    // Flow control: stay at most `window` messages ahead of
                    // the average subscriber, so nobody is cut off as slow.
                    let n = published.load(Ordering::Relaxed);
                    if totals.frames.load(Ordering::Relaxed) + window * subs < n * subs {
                        tokio::task::yield_now().await;
                        continue;
                    }
                }
                published.fetch_add(1, Ordering::Relaxed);
                body[..20].copy_from_slice(format!("{:020}", now_ns()).as_bytes());
                p.publish(channel, &body).await?;
            }
            anyhow::Ok(())
        }));
    }
    tokio::time::sleep(Duration::from_secs_f64(a.warmup)).await;
    totals.measuring.store(true, Ordering::Relaxed);
    // Tells a caller reading stdout as it comes (`cargo xtask bench
    // observer`) when the measured window starts and ends.
    window_mark(1);
    let (f0, c0, t0) = (
        totals.frames.load(Ordering::Relaxed),
        cpu_seconds(a.pid)?,
        Instant::now(),
    );
    match a.toggle_observer {
        Some(obs) => toggled_pairs(&a, obs, &totals).await?,
        None => tokio::time::sleep(Duration::from_secs_f64(a.seconds)).await,
    }
    let (f1, c1, t1) = (
        totals.frames.load(Ordering::Relaxed),
        cpu_seconds(a.pid)?,
        Instant::now(),
    );
    window_mark(0);
    totals.measuring.store(false, Ordering::Relaxed);
    for t in tasks {
        t.await??;
    }
    // Let the last frames arrive so the sampled subscribers flush.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let wall = (t1 - t0).as_secs_f64();
    let frame_len = format!(
        "{{\"channel\":\"{channel}\",\"seq\":1000,\"id\":\"0123456789abcdef-1000\",\"data\":\"\"}}"
    )
    .len()
        + body_len;
    println!("subscribers={}", a.subscribers);
    println!("message_bytes={frame_len}");
    println!("published={}", published.load(Ordering::Relaxed));
    println!("deliveries={}", f1 - f0);
    println!("seconds={wall:.3}");
    println!("deliveries_per_s={:.0}", (f1 - f0) as f64 / wall);
    println!("pusher_cpu_pct={:.1}", (c1 - c0) / wall * 100.0);
    println!(
        "order_errors={}",
        totals.order_errors.load(Ordering::Relaxed)
    );
    println!("disconnected={}", totals.closed.load(Ordering::Relaxed));
    let mut lat = std::mem::take(&mut *totals.latencies_us.lock().unwrap());
    lat.sort_unstable();
    let q = |p: f64| {
        lat.get(((lat.len() as f64 * p) as usize).min(lat.len().saturating_sub(1)))
            .copied()
            .unwrap_or(0)
    };
    println!("latency_samples={}", lat.len());
    println!("latency_p50_us={}", q(0.50));
    println!("latency_p99_us={}", q(0.99));
    println!("latency_max_us={}", lat.last().copied().unwrap_or(0));
    Ok(())
}

/// Publish throughput alone: `--publishers` keep-alive connections
/// publishing back to back (no subscribers), answered per the fsync policy.
async fn publish_only(a: Args) -> Result<()> {
    let done = Arc::new(AtomicU64::new(0));
    let stop = Instant::now() + Duration::from_secs_f64(a.seconds);
    let body = Arc::new(vec![b'p'; a.size.saturating_sub(70).max(1)]);
    let mut tasks = Vec::new();
    for _ in 0..a.publishers {
        let (addr, done, body) = (a.addr, done.clone(), body.clone());
        tasks.push(tokio::spawn(async move {
            let mut p = Publisher::connect(addr).await?;
            while Instant::now() < stop {
                p.publish("pub", &body).await?;
                done.fetch_add(1, Ordering::Relaxed);
            }
            anyhow::Ok(())
        }));
    }
    let (c0, t0) = (cpu_seconds(a.pid)?, Instant::now());
    for t in tasks {
        t.await??;
    }
    let (c1, wall) = (cpu_seconds(a.pid)?, t0.elapsed().as_secs_f64());
    let n = done.load(Ordering::Relaxed);
    println!("publishers={}", a.publishers);
    println!("publishes={n}");
    println!("publishes_per_s={:.0}", n as f64 / wall);
    println!("pusher_cpu_pct={:.1}", (c1 - c0) / wall * 100.0);
    Ok(())
}

async fn idle(a: Args) -> Result<()> {
    let before = rss_kib(a.pid)?;
    let totals = Arc::new(Totals::default());
    let t = Instant::now();
    connect_all(&a, "idle", &totals, 512).await?;
    let connect_s = t.elapsed().as_secs_f64();
    // Let the server settle (upgrade tasks finish, buffers are freed).
    tokio::time::sleep(Duration::from_secs_f64(a.seconds)).await;
    let after = rss_kib(a.pid)?;
    let per = (after.saturating_sub(before)) as f64 * 1024.0 / a.subscribers as f64;
    println!("connections={}", a.subscribers);
    println!("connect_seconds={connect_s:.2}");
    println!("rss_before_kib={before}");
    println!("rss_after_kib={after}");
    println!("rss_per_connection_bytes={per:.0}");
    println!("disconnected={}", totals.closed.load(Ordering::Relaxed));
    Ok(())
}

fn main() {
    let run = || -> Result<()> {
        let a = parse_args()?;
        if a.pid == 0 {
            bail!("--pid of the pusher is required (CPU and RSS are read from /proc)");
        }
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()?;
        match a.mode.as_str() {
            "fanout" => rt.block_on(fanout(a)),
            "idle" => rt.block_on(idle(a)),
            "publish" => rt.block_on(publish_only(a)),
            m => bail!("unknown mode {m}: fanout | idle | publish"),
        }
    };
    if let Err(e) = run() {
        eprintln!("pushscope-pusher-bench: {e:#}");
        std::process::exit(1);
    }
}
