//! `cargo xtask bench pusher [--subscribers N] [--idle N] [--seconds S]`:
//! builds the release pusher and its load client, and measures, with server
//! and clients in separate processes:
//! 1. fan-out of ~210-byte messages to N (1,000) subscribers of one channel,
//!    pusher on a 1-worker runtime: deliveries/s and the pusher's CPU;
//!    then the same paced at 200 messages/s for end-to-end latency, then
//!    publish throughput alone (16 publishers, `--fsync batch`);
//! 2. N (10,000) idle subscribers: the pusher's RSS per connection.
//!
//! Prints a table and writes target/bench/pusher.json.

use anyhow::{bail, Context, Result};
use std::{
    collections::BTreeMap,
    path::PathBuf,
    process::{Command, Stdio},
};

use crate::util::{self, bench_dir, Guard};

/// Targets of issue 2.
const TARGET_DELIVERIES_PER_S: f64 = 300_000.0;
const TARGET_RSS_PER_CONN: f64 = 16.0 * 1024.0;

/// A running pusher; its data dir goes when it does.
struct Pusher {
    guard: Guard,
    addr: String,
    dir: PathBuf,
}

impl Drop for Pusher {
    fn drop(&mut self) {
        // Stop it before its data dir goes, so it cannot write there again.
        let _ = self.guard.0.kill();
        let _ = self.guard.0.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn start_pusher(tag: &str) -> Result<Pusher> {
    let dir = bench_dir().join(format!("pusher-data-{tag}-{}", std::process::id()));
    let (guard, addr) = util::start_bench_pusher(&dir, &["--workers", "1"])?;
    Ok(Pusher { guard, addr, dir })
}

/// Runs the load client; returns its `key=value` lines.
fn client(mode: &str, p: &Pusher, args: &[String]) -> Result<BTreeMap<String, String>> {
    let out = Command::new(util::release_bin("pushscope-pusher-bench"))
        .arg(mode)
        .args(["--addr", &p.addr, "--pid", &p.guard.0.id().to_string()])
        .args(args)
        .stderr(Stdio::inherit())
        .output()
        .context("running pushscope-pusher-bench")?;
    if !out.status.success() {
        bail!("pushscope-pusher-bench {mode} failed ({})", out.status);
    }
    Ok(String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| l.split_once('='))
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect())
}

fn num(m: &BTreeMap<String, String>, k: &str) -> f64 {
    m.get(k).and_then(|v| v.parse().ok()).unwrap_or(f64::NAN)
}

fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_default()
}

