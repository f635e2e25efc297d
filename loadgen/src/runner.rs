//! The run: check the target answers, start the pools (in-process or
//! worker processes) and the publisher, walk the stages (ramp at the connect
//! rate, hold), close each stage `grace` after its end, and report every
//! stage through a callback as soon as it is judged. `pushscope run` uses
//! the callback's instants to align stages with the eBPF observer.

use crate::{
    accounting::StageStats,
    clock::{mono_ns, Anchor},
    live::Live,
    marker::{new_run_id, Schedule},
    net,
    oplog::LogWriter,
    pool::{process_cpu_s, LiveSnap, LocalPool, PoolCmd, PoolReply},
    publisher::Publisher,
    report::{stage_line, stage_report, StageMeta, StageReport, CPU_WARN_PCT},
    scenario::Scenario,
    shard::{raise_fd_limit, RemotePool, WorkerCommand},
};
use std::{collections::VecDeque, time::Duration};
use tokio::time::Instant;

/// Stage boundaries as they happen (one clock: `Instant`, i.e.
/// CLOCK_MONOTONIC, also given in ns as `mono_ns`; `unix_ns` is for display).
pub enum StageEvent<'a> {
    Started {
        stage: u32,
        at: std::time::Instant,
        mono_ns: u64,
        unix_ns: u64,
    },
    Ended {
        report: &'a StageReport,
        started: std::time::Instant,
        ended: std::time::Instant,
    },
    /// Once a second: live figures summed over every pool, for timelines.
    Tick {
        snap: LiveSnap,
        at: std::time::Instant,
    },
}

/// Period of [`StageEvent::Tick`].
const TICK: Duration = Duration::from_secs(1);

#[derive(Debug, Clone, Default)]
pub struct RunOptions {
    /// How to start worker processes when the run needs more than one
    /// process; default: `<current exe> load --shard-worker`.
    pub worker: Option<WorkerCommand>,
    /// Print live progress on stderr.
    pub live: bool,
    /// Message-path sampling (`pushscope run` with an observer): in-process
    /// runs only; a run sharded over worker processes samples nothing.
    pub tracer: Option<std::sync::Arc<crate::msgpath::Tracer>>,
    /// Connection events (disconnects, reconnects, resumed messages) for
    /// the outcome of scheduled faults; in-process runs only.
    pub conn_events: Option<std::sync::Arc<crate::faults::events::ConnEvents>>,
    /// A link the caller owns (e.g. to partition it, or a transparent one
    /// for partitions without `--network`); without it, the run starts
    /// and stops its own when the scenario has `network`.
    pub link: Option<std::sync::Arc<crate::link::Link>>,
    /// Commands for every pool while the run goes on (faults): see [`Control`].
    pub control: Option<ControlRx>,
}

type ControlMsg = (
    PoolCmd,
    std::sync::mpsc::SyncSender<Result<Vec<PoolReply>, String>>,
);

/// Sends a [`PoolCmd`] to every pool (in-process or worker processes) of
/// a running load and returns each pool's reply: how faults act on the
/// subscribers mid-stage (`PoolCmd::Slow`, `ClientCert`, `Counters`).
/// The run serves commands while it waits (ramp, hold, grace), within
/// milliseconds; one sent after the run ended gets an error. Blocking:
/// called from the faults' own threads, never from the load's runtime.
#[derive(Clone)]
pub struct Control(tokio::sync::mpsc::UnboundedSender<ControlMsg>);

/// The run's end of a [`Control`], given in [`RunOptions::control`].
#[derive(Clone)]
pub struct ControlRx(
    std::sync::Arc<tokio::sync::Mutex<tokio::sync::mpsc::UnboundedReceiver<ControlMsg>>>,
);

impl std::fmt::Debug for ControlRx {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ControlRx")
    }
}

impl Control {
    pub fn new() -> (Control, ControlRx) {
        let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
        (
            Control(tx),
            ControlRx(std::sync::Arc::new(tokio::sync::Mutex::new(rx))),
        )
    }

    pub fn broadcast(&self, cmd: PoolCmd, timeout: Duration) -> Result<Vec<PoolReply>, String> {
        let (tx, rx) = std::sync::mpsc::sync_channel(1);
        self.0
            .send((cmd, tx))
            .map_err(|_| "the load is not running".to_string())?;
        rx.recv_timeout(timeout)
            .map_err(|_| format!("the load did not answer within {timeout:?}"))?
    }
}

