//! One WebSocket subscriber connection: replay, live push, cumulative ACKs,
//! heartbeats and protocol enforcement, in a single task.
//!
//! The task polls everything itself (one `poll_fn`) on the unsplit
//! `WebSocketStream`: reads (ACKs, pongs, pings answered by tungstenite),
//! writes drained from the subscriber's bounded queue in batches with one
//! flush, the heartbeat deadline, and the overflow flag set by the fan-out.
//! Nothing here can block on a client that stops reading: the queue bound
//! and the heartbeat deadline both end the connection.

use std::{
    collections::VecDeque,
    future::Future,
    pin::Pin,
    sync::{atomic::Ordering, Arc},
    task::{Context, Poll},
    time::Duration,
};

use futures_util::{Sink, Stream};
use tokio::{
    io::{AsyncRead, AsyncWrite},
    time::{Instant, Sleep},
};
use tokio_tungstenite::{
    tungstenite::{
        error::ProtocolError,
        protocol::{frame::coding::CloseCode, CloseFrame, Role, WebSocketConfig},
        Error as WsError, Message,
    },
    WebSocketStream,
};

use crate::{
    channel::{Channel, Hub, Msg, Replay, Subscriber, Subscription},
    config::MAX_CLIENT_FRAME,
    metrics::Metrics,
};

/// Small buffers: tungstenite's 128 KiB default read buffer per connection
/// would alone exceed the 16 KiB/connection budget (tungstenite-rs #480).
pub fn ws_config() -> WebSocketConfig {
    WebSocketConfig::default()
        .read_buffer_size(1024)
        .write_buffer_size(16 * 1024)
        .max_write_buffer_size(160 * 1024)
        .max_message_size(Some(MAX_CLIENT_FRAME))
        .max_frame_size(Some(MAX_CLIENT_FRAME))
}

/// Frames written per poll before yielding to other connections.
const WRITE_BUDGET: usize = 512;
/// Frames read per poll before yielding.
const READ_BUDGET: usize = 64;

/// Why a connection ended.
#[derive(Debug)]
enum Exit {
    /// Client closed (close frame or EOF) or the socket failed.
    Gone,
    ClientClosed,
    SlowConsumer,
    HeartbeatTimeout,
    /// The server is stopping: close 1001 so clients know to resume elsewhere/later.
    Shutdown,
    /// Protocol violation: close with this code.
    Malformed(CloseCode, &'static str),
}

#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct Ack {
    ack: u64,
}

struct Conn<S> {
    ws: WebSocketStream<S>,
    sub: Arc<Subscriber>,
    replay: Replay,
    pending: VecDeque<Arc<Msg>>,
    /// Highest seq written to the socket; never write one at or below it.
    sent_seq: u64,
    acked: u64,
    heartbeat: Duration,
    last_heard: Instant,
    next_ping: Instant,
    ping_due: bool,
    timer: Pin<Box<Sleep>>,
    metrics: Arc<Metrics>,
    channel: Arc<Channel>,
    hub: Arc<Hub>,
}

