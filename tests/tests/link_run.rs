//! `--network` end to end, as root: real `pushscope load` / `pushscope run`
//! processes against the reference pusher on 127.0.0.1 through the
//! built-in link emulator.
//!
//! - `financial-backbone`, sharded over 2 worker processes: completed, 0
//!   lost, `network` in summary.json, the sockets' srtt ≈ 2 ms (so the
//!   workers' sockets went through the link too).
//! - Throughput below the link's capacity is unchanged: delivered
//!   messages/s with and without the link within 2 %.
//! - Nothing left after a run, after SIGINT and after SIGKILL.
//! - `pushscope run --pid` with the link: network object with the probes'
//!   server retransmits, report section.

use pushscope_tests::{
    bin_path, heavy_lock, link_host_devices, loadgen::pushscope, poll_until, pusher::Pusher,
    skip_unless_root, ChildGuard,
};
use serde_json::Value;
use std::{
    process::{Command, Stdio},
    time::Duration,
};

/// Host routes to the links' address block (100.64.0.0/10).
fn link_routes() -> Vec<String> {
    let out = Command::new("ip").args(["route", "show"]).output().unwrap();
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter(|l| l.contains("dev psl"))
        .map(str::to_string)
        .collect()
}

fn f(v: &Value, path: &str) -> f64 {
    v.pointer(path)
        .and_then(Value::as_f64)
        .unwrap_or_else(|| panic!("{path} missing in {v:#}"))
}

#[test]
fn load_over_financial_backbone_sharded_loses_nothing_and_reports_the_link_root() {
    if skip_unless_root(
        "load_over_financial_backbone_sharded_loses_nothing_and_reports_the_link_root",
    ) {
        return;
    }
    let _heavy = heavy_lock();
    let pusher = Pusher::start(&[]).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let url = format!("ws://{}/ws", pusher.addr);
    let run = pushscope(
        &[
            "load",
            "--url",
            &url,
            "--stages",
            "60:6s",
            "--channels",
            "2",
            "--rate",
            "100",
            "--heartbeat",
            "500ms",
            "--grace",
            "2s",
            "--shard-cap",
            "30",
            "--network",
            "financial-backbone",
        ],
        Some(dir.path()),
        Duration::from_secs(120),
    )
    .unwrap();
    assert_eq!(run.code, Some(0), "stderr: {}", run.stderr);
    let s = run.summary.as_ref().unwrap();
    let st = run.stage(0);
    eprintln!("network: {:#}", s["network"]);
    assert_eq!(st["connections"]["opened"], 60);
    assert_eq!(run.stage_u64(0, "messages", "lost"), 0);
    // 60 subscribers of 2 channels at 100 msgs/s: 50/s each, ~6 s.
    let received = run.stage_u64(0, "messages", "received");
    assert_eq!(received, run.stage_u64(0, "messages", "expected"));
    assert!(received >= 60 * 50 * 4, "{received} received");
    let n = &s["network"];
    assert_eq!(n["mechanism"], "built-in");
    assert_eq!(n["asked_text"], "rtt=2ms,jitter=0.3ms,loss=0.0001%");
    assert_eq!(f(n, "/asked/rtt"), 2.0);
    assert!(f(n, "/to_target/forwarded") > 1000.0 && f(n, "/from_target/forwarded") > 1000.0);
    // The forwarder's applied delay plus half the host path it measured
    // at start and took off (`path.compensated_ms`): 1 ms each way (± 10 %).
    let half_path = f(n, "/path/compensated_ms") / 2.0;
    assert!((0.0..0.5).contains(&half_path), "host path {:#}", n["path"]);
    for d in ["to_target", "from_target"] {
        let p50 = f(n, &format!("/{d}/delay_p50_ms")) + half_path;
        assert!(
            (0.9..=1.1).contains(&p50),
            "{d} delay p50 {p50} ms (with the path's {half_path} ms)"
        );
    }
    // Every subscriber lives in a worker process: at least the link's 2 ms
    // (a worker outside the namespace would show loopback srtts, tens of
    // µs); above it, the pusher's and the busy host's own time.
    let srtt = f(n, "/tcp/srtt_p50_ms");
    assert!(
        (1.8..=4.0).contains(&srtt),
        "srtt p50 {srtt} ms over a 2 ms link"
    );
    assert!(f(n, "/tcp/srtt_samples") >= 60.0 * 5.0);
    let hb = f(st, "/heartbeat_rtt_ms/p50");
    assert!((1.8..=5.0).contains(&hb), "heartbeat RTT p50 {hb} ms");
    assert!(st["tcp_srtt_ms"]["p99"].as_f64().is_some());
    assert!(link_routes()
        .iter()
        .all(|r| !r.contains(n["client_addr"].as_str().unwrap())));
}

