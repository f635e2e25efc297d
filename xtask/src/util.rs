//! Running cargo and the workspace binaries from xtask.

use anyhow::{bail, Context, Result};
use std::{
    io::{BufRead, BufReader},
    path::PathBuf,
    process::{Child, Command, Stdio},
    time::{Duration, SystemTime, UNIX_EPOCH},
};

pub fn workspace_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_path_buf()
}

pub fn target_dir() -> PathBuf {
    std::env::var("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|_| workspace_root().join("target"))
}

pub fn cargo(args: &[&str]) -> Result<()> {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    eprintln!("xtask: cargo {}", args.join(" "));
    let status = Command::new(&cargo)
        .args(args)
        .current_dir(workspace_root())
        .status()
        .with_context(|| format!("running cargo {}", args.join(" ")))?;
    if !status.success() {
        bail!("`cargo {}` failed", args.join(" "));
    }
    Ok(())
}

pub fn release_bin(name: &str) -> PathBuf {
    bin("release", name)
}

/// A workspace binary of the given cargo profile dir ("release" or "debug").
pub fn bin(profile_dir: &str, name: &str) -> PathBuf {
    target_dir().join(profile_dir).join(name)
}

/// The demo scenario of `cargo xtask run`: a few thousand connections in
/// three stages, well under 3 minutes on 2 cores.
const DEMO_ARGS: &[&str] = &[
    "--stages",
    "1000:20s,2000:20s,4000:20s",
    "--channels",
    "20",
    "--rate",
    "200",
    "--connect-rate",
    "2000",
];

/// A child process stopped and reaped when dropped: SIGINT first (the
/// observer writes its outputs and detaches on it, the pusher closes its
/// clients), SIGKILL after 10 s.
pub struct Guard(pub Child);

impl Drop for Guard {
    fn drop(&mut self) {
        if let Ok(Some(_)) = self.0.try_wait() {
            return;
        }
        // SAFETY: kill(2) on our own child, not reaped yet (checked above).
        unsafe { kill(self.0.id() as i32, SIGINT) };
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while std::time::Instant::now() < deadline {
            if let Ok(Some(_)) = self.0.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

const SIGINT: i32 = 2;

extern "C" {
    fn kill(pid: i32, sig: i32) -> i32;
}

/// Spawns `cmd` and returns it with the first line it prints on stdout
/// (servers print their bound address first), waiting at most 15 s. The
/// rest of stdout is drained so the child never blocks on a full pipe.
pub fn spawn_first_line(mut cmd: Command, what: &str) -> Result<(Guard, String)> {
    let mut child = cmd
        .stdout(Stdio::piped())
        .spawn()
        .with_context(|| format!("starting {what}"))?;
    let stdout = child.stdout.take().expect("piped");
    let guard = Guard(child);
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let mut r = BufReader::new(stdout);
        let mut line = String::new();
        let _ = r.read_line(&mut line);
        let _ = tx.send(line);
        let mut sink = String::new();
        while r.read_line(&mut sink).map(|n| n > 0).unwrap_or(false) {
            sink.clear();
        }
    });
    let line = rx
        .recv_timeout(Duration::from_secs(15))
        .with_context(|| format!("{what} printed nothing within 15 s"))?;
    let line = line.trim().to_string();
    if line.is_empty() {
        bail!("{what} exited before printing its first line");
    }
    Ok((guard, line))
}

/// Starts the reference pusher (binary of `profile_dir`) on a free
/// loopback port with `data_dir`; returns the guard and its bound address.
pub fn start_pusher(
    profile_dir: &str,
    data_dir: &std::path::Path,
    extra: &[&str],
) -> Result<(Guard, String)> {
    let mut cmd = Command::new(bin(profile_dir, "pushscope-pusher"));
    cmd.args(["--listen", "127.0.0.1:0", "--data-dir"])
        .arg(data_dir)
        .args(extra)
        .env("RUST_LOG", "warn");
    spawn_first_line(cmd, "pushscope-pusher")
}

/// Pins every thread of `pid` to one CPU (taskset, util-linux).
pub fn pin(pid: u32, cpu: u32) -> Result<()> {
    let st = Command::new("taskset")
        .args(["-a", "-p", "-c", &cpu.to_string(), &pid.to_string()])
        .stdout(Stdio::null())
        .status()
        .context("running taskset (apt-get install -y util-linux)")?;
    if !st.success() {
        bail!("taskset could not pin PID {pid} to CPU {cpu}");
    }
    Ok(())
}

/// utime + stime of a process in ns (USER_HZ = 100 on Linux x86-64).
pub fn cpu_ns(pid: u32) -> u64 {
    let s = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let Some(rest) = s.rfind(')').map(|i| &s[i + 2..]) else {
        return 0;
    };
    let f: Vec<&str> = rest.split_whitespace().collect();
    let t = |i: usize| f.get(i).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0);
    (t(11) + t(12)) * 10_000_000
}

/// Median (NaN when empty; the mean of the middle two when even).
pub fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    match v.len() {
        0 => f64::NAN,
        n if n % 2 == 1 => v[n / 2],
        n => (v[n / 2 - 1] + v[n / 2]) / 2.0,
    }
}

