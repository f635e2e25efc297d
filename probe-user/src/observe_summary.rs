//! The `observer` section of `summary.json`, exactly the field list
//! (serde Serialize), plus [`ObserverReport`], which wraps it with what the
//! section has no field for but a reader must know (notes on what is
//! inferred rather than measured, target exit, kernel counters).

use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// Quantiles of one phase in milliseconds.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct PhaseStats {
    pub count: u64,
    pub p50: f64,
    pub p90: f64,
    pub p99: f64,
    pub max: f64,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct PhasesMs {
    pub accept_wait: PhaseStats,
    pub tls_handshake: PhaseStats,
    pub ws_upgrade: PhaseStats,
    pub first_push: PhaseStats,
    pub lifetime: PhaseStats,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Connections {
    pub accepted: u64,
    pub closed_local: u64,
    pub closed_peer: u64,
    pub reset: u64,
    /// Plain WebSocket GETs answered with another status than 101.
    #[serde(default)]
    pub upgrade_refused: u64,
}

/// Outbound connects of the target to one destination (`ip:port`).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Outbound {
    pub count: u64,
    pub errors: u64,
    pub connect_p50_ms: f64,
    pub connect_p99_ms: f64,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Tcp {
    pub retransmits: u64,
    pub resets: u64,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Fd {
    /// Highest open-fd count of one process of the target (1 Hz /proc samples).
    pub open_peak: u64,
    /// RLIMIT_NOFILE (soft) of that process.
    pub limit: u64,
    pub emfile: u64,
    pub enfile: u64,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Target {
    /// Peak CPU of the target's process tree, % of one core (1 Hz samples).
    pub cpu_peak_pct: f64,
    pub rss_start_bytes: u64,
    pub rss_peak_bytes: u64,
    pub threads_peak: u64,
}

/// `summary.json` → `observer`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ObserverSection {
    pub phases_ms: PhasesMs,
    pub connections: Connections,
    pub outbound: BTreeMap<String, Outbound>,
    pub tcp: Tcp,
    pub fd: Fd,
    pub target: Target,
    /// Ring-buffer reserve failures: events the kernel could not deliver.
    pub drops: u64,
}

/// What the observer saw beyond the section's fields.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ObserverDetails {
    /// Seconds covered by this report.
    pub seconds: f64,
    /// Accepted connections still open at the end of the report.
    pub open_connections: u64,
    /// Connections established in the kernel that the target never accepted.
    pub established_not_accepted: u64,
    pub bytes_in: u64,
    pub bytes_out: u64,
    /// Largest `sk_wmem_queued` sampled as writes started (first 8, then every 16th).
    pub max_send_queue_bytes: u64,
    pub srtt_p50_us: f64,
    pub srtt_p99_us: f64,
    /// TLS connections whose handshake end came from record types (TLS 1.2).
    pub tls12_connections: u64,
    /// TLS connections whose handshake end was inferred from turn-taking (TLS 1.3).
    pub tls13_inferred_connections: u64,
    /// TLS handshakes measured exactly by uprobes on OpenSSL's
    /// SSL_do_handshake (first entry → successful return), where the target
    /// maps libssl; compare with the inferred `phases_ms.tls_handshake`.
    pub tls_handshake_exact_ms: PhaseStats,
    /// libssl files carrying those uprobes.
    pub tls_uprobe_libs: Vec<String>,
    /// Deepest accept queue seen on a listener (1 Hz /proc samples).
    pub listen_queue_peak: u64,
    /// fds open at the last sample, and the headroom 1 - open/limit then.
    pub fd_open_last: u64,
    pub fd_headroom_min: f64,
    /// Kernel-side map updates that failed (state lost).
    pub map_full: u64,
    pub tasks_followed: u64,
}

/// One report (a stage or the whole run).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ObserverReport {
    pub observer: ObserverSection,
    pub details: ObserverDetails,
    /// True when the target exited while observed.
    pub target_exited: bool,
    /// Honest caveats: what is inferred, sampled, or could not be measured.
    pub notes: Vec<String>,
}
