//! One subscriber: connect (timing each phase), read pushed frames and
//! account for them, ACK cumulatively, ping every heartbeat interval, and on
//! an unexpected disconnect (server close, reset, EOF, missed pongs)
//! reconnect with exponential backoff and jitter, resuming from the last
//! server seq where the protocol allows. The same loop serves every
//! protocol; `Protocol` supplies the differences.

use crate::ws::{Event, FramesError};
use crate::{
    accounting::{record_us, StageStats, Verdict},
    clock::mono_ns,
    faults::events::ConnEventKind,
    lane::{bump, Lane, SubCtl},
    marker::Marker,
    net::{open_ws, Endpoint, Ws},
    protocol::{AckPoint, Protocol, Resume},
};
use rand::Rng;
use std::{future::Future, net::Ipv4Addr, rc::Rc, time::Duration};
use tokio::time::Instant;

/// What every subscriber of a process shares.
pub struct ClientCfg {
    pub protocol: Protocol,
    pub endpoint: Endpoint,
    pub heartbeat: Duration,
    pub max_missed: u32,
    pub sources: Vec<Ipv4Addr>,
    /// A subscriber must see every message scheduled this long after its upgrade.
    pub settle_ns: u64,
    pub connect_timeout: Duration,
    /// Message-path sampling (in-process runs under `pushscope run`).
    pub tracer: Option<std::sync::Arc<crate::msgpath::Tracer>>,
    /// Bench floor: count received frames and nothing else (no UTF-8,
    /// marker or accounting), to measure what receiving alone costs.
    pub floor: bool,
    /// Disconnect / reconnect / resumed-message events (runs with faults).
    pub conn_events: Option<std::sync::Arc<crate::faults::events::ConnEvents>>,
}

const BACKOFF_BASE: Duration = Duration::from_millis(100);
const BACKOFF_MAX: Duration = Duration::from_secs(5);
/// ACK after this many frames, or at the next heartbeat tick.
const ACK_EVERY: u32 = 64;

