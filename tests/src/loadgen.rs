//! Running `pushscope load` / `pushscope verify` as real processes in
//! tests and reading what they wrote.

use crate::bin_path;
use std::{
    path::Path,
    process::{Command, Stdio},
    time::{Duration, Instant},
};

/// What a finished `pushscope` invocation left behind.
pub struct LoadRun {
    pub code: Option<i32>,
    pub stderr: String,
    pub stdout: String,
    /// `summary.json`, when it was written.
    pub summary: Option<serde_json::Value>,
}

impl LoadRun {
    /// `stages[k].<section>.<field>` as u64 (panics with the summary when absent).
    pub fn stage_u64(&self, k: usize, section: &str, field: &str) -> u64 {
        let s = self.summary.as_ref().expect("summary.json was written");
        s["stages"][k][section][field]
            .as_u64()
            .unwrap_or_else(|| panic!("stages[{k}].{section}.{field} missing in {s:#}"))
    }

    pub fn stage(&self, k: usize) -> &serde_json::Value {
        &self.summary.as_ref().expect("summary.json was written")["stages"][k]
    }
}

/// Runs `pushscope <args…>` with `--out out` appended for `load`, killing
/// it after `timeout`.
pub fn pushscope(args: &[&str], out: Option<&Path>, timeout: Duration) -> anyhow::Result<LoadRun> {
    let mut cmd = Command::new(bin_path("pushscope"));
    cmd.args(args);
    if let Some(o) = out {
        cmd.arg("--out").arg(o);
    }
    let mut child = crate::ChildGuard {
        child: cmd.stdout(Stdio::piped()).stderr(Stdio::piped()).spawn()?,
        name: "pushscope".into(),
    };
    let mut stdout = child.child.stdout.take().expect("piped");
    let mut stderr = child.child.stderr.take().expect("piped");
    let out_t = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = std::io::Read::read_to_string(&mut stdout, &mut s);
        s
    });
    let err_t = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = std::io::Read::read_to_string(&mut stderr, &mut s);
        s
    });
    let start = Instant::now();
    let status = child.wait_timeout(timeout);
    let code = status.map(|s| s.code()).unwrap_or(None);
    if status.is_none() {
        child.kill();
    }
    let stdout = out_t.join().unwrap_or_default();
    let stderr = err_t.join().unwrap_or_default();
    anyhow::ensure!(
        status.is_some(),
        "pushscope {args:?} did not finish within {timeout:?} ({:?}); stderr:\n{stderr}",
        start.elapsed()
    );
    let summary = out
        .map(|o| o.join("summary.json"))
        .filter(|p| p.exists())
        .map(|p| serde_json::from_str(&std::fs::read_to_string(p)?).map_err(anyhow::Error::from))
        .transpose()?;
    Ok(LoadRun {
        code,
        stderr,
        stdout,
        summary,
    })
}
