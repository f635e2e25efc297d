//! Starting the reference pusher (`pushscope-pusher`) for tests.

use crate::{bin_path, spawn_first_line, ChildGuard};
use std::{net::SocketAddr, path::PathBuf, process::Command, time::Duration};

/// A running reference pusher on a loopback port, killed on drop.
pub struct Pusher {
    pub guard: ChildGuard,
    pub addr: SocketAddr,
    pub data_dir: PathBuf,
    /// Keeps a temporary data dir alive for the pusher's lifetime.
    _tmp: Option<tempfile::TempDir>,
}

impl Pusher {
    /// Starts the pusher on 127.0.0.1:0 with a fresh temporary data dir.
    pub fn start(extra: &[&str]) -> anyhow::Result<Pusher> {
        let tmp = tempfile::tempdir()?;
        let dir = tmp.path().to_path_buf();
        let mut p = Pusher::start_in(&dir, extra)?;
        p._tmp = Some(tmp);
        Ok(p)
    }

    /// Starts the pusher on 127.0.0.1:0 with `data_dir` (reused across restarts).
    pub fn start_in(data_dir: &std::path::Path, extra: &[&str]) -> anyhow::Result<Pusher> {
        let mut cmd = Command::new(bin_path("pushscope-pusher"));
        cmd.args(["--listen", "127.0.0.1:0", "--data-dir"])
            .arg(data_dir)
            .args(extra);
        let (guard, line) = spawn_first_line(cmd, Duration::from_secs(10))?;
        let addr: SocketAddr = line
            .trim()
            .parse()
            .map_err(|e| anyhow::anyhow!("pusher's first line `{line}` is not an address: {e}"))?;
        Ok(Pusher {
            guard,
            addr,
            data_dir: data_dir.to_path_buf(),
            _tmp: None,
        })
    }

    pub fn pid(&self) -> u32 {
        self.guard.pid()
    }

    pub fn ws_url(&self, channel: &str) -> String {
        format!("ws://{}/ws?channel={channel}", self.addr)
    }
}
