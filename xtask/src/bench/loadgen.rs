//! `cargo xtask bench loadgen [--idle N] [--fanout N] [--seconds S] [--rate R]`:
//! builds the release `pushscope-loadgen` (same code as `pushscope load`)
//! and `pushscope-pusher`, and measures the load generator against the
//! reference pusher on loopback:
//! 1. RSS per idle client connection with N (10,000) connections held
//!    (RSS sampled from /proc while the live metrics endpoint says how many
//!    are connected; baseline = the same process before it connected);
//! 2. new WebSocket connections per second (ramp of N connections at an
//!    unbounded connect rate, from the stage's `ramp_s`);
//! 3. received messages per second per loadgen core, accounting included
//!    (N = 1,000 subscribers on one channel, R = 200 publishes/s, so
//!    N×R = 200,000 deliveries/s — the target itself — are asked of the
//!    pusher; the stage's received count over the loadgen's own CPU time).
//!    The pusher is pinned to core 0 and the loadgen to core 1 (one lane),
//!    so the loadgen's CPU is its own work, not who won the scheduler; the
//!    median of 3 rounds is the figure (single runs here scatter ±10 %).
//!    When the publisher falls behind its schedule (backlog at stage end:
//!    one pusher core could not keep up) the table says so, and the e2e
//!    latency is then the pusher's queue, not the loadgen's.
//! 4. the floor of 3: after each round of 3, the load generator and a
//!    `--floor` process (whose subscribers only `recv` and count frames: no
//!    UTF-8 check, marker or accounting) run side by side on CPU 1, N/2
//!    subscribers each on the same channel, so both see the same frames at
//!    the same pace; loadgen ÷ floor (messages per CPU-second, median of
//!    the rounds' ratios) says how much of the receive cost is the load
//!    generator's own work, the rest being the kernel's (`--floor 0` skips it).
//!
//! `--loadgen-bin PATH` measures another `pushscope-loadgen` build (e.g. a
//! baseline) against the same pusher.
//!
//! Prints a table and writes target/bench/loadgen.json.

use anyhow::{bail, Context, Result};
use std::{
    io::Read,
    path::Path,
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use crate::util::{self, Guard};

/// Targets: RSS and messages per core of issue 12 (a leaner, faster load
/// generator), connections per second of issue 3.
const TARGET_RSS_PER_CONN: f64 = 6.0 * 1024.0;
const TARGET_CONNECTS_PER_S: f64 = 5_000.0;
const TARGET_MSGS_PER_CORE: f64 = 400_000.0;

/// The first number after the keys `path` found one after the other in
/// the pretty `summary.json` (stage 0 comes first).
fn json_num(text: &str, path: &[&str]) -> f64 {
    let mut at = 0;
    for key in path {
        match text[at..].find(&format!("\"{key}\":")) {
            Some(i) => at += i + key.len() + 3,
            None => return f64::NAN,
        }
    }
    // Arrays (e.g. per-process CPU): the first element.
    let rest = text[at..].trim_start().trim_start_matches('[').trim_start();
    let end = rest
        .find(|c: char| !(c.is_ascii_digit() || matches!(c, '.' | '-' | 'e' | 'E' | '+')))
        .unwrap_or(rest.len());
    rest[..end].parse().unwrap_or(f64::NAN)
}

/// Runs `pushscope load` against `addr` (on CPU `cpu` only, if given);
/// calls `watch(pid, metrics)` every 100 ms while it runs; returns
/// summary.json's text.
fn load(
    bin: &Path,
    out: &Path,
    addr: &str,
    args: &[&str],
    cpu: Option<u32>,
    mut watch: impl FnMut(u32, &str),
) -> Result<String> {
    let metrics = format!("127.0.0.1:{}", util::free_port()?);
    let _ = std::fs::remove_dir_all(out);
    let url = format!("ws://{addr}/ws");
    let mut cmd = match cpu {
        // taskset execs the loadgen in the same process.
        Some(c) => {
            let mut t = Command::new("taskset");
            t.args(["-c", &c.to_string()]).arg(bin);
            t
        }
        None => Command::new(bin),
    };
    let mut child = Guard(
        cmd.args([
            "load",
            "--url",
            &url,
            "--metrics",
            &metrics,
            "--progress-interval",
            "1s",
            "--out",
        ])
        .arg(out)
        .args(args)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .context("starting pushscope load (taskset: apt-get install -y util-linux)")?,
    );
    let pid = child.0.id();
    let mut stderr = child.0.stderr.take().expect("piped");
    let err_t = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = stderr.read_to_string(&mut s);
        s
    });
    let deadline = Instant::now() + Duration::from_secs(300);
    let status = loop {
        if let Some(st) = child.0.try_wait()? {
            break st;
        }
        if Instant::now() > deadline {
            bail!("pushscope load did not finish within 5 minutes");
        }
        watch(pid, &metrics);
        std::thread::sleep(Duration::from_millis(100));
    };
    let stderr = err_t.join().unwrap_or_default();
    if !status.success() {
        bail!("pushscope load {args:?} failed ({status}):\n{stderr}");
    }
    let path = out.join("summary.json");
    std::fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))
}

