//! `slow-consumers` end to end: 10 % of the subscribers stop reading for
//! 3 s under a steady fan-out of 2 KiB messages; what the target did is
//! classified from the target's send queues (sock_diag), its RSS, the
//! slow subscribers' own loss and the server's closes. Through
//! `pushscope load` (the same fault wiring as `pushscope run`); no root
//! needed (sock_diag reads any socket's queues).

use pushscope_tests::{
    heavy_lock,
    loadgen::{pushscope, LoadRun},
    nginx,
    pusher::Pusher,
};
use serde_json::Value;
use std::{path::Path, time::Duration};

fn scenario(url: &str, extra: &str, rate: u32) -> String {
    scenario_for(url, extra, rate, 3)
}

/// A stall of `stall_s` seconds from 2 s into the 9 s stage.
fn scenario_for(url: &str, extra: &str, rate: u32, stall_s: u32) -> String {
    format!(
        r#"url = "{url}"
{extra}
stages = ["20:9s"]
connect_rate = "200/s"
channels = 1
rate = {rate}.0
payload_bytes = 2048
heartbeat = "1s"
max_missed = 2
grace = "3s"

[[faults]]
at = "2s"
stage = 1
kind = "slow-consumers"
share = "10%"
duration = "{stall_s}s"
"#
    )
}

const RATE: u32 = 300;

/// `pushscope load --scenario` with `toml` as the scenario file.
fn load(dir: &Path, toml: &str) -> LoadRun {
    let sc = dir.join("scenario.toml");
    std::fs::write(&sc, toml).unwrap();
    let out = dir.join("o");
    let r = pushscope(
        &["load", "--scenario", sc.to_str().unwrap()],
        Some(&out),
        Duration::from_secs(90),
    )
    .unwrap();
    assert_eq!(r.code, Some(0), "{}", r.stderr);
    r
}

fn fault(r: &LoadRun) -> &Value {
    &r.summary.as_ref().expect("summary.json")["faults"][0]
}

fn slow(r: &LoadRun) -> &Value {
    let v = &fault(r)["outcome"]["extra"]["slow_consumers"];
    eprintln!("slow_consumers: {v:#}");
    v
}

fn num(v: &Value, k: &str) -> u64 {
    v[k].as_u64()
        .unwrap_or_else(|| panic!("{k} missing in {v}"))
}

/// The reference pusher with its defaults (a 4096-message / 8 MiB queue
/// per connection) keeps a 3 s backlog: it buffers, and the slow
/// subscribers get everything afterwards.
#[test]
fn pusher_buffers_a_short_stall_and_the_slow_subscribers_get_everything() {
    let _g = heavy_lock();
    let p = Pusher::start(&["--fsync", "never"]).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let r = load(
        dir.path(),
        &scenario(&p.ws_url("x").replace("?channel=x", ""), "", RATE),
    );
    assert_eq!(fault(&r)["status"], "done", "{:#}", fault(&r));
    let v = slow(&r);
    assert_eq!(v["behaviour"], "buffered", "{v}");
    assert_eq!(num(v, "subscribers"), 2, "10 % of 20");
    assert_eq!(num(v, "connections_found"), 2, "both found on the target");
    assert_eq!(num(v, "server_closed"), 0);
    // 3 s × 300 × ~2.1 KiB ≈ 1.9 MB per slow subscriber; what its
    // receive buffer did not take waits in the target's send queue.
    assert!(num(v, "max_send_queue_bytes") > 256 * 1024, "{v}");
    assert!(
        num(v, "others_max_send_queue_bytes") < num(v, "max_send_queue_bytes") / 4,
        "{v}"
    );
    assert_eq!(num(v, "slow_lost"), 0);
    assert_eq!(num(v, "others_lost"), 0);
    // Received from the fault's start on: at least the 3 s backlog each.
    assert!(num(v, "slow_received") >= 2 * 3 * u64::from(RATE), "{v}");
    // They got it late: at least the stall.
    assert!(v["slow_latency_max_ms"].as_f64().unwrap() > 2000.0, "{v}");
    let s = r.stage(0);
    assert_eq!(s["messages"]["lost"], 0);
    assert_eq!(s["connections"]["unexpected_disconnects"], 0, "{s:#}");
    // The stage's latency is the other subscribers': the stall is not in
    // it. Their max is not ~0 on this machine: when the slow subscribers
    // resume they read a ~1.9 MB backlog each on the same client threads
    // (a debug build, 2 cores shared with other test runs), which delays
    // the others' frames by 20-900 ms (measured); it never adds the 3 s
    // stall, which only the slow subscribers' own latency carries.
    let others_max = s["latency_ms"]["max"].as_f64().unwrap();
    let slow_max = v["slow_latency_max_ms"].as_f64().unwrap();
    eprintln!("latency max: others {others_max} ms, slow {slow_max} ms");
    assert!(
        slow_max - others_max > 1500.0,
        "others {:#}, slow {slow_max}",
        s["latency_ms"]
    );
    // The slow subscribers' side of the stage, apart.
    assert_eq!(s["slow_consumers"]["subscribers"], 2, "{s:#}");
    assert_eq!(s["slow_consumers"]["lost"], 0, "{s:#}");
}

