//! Observer coverage (needs root: real probes) on the plain TCP helper
//! server (tests/src/bin/slow_accept_server.rs): processes forked after
//! attach are followed and their connections tracked, also past the 8
//! process slots (slots of exited processes are recycled); the fd table is
//! sized from the target's RLIMIT_NOFILE and an fd beyond it counts as
//! untracked; the usable cores follow the target's CPU affinity.

use pushscope_tests::{
    bin_path, heavy_lock,
    observer::{num, Observe},
    skip_unless_root, spawn_first_line, ChildGuard,
};
use std::{
    io::{Read, Write},
    net::{SocketAddr, TcpStream},
    process::Command,
    time::{Duration, Instant},
};

fn server(prefix: &[&str], args: &[&str]) -> (ChildGuard, SocketAddr) {
    let bin = bin_path("slow_accept_server");
    let mut cmd = match prefix.split_first() {
        None => Command::new(&bin),
        Some((p, rest)) => {
            let mut c = Command::new(p);
            c.args(rest).arg(&bin);
            c
        }
    };
    cmd.args(args);
    let (guard, line) = spawn_first_line(cmd, Duration::from_secs(10)).unwrap();
    (guard, line.parse().unwrap())
}

/// Connects and reads the server's `hello\n` (proof of the accept).
fn hello(addr: SocketAddr) -> TcpStream {
    let mut c = TcpStream::connect(addr).unwrap();
    c.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let mut b = [0u8; 6];
    c.read_exact(&mut b).unwrap();
    assert_eq!(&b, b"hello\n");
    c
}

#[test]
fn observer_follows_forks_after_attach_and_recycles_slots_needs_root() {
    if skip_unless_root("observer_follows_forks_after_attach_and_recycles_slots_needs_root") {
        return;
    }
    let _l = heavy_lock();
    // 12 children one after the other (more than the 8 slots), each
    // accepting M connections, all forked after the observer attached.
    const CHILDREN: usize = 12;
    const M: usize = 2;
    let (srv, addr) = server(&[], &["--fork-per-trigger", "2", "--max-secs", "60"]);
    let mut obs = Observe::start(srv.pid(), &[]).unwrap();
    for _ in 0..CHILDREN {
        let mut trigger = TcpStream::connect(addr).unwrap();
        trigger
            .set_read_timeout(Some(Duration::from_secs(10)))
            .unwrap();
        trigger.write_all(b"f").unwrap();
        for _ in 0..M {
            drop(hello(addr));
        }
        // The child has exited and was reaped: its slot is free again.
        let mut done = [0u8; 5];
        trigger.read_exact(&mut done).unwrap();
        assert_eq!(&done, b"done\n");
    }
    let s = obs.stop().unwrap();
    let o = &s["observer"];
    let d = &s["observe"]["details"];
    eprintln!("coverage: {} details: {d}", o["coverage"]);
    let accepted = (CHILDREN + CHILDREN * M) as f64;
    assert_eq!(num(d, "tasks_at_attach"), 1.0, "{d:#}");
    assert_eq!(num(d, "forks"), CHILDREN as f64, "{d:#}");
    assert_eq!(num(d, "tasks_followed"), 1.0 + CHILDREN as f64, "{d:#}");
    assert_eq!(num(d, "slots_recycled"), CHILDREN as f64, "{d:#}");
    assert_eq!(num(o, "connections.accepted"), accepted, "{o:#}");
    assert_eq!(num(o, "coverage.accepted"), accepted, "{o:#}");
    assert_eq!(num(o, "coverage.tracked"), accepted, "{o:#}");
    assert_eq!(num(o, "coverage.pct"), 100.0, "{o:#}");
    // Every close() (triggers in the parent, connections in each child)
    // found its connection in the kernel's fd table.
    assert_eq!(num(d, "closes_tracked"), accepted, "{d:#}");
    assert_eq!(num(o, "phases_ms.accept_wait.count"), accepted, "{o:#}");
}

