//! The observer on NGINX + nchan with TLS (OpenSSL), master + 2 workers,
//! observed by the master's PID (needs root: real probes). The config comes
//! from tests/fixtures/nginx-nchan.conf. N WebSocket subscribers over TLS →
//! exactly N accepted (by the workers), N closed, every phase counted N
//! times, durations consistent with the client's (tests/src/observer.rs).
//! A client that rejects the server's certificate: N attempts, N failures
//! by closer, no handshake duration (inferred or exact).

use pushscope_tests::{
    heavy_lock,
    observer::{check, num, run_clients, tls_material, Observe},
    poll_until,
    pusher::http_on,
    skip_unless_root,
};
use rustls::pki_types::ServerName;
use std::{
    net::{SocketAddr, TcpStream},
    os::unix::process::CommandExt,
    path::Path,
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};
use tokio_rustls::TlsConnector;

const N: usize = 20;

/// NGINX in its own process group: SIGTERM to the master, then SIGKILL to
/// the group, so no worker outlives the test.
struct Nginx {
    child: Child,
}

impl Drop for Nginx {
    fn drop(&mut self) {
        let pid = self.child.id() as i32;
        // SAFETY: signals to our own child and its process group.
        unsafe { libc::kill(pid, libc::SIGTERM) };
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                break;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        // SAFETY: as above.
        unsafe { libc::kill(-pid, libc::SIGKILL) };
        let _ = self.child.wait();
    }
}

fn start_nginx(dir: &Path, cert: &str, key: &str) -> (Nginx, SocketAddr) {
    let port = pushscope_tests::free_port();
    let template = include_str!("../fixtures/nginx-nchan.conf");
    let conf = template
        .replace("{{DIR}}", &dir.to_string_lossy())
        .replace("{{PORT}}", &port.to_string())
        .replace("{{CERT}}", cert)
        .replace("{{KEY}}", key);
    let path = dir.join("nginx.conf");
    std::fs::write(&path, conf).unwrap();
    let child = Command::new("nginx")
        .arg("-c")
        .arg(&path)
        .arg("-p")
        .arg(dir)
        .stdout(Stdio::null())
        .process_group(0)
        .spawn()
        .expect("nginx is installed (.ci/run installs nginx and libnginx-mod-nchan)");
    let ng = Nginx { child };
    let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    // Ready when it accepts and both workers are forked.
    loop {
        let workers = pushscope_children(ng.child.id());
        if TcpStream::connect(addr).is_ok() && workers >= 2 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "nginx did not come up: {}",
            std::fs::read_to_string(dir.join("error.log")).unwrap_or_default()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    (ng, addr)
}

/// Number of direct children of `pid` (the nginx workers).
fn pushscope_children(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/task"))
        .map(|d| {
            d.flatten()
                .map(|t| {
                    std::fs::read_to_string(t.path().join("children"))
                        .unwrap_or_default()
                        .split_whitespace()
                        .count()
                })
                .sum()
        })
        .unwrap_or(0)
}

/// Server-side TCP sockets on local `port` that are neither the listener
/// nor in TIME_WAIT (/proc/net/tcp lines): connections still being torn down.
fn connections_not_yet_closed(port: u16) -> Vec<String> {
    const LISTEN: &str = "0A";
    const TIME_WAIT: &str = "06";
    let table = std::fs::read_to_string("/proc/net/tcp").unwrap_or_default();
    table
        .lines()
        .skip(1)
        .filter(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            let local_port = f
                .get(1)
                .and_then(|a| a.rsplit_once(':'))
                .and_then(|(_, p)| u16::from_str_radix(p, 16).ok());
            local_port == Some(port) && f.get(3).is_some_and(|st| *st != LISTEN && *st != TIME_WAIT)
        })
        .map(str::to_string)
        .collect()
}