/// With a 32-message queue and 3× the rate for 5 s (~9.5 MB per slow
/// subscriber: beyond the pusher's 4 MB socket send buffer, `tcp_wmem`
/// max, plus what the client's receive window took before it stopped
/// reading; 3 s, ~5.7 MB, was not always beyond it), the pusher cuts slow
/// subscribers off; they reconnect with last_seq and lose nothing.
#[test]
fn pusher_with_a_small_queue_disconnects_slow_subscribers_who_resume_without_loss() {
    let _g = heavy_lock();
    let p = Pusher::start(&["--fsync", "never", "--send-queue", "32"]).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let r = load(
        dir.path(),
        &scenario_for(&p.ws_url("x").replace("?channel=x", ""), "", 900, 5),
    );
    let v = slow(&r);
    eprintln!("stage: {:#}", r.stage(0));
    assert_eq!(v["behaviour"], "disconnected", "{v}");
    // The pusher marks a subscriber whose queue overflowed and drops it
    // when its writer next wakes: while the socket is blocked (the
    // subscriber not reading, MBs queued) or only once it drains (the
    // subscriber reads again). Both happen (measured: 1 in 3 runs cut
    // during the stall); the subscribers see both as a reset.
    let queued = num(v, "max_send_queue_bytes");
    assert!(queued > 256 * 1024, "{v}");
    match num(v, "server_closed") {
        0 => assert!(v["first_close_ms"].is_null(), "{v}"),
        // Inside the window the sampler watched (the fault's start to its end).
        2 => {
            let f = fault(&r);
            let held_ms = (num(f, "end_mono_ns") - num(f, "start_mono_ns")) as f64 / 1e6;
            assert!(v["first_close_ms"].as_f64().unwrap() <= held_ms, "{v}");
        }
        n => panic!("{n} of 2 slow connections closed during the stall: {v}"),
    }
    // Each at least once; one may be cut again while it catches up on
    // the backlog at 3× the rate (seen: 3 cuts for 2 subscribers).
    let cuts = num(v, "slow_disconnects");
    assert!(cuts >= 2, "{v}");
    assert_eq!(num(v, "slow_lost"), 0, "resumed from last_seq: {v}");
    assert_eq!(num(v, "others_lost"), 0);
    let s = r.stage(0);
    assert_eq!(
        num(&s["connections"], "unexpected_disconnects"),
        cuts,
        "only the slow ones: {s:#}"
    );
    assert_eq!(s["messages"]["lost"], 0);
}

/// NGINX + nchan: what it does with subscribers that stop reading.
#[test]
fn nchan_slow_consumers_outcome() {
    if !nginx::available() {
        eprintln!("skipped: nginx + nchan not installed");
        return;
    }
    let _g = heavy_lock();
    let n = nginx::Nginx::start(1).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let extra = format!("protocol = \"nchan\"\npublish_url = \"{}\"", n.pub_url());
    let r = load(dir.path(), &scenario(&n.sub_url(), &extra, RATE));
    let v = slow(&r);
    assert_eq!(num(v, "subscribers"), 2);
    assert_eq!(num(v, "connections_found"), 2);
    assert!(num(v, "max_send_queue_bytes") > 256 * 1024, "{v}");
    assert_eq!(v["behaviour"], "buffered", "{v}");
    assert_eq!(num(v, "others_lost"), 0);
}