#[test]
fn observer_fd_table_follows_rlimit_nofile_needs_root() {
    if skip_unless_root("observer_fd_table_follows_rlimit_nofile_needs_root") {
        return;
    }
    let _l = heavy_lock();
    const N: usize = 100;
    // Soft limit 64 at attach; the server raises it to 256 at its first
    // EMFILE, so fds 64.. are beyond the observer's table.
    let (srv, addr) = server(
        &["prlimit", "--nofile=64:256"],
        &[
            "--hold-until",
            "100",
            "--raise-nofile-on-emfile",
            "--max-secs",
            "30",
        ],
    );
    let mut obs = Observe::start(srv.pid(), &[]).unwrap();
    let mut conns: Vec<TcpStream> = (0..N).map(|_| hello(addr)).collect();
    // The server closes all once it holds N: wait for every EOF.
    let deadline = Instant::now() + Duration::from_secs(10);
    for c in &mut conns {
        c.set_read_timeout(Some(deadline.saturating_duration_since(Instant::now())))
            .unwrap();
        let mut b = [0u8; 1];
        assert_eq!(c.read(&mut b).unwrap(), 0, "the server closes");
    }
    let s = obs.stop().unwrap();
    let o = &s["observer"];
    let d = &s["observe"]["details"];
    eprintln!("coverage: {} details: {d}", o["coverage"]);
    assert_eq!(num(d, "fd_table_per_process"), 64.0, "{d:#}");
    let cov = &o["coverage"];
    assert_eq!(num(cov, "accepted"), N as f64, "{cov:#}");
    // Accepted fds below 64 are at most 4..=63.
    let beyond = num(cov, "untracked_by_reason.fd_beyond_table");
    assert!(beyond >= (N - 60) as f64, "{cov:#}");
    let tracked = num(cov, "tracked");
    assert_eq!(tracked + beyond, N as f64, "{cov:#}");
    assert_eq!(num(cov, "pct"), tracked / N as f64 * 100.0, "{cov:#}");
    assert!(num(cov, "pct") < 100.0);
    // Closing them removed the kernel entries of the untracked ones too.
    assert_eq!(num(d, "closes_tracked"), tracked, "{d:#}");
    assert_eq!(num(d, "untracked_closed"), beyond, "{d:#}");
}

#[test]
fn observer_usable_cores_follow_cpu_affinity_needs_root() {
    if skip_unless_root("observer_usable_cores_follow_cpu_affinity_needs_root") {
        return;
    }
    let _l = heavy_lock();
    let machine = std::thread::available_parallelism().unwrap().get();
    assert!(
        machine >= 2,
        "needs 2+ cpus to tell affinity from the machine"
    );
    let (srv, addr) = server(&["taskset", "-c", "0"], &["--max-secs", "30"]);
    let mut obs = Observe::start(srv.pid(), &[]).unwrap();
    drop(hello(addr));
    let s = obs.stop().unwrap();
    let t = &s["observer"]["target"];
    assert_eq!(num(t, "cpu_cores_usable"), 1.0, "{t:#}");
    assert_eq!(
        t["cpu_cores_source"],
        format!("affinity 1 of {machine} cpus"),
        "{t:#}"
    );
    assert_eq!(num(t, "cpu_cores_machine"), machine as f64, "{t:#}");
}

/// `observe --bench-toggle-signals` (the overhead bench's windows with and
/// without the probes): SIGUSR1 detaches the tracepoints — connections
/// accepted then are not seen — and SIGUSR2 attaches them again, with the
/// maps and what they held kept; each switch is announced when done.
#[test]
fn bench_toggle_signals_detach_and_reattach_the_probes_needs_root() {
    if skip_unless_root("bench_toggle_signals_detach_and_reattach_the_probes_needs_root") {
        return;
    }
    let _l = heavy_lock();
    let (srv, addr) = server(&[], &["--max-secs", "60"]);
    let mut obs = Observe::start(srv.pid(), &["--bench-toggle-signals"]).unwrap();
    let mut held = Vec::new();
    let mut connect = |n: usize| {
        for _ in 0..n {
            held.push(hello(addr));
        }
    };
    // Once a switch is done the observer says so in this file (a detach
    // waits for the kernel's RCU grace periods: about a second).
    let state = obs.out.join("bench-probes-attached");
    let switched = |want: &str| {
        let deadline = Instant::now() + Duration::from_secs(20);
        while std::fs::read_to_string(&state).ok().as_deref() != Some(want) {
            assert!(Instant::now() < deadline, "no switch to {want} within 20 s");
            std::thread::sleep(Duration::from_millis(10));
        }
    };
    switched("1");
    connect(3);
    obs.guard.signal(libc::SIGUSR1);
    switched("0");
    connect(4);
    obs.guard.signal(libc::SIGUSR2);
    switched("1");
    connect(5);
    let s = obs.stop().unwrap();
    let o = &s["observer"];
    eprintln!(
        "connections: {} details: {}",
        o["connections"], s["observe"]["details"]
    );
    assert_eq!(num(o, "connections.accepted"), 8.0, "{o:#}");
}
