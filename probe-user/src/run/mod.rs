//! `pushscope run`: load + observe + gate + report in one command.
//!
//! The observer attaches to the target's PID first; the load generator then
//! walks the stages. At every stage boundary the observer's stage window is
//! cut (`snapshot` + `reset_stage`), so both views cover the same stage on
//! one clock. A 1 Hz sampler builds the timeline and watches the target:
//! if it dies, the load stops and everything measured so far is written,
//! marked incomplete (exit 3).

pub mod figures;
pub mod scale;

use crate::profile::{ProfileOptions, Profiler, StageProfile};
use crate::{
    gate::{evaluate, Thresholds},
    observe::{ObserveError, ObserveOptions, Observer},
    report::{RunSummary, StageSummary, TargetInfo, TimelinePoint, Verdict, SCHEMA_VERSION},
    target,
};
use anyhow::Context;
use figures::{stage_figures, RssWindow};
use loadgen::{
    faults::FaultRun,
    msgpath::Tracer,
    outcome::{usage, Outcome},
    pool::LiveSnap,
    runner::{RunOptions, StageEvent},
    LoadArgs, Scenario, StageReport,
};
use std::{
    cell::RefCell,
    net::SocketAddr,
    path::{Path, PathBuf},
    sync::Arc,
    time::{Duration, Instant, SystemTime, UNIX_EPOCH},
};

/// Arguments of `pushscope run`: the load flags plus the target's PID and
/// the gate.
#[derive(Debug, clap::Args)]
pub struct RunArgs {
    /// PID of the server under test (observed with eBPF; needs root). Without
    /// it only the load side is measured and the observer's criteria fail as
    /// "not measured".
    #[arg(long)]
    pub pid: Option<u32>,
    /// Built-in thresholds: financial (default) or lenient.
    #[arg(long, conflicts_with = "thresholds")]
    pub profile: Option<String>,
    /// Thresholds file (TOML, see docs/thresholds.md).
    #[arg(long)]
    pub thresholds: Option<PathBuf>,
    /// Serve the observer's live Prometheus metrics here (loopback by default).
    #[arg(long, num_args = 0..=1, default_missing_value = "127.0.0.1:9464")]
    pub observer_metrics: Option<SocketAddr>,
    /// Message path: trace every message of this many subscriber
    /// connections (the first ones opened); default: 64 or 1 % of the
    /// largest stage, whichever is more; 0: no message-path tracing.
    #[arg(long)]
    pub trace_sample: Option<u64>,
    /// Skip the on-CPU / off-CPU profile of the target (on by default with --pid).
    #[arg(long)]
    pub no_profile: bool,
    /// On-CPU samples per second per CPU of the profile.
    #[arg(long, default_value_t = 99)]
    pub profile_hz: u64,
    /// Shortest interval in which none of the target's threads ran although
    /// one wanted to that is reported as a stall (e.g. 50ms).
    #[arg(long, default_value = "50ms", value_parser = loadgen::duration::parse_duration)]
    pub stall_threshold: Duration,
    #[command(flatten)]
    pub load: LoadArgs,
}

/// Stage boundaries and reports gathered while the load runs.
#[derive(Default)]
struct Progress {
    /// (stage index, seconds since run start) of every stage start.
    starts: Vec<(usize, f64)>,
    /// Observer report of each stage, cut at the next stage's start.
    observer: Vec<serde_json::Value>,
    /// The target's profile of each stage, cut likewise.
    profiles: Vec<StageProfile>,
    load: Vec<Option<StageReport>>,
    /// Latest live figures of the load and the previous ones, for rates.
    live: Option<(LiveSnap, Instant)>,
    live_prev: Option<(LiveSnap, Instant)>,
    /// The kernel's TCP totals of each started stage when most TCP sockets
    /// were in use (read at every live tick).
    sockstat: Vec<Option<crate::target::SockStat>>,
}