/// How a session ended.
enum End {
    Intended,
    Unexpected(&'static str),
}

/// Exponential backoff with "equal jitter": half fixed, half random.
pub fn backoff(attempt: u32) -> Duration {
    let d = BACKOFF_BASE
        .saturating_mul(1 << attempt.min(16))
        .min(BACKOFF_MAX);
    let half = d / 2;
    half + Duration::from_nanos(rand::thread_rng().gen_range(0..=half.as_nanos() as u64))
}

pub async fn run_subscriber(lane: Rc<Lane>, ctl: Rc<SubCtl>, local: usize, id: u64, channel: u32) {
    let cfg = lane.cfg.clone();
    let ch_name = format!("ch{channel}");
    let source = (!cfg.sources.is_empty()).then(|| cfg.sources[id as usize % cfg.sources.len()]);
    let mut ever_connected = false;
    let mut attempt: u32 = 0;
    let tracer = cfg.tracer.as_deref().filter(|t| t.samples_subscriber(id));
    loop {
        if ctl.stop.get() {
            break;
        }
        // The resume point asked for, as the receive log records it.
        let (url, resume_point) = {
            let st = lane.state.borrow();
            let sub = &st.subs[local];
            let resume = match (cfg.protocol.resumes(), sub.last_server_seq) {
                (false, _) => None,
                (true, Some(seq)) => Some(Resume::Seq {
                    seq,
                    history: sub.history,
                }),
                (true, None) if !sub.last_message_id.is_empty() => {
                    Some(Resume::Id(&sub.last_message_id))
                }
                (true, None) => None,
            };
            let point = resume
                .filter(|_| st.log.is_some() && ever_connected)
                .map(|r| r.log_token());
            (cfg.protocol.subscribe_url(&ch_name, resume), point)
        };
        let result = tokio::select! {
            // Boxed: the connect future is large and only lives while connecting.
            r = Box::pin(open_ws(&cfg.endpoint, &url, cfg.protocol.subprotocol(), source, cfg.connect_timeout, tracer)) => r,
            _ = ctl.stopped() => break,
        };
        match result {
            Err(e) => {
                let mut st = lane.state.borrow_mut();
                let reason = e.reason();
                st.cum.attempts += 1;
                st.cum.failed += 1;
                StageStats::count_reason(&mut st.cum.failed_by_reason, &reason);
                let k = st.stage;
                let s = st.stage_stats(k);
                s.attempts += 1;
                s.failed += 1;
                StageStats::count_reason(&mut s.failed_by_reason, &reason);
                bump(&lane.gauges.errors);
                if !ever_connected && attempt == 0 {
                    bump(&lane.gauges.settled);
                }
                log::debug!("subscriber {id}: {e}");
            }
            Ok((ws, phases)) => {
                {
                    let mut st = lane.state.borrow_mut();
                    st.connected_delta(true);
                    let now = mono_ns();
                    st.subs[local].upgraded(now);
                    st.subs[local].new_history(phases.history);
                    st.cum.attempts += 1;
                    st.addrs[local] = ws.io.local_addr();
                    if ever_connected {
                        st.subs[local].resumed_at_ns = Some(now);
                        if let Some(log) = st.log.as_mut() {
                            log.resumed(id, now, resume_point.as_deref());
                        }
                        if let Some(ev) = &cfg.conn_events {
                            ev.record(now, id, ConnEventKind::Reconnected);
                        }
                    }
                    let k = st.stage;
                    let s = st.stage_stats(k);
                    s.attempts += 1;
                    if ever_connected {
                        s.reconnects += 1;
                    } else {
                        s.opened += 1;
                    }
                    record_us(&mut s.connect, phases.connect.as_micros() as u64);
                    if let Some(t) = phases.tls {
                        record_us(&mut s.tls, t.as_micros() as u64);
                    }
                    record_us(&mut s.upgrade, phases.upgrade.as_micros() as u64);
                }
                lane.gauges
                    .connected
                    .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                if !ever_connected && attempt == 0 {
                    bump(&lane.gauges.settled);
                }
                ever_connected = true;
                attempt = 0;
                let end = session(&lane, &ctl, local, id, &ch_name, ws).await;
                lane.gauges
                    .connected
                    .fetch_sub(1, std::sync::atomic::Ordering::Relaxed);
                let mut st = lane.state.borrow_mut();
                st.connected_delta(false);
                st.addrs[local] = None;
                if let End::Unexpected(reason) = end {
                    st.cum.unexpected_disconnects += 1;
                    StageStats::count_reason(&mut st.cum.disconnects_by_reason, reason);
                }
                let slow = st.slow_mark[local];
                let k = st.stage;
                let s = st.stage_stats(k);
                if let (true, End::Unexpected(reason)) = (slow, &end) {
                    s.slow.unexpected_disconnects += 1;
                    StageStats::count_reason(&mut s.slow.disconnects_by_reason, reason);
                }
                match end {
                    End::Intended => {
                        s.intended_disconnects += 1;
                        st.subs[local].end_intended();
                        break;
                    }
                    End::Unexpected(reason) => {
                        s.unexpected_disconnects += 1;
                        StageStats::count_reason(&mut s.disconnects_by_reason, reason);
                        if let Some(ev) = &cfg.conn_events {
                            ev.record(mono_ns(), id, ConnEventKind::Lost);
                        }
                        bump(&lane.gauges.errors);
                        log::debug!("subscriber {id}: disconnected: {reason}");
                    }
                }
            }
        }
        let wait = backoff(attempt);
        attempt = attempt.saturating_add(1);
        tokio::select! {
            _ = tokio::time::sleep(wait) => {}
            _ = ctl.stopped() => break,
        }
    }
}

/// The key an I/O error on an established connection is counted under.
fn io_reason(e: &std::io::Error) -> &'static str {
    match e.raw_os_error() {
        Some(libc::ECONNRESET) | Some(libc::EPIPE) => "connection reset",
        _ => "io error",
    }
}

/// What a session keeps between reads.
struct SessionState {
    up_at: Instant,
    first: bool,
    /// Pings not answered yet.
    outstanding: u32,
    /// When the oldest unanswered ping went out (pongs answer in order).
    ping_sent: Option<Instant>,
    /// The socket's retransmit count at the last sample.
    retrans_seen: u32,
    /// Messages accounted since the last ACK.
    unacked: u32,
    /// Built into a frame only when sent (every ACK_EVERY frames or heartbeat).
    ack: Option<AckPoint>,
}

