//! `pushscope observe`: attaches the eBPF probes to a running server by PID
//! and attributes every accepted connection's life (see lifecycle.rs and
//! phases.rs), while sampling the target from /proc (target.rs).
//!
//! Library API for `pushscope run`: [`Observer::attach`], then
//! [`Observer::mark_stage_boundary`] and [`Observer::cut_stage_at`] (the
//! report of the stage that ended at a CLOCK_MONOTONIC instant, and a new
//! stage from there), [`Observer::snapshot`] (the current stage so far),
//! [`Observer::total`] (the whole run),
//! [`Observer::write_outputs`] and [`Observer::detach`]. All but the
//! boundary mark block for up to ~100 ms (ring-buffer drains): call them from a plain thread, not
//! an async runtime (`Observer` is `Send + Sync`). All figures use the
//! kernel's monotonic clock for events and wall time for stages.

use crate::{
    flame,
    lifecycle::{Aggregates, Tracker},
    metrics::MetricsServer,
    observe_summary::*,
    probes::{Counters, ProbeError, Probes, ProgStats},
    target::{self, Sample, Sampler, UsableCores},
    trace,
};
use hdrhistogram::Histogram;
use loadgen::outcome::{usage, Outcome};
use std::{
    io::Write,
    net::SocketAddr,
    os::fd::AsRawFd,
    path::{Path, PathBuf},
    sync::{
        atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering},
        Arc, Mutex,
    },
    thread::JoinHandle,
    time::{Duration, Instant},
};

#[derive(Debug, clap::Args)]
pub struct ObserveArgs {
    /// PID of the server to observe (its threads and children are followed).
    #[arg(long)]
    pub pid: u32,
    /// Stop after this long: `12` (seconds), `500ms`, `12s`, `15m`
    /// (default: until Ctrl-C or the target exits).
    #[arg(long, value_parser = loadgen::duration::parse_duration)]
    pub duration: Option<Duration>,
    /// Directory for summary.json, lifecycle.folded/.svg and trace.json.
    #[arg(long, default_value = "pushscope-observe")]
    pub out: PathBuf,
    /// Serve Prometheus metrics on this address (loopback by default).
    #[arg(long, num_args = 0..=1, default_missing_value = "127.0.0.1:9464")]
    pub metrics: Option<SocketAddr>,
    /// Classified read/write calls per connection sent to userspace.
    #[arg(long, default_value_t = 24)]
    pub io_events: u32,
    /// Bench only: mark every call of 1 in N connections as the message
    /// path does (cost measurement without a load generator).
    #[arg(long, default_value_t = 0, hide = true)]
    pub bench_trace_one_in: u32,
    /// Bench only: SIGUSR1 detaches the tracepoint programs, SIGUSR2
    /// attaches them again (windows with and without the probes in one
    /// run of the target: `cargo xtask bench observer`); once a switch is
    /// done (a detach waits for the kernel's RCU grace periods: ~1 s),
    /// `<out>/bench-probes-attached` says `1` or `0`.
    #[arg(long, hide = true)]
    pub bench_toggle_signals: bool,
}

/// Options of [`Observer::attach`].
#[derive(Debug, Clone)]
pub struct ObserveOptions {
    pub io_events_per_conn: u32,
    pub sample_every: Duration,
    /// Bench: trace every call of 1 in N connections (0: off).
    pub trace_one_in: u32,
}

