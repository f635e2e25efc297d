//! Scenario: what a load run does (target, protocol, stages, publish rate,
//! heartbeats, outputs). Built from a TOML file (`--scenario`), overridden by
//! flags, validated once; unknown TOML keys are rejected by name so a typo
//! never silently changes a run.

use serde::{Deserialize, Serialize};
use std::{net::Ipv4Addr, path::PathBuf, time::Duration};

/// One step of the staircase: hold `connections` for `hold` once ramped.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Stage {
    pub connections: usize,
    #[serde(with = "dur_secs")]
    pub hold: Duration,
}

/// Wire protocol spoken with the server under test.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum ProtocolKind {
    /// Reference pusher v1: `last_seq` resume, cumulative `{"ack":N}`.
    Pushscope,
    /// NGINX nchan: WebSocket subscriber location, HTTP POST publisher location.
    Nchan,
    /// URL and frame templates given by the user.
    Generic,
}

/// A fully validated run description.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Scenario {
    /// Subscribe URL (`ws://` or `wss://`); may contain `{channel}`.
    pub url: String,
    /// Publish URL template (`http(s)://…{channel}`); derived for pushscope.
    pub publish_url: String,
    pub protocol: ProtocolKind,
    pub channels: u32,
    /// Total scheduled publish rate over all channels (msgs/s); 0 disables publishing.
    pub rate: f64,
    pub payload_bytes: usize,
    pub stages: Vec<Stage>,
    /// New connections per second while ramping (over all shards).
    pub connect_rate: f64,
    #[serde(with = "dur_secs")]
    pub heartbeat: Duration,
    pub max_missed: u32,
    /// Time after a stage ends before its open gaps count as lost.
    #[serde(with = "dur_secs")]
    pub grace: Duration,
    pub out: Option<PathBuf>,
    pub log_dir: Option<PathBuf>,
    /// Client source addresses, spread round-robin (IP_BIND_ADDRESS_NO_PORT).
    pub source_addrs: Vec<Ipv4Addr>,
    /// Connections one process holds before the run is sharded over workers.
    pub shard_cap: usize,
    /// HTTP connections used by the publisher (channels are pinned to one each).
    pub publishers: usize,
    pub ca_cert: Option<PathBuf>,
    pub client_cert: Option<PathBuf>,
    pub client_key: Option<PathBuf>,
    /// Generic protocol: frame sent after the upgrade (`{channel}` substituted).
    pub subscribe_frame: Option<String>,
    /// Generic protocol: ACK frame (`{seq}`, `{msg_id}`, `{channel}` substituted).
    pub ack_frame: Option<String>,
    /// Prometheus endpoint for the live view.
    pub metrics: Option<std::net::SocketAddr>,
    /// Seconds between live lines when stderr is not a TTY.
    #[serde(with = "dur_secs")]
    pub progress_interval: Duration,
    /// Bench floor (`pushscope-loadgen load --floor`): subscribers count
    /// the frames they receive and account for nothing.
    #[serde(default)]
    pub floor: bool,
    /// Faults scheduled in the stages (`[[faults]]`), validated.
    #[serde(default)]
    pub faults: Vec<crate::faults::Fault>,
    /// The emulated link between the load generator and the target
    /// (`--network`); `None`: the host's network as it is.
    #[serde(default)]
    pub network: Option<crate::link::NetworkSpec>,
    /// Runtime, not configuration: the network namespace sockets are
    /// created in while a link is up (set by the run, never serialized).
    #[serde(skip)]
    pub netns: Option<std::sync::Arc<crate::link::NetNs>>,
}

