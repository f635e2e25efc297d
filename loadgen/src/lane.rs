//! A lane: one OS thread running a single-threaded tokio runtime that owns
//! a share of the subscribers. Everything a subscriber touches per message
//! (its accounting, the stage counters and histograms, the receive log)
//! lives in the lane's `RefCell`, so the hot path takes no lock and no
//! atomic. The pool talks to lanes through `LaneCmd`s.

use crate::{
    accounting::{in_share, ConnCounters, StageStats, SubAcct},
    client::{self, ClientCfg},
    marker::Schedule,
    oplog::LogWriter,
};
use std::{
    cell::{Cell, RefCell},
    future::Future,
    rc::Rc,
    sync::{
        atomic::{AtomicU64, Ordering},
        Arc,
    },
    task::{Poll, Waker},
    time::Instant,
};
use tokio::sync::{mpsc, oneshot};

pub enum LaneCmd {
    Schedule(Schedule),
    Open {
        id: u64,
        channel: u32,
    },
    /// Intended close of the newest `n` subscribers (a stage with fewer connections).
    Shrink {
        n: usize,
    },
    StageBegin(u32),
    StageEnd(u32),
    Close {
        stage: u32,
        his: Arc<Vec<u64>>,
        failed: Arc<Vec<(u32, u64)>>,
        reply: oneshot::Sender<StageStats>,
    },
    Stop {
        reply: oneshot::Sender<()>,
    },
    /// `slow-consumers`: the subscribers in the `share_ppm` share stop
    /// (`on`) or resume reading their sockets.
    Slow {
        share_ppm: u32,
        on: bool,
        reply: oneshot::Sender<SlowReply>,
    },
    /// The lane's connection counters since its start, and as they were
    /// when the current stage began.
    Counters {
        reply: oneshot::Sender<(ConnCounters, ConnCounters)>,
    },
}

/// Which subscribers a `slow-consumers` switch reached.
#[derive(Debug, Default, Clone, serde::Serialize, serde::Deserialize)]
pub struct SlowReply {
    pub subscribers: u64,
    /// Local addresses of their connections that were up at the switch
    /// (the target sees them as its sockets' peers).
    pub addrs: Vec<std::net::SocketAddr>,
}

/// Figures the live view reads without asking the lane thread.
#[derive(Default)]
pub struct LaneGauges {
    pub connected: AtomicU64,
    /// Subscribers whose first connection attempt has finished (either way).
    pub settled: AtomicU64,
    pub received: AtomicU64,
    pub errors: AtomicU64,
    /// Latency p99 (µs) of the current stage so far, refreshed every second.
    pub p99_us: AtomicU64,
}

/// Stop switch of one subscriber task. Lane-local (no lock, no atomic):
/// the session polls `stopped()` once per frame, so it must be cheap.
#[derive(Default)]
pub struct SubCtl {
    pub stop: Cell<bool>,
    /// A `slow-consumers` fault: the session stops reading while set.
    pub slow: Cell<bool>,
    waker: RefCell<Option<Waker>>,
}

impl SubCtl {
    pub fn request_stop(&self) {
        self.stop.set(true);
        if let Some(w) = self.waker.take() {
            w.wake();
        }
    }

    pub fn set_slow(&self, on: bool) {
        self.slow.set(on);
        if let Some(w) = self.waker.take() {
            w.wake();
        }
    }

    /// Ready once `slow` equals `want`.
    pub fn until_slow(&self, want: bool) -> impl Future<Output = ()> + '_ {
        std::future::poll_fn(move |cx| {
            if self.slow.get() == want {
                return Poll::Ready(());
            }
            let mut w = self.waker.borrow_mut();
            if !w.as_ref().is_some_and(|w| w.will_wake(cx.waker())) {
                *w = Some(cx.waker().clone());
            }
            Poll::Pending
        })
    }

    /// Ready once a stop was requested (before or after the call).
    pub fn stopped(&self) -> impl Future<Output = ()> + '_ {
        std::future::poll_fn(move |cx| {
            if self.stop.get() {
                return Poll::Ready(());
            }
            let mut w = self.waker.borrow_mut();
            if !w.as_ref().is_some_and(|w| w.will_wake(cx.waker())) {
                *w = Some(cx.waker().clone());
            }
            Poll::Pending
        })
    }
}

