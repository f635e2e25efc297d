//! A subscriber pool: the subscribers of one process, spread over lanes
//! (one thread each). It answers `PoolCmd`s with `PoolReply`s; the same
//! commands reach a worker process as JSON lines (see `shard`), so the run
//! drives one local pool or many worker processes the same way.

use crate::{
    accounting::{ConnCounters, StageStats},
    client::ClientCfg,
    lane::{self, LaneCmd, LaneGauges},
    marker::Schedule,
    net,
    oplog::LogWriter,
    protocol::Protocol,
    scenario::Scenario,
};
use serde::{Deserialize, Serialize};
use std::{
    collections::HashMap,
    sync::{
        atomic::{AtomicBool, AtomicU64, Ordering},
        Arc,
    },
    time::{Duration, Instant},
};
use tokio::sync::{mpsc, oneshot};

#[derive(Debug, Clone, Serialize, Deserialize)]
pub enum PoolCmd {
    Init {
        scenario: Box<Scenario>,
        schedule: Schedule,
        shard: u32,
        shards: u32,
        /// Path of the emulated link's network namespace
        /// (`/proc/<coordinator>/fd/<n>`): the worker's sockets go there.
        #[serde(default)]
        netns: Option<String>,
    },
    /// Begin stage `stage`: ramp this pool to `target` subscribers at `rate`/s.
    Ramp {
        stage: u32,
        target: usize,
        rate: f64,
    },
    RampStatus,
    StageEnd {
        stage: u32,
    },
    Close {
        stage: u32,
        his: Vec<u64>,
        failed: Vec<(u32, u64)>,
    },
    Live,
    Stop,
    /// `slow-consumers`: a share (parts per million) of the subscribers
    /// stops (`on`) or resumes reading.
    Slow {
        share_ppm: u32,
        on: bool,
    },
    /// Connection counters since the pool started.
    Counters,
    /// `cert-rotate`: new connections present this client certificate
    /// (mTLS) from now on; connections already up keep theirs.
    ClientCert {
        cert: std::path::PathBuf,
        key: std::path::PathBuf,
    },
}

#[derive(Debug, Default, Clone, Copy, Serialize, Deserialize)]
pub struct LiveSnap {
    pub connected: u64,
    pub received: u64,
    pub errors: u64,
    /// Highest per-lane latency p99 of the current stage so far (µs).
    pub p99_us: u64,
}

#[derive(Debug, Serialize, Deserialize)]
pub enum PoolReply {
    Ok,
    RampStatus {
        done: bool,
    },
    Stats(Box<StageStats>),
    Live(LiveSnap),
    Slow(crate::lane::SlowReply),
    /// Since the pool started, and at the current stage's start.
    Counters {
        now: ConnCounters,
        at_stage_begin: ConnCounters,
    },
    Err(String),
}

/// Settle time of a new subscription (see `SubAcct` baseline).
const SETTLE: Duration = Duration::from_secs(1);
/// A ramp is done when every new subscriber's first attempt finished, or this long after the last was started.
const RAMP_SETTLE_TIMEOUT: Duration = Duration::from_secs(15);

pub struct LocalPool {
    shard: u32,
    shards: u32,
    channels: u32,
    lanes: Vec<mpsc::UnboundedSender<LaneCmd>>,
    threads: Vec<std::thread::JoinHandle<()>>,
    gauges: Vec<Arc<LaneGauges>>,
    /// Subscribers started so far (ids are `shard + shards * n`).
    started: Arc<AtomicU64>,
    active: usize,
    pacing_done: Arc<AtomicBool>,
    pacing_done_at: Arc<std::sync::Mutex<Option<Instant>>>,
    pacer: Option<tokio::task::JoinHandle<()>>,
    cpu_at_begin: (Instant, f64),
    cpu_pct: HashMap<u32, f64>,
    rss_bytes: HashMap<u32, u64>,
    /// Freed memory was returned to the OS after the current ramp.
    trimmed: bool,
    cfg: Arc<ClientCfg>,
    /// `--ca-cert` of the scenario (a rotated client certificate keeps it).
    ca_cert: Option<std::path::PathBuf>,
}

/// CPU seconds used by this process so far (user + system).
pub fn process_cpu_s() -> f64 {
    // SAFETY: getrusage writes into the zeroed struct we pass.
    let ru = unsafe {
        let mut ru: libc::rusage = std::mem::zeroed();
        libc::getrusage(libc::RUSAGE_SELF, &mut ru);
        ru
    };
    let tv = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 / 1e6;
    tv(ru.ru_utime) + tv(ru.ru_stime)
}

/// Resident memory of this process now (VmRSS), 0 if unreadable.
pub fn process_rss_bytes() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("VmRSS:"))?
                .split_whitespace()
                .next()?
                .parse::<u64>()
                .ok()
        })
        .map_or(0, |kib| kib * 1024)
}