pub fn run(args: RunArgs) -> anyhow::Result<Outcome> {
    let (thresholds, profile) = resolve_thresholds(&args)?;
    let mut sc = args.load.scenario()?;
    let out = sc.out.clone().unwrap_or_else(default_out_dir);
    std::fs::create_dir_all(&out).map_err(|e| {
        usage(format!(
            "cannot create the output directory {}: {e}",
            out.display()
        ))
    })?;
    // The msg_id logs let the report name every lost or duplicated message.
    if sc.log_dir.is_none() {
        sc.log_dir = Some(out.join("logs"));
    }
    sc.out = Some(out.clone());
    let link = start_link(&sc)?;
    let observer = match args.pid {
        Some(pid) => Some(attach(pid)?),
        None => {
            eprintln!("pushscope run: no --pid: the target is not observed, its CPU/RSS/fd/probe criteria will fail as not measured");
            None
        }
    };
    let _metrics = match (&observer, args.observer_metrics) {
        (Some(o), Some(addr)) => Some(
            o.serve_metrics(addr)
                .with_context(|| format!("serving observer metrics on {addr}"))?,
        ),
        _ => None,
    };
    let started_unix_ms = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0);
    let (mut profiler, profile_off) = match (args.pid, args.no_profile) {
        (None, _) => (
            None,
            Some("the target was not observed (no --pid)".to_string()),
        ),
        (Some(_), true) => (None, Some("--no-profile".to_string())),
        (Some(pid), false) => match Profiler::attach(
            pid,
            ProfileOptions {
                hz: args.profile_hz.clamp(1, 10_000),
                stall_threshold: args.stall_threshold,
                ..Default::default()
            },
        ) {
            Ok(p) => (Some(p), None),
            Err(e) => {
                eprintln!("pushscope run: the target is not profiled: {e}");
                (None, Some(format!("profiler: {e}")))
            }
        },
    };
    let (tracer, msgpath_off) = match message_path_tracer(&args, &sc, observer.as_ref()) {
        Ok(t) => (Some(t), None),
        Err(reason) => (None, Some(reason)),
    };
    let target_pid = loadgen::faults::TargetPid::new(args.pid);
    let t0 = Instant::now();
    let t0_ns = loadgen::clock::mono_ns();
    let mut faults = start_faults(
        &sc,
        &out,
        &target_pid,
        observer.as_ref(),
        link.as_deref(),
        t0_ns,
    )?;
    let progress = RefCell::new(Progress::default());
    let timeline = RefCell::new(Vec::<TimelinePoint>::new());
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    // Stage cuts wait for the probes' ring buffer to drain (up to ~100 ms):
    // they run on a thread of their own, never on the runtime the
    // publisher shares, so the tool adds no latency at stage boundaries.
    let control = faults.as_mut().and_then(|f| f.take_control());
    let (load_result, cuts) = std::thread::scope(|scope| {
        let (cut_tx, cut_rx) = std::sync::mpsc::channel::<Cut>();
        let (obs, tr, tls) = (observer.as_ref(), tracer.as_deref(), speaks_tls(&sc));
        let prof = profiler.as_mut();
        let cutter = scope.spawn(move || cut_stages(obs, tr, prof, tls, cut_rx));
        let r = rt.block_on(drive(
            &sc,
            cut_tx,
            t0,
            &progress,
            &timeline,
            Beside {
                observer: observer.as_ref(),
                faults: faults.as_ref(),
            },
            RunOptions {
                worker: None,
                live: true,
                tracer: tracer.clone(),
                link: link.clone(),
                conn_events: faults.as_ref().map(|f| f.conn_events()),
                control,
            },
        ));
        (r, cutter.join().unwrap_or_default())
    });
    // Load tasks still retrying a dead target must not hold the exit.
    rt.shutdown_timeout(Duration::from_secs(2));

    let mut progress = progress.into_inner();
    (progress.observer, progress.profiles) = cuts;
    let judged: Vec<StageReport> = progress.load.iter().flatten().cloned().collect();
    let fault_records = faults
        .map(|f| f.finish(&judged, loadgen::clock::mono_ns()))
        .unwrap_or_default();
    if let Some(p) = profiler.as_mut() {
        if progress.profiles.len() < progress.starts.len() {
            progress.profiles.push(p.cut_stage());
        }
    }
    let timeline = timeline.into_inner();
    // Close the observer window of the stage that was running at the end.
    if let Some(o) = &observer {
        if progress.observer.len() < progress.starts.len() {
            progress.observer.push(serde_json::to_value(o.snapshot())?);
        }
    }
    // After a kill-restart the target is the restarted process.
    let target_died = target_pid.get().is_some_and(|pid| !target::exists(pid))
        || observer.as_ref().is_some_and(|o| o.target_exited());
    let incomplete_reason = match (&load_result, target_died) {
        (_, true) => Some(format!(
            "the target (PID {}) exited during the run",
            target_pid.get().unwrap_or(0)
        )),
        (Err(e), false) => Some(format!("{e:#}")),
        (Ok(_), false) => None,
    };
    // The link's figures: the load's (with its sockets' TCP figures) when
    // it ended, else the forwarder's so far.
    let network = match (&load_result, &link) {
        (Ok(Some(r)), _) if r.network.is_some() => r.network.clone(),
        (_, Some(l)) => Some(l.report()),
        _ => None,
    };
    drop(link);
    let mut summary = RunSummary {
        schema_version: SCHEMA_VERSION,
        tool: format!("pushscope {}", env!("CARGO_PKG_VERSION")),
        verdict: Verdict::Incomplete,
        complete: incomplete_reason.is_none(),
        incomplete_reason: incomplete_reason.clone(),
        started_unix_ms,
        duration_s: t0.elapsed().as_secs_f64(),
        target: TargetInfo {
            pid: args.pid,
            url: sc.url.clone(),
            protocol: format!("{:?}", sc.protocol).to_lowercase(),
            command: args.pid.and_then(cmdline),
        },
        profile,
        thresholds: thresholds.clone(),
        stages: Vec::new(),
        timeline,
        not_measured: Vec::new(),
        lost_ids: Vec::new(),
        duplicate_ids: Vec::new(),
        slowest_connections: serde_json::Value::Array(Vec::new()),
        faults: fault_records,
        network,
    };
    build_stages(&mut summary, &sc, &mut progress, observer.is_some());
    judge_faults(&mut summary);
    if let (Some(n), true) = (summary.network.as_mut(), observer.is_some()) {
        n.server_retransmits = Some(
            summary
                .stages
                .iter()
                .filter_map(|s| s.observer.pointer("/tcp/retransmits")?.as_u64())
                .sum(),
        );
    }
    write_profiles(&mut summary, &out, profile_off);
    let traced_legs = match (&observer, &tracer) {
        (Some(o), Some(t)) => message_path(&mut summary, o, t, &out, speaks_tls(&sc)),
        _ => {
            let why = msgpath_off.unwrap_or_default();
            for st in &mut summary.stages {
                st.message_path = Some(crate::msgpath::MessagePath::not_measured(why.clone()));
            }
            Vec::new()
        }
    };
    if let Some(o) = &observer {
        // lifecycle.folded/.svg and trace.json of the whole run; the run's
        // own summary.json (written below) replaces the observer's.
        let total = o
            .write_outputs(&out, &traced_legs)
            .with_context(|| format!("writing observer outputs to {}", out.display()))?;
        summary.not_measured.extend(total.notes.iter().cloned());
        summary.slowest_connections = slowest_connections(&out);
    }
    if let Some(dir) = &sc.log_dir {
        fill_ids(&mut summary, dir);
    }
    summary.decide();
    summary.write_all(&out)?;
    if let Some(o) = observer {
        o.detach();
    }
    print_verdict(&summary, &out);
    match (summary.verdict, incomplete_reason) {
        (_, Some(reason)) => Err(anyhow::anyhow!(
            "run incomplete: {reason}; partial results written to {}",
            out.display()
        )),
        (Verdict::Admitted, None) => Ok(Outcome::Completed),
        _ => Ok(Outcome::Rejected),
    }
}

