//! The observer on a plain TCP helper server (needs root: real probes):
//! accept-queue wait made visible by a server that accepts slowly, and fd
//! exhaustion under `prlimit --nofile=64:64` counted as EMFILE with the
//! headroom reported.

use pushscope_tests::{
    bin_path, heavy_lock,
    observer::{num, Observe},
    poll_until,
    pusher::metric_in,
    scrape_metrics, skip_unless_root, spawn_first_line,
};
use std::{
    io::Read,
    net::{SocketAddr, TcpStream},
    process::Command,
    time::{Duration, Instant},
};

fn server(prefix: &[&str], args: &[&str]) -> (pushscope_tests::ChildGuard, SocketAddr) {
    let bin = bin_path("slow_accept_server");
    let mut cmd = if prefix.is_empty() {
        Command::new(&bin)
    } else {
        let mut c = Command::new(prefix[0]);
        c.args(&prefix[1..]).arg(&bin);
        c
    };
    cmd.args(args);
    let (guard, line) = spawn_first_line(cmd, Duration::from_secs(10)).unwrap();
    (guard, line.parse().unwrap())
}

#[test]
fn observer_accept_wait_reflects_a_slow_acceptor() {
    if skip_unless_root("observer_accept_wait_reflects_a_slow_acceptor") {
        return;
    }
    let _l = heavy_lock();
    const N: usize = 15;
    const DELAY_MS: f64 = 20.0;
    let (_srv, addr) = server(&[], &["--accept-delay-ms", "20", "--max-secs", "30"]);
    let mut obs = Observe::start(_srv.pid(), &[]).unwrap();
    // All N connect at once: the kernel completes them into the accept
    // queue, the server takes one every 20 ms.
    let mut conns: Vec<TcpStream> = (0..N).map(|_| TcpStream::connect(addr).unwrap()).collect();
    let deadline = Instant::now() + Duration::from_secs(10);
    for c in &mut conns {
        c.set_read_timeout(Some(deadline.saturating_duration_since(Instant::now())))
            .unwrap();
        let mut b = [0u8; 6];
        c.read_exact(&mut b).unwrap();
    }
    drop(conns);
    let s = obs.stop().unwrap();
    let o = &s["observer"];
    eprintln!("accept_wait: {}", o["phases_ms"]["accept_wait"]);
    assert_eq!(num(o, "connections.accepted"), N as f64, "{o:#}");
    assert_eq!(num(o, "phases_ms.accept_wait.count"), N as f64);
    // The last one waited for the N-1 before it.
    let expect = (N - 1) as f64 * DELAY_MS;
    let p99 = num(o, "phases_ms.accept_wait.p99");
    assert!(
        p99 >= 0.8 * expect && p99 <= expect + 150.0,
        "accept_wait p99 {p99} ms, expected about {expect} ms"
    );
    let p50 = num(o, "phases_ms.accept_wait.p50");
    assert!(
        p50 >= 0.5 * expect * 0.8 && p50 <= 0.5 * expect + 100.0,
        "accept_wait p50 {p50} ms, expected about {} ms",
        expect / 2.0
    );
}

#[test]
fn observer_counts_emfile_under_a_low_fd_limit() {
    if skip_unless_root("observer_counts_emfile_under_a_low_fd_limit") {
        return;
    }
    let _l = heavy_lock();
    let (srv, addr) = server(
        &["prlimit", "--nofile=64:64"],
        &["--hold", "--max-secs", "30"],
    );
    let metrics = SocketAddr::from(([127, 0, 0, 1], pushscope_tests::free_port()));
    let mut obs = Observe::start(srv.pid(), &[&format!("--metrics={metrics}")]).unwrap();
    // 100 connections > 64 fds: the server's accept() hits EMFILE and retries.
    let conns: Vec<TcpStream> = (0..100)
        .map(|_| TcpStream::connect(addr).unwrap())
        .collect();
    // Hold them until the observer has counted EMFILE and a 1 Hz /proc
    // sample has seen the fd table full (the peak and the headroom below
    // come from such a sample).
    poll_until(
        "the observer's live metrics to show EMFILE and >= 60 open fds sampled",
        Duration::from_secs(20),
        || {
            let text = scrape_metrics(metrics).map_err(|e| e.to_string())?;
            let emfile = metric_in(&text, "pushscope_fd_emfile").unwrap_or(0.0);
            let open_peak = metric_in(&text, "pushscope_fd_open_peak").unwrap_or(0.0);
            if emfile >= 1.0 && open_peak >= 60.0 {
                Ok(())
            } else {
                Err(text)
            }
        },
    );
    let s = obs.stop().unwrap();
    drop(conns);
    let o = &s["observer"];
    eprintln!("fd: {} details: {}", o["fd"], s["observe"]["details"]);
    assert!(num(o, "fd.emfile") >= 1.0, "{o:#}");
    assert_eq!(num(o, "fd.limit"), 64.0);
    // Inherited fds (e.g. cargo's jobserver pipe) can sit above the limit.
    let open = num(o, "fd.open_peak");
    assert!(open >= 60.0, "open_peak {open}");
    let headroom = num(&s["observe"]["details"], "fd_headroom_min");
    assert!(headroom <= 4.0 / 64.0 + 1e-9, "headroom {headroom}");
    // Every fd but stdin/stdout/stderr, the listener and inherited ones is
    // an accepted socket; the rest of the 100 wait in the accept queue.
    let accepted = num(o, "connections.accepted");
    assert!((55.0..=60.0).contains(&accepted), "{o:#}");
    let queued = num(&s["observe"]["details"], "established_not_accepted");
    assert_eq!(accepted + queued, 100.0, "{s:#}");
}

#[test]
fn observer_measures_outbound_connects_per_destination() {
    if skip_unless_root("observer_measures_outbound_connects_per_destination") {
        return;
    }
    let _l = heavy_lock();
    const N: usize = 5;
    // A backend that accepts, and a port where nothing listens (refused).
    let backend = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let refused = std::net::SocketAddr::from(([127, 0, 0, 1], pushscope_tests::free_port()));
    let ok = backend.local_addr().unwrap();
    let targets = format!("{ok},{refused}");
    let (srv, addr) = server(&[], &["--connect-to", &targets, "--max-secs", "30"]);
    let mut obs = Observe::start(srv.pid(), &[]).unwrap();
    for _ in 0..N {
        let mut c = TcpStream::connect(addr).unwrap();
        c.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        let mut b = [0u8; 6];
        c.read_exact(&mut b).unwrap();
    }
    let s = obs.stop().unwrap();
    drop(backend);
    let o = &s["observer"];
    eprintln!("outbound: {}", o["outbound"]);
    let good = &o["outbound"][ok.to_string()];
    assert_eq!(num(good, "count"), N as f64, "{o:#}");
    assert_eq!(num(good, "errors"), 0.0);
    assert!(num(good, "connect_p99_ms") > 0.0 && num(good, "connect_p99_ms") < 100.0);
    let bad = &o["outbound"][refused.to_string()];
    assert_eq!(num(bad, "count"), N as f64, "{o:#}");
    assert_eq!(num(bad, "errors"), N as f64);
    assert_eq!(num(o, "connections.accepted"), N as f64);
}
