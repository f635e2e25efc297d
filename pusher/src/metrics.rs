//! Prometheus metrics of the pusher, served as text on `GET /metrics`.
//! Names are part of protocol v1 (see PROTOCOL.md): tests and the load
//! generator read them.

use prometheus::{
    Encoder, IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts, Registry, TextEncoder,
};

pub struct Metrics {
    registry: Registry,
    /// Open WebSocket connections.
    pub connections: IntGauge,
    /// WebSocket connections accepted since start.
    pub connections_total: IntCounter,
    /// Messages accepted by `POST /publish` (answered 200).
    pub publishes: IntCounter,
    /// Publishes answered with an earlier message (same X-Msg-Id retained).
    pub duplicate_publishes: IntCounter,
    /// Message frames written to subscribers (live and replayed).
    pub deliveries: IntCounter,
    /// Valid `{"ack":N}` frames received.
    pub acks: IntCounter,
    /// Messages replayed from the retained window on resume.
    pub replays: IntCounter,
    /// Subscriptions that asked for a replay (`last_seq` given).
    pub resumes: IntCounter,
    /// Resumes naming another history: replayed from the oldest retained seq.
    pub history_mismatches: IntCounter,
    /// `pusher_info{history}` = 1: the history id of this process.
    pub info: IntGaugeVec,
    /// Messages queued for subscribers but not yet written, per channel.
    pub push_queue_length: IntGaugeVec,
    /// Clients disconnected because their send queue overflowed.
    pub slow_consumer_drops: IntCounter,
    /// Clients disconnected after 2 silent heartbeat intervals.
    pub heartbeat_timeouts: IntCounter,
    /// Client frames that broke the protocol (connection closed with a code).
    pub malformed_frames: IntCounter,
    /// HTTP answers by status code.
    pub http_responses: IntCounterVec,
    /// fdatasync calls of the channel logs.
    pub fsyncs: IntCounter,
    /// Torn or corrupt log tails repaired at start.
    pub log_repairs: IntCounter,
    /// TLS handshakes that failed (including clients without a valid certificate under mTLS).
    pub tls_handshake_failures: IntCounter,
}

fn counter(r: &Registry, name: &str, help: &str) -> IntCounter {
    let c = IntCounter::new(name, help).expect("valid metric");
    r.register(Box::new(c.clone())).expect("unique metric");
    c
}

impl Metrics {
    pub fn new() -> Metrics {
        let r = Registry::new();
        let connections = IntGauge::new("pusher_connections", "Open WebSocket connections")
            .expect("valid metric");
        r.register(Box::new(connections.clone()))
            .expect("unique metric");
        let push_queue_length = IntGaugeVec::new(
            Opts::new(
                "pusher_push_queue_length",
                "Messages queued for subscribers of a channel but not yet written to their sockets",
            ),
            &["channel"],
        )
        .expect("valid metric");
        r.register(Box::new(push_queue_length.clone()))
            .expect("unique metric");
        let http_responses = IntCounterVec::new(
            Opts::new(
                "pusher_http_responses_total",
                "HTTP responses by status code",
            ),
            &["code"],
        )
        .expect("valid metric");
        r.register(Box::new(http_responses.clone()))
            .expect("unique metric");
        let info = IntGaugeVec::new(
            Opts::new(
                "pusher_info",
                "Always 1; the history label is the id resumes must name (X-Pusher-History)",
            ),
            &["history"],
        )
        .expect("valid metric");
        r.register(Box::new(info.clone())).expect("unique metric");
        Metrics {
            connections,
            connections_total: counter(
                &r,
                "pusher_connections_total",
                "WebSocket connections accepted",
            ),
            publishes: counter(
                &r,
                "pusher_publishes_total",
                "Messages published (answered 200)",
            ),
            duplicate_publishes: counter(
                &r,
                "pusher_duplicate_publishes_total",
                "Publishes whose X-Msg-Id matched a retained message: answered with the original, not pushed again",
            ),
            deliveries: counter(
                &r,
                "pusher_deliveries_total",
                "Message frames written to subscribers, live and replayed",
            ),
            acks: counter(
                &r,
                "pusher_acks_total",
                "Cumulative client ACK frames received",
            ),
            replays: counter(
                &r,
                "pusher_replays_total",
                "Messages replayed from the retained window on resume",
            ),
            resumes: counter(
                &r,
                "pusher_resumes_total",
                "Subscriptions with last_seq (resume requests)",
            ),
            history_mismatches: counter(
                &r,
                "pusher_history_mismatches_total",
                "Resumes whose history differed from this pusher's: last_seq ignored, everything retained replayed",
            ),
            info,
            push_queue_length,
            slow_consumer_drops: counter(
                &r,
                "pusher_slow_consumer_drops_total",
                "Clients disconnected because their send queue overflowed",
            ),
            heartbeat_timeouts: counter(
                &r,
                "pusher_heartbeat_timeouts_total",
                "Clients disconnected after 2 silent heartbeat intervals",
            ),
            malformed_frames: counter(
                &r,
                "pusher_malformed_frames_total",
                "Client frames that broke the protocol; the connection was closed with a code",
            ),
            http_responses,
            fsyncs: counter(
                &r,
                "pusher_log_fsyncs_total",
                "fdatasync calls on channel logs",
            ),
            log_repairs: counter(
                &r,
                "pusher_log_repairs_total",
                "Torn or corrupt channel log tails truncated at start",
            ),
            tls_handshake_failures: counter(
                &r,
                "pusher_tls_handshake_failures_total",
                "Failed TLS handshakes (including rejected client certificates)",
            ),
            registry: r,
        }
    }

    /// The Prometheus text exposition of every metric.
    pub fn render(&self) -> String {
        let mut buf = Vec::new();
        TextEncoder::new()
            .encode(&self.registry.gather(), &mut buf)
            .expect("text encoding to a Vec cannot fail");
        String::from_utf8(buf).expect("text format is UTF-8")
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}
