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

/// A child process killed and reaped when dropped.
pub struct Guard(pub Child);

impl Drop for Guard {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Starts the reference pusher on a free loopback port with a temporary
/// data dir; returns the guard and its bound address.
pub fn start_pusher(profile_dir: &str, data_dir: &std::path::Path) -> Result<(Guard, String)> {
    let mut child = Command::new(bin(profile_dir, "pushscope-pusher"))
        .args(["--listen", "127.0.0.1:0", "--data-dir"])
        .arg(data_dir)
        .stdout(Stdio::piped())
        .spawn()
        .context("starting pushscope-pusher")?;
    let stdout = child.stdout.take().unwrap();
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
        .context("pushscope-pusher printed no address within 15 s")?;
    let addr = line.trim().to_string();
    if addr.is_empty() {
        bail!("pushscope-pusher exited before printing its address");
    }
    Ok((guard, addr))
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
    let (pusher, addr) = start_pusher(profile_dir, &data)?;
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
