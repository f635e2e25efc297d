//! Starting the reference pusher (`pushscope-pusher`) for tests.

use crate::{bin_path, spawn_first_line, ChildGuard};
use std::{net::SocketAddr, path::PathBuf, process::Command, time::Duration};

/// A running reference pusher on a loopback port, killed on drop.
pub struct Pusher {
    pub guard: ChildGuard,
    pub addr: SocketAddr,
    pub data_dir: PathBuf,
    /// Keeps a temporary data dir alive for the pusher's lifetime.
    _tmp: Option<tempfile::TempDir>,
}

impl Pusher {
    /// Starts the pusher on 127.0.0.1:0 with a fresh temporary data dir.
    pub fn start(extra: &[&str]) -> anyhow::Result<Pusher> {
        let tmp = tempfile::tempdir()?;
        let dir = tmp.path().to_path_buf();
        let mut p = Pusher::start_in(&dir, extra)?;
        p._tmp = Some(tmp);
        Ok(p)
    }

    /// Starts the pusher on 127.0.0.1:0 with `data_dir` (reused across restarts).
    pub fn start_in(data_dir: &std::path::Path, extra: &[&str]) -> anyhow::Result<Pusher> {
        Self::spawn_in(Some(data_dir), extra, None)
    }

    /// Starts the pusher on 127.0.0.1:0 without `--data-dir`: messages
    /// live in memory only and a restart loses them (`data_dir` is empty).
    pub fn start_in_memory(extra: &[&str]) -> anyhow::Result<Pusher> {
        Self::spawn_in(None, extra, None)
    }

    fn spawn_in(
        data_dir: Option<&std::path::Path>,
        extra: &[&str],
        log: Option<&std::path::Path>,
    ) -> anyhow::Result<Pusher> {
        let mut cmd = Command::new(bin_path("pushscope-pusher"));
        cmd.args(["--listen", "127.0.0.1:0"]);
        if let Some(d) = data_dir {
            cmd.arg("--data-dir").arg(d);
        }
        cmd.args(extra);
        if let Some(log) = log {
            cmd.stderr(std::fs::File::create(log)?);
        }
        let (guard, line) = spawn_first_line(cmd, Duration::from_secs(10))?;
        let addr: SocketAddr = line
            .trim()
            .parse()
            .map_err(|e| anyhow::anyhow!("pusher's first line `{line}` is not an address: {e}"))?;
        Ok(Pusher {
            guard,
            addr,
            data_dir: data_dir.map(|d| d.to_path_buf()).unwrap_or_default(),
            _tmp: None,
        })
    }

    pub fn pid(&self) -> u32 {
        self.guard.pid()
    }

    pub fn ws_url(&self, channel: &str) -> String {
        format!("ws://{}/ws?channel={channel}", self.addr)
    }
}

impl Pusher {
    /// Like [`Pusher::start_in`], with the pusher's stderr written to `log`
    /// (tests read its repair reports).
    pub fn start_in_logged(
        data_dir: &std::path::Path,
        extra: &[&str],
        log: &std::path::Path,
    ) -> anyhow::Result<Pusher> {
        Self::spawn_in(Some(data_dir), extra, Some(log))
    }

    /// URL resuming after `last_seq`.
    pub fn ws_resume_url(&self, channel: &str, last_seq: u64) -> String {
        format!(
            "ws://{}/ws?channel={channel}&last_seq={last_seq}",
            self.addr
        )
    }

    /// Resident set size of the pusher in KiB (from /proc/PID/status).
    pub fn rss_kib(&self) -> u64 {
        rss_kib(self.pid())
    }
}

/// VmRSS of `pid` in KiB (0 if the process is gone).
pub fn rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
        })
        .unwrap_or(0)
}

/// A raw HTTP/1.1 answer: status and body.
#[derive(Debug)]
pub struct HttpAnswer {
    pub status: u16,
    pub body: String,
}

/// One HTTP/1.1 request with `Connection: close` over any stream (plain TCP
/// or TLS); independent of the server's HTTP stack.
pub async fn http_on<S>(
    mut stream: S,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> anyhow::Result<HttpAnswer>
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut req = format!(
        "{method} {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\nContent-Length: {}\r\n",
        body.len()
    );
    for (k, v) in headers {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    req.push_str("\r\n");
    stream.write_all(req.as_bytes()).await?;
    stream.write_all(body).await?;
    stream.flush().await?;
    let mut raw = Vec::new();
    // The server may close before reading an oversized body: keep what we got.
    let _ = tokio::time::timeout(Duration::from_secs(10), stream.read_to_end(&mut raw)).await;
    let text = String::from_utf8_lossy(&raw).to_string();
    let status = text
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| anyhow::anyhow!("no HTTP status in answer {text:?}"))?;
    let body = text
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default();
    Ok(HttpAnswer { status, body })
}