/// The scenario's faults, ready to fire: the target's PID (replaced by a
/// kill-restart), the observer following a restarted target. A fault
/// that cannot run here is a usage error, before any load.
fn start_faults(
    sc: &Scenario,
    out: &Path,
    target_pid: &loadgen::faults::TargetPid,
    observer: Option<&Observer>,
    link: Option<&loadgen::link::Link>,
    t0_ns: u64,
) -> anyhow::Result<Option<FaultRun>> {
    if sc.faults.is_empty() {
        return Ok(None);
    }
    let mut env = loadgen::faults::FaultEnv::for_scenario(sc, out);
    env.target = target_pid.clone();
    env.link = link.map(|l| Arc::new(l.control()) as Arc<dyn loadgen::faults::PartitionSwitch>);
    if let Some(o) = observer {
        let (a, b) = (o.follower(), o.follower());
        env.before_kill = Some(Arc::new(move |pid| a.expect_exit(pid)));
        env.on_restart = Some(Arc::new(move |pid| b.retarget(pid)));
    }
    FaultRun::start(sc, &env, t0_ns).map_err(usage)
}

/// Each fault's criteria (docs/thresholds.md, `[faults]`) join the
/// criteria of the stage it ran in.
fn judge_faults(summary: &mut RunSummary) {
    let t = summary.thresholds.clone();
    for r in &summary.faults {
        let criteria = crate::gate::evaluate_fault(&t, r);
        if let Some(st) = summary.stages.iter_mut().find(|s| s.index + 1 == r.stage) {
            st.criteria.extend(criteria);
        }
        summary.not_measured.extend(
            r.outcome
                .notes
                .iter()
                .map(|n| format!("fault {} ({}): {n}", r.fault, r.kind)),
        );
        if let Some(e) = &r.error {
            summary
                .not_measured
                .push(format!("fault {} ({}): {e}", r.fault, r.kind));
        }
    }
}

/// The emulated link of the run (`--network`), started before the
/// observer and the load so that both see its traffic from the first
/// packet; `None` without `--network`.
fn start_link(sc: &Scenario) -> anyhow::Result<Option<Arc<loadgen::link::Link>>> {
    // A partition fault needs a link to cut: a transparent one without --network.
    let spec = match sc.network {
        Some(spec) => spec,
        None if sc.faults.iter().any(|f| f.kind.needs_link()) => {
            loadgen::link::NetworkSpec::transparent()
        }
        None => return Ok(None),
    };
    match loadgen::link::Link::start(spec) {
        Ok(l) => Ok(Some(Arc::new(l))),
        Err(e @ loadgen::link::LinkError::Permission(_)) => Err(usage(e.to_string())),
        Err(e) => Err(anyhow::Error::new(e)),
    }
}