async fn session(
    lane: &Lane,
    ctl: &SubCtl,
    local: usize,
    id: u64,
    ch_name: &str,
    mut ws: Ws,
) -> End {
    let cfg = &lane.cfg;
    if let Some(f) = cfg.protocol.subscribe_frame(ch_name) {
        ws.framer.queue_text(&f);
        if ws.flush().await.is_err() {
            return End::Unexpected("write error");
        }
    }
    let up_at = Instant::now();
    // Spread pings so 20k clients do not all ping in the same millisecond.
    let offset = Duration::from_millis(
        rand::thread_rng().gen_range(0..=cfg.heartbeat.as_millis() as u64 / 4),
    );
    let hb = tokio::time::sleep_until(up_at + cfg.heartbeat + offset);
    tokio::pin!(hb);
    // The heartbeat's waker is registered by its first poll after each
    // reset; every other wake-up of the task (one per read) only asks
    // whether it fired, an atomic load instead of a timer poll.
    let mut hb_armed = false;
    let mut s = SessionState {
        up_at,
        first: true,
        outstanding: 0,
        ping_sent: None,
        retrans_seen: 0,
        unacked: 0,
        ack: None,
    };
    // Frames that came with the upgrade response.
    if ws.framer.has_partial() {
        if let Err(end) = on_read(lane, local, id, ch_name, &mut ws, &mut s, &[]) {
            return end;
        }
    }
    let stop = ctl.stopped();
    tokio::pin!(stop);
    loop {
        if ws.framer.has_out() && ws.flush().await.is_err() {
            return End::Unexpected("write error");
        }
        tokio::select! {
            biased;
            _ = &mut stop => {
                let _ = tokio::time::timeout(Duration::from_secs(1), ws.close()).await;
                return End::Intended;
            }
            _ = ctl.until_slow(true) => {
                // A slow-consumers fault: neither read nor ping until it
                // ends. The socket's receive buffer fills, the window
                // closes and the target's send queue grows; what the
                // server did (kept, dropped, closed) is read after.
                tokio::select! {
                    _ = ctl.until_slow(false) => {}
                    _ = &mut stop => {
                        let _ = tokio::time::timeout(Duration::from_secs(1), ws.close()).await;
                        return End::Intended;
                    }
                }
                // Our own pause is no missed pong.
                s.outstanding = 0;
                hb.as_mut().reset(Instant::now() + cfg.heartbeat);
                hb_armed = false;
                continue;
            }
            // One read takes every frame queued on the socket, into the
            // lane's scratch buffer (the connection keeps none while idle).
            r = std::future::poll_fn(|cx| ws.poll_read(cx, &mut lane.scratch.borrow_mut())) => {
                let n = match r {
                    Ok(0) => return End::Unexpected("eof"),
                    Ok(n) => n,
                    Err(e) => return End::Unexpected(io_reason(&e)),
                };
                let scratch = lane.scratch.borrow();
                if let Err(end) = on_read(lane, local, id, ch_name, &mut ws, &mut s, &scratch[..n]) {
                    return end;
                }
            }
            _ = std::future::poll_fn(|cx| {
                if hb_armed && !hb.is_elapsed() {
                    return std::task::Poll::Pending;
                }
                hb_armed = true;
                hb.as_mut().poll(cx)
            }) => {
                // The next ping a period after this one (a late tick delays the next).
                hb.as_mut().reset(Instant::now() + cfg.heartbeat);
                hb_armed = false;
                if s.outstanding >= cfg.max_missed {
                    return End::Unexpected("heartbeat lost");
                }
                s.outstanding += 1;
                if let Some((a, seq)) = s.ack.take().and_then(|at| cfg.protocol.ack_frame(ch_name, at)) {
                    s.unacked = 0;
                    log_ack(lane, id, seq);
                    ws.framer.queue_text(&a);
                }
                s.ping_sent.get_or_insert_with(Instant::now);
                ws.framer.queue_ping();
            }
        }
    }
}