pub fn run(args: &[String]) -> Result<()> {
    let (mut idle, mut fanout, mut seconds, mut rate) = (10_000u64, 1_000u64, 6u64, 200u64);
    let mut floor = true;
    let mut bin = util::release_bin("pushscope-loadgen");
    let mut it = args.iter();
    while let Some(k) = it.next() {
        if k == "--loadgen-bin" {
            bin = it
                .next()
                .map(std::path::PathBuf::from)
                .context("--loadgen-bin needs a path")?;
            continue;
        }
        let v: u64 = it
            .next()
            .and_then(|v| v.parse().ok())
            .with_context(|| format!("{k} needs a number"))?;
        match k.as_str() {
            "--idle" => idle = v,
            "--fanout" => fanout = v,
            "--seconds" => seconds = v,
            "--rate" => rate = v,
            "--floor" => floor = v != 0,
            _ => bail!(
                "unknown option {k}: use --idle N, --fanout N, --seconds S, --rate MSGS_PER_S, --floor 0|1, --loadgen-bin PATH"
            ),
        }
    }
    util::cargo(&[
        "build",
        "--release",
        "-p",
        "pusher",
        "-p",
        "loadgen",
        "--bins",
    ])?;
    let dir = util::bench_dir();
    std::fs::create_dir_all(&dir)?;
    let load_before = std::fs::read_to_string("/proc/loadavg")
        .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_default();

    // 1 + 2: idle connections (no publishing), opened as fast as the pusher accepts them.
    let (_p, addr) = util::start_bench_pusher(&dir.join("lg-pusher-idle"), &[])?;
    let (mut base, mut peak) = (None::<u64>, (0u64, 0u64));
    let stages = format!("{idle}:4s");
    let idle_summary = load(
        &bin,
        &dir.join("lg-idle"),
        &addr,
        &[
            "--stages",
            &stages,
            "--rate",
            "0",
            "--connect-rate",
            "100000/s",
            "--heartbeat",
            "5s",
        ],
        None,
        |pid, metrics| {
            if let (Some(c), Some(rss)) = (util::live_connections(metrics), util::rss_kib(pid)) {
                if c == 0 {
                    base.get_or_insert(rss);
                }
                if c > peak.0 || (c == peak.0 && rss > peak.1) {
                    peak = (c, rss);
                }
            }
        },
    )?;
    drop(_p);
    let opened = json_num(&idle_summary, &["stages", "connections", "opened"]);
    let ramp_s = json_num(&idle_summary, &["stages", "ramp_s"]);
    let connects_per_s = opened / ramp_s;
    let upgrade_p99 = json_num(
        &idle_summary,
        &["stages", "client_phases_ms", "upgrade", "p99"],
    );
    let rss_per_conn = match base {
        Some(b) if peak.0 > 0 => (peak.1.saturating_sub(b) * 1024) as f64 / peak.0 as f64,
        _ => f64::NAN,
    };

    // 3: fan-out to N subscribers of one channel, pusher and loadgen on
    // cores of their own when there are two.
    let pinned = std::thread::available_parallelism().map_or(1, |n| n.get()) >= 2;
    let (mut rounds, mut pairs): (Vec<Round>, Vec<(Round, Round)>) = (Vec::new(), Vec::new());
    for round in 0..ROUNDS {
        let fan = FanRound {
            bin: &bin,
            dir: &dir,
            fanout,
            seconds,
            rate,
            pinned,
            round,
        };
        rounds.push(fan_round(&fan, Side::Only, "")?);
        if floor {
            pairs.push(pair_round(&fan)?);
        }
    }
    let per_core = util::median(rounds.iter().map(|r| r.per_core).collect());
    let (floor_per_core, of_floor) = if floor {
        (
            util::median(pairs.iter().map(|(_, f)| f.per_core).collect()),
            util::median(pairs.iter().map(|(l, f)| l.per_core / f.per_core).collect()),
        )
    } else {
        (f64::NAN, f64::NAN)
    };

    let verdict = |ok: bool| if ok { "met" } else { "MISSED" };
    println!();
    println!(
        "loadgen bench (release pushscope-loadgen vs release pushscope-pusher on loopback; load avg before: {load_before})"
    );
    println!(
        "{:<52} {:>12} {:>12} {:>8}",
        "figure", "value", "target", ""
    );
    println!(
        "{:<52} {:>12.0} {:>12.0} {:>8}",
        format!("RSS per idle client connection, bytes ({} conns)", peak.0),
        rss_per_conn,
        TARGET_RSS_PER_CONN,
        verdict(rss_per_conn <= TARGET_RSS_PER_CONN)
    );
    println!(
        "{:<52} {:>12.0} {:>12.0} {:>8}",
        format!("new WebSocket connections/s ({opened:.0} in {ramp_s:.2} s)"),
        connects_per_s,
        TARGET_CONNECTS_PER_S,
        verdict(connects_per_s >= TARGET_CONNECTS_PER_S)
    );
    println!(
        "{:<52} {:>12.2}",
        "  upgrade p99 during the ramp (ms)", upgrade_p99
    );
    println!(
        "{:<52} {:>12.0} {:>12.0} {:>8}",
        format!("received msgs/s per loadgen core (median of {ROUNDS})"),
        per_core,
        TARGET_MSGS_PER_CORE,
        verdict(per_core >= TARGET_MSGS_PER_CORE)
    );
    if floor {
        println!(
            "{:<52} {:>12.0}",
            format!("  floor: recv and count only (median of {ROUNDS})"),
            floor_per_core
        );
        println!(
            "{:<52} {:>12.2}",
            format!("  loadgen / floor, side by side (median of {ROUNDS})"),
            of_floor
        );
    }
    println!(
        "  {fanout} subs x 1 channel, {rate} publishes/s asked ({}):",
        if pinned {
            "pusher on CPU 0, loadgen on CPU 1"
        } else {
            "one CPU: not pinned"
        }
    );
    println!(
        "  {:>8} {:>8} {:>9} {:>10} {:>10} {:>9} {:>6} {:>6} {:>10}",
        "round",
        "backlog",
        "recv/s",
        "loadgen %",
        "per core",
        "msgs/read",
        "lost",
        "discon",
        "e2e p99 ms"
    );
    let all = rounds
        .iter()
        .enumerate()
        .map(|(i, r)| (format!("{}", i + 1), r))
        .chain(pairs.iter().enumerate().flat_map(|(i, (l, f))| {
            [
                (format!("pair {} lg", i + 1), l),
                (format!("pair {} fl", i + 1), f),
            ]
        }));
    for (name, r) in all {
        println!(
            "  {:>8} {:>8} {:>9.0} {:>10.0} {:>10.0} {:>9.2} {:>6} {:>6} {:>10.1}",
            name,
            r.backlog,
            r.msgs_per_s,
            r.cpu,
            r.per_core,
            r.per_read,
            r.lost,
            r.unexpected,
            r.p99
        );
    }
    if rounds.iter().any(|r| r.backlog > 0.0) {
        println!(
            "  the publisher fell behind its schedule (backlog > 0): one pusher core is the limit, and the e2e latency is its queue"
        );
    }
    let json = format!(
        "{{\n  \"idle\": {{\"connections\": {}, \"rss_base_kib\": {}, \"rss_peak_kib\": {}, \"rss_per_connection_bytes\": {rss_per_conn:.0}}},\n  \"connect\": {{\"opened\": {opened}, \"ramp_s\": {ramp_s}, \"connections_per_s\": {connects_per_s:.0}, \"upgrade_p99_ms\": {upgrade_p99}}},\n  \"fanout\": {{\"subscribers\": {fanout}, \"rate\": {rate}, \"pinned\": {pinned}, \"msgs_per_core_s_median\": {per_core:.0}, \"rounds\": [{}]}},\n  \"floor\": {{\"msgs_per_core_s_median\": {}, \"loadgen_over_floor_median\": {}, \"side_by_side\": [{}]}},\n  \"loadavg_before\": \"{load_before}\",\n  \"targets\": {{\"rss_per_connection_bytes\": {TARGET_RSS_PER_CONN}, \"connections_per_s\": {TARGET_CONNECTS_PER_S}, \"msgs_per_core_s\": {TARGET_MSGS_PER_CORE}}}\n}}\n",
        rounds.iter().map(Round::json).collect::<Vec<_>>().join(", "),
        json_f(floor_per_core, 0),
        json_f(of_floor, 3),
        pairs
            .iter()
            .map(|(l, f)| format!("{{\"loadgen\": {}, \"floor\": {}}}", l.json(), f.json()))
            .collect::<Vec<_>>()
            .join(", "),
        peak.0,
        base.unwrap_or(0),
        peak.1
    );
    let path = dir.join("loadgen.json");
    std::fs::write(&path, json).with_context(|| format!("writing {}", path.display()))?;
    println!("\nwritten {}", path.display());
    Ok(())
}