#[derive(Debug, Clone)]
pub struct RunReport {
    pub stages: Vec<StageReport>,
    pub warnings: Vec<String>,
    /// What the emulated link was asked and measured, when there was one.
    pub network: Option<crate::link::NetworkReport>,
}

#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    #[error("the target {url} is unreachable ({reason}): start the server or fix --url")]
    Unreachable { url: String, reason: String },
    #[error("the target {url} is unreachable through the emulated network ({reason}): its packets come from {client_addr} via the host device {host_dev}, so the server must listen on 127.0.0.1, 0.0.0.0 or a host address (not inside another namespace)")]
    UnreachableViaLink {
        url: String,
        reason: String,
        client_addr: String,
        host_dev: String,
    },
    #[error(transparent)]
    Link(#[from] crate::link::LinkError),
    #[error("{0}")]
    Setup(String),
    #[error("load worker failed: {0}")]
    Worker(String),
}

enum AnyPool {
    Local(Box<LocalPool>),
    Remote(Box<RemotePool>),
}

impl AnyPool {
    async fn call(&mut self, cmd: PoolCmd) -> Result<PoolReply, LoadError> {
        match self {
            AnyPool::Local(p) => Ok(p.handle(cmd).await),
            AnyPool::Remote(p) => p
                .call(cmd)
                .await
                .map_err(|e| LoadError::Worker(format!("{e:#}"))),
        }
    }
}

/// Longest wait for the last stage's queued publishes before it is judged.
const DRAIN_MAX: Duration = Duration::from_secs(15);

struct PendingClose {
    meta: StageMeta,
    deadline: Instant,
    his: Vec<u64>,
    started: std::time::Instant,
    ended: std::time::Instant,
    coord_cpu: Option<f64>,
}

struct Driver<'f> {
    sc: Scenario,
    pools: Vec<AnyPool>,
    publisher: Publisher,
    pending: VecDeque<PendingClose>,
    reports: Vec<StageReport>,
    warnings: Vec<String>,
    on_event: &'f mut dyn FnMut(StageEvent<'_>),
    live: Live,
    /// Subscribers connected at least once minus those closed on purpose.
    opened_total: u64,
    next_tick: Instant,
    /// Wall clock at a monotonic instant: unix times in reports are display only.
    anchor: Anchor,
    /// Every stage's socket figures merged: the run's `network.tcp`.
    tcp_all: StageStats,
    control: Option<ControlRx>,
}

/// Checks that the target answers before any load is started. Only "no
/// server there" is fatal; a TLS or upgrade failure is what the run is for
/// (counted by reason per stage), so it only warns.
async fn probe(
    sc: &Scenario,
    ep: &net::Endpoint,
    link: Option<&crate::link::Link>,
) -> Result<Option<String>, LoadError> {
    let proto = crate::protocol::Protocol::new(sc);
    let url = proto.subscribe_url("ch0", None);
    match net::open_ws(
        ep,
        &url,
        proto.subprotocol(),
        None,
        Duration::from_secs(5),
        None,
    )
    .await
    {
        Ok((mut ws, _)) => {
            let _ = tokio::time::timeout(Duration::from_secs(1), ws.close()).await;
            Ok(None)
        }
        Err(e @ (net::ConnectError::Tcp { .. } | net::ConnectError::Timeout(_))) => {
            Err(match link {
                Some(l) => LoadError::UnreachableViaLink {
                    url: sc.url.clone(),
                    reason: e.to_string(),
                    client_addr: l.client_addr.to_string(),
                    host_dev: l.host_dev.clone(),
                },
                None => LoadError::Unreachable {
                    url: sc.url.clone(),
                    reason: e.to_string(),
                },
            })
        }
        Err(e) => Ok(Some(format!(
            "a first test connection to {} failed: {e}",
            sc.url
        ))),
    }
}