impl Default for ObserveOptions {
    fn default() -> Self {
        ObserveOptions {
            io_events_per_conn: 24,
            sample_every: Duration::from_secs(1),
            trace_one_in: 0,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ObserveError {
    #[error("pushscope observe needs CAP_BPF and CAP_PERFMON: run as root")]
    NotRoot,
    #[error("no process with PID {0}: pass the PID of a running server")]
    NoSuchPid(u32),
    #[error("PID {0} is not listening on TCP: pass the PID of the server process that owns the listening socket")]
    NotListening(u32),
    #[error("this kernel has no BTF (/sys/kernel/btf/vmlinux): pushscope's CO-RE probes need CONFIG_DEBUG_INFO_BTF=y")]
    NoBtf,
    #[error(transparent)]
    Probe(#[from] Box<ProbeError>),
}

impl ObserveError {
    /// Errors the user fixes (exit 2) rather than runtime failures (exit 3).
    pub fn is_usage(&self) -> bool {
        matches!(
            self,
            ObserveError::NotRoot | ObserveError::NoSuchPid(_) | ObserveError::NotListening(_)
        )
    }
}

/// Watermarks of the /proc samples of one stage (None: no sample).
#[derive(Debug, Clone, Default)]
struct SampleAgg {
    cpu_peak: Option<f64>,
    rss_start: Option<u64>,
    rss_peak: Option<u64>,
    threads_peak: Option<u64>,
    open_peak: u64,
    limit: u64,
    listen_queue_peak: u64,
    headroom_min: Option<f64>,
    last_open: u64,
}

impl SampleAgg {
    fn add(&mut self, s: &Sample) {
        if s.cpu_sampled {
            self.cpu_peak = Some(self.cpu_peak.map_or(s.cpu_pct, |p| p.max(s.cpu_pct)));
        }
        self.rss_start.get_or_insert(s.rss_bytes);
        self.rss_peak = Some(self.rss_peak.map_or(s.rss_bytes, |p| p.max(s.rss_bytes)));
        self.threads_peak = Some(self.threads_peak.map_or(s.threads, |p| p.max(s.threads)));
        if s.open_fds >= self.open_peak {
            self.open_peak = s.open_fds;
            self.limit = s.fd_limit;
        }
        self.listen_queue_peak = self.listen_queue_peak.max(s.listen_queue);
        if s.fd_limit > 0 {
            let h = 1.0 - s.open_fds as f64 / s.fd_limit as f64;
            self.headroom_min = Some(self.headroom_min.map_or(h, |m| m.min(h)));
        }
        self.last_open = s.open_fds;
    }
}

struct Shared {
    tracker: Tracker,
    stage_samples: SampleAgg,
    total_samples: SampleAgg,
    stage_base: Counters,
    stage_started: Instant,
    started: Instant,
    target_gone: bool,
    /// The latest /proc sample of the target and when it was taken (for
    /// run's timeline).
    last_sample: Option<(Instant, Sample)>,
    tls_libs: Vec<String>,
    tls_note: Option<String>,
    /// Cores the target may use (latest sample).
    cores: UsableCores,
    tasks_at_attach: u64,
    fds_per_slot: u32,
    /// Message path: calls of traced connections.
    marks: crate::msgpath::collect::MarkStore,
    /// A stage boundary (CLOCK_MONOTONIC ns) the reader cuts at when it
    /// meets the first event at or after it, and the report it cut.
    /// The report the reader cut at a boundary, with that boundary.
    cut_report: Option<(u64, ObserverReport)>,
    /// Message-path leg p99s of judged stages (run sets them), served live.
    leg_p99_ms: Vec<(String, String, f64)>,
    /// The observer's own threads (ring reader, /proc sampler), and their
    /// CPU ticks when the current stage started: its userspace cost.
    own_tids: Vec<i32>,
    stage_own_ticks: u64,
    /// Memory of the probes' maps (kernel), read once at attach.
    bpf_map_bytes: u64,
}

fn register_own_thread(shared: &Mutex<Shared>) {
    // SAFETY: gettid has no preconditions.
    let tid = unsafe { libc::gettid() };
    shared
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .own_tids
        .push(tid);
}

/// CPU ticks (utime + stime) of these threads of this process so far.
fn own_cpu_ticks(tids: &[i32]) -> u64 {
    tids.iter()
        .filter_map(|t| target::own_thread_cpu_ticks(*t))
        .sum()
}

/// Kernel memory of this process's BPF maps (`memlock` of their fdinfo).
fn bpf_map_bytes() -> u64 {
    let Ok(dir) = std::fs::read_dir("/proc/self/fd") else {
        return 0;
    };
    let mut total = 0;
    for e in dir.flatten() {
        let is_map = std::fs::read_link(e.path())
            .map(|l| l.to_string_lossy() == "anon_inode:bpf-map")
            .unwrap_or(false);
        if !is_map {
            continue;
        }
        let info = std::fs::read_to_string(format!(
            "/proc/self/fdinfo/{}",
            e.file_name().to_string_lossy()
        ))
        .unwrap_or_default();
        total += info
            .lines()
            .find_map(|l| l.strip_prefix("memlock:"))
            .and_then(|v| v.trim().parse::<u64>().ok())
            .unwrap_or(0);
    }
    total
}

/// Report of the current stage and a new stage from now, under the lock
/// that the event reader needs: no event falls between the two.
fn cut_locked(s: &mut Shared, now: Counters) -> ObserverReport {
    let report = build(
        s,
        &s.tracker.stage,
        &s.stage_samples,
        &now.since(&s.stage_base),
        (s.stage_started, s.stage_own_ticks),
    );
    s.tracker.reset_stage();
    s.stage_own_ticks = own_cpu_ticks(&s.own_tids);
    s.stage_base = now;
    s.stage_samples = SampleAgg::default();
    s.stage_started = Instant::now();
    report
}

/// Attached probes plus the threads that read them.
pub struct Observer {
    pid: u32,
    probes: Arc<Mutex<Probes>>,
    shared: Arc<Mutex<Shared>>,
    stop: Arc<AtomicBool>,
    /// Full drains of the ring buffer by the reader thread so far.
    drained: Arc<AtomicU64>,
    /// A stage boundary (CLOCK_MONOTONIC ns, 0: none) the reader cuts at
    /// when it meets the first event at or after it.
    boundary: Arc<AtomicU64>,
    threads: Vec<JoinHandle<()>>,
    ports: Vec<u16>,
    /// The target followed now (a kill-restart fault replaces it).
    target: Arc<AtomicU32>,
    /// Set between a planned kill of the target and its restart: its
    /// exit is not the end of the run.
    restarting: Arc<AtomicBool>,
}

impl Observer {
    /// See [`Probes::set_tracepoints_attached`] (bench only).
    pub fn set_tracepoints_attached(&self, on: bool) -> Result<(), ProbeError> {
        self.probes
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .set_tracepoints_attached(on)
    }
}

/// A handle that lets a kill-restart fault move the observer to the
/// restarted target (`Send + Sync`, clonable; outlives nothing).
#[derive(Clone)]
pub struct Follower {
    probes: Arc<Mutex<Probes>>,
    shared: Arc<Mutex<Shared>>,
    target: Arc<AtomicU32>,
    restarting: Arc<AtomicBool>,
}

impl Follower {
    /// The target `pid` is about to be killed on purpose.
    pub fn expect_exit(&self, pid: u32) {
        self.restarting.store(true, Ordering::SeqCst);
        let mut s = self.shared.lock().unwrap_or_else(|p| p.into_inner());
        s.tracker.expect_exit(pid);
    }

    /// Follows the restarted target `pid` and its process tree: the
    /// probes' target set and listening ports, the /proc sampler, the
    /// tracker's exit watch. The old target's connections were closed by
    /// the kernel when it died (their CLOSE events end them in the
    /// tracker; `ps_exit` cleared its fd table).
    pub fn retarget(&self, pid: u32) -> Result<(), String> {
        let tree = target::tree(pid);
        if tree.is_empty() {
            return Err(format!("PID {pid} is gone"));
        }
        let ports: Vec<u16> = target::listeners(&tree).iter().map(|l| l.port).collect();
        self.probes
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .retarget(&tree, &ports)
            .map_err(|e| format!("the probes could not follow PID {pid}: {e}"))?;
        {
            let mut s = self.shared.lock().unwrap_or_else(|p| p.into_inner());
            s.tracker.retarget(pid);
            s.tracker.tasks_followed += tree.len() as u64;
            s.target_gone = false;
        }
        self.target.store(pid, Ordering::SeqCst);
        self.restarting.store(false, Ordering::SeqCst);
        Ok(())
    }
}

/// The ring-buffer reader's poll timeout (ms): the longest a lone event
/// waits to be handled, since the probes wake the reader only for batches.
const POLL_MS: i32 = 10;

fn has_caps() -> bool {
    // CapEff bits: 21 CAP_SYS_ADMIN, 38 CAP_PERFMON, 39 CAP_BPF.
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let eff = status
        .lines()
        .find_map(|l| l.strip_prefix("CapEff:"))
        .and_then(|v| u64::from_str_radix(v.trim(), 16).ok())
        .unwrap_or(0);
    let bit = |b: u32| eff & (1u64 << b) != 0;
    (bit(38) && bit(39)) || bit(21)
}

/// Quantiles in ms; None for an empty histogram (nothing measured).
fn stats(h: &Histogram<u64>) -> Option<PhaseStats> {
    if h.is_empty() {
        return None;
    }
    let ms = |us: u64| us as f64 / 1000.0;
    Some(PhaseStats {
        count: h.len(),
        p50: ms(h.value_at_quantile(0.5)),
        p90: ms(h.value_at_quantile(0.9)),
        p99: ms(h.value_at_quantile(0.99)),
        max: ms(h.max()),
    })
}

impl Observer {
    /// Checks privileges, the PID and its listeners, then loads and attaches
    /// every probe. Nothing stays attached when this fails.
    pub fn attach(pid: u32, opts: ObserveOptions) -> Result<Observer, ObserveError> {
        if !has_caps() {
            return Err(ObserveError::NotRoot);
        }
        if !target::exists(pid) {
            return Err(ObserveError::NoSuchPid(pid));
        }
        let pids = target::tree(pid);
        let mut ports: Vec<u16> = target::listeners(&pids).iter().map(|l| l.port).collect();
        ports.sort_unstable();
        ports.dedup();
        if ports.is_empty() {
            return Err(ObserveError::NotListening(pid));
        }
        if !Path::new("/sys/kernel/btf/vmlinux").exists() {
            return Err(ObserveError::NoBtf);
        }
        // The fd table covers every fd below the tree's largest soft
        // RLIMIT_NOFILE now; a limit raised later leaves higher fds
        // untracked (counted in coverage).
        let fds = crate::probes::fds_per_slot(pids.iter().filter_map(|p| target::fd_limit(*p)));
        let mut probes = Probes::attach(
            &pids,
            &ports,
            opts.io_events_per_conn,
            fds,
            opts.trace_one_in,
        )
        .map_err(Box::new)?;
        let mut ring = probes.take_events().map_err(Box::new)?;
        let mut sampler = Sampler::new(pid);
        let mut first = SampleAgg::default();
        let first_sample = sampler.sample();
        if let Some(s) = &first_sample {
            first.add(s);
        }
        let mut tracker = Tracker::new(pid, opts.io_events_per_conn as usize);
        tracker.tasks_followed = pids.len() as u64;
        let shared = Arc::new(Mutex::new(Shared {
            tracker,
            stage_samples: first.clone(),
            total_samples: first,
            stage_base: probes.counters(),
            stage_started: Instant::now(),
            started: Instant::now(),
            target_gone: false,
            last_sample: first_sample.map(|s| (Instant::now(), s)),
            tls_libs: probes
                .tls_libs
                .iter()
                .map(|p| p.display().to_string())
                .collect(),
            tls_note: probes.tls_note.clone(),
            cores: target::usable_cores(&pids),
            tasks_at_attach: pids.len() as u64,
            fds_per_slot: probes.fds_per_slot,
            marks: Default::default(),
            cut_report: None,
            leg_p99_ms: Vec::new(),
            own_tids: Vec::new(),
            stage_own_ticks: 0,
            bpf_map_bytes: bpf_map_bytes(),
        }));
        let probes = Arc::new(Mutex::new(probes));
        let stop = Arc::new(AtomicBool::new(false));
        let drained = Arc::new(AtomicU64::new(0));
        let boundary = Arc::new(AtomicU64::new(0));
        let mut threads = Vec::new();
        {
            let (shared, stop, drained) = (shared.clone(), stop.clone(), drained.clone());
            let (probes, boundary) = (probes.clone(), boundary.clone());
            threads.push(std::thread::spawn(move || {
                register_own_thread(&shared);
                let fd = ring.as_raw_fd();
                let mut batch = Vec::with_capacity(1024);
                loop {
                    let stopping = stop.load(Ordering::Relaxed);
                    let mut pfd = libc::pollfd {
                        fd,
                        events: libc::POLLIN,
                        revents: 0,
                    };
                    // The probes wake this thread only once a batch is
                    // waiting (ps_submit): a lone event waits for this
                    // timeout (POLL_MS).
                    // SAFETY: one valid pollfd for the duration of the call.
                    unsafe { libc::poll(&mut pfd, 1, POLL_MS) };
                    loop {
                        batch.clear();
                        while let Some(item) = ring.next() {
                            if let Some(e) = crate::abi::Event::decode(&item) {
                                batch.push(e);
                            }
                            if batch.len() == 1024 {
                                break;
                            }
                        }
                        if batch.is_empty() {
                            drained.fetch_add(1, Ordering::Release);
                            break;
                        }
                        let mut s = shared.lock().unwrap_or_else(|p| p.into_inner());
                        for e in &batch {
                            let at = boundary.load(Ordering::Acquire);
                            if at != 0 && e.ts_ns >= at {
                                boundary.store(0, Ordering::Release);
                                let now =
                                    probes.lock().unwrap_or_else(|p| p.into_inner()).counters();
                                let report = cut_locked(&mut s, now);
                                s.cut_report = Some((at, report));
                            }
                            if e.kind == crate::abi::EV_IO_MARK {
                                s.marks.record(e);
                            } else {
                                s.tracker.handle(e);
                            }
                        }
                    }
                    if stopping {
                        break;
                    }
                }
            }));
        }
        let target_now = Arc::new(AtomicU32::new(pid));
        let restarting = Arc::new(AtomicBool::new(false));
        {
            let (shared, stop, probes) = (shared.clone(), stop.clone(), probes.clone());
            let (target_now, restarting) = (target_now.clone(), restarting.clone());
            let every = opts.sample_every;
            let known: Vec<u16> = ports.clone();
            threads.push(std::thread::spawn(move || {
                register_own_thread(&shared);
                let mut known = known;
                let mut next = Instant::now() + every;
                let mut pid = pid;
                while !stop.load(Ordering::Relaxed) {
                    if Instant::now() < next {
                        std::thread::sleep(Duration::from_millis(20));
                        continue;
                    }
                    next += every;
                    let now = target_now.load(Ordering::SeqCst);
                    if now != pid {
                        pid = now;
                        sampler = Sampler::new(pid);
                    }
                    let Some(sample) = sampler.sample() else {
                        if restarting.load(Ordering::SeqCst) {
                            continue; // killed on purpose: wait for its restart
                        }
                        shared.lock().unwrap_or_else(|p| p.into_inner()).target_gone = true;
                        break;
                    };
                    let tree = target::tree(pid);
                    let cores = target::usable_cores(&tree);
                    // A listener opened after attach joins the port filter.
                    let fresh: Vec<u16> = sample
                        .listeners
                        .iter()
                        .map(|l| l.port)
                        .filter(|p| !known.contains(p))
                        .collect();
                    {
                        let mut s = shared.lock().unwrap_or_else(|p| p.into_inner());
                        s.stage_samples.add(&sample);
                        s.total_samples.add(&sample);
                        s.last_sample = Some((Instant::now(), sample));
                        s.cores = cores;
                    }
                    if !fresh.is_empty() {
                        let mut pr = probes.lock().unwrap_or_else(|p| p.into_inner());
                        if pr.add_ports(&fresh).is_ok() {
                            known.extend(fresh);
                        }
                    }
                }
            }));
        }
        Ok(Observer {
            pid,
            probes,
            shared,
            stop,
            drained,
            boundary,
            threads,
            ports,
            target: target_now,
            restarting,
        })
    }

    /// The target followed now (the restarted one after a kill-restart).
    pub fn pid(&self) -> u32 {
        self.target.load(Ordering::SeqCst)
    }

    /// A handle a kill-restart fault uses to move the observer to the
    /// restarted target.
    pub fn follower(&self) -> Follower {
        Follower {
            probes: self.probes.clone(),
            shared: self.shared.clone(),
            target: self.target.clone(),
            restarting: self.restarting.clone(),
        }
    }

    /// Listening ports the probes filter server-side connections by.
    pub fn ports(&self) -> &[u16] {
        &self.ports
    }

    /// True once the target has exited.
    pub fn target_exited(&self) -> bool {
        let s = self.shared.lock().unwrap_or_else(|p| p.into_inner());
        s.target_gone || s.tracker.target_exited
    }

    fn counters(&self) -> Counters {
        self.probes
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .counters()
    }

    /// The programs' own run time (needs `kernel.bpf_stats_enabled=1`).
    pub fn prog_stats(&self) -> Vec<ProgStats> {
        self.probes
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .prog_stats()
    }

    /// The latest 1 Hz /proc sample of the target's process tree.
    pub fn last_sample(&self) -> Option<(Instant, Sample)> {
        self.shared
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .last_sample
            .clone()
    }

    /// Waits (≤ 10 POLL_MS) until every event submitted before the call has
    /// been handled: the reader drained the ring twice since (a drain in
    /// progress at the call may have missed the newest events).
    fn sync_events(&self) {
        let g0 = self.drained.load(Ordering::Acquire);
        let deadline = Instant::now() + Duration::from_millis(10 * POLL_MS as u64);
        while self.drained.load(Ordering::Acquire) < g0 + 2
            && Instant::now() < deadline
            && !self.stop.load(Ordering::Relaxed)
        {
            std::thread::sleep(Duration::from_millis(1));
        }
    }

    /// Message path: switches it on (before the load starts) and returns
    /// the hook that registers a connection's local port before its first
    /// byte (`'static`: it holds the probes, not the observer).
    pub fn port_tracer(&self) -> Result<loadgen::msgpath::TraceHook, crate::probes::ProbeError> {
        self.probes
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .enable_msgpath()?;
        let probes = self.probes.clone();
        Ok(std::sync::Arc::new(move |port| {
            probes
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .trace_port(port)
                .is_ok()
        }))
    }

    /// Message path: the traced connections' calls so far, left in place
    /// (for a stage's join while the run goes on).
    /// Over TLS (`tls`) only OpenSSL's plaintext marks count.
    pub fn marks_snapshot(
        &self,
        tls: bool,
    ) -> std::collections::HashMap<u16, crate::msgpath::ConnIo> {
        self.sync_events();
        self.shared
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .marks
            .snapshot(tls)
    }

    /// Message path over TLS: whether the target's OpenSSL reads and writes
    /// are marked in plaintext, or why not.
    pub fn msgpath_plaintext(&self) -> Result<(), String> {
        let p = self.probes.lock().unwrap_or_else(|p| p.into_inner());
        if p.msgpath_plaintext() {
            return Ok(());
        }
        Err(p.msgpath_tls_note.clone().unwrap_or_else(|| {
            "the target maps no OpenSSL libssl whose SSL_read/SSL_write can be uprobed (e.g. rustls or a static TLS library)".into()
        }))
    }

    /// Message path: a judged stage's leg p99s (ms), served live on the
    /// metrics endpoint from now on.
    pub fn set_leg_p99s(&self, stage: &str, legs: &[(String, f64)]) {
        let mut s = self.shared.lock().unwrap_or_else(|p| p.into_inner());
        s.leg_p99_ms.retain(|(st, _, _)| st != stage);
        s.leg_p99_ms
            .extend(legs.iter().map(|(l, v)| (stage.to_string(), l.clone(), *v)));
    }

    /// Message path: the traced connections' calls so far, by peer port
    /// (after draining the ring buffer), and how many marks did not fit.
    /// Over TLS (`tls`) only OpenSSL's plaintext marks count.
    pub fn take_marks(
        &self,
        tls: bool,
    ) -> (std::collections::HashMap<u16, crate::msgpath::ConnIo>, u64) {
        self.sync_events();
        let mut s = self.shared.lock().unwrap_or_else(|p| p.into_inner());
        (s.marks.take(tls), s.marks.over_cap)
    }

    /// Report of the current stage (since attach or the last reset_stage).
    pub fn snapshot(&self) -> ObserverReport {
        self.sync_events();
        let now = self.counters();
        let s = self.shared.lock().unwrap_or_else(|p| p.into_inner());
        build(
            &s,
            &s.tracker.stage,
            &s.stage_samples,
            &now.since(&s.stage_base),
            (s.stage_started, s.stage_own_ticks),
        )
    }

    /// Report of the whole run since attach.
    pub fn total(&self) -> ObserverReport {
        self.sync_events();
        let now = self.counters();
        let s = self.shared.lock().unwrap_or_else(|p| p.into_inner());
        build(&s, &s.tracker.total, &s.total_samples, &now, (s.started, 0))
    }

    /// Marks a stage boundary at `mono_ns` (CLOCK_MONOTONIC, the probes'
    /// clock), now: the event reader cuts the stage when it meets the
    /// first event stamped at or after it. One atomic store, never
    /// blocks: call it on the load's runtime, then `cut_stage_at` from a
    /// plain thread for the report.
    pub fn mark_stage_boundary(&self, mono_ns: u64) {
        self.boundary.store(mono_ns.max(1), Ordering::Release);
    }

    /// The report of the stage that ended at the boundary `mono_ns`
    /// (marked with `mark_stage_boundary`, or marked here if not): events
    /// stamped before it belong to it, the rest to the next stage, however
    /// late this call comes. If the reader met no event at or after the
    /// boundary yet, the cut happens here once every earlier event is
    /// handled. Blocks ≤ ~100 ms; call it from a plain thread.
    pub fn cut_stage_at(&self, mono_ns: u64) -> ObserverReport {
        let at = mono_ns.max(1);
        let _ = self
            .boundary
            .compare_exchange(0, at, Ordering::AcqRel, Ordering::Acquire);
        self.sync_events();
        let mut s = self.shared.lock().unwrap_or_else(|p| p.into_inner());
        if let Some((t, r)) = s.cut_report.take() {
            if t == at {
                return r;
            }
        }
        // No event at or after the boundary yet: every earlier one is in.
        let _ = self
            .boundary
            .compare_exchange(at, 0, Ordering::AcqRel, Ordering::Acquire);
        let now = self.counters();
        cut_locked(&mut s, now)
    }

    /// Starts the Prometheus endpoint serving the whole-run report.
    pub fn serve_metrics(&self, addr: SocketAddr) -> std::io::Result<MetricsServer> {
        let probes = self.probes.clone();
        let shared = self.shared.clone();
        MetricsServer::start(addr, move || {
            let now = probes.lock().unwrap_or_else(|p| p.into_inner()).counters();
            let s = shared.lock().unwrap_or_else(|p| p.into_inner());
            build(&s, &s.tracker.total, &s.total_samples, &now, (s.started, 0))
        })
    }

    /// Writes summary.json (whole run), lifecycle.folded/.svg and trace.json
    /// (connections, and the sampled `messages` of the message path as
    /// flows on the same timeline).
    pub fn write_outputs(
        &self,
        dir: &Path,
        messages: &[crate::msgpath::Legs],
    ) -> std::io::Result<ObserverReport> {
        std::fs::create_dir_all(dir)?;
        let report = self.total();
        let prog = self.prog_stats();
        let s = self.shared.lock().unwrap_or_else(|p| p.into_inner());
        let summary = serde_json::json!({
            "observer": report.observer,
            "observe": {
                "pid": self.pid,
                "listen_ports": self.ports,
                "details": report.details,
                "target_exited": report.target_exited,
                "notes": report.notes,
                "probe_run_time": prog,
                "msgpath_marks": s.marks.kept(),
                "msgpath_marks_over_cap": s.marks.over_cap,
            },
        });
        std::fs::write(
            dir.join("summary.json"),
            serde_json::to_vec_pretty(&summary).map_err(std::io::Error::other)?,
        )?;
        flame::write(dir, &s.tracker.total.flame)?;
        let mut slowest = s.tracker.trace.slowest.clone();
        // Open connections can be among the slowest too.
        slowest.extend(s.tracker.open_records());
        slowest.sort_by_key(|c| std::cmp::Reverse(c.setup_ns()));
        slowest.truncate(crate::lifecycle::TRACE_SLOWEST);
        let mut doc = trace::document(&s.tracker.trace.first, &slowest, loadgen::clock::mono_ns());
        trace::add_messages(&mut doc, messages);
        std::fs::write(
            dir.join("trace.json"),
            serde_json::to_vec(&doc).map_err(std::io::Error::other)?,
        )?;
        Ok(report)
    }

    /// Detaches every probe (after draining the ring buffer) and returns the
    /// whole-run report.
    pub fn detach(mut self) -> ObserverReport {
        self.stop_threads()
    }

    fn stop_threads(&mut self) -> ObserverReport {
        self.stop.store(true, Ordering::Relaxed);
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
        self.total()
    }
}

impl Drop for Observer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

fn build(
    s: &Shared,
    a: &Aggregates,
    samples: &SampleAgg,
    c: &Counters,
    (since, own_ticks_at_start): (Instant, u64),
) -> ObserverReport {
    let outbound = a
        .outbound
        .iter()
        .map(|(d, o)| {
            let st = stats(&o.connect_us);
            (
                d.clone(),
                Outbound {
                    count: o.count,
                    errors: o.errors,
                    connect_p50_ms: st.map(|s| s.p50),
                    connect_p99_ms: st.map(|s| s.p99),
                },
            )
        })
        .collect();
    let observer = ObserverSection {
        phases_ms: PhasesMs {
            accept_wait: stats(&a.accept_wait),
            tls_handshake: stats(&a.tls_handshake),
            ws_upgrade: stats(&a.ws_upgrade),
            first_push: stats(&a.first_push),
            lifetime: stats(&a.lifetime),
        },
        connections: Connections {
            accepted: a.accepted,
            closed_local: a.closed_local,
            closed_peer: a.closed_peer,
            reset: a.reset,
            upgrade_refused: a.upgrade_refused,
        },
        outbound,
        tcp: Tcp {
            retransmits: c.retransmits,
            resets: c.resets_sent + c.resets_received,
        },
        fd: Fd {
            open_peak: samples.open_peak,
            limit: samples.limit,
            emfile: c.emfile,
            enfile: c.enfile,
        },
        target: Target {
            cpu_peak_pct: samples.cpu_peak,
            rss_start_bytes: samples.rss_start,
            rss_peak_bytes: samples.rss_peak,
            threads_peak: samples.threads_peak,
            cpu_cores_usable: Some(s.cores.cores),
            cpu_cores_source: Some(s.cores.source.clone()),
            cpu_cores_machine: s.cores.machine,
        },
        drops: c.ringbuf_drops,
        tls: Tls {
            attempts: a.tls_attempts,
            completed: a.tls_completed,
            failed: a.tls_failed.peer_fin + a.tls_failed.peer_rst + a.tls_failed.server,
            failed_by_closer: a.tls_failed,
            exact_aborted: c.tls_aborted,
        },
        coverage: Coverage::new(
            // Accepts the events show, in their time order (exact per
            // stage); an accept whose sock could not be read has no event.
            a.accepted + c.accept_without_sock,
            a.accepted_tracked.saturating_sub(c.socks_evicted),
            UntrackedByReason {
                fd_beyond_table: c.untracked_fd,
                slots_exhausted: c.untracked_slot,
                map_full: c.untracked_map_full,
                no_sock: c.accept_without_sock,
                socks_evicted: c.socks_evicted,
            },
        ),
        phases_clipped: a.clipped,
    };
    let srtt = stats(&a.srtt).unwrap_or_default();
    let target_exited = s.target_gone || s.tracker.target_exited;
    let seconds = since.elapsed().as_secs_f64();
    // SAFETY: sysconf has no preconditions.
    let clk_tck = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as f64;
    let own_ticks = own_cpu_ticks(&s.own_tids).saturating_sub(own_ticks_at_start);
    let details = ObserverDetails {
        seconds,
        self_cpu_pct: (seconds > 0.0 && !s.own_tids.is_empty())
            .then(|| own_ticks as f64 / clk_tck / seconds * 100.0),
        bpf_map_bytes: s.bpf_map_bytes,
        open_connections: s.tracker.open_connections(),
        established_not_accepted: s.tracker.established_not_accepted(),
        bytes_in: a.bytes_in,
        bytes_out: a.bytes_out,
        max_send_queue_bytes: a.max_send_queue,
        srtt_p50_us: srtt.p50 * 1000.0,
        srtt_p99_us: srtt.p99 * 1000.0,
        tls12_connections: a.tls12,
        tls13_inferred_connections: a.tls13,
        tls_handshake_exact_ms: stats(&a.tls_exact),
        tls_uprobe_libs: s.tls_libs.clone(),
        listen_queue_peak: samples.listen_queue_peak,
        fd_open_last: samples.last_open,
        fd_headroom_min: samples.headroom_min.unwrap_or(1.0),
        map_full: c.map_full,
        tasks_followed: s.tracker.tasks_followed,
        tasks_at_attach: s.tasks_at_attach,
        forks: c.forks,
        fd_table_per_process: s.fds_per_slot,
        slots_recycled: c.slots_recycled,
        closes_tracked: c.closes,
        untracked_closed: c.untracked_closed,
        socket_calls: c.sock_calls,
        socket_calls_looked_up: c.sock_lookups,
        io_events: c.io_calls,
        hot_connections_entered: c.hot_entered,
        hot_connections_left: c.hot_left,
    };
    let mut notes = vec![
        "fd.open_peak, target.* and the listen queue are 1 Hz /proc samples: peaks between samples can be missed (emfile/enfile are exact kernel counts)".to_string(),
        "srtt, bytes in (bytes_received) and out (bytes_acked) are read from tcp_sock at close(); the max send queue is sk_wmem_queued sampled after every send of a connection's first classified calls, then after 1 in 64 sends drawn at random; connections the target never close()s (e.g. it exits) have none of these".to_string(),
        "outbound connect latency is SYN_SENT -> ESTABLISHED per sock; an error is SYN_SENT -> CLOSE; connect() failing before SYN_SENT is not seen".to_string(),
    ];
    if a.tls13 > 0 {
        notes.push(format!(
            "tls_handshake end, ws_upgrade and first_push of {} TLS 1.3 connection(s) are inferred from the turn-taking of reads and writes, not measured (see probe-user/src/phases.rs for the rule and its errors)",
            a.tls13
        ));
    }
    if !s.tls_libs.is_empty() {
        notes.push(format!(
            "tls_handshake_exact_ms is measured with uprobes on SSL_do_handshake in {} ({} handshakes)",
            s.tls_libs.join(", "),
            a.tls_exact.len()
        ));
    } else if let Some(n) = &s.tls_note {
        notes.push(format!("no exact TLS layer: {n}"));
    }
    if c.ringbuf_drops > 0 {
        notes.push(format!(
            "{} kernel events were dropped (ring buffer full): counts and phases are incomplete; this report is not admissible evidence",
            c.ringbuf_drops
        ));
    }
    if c.map_full > 0 {
        notes.push(format!(
            "{} kernel map updates failed: some connections were not tracked",
            c.map_full
        ));
    }
    let cov = &observer.coverage;
    if cov.tracked < cov.accepted {
        notes.push(format!(
            "{} of {} accepted connections were not tracked (fd beyond the {}-entry fd table: {}, no free process slot: {}, map full: {}, sock unreadable: {}, evicted before close: {}): their phases, bytes and close() are missing (TCP states are not)",
            cov.accepted - cov.tracked,
            cov.accepted,
            s.fds_per_slot,
            cov.untracked_by_reason.fd_beyond_table,
            cov.untracked_by_reason.slots_exhausted,
            cov.untracked_by_reason.map_full,
            cov.untracked_by_reason.no_sock,
            cov.untracked_by_reason.socks_evicted,
        ));
    }
    if observer.tls.failed > 0 {
        notes.push(format!(
            "{} TLS handshake(s) failed (closed before completing): counted in tls.failed, not in phases_ms.tls_handshake",
            observer.tls.failed
        ));
    }
    if a.clipped.total() > 0 {
        notes.push(format!(
            "{} phase value(s) exceeded the histograms' 1 h bound: counted in phases_clipped, not in the quantiles",
            a.clipped.total()
        ));
    }
    if target_exited {
        notes.push("the target exited while observed: figures end at its exit".to_string());
    }
    ObserverReport {
        observer,
        details,
        target_exited,
        notes,
        leg_p99_ms: s.leg_p99_ms.clone(),
    }
}

static INTERRUPTED: AtomicBool = AtomicBool::new(false);
/// `--bench-toggle-signals`: whether the tracepoints should be attached.
static WANT_ATTACHED: AtomicBool = AtomicBool::new(true);

extern "C" fn on_signal(_: libc::c_int) {
    INTERRUPTED.store(true, Ordering::Relaxed);
}

extern "C" fn on_toggle(sig: libc::c_int) {
    WANT_ATTACHED.store(sig == libc::SIGUSR2, Ordering::Relaxed);
}

/// `pushscope observe`.
pub fn run(args: ObserveArgs) -> anyhow::Result<Outcome> {
    let opts = ObserveOptions {
        io_events_per_conn: args.io_events.clamp(4, 64),
        trace_one_in: args.bench_trace_one_in,
        ..Default::default()
    };
    let obs = match Observer::attach(args.pid, opts) {
        Ok(o) => o,
        Err(e) if e.is_usage() => return Err(usage(e.to_string())),
        Err(e) => return Err(anyhow::Error::new(e)),
    };
    // SAFETY: the handler only stores to an atomic (async-signal-safe).
    unsafe {
        libc::signal(libc::SIGINT, on_signal as *const () as libc::sighandler_t);
        libc::signal(libc::SIGTERM, on_signal as *const () as libc::sighandler_t);
        if args.bench_toggle_signals {
            libc::signal(libc::SIGUSR1, on_toggle as *const () as libc::sighandler_t);
            libc::signal(libc::SIGUSR2, on_toggle as *const () as libc::sighandler_t);
        }
    }
    let _metrics = match args.metrics {
        Some(addr) => {
            let m = obs.serve_metrics(addr).map_err(|e| {
                usage(format!(
                    "cannot serve metrics on {addr} ({e}): pass a free address to --metrics"
                ))
            })?;
            log::info!("metrics on http://{}/metrics", m.addr);
            Some(m)
        }
        None => None,
    };
    // The first stdout line says the probes are attached (tests wait for it).
    let _ = writeln!(
        std::io::stdout(),
        "observing PID {} (listening ports {:?}); Ctrl-C to stop",
        args.pid,
        obs.ports()
    );
    let _ = std::io::stdout().flush();
    let started = Instant::now();
    let mut attached = true;
    if args.bench_toggle_signals {
        std::fs::create_dir_all(&args.out)?;
        std::fs::write(args.out.join("bench-probes-attached"), "1")?;
    }
    let why = loop {
        if INTERRUPTED.load(Ordering::Relaxed) {
            break "interrupted";
        }
        let want = WANT_ATTACHED.load(Ordering::Relaxed);
        if args.bench_toggle_signals && want != attached {
            let t = Instant::now();
            obs.set_tracepoints_attached(want)?;
            log::info!(
                "bench: tracepoints {} in {:?}",
                if want { "attached" } else { "detached" },
                t.elapsed()
            );
            attached = want;
            std::fs::create_dir_all(&args.out)?;
            std::fs::write(
                args.out.join("bench-probes-attached"),
                if want { "1" } else { "0" },
            )?;
        }
        if obs.target_exited() {
            break "target exited";
        }
        if args.duration.is_some_and(|d| started.elapsed() >= d) {
            break "duration reached";
        }
        let tick = if args.bench_toggle_signals { 5 } else { 100 };
        std::thread::sleep(Duration::from_millis(tick));
    };
    // Let the reader drain what the kernel already queued, then write.
    std::thread::sleep(Duration::from_millis(200));
    let report = obs
        .write_outputs(&args.out, &[])
        .map_err(|e| anyhow::anyhow!("writing outputs to {}: {e}", args.out.display()))?;
    drop(obs);
    let o = &report.observer;
    // stdout may be closed by now (a parent that read only the first line).
    let mut out = std::io::stdout();
    let _ = writeln!(
        out,
        "{why}: {} accepted, {} closed (local {}, peer {}, reset {}), accept_wait p99 {:.3} ms, drops {}; outputs in {}",
        o.connections.accepted,
        o.connections.closed_local + o.connections.closed_peer + o.connections.reset,
        o.connections.closed_local,
        o.connections.closed_peer,
        o.connections.reset,
        o.phases_ms.accept_wait.map_or(0.0, |p| p.p99),
        o.drops,
        args.out.display()
    );
    for n in &report.notes {
        let _ = writeln!(out, "note: {n}");
    }
    Ok(Outcome::Completed)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `run` cuts stages from a plain thread through `Arc<Observer>`.
    #[test]
    fn every_duration_flag_takes_seconds_or_a_unit() {
        use clap::Parser;
        let dur = |v: &str| match crate::Opts::try_parse_from([
            "pushscope",
            "observe",
            "--pid",
            "1",
            "--duration",
            v,
        ]) {
            Ok(crate::Opts {
                command: crate::Command::Observe(a),
            }) => a.duration,
            _ => None,
        };
        assert_eq!(dur("12"), Some(Duration::from_secs(12)));
        assert_eq!(dur("12s"), Some(Duration::from_secs(12)));
        assert_eq!(dur("500ms"), Some(Duration::from_millis(500)));
        assert_eq!(dur("15m"), Some(Duration::from_secs(900)));
        assert_eq!(dur("12parsecs"), None);
        // The load flags of `run` take the same forms.
        let run = crate::Opts::try_parse_from([
            "pushscope",
            "run",
            "--url",
            "ws://127.0.0.1:1/ws",
            "--heartbeat",
            "5s",
            "--grace",
            "500ms",
            "--stages",
            "10:12,20:1m",
        ]);
        match run {
            Ok(crate::Opts {
                command: crate::Command::Run(a),
            }) => {
                let sc = a.load.scenario().expect("durations parse");
                assert_eq!(sc.heartbeat, Duration::from_secs(5));
                assert_eq!(sc.grace, Duration::from_millis(500));
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn observer_is_send_and_sync() {
        fn send_sync<T: Send + Sync>() {}
        send_sync::<Observer>();
        send_sync::<Arc<Observer>>();
    }

    #[test]
    fn a_window_without_samples_reports_nulls() {
        let mut a = SampleAgg::default();
        assert_eq!(a.cpu_peak, None);
        // The first sample has no CPU figure (no previous sample), RSS yes.
        a.add(&Sample {
            rss_bytes: 10,
            threads: 2,
            ..Default::default()
        });
        assert_eq!(a.cpu_peak, None);
        assert_eq!(a.rss_peak, Some(10));
        a.add(&Sample {
            cpu_pct: 40.0,
            cpu_sampled: true,
            rss_bytes: 5,
            threads: 3,
            ..Default::default()
        });
        assert_eq!(a.cpu_peak, Some(40.0));
        assert_eq!((a.rss_start, a.rss_peak), (Some(10), Some(10)));
        assert_eq!(a.threads_peak, Some(3));
        assert_eq!(stats(&crate::lifecycle::new_hist()), None);
    }
}
