//! The probes' steady state against the reference pusher at fan-out
//! saturation (needs root: real probes). `pushscope-pusher-bench fanout`
//! drives 50 subscribers as fast as the pusher goes; the receive/send
//! hooks must turn away the calls of classified, untraced connections
//! without looking their connection up (probe-ebpf/README.md, "Steady
//! state"), and every connection must leave the hot set again:
//! * every tracked connection entered the hot set, and after all of them
//!   closed, as many left it (no counter of `hot_socks` stays raised);
//! * calls that looked their connection up ≤ the first calls of every
//!   connection (`io_events_per_conn` each) + the 1-in-64 send-queue
//!   samples (binomial: 16 % margin is > 10 standard deviations at these
//!   counts) — the rest took the fast path;
//! * a subscriber's classified calls (events) end at its first push:
//!   ≤ 5 each, where they were `io_events_per_conn` (24);
//! * the send-queue sample is alive: the lookups beyond the hot calls
//!   are at least a quarter of the expected 1 in 64 of the calls (nearly
//!   every call of the pusher here is a send; a sampled send whose queue
//!   is empty needs no lookup: ~15 % of them here), and the max send queue
//!   is > 0;
//! * the figures that stay exact are: accepted = tracked = closed, 0 drops.

use pushscope_tests::{
    bin_path, heavy_lock, observer::num, observer::Observe, poll_until, pusher::Pusher,
    skip_unless_root,
};
use std::{process::Command, time::Duration};

const SUBSCRIBERS: u64 = 50;
/// `pushscope observe`'s default `--io-events`.
const IO_EVENTS_PER_CONN: f64 = 24.0;

fn sockets_open(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .map(|d| {
            d.filter_map(|e| std::fs::read_link(e.ok()?.path()).ok())
                .filter(|l| l.to_string_lossy().starts_with("socket:"))
                .count()
        })
        .unwrap_or(0)
}

#[test]
fn steady_state_calls_skip_the_connection_lookup_root() {
    if skip_unless_root("steady_state_calls_skip_the_connection_lookup_root") {
        return;
    }
    let _l = heavy_lock();
    let p = Pusher::start(&[]).unwrap();
    let pid = p.pid();
    let idle_sockets = sockets_open(pid);
    let mut obs = Observe::start(pid, &[]).unwrap();
    let out = Command::new(bin_path("pushscope-pusher-bench"))
        .args(["fanout", "--addr", &p.addr.to_string(), "--pid"])
        .arg(pid.to_string())
        .args(["--subscribers", &SUBSCRIBERS.to_string(), "--seconds", "3"])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "pushscope-pusher-bench fanout failed: {stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let deliveries: f64 = stdout
        .lines()
        .find_map(|l| l.strip_prefix("deliveries="))
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no deliveries= in {stdout}"));
    eprintln!("{stdout}");
    // The bench's connections are gone once the pusher has closed its side.
    poll_until(
        "the pusher to close the bench's connections",
        Duration::from_secs(15),
        || {
            let n = sockets_open(pid);
            (n <= idle_sockets)
                .then_some(())
                .ok_or(format!("{n} sockets open, {idle_sockets} before the load"))
        },
    );
    let summary = obs.stop().unwrap();
    let o = &summary["observer"];
    let d = &summary["observe"]["details"];
    eprintln!("details: {d:#}");

    // Exact figures.
    let tracked = num(o, "coverage.tracked");
    assert!(tracked > SUBSCRIBERS as f64, "{o:#}");
    assert_eq!(num(o, "coverage.accepted"), tracked, "{o:#}");
    assert_eq!(num(d, "closes_tracked"), tracked, "{d:#}");
    assert_eq!(num(o, "drops"), 0.0, "{o:#}");

    // Every tracked connection entered the hot set and left it.
    assert_eq!(num(d, "hot_connections_entered"), tracked, "{d:#}");
    assert_eq!(num(d, "hot_connections_left"), tracked, "{d:#}");

    // The fast path took nearly every call.
    let calls = num(d, "socket_calls");
    let looked_up = num(d, "socket_calls_looked_up");
    assert!(
        calls >= deliveries / 50.0 && calls >= 20.0 * SUBSCRIBERS as f64,
        "too few socket calls ({calls}) for {deliveries} deliveries: {d:#}"
    );
    let first_calls = IO_EVENTS_PER_CONN * tracked;
    // The send-queue sample: about 1 in 64 sends (ps_sample_send).
    const SAMPLE_ONE_IN: f64 = 64.0;
    let bound = first_calls + calls / SAMPLE_ONE_IN * 1.16;
    assert!(
        looked_up <= bound,
        "{looked_up} of {calls} calls looked their connection up, more than {bound:.0} \
         (first calls {first_calls} + 1 in {SAMPLE_ONE_IN} sends): {d:#}"
    );
    // A subscriber's classified calls end at its first push: its GET, its
    // 101, maybe a ping turn, the first data frame (the publishers'
    // HTTP connections push no frame: all their first calls are events).
    let io_events = num(d, "io_events");
    let publishers = tracked - SUBSCRIBERS as f64;
    let io_bound = 5.0 * SUBSCRIBERS as f64 + IO_EVENTS_PER_CONN * publishers;
    assert!(
        io_events <= io_bound && io_events >= 3.0 * SUBSCRIBERS as f64,
        "{io_events} classified calls sent as events, expected 3..={io_bound} \
         (≤ 5 a subscriber, ≤ {IO_EVENTS_PER_CONN} a publisher): {d:#}"
    );
    // The lookups of hot connections: their events, and the call that
    // cools each (EAGAINs while hot only add to the lookups).
    let hot_lookups = io_events + tracked;
    assert!(
        looked_up - hot_lookups >= calls / SAMPLE_ONE_IN / 4.0,
        "the 1-in-{SAMPLE_ONE_IN} send-queue sample looks dead: {looked_up} lookups of {calls} calls: {d:#}"
    );
    assert!(num(d, "max_send_queue_bytes") > 0.0, "{d:#}");
    eprintln!(
        "fast path: {:.1} % of {calls} calls ({looked_up} looked up)",
        100.0 * (1.0 - looked_up / calls)
    );
}