/// The TOML form: every key optional, unknown keys rejected.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ScenarioFile {
    pub url: Option<String>,
    pub publish_url: Option<String>,
    pub protocol: Option<ProtocolKind>,
    pub channels: Option<u32>,
    pub rate: Option<f64>,
    pub payload_bytes: Option<usize>,
    /// `"1000:60s,5000:60s"` or `["1000:60s", "5000:60s"]`.
    pub stages: Option<StagesValue>,
    pub connect_rate: Option<String>,
    pub heartbeat: Option<DurationValue>,
    pub max_missed: Option<u32>,
    pub grace: Option<DurationValue>,
    pub out: Option<PathBuf>,
    pub log_dir: Option<PathBuf>,
    pub source_addrs: Option<String>,
    pub shard_cap: Option<usize>,
    pub publishers: Option<usize>,
    pub ca_cert: Option<PathBuf>,
    pub client_cert: Option<PathBuf>,
    pub client_key: Option<PathBuf>,
    pub subscribe_frame: Option<String>,
    pub ack_frame: Option<String>,
    pub metrics: Option<String>,
    pub progress_interval: Option<DurationValue>,
    /// Shell command that starts the target again after a kill-restart fault.
    pub restart_cmd: Option<String>,
    /// Faults scheduled in the stages (see `faults::FaultFile`).
    pub faults: Option<Vec<crate::faults::FaultFile>>,
    /// `"rtt=2ms,jitter=0.3ms,loss=0.0001%"` or `"financial-backbone"`.
    pub network: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(untagged)]
pub enum StagesValue {
    One(String),
    Many(Vec<String>),
}

/// The financial default staircase: 1k → 5k → 10k → 20k, 15 min each.
pub const DEFAULT_STAGES: &str = "1000:15m,5000:15m,10000:15m,20000:15m";

#[derive(Debug, thiserror::Error)]
pub enum ScenarioError {
    #[error("{0}")]
    Invalid(String),
    #[error("cannot read scenario file {path}: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error("scenario file {path}: {msg}")]
    Toml { path: String, msg: String },
}

fn invalid(msg: impl Into<String>) -> ScenarioError {
    ScenarioError::Invalid(msg.into())
}

/// [`crate::duration::parse_duration`] with the scenario's error type.
pub fn parse_duration(s: &str) -> Result<Duration, ScenarioError> {
    crate::duration::parse_duration(s).map_err(ScenarioError::Invalid)
}

/// A duration key of the scenario file: `"15m"`, `"500ms"` or a bare
/// number of seconds (`grace = 2`, `grace = 2.5`).
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
pub enum DurationValue {
    Text(String),
    Secs(u64),
    SecsF(f64),
}

impl DurationValue {
    pub fn text(self) -> String {
        match self {
            DurationValue::Text(s) => s,
            DurationValue::Secs(n) => n.to_string(),
            DurationValue::SecsF(f) => f.to_string(),
        }
    }
}

/// Parses `2000/s`, `2000` (per second) or `120000/m`.
pub fn parse_rate(s: &str) -> Result<f64, ScenarioError> {
    let s = s.trim();
    let (num, per) = s.split_once('/').unwrap_or((s, "s"));
    let n: f64 = num
        .trim()
        .parse()
        .map_err(|_| invalid(format!("`{s}` is not a rate: write e.g. 2000/s")))?;
    let per_s = match per.trim() {
        "s" => n,
        "m" => n / 60.0,
        other => {
            return Err(invalid(format!(
                "rate `{s}` has unknown unit `/{other}`: use /s or /m"
            )))
        }
    };
    if !per_s.is_finite() || per_s <= 0.0 {
        return Err(invalid(format!("rate `{s}` must be positive")));
    }
    Ok(per_s)
}

/// Parses `1000:60s,5000:60s`.
pub fn parse_stages(s: &str) -> Result<Vec<Stage>, ScenarioError> {
    s.split(',')
        .filter(|p| !p.trim().is_empty())
        .map(|part| {
            let (c, d) = part.trim().split_once(':').ok_or_else(|| {
                invalid(format!(
                    "stage `{part}` must be CONNECTIONS:HOLD, e.g. 1000:60s"
                ))
            })?;
            let connections = c
                .trim()
                .parse()
                .map_err(|_| invalid(format!("stage `{part}`: `{c}` is not a connection count")))?;
            Ok(Stage {
                connections,
                hold: parse_duration(d)?,
            })
        })
        .collect()
}