fn resolve_thresholds(args: &RunArgs) -> anyhow::Result<(Thresholds, String)> {
    if let Some(path) = &args.thresholds {
        let t = Thresholds::load(path).map_err(|e| usage(e.to_string()))?;
        return Ok((t, path.display().to_string()));
    }
    let name = args.profile.clone().unwrap_or_else(|| "financial".into());
    let t = Thresholds::profile(&name).map_err(|e| usage(e.to_string()))?;
    Ok((t, name))
}

fn attach(pid: u32) -> anyhow::Result<Observer> {
    Observer::attach(pid, ObserveOptions::default()).map_err(|e: ObserveError| {
        if e.is_usage() {
            usage(e.to_string())
        } else {
            anyhow::Error::new(e).context(format!("attaching the observer to PID {pid}"))
        }
    })
}

fn default_out_dir() -> PathBuf {
    let ts = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    PathBuf::from("target")
        .join("pushscope")
        .join(ts.to_string())
}

/// A stage boundary for the observer's cutter thread, at the stage's
/// start on CLOCK_MONOTONIC (the probes' clock): the cut lands exactly
/// there however late the thread gets to it.
#[derive(Clone, Copy)]
enum Cut {
    /// The first stage starts: drop what was seen before it.
    Start(u64),
    /// A later stage starts: close the running stage's window, open the next.
    Next(u64),
    /// A stage was judged (its e2e p99 in ms): its message path so far is
    /// joined and its leg p99s go live on the metrics endpoint.
    Judged(u32, Option<f64>),
}

/// The cutter thread: one observer report per closed stage, in order.
fn cut_stages(
    observer: Option<&Observer>,
    tracer: Option<&Tracer>,
    mut profiler: Option<&mut Profiler>,
    tls: bool,
    cuts: std::sync::mpsc::Receiver<Cut>,
) -> (Vec<serde_json::Value>, Vec<StageProfile>) {
    let mut reports = Vec::new();
    let mut profiles = Vec::new();
    for cut in cuts {
        if let Some(o) = observer {
            match cut {
                Cut::Judged(stage, p99) => {
                    if let Some(t) = tracer {
                        live_legs(o, t, stage, p99, tls);
                    }
                }
                Cut::Start(at) => drop(o.cut_stage_at(at)),
                Cut::Next(at) => {
                    reports.push(serde_json::to_value(o.cut_stage_at(at)).unwrap_or_default());
                }
            }
        }
        // The profile's window: its maps are read at the cut (a sampling
        // profile: a few ms either side of the boundary do not matter).
        if let Some(p) = profiler.as_deref_mut() {
            match cut {
                Cut::Start(_) => drop(p.cut_stage()),
                Cut::Next(_) => profiles.push(p.cut_stage()),
                Cut::Judged(..) => {}
            }
        }
    }
    (reports, profiles)
}

/// What watches and acts beside the load.
struct Beside<'a> {
    observer: Option<&'a Observer>,
    faults: Option<&'a FaultRun>,
}

/// Runs the load and the 1 Hz sampler until the load ends or the target dies.
async fn drive(
    sc: &Scenario,
    cut: std::sync::mpsc::Sender<Cut>,
    t0: Instant,
    progress: &RefCell<Progress>,
    timeline: &RefCell<Vec<TimelinePoint>>,
    beside: Beside<'_>,
    opts: RunOptions,
) -> anyhow::Result<Option<loadgen::RunReport>> {
    let Beside { observer, faults } = beside;
    let mut on_event = |ev: StageEvent<'_>| match ev {
        StageEvent::Started {
            stage, at, mono_ns, ..
        } => {
            if let Some(f) = faults {
                f.stage_started(stage as usize, mono_ns);
            }
            let mut p = progress.borrow_mut();
            // The observer's boundary is marked now (an atomic store), so
            // the stage cut is exact however late the cutter thread runs.
            if let Some(o) = observer {
                o.mark_stage_boundary(mono_ns);
            }
            let _ = cut.send(if p.starts.is_empty() {
                Cut::Start(mono_ns)
            } else {
                Cut::Next(mono_ns)
            });
            p.starts.push((
                stage as usize,
                at.saturating_duration_since(t0).as_secs_f64(),
            ));
            p.sockstat.push(crate::target::sockstat());
            p.load.push(None);
        }
        StageEvent::Ended { report, .. } => {
            let _ = cut.send(Cut::Judged(report.stage, report.latency_ms.p99));
            let mut p = progress.borrow_mut();
            let i = report.stage as usize;
            if p.load.len() <= i {
                p.load.resize(i + 1, None);
            }
            p.load[i] = Some(report.clone());
        }
        StageEvent::Tick { snap, at } => {
            let mut p = progress.borrow_mut();
            p.live_prev = p.live.replace((snap, at));
            if let (Some(now), Some(peak)) = (crate::target::sockstat(), p.sockstat.last_mut()) {
                if peak.is_none_or(|k| now.tcp_inuse >= k.tcp_inuse) {
                    *peak = Some(now);
                }
            }
        }
    };
    let load = loadgen::runner::run(sc, opts, &mut on_event);
    let watch = sample_until_target_dies(observer, t0, progress, timeline);
    tokio::select! {
        r = load => r.map(Some).map_err(anyhow::Error::new),
        () = watch => Ok(None),
    }
}

