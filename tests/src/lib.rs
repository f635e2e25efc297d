//! Shared helpers for the integration tests: find the workspace binaries,
//! run real processes under guards that kill and reap them, know whether
//! we are root.
//!
//! The binaries are built by `cargo xtask test` (`cargo build --workspace`)
//! before the tests run; a missing binary says so.

pub mod faulty_server;
pub mod loadgen;
pub mod nginx;
pub mod observer;
pub mod pusher;
pub mod restart_model;
pub mod tls;

use std::{
    io::{BufRead, BufReader, Read, Write},
    net::{SocketAddr, TcpStream},
    path::PathBuf,
    process::{Child, ChildStdout, Command, Stdio},
    sync::{Mutex, MutexGuard},
    time::{Duration, Instant},
};

/// A loopback port nobody listens on right now (bound, read, closed): for
/// a server to take, or to be refused on.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("binding 127.0.0.1:0")
        .port()
}

/// Polls `check` every 50 ms until it returns `Ok` and returns that value;
/// panics after `timeout` saying what was awaited (`what`) and the last
/// state `check` described in its `Err`. Tests wait with this instead of
/// sleeping for a guessed time.
pub fn poll_until<T>(
    what: &str,
    timeout: Duration,
    mut check: impl FnMut() -> Result<T, String>,
) -> T {
    let start = Instant::now();
    loop {
        match check() {
            Ok(v) => return v,
            Err(last) if start.elapsed() >= timeout => {
                panic!("timed out after {timeout:?} waiting for {what}; last seen: {last}")
            }
            Err(_) => std::thread::sleep(Duration::from_millis(50)),
        }
    }
}

/// `GET /metrics` on `addr` (Prometheus text; read with
/// [`pusher::metric_in`]), with the whole answer as text.
pub fn scrape_metrics(addr: SocketAddr) -> std::io::Result<String> {
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(2))?;
    s.set_read_timeout(Some(Duration::from_secs(5)))?;
    s.write_all(b"GET /metrics HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")?;
    let mut text = String::new();
    s.read_to_string(&mut text)?;
    Ok(text)
}

/// Path of a workspace binary next to the running test executable
/// (`target/<profile>/deps/test-xxx` → `target/<profile>/<name>`).
pub fn bin_path(name: &str) -> PathBuf {
    let exe = std::env::current_exe().expect("current_exe");
    let profile_dir = exe
        .parent()
        .and_then(|d| d.parent())
        .expect("target/<profile>");
    let path = profile_dir.join(name);
    assert!(
        path.exists(),
        "{} is not built: run `cargo build --workspace` first (`cargo xtask test` does it)",
        path.display()
    );
    path
}

/// True when the tests run as root (CI does): probe tests need it.
pub fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() == 0 }
}

/// Skips a test that needs root with a message saying so; returns true
/// when the caller should return early. With `PUSHSCOPE_REQUIRE_ROOT=1`
/// (CI sets it) a root-only test that cannot run fails instead: a green CI
/// must never hide skipped probe tests.
pub fn skip_unless_root(test: &str) -> bool {
    if is_root() {
        return false;
    }
    if std::env::var("PUSHSCOPE_REQUIRE_ROOT").is_ok_and(|v| v == "1") {
        panic!("{test} needs root (CAP_BPF + CAP_PERFMON) and PUSHSCOPE_REQUIRE_ROOT=1 is set");
    }
    eprintln!("skipped {test}: needs root (CAP_BPF + CAP_PERFMON); CI runs it as root");
    true
}

/// The host-side TUN devices of process `pid`'s emulated links
/// (`loadgen::link`: `psl<pid>h<k>`).
pub fn link_host_devices(pid: u32) -> Vec<String> {
    std::fs::read_dir("/sys/class/net")
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().to_string())
        .filter(|n| n.starts_with(&format!("psl{pid}h")))
        .collect()
}

/// Serialises heavy tests inside one test binary: 2 cores cannot run two
/// load tests at once and keep their figures meaningful.
pub fn heavy_lock() -> MutexGuard<'static, ()> {
    static LOCK: Mutex<()> = Mutex::new(());
    LOCK.lock().unwrap_or_else(|p| p.into_inner())
}

/// A child process killed (SIGKILL) and reaped when dropped.
pub struct ChildGuard {
    pub child: Child,
    pub name: String,
}

impl ChildGuard {
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Sends a signal (e.g. libc::SIGSTOP).
    pub fn signal(&self, sig: i32) {
        // SAFETY: plain kill(2) on our own child.
        unsafe {
            libc::kill(self.child.id() as i32, sig);
        }
    }

    /// Kills with SIGKILL and waits for it.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Waits for exit at most `timeout`; None if still running.
    pub fn wait_timeout(&mut self, timeout: Duration) -> Option<std::process::ExitStatus> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Ok(Some(status)) = self.child.try_wait() {
                return Some(status);
            }
            if Instant::now() >= deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for ChildGuard {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Spawns `cmd` with piped stdout and returns the guard and the first line
/// it prints (servers print their bound address first), waiting at most
/// `timeout`. The rest of stdout is drained in a background thread.
pub fn spawn_first_line(
    mut cmd: Command,
    timeout: Duration,
) -> anyhow::Result<(ChildGuard, String)> {
    let name = format!("{:?}", cmd.get_program());
    let mut child = cmd
        .stdout(Stdio::piped())
        .spawn()
        .map_err(|e| anyhow::anyhow!("spawning {name}: {e}"))?;
    let stdout: ChildStdout = child.stdout.take().expect("piped");
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let mut reader = BufReader::new(stdout);
        let mut line = String::new();
        let _ = reader.read_line(&mut line);
        let _ = tx.send(line);
        // Keep draining so the child never blocks on a full pipe.
        let mut sink = String::new();
        while reader.read_line(&mut sink).map(|n| n > 0).unwrap_or(false) {
            sink.clear();
        }
    });
    let guard = ChildGuard {
        child,
        name: name.clone(),
    };
    match rx.recv_timeout(timeout) {
        Ok(line) if !line.trim().is_empty() => Ok((guard, line.trim().to_string())),
        _ => anyhow::bail!("{name} printed no first line within {timeout:?}"),
    }
}
