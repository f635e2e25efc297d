//! TLS and mTLS of the reference pusher with certificates generated here
//! (rcgen): wss:// push and https:// publish work; with a client CA set, a
//! client without a certificate or with one from another CA is rejected.

use std::{net::SocketAddr, path::Path, sync::Arc, time::Duration};

use futures_util::StreamExt;
use pushscope_tests::pusher::{http_on, parse_pushed, HttpAnswer, Pusher};
use pushscope_tests::tls::{Ca, Leaf};
use rustls::{pki_types::ServerName, ClientConfig};
use tokio::net::TcpStream;
use tokio_rustls::{client::TlsStream, TlsConnector};
use tokio_tungstenite::{client_async, tungstenite::Message};

async fn tls_connect(
    addr: SocketAddr,
    cfg: Arc<ClientConfig>,
) -> std::io::Result<TlsStream<TcpStream>> {
    let tcp = TcpStream::connect(addr).await?;
    TlsConnector::from(cfg)
        .connect(ServerName::try_from("localhost").unwrap(), tcp)
        .await
}

/// GET /healthz over TLS; Err if the handshake or the request fails.
async fn healthz(addr: SocketAddr, cfg: Arc<ClientConfig>) -> anyhow::Result<HttpAnswer> {
    let s = tls_connect(addr, cfg).await?;
    let a = http_on(s, "GET", "/healthz", &[], b"").await?;
    Ok(a)
}

/// Server certificate and key, and the CA, as PEM files in `dir`.
fn write_pems(dir: &Path, ca: &Ca, server: &Leaf) -> [String; 3] {
    let (cert, key) = server.write(dir, "server");
    [cert, key, ca.write(dir, "ca")]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wss_push_and_https_publish() {
    let dir = tempfile::tempdir().unwrap();
    let ca = Ca::new("test CA");
    let server = ca.leaf(true);
    let [cert, key, _] = write_pems(dir.path(), &ca, &server);
    let p = Pusher::start(&["--tls-cert", &cert, "--tls-key", &key]).unwrap();
    let cfg = ca.client_config(None);

    let s = tls_connect(p.addr, cfg.clone()).await.unwrap();
    let (mut ws, resp) = client_async("wss://localhost/ws?channel=secure", s)
        .await
        .unwrap();
    assert_eq!(resp.status().as_u16(), 101);
    let s = tls_connect(p.addr, cfg.clone()).await.unwrap();
    let a = http_on(
        s,
        "POST",
        "/publish/secure",
        &[("X-Msg-Id", "t1")],
        b"over tls",
    )
    .await
    .unwrap();
    assert_eq!(a.status, 200, "{}", a.body);
    let m = loop {
        match tokio::time::timeout(Duration::from_secs(5), ws.next())
            .await
            .unwrap()
            .unwrap()
            .unwrap()
        {
            Message::Text(t) => break parse_pushed(t.as_str()).unwrap(),
            _ => continue,
        }
    };
    assert_eq!(
        (m.seq, m.id.as_str(), m.data.as_str()),
        (1, "t1", "over tls")
    );
    // Plain HTTP on the TLS port gets nothing useful.
    let plain = pushscope_tests::pusher::http(p.addr, "GET", "/healthz", &[], b"").await;
    assert!(plain.map_or(true, |a| a.status != 200));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mtls_rejects_clients_without_a_valid_certificate() {
    let dir = tempfile::tempdir().unwrap();
    let ca = Ca::new("test CA");
    let server = ca.leaf(true);
    let [cert, key, ca_pem] = write_pems(dir.path(), &ca, &server);
    let p = Pusher::start(&[
        "--tls-cert",
        &cert,
        "--tls-key",
        &key,
        "--tls-client-ca",
        &ca_pem,
    ])
    .unwrap();

    let good = ca.leaf(false);
    let a = healthz(p.addr, ca.client_config(Some(&good)))
        .await
        .unwrap();
    assert_eq!(a.status, 200);

    // No certificate: the server aborts the handshake (TLS 1.3 surfaces it
    // on the first read), no HTTP answer ever comes.
    let none = healthz(p.addr, ca.client_config(None)).await;
    assert!(none.is_err(), "client without certificate got {none:?}");

    // A certificate from another CA.
    let rogue_ca = Ca::new("rogue CA");
    let rogue = rogue_ca.leaf(false);
    let bad = healthz(p.addr, ca.client_config(Some(&rogue))).await;
    assert!(
        bad.is_err(),
        "client with a foreign certificate got {bad:?}"
    );

    // wss with the good certificate works end to end.
    let s = tls_connect(p.addr, ca.client_config(Some(&good)))
        .await
        .unwrap();
    let (_ws, resp) = client_async("wss://localhost/ws?channel=m", s)
        .await
        .unwrap();
    assert_eq!(resp.status().as_u16(), 101);

    let s = tls_connect(p.addr, ca.client_config(Some(&good)))
        .await
        .unwrap();
    let m = http_on(s, "GET", "/metrics", &[], b"").await.unwrap();
    let failures =
        pushscope_tests::pusher::metric_in(&m.body, "pusher_tls_handshake_failures_total");
    assert_eq!(failures, Some(2.0), "{}", m.body);
}

#[test]
fn bad_certificate_paths_fail_with_one_sentence() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("missing.pem");
    let out = std::process::Command::new(pushscope_tests::bin_path("pushscope-pusher"))
        .args(["--listen", "127.0.0.1:0", "--tls-cert"])
        .arg(&missing)
        .arg("--tls-key")
        .arg(&missing)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(out.stdout.is_empty(), "no address may be printed");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("cannot open") && err.contains("missing.pem"),
        "{err}"
    );
    // A certificate flag without its key is a usage error.
    let out = std::process::Command::new(pushscope_tests::bin_path("pushscope-pusher"))
        .arg("--tls-cert")
        .arg(&missing)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
}