/// Parses `127.0.0.1-127.0.0.8` or a comma list of IPv4 addresses.
pub fn parse_source_addrs(s: &str) -> Result<Vec<Ipv4Addr>, ScenarioError> {
    let bad = || {
        invalid(format!(
            "`{s}` is not a source address range: write e.g. 127.0.0.1-127.0.0.8"
        ))
    };
    if let Some((a, b)) = s.split_once('-') {
        let a: Ipv4Addr = a.trim().parse().map_err(|_| bad())?;
        let b: Ipv4Addr = b.trim().parse().map_err(|_| bad())?;
        let (a, b) = (u32::from(a), u32::from(b));
        if b < a || b - a > 65535 {
            return Err(bad());
        }
        return Ok((a..=b).map(Ipv4Addr::from).collect());
    }
    s.split(',')
        .map(|p| p.trim().parse().map_err(|_| bad()))
        .collect()
}

/// Flag values that override the scenario file (all optional: `None`
/// keeps the file's value or the default). Also the flags of `pushscope
/// load` and `pushscope run`.
#[derive(Debug, Default, Clone, clap::Args)]
pub struct Overrides {
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
    /// Stages CONNECTIONS:HOLD,… (default 1000:15m,5000:15m,10000:15m,20000:15m);
    /// HOLD like every duration: 12 (seconds), 500ms, 12s, 15m, 1h.
    #[arg(long)]
    pub stages: Option<String>,
    /// New connections per second while ramping, e.g. 2000/s.
    #[arg(long)]
    pub connect_rate: Option<String>,
    /// WebSocket ping interval (default 5s; durations: 12, 500ms, 12s, 15m, 1h).
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
    /// Shell command that starts the target again after a kill-restart
    /// fault (its output goes to restart-<n>.log in the output directory).
    #[arg(long)]
    pub restart_cmd: Option<String>,
    /// Emulated link to the target, e.g. "rtt=2ms,jitter=0.3ms,loss=0.0001%"
    /// (optional rate=100mbit) or the preset financial-backbone (root).
    #[arg(long)]
    pub network: Option<String>,
}

impl ScenarioFile {
    pub fn load(path: &std::path::Path) -> Result<Self, ScenarioError> {
        let text = std::fs::read_to_string(path).map_err(|source| ScenarioError::Read {
            path: path.display().to_string(),
            source,
        })?;
        toml::from_str(&text).map_err(|e| ScenarioError::Toml {
            path: path.display().to_string(),
            msg: e.to_string().trim().replace('\n', " "),
        })
    }
}

