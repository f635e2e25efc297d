//! loadgen: pushscope's WebSocket load generator. Used by `pushscope load`
//! and `pushscope run`.
//!
//! Library use: build a [`Scenario`] (from flags via [`LoadArgs::scenario`]
//! or from a TOML file), then [`runner::run`] it with a callback that sees
//! every stage start and every judged stage ([`StageReport`], the per-stage
//! `summary.json` shape) with its `Instant`s.

pub mod accounting;
pub mod client;
pub mod lane;
pub mod live;
pub mod marker;
pub mod net;
pub mod oplog;
pub mod outcome;
pub mod pool;
pub mod protocol;
pub mod publisher;
pub mod report;
pub mod runner;
pub mod scenario;
pub mod shard;
pub mod tls;
pub mod verify;

pub use report::StageReport;
pub use runner::{run, LoadError, RunOptions, RunReport, StageEvent};
pub use scenario::Scenario;

use outcome::{usage, Outcome};
use scenario::{Overrides, ProtocolKind, ScenarioFile};
use std::path::PathBuf;

/// Arguments of `pushscope load`.
#[derive(Debug, Default, clap::Args)]
pub struct LoadArgs {
    /// Scenario TOML file (same keys as the flags, snake_case); flags override it.
    #[arg(long)]
    pub scenario: Option<PathBuf>,
    /// WebSocket URL of the server under test (ws:// or wss://; `{channel}` is substituted).
    #[arg(long)]
    pub url: Option<String>,
    /// Publish URL template (http(s)://…/{channel}); derived from --url for pushscope.
    #[arg(long)]
    pub publish_url: Option<String>,
    /// Protocol of the server under test.
    #[arg(long, value_enum)]
    pub protocol: Option<ProtocolKind>,
    /// Number of channels; subscribers are spread over them round-robin.
    #[arg(long)]
    pub channels: Option<u32>,
    /// Total scheduled publish rate over all channels, messages per second.
    #[arg(long)]
    pub rate: Option<f64>,
    /// Size of each message body in bytes (the marker is never cut).
    #[arg(long)]
    pub payload_bytes: Option<usize>,
    /// Stages CONNECTIONS:HOLD,… (default 1000:15m,5000:15m,10000:15m,20000:15m).
    #[arg(long)]
    pub stages: Option<String>,
    /// New connections per second while ramping, e.g. 2000/s.
    #[arg(long)]
    pub connect_rate: Option<String>,
    /// WebSocket ping interval (default 5s).
    #[arg(long)]
    pub heartbeat: Option<String>,
    /// Missed pongs before a client reconnects (default 2).
    #[arg(long)]
    pub max_missed: Option<u32>,
    /// Wait after a stage before its open gaps count as lost (default 2s).
    #[arg(long)]
    pub grace: Option<String>,
    /// Output directory for summary.json.
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// Write publish and receive/ACK logs here (read by `pushscope verify`).
    #[arg(long)]
    pub log_dir: Option<PathBuf>,
    /// Client source addresses, e.g. 127.0.0.1-127.0.0.8.
    #[arg(long)]
    pub source_addrs: Option<String>,
    /// Connections per process before the run is sharded over worker processes.
    #[arg(long)]
    pub shard_cap: Option<usize>,
    /// HTTP connections used to publish.
    #[arg(long)]
    pub publishers: Option<usize>,
    /// CA certificate (PEM) for wss://.
    #[arg(long)]
    pub ca_cert: Option<PathBuf>,
    /// Client certificate (PEM) for mTLS.
    #[arg(long)]
    pub client_cert: Option<PathBuf>,
    /// Client private key (PEM) for mTLS.
    #[arg(long)]
    pub client_key: Option<PathBuf>,
    /// Generic protocol: frame sent after the upgrade ({channel} substituted).
    #[arg(long)]
    pub subscribe_frame: Option<String>,
    /// Generic protocol: ACK frame ({seq}, {msg_id}, {channel} substituted).
    #[arg(long)]
    pub ack_frame: Option<String>,
    /// Serve live Prometheus metrics here, e.g. 127.0.0.1:9465.
    #[arg(long)]
    pub metrics: Option<String>,
    /// Interval of the plain live lines when stderr is not a TTY (default 5s).
    #[arg(long)]
    pub progress_interval: Option<String>,
    /// Internal: run as a worker process of a sharded run.
    #[arg(long, hide = true)]
    pub shard_worker: bool,
}