/// One HTTP/1.1 request over a fresh TCP connection to `addr`.
pub async fn http(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> anyhow::Result<HttpAnswer> {
    let s = tokio::net::TcpStream::connect(addr).await?;
    http_on(s, method, path, headers, body).await
}

/// Publishes `body` (optionally with X-Msg-Id); returns (seq, id) of a 200.
pub async fn publish(
    addr: SocketAddr,
    channel: &str,
    id: Option<&str>,
    body: &[u8],
) -> anyhow::Result<(u64, String)> {
    let headers: Vec<(&str, &str)> = id.map(|i| ("X-Msg-Id", i)).into_iter().collect();
    let a = http(addr, "POST", &format!("/publish/{channel}"), &headers, body).await?;
    anyhow::ensure!(a.status == 200, "publish answered {}: {}", a.status, a.body);
    let v: serde_json::Value = serde_json::from_str(&a.body)?;
    Ok((
        v["seq"]
            .as_u64()
            .ok_or_else(|| anyhow::anyhow!("no seq in {}", a.body))?,
        v["id"].as_str().unwrap_or_default().to_string(),
    ))
}

/// The value of one sample line of `GET /metrics` (exact name with labels).
pub async fn metric(addr: SocketAddr, name: &str) -> anyhow::Result<f64> {
    let a = http(addr, "GET", "/metrics", &[], b"").await?;
    metric_in(&a.body, name).ok_or_else(|| anyhow::anyhow!("metric {name} missing"))
}

/// Finds `name value` in a Prometheus text exposition.
pub fn metric_in(text: &str, name: &str) -> Option<f64> {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.trim().parse().ok())
}

/// A pushed message frame, parsed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pushed {
    pub channel: String,
    pub seq: u64,
    pub id: String,
    pub data: String,
}

/// Parses a `{"channel","seq","id","data"}` text frame.
pub fn parse_pushed(text: &str) -> anyhow::Result<Pushed> {
    let v: serde_json::Value = serde_json::from_str(text)?;
    let s = |k: &str| {
        v[k].as_str()
            .map(str::to_string)
            .ok_or_else(|| anyhow::anyhow!("no {k} in {text}"))
    };
    Ok(Pushed {
        channel: s("channel")?,
        seq: v["seq"]
            .as_u64()
            .ok_or_else(|| anyhow::anyhow!("no seq in {text}"))?,
        id: s("id")?,
        data: s("data")?,
    })
}

/// Opens a raw TCP connection and performs the WebSocket upgrade by hand;
/// returns the socket right after the 101 (for clients that misbehave).
pub async fn raw_upgrade(addr: SocketAddr, path: &str) -> anyhow::Result<tokio::net::TcpStream> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(addr).await?;
    let req = format!(
        "GET {path} HTTP/1.1\r\nHost: localhost\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
    );
    s.write_all(req.as_bytes()).await?;
    let mut head = Vec::new();
    let mut b = [0u8; 1];
    // Byte by byte so nothing after the response head is consumed.
    while !head.ends_with(b"\r\n\r\n") {
        anyhow::ensure!(head.len() < 4096, "response head too long");
        let n = tokio::time::timeout(Duration::from_secs(5), s.read(&mut b)).await??;
        anyhow::ensure!(n == 1, "connection closed during the upgrade");
        head.push(b[0]);
    }
    let head = String::from_utf8_lossy(&head);
    anyhow::ensure!(head.starts_with("HTTP/1.1 101"), "upgrade refused: {head}");
    Ok(s)
}

/// Polls `GET /metrics` until `name` equals `value` (at most `timeout`);
/// returns the last value seen. Gauges move a moment after the client sees
/// the event (the server finishes its side asynchronously).
pub async fn wait_metric(addr: SocketAddr, name: &str, value: f64, timeout: Duration) -> f64 {
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        let v = metric(addr, name).await.unwrap_or(f64::NAN);
        if v == value || tokio::time::Instant::now() >= deadline {
            return v;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Polls the pusher's `/metrics` (≤ `timeout`) until it holds at least
/// `conns` WebSocket connections and has written `more` frames since it
/// first did — the load is running, not merely connecting. False when
/// `gave_up()` turns true first (e.g. the load run ended); panics with the
/// last metrics seen at the deadline.
pub fn wait_until_flowing(
    addr: SocketAddr,
    conns: u64,
    more: f64,
    timeout: Duration,
    gave_up: impl Fn() -> bool,
) -> bool {
    let mut at_full: Option<f64> = None;
    crate::poll_until(
        &format!("{conns} connections to the pusher and {more} more deliveries"),
        timeout,
        || {
            if gave_up() {
                return Ok(false);
            }
            let text = crate::scrape_metrics(addr).map_err(|e| e.to_string())?;
            let all = metric_in(&text, "pusher_connections").is_some_and(|c| c >= conns as f64);
            match (metric_in(&text, "pusher_deliveries_total"), at_full) {
                (Some(d), Some(base)) if all && d >= base + more => Ok(true),
                (Some(d), None) if all => {
                    at_full = Some(d);
                    Err(text)
                }
                _ => Err(text),
            }
        },
    )
}
