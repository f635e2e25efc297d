//! `wss://` load with rustls against the reference pusher in mTLS mode
//! (certificates generated here with rcgen): a trusted client with a
//! certificate gets every message and a measured TLS phase; a client that
//! does not trust the server's CA has every handshake failure counted by
//! reason, and the run still completes.

use pushscope_tests::{heavy_lock, loadgen::pushscope, pusher::Pusher, tls::Ca};
use std::time::Duration;

#[test]
fn wss_with_client_certificates_and_handshake_failures_by_reason() {
    let _heavy = heavy_lock();
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let ca = Ca::new("pushscope test CA");
    let other = Ca::new("someone else's CA");
    let ca_pem = ca.write(d, "ca");
    other.write(d, "other");
    let (cert, key) = ca.leaf(true).write(d, "server");
    ca.leaf(false).write(d, "client");
    let path = |n: &str| d.join(n).to_str().unwrap().to_string();
    let p = Pusher::start(&[
        "--tls-cert",
        &cert,
        "--tls-key",
        &key,
        "--tls-client-ca",
        &ca_pem,
    ])
    .unwrap();
    let url = format!("wss://{}/ws", p.addr);

    let out = tempfile::tempdir().unwrap();
    let run = pushscope(
        &[
            "load",
            "--url",
            &url,
            "--stages",
            "20:2s",
            "--channels",
            "2",
            "--rate",
            "100",
            "--grace",
            "1s",
            "--ca-cert",
            &ca_pem,
            "--client-cert",
            &path("client.pem"),
            "--client-key",
            &path("client.key"),
        ],
        Some(out.path()),
        Duration::from_secs(30),
    )
    .unwrap();
    assert_eq!(run.code, Some(0), "stderr:\n{}", run.stderr);
    let s = run.stage(0);
    assert_eq!(run.stage_u64(0, "connections", "opened"), 20, "{s}");
    assert_eq!(run.stage_u64(0, "messages", "lost"), 0, "{s}");
    assert_eq!(
        run.stage_u64(0, "messages", "received"),
        run.stage_u64(0, "messages", "expected"),
        "{s}"
    );
    assert!(run.stage_u64(0, "messages", "received") > 0, "{s}");
    assert!(
        s["client_phases_ms"]["tls"]["p50"].as_f64().unwrap() > 0.0,
        "{s}"
    );

    // Not trusting the server's CA: every attempt fails in the handshake, counted, not fatal.
    let out = tempfile::tempdir().unwrap();
    let run = pushscope(
        &[
            "load",
            "--url",
            &url,
            "--stages",
            "5:1s",
            "--channels",
            "1",
            "--rate",
            "10",
            "--grace",
            "1s",
            "--ca-cert",
            &path("other.pem"),
            "--client-cert",
            &path("client.pem"),
            "--client-key",
            &path("client.key"),
        ],
        Some(out.path()),
        Duration::from_secs(30),
    )
    .unwrap();
    assert_eq!(run.code, Some(0), "stderr:\n{}", run.stderr);
    let s = run.stage(0);
    assert_eq!(run.stage_u64(0, "connections", "opened"), 0, "{s}");
    let failed = run.stage_u64(0, "connections", "failed");
    assert!(failed >= 5, "{s}");
    let reasons = s["failed_by_reason"].as_object().unwrap();
    let tls: u64 = reasons
        .iter()
        .filter(|(k, _)| k.starts_with("tls: invalid peer certificate"))
        .map(|(_, v)| v.as_u64().unwrap())
        .sum();
    assert_eq!(tls, failed, "{s}");
}