/// Where benchmarks write their figures and scratch data.
pub fn bench_dir() -> PathBuf {
    target_dir().join("bench")
}

/// Starts the release pusher for a benchmark on an emptied `data_dir`.
pub fn start_bench_pusher(data_dir: &std::path::Path, extra: &[&str]) -> Result<(Guard, String)> {
    let _ = std::fs::remove_dir_all(data_dir);
    start_pusher("release", data_dir, extra)
}

/// `cargo xtask run`: against the user's server when `--pid`/`--url` are
/// given, else against a freshly started reference pusher. Returns the
/// exit code of `pushscope run`.
pub fn run_demo(profile_dir: &str, pass: &[String]) -> Result<i32> {
    let user_target = pass.iter().any(|a| {
        a == "--pid" || a.starts_with("--pid=") || a == "--url" || a.starts_with("--url=")
    });
    let mut cmd = Command::new(bin(profile_dir, "pushscope"));
    cmd.arg("run");
    let has = |flag: &str| {
        pass.iter()
            .any(|a| a == flag || a.starts_with(&format!("{flag}=")))
    };
    if !has("--out") {
        let ts = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0);
        cmd.arg("--out")
            .arg(target_dir().join("pushscope").join(ts.to_string()));
    }
    if user_target {
        cmd.args(pass);
        return Ok(cmd
            .status()
            .context("starting pushscope")?
            .code()
            .unwrap_or(3));
    }
    let data = std::env::temp_dir().join(format!("pushscope-demo-{}", std::process::id()));
    std::fs::create_dir_all(&data)?;
    let (pusher, addr) = start_pusher(profile_dir, &data, &[])?;
    eprintln!(
        "xtask: reference pusher PID {} on {addr} (data dir {})",
        pusher.0.id(),
        data.display()
    );
    cmd.args([
        "--pid",
        &pusher.0.id().to_string(),
        "--url",
        &format!("ws://{addr}/ws"),
        "--protocol",
        "pushscope",
    ]);
    if !has("--stages") && !has("--scenario") {
        cmd.args(DEMO_ARGS);
    }
    if !has("--profile") && !has("--thresholds") {
        cmd.args(["--profile", "financial"]);
    }
    cmd.args(pass);
    let code = cmd
        .status()
        .context("starting pushscope")?
        .code()
        .unwrap_or(3);
    drop(pusher);
    let _ = std::fs::remove_dir_all(&data);
    Ok(code)
}

/// A free loopback TCP port (bound, then released).
pub fn free_port() -> Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

/// VmRSS of a process, KiB.
pub fn rss_kib(pid: u32) -> Option<u64> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    s.lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))?
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

/// `pushscope_load_connections` from a load's live endpoint, if it answers yet.
pub fn live_connections(metrics: &str) -> Option<u64> {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(metrics).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(2))).ok()?;
    s.write_all(b"GET /metrics HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n")
        .ok()?;
    let mut text = String::new();
    let _ = s.read_to_string(&mut text);
    text.lines()
        .find_map(|l| l.strip_prefix("pushscope_load_connections "))?
        .trim()
        .parse::<f64>()
        .ok()
        .map(|v| v as u64)
}