impl LocalPool {
    pub fn new(
        sc: &Scenario,
        schedule: Schedule,
        shard: u32,
        shards: u32,
        tracer: Option<Arc<crate::msgpath::Tracer>>,
        conn_events: Option<Arc<crate::faults::events::ConnEvents>>,
    ) -> anyhow::Result<LocalPool> {
        let endpoint = net::scenario_endpoint(&sc.url, sc)?;
        let cfg = Arc::new(ClientCfg {
            protocol: Protocol::new(sc),
            endpoint,
            heartbeat: sc.heartbeat,
            max_missed: sc.max_missed,
            sources: sc.source_addrs.clone(),
            settle_ns: SETTLE.as_nanos() as u64,
            connect_timeout: Duration::from_secs(10),
            tracer,
            floor: sc.floor,
            conn_events,
        });
        let n = std::thread::available_parallelism()
            .map_or(2, |n| n.get())
            .clamp(1, 8);
        let mut pool = LocalPool {
            shard,
            shards,
            channels: sc.channels,
            lanes: Vec::new(),
            threads: Vec::new(),
            gauges: Vec::new(),
            started: Arc::new(AtomicU64::new(0)),
            active: 0,
            pacing_done: Arc::new(AtomicBool::new(true)),
            pacing_done_at: Arc::new(std::sync::Mutex::new(None)),
            pacer: None,
            cpu_at_begin: (Instant::now(), process_cpu_s()),
            cpu_pct: HashMap::new(),
            rss_bytes: HashMap::new(),
            trimmed: true,
            cfg: cfg.clone(),
            ca_cert: sc.ca_cert.clone(),
        };
        for i in 0..n {
            let log = match &sc.log_dir {
                Some(d) => {
                    std::fs::create_dir_all(d)?;
                    Some(LogWriter::create(&d.join(format!("recv-{shard}-{i}.log")))?)
                }
                None => None,
            };
            let g = Arc::new(LaneGauges::default());
            let (tx, th) = lane::spawn(i, cfg.clone(), g.clone(), log)?;
            tx.send(LaneCmd::Schedule(schedule)).ok();
            pool.lanes.push(tx);
            pool.threads.push(th);
            pool.gauges.push(g);
        }
        Ok(pool)
    }

    fn to_lanes(&self, f: impl Fn() -> LaneCmd) {
        for l in &self.lanes {
            let _ = l.send(f());
        }
    }

    fn ramp(&mut self, stage: u32, target: usize, rate: f64) {
        self.to_lanes(|| LaneCmd::StageBegin(stage));
        self.cpu_at_begin = (Instant::now(), process_cpu_s());
        if let Some(p) = self.pacer.take() {
            p.abort();
        }
        if target < self.active {
            let drop_n = self.active - target;
            let per = drop_n.div_ceil(self.lanes.len());
            let mut left = drop_n;
            for l in &self.lanes {
                let n = per.min(left);
                left -= n;
                let _ = l.send(LaneCmd::Shrink { n });
            }
            self.active = target;
            return;
        }
        let to_open = (target - self.active) as u64;
        self.trimmed = false;
        self.active = target;
        self.pacing_done.store(false, Ordering::SeqCst);
        let lanes = self.lanes.clone();
        let started = self.started.clone();
        let done = self.pacing_done.clone();
        let done_at = self.pacing_done_at.clone();
        let (shard, shards, channels) = (
            u64::from(self.shard),
            u64::from(self.shards),
            u64::from(self.channels),
        );
        self.pacer = Some(tokio::spawn(async move {
            let t0 = Instant::now();
            let mut opened = 0u64;
            let mut tick = tokio::time::interval(Duration::from_millis(5));
            while opened < to_open {
                tick.tick().await;
                let due = ((t0.elapsed().as_secs_f64() * rate) as u64 + 1).min(to_open);
                while opened < due {
                    let n = started.fetch_add(1, Ordering::SeqCst);
                    let id = shard + shards * n;
                    let lane = &lanes[n as usize % lanes.len()];
                    let _ = lane.send(LaneCmd::Open {
                        id,
                        channel: (id % channels) as u32,
                    });
                    opened += 1;
                }
            }
            *done_at.lock().unwrap_or_else(|p| p.into_inner()) = Some(Instant::now());
            done.store(true, Ordering::SeqCst);
        }));
    }

    fn ramp_done(&self) -> bool {
        if !self.pacing_done.load(Ordering::SeqCst) {
            return false;
        }
        let settled: u64 = self
            .gauges
            .iter()
            .map(|g| g.settled.load(Ordering::Relaxed))
            .sum();
        let timed_out = self
            .pacing_done_at
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .is_some_and(|t| t.elapsed() > RAMP_SETTLE_TIMEOUT);
        settled >= self.started.load(Ordering::SeqCst) || timed_out
    }

