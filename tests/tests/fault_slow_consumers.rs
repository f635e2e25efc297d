//! `slow-consumers` end to end: 10 % of the subscribers stop reading for
//! 3 s under a steady fan-out of 2 KiB messages; what the target did is
//! classified from the target's send queues (sock_diag), its RSS, the
//! slow subscribers' own loss and the server's closes. No root needed.

use pushscope_tests::{fault_run, heavy_lock, nginx, pusher::Pusher};

fn scenario(url: &str, extra: &str, rate: u32) -> String {
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
duration = "3s"
"#
    )
}

const RATE: u32 = 300;

fn slow(r: &fault_run::FaultRun) -> &serde_json::Value {
    let v = r.extra(0, "slow_consumers");
    eprintln!("slow_consumers: {v:#}");
    v
}

fn num(v: &serde_json::Value, k: &str) -> u64 {
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
    let r = fault_run::run(
        dir.path(),
        &scenario(&p.ws_url("x").replace("?channel=x", ""), "", RATE),
        Some(p.pid()),
        p.addr.port(),
    )
    .unwrap();
    assert_eq!(
        r.faults[0].status,
        loadgen::faults::FaultStatus::Done,
        "{:?}",
        r.faults[0]
    );
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
    let s = &r.stages[0];
    assert_eq!(s.messages.lost, 0);
    assert_eq!(s.connections.unexpected_disconnects, 0, "{s:?}");
    // The stage's latency is the other subscribers': untouched by the stall.
    assert!(s.latency_ms.max.unwrap() < 1500.0, "{:?}", s.latency_ms);
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
    let r = fault_run::run(
        dir.path(),
        &scenario(&n.sub_url(), &extra, RATE),
        Some(n.guard.pid()),
        n.port,
    )
    .unwrap();
    let v = slow(&r);
    assert_eq!(num(v, "subscribers"), 2);
    assert_eq!(num(v, "connections_found"), 2);
    assert!(num(v, "max_send_queue_bytes") > 256 * 1024, "{v}");
    assert_eq!(v["behaviour"], "buffered", "{v}");
    assert_eq!(num(v, "others_lost"), 0);
}