/// Adds a timeline point every second (the observer's latest /proc sample
/// of the target, the load's live figures); returns when the observer saw
/// the target exit (never without a PID).
async fn sample_until_target_dies(
    observer: Option<&Observer>,
    t0: Instant,
    progress: &RefCell<Progress>,
    timeline: &RefCell<Vec<TimelinePoint>>,
) {
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    loop {
        tick.tick().await;
        let stage = progress.borrow().starts.last().map(|s| s.0).unwrap_or(0);
        let mut point = TimelinePoint {
            t_s: t0.elapsed().as_secs_f64(),
            stage,
            ..Default::default()
        };
        if let Some(o) = observer {
            if o.target_exited() {
                return;
            }
            if let Some((at, sample)) = o.last_sample() {
                point.sampled_t_s = Some(if at >= t0 {
                    (at - t0).as_secs_f64()
                } else {
                    -(t0 - at).as_secs_f64()
                });
                point.cpu_pct = Some(sample.cpu_pct / cores() as f64);
                point.rss_bytes = Some(sample.rss_bytes as f64);
                point.fds_open = Some(sample.open_fds as f64);
                point.fd_limit = Some(sample.fd_limit as f64);
            }
        }
        if let Some((now, at)) = progress.borrow().live {
            point.connections = Some(now.connected as f64);
            // The stage's p99 so far (0 until its first message).
            point.e2e_p99_ms = (now.p99_us > 0).then(|| now.p99_us as f64 / 1000.0);
            if let Some((prev, prev_at)) = progress.borrow().live_prev {
                let dt = at.saturating_duration_since(prev_at).as_secs_f64();
                if dt > 0.0 && now.received >= prev.received {
                    point.msgs_per_s = Some((now.received - prev.received) as f64 / dt);
                }
            }
        }
        timeline.borrow_mut().push(point);
    }
}

/// Does the run speak TLS to the target (then only OpenSSL's plaintext
/// marks match the load generator's offsets)?
fn speaks_tls(sc: &Scenario) -> bool {
    let tls = |u: &str| u.starts_with("wss://") || u.starts_with("https://");
    tls(&sc.url) || tls(&sc.publish_url)
}

/// The load generator's message-path sampling for this run, or why the
/// message path is not measured.
fn message_path_tracer(
    args: &RunArgs,
    sc: &Scenario,
    observer: Option<&Observer>,
) -> Result<Arc<Tracer>, String> {
    let Some(o) = observer else {
        return Err("the target was not observed (no --pid)".into());
    };
    let largest = sc.max_connections() as u64;
    let sample = args
        .trace_sample
        .unwrap_or_else(|| largest.div_ceil(100).max(64));
    if sample == 0 {
        return Err("--trace-sample 0".into());
    }
    if sc.max_connections().div_ceil(sc.shard_cap) > 1 {
        return Err(format!(
            "the load is sharded over worker processes (more than --shard-cap {} connections); message-path sampling runs in-process only",
            sc.shard_cap
        ));
    }
    let hook = o
        .port_tracer()
        .map_err(|e| format!("the probes could not trace connections: {e}"))?;
    Ok(Arc::new(Tracer::new(hook, sample)))
}

