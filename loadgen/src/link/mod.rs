//! The emulated network link (`--network`): the load generator's sockets
//! live in their own network namespace whose only way out is a TUN device;
//! a twin TUN device in the host namespace leads back; two forwarder
//! threads in this process carry packets between them with the delay,
//! jitter and loss asked for ([`NetworkSpec`]), and drop everything while
//! partitioned ([`LinkControl::set_partitioned`]). TCP therefore really
//! sees the delay and the loss and really retransmits.
//!
//! ```text
//!  loadgen sockets (namespace, held by an fd)         host namespace
//!  src 100.64.x.y ─▶ default dev psl<pid>n<k> ══ forwarder ══▶ psl<pid>h<k> ─▶ target (127.0.0.1 ok)
//!                    ◀──────────────────────────  threads   ◀═ route 100.64.x.y/32 dev psl<pid>h<k>
//! ```
//!
//! Nothing persistent is created: the namespace is held only by file
//! descriptors (no `ip netns` bind mount), the TUN devices are not
//! persistent, and the host route hangs off the host device: all of it
//! vanishes when the process ends, however it ends (Ctrl-C, crash,
//! SIGKILL). `route_localnet` on both devices lets the target keep
//! listening on 127.0.0.1. The kernels here have no `sch_netem`, so this
//! built-in emulator is the only mechanism (`mechanism: "built-in"`).

pub mod forwarder;
pub mod netns;
pub mod spec;
pub mod tun;

pub use forwarder::DirReport;
pub use netns::NetNs;
pub use spec::NetworkSpec;

use forwarder::Shared;
use serde::{Deserialize, Serialize};
use std::{
    net::Ipv4Addr,
    sync::{atomic::Ordering, Arc},
};

/// Why the link could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum LinkError {
    #[error("the emulated network needs root (CAP_NET_ADMIN) to create a namespace and TUN devices: run as root or drop --network ({0})")]
    Permission(std::io::Error),
    #[error("setting up the emulated network failed at {step}: {source}")]
    Setup {
        step: &'static str,
        source: std::io::Error,
    },
}

fn setup(step: &'static str) -> impl FnOnce(std::io::Error) -> LinkError {
    move |source| {
        if source.kind() == std::io::ErrorKind::PermissionDenied
            || source.raw_os_error() == Some(libc::EPERM)
        {
            LinkError::Permission(source)
        } else {
            LinkError::Setup { step, source }
        }
    }
}

/// A running link. Dropping it stops the forwarder and removes the
/// devices (the namespace goes with its last fd: sockets still open in it
/// keep it until they close).
pub struct Link {
    spec: NetworkSpec,
    ns: Arc<NetNs>,
    shared: Arc<Shared>,
    threads: Vec<std::thread::JoinHandle<()>>,
    /// The load generator's address inside the namespace.
    pub client_addr: Ipv4Addr,
    pub host_dev: String,
    pub ns_dev: String,
    /// The host path's own round trip, measured at start and compensated.
    pub path: Option<PathCalibration>,
}

/// The round trip the host itself adds through the link (TUN wake-ups,
/// both network stacks), measured when the link starts with nothing
/// added: the kernel's RTT of a TCP handshake to a listener on the
/// host's 127.0.0.1, median of [`CALIBRATION_CONNECTS`]. Taken off the
/// drawn delays, so TCP over the link sees the round trip asked for, not
/// that plus the host's 0.05–0.3 ms.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct PathCalibration {
    /// Median handshake RTT with nothing added (ms).
    pub base_rtt_ms: f64,
    /// Its 10th and 90th percentiles (ms): how steady the host path was.
    pub base_rtt_p10_ms: f64,
    pub base_rtt_p90_ms: f64,
    pub samples: usize,
    /// Round trip taken off the drawn delays (ms): the base, at most the
    /// asked rtt.
    pub compensated_ms: f64,
}

/// Handshakes timed to calibrate the path (after 3 warm-ups).
pub const CALIBRATION_CONNECTS: usize = 41;

/// Cheap handle for faults and live figures: clone freely.
#[derive(Clone)]
pub struct LinkControl {
    shared: Arc<Shared>,
}