/// Serves a subscriber on an upgraded stream until it ends.
#[allow(clippy::too_many_arguments)] // one call site, all distinct roles
pub async fn serve<S>(
    io: S,
    leftover: Vec<u8>,
    hub: Arc<Hub>,
    channel: Arc<Channel>,
    subscription: Subscription,
    last_seq: Option<u64>,
    heartbeat: Duration,
    metrics: Arc<Metrics>,
) where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let ws = if leftover.is_empty() {
        WebSocketStream::from_raw_socket(io, Role::Server, Some(ws_config())).await
    } else {
        WebSocketStream::from_partially_read(io, leftover, Role::Server, Some(ws_config())).await
    };
    metrics.connections.inc();
    metrics.connections_total.inc();
    if last_seq.is_some() {
        metrics.resumes.inc();
    }
    let sub_id = subscription.sub.id;
    let now = Instant::now();
    let mut conn = Conn {
        ws,
        sub: subscription.sub,
        replay: subscription.replay,
        pending: VecDeque::new(),
        sent_seq: last_seq.unwrap_or(0),
        acked: 0,
        heartbeat,
        last_heard: now,
        next_ping: now + heartbeat,
        ping_due: false,
        timer: Box::pin(tokio::time::sleep_until(now + heartbeat)),
        metrics: metrics.clone(),
        channel: channel.clone(),
        hub: hub.clone(),
    };
    let exit = std::future::poll_fn(|cx| conn.poll(cx)).await;
    let unsent = conn.pending.len() + conn.replay.remaining();
    channel.unsubscribe(&conn.sub, unsent);
    metrics.connections.dec();
    match exit {
        Exit::SlowConsumer => {
            // Counted by the fan-out; the socket is full, so no close frame.
            log::debug!("subscriber {sub_id}: slow consumer, disconnected");
        }
        Exit::HeartbeatTimeout => {
            metrics.heartbeat_timeouts.inc();
            log::debug!("subscriber {sub_id}: silent for 2 heartbeats, disconnected");
        }
        Exit::Malformed(code, reason) => {
            metrics.malformed_frames.inc();
            let frame = CloseFrame {
                code,
                reason: reason.into(),
            };
            let _ = tokio::time::timeout(Duration::from_secs(1), conn.ws.close(Some(frame))).await;
        }
        Exit::Shutdown => {
            let frame = CloseFrame {
                code: CloseCode::Away,
                reason: "server shutting down: reconnect with last_seq".into(),
            };
            let _ = tokio::time::timeout(Duration::from_secs(1), conn.ws.close(Some(frame))).await;
        }
        Exit::ClientClosed => {
            // Flush tungstenite's queued close reply.
            let _ = tokio::time::timeout(
                Duration::from_secs(1),
                std::future::poll_fn(|cx| Pin::new(&mut conn.ws).poll_flush(cx)),
            )
            .await;
        }
        Exit::Gone => {}
    }
    drop(conn);
    hub.release(channel);
}