pub struct LaneState {
    pub stage: u32,
    /// Stages below this one are closed: late frames count in `stage`.
    pub first_open: u32,
    pub schedule: Schedule,
    pub subs: Vec<SubAcct>,
    pub ids: Vec<u64>,
    pub stats: Vec<StageStats>,
    /// Per subscriber: made slow by a fault since its stage was last judged.
    pub slow_mark: Vec<bool>,
    /// Per subscriber: local address of its connection while up.
    pub addrs: Vec<Option<std::net::SocketAddr>>,
    /// Connection counters since the lane started (for fault windows).
    pub cum: ConnCounters,
    cum_at_begin: ConnCounters,
    connected: u64,
    conn_acc_ns: u128,
    conn_acc_at_begin: u128,
    last_change: Instant,
    pub log: Option<LogWriter>,
}

impl LaneState {
    pub fn stage_stats(&mut self, k: u32) -> &mut StageStats {
        let k = k.max(self.first_open) as usize;
        if self.stats.len() <= k {
            self.stats.resize_with(k + 1, StageStats::default);
        }
        &mut self.stats[k]
    }

    fn integrate(&mut self) {
        let now = Instant::now();
        self.conn_acc_ns += u128::from(self.connected) * (now - self.last_change).as_nanos();
        self.last_change = now;
    }

    pub fn connected_delta(&mut self, up: bool) {
        self.integrate();
        if up {
            self.connected += 1;
        } else {
            self.connected -= 1;
        }
    }
}

pub struct Lane {
    pub cfg: Arc<ClientCfg>,
    pub state: RefCell<LaneState>,
    pub gauges: Arc<LaneGauges>,
    /// Every subscriber of the lane reads into this buffer and handles the
    /// frames at once (borrowed only inside a poll, never across an
    /// await): an idle connection keeps no read buffer of its own.
    pub scratch: RefCell<Box<[u8]>>,
}

/// Bytes one read may return: all the frames a socket has queued, most times.
pub const SCRATCH_BYTES: usize = 64 * 1024;

/// Starts a lane thread; returns its command sender and the thread handle.
pub fn spawn(
    index: usize,
    cfg: Arc<ClientCfg>,
    gauges: Arc<LaneGauges>,
    log: Option<LogWriter>,
) -> std::io::Result<(mpsc::UnboundedSender<LaneCmd>, std::thread::JoinHandle<()>)> {
    let (tx, rx) = mpsc::unbounded_channel();
    let handle = std::thread::Builder::new()
        .name(format!("loadgen-lane-{index}"))
        .spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("lane runtime");
            let local = tokio::task::LocalSet::new();
            local.block_on(&rt, lane_main(rx, cfg, gauges, log));
        })?;
    Ok((tx, handle))
}