const ROUNDS: usize = 3;

/// One fan-out round's figures.
struct Round {
    /// Messages scheduled but not yet published at stage end.
    backlog: f64,
    msgs_per_s: f64,
    cpu: f64,
    per_core: f64,
    lost: f64,
    unexpected: f64,
    p99: f64,
    /// Messages one subscriber read took on average.
    per_read: f64,
}

impl Round {
    fn json(&self) -> String {
        format!(
            "{{\"publish_backlog\": {}, \"msgs_per_s\": {:.0}, \"loadgen_cpu_pct\": {:.1}, \"msgs_per_core_s\": {:.0}, \"messages_per_read\": {}, \"lost\": {}, \"unexpected_disconnects\": {}, \"latency_p99_ms\": {}}}",
            self.backlog, self.msgs_per_s, self.cpu, self.per_core, json_f(self.per_read, 2), self.lost, self.unexpected, json_f(self.p99, 1)
        )
    }
}

/// A number for JSON (`null` when not measured).
fn json_f(v: f64, decimals: usize) -> String {
    if v.is_finite() {
        format!("{v:.decimals$}")
    } else {
        "null".into()
    }
}

/// What a fan-out round runs.
struct FanRound<'a> {
    bin: &'a Path,
    dir: &'a Path,
    fanout: u64,
    seconds: u64,
    rate: u64,
    pinned: bool,
    round: usize,
}

