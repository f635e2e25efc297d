//! Running `pushscope observe --pid PID` as a child for the observer tests:
//! wait until the probes are attached (its first stdout line), stop it with
//! SIGINT, and read the `summary.json` it wrote. Also the independent
//! WebSocket client whose own timings the observer's phases are checked
//! against, and that check.
//!
//! Consistency rule (containment): each server-side interval lies inside a
//! client-side interval that brackets it causally —
//! * ws_upgrade [read GET, write 101] ⊂ [client sent GET, client got 101];
//! * first_push [write 101, write frame] ⊂ [client sent GET, client got frame];
//! * tls_handshake [read ClientHello, read client Finished] ⊂ [TCP connected,
//!   client got 101] (the server reads the client's Finished after the
//!   client's handshake has completed, so it is not inside the client's
//!   handshake); its median also stays within 1 ms of the client's;
//! * accept_wait ⊂ [connect, client got 101]; lifetime [ESTABLISHED, CLOSE]
//!   ⊂ [connect start, client dropped the socket] + 2 ms (the last FIN's
//!   delivery).
//!
//! Tolerance: HDR histograms keep 3 significant digits, so server maxima are
//! compared with client maxima × 1.001 + 1 µs.

use crate::{bin_path, spawn_first_line, ChildGuard};
use futures_util::StreamExt;
use rustls::{pki_types::ServerName, ClientConfig};
use std::{
    net::SocketAddr,
    path::PathBuf,
    process::Command,
    sync::Arc,
    time::{Duration, Instant},
};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;
use tokio_tungstenite::{client_async, tungstenite::Message};

/// A running observer, killed on drop if not stopped.
pub struct Observe {
    pub guard: ChildGuard,
    pub out: PathBuf,
    _tmp: tempfile::TempDir,
}

impl Observe {
    /// Starts the observer on `pid` and waits (≤ 30 s) until it is attached.
    pub fn start(pid: u32, extra: &[&str]) -> anyhow::Result<Observe> {
        let tmp = tempfile::tempdir()?;
        let out = tmp.path().join("out");
        let mut cmd = Command::new(bin_path("pushscope"));
        cmd.args(["observe", "--pid", &pid.to_string(), "--out"])
            .arg(&out)
            .args(extra)
            .env("RUST_LOG", "warn");
        let (guard, line) = spawn_first_line(cmd, Duration::from_secs(30))?;
        anyhow::ensure!(
            line.starts_with("observing PID"),
            "unexpected first line from pushscope observe: {line}"
        );
        Ok(Observe {
            guard,
            out,
            _tmp: tmp,
        })
    }

    /// SIGINT, wait for the exit (≤ 20 s), and parse summary.json.
    pub fn stop(&mut self) -> anyhow::Result<serde_json::Value> {
        // Let the kernel's last state transitions reach the ring buffer.
        std::thread::sleep(Duration::from_millis(300));
        self.guard.signal(libc::SIGINT);
        let status = self
            .guard
            .wait_timeout(Duration::from_secs(20))
            .ok_or_else(|| anyhow::anyhow!("pushscope observe did not stop on SIGINT"))?;
        anyhow::ensure!(status.success(), "pushscope observe exited with {status}");
        let text = std::fs::read_to_string(self.out.join("summary.json"))?;
        Ok(serde_json::from_str(&text)?)
    }
}

/// A number at `path` in a JSON document (panics with the path if absent).
pub fn num(v: &serde_json::Value, path: &str) -> f64 {
    let mut cur = v;
    for k in path.split('.') {
        cur = cur
            .get(k)
            .unwrap_or_else(|| panic!("summary.json has no `{path}`: {v:#}"));
    }
    cur.as_f64()
        .unwrap_or_else(|| panic!("`{path}` is not a number: {cur}"))
}

/// Client-side timings of one subscriber (ms from the connect start).
#[derive(Debug, Default, Clone, Copy)]
pub struct ClientTimes {
    pub tcp: f64,
    pub tls: f64,
    pub upgraded: f64,
    pub first_msg: f64,
    pub dropped: f64,
}