async fn lane_main(
    mut rx: mpsc::UnboundedReceiver<LaneCmd>,
    cfg: Arc<ClientCfg>,
    gauges: Arc<LaneGauges>,
    log: Option<LogWriter>,
) {
    let lane = Rc::new(Lane {
        cfg,
        gauges,
        scratch: RefCell::new(vec![0u8; SCRATCH_BYTES].into_boxed_slice()),
        state: RefCell::new(LaneState {
            stage: 0,
            first_open: 0,
            schedule: Schedule {
                run: 0,
                t0_ns: 0,
                rate: 0.0,
                channels: 1,
            },
            subs: Vec::new(),
            ids: Vec::new(),
            stats: Vec::new(),
            slow_mark: Vec::new(),
            addrs: Vec::new(),
            cum: ConnCounters::default(),
            cum_at_begin: ConnCounters::default(),
            connected: 0,
            conn_acc_ns: 0,
            conn_acc_at_begin: 0,
            last_change: Instant::now(),
            log,
        }),
    });
    let mut ctls: Vec<Rc<SubCtl>> = Vec::new();
    let mut tasks = tokio::task::JoinSet::new();
    let mut refresh = tokio::time::interval(std::time::Duration::from_secs(1));
    loop {
        let cmd = tokio::select! {
            c = rx.recv() => match c {
                Some(c) => c,
                None => return,
            },
            _ = refresh.tick() => {
                let mut st = lane.state.borrow_mut();
                let k = st.stage;
                let h = &st.stage_stats(k).latency;
                let p99 = if h.is_empty() { 0 } else { h.value_at_quantile(0.99) };
                lane.gauges.p99_us.store(p99, Ordering::Relaxed);
                continue;
            }
        };
        match cmd {
            LaneCmd::Schedule(s) => lane.state.borrow_mut().schedule = s,
            LaneCmd::Open { id, channel } => {
                let local = {
                    let mut st = lane.state.borrow_mut();
                    st.subs.push(SubAcct::new(channel));
                    st.ids.push(id);
                    st.slow_mark.push(false);
                    st.addrs.push(None);
                    st.subs.len() - 1
                };
                let ctl = Rc::new(SubCtl::default());
                ctls.push(ctl.clone());
                tasks.spawn_local(client::run_subscriber(
                    lane.clone(),
                    ctl,
                    local,
                    id,
                    channel,
                ));
            }
            LaneCmd::Shrink { n } => {
                for ctl in ctls.iter().rev().filter(|c| !c.stop.get()).take(n) {
                    ctl.request_stop();
                }
            }
            LaneCmd::StageBegin(k) => {
                let mut st = lane.state.borrow_mut();
                st.integrate();
                st.conn_acc_at_begin = st.conn_acc_ns;
                st.cum_at_begin = st.cum.clone();
                st.stage = k;
                st.stage_stats(k);
            }
            LaneCmd::StageEnd(k) => {
                let mut st = lane.state.borrow_mut();
                st.integrate();
                let ns = (st.conn_acc_ns - st.conn_acc_at_begin) as u64;
                st.stage_stats(k).connection_ns = ns;
            }
            LaneCmd::Close {
                stage,
                his,
                failed,
                reply,
            } => {
                let mut st = lane.state.borrow_mut();
                let sched = st.schedule;
                let settle = lane.cfg.settle_ns;
                let (mut expected, mut lost) = (0, 0);
                let (mut slow_expected, mut slow_lost) = (0, 0);
                let mut failed_by_channel: Vec<Vec<u64>> = vec![Vec::new(); his.len()];
                for &(c, p) in failed.iter() {
                    if let Some(v) = failed_by_channel.get_mut(c as usize) {
                        v.push(p);
                    }
                }
                let st = &mut *st;
                // The bench floor accounts for nothing: no loss to judge.
                let judged = if lane.cfg.floor { 0 } else { st.subs.len() };
                for (i, sub) in st.subs.iter_mut().enumerate().take(judged) {
                    let c = sub.channel as usize;
                    let hi = his.get(c).copied().unwrap_or(0);
                    let f = failed_by_channel.get(c).map_or(&[][..], |v| v.as_slice());
                    let (e, l) = sub.close(hi, f, &sched, settle);
                    expected += e;
                    lost += l;
                    if st.slow_mark[i] {
                        slow_expected += e;
                        slow_lost += l;
                        // Judged: from the next stage on it is an ordinary
                        // subscriber again, unless the fault still holds it.
                        st.slow_mark[i] = ctls.get(i).is_some_and(|c| c.slow.get());
                    }
                }
                let s = st.stage_stats(stage);
                s.expected += expected;
                s.lost += lost;
                s.slow.expected += slow_expected;
                s.slow.lost += slow_lost;
                let out = std::mem::take(s);
                st.first_open = st.first_open.max(stage + 1);
                let _ = reply.send(out);
            }
            LaneCmd::Slow {
                share_ppm,
                on,
                reply,
            } => {
                let mut st = lane.state.borrow_mut();
                let mut out = SlowReply::default();
                for (i, ctl) in ctls.iter().enumerate() {
                    if ctl.stop.get() || !in_share(st.ids[i], share_ppm) || ctl.slow.get() == on {
                        continue;
                    }
                    if on {
                        st.slow_mark[i] = true;
                        out.subscribers += 1;
                        out.addrs.extend(st.addrs[i]);
                    }
                    ctl.set_slow(on);
                }
                let k = st.stage;
                st.stage_stats(k).slow.subscribers += out.subscribers;
                let _ = reply.send(out);
            }
            LaneCmd::Counters { reply } => {
                let st = lane.state.borrow();
                let _ = reply.send((st.cum.clone(), st.cum_at_begin.clone()));
            }
            LaneCmd::Stop { reply } => {
                for ctl in &ctls {
                    ctl.request_stop();
                }
                let deadline = tokio::time::sleep(std::time::Duration::from_secs(5));
                tokio::pin!(deadline);
                loop {
                    tokio::select! {
                        r = tasks.join_next() => if r.is_none() { break },
                        _ = &mut deadline => { tasks.abort_all(); break }
                    }
                }
                let mut st = lane.state.borrow_mut();
                let st = &mut *st;
                if let Some(log) = st.log.as_mut() {
                    for (sub, id) in st.subs.iter().zip(&st.ids) {
                        log.subscriber(*id, sub);
                    }
                    log.flush();
                }
                let _ = reply.send(());
                return;
            }
        }
    }
}

/// Takes a counter bump into the gauges (cheap, relaxed).
pub fn bump(a: &AtomicU64) {
    a.fetch_add(1, Ordering::Relaxed);
}