/// Which process of a round this is.
#[derive(Clone, Copy, PartialEq)]
enum Side {
    /// The load generator alone: `fanout` subscribers.
    Only,
    /// Side by side with the floor: `fanout / 2` subscribers each, each
    /// process publishing `rate / 2`, so the load generator fully accounts
    /// for its own half of the frames and finds the floor's half foreign
    /// (marker read, not judged).
    Loadgen,
    /// The floor next to the load generator.
    Floor,
}

/// Both halves of a side-by-side round: the load generator and the floor,
/// `fanout / 2` subscribers each on the same channel, at the same time on
/// the same CPU, so both see the same frames at the same pace (how many
/// frames one read takes moves the cost per message more than anything
/// else on a busy machine; side by side both get the same).
fn pair_round(f: &FanRound<'_>) -> Result<(Round, Round)> {
    let (p, addr) = util::start_bench_pusher(&f.dir.join("lg-pusher-fan"), &["--fsync", "never"])?;
    if f.pinned {
        util::pin(p.0.id(), 0)?;
    }
    std::thread::scope(|s| {
        let floor = s.spawn(|| fan_round(f, Side::Floor, &addr));
        let full = fan_round(f, Side::Loadgen, &addr);
        let floor = floor
            .join()
            .map_err(|_| anyhow::anyhow!("the floor's thread panicked"))?;
        Ok((full?, floor?))
    })
}