fn ms(t: Instant) -> f64 {
    t.elapsed().as_secs_f64() * 1000.0
}

async fn subscribe_once<S>(
    s: S,
    url: &str,
    t0: Instant,
    times: &mut ClientTimes,
) -> anyhow::Result<()>
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    let (mut ws, resp) = client_async(url, s).await?;
    anyhow::ensure!(
        resp.status().as_u16() == 101,
        "no upgrade: {}",
        resp.status()
    );
    times.upgraded = ms(t0);
    loop {
        match tokio::time::timeout(Duration::from_secs(5), ws.next()).await? {
            Some(Ok(Message::Text(_))) => break,
            Some(Ok(_)) => continue,
            other => anyhow::bail!("no pushed message: {other:?}"),
        }
    }
    times.first_msg = ms(t0);
    ws.close(None).await?;
    // Drain until the server's close and EOF (bounded by the timeout).
    while let Ok(Some(Ok(_))) = tokio::time::timeout(Duration::from_secs(5), ws.next()).await {}
    drop(ws);
    times.dropped = ms(t0);
    Ok(())
}

/// `n` subscribers one after the other: connect, (TLS), upgrade on `url`,
/// wait for the first pushed text frame, close; with client-side timings.
pub async fn run_clients(
    addr: SocketAddr,
    tls: Option<Arc<ClientConfig>>,
    url: &str,
    n: usize,
) -> Vec<ClientTimes> {
    let mut out = Vec::new();
    for _ in 0..n {
        let mut t = ClientTimes::default();
        let t0 = Instant::now();
        let tcp = TcpStream::connect(addr).await.unwrap();
        t.tcp = ms(t0);
        match &tls {
            Some(cfg) => {
                let s = TlsConnector::from(cfg.clone())
                    .connect(ServerName::try_from("localhost").unwrap(), tcp)
                    .await
                    .unwrap();
                t.tls = ms(t0);
                subscribe_once(s, url, t0, &mut t).await.unwrap();
            }
            None => {
                t.tls = t.tcp;
                subscribe_once(tcp, url, t0, &mut t).await.unwrap();
            }
        }
        out.push(t);
    }
    out
}

fn max(v: impl Iterator<Item = f64>) -> f64 {
    v.fold(0.0, f64::max)
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    v[v.len() / 2]
}

fn within(server_ms: f64, client_ms: f64, extra_ms: f64, what: &str) {
    assert!(
        server_ms <= client_ms * 1.001 + 0.001 + extra_ms,
        "{what}: server {server_ms} ms is not within the client's {client_ms} ms (+{extra_ms} ms)"
    );
}

