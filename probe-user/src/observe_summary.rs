//! The `observer` section of `summary.json`, exactly the field list
//! (serde Serialize), plus [`ObserverReport`], which wraps it with what the
//! section has no field for but a reader must know (notes on what is
//! inferred rather than measured, target exit, kernel counters).
//!
//! What was not measured is `null`, never a zero: a phase without samples,
//! CPU or RSS of a window without a /proc sample, coverage of a window
//! without accepts.

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

/// Each phase is `null` when it has no sample in the window.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct PhasesMs {
    pub accept_wait: Option<PhaseStats>,
    pub tls_handshake: Option<PhaseStats>,
    pub ws_upgrade: Option<PhaseStats>,
    pub first_push: Option<PhaseStats>,
    pub lifetime: Option<PhaseStats>,
}

/// Values dropped from a histogram because they exceeded its 1 h bound.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Clipped {
    pub accept_wait: u64,
    pub tls_handshake: u64,
    pub ws_upgrade: u64,
    pub first_push: u64,
    pub lifetime: u64,
    pub tls_handshake_exact: u64,
    pub srtt: u64,
    pub outbound_connect: u64,
}

impl Clipped {
    pub fn total(&self) -> u64 {
        self.accept_wait
            + self.tls_handshake
            + self.ws_upgrade
            + self.first_push
            + self.lifetime
            + self.tls_handshake_exact
            + self.srtt
            + self.outbound_connect
    }
}

/// Who closed a TLS connection whose handshake never completed.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct FailedByCloser {
    /// The peer's FIN came first.
    pub peer_fin: u64,
    /// The peer sent a RST.
    pub peer_rst: u64,
    /// The server closed (FIN or RST) first.
    pub server: u64,
}

/// TLS handshakes seen server-side (inferred from the I/O, see phases.rs).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Tls {
    /// Connections whose first read was a TLS handshake record (ClientHello).
    pub attempts: u64,
    /// Handshakes that completed (confirmed by the traffic after them):
    /// the samples of `phases_ms.tls_handshake` (plus clipped ones).
    pub completed: u64,
    /// Connections closed with their handshake not completed.
    pub failed: u64,
    pub failed_by_closer: FailedByCloser,
    /// OpenSSL handshakes (uprobes) begun whose socket closed before
    /// SSL_do_handshake succeeded; 0 without the exact layer.
    pub exact_aborted: u64,
}

/// Accepted connections that got a kernel-side fd table entry (their
/// phases, bytes and close() are tracked) and why the others did not.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct UntrackedByReason {
    /// fd at or above the fd table size (the RLIMIT_NOFILE at attach).
    pub fd_beyond_table: u64,
    /// Every process slot was taken.
    pub slots_exhausted: u64,
    /// A map update failed.
    pub map_full: u64,
    /// The accepted fd's sock could not be read.
    pub no_sock: u64,
    /// Tracked at accept, but the LRU evicted its sock entry before close
    /// (counted at the close, in that close's window).
    pub socks_evicted: u64,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct Coverage {
    /// Accepts by the target (kernel count, exact even if events dropped).
    pub accepted: u64,
    /// Accepted minus every untracked reason.
    pub tracked: u64,
    /// tracked ÷ accepted × 100; null when nothing was accepted.
    pub pct: Option<f64>,
    pub untracked_by_reason: UntrackedByReason,
}

