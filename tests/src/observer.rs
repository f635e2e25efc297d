//! Running `pushscope observe --pid PID` as a child for the observer tests:
//! wait until the probes are attached (its first stdout line), stop it with
//! SIGINT, and read the `summary.json` it wrote.

use crate::{bin_path, spawn_first_line, ChildGuard};
use std::{path::PathBuf, process::Command, time::Duration};

/// A running observer, killed on drop if not stopped.
pub struct Observe {
    pub guard: ChildGuard,
    pub out: PathBuf,
    _tmp: tempfile::TempDir,
}

impl Observe {
    /// Starts the observer on `pid` and waits (≤ 30 s) until it is attached.
    pub fn start(pid: u32, extra: &[&str]) -> anyhow::Result<Observe> {
        let tmp = tempfile::tempdir()?;
        let out = tmp.path().join("out");
        let mut cmd = Command::new(bin_path("pushscope"));
        cmd.args(["observe", "--pid", &pid.to_string(), "--out"])
            .arg(&out)
            .args(extra)
            .env("RUST_LOG", "warn");
        let (guard, line) = spawn_first_line(cmd, Duration::from_secs(30))?;
        anyhow::ensure!(
            line.starts_with("observing PID"),
            "unexpected first line from pushscope observe: {line}"
        );
        Ok(Observe {
            guard,
            out,
            _tmp: tmp,
        })
    }

    /// SIGINT, wait for the exit (≤ 20 s), and parse summary.json.
    pub fn stop(&mut self) -> anyhow::Result<serde_json::Value> {
        // Let the kernel's last state transitions reach the ring buffer.
        std::thread::sleep(Duration::from_millis(300));
        self.guard.signal(libc::SIGINT);
        let status = self
            .guard
            .wait_timeout(Duration::from_secs(20))
            .ok_or_else(|| anyhow::anyhow!("pushscope observe did not stop on SIGINT"))?;
        anyhow::ensure!(status.success(), "pushscope observe exited with {status}");
        let text = std::fs::read_to_string(self.out.join("summary.json"))?;
        Ok(serde_json::from_str(&text)?)
    }
}

/// A number at `path` in a JSON document (panics with the path if absent).
pub fn num(v: &serde_json::Value, path: &str) -> f64 {
    let mut cur = v;
    for k in path.split('.') {
        cur = cur
            .get(k)
            .unwrap_or_else(|| panic!("summary.json has no `{path}`: {v:#}"));
    }
    cur.as_f64()
        .unwrap_or_else(|| panic!("`{path}` is not a number: {cur}"))
}