/// Exact counts and containment checks shared by plain and TLS.
pub fn check(summary: &serde_json::Value, times: &[ClientTimes], tls: bool) {
    let o = &summary["observer"];
    eprintln!("observer: {}", o["phases_ms"]);
    eprintln!("client: {:?}", times.iter().take(3).collect::<Vec<_>>());
    let n = times.len() as f64;
    assert_eq!(num(o, "connections.accepted"), n, "{o:#}");
    let closed = num(o, "connections.closed_local")
        + num(o, "connections.closed_peer")
        + num(o, "connections.reset");
    assert_eq!(closed, n, "{o:#}");
    assert_eq!(num(o, "connections.upgrade_refused"), 0.0, "{o:#}");
    for phase in ["accept_wait", "ws_upgrade", "first_push", "lifetime"] {
        assert_eq!(
            num(o, &format!("phases_ms.{phase}.count")),
            n,
            "{phase}: {o:#}"
        );
    }
    if tls {
        assert_eq!(num(o, "phases_ms.tls_handshake.count"), n, "{o:#}");
        assert_eq!(num(o, "tls.attempts"), n, "{o:#}");
        assert_eq!(num(o, "tls.completed"), n, "{o:#}");
        assert_eq!(num(o, "tls.failed"), 0.0, "{o:#}");
    } else {
        // Nothing measured is null, not a zero count.
        assert!(o["phases_ms"]["tls_handshake"].is_null(), "{o:#}");
        assert_eq!(num(o, "tls.attempts"), 0.0, "{o:#}");
    }
    // Every accepted connection was tracked.
    assert_eq!(num(o, "coverage.accepted"), n, "{o:#}");
    assert_eq!(num(o, "coverage.tracked"), n, "{o:#}");
    assert_eq!(num(o, "coverage.pct"), 100.0, "{o:#}");
    assert_eq!(num(o, "phases_clipped.lifetime"), 0.0, "{o:#}");
    assert_eq!(num(o, "drops"), 0.0);
    // Every connection carried at least a GET in and a 101 out (> 100 B each).
    let d = &summary["observe"]["details"];
    assert!(num(d, "bytes_in") >= 100.0 * n, "{d:#}");
    assert!(num(d, "bytes_out") >= 100.0 * n, "{d:#}");

    let up = max(times.iter().map(|t| t.upgraded - t.tls));
    within(num(o, "phases_ms.ws_upgrade.max"), up, 0.0, "ws_upgrade");
    let push = max(times.iter().map(|t| t.first_msg - t.tls));
    within(num(o, "phases_ms.first_push.max"), push, 0.0, "first_push");
    let setup = max(times.iter().map(|t| t.upgraded));
    within(
        num(o, "phases_ms.accept_wait.max"),
        setup,
        0.0,
        "accept_wait",
    );
    let life = max(times.iter().map(|t| t.dropped));
    within(num(o, "phases_ms.lifetime.max"), life, 2.0, "lifetime");
    if tls {
        let hs = max(times.iter().map(|t| t.upgraded - t.tcp));
        within(
            num(o, "phases_ms.tls_handshake.max"),
            hs,
            0.0,
            "tls_handshake",
        );
        let client_p50 = median(times.iter().map(|t| t.tls - t.tcp).collect());
        within(
            num(o, "phases_ms.tls_handshake.p50"),
            client_p50,
            1.0,
            "tls_handshake p50",
        );
        let d = &summary["observe"]["details"];
        assert_eq!(
            num(d, "tls13_inferred_connections"),
            n,
            "rustls negotiates TLS 1.3"
        );
        let notes = summary["observe"]["notes"].to_string();
        assert!(
            notes.contains("inferred"),
            "the report must say TLS phases are inferred: {notes}"
        );
    }
}

/// A CA-signed certificate for `localhost` (PEM paths) and a client config trusting it.
pub fn tls_material(dir: &std::path::Path) -> (String, String, Arc<ClientConfig>) {
    let ca = crate::tls::Ca::new("observer test CA");
    let (cert, key) = ca.leaf(true).write(dir, "server");
    (cert, key, ca.client_config(None))
}

/// The other outputs of a run with `n` closed connections: trace.json has
/// one "connection" span per connection (all of them, n ≤ 100), with their
/// phases; lifecycle.folded names the setup phases (never the rest of the
/// lifetime, which would dwarf them; TLS by whose turn it was);
/// lifecycle.svg is a graph.
pub fn check_outputs(out: &std::path::Path, n: usize, tls: bool) {
    let trace: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("trace.json")).unwrap()).unwrap();
    let events = trace["traceEvents"].as_array().unwrap();
    let count = |name: &str| events.iter().filter(|e| e["name"] == name).count();
    assert_eq!(count("connection"), n, "trace.json connections");
    assert_eq!(count("accept_wait"), n);
    assert_eq!(count("ws_upgrade"), n);
    assert_eq!(count("first_push"), n);
    assert_eq!(count("tls_handshake"), if tls { n } else { 0 });
    let folded = std::fs::read_to_string(out.join("lifecycle.folded")).unwrap();
    for phase in ["accept_wait", "ws_upgrade", "first_push"] {
        assert!(
            folded.contains(&format!("setup;{phase} ")),
            "lifecycle.folded lacks {phase}: {folded}"
        );
    }
    assert!(!folded.contains("lifetime"), "{folded}");
    assert_eq!(
        folded.contains("setup;tls_handshake;target_turns"),
        tls,
        "{folded}"
    );
    let svg = std::fs::read_to_string(out.join("lifecycle.svg")).unwrap();
    assert!(svg.starts_with("<?xml") || svg.contains("<svg"));
}