impl Scenario {
    /// Merges file and flags (flags win) and validates the result.
    pub fn build(file: ScenarioFile, o: Overrides) -> Result<Scenario, ScenarioError> {
        let url = o.url.or(file.url).ok_or_else(|| {
            invalid("no target: pass --url ws://HOST:PORT/… (or `url` in the scenario file)")
        })?;
        let protocol = o
            .protocol
            .or(file.protocol)
            .unwrap_or(ProtocolKind::Pushscope);
        if !(url.starts_with("ws://") || url.starts_with("wss://")) {
            return Err(invalid(format!(
                "--url `{url}` must start with ws:// or wss://"
            )));
        }
        let publish_url = match o.publish_url.or(file.publish_url) {
            Some(p) => p,
            None if protocol == ProtocolKind::Pushscope => {
                crate::protocol::pushscope::default_publish_url(&url)
                    .ok_or_else(|| invalid(format!("--url `{url}` has no host:port")))?
            }
            None => {
                return Err(invalid(
                    "protocol nchan/generic needs --publish-url http://HOST:PORT/…{channel}",
                ))
            }
        };
        if !(publish_url.starts_with("http://") || publish_url.starts_with("https://")) {
            return Err(invalid(format!(
                "--publish-url `{publish_url}` must start with http:// or https://"
            )));
        }
        let stages = match o.stages.or(file.stages.map(|s| match s {
            StagesValue::One(s) => s,
            StagesValue::Many(v) => v.join(","),
        })) {
            Some(s) => parse_stages(&s)?,
            None => parse_stages(DEFAULT_STAGES)?,
        };
        if stages.is_empty() {
            return Err(invalid(
                "--stages is empty: give at least one CONNECTIONS:HOLD",
            ));
        }
        let channels = o.channels.or(file.channels).unwrap_or(10);
        if channels == 0 {
            return Err(invalid("--channels must be at least 1"));
        }
        let rate = o.rate.or(file.rate).unwrap_or(1000.0);
        if !rate.is_finite() || rate < 0.0 {
            return Err(invalid(
                "--rate must be a non-negative number of messages per second",
            ));
        }
        let payload_bytes = o.payload_bytes.or(file.payload_bytes).unwrap_or(128);
        if payload_bytes > 60 * 1024 {
            return Err(invalid("--payload-bytes must be at most 61440"));
        }
        let connect_rate = parse_rate(
            &o.connect_rate
                .or(file.connect_rate)
                .unwrap_or("2000/s".into()),
        )?;
        let heartbeat = parse_duration(
            &o.heartbeat
                .or(file.heartbeat.map(DurationValue::text))
                .unwrap_or("5s".into()),
        )?;
        if heartbeat < Duration::from_millis(50) {
            return Err(invalid("--heartbeat must be at least 50ms"));
        }
        let max_missed = o.max_missed.or(file.max_missed).unwrap_or(2).max(1);
        let grace = parse_duration(
            &o.grace
                .or(file.grace.map(DurationValue::text))
                .unwrap_or("2s".into()),
        )?;
        let source_addrs = match o.source_addrs.or(file.source_addrs) {
            Some(s) => parse_source_addrs(&s)?,
            None => Vec::new(),
        };
        let shard_cap = o.shard_cap.or(file.shard_cap).unwrap_or(15_000);
        if shard_cap == 0 {
            return Err(invalid("--shard-cap must be at least 1"));
        }
        let network_text = o.network.clone().or(file.network.clone());
        // Each publisher connection carries one request at a time: over an
        // emulated link every publish pays the round trip, so give every
        // channel its own connection (up to 64) unless told otherwise.
        let default_publishers = if network_text.is_some() { 64 } else { 8 };
        let publishers = o
            .publishers
            .or(file.publishers)
            .unwrap_or_else(|| (channels as usize).min(default_publishers))
            .clamp(1, channels as usize);
        let client_cert = o.client_cert.or(file.client_cert);
        let client_key = o.client_key.or(file.client_key);
        if client_cert.is_some() != client_key.is_some() {
            return Err(invalid(
                "--client-cert and --client-key go together: give both for mTLS",
            ));
        }
        let metrics = match o.metrics.or(file.metrics) {
            Some(m) => Some(m.parse().map_err(|_| {
                invalid(format!(
                    "--metrics `{m}` is not an address: write e.g. 127.0.0.1:9465"
                ))
            })?),
            None => None,
        };
        let progress_interval = parse_duration(
            &o.progress_interval
                .or(file.progress_interval.map(DurationValue::text))
                .unwrap_or("5s".into()),
        )?;
        let defaults = crate::faults::FaultDefaults {
            restart_cmd: o.restart_cmd.or(file.restart_cmd),
        };
        let faults = crate::faults::parse_faults(
            file.faults.unwrap_or_default(),
            &stages,
            connect_rate,
            &defaults,
        )
        .map_err(invalid)?;
        let network = match network_text {
            Some(t) => Some(crate::link::NetworkSpec::parse(&t).map_err(invalid)?),
            None => None,
        };
        if network.is_some() && source_addrs.iter().any(|a| a.is_loopback()) {
            return Err(invalid(
                "--source-addrs cannot be loopback addresses with --network: the link gives the load generator its own address; drop --source-addrs",
            ));
        }
        Ok(Scenario {
            url,
            publish_url,
            protocol,
            channels,
            rate,
            payload_bytes,
            stages,
            connect_rate,
            heartbeat,
            max_missed,
            grace,
            out: o.out.or(file.out),
            log_dir: o.log_dir.or(file.log_dir),
            source_addrs,
            shard_cap,
            publishers,
            ca_cert: o.ca_cert.or(file.ca_cert),
            client_cert,
            client_key,
            subscribe_frame: o.subscribe_frame.or(file.subscribe_frame),
            ack_frame: o.ack_frame.or(file.ack_frame),
            metrics,
            progress_interval,
            floor: false,
            faults,
            network,
            netns: None,
        })
    }