#[test]
fn observer_counts_nginx_nchan_tls_connections_by_master_pid() {
    if skip_unless_root("observer_counts_nginx_nchan_tls_connections_by_master_pid") {
        return;
    }
    let _l = heavy_lock();
    let dir = tempfile::tempdir().unwrap();
    let (cert, key, cfg) = tls_material(dir.path());
    let (ng, addr) = start_nginx(dir.path(), &cert, &key);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    // The stored message every subscriber gets first; published (and its
    // connection closed) before the observer attaches.
    rt.block_on(async {
        let s = TlsConnector::from(cfg.clone())
            .connect(
                ServerName::try_from("localhost").unwrap(),
                tokio::net::TcpStream::connect(addr).await.unwrap(),
            )
            .await
            .unwrap();
        let a = http_on(s, "POST", "/pub", &[], b"first").await.unwrap();
        assert!(
            a.status == 201 || a.status == 202,
            "{} {}",
            a.status,
            a.body
        );
    });
    // The publish connection must be gone on NGINX's side (closed, or in
    // TIME_WAIT: its last state change done) before the observer attaches,
    // so none of its teardown is seen.
    poll_until(
        "NGINX to finish closing the publish connection",
        Duration::from_secs(10),
        || match connections_not_yet_closed(addr.port()) {
            open if open.is_empty() => Ok(()),
            open => Err(open.join("\n")),
        },
    );
    let mut obs = Observe::start(ng.child.id(), &[]).unwrap();
    let times = rt.block_on(run_clients(addr, Some(cfg), "wss://localhost/sub", N));
    let summary = obs.stop().unwrap();
    let d = &summary["observe"]["details"];
    // Master + 2 workers at attach, nothing forked since.
    assert_eq!(num(d, "tasks_at_attach"), 3.0, "{d:#}");
    assert_eq!(num(d, "forks"), 0.0, "{d:#}");
    assert_eq!(num(d, "tasks_followed"), 3.0, "{d:#}");
    check(&summary, &times, true);
    // The exact layer (uprobes on OpenSSL's SSL_do_handshake) measured every
    // handshake; the turn-taking inference must agree with it.
    let exact = &d["tls_handshake_exact_ms"];
    let inferred = &summary["observer"]["phases_ms"]["tls_handshake"];
    eprintln!("exact: {exact} inferred: {inferred}");
    assert_eq!(num(exact, "count"), N as f64, "{d:#}");
    let (e50, i50) = (num(exact, "p50"), num(inferred, "p50"));
    assert!(
        (e50 - i50).abs() <= 0.5 + 0.2 * e50,
        "inferred TLS handshake p50 {i50} ms vs exact {e50} ms"
    );
}

#[test]
fn observer_counts_rejected_certificates_as_failed_handshakes_needs_root() {
    if skip_unless_root("observer_counts_rejected_certificates_as_failed_handshakes_needs_root") {
        return;
    }
    let _l = heavy_lock();
    let dir = tempfile::tempdir().unwrap();
    let (cert, key, _trusting) = tls_material(dir.path());
    let (ng, addr) = start_nginx(dir.path(), &cert, &key);
    // A client that trusts another CA: it rejects nginx's certificate.
    let rejecting = pushscope_tests::tls::Ca::new("another CA").client_config(None);
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let mut obs = Observe::start(ng.child.id(), &[]).unwrap();
    rt.block_on(async {
        for _ in 0..N {
            let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
            let r = TlsConnector::from(rejecting.clone())
                .connect(ServerName::try_from("localhost").unwrap(), tcp)
                .await;
            assert!(r.is_err(), "the client must reject the certificate");
        }
    });
    let summary = obs.stop().unwrap();
    let o = &summary["observer"];
    let d = &summary["observe"]["details"];
    eprintln!("tls: {} exact: {}", o["tls"], d["tls_handshake_exact_ms"]);
    let n = N as f64;
    assert_eq!(num(o, "connections.accepted"), n, "{o:#}");
    assert_eq!(num(o, "coverage.tracked"), n, "{o:#}");
    // No handshake completed: no duration, inferred or exact.
    assert!(o["phases_ms"]["tls_handshake"].is_null(), "{o:#}");
    assert!(d["tls_handshake_exact_ms"].is_null(), "{d:#}");
    assert_eq!(num(o, "tls.attempts"), n, "{o:#}");
    assert_eq!(num(o, "tls.completed"), 0.0, "{o:#}");
    assert_eq!(num(o, "tls.failed"), n, "{o:#}");
    let by = &o["tls"]["failed_by_closer"];
    let sum = num(by, "peer_fin") + num(by, "peer_rst") + num(by, "server");
    assert_eq!(sum, n, "{by:#}");
    // The OpenSSL layer saw every handshake begin and its socket close.
    assert_eq!(num(o, "tls.exact_aborted"), n, "{o:#}");
}