/// Joins the load generator's samples with the probes' marks, stage by
/// stage; writes latency.folded/.svg and latency-tail.folded/.svg.
/// Returns the joined messages to draw in trace.json.
fn message_path(
    summary: &mut RunSummary,
    observer: &Observer,
    tracer: &Tracer,
    out: &Path,
    tls: bool,
) -> Vec<crate::msgpath::Legs> {
    use crate::msgpath::{self, report::folded, MessagePath, Unjoined};
    if tls {
        if let Err(why) = observer.msgpath_plaintext() {
            let why = format!(
                "TLS: {why}; the kernel sees ciphertext, whose offsets are not the frames', so the legs are not guessed"
            );
            for st in &mut summary.stages {
                st.message_path = Some(MessagePath::not_measured(why.clone()));
            }
            return Vec::new();
        }
    }
    let (publishes, deliveries) = tracer.take();
    let (io, marks_over_cap) = observer.take_marks(tls);
    let mut by_stage = msgpath::samples(&publishes, &deliveries);
    let (mut all_lines, mut tail_lines, mut traced) = (Vec::new(), Vec::new(), Vec::new());
    let mut per_stage = Vec::new();
    for st in &mut summary.stages {
        let (samples, unrecorded) = by_stage.remove(&(st.index as u32)).unwrap_or_default();
        let mut joined = msgpath::join(&samples, &io);
        if unrecorded > 0 {
            joined
                .unjoined
                .insert(Unjoined::PublishNotRecorded, unrecorded);
        }
        let conns = samples
            .iter()
            .map(|s| s.sub_port)
            .collect::<std::collections::HashSet<_>>()
            .len() as u64;
        let mp = MessagePath::from_joined(&joined, conns, st.figures.e2e_p99_ms);
        all_lines.extend(folded(&st.name, &joined.legs));
        if let Some(t) = mp.tail_from_ms {
            let tail = joined.legs.iter().filter(|l| l.total() as f64 / 1e6 >= t);
            tail_lines.extend(folded(&st.name, tail));
        }
        // The trace keeps the slowest 50 and 50 more spread over the rest.
        let mut legs = joined.legs;
        per_stage.push((st.index, legs.clone()));
        legs.sort_by_key(|l| std::cmp::Reverse(l.total()));
        let step = (legs.len() / 50).max(1);
        traced.extend(legs.iter().take(50).copied());
        traced.extend(legs.iter().skip(50).step_by(step).take(50).copied());
        st.message_path = Some(mp);
    }
    let dropped = tracer.dropped.load(std::sync::atomic::Ordering::Relaxed);
    if dropped + marks_over_cap > 0 {
        summary.not_measured.push(format!(
            "message path: {dropped} load-side records and {marks_over_cap} probe marks beyond the record caps were not kept"
        ));
    }
    let write = |name: &str, title: &str, lines: &[String]| {
        if let Err(e) = msgpath::report::write_flame(out, name, title, lines) {
            eprintln!("pushscope run: cannot write {name}.svg: {e}");
        }
    };
    write(
        "latency",
        "pushscope: where message latency goes (µs, summed over sampled messages)",
        &all_lines,
    );
    write(
        "latency-tail",
        "pushscope: where the tail's latency goes (messages at or above the stage's e2e p99)",
        &tail_lines,
    );
    let rows: Vec<(usize, &[crate::msgpath::Legs])> =
        per_stage.iter().map(|(k, l)| (*k, l.as_slice())).collect();
    if let Err(e) = msgpath::report::write_csv(&out.join("message_path.csv"), &rows) {
        eprintln!("pushscope run: cannot write message_path.csv: {e}");
    }
    traced
}

/// A judged stage's leg p99s, joined from what was recorded so far, served
/// live as `pushscope_message_leg_p99_ms{stage, leg}`.
fn live_legs(o: &Observer, t: &Tracer, stage: u32, p99: Option<f64>, tls: bool) {
    use crate::msgpath::{self, MessagePath};
    let (publishes, deliveries) = t.stage_snapshot(stage);
    let by_stage = msgpath::samples(&publishes, &deliveries);
    let Some((samples, _)) = by_stage.get(&stage) else {
        return;
    };
    let joined = msgpath::join(samples, &o.marks_snapshot(tls));
    let mp = MessagePath::from_joined(&joined, 0, p99);
    let legs: Vec<(String, f64)> = mp
        .legs
        .iter()
        .filter_map(|(leg, s)| s.map(|s| (leg.clone(), s.p99)))
        .collect();
    o.set_leg_p99s(&(stage + 1).to_string(), &legs);
}

fn cores() -> usize {
    std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1)
}