    /// Highest connection count of any stage.
    pub fn max_connections(&self) -> usize {
        self.stages.iter().map(|s| s.connections).max().unwrap_or(0)
    }

    /// Channel name for an index (`ch0`, `ch1`, …).
    pub fn channel_name(&self, c: u32) -> String {
        format!("ch{c}")
    }
}

/// Serde for a `Duration` as seconds (f64); shared by the fault records.
pub(crate) mod dur_secs {
    pub fn serialize<S: serde::Serializer>(
        d: &std::time::Duration,
        s: S,
    ) -> Result<S::Ok, S::Error> {
        s.serialize_f64(d.as_secs_f64())
    }

    pub fn deserialize<'de, D: serde::Deserializer<'de>>(
        d: D,
    ) -> Result<std::time::Duration, D::Error> {
        let secs = <f64 as serde::Deserialize>::deserialize(d)?;
        std::time::Duration::try_from_secs_f64(secs).map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn base() -> Overrides {
        Overrides {
            url: Some("ws://127.0.0.1:9000/ws".into()),
            ..Default::default()
        }
    }

    #[test]
    fn parses_stages_rates_durations() {
        let s = parse_stages("1000:60s, 5000:1m,20000:250ms").unwrap();
        assert_eq!(
            s[1],
            Stage {
                connections: 5000,
                hold: Duration::from_secs(60)
            }
        );
        assert_eq!(s[2].hold, Duration::from_millis(250));
        assert_eq!(parse_rate("2000/s").unwrap(), 2000.0);
        assert_eq!(parse_rate("600/m").unwrap(), 10.0);
        assert!(parse_stages("1000").is_err());
        assert!(parse_duration("5y").is_err());
        assert_eq!(parse_source_addrs("127.0.0.1-127.0.0.8").unwrap().len(), 8);
    }

    #[test]
    fn defaults_and_derived_publish_url() {
        let sc = Scenario::build(ScenarioFile::default(), base()).unwrap();
        assert_eq!(sc.publish_url, "http://127.0.0.1:9000/publish/{channel}");
        assert_eq!(sc.stages.len(), 4);
        assert_eq!(sc.max_connections(), 20_000);
        assert_eq!(sc.heartbeat, Duration::from_secs(5));
        assert_eq!(sc.max_missed, 2);
    }

    #[test]
    fn toml_unknown_key_is_named_and_flags_override() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("s.toml");
        std::fs::write(&p, "url = \"ws://127.0.0.1:1/ws\"\nchanels = 3\n").unwrap();
        let e = ScenarioFile::load(&p).unwrap_err().to_string();
        assert!(e.contains("chanels"), "{e}");
        std::fs::write(
            &p,
            "url = \"ws://127.0.0.1:1/ws\"\nchannels = 3\nstages = [\"10:1s\", \"20:2s\"]\n",
        )
        .unwrap();
        let f = ScenarioFile::load(&p).unwrap();
        let sc = Scenario::build(
            f,
            Overrides {
                channels: Some(7),
                ..Default::default()
            },
        )
        .unwrap();
        assert_eq!(sc.channels, 7);
        assert_eq!(sc.stages.len(), 2);
        assert_eq!(sc.url, "ws://127.0.0.1:1/ws");
    }

    #[test]
    fn rejects_bad_input_with_a_sentence() {
        let e = Scenario::build(ScenarioFile::default(), Overrides::default()).unwrap_err();
        assert!(e.to_string().contains("--url"));
        let mut o = base();
        o.protocol = Some(ProtocolKind::Nchan);
        assert!(Scenario::build(ScenarioFile::default(), o)
            .unwrap_err()
            .to_string()
            .contains("--publish-url"));
        let mut o = base();
        o.client_cert = Some("c.pem".into());
        assert!(Scenario::build(ScenarioFile::default(), o).is_err());
    }