pub async fn run(
    sc: &Scenario,
    opts: RunOptions,
    on_event: &mut dyn FnMut(StageEvent<'_>),
) -> Result<RunReport, LoadError> {
    let fd_limit = raise_fd_limit();
    let setup = |e: &dyn std::fmt::Display| LoadError::Setup(e.to_string());
    // The link lives until every pool and the publisher are stopped
    // (declared first, dropped last).
    let owned_link;
    let link: Option<&crate::link::Link> = match (opts.link.as_deref(), sc.network) {
        (Some(l), _) => Some(l),
        (None, Some(spec)) => {
            owned_link = crate::link::Link::start(spec)?;
            Some(&owned_link)
        }
        (None, None) => None,
    };
    let mut with_ns = sc.clone();
    with_ns.netns = link.map(|l| l.netns());
    let sc = &with_ns;
    let tls = if sc.url.starts_with("wss://") {
        Some(
            crate::tls::client_config(
                sc.ca_cert.as_deref(),
                sc.client_cert.as_deref(),
                sc.client_key.as_deref(),
            )
            .map_err(|e| setup(&e))?,
        )
    } else {
        None
    };
    let mut ep = net::endpoint(&sc.url, tls).map_err(|e| LoadError::Unreachable {
        url: sc.url.clone(),
        reason: e.to_string(),
    })?;
    if link.is_some() && !ep.addr.is_ipv4() {
        return Err(LoadError::Setup(format!(
            "--network carries IPv4 only and {} is {}: use an IPv4 address in --url",
            sc.url, ep.addr
        )));
    }
    ep.netns = sc.netns.clone();
    let probe_warning = probe(sc, &ep, link).await?;

    let max = sc.max_connections();
    let shards = max.div_ceil(sc.shard_cap).max(1) as u32;
    let mut warnings: Vec<String> = probe_warning.into_iter().collect();
    if shards == 1 && (max as u64) + 64 > fd_limit {
        warnings.push(format!(
            "{max} connections need more than the fd limit {fd_limit}: lower --shard-cap to shard"
        ));
    }
    let anchor = Anchor::now();
    let schedule = Schedule {
        run: new_run_id(),
        t0_ns: mono_ns() + 300_000_000,
        rate: sc.rate,
        channels: sc.channels,
    };
    let mut pools = Vec::new();
    if shards == 1 {
        let p = LocalPool::new(
            sc,
            schedule,
            0,
            1,
            opts.tracer.clone(),
            opts.conn_events.clone(),
        )
        .map_err(|e| setup(&format!("{e:#}")))?;
        pools.push(AnyPool::Local(Box::new(p)));
    } else {
        let cmd = match opts.worker.clone() {
            Some(c) => c,
            None => WorkerCommand::current_exe().map_err(|e| setup(&e))?,
        };
        for shard in 0..shards {
            let init = PoolCmd::Init {
                scenario: Box::new(sc.clone()),
                schedule,
                shard,
                shards,
                netns: sc.netns.as_ref().map(|n| n.proc_path()),
            };
            let p = RemotePool::spawn(&cmd, init)
                .await
                .map_err(|e| LoadError::Worker(format!("{e:#}")))?;
            pools.push(AnyPool::Remote(Box::new(p)));
        }
    }
    let log = match &sc.log_dir {
        Some(d) => {
            std::fs::create_dir_all(d)
                .map_err(|e| setup(&format!("creating {}: {e}", d.display())))?;
            let mut l = LogWriter::create(&d.join("publish.log")).map_err(|e| setup(&e))?;
            l.run_header(schedule.run);
            Some(l)
        }
        None => None,
    };
    // Publishes are sampled only when subscribers are (one process).
    let pub_tracer = opts.tracer.clone().filter(|_| shards == 1);
    let publisher =
        Publisher::start(sc, schedule, log, pub_tracer).map_err(|e| setup(&format!("{e:#}")))?;
    let live = Live::new(sc, opts.live);
    let mut d = Driver {
        sc: sc.clone(),
        pools,
        publisher,
        pending: VecDeque::new(),
        reports: Vec::new(),
        warnings,
        on_event,
        live,
        opened_total: 0,
        next_tick: Instant::now(),
        anchor,
        tcp_all: StageStats::default(),
        control: opts.control.clone(),
    };
    let result = d.stages().await;
    for p in d.pools.iter_mut() {
        let _ = p.call(PoolCmd::Stop).await;
    }
    for p in d.pools.drain(..) {
        if let AnyPool::Remote(r) = p {
            r.wait().await;
        }
    }
    d.publisher.shutdown(Duration::from_secs(2)).await;
    d.live.finish();
    result?;
    Ok(RunReport {
        stages: d.reports,
        warnings: d.warnings,
        network: link.map(|l| {
            let mut r = l.report();
            r.tcp = Some(crate::link::TcpMeasured::from_stats(&d.tcp_all));
            r
        }),
    })
}

impl Driver<'_> {
    async fn broadcast(
        &mut self,
        mut f: impl FnMut(usize) -> PoolCmd,
    ) -> Result<Vec<PoolReply>, LoadError> {
        let mut out = Vec::with_capacity(self.pools.len());
        for (i, p) in self.pools.iter_mut().enumerate() {
            match p.call(f(i)).await? {
                PoolReply::Err(e) => return Err(LoadError::Worker(e)),
                r => out.push(r),
            }
        }
        Ok(out)
    }

    async fn live_snap(&mut self) -> Result<LiveSnap, LoadError> {
        let mut total = LiveSnap::default();
        for r in self.broadcast(|_| PoolCmd::Live).await? {
            if let PoolReply::Live(s) = r {
                total.connected += s.connected;
                total.received += s.received;
                total.errors += s.errors;
                total.p99_us = total.p99_us.max(s.p99_us);
            }
        }
        Ok(total)
    }

    /// Waits until `deadline`, closing stages and updating the live view meanwhile.
    async fn idle_until(&mut self, deadline: Instant) -> Result<(), LoadError> {
        loop {
            let now = Instant::now();
            if let Some(p) = self.pending.front() {
                if p.deadline <= now {
                    let p = self.pending.pop_front().expect("front");
                    self.close(p).await?;
                    continue;
                }
            }
            if now >= deadline {
                return Ok(());
            }
            let tick_due = now >= self.next_tick;
            if self.live.due(now) || tick_due {
                let snap = self.live_snap().await?;
                if tick_due {
                    self.next_tick = now + TICK;
                    (self.on_event)(StageEvent::Tick {
                        snap,
                        at: std::time::Instant::now(),
                    });
                }
                if self.live.due(now) {
                    self.live.update(snap, self.reports.last());
                } else {
                    self.live.refresh(snap);
                }
            }
            let mut wake = deadline.min(now + Duration::from_millis(100));
            if let Some(p) = self.pending.front() {
                wake = wake.min(p.deadline);
            }
            self.sleep_or_serve(wake).await?;
        }
    }

    /// Sleeps until `wake`, or serves one [`Control`] command if one comes first.
    async fn sleep_or_serve(&mut self, wake: Instant) -> Result<(), LoadError> {
        let Some(rx) = self.control.clone() else {
            tokio::time::sleep_until(wake).await;
            return Ok(());
        };
        let msg = tokio::select! {
            m = async { rx.0.lock().await.recv().await } => m,
            _ = tokio::time::sleep_until(wake) => return Ok(()),
        };
        let Some((cmd, reply)) = msg else {
            self.control = None; // every Control dropped
            return Ok(());
        };
        let mut out = Vec::with_capacity(self.pools.len());
        let mut err = None;
        for p in self.pools.iter_mut() {
            match p.call(cmd.clone()).await {
                Ok(PoolReply::Err(e)) => err = Some(e),
                Ok(r) => out.push(r),
                // A pool that cannot answer at all ends the run.
                Err(e) => {
                    let _ = reply.send(Err(e.to_string()));
                    return Err(e);
                }
            }
        }
        let _ = reply.send(match err {
            Some(e) => Err(e),
            None => Ok(out),
        });
        Ok(())
    }

    async fn stages(&mut self) -> Result<(), LoadError> {
        let n_pools = self.pools.len();
        let stages = self.sc.stages.clone();
        let last = stages.len() - 1;
        for (k, stage) in stages.iter().enumerate() {
            let k = k as u32;
            let started = std::time::Instant::now();
            let started_ns = mono_ns();
            let coord_cpu0 = process_cpu_s();
            (self.on_event)(StageEvent::Started {
                stage: k,
                at: started,
                mono_ns: started_ns,
                unix_ns: self.anchor.unix_of(started_ns),
            });
            self.live.stage(k, stage.connections);
            let target = stage.connections;
            let rate = self.sc.connect_rate / n_pools as f64;
            self.broadcast(|i| PoolCmd::Ramp {
                stage: k,
                target: target / n_pools + usize::from(i < target % n_pools),
                rate,
            })
            .await?;
            loop {
                let done = self
                    .broadcast(|_| PoolCmd::RampStatus)
                    .await?
                    .iter()
                    .all(|r| matches!(r, PoolReply::RampStatus { done: true }));
                if done {
                    break;
                }
                self.idle_until(Instant::now() + Duration::from_millis(50))
                    .await?;
            }
            let ramp_s = started.elapsed().as_secs_f64();
            self.idle_until(Instant::now() + stage.hold).await?;
            let ended = std::time::Instant::now();
            let ended_ns = mono_ns();
            let his = if k as usize == last {
                self.publisher.stop_scheduling()
            } else {
                self.publisher.switch_stage(k + 1)
            };
            self.broadcast(|_| PoolCmd::StageEnd { stage: k }).await?;
            let wall = ended.duration_since(started).as_secs_f64().max(1e-3);
            // In-process pools report this process's CPU themselves.
            let coord_cpu = matches!(self.pools[0], AnyPool::Remote(_))
                .then(|| (process_cpu_s() - coord_cpu0) / wall * 100.0);
            self.pending.push_back(PendingClose {
                meta: StageMeta {
                    stage: k,
                    target: target as u64,
                    opened_total: 0,
                    ramp_s,
                    started_mono_ns: started_ns,
                    ended_mono_ns: ended_ns,
                    anchor: self.anchor,
                },
                deadline: Instant::now() + self.sc.grace,
                his,
                started,
                ended,
                coord_cpu,
            });
        }
        // Nothing is judged after the last stage: let its queued publishes
        // finish while they make progress (bounded), then give them the
        // grace to be delivered.
        let far = Instant::now() + DRAIN_MAX + self.sc.grace + Duration::from_secs(3600);
        let last_deadline = self.pending.back().map(|p| p.deadline);
        if let Some(last) = self.pending.back_mut() {
            last.deadline = far;
        }
        let drain_until = Instant::now() + DRAIN_MAX;
        let mut progress = (self.publisher.in_flight(), Instant::now());
        while self.publisher.in_flight() > 0 && Instant::now() < drain_until {
            self.idle_until(Instant::now() + Duration::from_millis(20))
                .await?;
            let left = self.publisher.in_flight();
            if left < progress.0 {
                progress = (left, Instant::now());
            } else if progress.1.elapsed() > self.sc.grace.max(Duration::from_secs(1)) {
                break; // stuck (e.g. every publish fails): judge what there is
            }
        }
        let drained = Instant::now();
        if let (Some(last), Some(d)) = (self.pending.back_mut(), last_deadline) {
            last.deadline = d.max(drained + self.sc.grace);
        }
        while let Some(p) = self.pending.back() {
            let deadline = p.deadline;
            self.idle_until(deadline).await?;
        }
        Ok(())
    }

    async fn close(&mut self, mut p: PendingClose) -> Result<(), LoadError> {
        let k = p.meta.stage;
        let mut publish = self.publisher.stage_result(k);
        let (his, backlog) = self.publisher.judged_his(&p.his);
        publish.backlog = backlog;
        let failed = publish.failed.clone();
        let mut total = StageStats::default();
        for r in self
            .broadcast(|_| PoolCmd::Close {
                stage: k,
                his: his.clone(),
                failed: failed.clone(),
            })
            .await?
        {
            if let PoolReply::Stats(s) = r {
                total.merge(&s);
            }
        }
        if let Some(c) = p.coord_cpu {
            total.cpu_pct.insert(0, c);
            total.rss_bytes.insert(0, crate::pool::process_rss_bytes());
        }
        self.opened_total =
            (self.opened_total + total.opened).saturating_sub(total.intended_disconnects);
        p.meta.opened_total = self.opened_total;
        self.tcp_all
            .tcp_srtt
            .add(&total.tcp_srtt)
            .expect("same bounds");
        self.tcp_all
            .heartbeat_rtt
            .add(&total.heartbeat_rtt)
            .expect("same bounds");
        self.tcp_all.tcp_retransmits += total.tcp_retransmits;
        let report = stage_report(&p.meta, &total, &publish);
        if report.loadgen.cpu_warning {
            let w = format!(
                "stage {k}: a load process used more than {CPU_WARN_PCT:.0} % of a core ({:?}): the generator may be the bottleneck",
                report.loadgen.cpu_pct.iter().map(|c| format!("{c:.0}%")).collect::<Vec<_>>()
            );
            self.live.println(&w);
            self.warnings.push(w);
        }
        self.live.println(&stage_line(&report));
        self.reports.push(report);
        let report = self.reports.last().expect("just pushed");
        (self.on_event)(StageEvent::Ended {
            report,
            started: p.started,
            ended: p.ended,
        });
        Ok(())
    }
}