    pub async fn handle(&mut self, cmd: PoolCmd) -> PoolReply {
        match cmd {
            PoolCmd::Init { .. } => PoolReply::Err("pool already initialised".into()),
            PoolCmd::Ramp {
                stage,
                target,
                rate,
            } => {
                self.ramp(stage, target, rate);
                PoolReply::Ok
            }
            PoolCmd::RampStatus => {
                let done = self.ramp_done();
                if done && !self.trimmed {
                    self.trimmed = true;
                    // Handshakes leave freed buffers scattered between the
                    // connections' live ones; hand those pages back so an
                    // idle connection's RSS is what it really holds.
                    // SAFETY: malloc_trim has no preconditions.
                    unsafe {
                        libc::malloc_trim(0);
                    }
                }
                PoolReply::RampStatus { done }
            }
            PoolCmd::StageEnd { stage } => {
                self.to_lanes(|| LaneCmd::StageEnd(stage));
                let (t, cpu) = self.cpu_at_begin;
                let wall = t.elapsed().as_secs_f64().max(1e-3);
                self.cpu_pct
                    .insert(stage, (process_cpu_s() - cpu) / wall * 100.0);
                self.rss_bytes.insert(stage, process_rss_bytes());
                PoolReply::Ok
            }
            PoolCmd::Close { stage, his, failed } => {
                let (his, failed) = (Arc::new(his), Arc::new(failed));
                let mut waits = Vec::new();
                for l in &self.lanes {
                    let (tx, rx) = oneshot::channel();
                    let _ = l.send(LaneCmd::Close {
                        stage,
                        his: his.clone(),
                        failed: failed.clone(),
                        reply: tx,
                    });
                    waits.push(rx);
                }
                let mut total = StageStats::default();
                for w in waits {
                    match w.await {
                        Ok(s) => total.merge(&s),
                        Err(_) => return PoolReply::Err("a lane thread died".into()),
                    }
                }
                total.cpu_pct = self.cpu_pct.remove(&stage).into_iter().collect();
                total.rss_bytes = self.rss_bytes.remove(&stage).into_iter().collect();
                PoolReply::Stats(Box::new(total))
            }
            PoolCmd::Live => PoolReply::Live(self.live()),
            PoolCmd::Slow { share_ppm, on } => {
                let mut total = crate::lane::SlowReply::default();
                for r in self
                    .ask_lanes(|reply| LaneCmd::Slow {
                        share_ppm,
                        on,
                        reply,
                    })
                    .await
                {
                    total.subscribers += r.subscribers;
                    total.addrs.extend(r.addrs);
                }
                PoolReply::Slow(total)
            }
            PoolCmd::Counters => {
                let (mut now, mut at_stage_begin) =
                    (ConnCounters::default(), ConnCounters::default());
                for (n, b) in self.ask_lanes(|reply| LaneCmd::Counters { reply }).await {
                    now.merge(&n);
                    at_stage_begin.merge(&b);
                }
                PoolReply::Counters {
                    now,
                    at_stage_begin,
                }
            }
            PoolCmd::ClientCert { cert, key } => {
                let Some(slot) = &self.cfg.endpoint.tls else {
                    return PoolReply::Err(
                        "a client certificate rotation needs a wss:// --url".into(),
                    );
                };
                match crate::tls::client_config(self.ca_cert.as_deref(), Some(&cert), Some(&key)) {
                    Ok(c) => {
                        slot.set(c);
                        PoolReply::Ok
                    }
                    Err(e) => PoolReply::Err(e.to_string()),
                }
            }
            PoolCmd::Stop => {
                self.stop().await;
                PoolReply::Ok
            }
        }
    }

    /// Sends one command to every lane and collects their answers (a lane
    /// that died answers nothing).
    async fn ask_lanes<T>(&self, cmd: impl Fn(oneshot::Sender<T>) -> LaneCmd) -> Vec<T> {
        let mut waits = Vec::new();
        for l in &self.lanes {
            let (tx, rx) = oneshot::channel();
            let _ = l.send(cmd(tx));
            waits.push(rx);
        }
        let mut out = Vec::with_capacity(waits.len());
        for w in waits {
            if let Ok(r) = w.await {
                out.push(r);
            }
        }
        out
    }

    pub fn live(&self) -> LiveSnap {
        let mut s = LiveSnap::default();
        for g in &self.gauges {
            s.connected += g.connected.load(Ordering::Relaxed);
            s.received += g.received.load(Ordering::Relaxed);
            s.errors += g.errors.load(Ordering::Relaxed);
            s.p99_us = s.p99_us.max(g.p99_us.load(Ordering::Relaxed));
        }
        s
    }

    pub async fn stop(&mut self) {
        if let Some(p) = self.pacer.take() {
            p.abort();
        }
        let mut waits = Vec::new();
        for l in &self.lanes {
            let (tx, rx) = oneshot::channel();
            let _ = l.send(LaneCmd::Stop { reply: tx });
            waits.push(rx);
        }
        for w in waits {
            let _ = w.await;
        }
        self.lanes.clear();
        for t in self.threads.drain(..) {
            let _ = tokio::task::spawn_blocking(move || t.join()).await;
        }
    }
}