/// One `StageSummary` per started stage, judged by the gate.
fn build_stages(summary: &mut RunSummary, sc: &Scenario, p: &mut Progress, observed: bool) {
    let empty = serde_json::json!({});
    for (k, &(stage, start_s)) in p.starts.iter().enumerate() {
        let connections = sc
            .stages
            .get(stage)
            .map(|s| s.connections as u64)
            .unwrap_or(0);
        let end_s = p
            .starts
            .get(k + 1)
            .map(|s| s.1)
            .unwrap_or(summary.duration_s);
        let load = p.load.get(stage).cloned().flatten();
        let load_json = load
            .as_ref()
            .map(|r| serde_json::to_value(r).unwrap_or_default())
            .unwrap_or_else(|| empty.clone());
        let obs_json = p.observer.get(k).cloned();
        // The hold starts when the ramp ends (the last stage's end_s is the
        // run's end, grace and teardown included: not a base for the hold).
        let hold_start = load
            .as_ref()
            .map(|r| (start_s + r.ramp_s).min(end_s))
            .unwrap_or(start_s);
        let rss = RssWindow::from_timeline(&summary.timeline, stage, hold_start);
        let scale = scale::stage_scale(
            &load_json,
            obs_json.as_ref(),
            rss.map(|w| w.at_hold_end),
            p.sockstat.get(k).copied().flatten(),
        );
        let obs_section = obs_json.as_ref().and_then(|o| o.get("observer"));
        let profile = p.profiles.get_mut(k).map(std::mem::take);
        let mut figures = stage_figures(&load_json, obs_section, rss, connections, cores());
        figures.stall_max_ms = profile.as_ref().map(|p| p.stall_max_ms);
        let criteria = evaluate(&summary.thresholds, &figures);
        summary.stages.push(StageSummary {
            index: stage,
            name: format!("stage {} ({} conns)", stage + 1, connections),
            connections,
            start_s,
            end_s,
            complete: load.is_some(),
            pass: false,
            figures,
            criteria,
            load: load_json,
            observer: obs_section.cloned().unwrap_or_else(|| empty.clone()),
            message_path: None,
            profile,
            scale: Some(scale),
        });
    }
    scale::fill_marginals(
        &mut summary
            .stages
            .iter_mut()
            .filter_map(|s| s.scale.as_mut())
            .collect::<Vec<_>>(),
    );
    let notes: Vec<String> = summary.stages.iter().flat_map(stage_caveats).collect();
    summary.not_measured.extend(notes);
    if !observed {
        summary.not_measured.push(
            "the target was not observed (no --pid): server-side phases, CPU, RSS, fds and probe drops are not measured".into(),
        );
    }
}

/// What a stage's figures leave out, in plain words: clipped values and
/// frames counted apart from the judged ones. Silent clipping would be a
/// figure that looks measured and is not.
fn stage_caveats(st: &StageSummary) -> Vec<String> {
    let n = |v: &serde_json::Value, p: &str| {
        v.pointer(p)
            .and_then(serde_json::Value::as_u64)
            .unwrap_or(0)
    };
    let mut out = Vec::new();
    let mut say = |count: u64, what: &str| {
        if count > 0 {
            out.push(format!("{}: {count} {what}", st.name));
        }
    };
    say(
        n(&st.load, "/latency_ms/clipped"),
        "e2e latencies above 60 s were recorded as 60 s (the quantiles there are a floor)",
    );
    say(
        n(&st.load, "/late_untracked"),
        "arrivals fell in a loss span too long to remember one by one (late or duplicate: not told apart)",
    );
    say(
        n(&st.load, "/messages/replayed"),
        "frames of messages scheduled before their subscriber's first upgrade (the server's history, or in flight at the upgrade) were counted apart: not latency, not loss",
    );
    say(
        n(&st.load, "/messages/foreign"),
        "frames of another run's messages were counted apart, never accounted",
    );
    if let Some(serde_json::Value::Object(c)) = st.observer.get("phases_clipped") {
        for (phase, v) in c {
            say(
                v.as_u64().unwrap_or(0),
                &format!(
                    "{phase} values above the observer's 1 h bound were left out of its quantiles"
                ),
            );
        }
    }
    out
}

/// Writes each stage's profile files (profile/<stage>-{cpu,offcpu}.pb.gz
/// and .svg), or says why there is no profile.
fn write_profiles(summary: &mut RunSummary, out: &Path, off: Option<String>) {
    if let Some(why) = off {
        summary.not_measured.push(format!(
            "profile (on-CPU, off-CPU, run queue, stalls): {why}"
        ));
        return;
    }
    let dir = out.join("profile");
    for st in &mut summary.stages {
        let name = format!("stage{}", st.index + 1);
        if let Some(p) = st.profile.as_mut() {
            if let Err(e) = p.write(&dir, &name) {
                summary
                    .not_measured
                    .push(format!("{}: profile files: {e}", st.name));
            }
        }
    }
}

/// msg_ids lost or duplicated, from the run's publish/receive logs.
fn fill_ids(summary: &mut RunSummary, log_dir: &Path) {
    match loadgen::verify::verify(log_dir, None) {
        Ok(v) => {
            summary.lost_ids = v
                .lost
                .iter()
                .map(|(sub, id)| format!("msg_id {id} (subscriber {sub})"))
                .collect();
            summary.duplicate_ids = v
                .duplicated
                .iter()
                .map(|(sub, id, n)| format!("msg_id {id} ×{n} (subscriber {sub})"))
                .collect();
        }
        Err(e) => summary
            .not_measured
            .push(format!("msg_id verification: {e}")),
    }
}