/// Delivered messages per second per subscriber of one load (received ÷
/// connection-seconds: independent of how long the ramp took, which the
/// link's round trips lengthen), and the summary.
fn delivered_per_s(url: &str, network: Option<&str>) -> (f64, Value) {
    let dir = tempfile::tempdir().unwrap();
    let mut args = vec![
        "load",
        "--url",
        url,
        "--stages",
        "20:6s",
        "--channels",
        "1",
        "--rate",
        "200",
        "--grace",
        "2s",
    ];
    if let Some(n) = network {
        args.extend_from_slice(&["--network", n]);
    }
    let run = pushscope(&args, Some(dir.path()), Duration::from_secs(120)).unwrap();
    assert_eq!(run.code, Some(0), "stderr: {}", run.stderr);
    let st = run.stage(0).clone();
    assert_eq!(st["messages"]["lost"], 0, "{st:#}");
    assert_eq!(
        st["messages"]["received"], st["messages"]["expected"],
        "{st:#}"
    );
    let subscriber_seconds = f(&st, "/connection_seconds");
    (
        f(&st, "/messages/received") / subscriber_seconds,
        run.summary.unwrap(),
    )
}

#[test]
fn throughput_below_capacity_is_unchanged_by_the_link_root() {
    if skip_unless_root("throughput_below_capacity_is_unchanged_by_the_link_root") {
        return;
    }
    let _heavy = heavy_lock();
    let pusher = Pusher::start(&[]).unwrap();
    let url = format!("ws://{}/ws", pusher.addr);
    let (plain, _) = delivered_per_s(&url, None);
    let (linked, s) = delivered_per_s(&url, Some("rtt=2ms,jitter=0.3ms,loss=0%,rate=100mbit"));
    eprintln!("delivered msgs/s per subscriber: loopback {plain:.1}, over the link {linked:.1}");
    assert!(s["network"]["to_target"]["forwarded"].as_u64().unwrap() > 0);
    let ratio = linked / plain;
    // 200 msgs/s offered to each of 20 subscribers: both must deliver all of it.
    assert!(
        (0.98..=1.02).contains(&ratio),
        "over the link {linked:.1}/s vs {plain:.1}/s without"
    );
    assert!(
        plain > 200.0 * 0.9,
        "{plain:.1}/s per subscriber delivered of 200/s offered"
    );
}

/// Starts `pushscope load --network` for long, waits for its link device.
fn long_linked_load(url: &str) -> ChildGuard {
    let child = Command::new(bin_path("pushscope"))
        .args([
            "load",
            "--url",
            url,
            "--stages",
            "10:60s",
            "--rate",
            "50",
            "--network",
            "financial-backbone",
        ])
        .arg("--out")
        .arg(std::env::temp_dir().join(format!("pushscope-link-kill-{}", std::process::id())))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let g = ChildGuard {
        child,
        name: "pushscope load --network".into(),
    };
    let pid = g.pid();
    poll_until("the link's host device", Duration::from_secs(20), || {
        let d = link_host_devices(pid);
        if d.is_empty() {
            Err("none yet".into())
        } else {
            Ok(())
        }
    });
    assert!(
        link_routes()
            .iter()
            .any(|r| r.contains(&format!("psl{pid}h"))),
        "{:?}",
        link_routes()
    );
    g
}

fn assert_gone(pid: u32, how: &str) {
    poll_until(
        &format!("the link of PID {pid} to vanish after {how}"),
        Duration::from_secs(10),
        || {
            let (d, r) = (link_host_devices(pid), link_routes());
            let r: Vec<_> = r
                .into_iter()
                .filter(|l| l.contains(&format!("psl{pid}h")))
                .collect();
            if d.is_empty() && r.is_empty() {
                Ok(())
            } else {
                Err(format!("devices {d:?}, routes {r:?}"))
            }
        },
    );
}