pub fn run(args: &[String]) -> Result<()> {
    let mut subscribers = "1000".to_string();
    let mut idle = "10000".to_string();
    let mut seconds = "5".to_string();
    let mut it = args.iter();
    while let Some(k) = it.next() {
        let v = it
            .next()
            .with_context(|| format!("{k} needs a value"))?
            .clone();
        match k.as_str() {
            "--subscribers" => subscribers = v,
            "--idle" => idle = v,
            "--seconds" => seconds = v,
            _ => bail!("unknown option {k}: use --subscribers N, --idle N, --seconds S"),
        }
    }
    util::cargo(&["build", "--release", "-p", "pusher", "--bins"])?;
    std::fs::create_dir_all(bench_dir())?;
    let load_before = loadavg();

    let p = start_pusher("fanout")?;
    let fan = client(
        "fanout",
        &p,
        &[
            "--subscribers".into(),
            subscribers.clone(),
            "--seconds".into(),
            seconds.clone(),
        ],
    )?;
    // Paced at 200 messages/s (200k deliveries/s with 1,000 subscribers):
    // end-to-end latency when the pusher is not saturated.
    let paced = client(
        "fanout",
        &p,
        &[
            "--subscribers".into(),
            subscribers.clone(),
            "--seconds".into(),
            seconds.clone(),
            "--rate".into(),
            "200".into(),
        ],
    )?;
    // Publish throughput alone, 16 keep-alive publishers, --fsync batch.
    let publ = client(
        "publish",
        &p,
        &[
            "--publishers".into(),
            "16".into(),
            "--seconds".into(),
            "3".into(),
        ],
    )?;
    drop(p);

    let p = start_pusher("idle")?;
    let idl = client(
        "idle",
        &p,
        &[
            "--subscribers".into(),
            idle.clone(),
            "--seconds".into(),
            "2".into(),
        ],
    )?;
    drop(p);

    let dps = num(&fan, "deliveries_per_s");
    let cpu = num(&fan, "pusher_cpu_pct");
    let per_core = dps / (cpu / 100.0).max(0.01);
    let rss = num(&idl, "rss_per_connection_bytes");
    let verdict = |ok: bool| if ok { "met" } else { "MISSED" };
    println!();
    println!("pusher bench (pusher on a 1-worker runtime, --fsync batch; load avg before: {load_before})");
    println!(
        "{:<44} {:>14} {:>14} {:>8}",
        "figure", "value", "target", ""
    );
    println!(
        "{:<44} {:>14.0} {:>14.0} {:>8}",
        format!(
            "fan-out deliveries/s ({subscribers} subs, {} B)",
            fan.get("message_bytes").map_or("?", |s| s)
        ),
        dps,
        TARGET_DELIVERIES_PER_S,
        if dps >= TARGET_DELIVERIES_PER_S && cpu <= 105.0 {
            "met"
        } else if per_core >= TARGET_DELIVERIES_PER_S && cpu < 90.0 {
            // The pusher had idle CPU: the load client (sharing the
            // machine's cores) was the limit, not the pusher.
            "client-bound"
        } else {
            "MISSED"
        }
    );
    println!(
        "{:<44} {:>14.1} {:>14} {:>8}",
        "pusher CPU during fan-out (%)", cpu, "<= 100", ""
    );
    println!(
        "{:<44} {:>14.0} {:>14} {:>8}",
        "deliveries per CPU-second", per_core, "", ""
    );
    println!(
        "{:<44} {:>14} {:>14} {:>8}",
        "seq order errors / disconnects",
        format!(
            "{} / {}",
            fan.get("order_errors").map_or("?", |s| s),
            fan.get("disconnected").map_or("?", |s| s)
        ),
        "0 / 0",
        ""
    );
    println!(
        "{:<44} {:>14}",
        "publish->receive latency p50/p99/max (ms)",
        format!(
            "{:.1} / {:.1} / {:.1}",
            num(&fan, "latency_p50_us") / 1000.0,
            num(&fan, "latency_p99_us") / 1000.0,
            num(&fan, "latency_max_us") / 1000.0
        )
    );
    println!(
        "{:<44} {:>14.0} {:>14} {:>8}",
        "paced 200 msg/s: deliveries/s",
        num(&paced, "deliveries_per_s"),
        "",
        ""
    );
    println!(
        "{:<44} {:>14.1}",
        "paced 200 msg/s: pusher CPU (%)",
        num(&paced, "pusher_cpu_pct")
    );
    println!(
        "{:<44} {:>14}",
        "paced: latency p50/p99/max (ms)",
        format!(
            "{:.1} / {:.1} / {:.1}",
            num(&paced, "latency_p50_us") / 1000.0,
            num(&paced, "latency_p99_us") / 1000.0,
            num(&paced, "latency_max_us") / 1000.0
        )
    );
    println!(
        "{:<44} {:>14.0} {:>14} {:>8}",
        "publishes/s (16 publishers, fsync batch)",
        num(&publ, "publishes_per_s"),
        "",
        ""
    );
    println!(
        "{:<44} {:>14.1}",
        "pusher CPU while publishing (%)",
        num(&publ, "pusher_cpu_pct")
    );
    println!(
        "{:<44} {:>14.0} {:>14.0} {:>8}",
        format!("RSS per idle connection, bytes ({idle} conns)"),
        rss,
        TARGET_RSS_PER_CONN,
        verdict(rss <= TARGET_RSS_PER_CONN)
    );
    println!(
        "{:<44} {:>14}",
        "pusher RSS before / after idle conns (KiB)",
        format!(
            "{} / {}",
            idl.get("rss_before_kib").map_or("?", |s| s),
            idl.get("rss_after_kib").map_or("?", |s| s)
        )
    );

    let obj = |m: &BTreeMap<String, String>| {
        m.iter()
            .map(|(k, v)| {
                let val = if v.parse::<f64>().is_ok() {
                    v.clone()
                } else {
                    format!("\"{v}\"")
                };
                format!("\"{k}\": {val}")
            })
            .collect::<Vec<_>>()
            .join(", ")
    };
    let json = format!(
        "{{\n  \"fanout\": {{{}}},\n  \"fanout_paced_200\": {{{}}},\n  \"publish\": {{{}}},\n  \"idle\": {{{}}},\n  \"deliveries_per_cpu_second\": {per_core:.0},\n  \"targets\": {{\"deliveries_per_s\": {TARGET_DELIVERIES_PER_S}, \"rss_per_connection_bytes\": {TARGET_RSS_PER_CONN}}},\n  \"loadavg_before\": \"{load_before}\"\n}}\n",
        obj(&fan),
        obj(&paced),
        obj(&publ),
        obj(&idl)
    );
    let path = bench_dir().join("pusher.json");
    std::fs::write(&path, json).with_context(|| format!("writing {}", path.display()))?;
    println!("\nwritten {}", path.display());
    Ok(())
}