    #[test]
    fn durations_take_bare_seconds_in_flags_stages_and_toml() {
        let s = parse_stages("1000:60s,5000:60,10:500ms,20:15m,30:1h").unwrap();
        let holds: Vec<u64> = s.iter().map(|s| s.hold.as_millis() as u64).collect();
        assert_eq!(holds, [60_000, 60_000, 500, 900_000, 3_600_000]);
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("s.toml");
        std::fs::write(
            &p,
            "url = \"ws://127.0.0.1:1/ws\"\ngrace = 3\nheartbeat = 1.5\nprogress_interval = \"500ms\"\n",
        )
        .unwrap();
        let sc = Scenario::build(ScenarioFile::load(&p).unwrap(), Overrides::default()).unwrap();
        assert_eq!(sc.grace, Duration::from_secs(3));
        assert_eq!(sc.heartbeat, Duration::from_millis(1500));
        assert_eq!(sc.progress_interval, Duration::from_millis(500));
        let mut o = base();
        o.grace = Some("12".into());
        o.heartbeat = Some("12s".into());
        let sc = Scenario::build(ScenarioFile::default(), o).unwrap();
        assert_eq!(
            (sc.grace, sc.heartbeat),
            (Duration::from_secs(12), Duration::from_secs(12))
        );
    }

    #[test]
    fn network_from_flag_or_toml_with_sentences_for_bad_values() {
        let mut o = base();
        o.network = Some("financial-backbone".into());
        let sc = Scenario::build(ScenarioFile::default(), o).unwrap();
        assert_eq!(sc.network, Some(crate::link::spec::FINANCIAL_BACKBONE));
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("s.toml");
        std::fs::write(
            &p,
            "url = \"ws://127.0.0.1:1/ws\"\nnetwork = \"rtt=4ms,loss=1%\"\n",
        )
        .unwrap();
        let sc = Scenario::build(ScenarioFile::load(&p).unwrap(), Overrides::default()).unwrap();
        let n = sc.network.unwrap();
        assert_eq!((n.rtt, n.loss), (Duration::from_millis(4), 0.01));
        let mut o = base();
        o.network = Some("rtt=2ms,lag=1ms".into());
        let e = Scenario::build(ScenarioFile::default(), o)
            .unwrap_err()
            .to_string();
        assert!(e.contains("unknown key `lag`"), "{e}");
        let mut o = base();
        o.network = Some("rtt=2ms".into());
        o.source_addrs = Some("127.0.0.1-127.0.0.4".into());
        let e = Scenario::build(ScenarioFile::default(), o)
            .unwrap_err()
            .to_string();
        assert!(e.contains("--source-addrs"), "{e}");
        // Not serialized into workers' or summary's scenario as a handle.
        let j = serde_json::to_value(&sc).unwrap();
        assert!(j.get("netns").is_none());
        assert_eq!(j["network"]["rtt"], 4.0);
    }

    proptest::proptest! {
        #[test]
        fn arbitrary_text_never_panics_the_parsers(s in "\\PC{0,40}", t in "[0-9:,.smh /-]{0,40}") {
            for x in [&s, &t] {
                let _ = parse_stages(x);
                let _ = parse_rate(x);
                let _ = parse_source_addrs(x);
                let _ = toml::from_str::<ScenarioFile>(x);
                let mut o = base();
                o.stages = Some(x.clone());
                o.connect_rate = Some(x.clone());
                let _ = Scenario::build(ScenarioFile::default(), o);
            }
        }

        #[test]
        fn stages_round_trip(stages in proptest::collection::vec((0usize..1_000_000, 0u64..100_000, proptest::sample::select(vec!["ms", "s", "m", "h", ""])), 1..6)) {
            let text: Vec<String> = stages.iter().map(|(c, n, u)| format!("{c}:{n}{u}")).collect();
            let parsed = parse_stages(&text.join(",")).unwrap();
            proptest::prop_assert_eq!(parsed.len(), stages.len());
            for (p, (c, n, u)) in parsed.iter().zip(&stages) {
                proptest::prop_assert_eq!(p.connections, *c);
                proptest::prop_assert_eq!(p.hold, crate::duration::parse_duration(&format!("{n}{u}")).unwrap());
            }
        }
    }
}
