//! The live Prometheus endpoint (`--metrics 127.0.0.1:9464`): a tiny HTTP
//! server on a thread that renders the observer's current whole-run report
//! with the prometheus crate's TextEncoder on every scrape. What was not
//! measured (a phase without samples, CPU without a sample) has no series.

use crate::observe_summary::ObserverReport;
use prometheus::{Encoder, Gauge, GaugeVec, Opts, Registry, TextEncoder};
use std::{
    io::{Read, Write},
    net::{SocketAddr, TcpListener},
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc,
    },
    thread::JoinHandle,
    time::Duration,
};

/// Renders a report as Prometheus text exposition.
pub fn render(r: &ObserverReport) -> String {
    let reg = Registry::new();
    let gauge = |name: &str, help: &str, v: f64| {
        let g = Gauge::with_opts(Opts::new(name, help)).expect("valid metric name");
        g.set(v);
        reg.register(Box::new(g)).expect("unique metric");
    };
    let o = &r.observer;
    let phase = GaugeVec::new(
        Opts::new("pushscope_phase_ms", "Connection phase quantiles (ms)"),
        &["phase", "quantile"],
    )
    .expect("valid metric");
    let count = GaugeVec::new(
        Opts::new(
            "pushscope_phase_count",
            "Connections that completed the phase",
        ),
        &["phase"],
    )
    .expect("valid metric");
    for (name, p) in [
        ("accept_wait", &o.phases_ms.accept_wait),
        ("tls_handshake", &o.phases_ms.tls_handshake),
        ("ws_upgrade", &o.phases_ms.ws_upgrade),
        ("first_push", &o.phases_ms.first_push),
        ("lifetime", &o.phases_ms.lifetime),
    ] {
        let Some(p) = p else {
            count.with_label_values(&[name]).set(0.0);
            continue;
        };
        for (q, v) in [
            ("0.5", p.p50),
            ("0.9", p.p90),
            ("0.99", p.p99),
            ("1", p.max),
        ] {
            phase.with_label_values(&[name, q]).set(v);
        }
        count.with_label_values(&[name]).set(p.count as f64);
    }
    reg.register(Box::new(phase)).expect("unique metric");
    reg.register(Box::new(count)).expect("unique metric");
    let c = &o.connections;
    gauge(
        "pushscope_connections_accepted",
        "Accepted connections",
        c.accepted as f64,
    );
    gauge(
        "pushscope_connections_closed_local",
        "Closed by the server first",
        c.closed_local as f64,
    );
    gauge(
        "pushscope_connections_closed_peer",
        "Closed by the peer first",
        c.closed_peer as f64,
    );
    gauge(
        "pushscope_connections_reset",
        "Ended by RST",
        c.reset as f64,
    );
    gauge(
        "pushscope_connections_upgrade_refused",
        "Plain WebSocket upgrades answered with another status than 101",
        c.upgrade_refused as f64,
    );
    gauge(
        "pushscope_connections_open",
        "Accepted and still open",
        r.details.open_connections as f64,
    );
    gauge(
        "pushscope_tcp_retransmits",
        "Retransmitted segments",
        o.tcp.retransmits as f64,
    );
    gauge(
        "pushscope_tcp_resets",
        "RSTs sent or received",
        o.tcp.resets as f64,
    );
    gauge(
        "pushscope_fd_open_peak",
        "Peak open fds (1 Hz)",
        o.fd.open_peak as f64,
    );
    gauge("pushscope_fd_limit", "RLIMIT_NOFILE", o.fd.limit as f64);
    gauge("pushscope_fd_emfile", "EMFILE failures", o.fd.emfile as f64);
    gauge("pushscope_fd_enfile", "ENFILE failures", o.fd.enfile as f64);
    if let Some(v) = o.target.cpu_peak_pct {
        gauge(
            "pushscope_target_cpu_peak_pct",
            "Peak CPU (% of one core)",
            v,
        );
    }
    if let Some(v) = o.target.cpu_cores_usable {
        gauge(
            "pushscope_target_cpu_cores_usable",
            "Cores the target may use (affinity, cgroup cpu.max)",
            v,
        );
    }
    if let Some(v) = o.target.rss_peak_bytes {
        gauge("pushscope_target_rss_peak_bytes", "Peak RSS", v as f64);
    }
    if let Some(v) = o.target.threads_peak {
        gauge("pushscope_target_threads_peak", "Peak threads", v as f64);
    }
    if let Some(v) = o.coverage.pct {
        gauge(
            "pushscope_observer_coverage_pct",
            "Accepted connections tracked by the probes (%)",
            v,
        );
    }
    gauge(
        "pushscope_tls_failed",
        "TLS handshakes closed before completing",
        o.tls.failed as f64,
    );
    gauge(
        "pushscope_ringbuf_drops",
        "Events the kernel could not deliver",
        o.drops as f64,
    );
    let out = GaugeVec::new(
        Opts::new("pushscope_outbound", "Outbound connects per destination"),
        &["dest", "what"],
    )
    .expect("valid metric");
    for (d, v) in &o.outbound {
        out.with_label_values(&[d, "count"]).set(v.count as f64);
        out.with_label_values(&[d, "errors"]).set(v.errors as f64);
        if let Some(p99) = v.connect_p99_ms {
            out.with_label_values(&[d, "connect_p99_ms"]).set(p99);
        }
    }
    reg.register(Box::new(out)).expect("unique metric");
    if !r.leg_p99_ms.is_empty() {
        let legs = GaugeVec::new(
            Opts::new(
                "pushscope_message_leg_p99_ms",
                "Message-path leg p99 of each judged stage (sampled connections, ms)",
            ),
            &["stage", "leg"],
        )
        .expect("valid metric");
        for (stage, leg, v) in &r.leg_p99_ms {
            legs.with_label_values(&[stage, leg]).set(*v);
        }
        reg.register(Box::new(legs)).expect("unique metric");
    }
    let mut buf = Vec::new();
    TextEncoder::new()
        .encode(&reg.gather(), &mut buf)
        .expect("text encoding to a Vec cannot fail");
    String::from_utf8(buf).expect("prometheus text is UTF-8")
}

