//! The observer against the reference pusher (needs root: real probes):
//! N WebSocket subscribers made by an independent client (this test), plain
//! and TLS → exactly N accepted, N closed, every phase counted N times, and
//! server-side phase durations consistent with the client's own timings.
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

use futures_util::StreamExt;
use pushscope_tests::{
    heavy_lock,
    observer::{num, Observe},
    pusher::{http_on, Pusher},
    skip_unless_root,
};
use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, KeyPair};
use rustls::{
    pki_types::{CertificateDer, ServerName},
    ClientConfig, RootCertStore,
};
use std::{
    net::SocketAddr,
    sync::Arc,
    time::{Duration, Instant},
};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;
use tokio_tungstenite::{client_async, tungstenite::Message};

const N: usize = 20;

/// Client-side timings of one subscriber (ms from the connect start).
#[derive(Debug, Default, Clone, Copy)]
struct ClientTimes {
    tcp: f64,
    tls: f64,
    upgraded: f64,
    first_msg: f64,
    dropped: f64,
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

async fn run_clients(addr: SocketAddr, tls: Option<Arc<ClientConfig>>) -> Vec<ClientTimes> {
    let mut out = Vec::new();
    for _ in 0..N {
        let mut t = ClientTimes::default();
        let t0 = Instant::now();
        let tcp = TcpStream::connect(addr).await.unwrap();
        t.tcp = ms(t0);
        let url = "ws://localhost/ws?channel=obs&last_seq=0";
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
fn check(summary: &serde_json::Value, times: &[ClientTimes], tls: bool) {
    let o = &summary["observer"];
    eprintln!("observer: {}", o["phases_ms"]);
    eprintln!("client: {:?}", times.iter().take(3).collect::<Vec<_>>());
    let n = N as f64;
    assert_eq!(num(o, "connections.accepted"), n, "{o:#}");
    let closed = num(o, "connections.closed_local")
        + num(o, "connections.closed_peer")
        + num(o, "connections.reset");
    assert_eq!(closed, n, "{o:#}");
    for phase in ["accept_wait", "ws_upgrade", "first_push", "lifetime"] {
        assert_eq!(
            num(o, &format!("phases_ms.{phase}.count")),
            n,
            "{phase}: {o:#}"
        );
    }
    let tls_count = num(o, "phases_ms.tls_handshake.count");
    assert_eq!(tls_count, if tls { n } else { 0.0 }, "{o:#}");
    assert_eq!(num(o, "drops"), 0.0);

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

fn tls_material(dir: &std::path::Path) -> (String, String, Arc<ClientConfig>) {
    let ca_key = KeyPair::generate().unwrap();
    let mut p = CertificateParams::new(Vec::<String>::new()).unwrap();
    p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    p.distinguished_name
        .push(DnType::CommonName, "observer test CA");
    let ca = p.self_signed(&ca_key).unwrap();
    let key = KeyPair::generate().unwrap();
    let leaf = CertificateParams::new(vec!["localhost".to_string()])
        .unwrap()
        .signed_by(&key, &ca, &ca_key)
        .unwrap();
    let (c, k) = (dir.join("server.pem"), dir.join("server.key"));
    std::fs::write(&c, leaf.pem()).unwrap();
    std::fs::write(&k, key.serialize_pem()).unwrap();
    let mut roots = RootCertStore::empty();
    roots.add(CertificateDer::from(ca.der().to_vec())).unwrap();
    let cfg =
        ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(roots)
            .with_no_client_auth();
    (
        c.to_string_lossy().to_string(),
        k.to_string_lossy().to_string(),
        Arc::new(cfg),
    )
}

fn block_on<F: std::future::Future>(f: F) -> F::Output {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
        .block_on(f)
}

#[test]
fn observer_counts_plain_pusher_connections_exactly() {
    if skip_unless_root("observer_counts_plain_pusher_connections_exactly") {
        return;
    }
    let _l = heavy_lock();
    block_on(plain());
}

async fn plain() {
    let p = Pusher::start(&[]).unwrap();
    // Publish before attaching: the publish connection must not be counted.
    pushscope_tests::pusher::publish(p.addr, "obs", None, b"first")
        .await
        .unwrap();
    let mut obs = Observe::start(p.pid(), &[]).unwrap();
    let times = run_clients(p.addr, None).await;
    let summary = obs.stop().unwrap();
    check(&summary, &times, false);
}

#[test]
fn observer_counts_tls_pusher_connections_exactly() {
    if skip_unless_root("observer_counts_tls_pusher_connections_exactly") {
        return;
    }
    let _l = heavy_lock();
    block_on(tls());
}

async fn tls() {
    let dir = tempfile::tempdir().unwrap();
    let (cert, key, cfg) = tls_material(dir.path());
    let p = Pusher::start(&["--tls-cert", &cert, "--tls-key", &key]).unwrap();
    let s = TlsConnector::from(cfg.clone())
        .connect(
            ServerName::try_from("localhost").unwrap(),
            TcpStream::connect(p.addr).await.unwrap(),
        )
        .await
        .unwrap();
    let a = http_on(s, "POST", "/publish/obs", &[], b"first")
        .await
        .unwrap();
    assert_eq!(a.status, 200, "{}", a.body);
    let mut obs = Observe::start(p.pid(), &[]).unwrap();
    let times = run_clients(p.addr, Some(cfg)).await;
    let summary = obs.stop().unwrap();
    check(&summary, &times, true);
}