impl LoadArgs {
    /// The validated scenario these flags (and their --scenario file) describe.
    pub fn scenario(&self) -> anyhow::Result<Scenario> {
        let file = match &self.scenario {
            Some(p) => ScenarioFile::load(p).map_err(|e| usage(e.to_string()))?,
            None => ScenarioFile::default(),
        };
        let o = Overrides {
            url: self.url.clone(),
            publish_url: self.publish_url.clone(),
            protocol: self.protocol,
            channels: self.channels,
            rate: self.rate,
            payload_bytes: self.payload_bytes,
            stages: self.stages.clone(),
            connect_rate: self.connect_rate.clone(),
            heartbeat: self.heartbeat.clone(),
            max_missed: self.max_missed,
            grace: self.grace.clone(),
            out: self.out.clone(),
            log_dir: self.log_dir.clone(),
            source_addrs: self.source_addrs.clone(),
            shard_cap: self.shard_cap,
            publishers: self.publishers,
            ca_cert: self.ca_cert.clone(),
            client_cert: self.client_cert.clone(),
            client_key: self.client_key.clone(),
            subscribe_frame: self.subscribe_frame.clone(),
            ack_frame: self.ack_frame.clone(),
            metrics: self.metrics.clone(),
            progress_interval: self.progress_interval.clone(),
        };
        Scenario::build(file, o).map_err(|e| usage(e.to_string()))
    }
}

/// Arguments of `pushscope verify`.
#[derive(Debug, clap::Args)]
pub struct VerifyArgs {
    /// Directory written by `pushscope load --log-dir`.
    #[arg(long)]
    pub log_dir: Option<PathBuf>,
    /// Server-side list of msg_ids (one per line) to compare with the publish log.
    #[arg(long)]
    pub server_ids: Option<PathBuf>,
}

pub fn run_load(args: LoadArgs) -> anyhow::Result<Outcome> {
    if args.shard_worker {
        shard::worker_main()?;
        return Ok(Outcome::Completed);
    }
    let sc = args.scenario()?;
    let out = sc
        .out
        .clone()
        .unwrap_or_else(|| PathBuf::from("pushscope-load"));
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    let opts = RunOptions {
        worker: None,
        live: true,
    };
    // Judged stages are kept as they come, so a run that fails midway
    // still leaves what it measured (marked incomplete).
    let mut judged: Vec<StageReport> = Vec::new();
    let result = rt.block_on(runner::run(&sc, opts, &mut |ev| {
        if let StageEvent::Ended { report, .. } = ev {
            judged.push(report.clone());
        }
    }));
    let (stages, warnings, complete) = match &result {
        Ok(r) => (r.stages.clone(), r.warnings.clone(), true),
        Err(e) => (judged, vec![format!("the run stopped early: {e}")], false),
    };
    if complete || !stages.is_empty() {
        let summary = report::Summary {
            schema: 1,
            complete,
            scenario: &sc,
            stages: &stages,
            warnings: &warnings,
        };
        let path = report::write_summary(&out, &summary)?;
        for w in &warnings {
            eprintln!("pushscope load: warning: {w}");
        }
        eprintln!("pushscope load: summary written to {}", path.display());
    }
    result.map_err(anyhow::Error::new)?;
    Ok(Outcome::Completed)
}

pub fn run_verify(args: VerifyArgs) -> anyhow::Result<Outcome> {
    let dir = args.log_dir.ok_or_else(|| {
        usage("pass --log-dir DIR (the directory given to `pushscope load --log-dir`)")
    })?;
    let result = verify::verify(&dir, args.server_ids.as_deref())?;
    print!("{}", result.render());
    Ok(if result.is_clean() {
        Outcome::Completed
    } else {
        Outcome::Rejected
    })
}
