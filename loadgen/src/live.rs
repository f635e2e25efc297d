//! Live view of a run: an indicatif spinner line on a TTY, plain periodic
//! lines otherwise (CI logs), and an optional Prometheus text endpoint
//! (`--metrics 127.0.0.1:9465`) with the same figures.

use crate::{pool::LiveSnap, report::StageReport, scenario::Scenario};
use std::{
    io::IsTerminal,
    sync::{Arc, Mutex},
    time::Duration,
};
use tokio::{io::AsyncWriteExt, time::Instant};

#[derive(Default, Clone)]
struct Figures {
    stage: u32,
    target: usize,
    snap: LiveSnap,
    msgs_per_s: f64,
    /// p99 of the current stage so far (highest over lanes and shards).
    p99_ms: Option<f64>,
    lost: u64,
    duplicates: u64,
}

pub struct Live {
    enabled: bool,
    bar: Option<indicatif::ProgressBar>,
    interval: Duration,
    next: Instant,
    last: Option<(Instant, u64)>,
    figures: Arc<Mutex<Figures>>,
    server: Option<tokio::task::JoinHandle<()>>,
}

impl Live {
    pub fn new(sc: &Scenario, enabled: bool) -> Live {
        let tty = enabled && std::io::stderr().is_terminal();
        let bar = tty.then(|| {
            let b = indicatif::ProgressBar::new_spinner();
            b.enable_steady_tick(Duration::from_millis(250));
            b
        });
        let figures = Arc::new(Mutex::new(Figures::default()));
        let server = sc
            .metrics
            .map(|addr| tokio::spawn(serve(addr, figures.clone())));
        let interval = if tty {
            Duration::from_millis(500)
        } else {
            sc.progress_interval
        };
        Live {
            enabled,
            bar,
            interval,
            next: Instant::now() + interval,
            last: None,
            figures,
            server,
        }
    }

    pub fn due(&self, now: Instant) -> bool {
        (self.enabled || self.server.is_some()) && now >= self.next
    }

    pub fn stage(&mut self, stage: u32, target: usize) {
        let mut f = self.figures.lock().unwrap_or_else(|p| p.into_inner());
        f.stage = stage;
        f.target = target;
    }

    /// The endpoint's gauges between progress lines (every runner tick):
    /// a scrape or a bench waiting for N connections sees them within ~1 s,
    /// not one progress interval (5 s) late.
    pub fn refresh(&mut self, snap: LiveSnap) {
        if self.server.is_some() {
            self.figures.lock().unwrap_or_else(|p| p.into_inner()).snap = snap;
        }
    }

    pub fn update(&mut self, snap: LiveSnap, last_report: Option<&StageReport>) {
        let now = Instant::now();
        self.next = now + self.interval;
        let rate = match self.last {
            Some((t, r)) => {
                (snap.received.saturating_sub(r)) as f64 / (now - t).as_secs_f64().max(1e-3)
            }
            None => 0.0,
        };
        self.last = Some((now, snap.received));
        let mut f = self.figures.lock().unwrap_or_else(|p| p.into_inner());
        f.snap = snap;
        f.msgs_per_s = rate;
        f.p99_ms = (snap.p99_us > 0).then(|| snap.p99_us as f64 / 1000.0);
        if let Some(r) = last_report {
            f.lost = r.messages.lost;
            f.duplicates = r.messages.duplicates;
        }
        if !self.enabled {
            return;
        }
        let line = format!(
            "stage {}: {}/{} connected, {:.0} msgs/s, p99 so far {} ms, {} errors",
            f.stage,
            f.snap.connected,
            f.target,
            f.msgs_per_s,
            f.p99_ms.map_or("-".into(), |p| format!("{p:.1}")),
            f.snap.errors
        );
        match &self.bar {
            Some(b) => b.set_message(line),
            None => eprintln!("pushscope load: {line}"),
        }
    }

    pub fn println(&self, line: &str) {
        match &self.bar {
            Some(b) => b.println(line),
            None if self.enabled => eprintln!("pushscope load: {line}"),
            None => {}
        }
    }

    pub fn finish(&mut self) {
        if let Some(b) = self.bar.take() {
            b.finish_and_clear();
        }
        if let Some(s) = self.server.take() {
            s.abort();
        }
    }
}

fn exposition(f: &Figures) -> String {
    format!(
        "# HELP pushscope_load_stage Current stage index.\n# TYPE pushscope_load_stage gauge\npushscope_load_stage {}\n\
# HELP pushscope_load_target_connections Connections the current stage holds.\n# TYPE pushscope_load_target_connections gauge\npushscope_load_target_connections {}\n\
# HELP pushscope_load_connections Open WebSocket connections.\n# TYPE pushscope_load_connections gauge\npushscope_load_connections {}\n\
# HELP pushscope_load_received_total Messages received by all subscribers.\n# TYPE pushscope_load_received_total counter\npushscope_load_received_total {}\n\
# HELP pushscope_load_errors_total Failed connects and unexpected disconnects.\n# TYPE pushscope_load_errors_total counter\npushscope_load_errors_total {}\n\
# HELP pushscope_load_received_per_second Receive rate over the last interval.\n# TYPE pushscope_load_received_per_second gauge\npushscope_load_received_per_second {:.1}\n\
# HELP pushscope_load_lost Lost messages in the last closed stage.\n# TYPE pushscope_load_lost gauge\npushscope_load_lost {}\n\
# HELP pushscope_load_latency_p99_ms End-to-end latency p99 of the current stage so far.\n# TYPE pushscope_load_latency_p99_ms gauge\npushscope_load_latency_p99_ms {}\n",
        f.stage, f.target, f.snap.connected, f.snap.received, f.snap.errors, f.msgs_per_s, f.lost,
        f.p99_ms.unwrap_or(f64::NAN)
    )
}

async fn serve(addr: std::net::SocketAddr, figures: Arc<Mutex<Figures>>) {
    let listener = match tokio::net::TcpListener::bind(addr).await {
        Ok(l) => l,
        Err(e) => {
            eprintln!("pushscope load: cannot serve metrics on {addr}: {e}");
            return;
        }
    };
    loop {
        let Ok((mut sock, _)) = listener.accept().await else {
            continue;
        };
        let body = exposition(&figures.lock().unwrap_or_else(|p| p.into_inner()));
        tokio::spawn(async move {
            let mut buf = [0u8; 1024];
            let _ = tokio::time::timeout(
                Duration::from_secs(2),
                tokio::io::AsyncReadExt::read(&mut sock, &mut buf),
            )
            .await;
            let resp = format!(
                "HTTP/1.1 200 OK\r\ncontent-type: text/plain; version=0.0.4\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                body.len()
            );
            let _ = sock.write_all(resp.as_bytes()).await;
        });
    }
}