/// Handles every frame one read completed (`data`: the bytes it returned).
/// ACKs and pongs are queued, written by the caller.
fn on_read(
    lane: &Lane,
    local: usize,
    id: u64,
    ch_name: &str,
    ws: &mut Ws,
    s: &mut SessionState,
    data: &[u8],
) -> Result<(), End> {
    let cfg = &lane.cfg;
    let crate::ws::WsConn { io, framer } = ws;
    // Floor mode (bench): frames are counted, nothing else.
    let mut floor_count = 0u64;
    let r = framer.frames(data, |framer, ev| {
        let (text, payload) = match ev {
            Event::Message { text, payload } => (text, payload),
            Event::Pong => {
                claim_control(io);
                s.outstanding = 0;
                if let Some(t) = s.ping_sent.take() {
                    heartbeat_answered(lane, t.elapsed(), io.tcp_info(), &mut s.retrans_seen);
                }
                return Ok(());
            }
            Event::Ping => {
                claim_control(io);
                return Ok(());
            }
            Event::Close => return Err(End::Unexpected("server close")),
        };
        // A sampled connection: where this message's frame ended, and when it was read.
        let wire = io
            .counted()
            .and_then(|c| Some((c.port, c.frames.claim_message()?)));
        if cfg.floor {
            floor_count += 1;
            return Ok(());
        }
        let text = match std::str::from_utf8(payload) {
            Ok(t) => t,
            // A text frame must be UTF-8 (RFC 6455 8.1).
            Err(_) if text => return Err(End::Unexpected("protocol error")),
            Err(_) => {
                unmarked(lane);
                return Ok(());
            }
        };
        if s.first {
            s.first = false;
            let mut st = lane.state.borrow_mut();
            let k = st.stage;
            record_us(
                &mut st.stage_stats(k).first_message,
                s.up_at.elapsed().as_micros() as u64,
            );
        }
        if let Some(a) = on_frame(lane, local, id, text, wire) {
            s.ack = Some(a);
            s.unacked += 1;
            if s.unacked >= ACK_EVERY {
                s.unacked = 0;
                if let Some((a, seq)) = s
                    .ack
                    .take()
                    .and_then(|at| cfg.protocol.ack_frame(ch_name, at))
                {
                    log_ack(lane, id, seq);
                    framer.queue_text(&a);
                }
            }
        }
        Ok(())
    });
    if !data.is_empty() || floor_count > 0 {
        let mut st = lane.state.borrow_mut();
        let k = st.stage;
        let stats = st.stage_stats(k);
        stats.reads += u64::from(!data.is_empty());
        stats.received += floor_count;
        if floor_count > 0 {
            lane.gauges
                .received
                .fetch_add(floor_count, std::sync::atomic::Ordering::Relaxed);
        }
    }
    match r {
        Ok(()) => Ok(()),
        Err(FramesError::Stop(end)) => Err(end),
        Err(FramesError::Ws(e)) => Err(End::Unexpected(e.reason())),
    }
}

/// A pong: the heartbeat round trip, and the kernel's view of the socket
/// at that moment (smoothed RTT, new retransmits).
fn heartbeat_answered(
    lane: &Lane,
    rtt: Duration,
    tcp: Option<crate::net::TcpInfo>,
    retrans_seen: &mut u32,
) {
    let mut st = lane.state.borrow_mut();
    let k = st.stage;
    let s = st.stage_stats(k);
    record_us(&mut s.heartbeat_rtt, rtt.as_micros() as u64);
    if let Some(t) = tcp {
        record_us(&mut s.tcp_srtt, u64::from(t.srtt_us));
        s.tcp_retransmits += u64::from(t.total_retrans.saturating_sub(*retrans_seen));
        *retrans_seen = t.total_retrans;
    }
}

fn unmarked(lane: &Lane) {
    let mut st = lane.state.borrow_mut();
    let k = st.stage;
    st.stage_stats(k).unmarked += 1;
}

/// Fault injection for testing pushscope itself:
/// `PUSHSCOPE_FAULT_CLIENT_STALL=<duration>/<n>` blocks the lane thread for
/// `<duration>` before accounting every `<n>`th frame of the process, a
/// known stall of the load generator that the message path must put in
/// its `client` leg (frame read → accounted).
fn client_stall() {
    use std::sync::{
        atomic::{AtomicU64, Ordering},
        OnceLock,
    };
    static STALL: OnceLock<Option<(Duration, u64)>> = OnceLock::new();
    static FRAMES: AtomicU64 = AtomicU64::new(0);
    let stall = STALL.get_or_init(|| {
        let v = std::env::var("PUSHSCOPE_FAULT_CLIENT_STALL").ok()?;
        let (d, n) = v.split_once('/')?;
        let d = crate::duration::parse_duration(d).ok()?;
        let n: u64 = n.parse().ok().filter(|n| *n > 0)?;
        Some((d, n))
    });
    if let Some((d, n)) = stall {
        if (FRAMES.fetch_add(1, Ordering::Relaxed) + 1) % n == 0 {
            std::thread::sleep(*d);
        }
    }
}

/// A control frame reached the session: its end is not a message's.
fn claim_control(io: &mut crate::net::Io) {
    if let Some(c) = io.counted() {
        c.frames.claim_control();
    }
}