fn read_error(e: WsError) -> Exit {
    match e {
        WsError::Capacity(_) => Exit::Malformed(CloseCode::Size, "frame too large"),
        // A client vanishing without a close frame is not malformed input.
        WsError::Protocol(ProtocolError::ResetWithoutClosingHandshake) => Exit::Gone,
        WsError::Protocol(_) => Exit::Malformed(CloseCode::Protocol, "protocol violation"),
        WsError::Utf8 => Exit::Malformed(CloseCode::Invalid, "text frame is not UTF-8"),
        _ => Exit::Gone,
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> Conn<S> {
    fn poll(&mut self, cx: &mut Context<'_>) -> Poll<Exit> {
        self.sub.waker.register(cx.waker());
        if self.sub.overflowed() {
            return Poll::Ready(Exit::SlowConsumer);
        }
        if self.hub.shutting_down() {
            return Poll::Ready(Exit::Shutdown);
        }
        if let Poll::Ready(exit) = self.poll_timer(cx) {
            return Poll::Ready(exit);
        }
        if let Poll::Ready(exit) = self.poll_read(cx) {
            return Poll::Ready(exit);
        }
        if let Poll::Ready(exit) = self.poll_write(cx) {
            return Poll::Ready(exit);
        }
        Poll::Pending
    }

    /// Heartbeat: one timer for both the next ping and the silence deadline.
    fn poll_timer(&mut self, cx: &mut Context<'_>) -> Poll<Exit> {
        while self.timer.as_mut().poll(cx).is_ready() {
            let now = Instant::now();
            let deadline = self.last_heard + 2 * self.heartbeat;
            if now >= deadline {
                return Poll::Ready(Exit::HeartbeatTimeout);
            }
            if now >= self.next_ping {
                self.ping_due = true;
                self.next_ping = now + self.heartbeat;
            }
            let wake = deadline.min(self.next_ping);
            self.timer.as_mut().reset(wake);
        }
        Poll::Pending
    }

    fn poll_read(&mut self, cx: &mut Context<'_>) -> Poll<Exit> {
        for _ in 0..READ_BUDGET {
            match Pin::new(&mut self.ws).poll_next(cx) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(None) => return Poll::Ready(Exit::Gone),
                Poll::Ready(Some(Err(e))) => return Poll::Ready(read_error(e)),
                Poll::Ready(Some(Ok(msg))) => {
                    self.last_heard = Instant::now();
                    match msg {
                        Message::Text(t) => {
                            let Ok(Ack { ack }) = serde_json::from_str::<Ack>(t.as_str()) else {
                                return Poll::Ready(Exit::Malformed(
                                    CloseCode::Invalid,
                                    "expected {\"ack\":N}",
                                ));
                            };
                            if ack > self.sent_seq {
                                return Poll::Ready(Exit::Malformed(
                                    CloseCode::Policy,
                                    "ack above the last delivered seq",
                                ));
                            }
                            self.acked = self.acked.max(ack);
                            self.metrics.acks.inc();
                        }
                        Message::Binary(_) => {
                            return Poll::Ready(Exit::Malformed(
                                CloseCode::Unsupported,
                                "binary frames are not part of the protocol",
                            ))
                        }
                        // tungstenite queues the pong; poll_write flushes it.
                        Message::Ping(_) | Message::Pong(_) | Message::Frame(_) => {}
                        Message::Close(_) => return Poll::Ready(Exit::ClientClosed),
                    }
                }
            }
        }
        // Budget used up with data still readable: come back soon.
        cx.waker().wake_by_ref();
        Poll::Pending
    }

    fn next_msg(&mut self) -> Option<Arc<Msg>> {
        loop {
            let m = if let Some(m) = self.replay.pop(&self.channel) {
                self.metrics.replays.inc();
                m
            } else {
                if self.pending.is_empty() {
                    self.sub.drain_into(&mut self.pending);
                }
                self.pending.pop_front()?
            };
            if m.seq > self.sent_seq {
                return Some(m);
            }
            // Below a resume point beyond the channel head: already seen.
            self.channel.backlog.dec();
        }
    }

    fn poll_write(&mut self, cx: &mut Context<'_>) -> Poll<Exit> {
        let mut wrote = 0usize;
        let mut budget_left = true;
        loop {
            match Pin::new(&mut self.ws).poll_ready(cx) {
                Poll::Pending => break,
                Poll::Ready(Err(_)) => return Poll::Ready(Exit::Gone),
                Poll::Ready(Ok(())) => {}
            }
            if self.ping_due {
                self.ping_due = false;
                if Pin::new(&mut self.ws)
                    .start_send(Message::Ping(Default::default()))
                    .is_err()
                {
                    return Poll::Ready(Exit::Gone);
                }
                continue;
            }
            if wrote >= WRITE_BUDGET {
                budget_left = false;
                break;
            }
            let Some(m) = self.next_msg() else { break };
            self.sent_seq = m.seq;
            wrote += 1;
            if Pin::new(&mut self.ws)
                .start_send(Message::Text(m.frame.clone()))
                .is_err()
            {
                return Poll::Ready(Exit::Gone);
            }
        }
        if wrote > 0 {
            self.metrics.deliveries.inc_by(wrote as u64);
            self.channel.backlog.sub(wrote as i64);
        }
        self.sub.unsent.store(self.pending.len(), Ordering::Relaxed);
        if let Poll::Ready(Err(_)) = Pin::new(&mut self.ws).poll_flush(cx) {
            return Poll::Ready(Exit::Gone);
        }
        if !budget_left {
            cx.waker().wake_by_ref();
        }
        Poll::Pending
    }
}