/// One load process of a fan-out round: `fanout` subscribers of one
/// channel, `rate` publishes/s for `seconds` (see `Side`). With `addr`
/// empty it starts its own pusher.
fn fan_round(f: &FanRound<'_>, side: Side, addr: &str) -> Result<Round> {
    let own = if addr.is_empty() {
        let (p, a) = util::start_bench_pusher(&f.dir.join("lg-pusher-fan"), &["--fsync", "never"])?;
        if f.pinned {
            util::pin(p.0.id(), 0)?;
        }
        Some((p, a))
    } else {
        None
    };
    let addr = own.as_ref().map_or(addr, |(_, a)| a.as_str());
    let subs = if side == Side::Only {
        f.fanout
    } else {
        f.fanout / 2
    };
    let stages = format!("{subs}:{}s", f.seconds);
    // Side by side each publishes half the rate on the one channel: every
    // subscriber of either process gets every message (a floor that
    // publishes nothing is not sent them all: it never ACKs).
    let rate_s = if side == Side::Only {
        f.rate.to_string()
    } else {
        (f.rate as f64 / 2.0).to_string()
    };
    let (tag, extra): (&str, &[&str]) = match side {
        Side::Only => ("lg-fan", &[]),
        Side::Loadgen => ("lg-pair", &[]),
        Side::Floor => ("lg-pair-floor", &["--floor"]),
    };
    if side != Side::Floor {
        eprintln!(
            "xtask: fan-out round {} of {ROUNDS}{}",
            f.round + 1,
            if side == Side::Loadgen {
                " (side by side with the floor)"
            } else {
                ""
            }
        );
    }
    let fan = load(
        f.bin,
        &f.dir.join(tag),
        addr,
        &[
            "--stages",
            &stages,
            "--channels",
            "1",
            "--rate",
            &rate_s,
            "--payload-bytes",
            "128",
            "--connect-rate",
            "20000/s",
        ]
        .iter()
        .chain(extra)
        .copied()
        .collect::<Vec<_>>(),
        f.pinned.then_some(1),
        |_, _| {},
    )?;
    drop(own);
    // Every message frame a subscriber received, whoever published it.
    let received = ["received", "foreign", "replayed"]
        .iter()
        .map(|k| json_num(&fan, &["stages", "messages", k]))
        .filter(|v| v.is_finite())
        .sum::<f64>();
    let hold = json_num(&fan, &["stages", "hold_s"]) + json_num(&fan, &["stages", "ramp_s"]);
    let cpu = json_num(&fan, &["stages", "loadgen", "cpu_pct"]);
    let msgs_per_s = received / hold;
    Ok(Round {
        backlog: json_num(&fan, &["stages", "loadgen", "publish_backlog"]),
        msgs_per_s,
        cpu,
        per_core: msgs_per_s / (cpu / 100.0).max(0.01),
        lost: json_num(&fan, &["stages", "messages", "lost"]),
        unexpected: json_num(&fan, &["stages", "connections", "unexpected_disconnects"]),
        p99: json_num(&fan, &["stages", "latency_ms", "p99"]),
        per_read: json_num(&fan, &["stages", "loadgen", "messages_per_read"]),
    })
}