#[test]
fn no_namespace_device_or_route_left_after_sigint_or_sigkill_root() {
    if skip_unless_root("no_namespace_device_or_route_left_after_sigint_or_sigkill_root") {
        return;
    }
    let _heavy = heavy_lock();
    let pusher = Pusher::start(&[]).unwrap();
    let url = format!("ws://{}/ws", pusher.addr);
    for (sig, how) in [(libc::SIGINT, "SIGINT"), (libc::SIGKILL, "SIGKILL")] {
        let mut g = long_linked_load(&url);
        let pid = g.pid();
        g.signal(sig);
        assert!(
            g.wait_timeout(Duration::from_secs(15)).is_some(),
            "pushscope load did not stop on {how}"
        );
        assert_gone(pid, how);
        // The namespace went with the process: no fd of it is open anywhere.
        assert!(!std::path::Path::new(&format!("/proc/{pid}")).exists());
    }
    // The next run starts cleanly and leaves nothing either.
    let dir = tempfile::tempdir().unwrap();
    let run = pushscope(
        &[
            "load",
            "--url",
            &url,
            "--stages",
            "5:1s",
            "--rate",
            "10",
            "--network",
            "rtt=1ms",
        ],
        Some(dir.path()),
        Duration::from_secs(60),
    )
    .unwrap();
    assert_eq!(run.code, Some(0), "{}", run.stderr);
    assert!(link_routes().iter().all(|r| !r.contains(
        run.summary.as_ref().unwrap()["network"]["client_addr"]
            .as_str()
            .unwrap()
    )));
}

#[test]
fn bad_network_values_are_usage_errors() {
    let run = pushscope(
        &[
            "load",
            "--url",
            "ws://127.0.0.1:9/ws",
            "--network",
            "rtt=2ms,lag=1ms",
        ],
        None,
        Duration::from_secs(20),
    )
    .unwrap();
    assert_eq!(run.code, Some(2), "{}", run.stderr);
    assert!(run.stderr.contains("unknown key `lag`"), "{}", run.stderr);
    assert_eq!(run.stderr.trim().lines().count(), 1, "{}", run.stderr);
}

#[test]
fn run_with_pid_over_the_link_reports_network_and_server_retransmits_root() {
    if skip_unless_root("run_with_pid_over_the_link_reports_network_and_server_retransmits_root") {
        return;
    }
    let _heavy = heavy_lock();
    let pusher = Pusher::start(&[]).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let pid = pusher.pid().to_string();
    let url = format!("ws://{}/ws", pusher.addr);
    let run = pushscope(
        &[
            "run",
            "--pid",
            &pid,
            "--url",
            &url,
            "--stages",
            "40:5s",
            "--rate",
            "50",
            "--heartbeat",
            "1s",
            "--grace",
            "1s",
            "--profile",
            "lenient",
            "--no-profile",
            "--network",
            "financial-backbone",
        ],
        Some(dir.path()),
        Duration::from_secs(120),
    )
    .unwrap();
    let s = run
        .summary
        .as_ref()
        .unwrap_or_else(|| panic!("no summary: {}", run.stderr));
    assert!(matches!(run.code, Some(0) | Some(1)), "{}", run.stderr);
    assert_eq!(s["complete"], true, "{}", run.stderr);
    let n = &s["network"];
    assert_eq!(n["mechanism"], "built-in", "{s:#}");
    assert!(n["server_retransmits"].as_u64().is_some(), "{n:#}");
    let srtt = f(n, "/tcp/srtt_p50_ms");
    assert!((1.8..=4.0).contains(&srtt), "srtt p50 {srtt} ms");
    assert_eq!(s["stages"][0]["load"]["messages"]["lost"], 0);
    assert!(f(&s["stages"][0]["load"], "/heartbeat_rtt_ms/p50") >= 1.8);
    let html = std::fs::read_to_string(dir.path().join("report.html")).unwrap();
    assert!(
        html.contains("Emulated network") && html.contains("rtt=2ms,jitter=0.3ms,loss=0.0001%")
    );
    assert!(html.contains("Heartbeat RTT"));
}