/// The slowest connections of trace.json, one row per connection with
/// its phase durations, for the report table.
fn slowest_connections(out: &Path) -> serde_json::Value {
    use serde_json::{json, Map, Value};
    let doc: Value = std::fs::read_to_string(out.join("trace.json"))
        .ok()
        .and_then(|t| serde_json::from_str(&t).ok())
        .unwrap_or(Value::Null);
    let events = doc
        .get("traceEvents")
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default();
    let mut rows: Vec<(u64, Map<String, Value>)> = Vec::new();
    for e in &events {
        let name = e
            .pointer("/args/name")
            .and_then(Value::as_str)
            .unwrap_or("");
        // Tracks are the first connections and the slowest ones: rank all.
        if e.get("ph").and_then(Value::as_str) == Some("M") && name.contains(" conn ") {
            let tid = e.get("tid").and_then(Value::as_u64).unwrap_or(0);
            let mut row = Map::new();
            let conn = name.split_once(" conn ").map(|(_, c)| c).unwrap_or(name);
            row.insert("connection".into(), json!(conn));
            rows.push((tid, row));
        }
    }
    for e in &events {
        let (Some(tid), Some(name), Some(dur_us)) = (
            e.get("tid").and_then(Value::as_u64),
            e.get("name").and_then(Value::as_str),
            e.get("dur").and_then(Value::as_f64),
        ) else {
            continue;
        };
        if let Some((_, row)) = rows.iter_mut().find(|(t, _)| *t == tid) {
            let key = if name == "connection" {
                "lifetime_ms".to_string()
            } else {
                format!("{name}_ms")
            };
            row.insert(key, json!((dur_us / 1000.0 * 1000.0).round() / 1000.0));
        }
    }
    let setup = |r: &Map<String, Value>| -> f64 {
        [
            "accept_wait_ms",
            "tls_handshake_ms",
            "ws_upgrade_ms",
            "first_push_ms",
        ]
        .iter()
        .filter_map(|k| r.get(*k).and_then(Value::as_f64))
        .sum()
    };
    rows.sort_by(|a, b| setup(&b.1).total_cmp(&setup(&a.1)));
    Value::Array(
        rows.into_iter()
            .take(20)
            .map(|(_, r)| Value::Object(r))
            .collect(),
    )
}

fn cmdline(pid: u32) -> Option<String> {
    let raw = std::fs::read(format!("/proc/{pid}/cmdline")).ok()?;
    let s: Vec<String> = raw
        .split(|b| *b == 0)
        .filter(|a| !a.is_empty())
        .map(|a| String::from_utf8_lossy(a).into_owned())
        .collect();
    (!s.is_empty()).then(|| s.join(" "))
}

/// The verdict table on stdout: one line per stage and criterion.
fn print_verdict(s: &RunSummary, out: &Path) {
    println!();
    println!(
        "{:<24} {:<20} {:>18}  {:<16} result",
        "stage", "criterion", "value", "threshold"
    );
    for st in &s.stages {
        for c in &st.criteria {
            let value = c
                .value
                .map(|v| format!("{} {}", crate::gate::fmt_value(v), c.unit))
                .unwrap_or_else(|| "not measured".into());
            println!(
                "{:<24} {:<20} {:>18}  {:<16} {}",
                st.name,
                c.name,
                value,
                c.threshold,
                if c.pass { "pass" } else { "FAIL" }
            );
        }
    }
    let verdict = match s.verdict {
        Verdict::Admitted => "ADMITTED",
        Verdict::Rejected => "REJECTED",
        Verdict::Incomplete => "INCOMPLETE",
    };
    println!("\nverdict: {verdict}");
    if let Some(r) = &s.incomplete_reason {
        println!("incomplete: {r}");
    }
    println!("report:  {}", out.join("report.html").display());
    println!("junit:   {}", out.join("junit.xml").display());
    println!("summary: {}", out.join("summary.json").display());
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn clipped_and_set_apart_figures_are_said_never_silent() {
        let st = StageSummary {
            index: 0,
            name: "stage 1 (10 conns)".into(),
            connections: 10,
            start_s: 0.0,
            end_s: 1.0,
            complete: true,
            pass: false,
            figures: Default::default(),
            criteria: Vec::new(),
            load: serde_json::json!({
                "latency_ms": {"clipped": 3},
                "late_untracked": 0,
                "messages": {"replayed": 40, "foreign": 2}
            }),
            observer: serde_json::json!({"phases_clipped": {"lifetime": 1, "accept_wait": 0}}),
            message_path: None,
            scale: None,
            profile: None,
        };
        let c = stage_caveats(&st);
        assert_eq!(c.len(), 4, "{c:?}");
        assert!(c[0].starts_with("stage 1 (10 conns): 3 e2e latencies above 60 s"));
        assert!(c[1].contains("40 frames of messages scheduled before"));
        assert!(c[2].contains("2 frames of another run"));
        assert!(c[3].contains("1 lifetime values above"));
    }
}