impl LinkControl {
    /// While partitioned the forwarder drops every packet, both ways
    /// (counted as `dropped_partition`, apart from random loss).
    pub fn set_partitioned(&self, on: bool) {
        self.shared.partitioned.store(on, Ordering::SeqCst);
    }

    pub fn is_partitioned(&self) -> bool {
        self.shared.partitioned.load(Ordering::SeqCst)
    }

    /// The figures so far: `[to target, from target]`.
    pub fn directions(&self) -> [DirReport; 2] {
        [self.shared.lock(0).report(), self.shared.lock(1).report()]
    }
}

/// The `network` object of summary.json.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct NetworkReport {
    /// What was asked (rtt_ms, jitter_ms, loss as a fraction, rate_bps).
    pub asked: NetworkSpec,
    /// The same as text (`rtt=2ms,jitter=0.3ms,loss=0.0001%`).
    pub asked_text: String,
    /// `built-in` (this TUN forwarder); `netem` where used.
    pub mechanism: String,
    /// Measured by the forwarder: load generator → target.
    pub to_target: DirReport,
    /// Measured by the forwarder: target → load generator.
    pub from_target: DirReport,
    /// Sum of both directions' applied mean delay (ms); with `path`'s
    /// compensation added back this is the round trip TCP sees.
    pub applied_rtt_mean_ms: f64,
    /// √(σ₁² + σ₂²) of the applied delays (ms): the jitter as asked.
    pub applied_jitter_ms: f64,
    /// The load generator's address inside the namespace.
    pub client_addr: String,
    /// The host path's own round trip, measured at start and taken off
    /// the drawn delays (absent for a link that adds no delay).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path: Option<PathCalibration>,
    /// What TCP and the heartbeats saw over the link during the run.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tcp: Option<TcpMeasured>,
    /// Under `pushscope run --pid`: segments the target retransmitted,
    /// counted by the probes (`tcp:tcp_retransmit_skb`), all stages.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub server_retransmits: Option<u64>,
}

/// The run's connections as seen over the link (all stages).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct TcpMeasured {
    /// Where the figures come from.
    pub source: String,
    /// Smoothed RTT of the subscribers' sockets (kernel `srtt`), ms.
    pub srtt_p50_ms: Option<f64>,
    pub srtt_p99_ms: Option<f64>,
    pub srtt_samples: u64,
    /// Segments the subscribers' sockets retransmitted.
    pub retransmits: u64,
    /// WebSocket heartbeat round trips (ping → pong), ms.
    pub heartbeat_rtt_p50_ms: Option<f64>,
    pub heartbeat_rtt_p99_ms: Option<f64>,
}

impl TcpMeasured {
    pub fn from_stats(s: &crate::accounting::StageStats) -> TcpMeasured {
        let q = |h: &hdrhistogram::Histogram<u64>, p: f64| {
            (!h.is_empty()).then(|| h.value_at_quantile(p) as f64 / 1e3)
        };
        TcpMeasured {
            source: "getsockopt(TCP_INFO) on the load generator's subscriber sockets at every pong"
                .into(),
            srtt_p50_ms: q(&s.tcp_srtt, 0.5),
            srtt_p99_ms: q(&s.tcp_srtt, 0.99),
            srtt_samples: s.tcp_srtt.len(),
            retransmits: s.tcp_retransmits,
            heartbeat_rtt_p50_ms: q(&s.heartbeat_rtt, 0.5),
            heartbeat_rtt_p99_ms: q(&s.heartbeat_rtt, 0.99),
        }
    }
}

/// Host-side device names start with this, then `<pid>h<k>`.
const DEV_PREFIX: &str = "psl";

impl Link {
    /// Creates the namespace, the devices and routes, and starts the forwarder.
    pub fn start(spec: NetworkSpec) -> Result<Link, LinkError> {
        use std::sync::atomic::AtomicU32;
        static NEXT: AtomicU32 = AtomicU32::new(0);
        remove_stale_devices();
        let pid = std::process::id();
        let ns = Arc::new(NetNs::new_isolated().map_err(setup("creating a network namespace"))?);
        // Another link (of this or another process) may hold a name or an
        // address: try the next ones.
        let mut last_err = None;
        for _ in 0..16 {
            let k = NEXT.fetch_add(1, Ordering::Relaxed);
            let host_dev = format!("{DEV_PREFIX}{pid}h{k}");
            let ns_dev = format!("{DEV_PREFIX}{pid}n{k}");
            let addr = client_addr_for(pid, k);
            match Link::build(spec, ns.clone(), host_dev, ns_dev, addr) {
                Ok(mut l) => {
                    if !spec.one_way_mean().is_zero() {
                        l.calibrate();
                    }
                    return Ok(l);
                }
                Err(e @ LinkError::Setup { .. }) if e.to_string().contains("exists") => {
                    last_err = Some(e)
                }
                Err(e) => return Err(e),
            }
        }
        Err(last_err.expect("tried"))
    }

