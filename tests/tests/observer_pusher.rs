//! The observer against the reference pusher (needs root: real probes):
//! N WebSocket subscribers made by an independent client (this test), plain
//! and TLS → exactly N accepted, N closed, every phase counted N times, and
//! server-side phase durations consistent with the client's own timings
//! (containment rule and tolerance: tests/src/observer.rs). GETs the
//! pusher refuses (404, 400) are counted as refused upgrades, from the
//! response's bytes, and never as upgrades.

use pushscope_tests::{
    heavy_lock,
    observer::num,
    observer::{check, check_outputs, run_clients, tls_material, Observe},
    pusher::{http, http_on, Pusher},
    skip_unless_root,
};
use rustls::pki_types::ServerName;
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;

const N: usize = 20;
const URL: &str = "ws://localhost/ws?channel=obs&last_seq=0";

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
    let times = run_clients(p.addr, None, URL, N).await;
    let summary = obs.stop().unwrap();
    check(&summary, &times, false);
    check_outputs(&obs.out, N, false);
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
    let times = run_clients(p.addr, Some(cfg), URL, N).await;
    let summary = obs.stop().unwrap();
    check(&summary, &times, true);
    check_outputs(&obs.out, N, true);
}

#[test]
fn observer_counts_refused_upgrades_exactly_needs_root() {
    if skip_unless_root("observer_counts_refused_upgrades_exactly_needs_root") {
        return;
    }
    let _l = heavy_lock();
    block_on(refused());
}

async fn refused() {
    let p = Pusher::start(&[]).unwrap();
    let mut obs = Observe::start(p.pid(), &[]).unwrap();
    let upgrade = [
        ("Upgrade", "websocket"),
        ("Sec-WebSocket-Key", "dGhlIHNhbXBsZSBub25jZQ=="),
        ("Sec-WebSocket-Version", "13"),
    ];
    for i in 0..N {
        // Half to a path that does not exist, half to /ws without a
        // channel: answered 404 and 400.
        let (path, headers, status) = if i % 2 == 0 {
            ("/nope", &upgrade[..], 404)
        } else {
            ("/ws", &upgrade[..], 400)
        };
        let a = http(p.addr, "GET", path, headers, b"").await.unwrap();
        assert_eq!(a.status, status, "{}", a.body);
    }
    let summary = obs.stop().unwrap();
    let o = &summary["observer"];
    let n = N as f64;
    assert_eq!(num(o, "connections.accepted"), n, "{o:#}");
    assert_eq!(num(o, "connections.upgrade_refused"), n, "{o:#}");
    // No upgrade and no push measured: null, not a zero count.
    assert!(o["phases_ms"]["ws_upgrade"].is_null(), "{o:#}");
    assert!(o["phases_ms"]["first_push"].is_null(), "{o:#}");
    assert_eq!(num(o, "coverage.tracked"), n, "{o:#}");
}