/// A running endpoint; dropping it stops the thread.
pub struct MetricsServer {
    pub addr: SocketAddr,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl MetricsServer {
    /// Serves `report()` on every request to `addr`.
    pub fn start(
        addr: SocketAddr,
        report: impl Fn() -> ObserverReport + Send + 'static,
    ) -> std::io::Result<MetricsServer> {
        let listener = TcpListener::bind(addr)?;
        listener.set_nonblocking(true)?;
        let addr = listener.local_addr()?;
        let stop = Arc::new(AtomicBool::new(false));
        let stop2 = stop.clone();
        let thread = std::thread::spawn(move || {
            while !stop2.load(Ordering::Relaxed) {
                match listener.accept() {
                    Ok((mut s, _)) => {
                        let _ = s.set_nonblocking(false);
                        let _ = s.set_read_timeout(Some(Duration::from_secs(2)));
                        let mut req = [0u8; 1024];
                        let _ = s.read(&mut req);
                        let body = render(&report());
                        let _ = write!(
                            s,
                            "HTTP/1.1 200 OK\r\nContent-Type: text/plain; version=0.0.4\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                            body.len()
                        );
                    }
                    Err(_) => std::thread::sleep(Duration::from_millis(50)),
                }
            }
        });
        Ok(MetricsServer {
            addr,
            stop,
            thread: Some(thread),
        })
    }
}

impl Drop for MetricsServer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn serves_the_report_over_http() {
        let mut r = ObserverReport::default();
        r.observer.connections.accepted = 7;
        r.observer.phases_ms.accept_wait = Some(crate::observe_summary::PhaseStats {
            p99: 1.5,
            ..Default::default()
        });
        let srv = MetricsServer::start("127.0.0.1:0".parse().unwrap(), move || r.clone()).unwrap();
        let mut s = std::net::TcpStream::connect(srv.addr).unwrap();
        s.write_all(b"GET /metrics HTTP/1.1\r\n\r\n").unwrap();
        let mut body = String::new();
        s.read_to_string(&mut body).unwrap();
        assert!(body.contains("pushscope_connections_accepted 7"), "{body}");
        assert!(body.contains("pushscope_phase_ms{phase=\"accept_wait\",quantile=\"0.99\"} 1.5"));
    }
}