/// Accounts for one pushed frame; returns the ACK frame to send, if any.
/// Only numbers are kept from the frame (copied out), never its bytes.
/// `wire`: on a sampled connection, its local port and where the frame ended.
fn on_frame(
    lane: &Lane,
    local: usize,
    id: u64,
    text: &str,
    wire: Option<(u16, crate::msgpath::FrameEnd)>,
) -> Option<AckPoint> {
    let cfg = &lane.cfg;
    client_stall();
    let now = mono_ns();
    let server_seq = cfg.protocol.server_seq(text);
    let mut st = lane.state.borrow_mut();
    let st = &mut *st;
    if let Some(s) = server_seq {
        let sub = &mut st.subs[local];
        sub.last_server_seq = Some(sub.last_server_seq.map_or(s, |l| l.max(s)));
    }
    if let Some(id) = cfg.protocol.message_id(text) {
        let sub = &mut st.subs[local];
        sub.last_message_id.clear();
        sub.last_message_id.push_str(id);
    }
    let channel = st.subs[local].channel;
    // Another run's marker is foreign whatever its channel.
    let run = st.schedule.run;
    let Some(m) = Marker::find(text).filter(|m| m.channel == channel || m.run != run) else {
        let k = st.stage;
        st.stage_stats(k).unmarked += 1;
        return None;
    };
    let verdict = st.subs[local].on_marker(&m, run, &st.schedule, cfg.settle_ns);
    st.cum.received += 1;
    let slow = st.slow_mark[local];
    let k = st.stage;
    match verdict {
        // Neither is a delivery of this run to judge: count and move on.
        Verdict::Replay => {
            if let Some(log) = st.log.as_mut() {
                log.replayed(id, m.msg_id);
            }
            st.stage_stats(k).replayed += 1;
            bump(&lane.gauges.received);
            return None;
        }
        Verdict::Foreign => {
            if let Some(log) = st.log.as_mut() {
                log.foreign(id, m.run, m.msg_id);
            }
            st.stage_stats(k).foreign += 1;
            bump(&lane.gauges.received);
            return None;
        }
        _ => {}
    }
    if let Some(log) = st.log.as_mut() {
        log.received(id, m.msg_id, m.attempt);
    }
    if let (Verdict::Fresh { .. }, Some(ev)) = (&verdict, &cfg.conn_events) {
        // Resent on resume: scheduled before this session began.
        if st.subs[local]
            .resumed_at_ns
            .is_some_and(|up| m.sched_ns < up)
        {
            ev.record(now, id, ConnEventKind::Resumed);
        }
    }
    let s = st.stage_stats(m.stage);
    match verdict {
        Verdict::Fresh { out_of_order } if slow => {
            s.received += 1;
            s.out_of_order += u64::from(out_of_order);
            s.slow.received += 1;
            if record_us(&mut s.slow.latency, now.saturating_sub(m.sched_ns) / 1000) {
                s.slow.latency_clipped += 1;
            }
        }
        Verdict::Fresh { out_of_order } => {
            s.received += 1;
            s.out_of_order += u64::from(out_of_order);
            if record_us(&mut s.latency, now.saturating_sub(m.sched_ns) / 1000) {
                s.latency_clipped += 1;
            }
            if let (Some(t), Some((port, end))) = (cfg.tracer.as_deref(), wire) {
                // The same `now` as the latency just recorded: the legs add up to it.
                t.delivered(crate::msgpath::DeliveryMark {
                    msg_id: m.msg_id,
                    attempt: m.attempt,
                    stage: m.stage,
                    sched_ns: m.sched_ns,
                    port,
                    frame_end_offset: end.end_offset,
                    read_ns: end.read_ns,
                    accounted_ns: now,
                });
            }
        }
        // A re-posted copy is the publisher's duplicate, not the server's.
        Verdict::Duplicate if m.attempt > 0 => s.republished += 1,
        Verdict::Duplicate => s.duplicates += 1,
        Verdict::Late => s.late += 1,
        Verdict::LateUntracked => s.late_untracked += 1,
        Verdict::PreBaseline | Verdict::Replay | Verdict::Foreign => {}
    }
    bump(&lane.gauges.received);
    cfg.protocol.acks().then_some(AckPoint {
        server_seq,
        pseq: m.pseq,
        msg_id: m.msg_id,
    })
}

fn log_ack(lane: &Lane, id: u64, seq: u64) {
    if let Some(log) = lane.state.borrow_mut().log.as_mut() {
        log.acked(id, seq);
    }
}