impl Coverage {
    pub fn new(accepted: u64, tracked: u64, why: UntrackedByReason) -> Coverage {
        let tracked = tracked.min(accepted);
        Coverage {
            accepted,
            tracked,
            pct: (accepted > 0).then(|| tracked as f64 / accepted as f64 * 100.0),
            untracked_by_reason: why,
        }
    }
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
    /// null when no connect completed.
    pub connect_p50_ms: Option<f64>,
    pub connect_p99_ms: Option<f64>,
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
    /// Peak CPU of the target's process tree, % of one core (1 Hz samples);
    /// null when the window had no CPU sample (a sample needs a previous
    /// one). Judge it against `cpu_cores_usable`, not the machine.
    pub cpu_peak_pct: Option<f64>,
    /// null when the window had no /proc sample.
    pub rss_start_bytes: Option<u64>,
    pub rss_peak_bytes: Option<u64>,
    pub threads_peak: Option<u64>,
    /// Cores the target may really use: the smaller of its CPU affinity
    /// (union over its tasks) and its cgroup v2 `cpu.max` quota.
    pub cpu_cores_usable: Option<f64>,
    /// What bounds `cpu_cores_usable`: "affinity 1 of 2 cpus", "cgroup
    /// cpu.max 150000/100000" or "machine".
    pub cpu_cores_source: Option<String>,
    /// Online CPUs of the machine.
    pub cpu_cores_machine: u32,
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
    pub tls: Tls,
    pub coverage: Coverage,
    /// Values over a histogram's 1 h bound, per phase (not in the quantiles).
    pub phases_clipped: Clipped,
}

/// What the observer saw beyond the section's fields.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ObserverDetails {
    /// Seconds covered by this report.
    pub seconds: f64,
    /// The observer's own userspace cost: CPU of its ring reader and /proc
    /// sampler threads over the window, % of one core (`None` before they run).
    #[serde(default)]
    pub self_cpu_pct: Option<f64>,
    /// Kernel memory of the probes' maps (their `memlock`), at attach.
    #[serde(default)]
    pub bpf_map_bytes: u64,
    /// Accepted connections still open at the end of the report.
    pub open_connections: u64,
    /// Connections established in the kernel that the target never accepted.
    pub established_not_accepted: u64,
    pub bytes_in: u64,
    pub bytes_out: u64,
    /// Largest `sk_wmem_queued` sampled after sends: every send of a
    /// connection's first classified calls, then 1 in 64 drawn at random.
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
    pub tls_handshake_exact_ms: Option<PhaseStats>,
    /// libssl files carrying those uprobes.
    pub tls_uprobe_libs: Vec<String>,
    /// Deepest accept queue seen on a listener (1 Hz /proc samples).
    pub listen_queue_peak: u64,
    /// fds open at the last sample, and the headroom 1 - open/limit then.
    pub fd_open_last: u64,
    pub fd_headroom_min: f64,
    /// Kernel-side map updates that failed (state lost).
    pub map_full: u64,
    /// Processes of the target: its tree at attach plus every process
    /// forked since (threads are not counted).
    pub tasks_followed: u64,
    /// Processes of the target's tree at attach.
    pub tasks_at_attach: u64,
    /// Processes the target forked within this report's window.
    pub forks: u64,
    /// fd table entries per process (the tree's largest soft
    /// RLIMIT_NOFILE at attach): higher fds are not tracked.
    pub fd_table_per_process: u32,
    /// fd table slots returned by exited processes within this window.
    pub slots_recycled: u64,
    /// close() calls of tracked connections.
    pub closes_tracked: u64,
    /// Kernel entries of untracked connections removed at their close().
    pub untracked_closed: u64,
    /// Receives and sends of the target on sockets (probe runs that passed
    /// the target check).
    pub socket_calls: u64,
    /// ... of those, the ones that looked their connection up: calls of
    /// connections in their first classified calls or traced by the
    /// message path, 1 in 64 sends (send-queue sample), and calls of a cold
    /// connection sharing a filter slot with a hot one. The rest cost the
    /// steady state's few instructions.
    pub socket_calls_looked_up: u64,
    /// Classified calls sent to userspace as events: at most
    /// `io_events_per_conn` (24) a connection, and on a plain WebSocket
    /// connection none after its first push (the first data frame written).
    pub io_events: u64,
    /// Connections made hot at accept (the probes classify their first
    /// calls), and those that left the hot set (classified and not traced,
    /// closed, process exited). In the whole-run report, entered - left
    /// connections are still hot at its end.
    pub hot_connections_entered: u64,
    pub hot_connections_left: u64,
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
    /// Message-path leg p99s (ms) of the stages judged so far, as
    /// (stage, leg, p99), for the live Prometheus endpoint only.
    #[serde(skip)]
    pub leg_p99_ms: Vec<(String, String, f64)>,
}