    fn build(
        spec: NetworkSpec,
        ns: Arc<NetNs>,
        host_dev: String,
        ns_dev: String,
        addr: Ipv4Addr,
    ) -> Result<Link, LinkError> {
        let err = setup;
        let host = tun::Tun::create(&host_dev).map_err(err("creating the host TUN device"))?;
        host.configure()
            .map_err(err("configuring the host TUN device"))?;
        tun::ip(&["route", "add", &format!("{addr}/32"), "dev", &host_dev])
            .map_err(err("adding the host route to the namespace"))?;
        let a = addr.to_string();
        let nsd = ns_dev.clone();
        let inner = ns
            .run_in(move || {
                let t = tun::Tun::create(&nsd)?;
                // `lo` stays down: 127.0.0.0/8 is then not local in the
                // namespace and goes out through the link like any address.
                tun::ip(&["addr", "add", &format!("{a}/32"), "dev", &nsd])?;
                t.configure()?;
                tun::ip(&["route", "add", "default", "dev", &nsd, "src", &a])?;
                Ok(t)
            })
            .map_err(err("configuring the namespace"))?;
        let shared = Arc::new(Shared::default());
        let mut threads = Vec::new();
        let pairs = [
            (0, &inner.file, &host.file, "pushscope-link-out"),
            (1, &host.file, &inner.file, "pushscope-link-in"),
        ];
        for (dir, from, to, name) in pairs {
            let from = from.try_clone().map_err(err("duplicating a TUN fd"))?;
            let to = to.try_clone().map_err(err("duplicating a TUN fd"))?;
            let sh = shared.clone();
            let th = std::thread::Builder::new()
                .name(name.into())
                .spawn(move || forwarder::run_direction(dir, from, to, spec, sh))
                .map_err(err("starting the forwarder"))?;
            threads.push(th);
        }
        log::info!("emulated link {spec} up: {addr} in its namespace, devices {host_dev}/{ns_dev}");
        Ok(Link {
            spec,
            ns,
            shared,
            threads,
            client_addr: addr,
            host_dev,
            ns_dev,
            path: None,
        })
    }

    /// Measures the host path's round trip with nothing added and
    /// compensates it (see [`PathCalibration`]). On failure the link runs
    /// uncompensated, with a warning.
    fn calibrate(&mut self) {
        match self.measure_path() {
            Ok(mut rtts) => {
                rtts.sort_by(f64::total_cmp);
                let n = rtts.len();
                let base = rtts[n / 2];
                let asked = self.spec.rtt.as_secs_f64() * 1e3;
                let compensated = base.min(asked);
                self.shared
                    .compensation_ns
                    .store((compensated * 1e6 / 2.0) as u64, Ordering::Relaxed);
                log::info!(
                    "emulated link: the host path adds {base:.3} ms round trip (p10 {:.3}, p90 {:.3}, {n} handshakes); taken off the asked {asked} ms",
                    rtts[n / 10],
                    rtts[n * 9 / 10]
                );
                self.path = Some(PathCalibration {
                    base_rtt_ms: base,
                    base_rtt_p10_ms: rtts[n / 10],
                    base_rtt_p90_ms: rtts[n * 9 / 10],
                    samples: n,
                    compensated_ms: compensated,
                });
            }
            Err(e) => log::warn!(
                "emulated link: could not measure the host path's own round trip ({e}); delays are applied uncompensated"
            ),
        }
    }

