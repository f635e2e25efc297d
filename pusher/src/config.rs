//! Command line of `pushscope-pusher` (clap derive) and the checked
//! settings the server runs with. Parsing lives in the library so tests can
//! call `Opts::parse_from([...])`.

use clap::{Parser, ValueEnum};
use std::{net::SocketAddr, path::PathBuf, time::Duration};

/// Largest accepted publish body (protocol v1): larger bodies get 413.
pub const MAX_BODY: usize = 64 * 1024;
/// Largest accepted `X-Msg-Id`.
pub const MAX_MSG_ID: usize = 128;
/// Largest accepted client frame (acks are ~20 bytes): larger ones close 1009.
pub const MAX_CLIENT_FRAME: usize = 4 * 1024;

/// When a publish is acknowledged relative to the disk.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum FsyncPolicy {
    /// fdatasync before every answer; concurrent publishes share one sync.
    Always,
    /// Group commit: wait up to `--batch-window-ms` to gather publishes, then
    /// one fdatasync; publishers are answered after their batch is synced.
    Batch,
    /// write(2) only: survives a process crash, not a machine crash.
    Never,
}

#[derive(Parser, Debug, Clone)]
#[command(
    name = "pushscope-pusher",
    version,
    about = "Reference push server: sequenced, persistent, resumable WebSocket fan-out (protocol v1, see pusher/PROTOCOL.md)"
)]
pub struct Opts {
    /// Address to listen on; the bound address is printed alone as the first stdout line.
    #[arg(long, default_value = "127.0.0.1:8080")]
    pub listen: SocketAddr,

    /// Directory of the per-channel append-only logs; without it messages live in memory only.
    #[arg(long)]
    pub data_dir: Option<PathBuf>,

    /// Durability of a publish before it is answered 200.
    #[arg(long, value_enum, default_value = "batch")]
    pub fsync: FsyncPolicy,

    /// Group-commit window of `--fsync batch`, in milliseconds (0..=1000).
    #[arg(long, default_value_t = 2)]
    pub batch_window_ms: u64,

    /// Messages retained per channel for replay (and kept on disk, segment-granular).
    #[arg(long, default_value_t = 100_000)]
    pub retain_messages: usize,

    /// Bytes (ids + bodies) retained per channel for replay.
    #[arg(long, default_value_t = 64 * 1024 * 1024)]
    pub retain_bytes: usize,

    /// Heartbeat interval in milliseconds: a ping every interval; a client
    /// silent for 2 intervals is disconnected.
    #[arg(long, default_value_t = 5000)]
    pub heartbeat_ms: u64,

    /// Per-connection send queue bound, in messages; overflow disconnects the client.
    #[arg(long, default_value_t = 4096)]
    pub send_queue: usize,

    /// Per-connection send queue bound, in bytes of queued messages.
    #[arg(long, default_value_t = 8 * 1024 * 1024)]
    pub send_queue_bytes: usize,

    /// Tokio worker threads (1 = a single-threaded runtime); default: one per CPU.
    #[arg(long)]
    pub workers: Option<usize>,

    /// PEM certificate chain: serve TLS (wss://, https://). Needs --tls-key.
    #[arg(long, requires = "tls_key")]
    pub tls_cert: Option<PathBuf>,

    /// PEM private key of --tls-cert.
    #[arg(long, requires = "tls_cert")]
    pub tls_key: Option<PathBuf>,

    /// PEM CA bundle: require client certificates signed by it (mTLS).
    #[arg(long, requires = "tls_cert")]
    pub tls_client_ca: Option<PathBuf>,

    /// Fault injection: hold every batch of publishes this many milliseconds
    /// before fanning it out (and answering it), so a known server-side
    /// delay can be checked against pushscope's message-path breakdown.
    #[arg(long, default_value_t = 0)]
    pub fault_fanout_delay_ms: u64,
}

/// Settings checked against each other; built by [`Opts::check`].
#[derive(Debug, Clone)]
pub struct Settings {
    pub opts: Opts,
    pub heartbeat: Duration,
    pub batch_window: Duration,
    pub workers: usize,
}

impl Opts {
    /// Validates values clap cannot; the error is one sentence saying what to do.
    pub fn check(self) -> Result<Settings, String> {
        if self.heartbeat_ms < 10 || self.heartbeat_ms > 3_600_000 {
            return Err(format!(
                "--heartbeat-ms {} is out of range: use 10..=3600000",
                self.heartbeat_ms
            ));
        }
        if self.batch_window_ms > 1000 {
            return Err(format!(
                "--batch-window-ms {} is too long: use 0..=1000",
                self.batch_window_ms
            ));
        }
        if self.retain_messages == 0 {
            return Err("--retain-messages must be at least 1".into());
        }
        if self.retain_bytes < MAX_BODY + MAX_MSG_ID {
            return Err(format!(
                "--retain-bytes {} cannot hold one maximal message: use at least {}",
                self.retain_bytes,
                MAX_BODY + MAX_MSG_ID
            ));
        }
        if self.send_queue == 0 {
            return Err("--send-queue must be at least 1".into());
        }
        if self.send_queue_bytes < MAX_BODY + 512 {
            return Err(format!(
                "--send-queue-bytes {} cannot hold one maximal message: use at least {}",
                self.send_queue_bytes,
                MAX_BODY + 512
            ));
        }
        if self.fault_fanout_delay_ms > 60_000 {
            return Err(format!(
                "--fault-fanout-delay-ms {} is too long: use 0..=60000",
                self.fault_fanout_delay_ms
            ));
        }
        let workers = match self.workers {
            Some(0) => return Err("--workers must be at least 1".into()),
            Some(n) => n,
            None => std::thread::available_parallelism().map_or(1, |n| n.get()),
        };
        Ok(Settings {
            heartbeat: Duration::from_millis(self.heartbeat_ms),
            batch_window: Duration::from_millis(self.batch_window_ms),
            workers,
            opts: self,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_loopback_and_batch() {
        let s = Opts::parse_from(["pushscope-pusher"]).check().unwrap();
        assert_eq!(s.opts.listen.to_string(), "127.0.0.1:8080");
        assert_eq!(s.opts.fsync, FsyncPolicy::Batch);
        assert_eq!(s.heartbeat, Duration::from_secs(5));
    }

    #[test]
    fn bad_values_say_what_to_do() {
        let e = Opts::parse_from(["p", "--heartbeat-ms", "1"])
            .check()
            .unwrap_err();
        assert!(e.contains("--heartbeat-ms"), "{e}");
        assert!(Opts::try_parse_from(["p", "--tls-cert", "x"]).is_err());
        assert!(Opts::try_parse_from(["p", "--fsync", "sometimes"]).is_err());
    }
}