    /// Kernel handshake RTTs (ms) through the link in passthrough.
    fn measure_path(&self) -> std::io::Result<Vec<f64>> {
        use std::net::{TcpListener, TcpStream};
        use std::time::Duration;
        // Handshakes complete in the kernel: nobody needs to accept them
        // (the backlog holds them), the listener's drop resets them.
        let listener = TcpListener::bind("127.0.0.1:0")?;
        let addr = listener.local_addr()?;
        self.shared.passthrough.store(true, Ordering::SeqCst);
        let rtts = self.ns.run_in(move || {
            let mut v = Vec::with_capacity(CALIBRATION_CONNECTS);
            for i in 0..CALIBRATION_CONNECTS + 3 {
                let s = TcpStream::connect_timeout(&addr, Duration::from_secs(1))?;
                let info = crate::net::tcp_info_of(&s)
                    .ok_or_else(|| std::io::Error::other("TCP_INFO unavailable"))?;
                if i >= 3 {
                    v.push(f64::from(info.srtt_us) / 1e3);
                }
            }
            Ok(v)
        });
        // The resets and FINs of those handshakes pass before the run's
        // packets are shaped and counted.
        drop(listener);
        std::thread::sleep(Duration::from_millis(20));
        self.shared.passthrough.store(false, Ordering::SeqCst);
        // What the forwarder counted while measuring is not the run's.
        for dir in 0..2 {
            *self.shared.lock(dir) = forwarder::DirStats::default();
        }
        rtts
    }

    /// A link that adds no delay and no loss (for partitions without `--network`).
    pub fn transparent() -> Result<Link, LinkError> {
        Link::start(NetworkSpec::transparent())
    }

    pub fn spec(&self) -> NetworkSpec {
        self.spec
    }

    /// The namespace the load generator's sockets must be created in.
    pub fn netns(&self) -> Arc<NetNs> {
        self.ns.clone()
    }

    pub fn control(&self) -> LinkControl {
        LinkControl {
            shared: self.shared.clone(),
        }
    }

    /// What the forwarder measured so far.
    pub fn report(&self) -> NetworkReport {
        let [to, from] = self.control().directions();
        NetworkReport {
            asked: self.spec,
            asked_text: self.spec.to_string(),
            mechanism: "built-in".into(),
            applied_rtt_mean_ms: to.delay_mean_ms + from.delay_mean_ms,
            applied_jitter_ms: (to.delay_stdev_ms.powi(2) + from.delay_stdev_ms.powi(2)).sqrt(),
            to_target: to,
            from_target: from,
            client_addr: self.client_addr.to_string(),
            path: self.path,
            tcp: None,
            server_retransmits: None,
        }
    }
}

impl std::fmt::Debug for Link {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Link")
            .field("spec", &self.spec.to_string())
            .field("client_addr", &self.client_addr)
            .field("host_dev", &self.host_dev)
            .finish()
    }
}

impl Drop for Link {
    fn drop(&mut self) {
        self.shared.stop.store(true, Ordering::SeqCst);
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
        // The TUN fds closed with the threads' and our copies: the kernel
        // removed the devices and the host route.
    }
}

/// 100.64.0.0/10 (shared address space, never routed on a host like
/// this one), a distinct /32 per process and link.
fn client_addr_for(pid: u32, k: u32) -> Ipv4Addr {
    let span = 1u32 << 22;
    let idx = (pid.wrapping_mul(64).wrapping_add(k * 4 + 2)) % span;
    Ipv4Addr::from(u32::from(Ipv4Addr::new(100, 64, 0, 0)) + idx.max(2))
}

/// Removes host devices of links whose process is gone. The devices are
/// not persistent, so the kernel already removed them when their process
/// died; this only guards against a future persistent variant.
fn remove_stale_devices() {
    let Ok(dir) = std::fs::read_dir("/sys/class/net") else {
        return;
    };
    for e in dir.flatten() {
        let name = e.file_name().to_string_lossy().to_string();
        let Some(rest) = name.strip_prefix(DEV_PREFIX) else {
            continue;
        };
        let pid: String = rest.chars().take_while(char::is_ascii_digit).collect();
        let Ok(pid) = pid.parse::<u32>() else {
            continue;
        };
        if !std::path::Path::new(&format!("/proc/{pid}")).exists() {
            log::warn!("removing {name}, left by a dead pushscope process {pid}");
            let _ = tun::ip(&["link", "del", &name]);
        }
    }
}
