//! The ramp's floor (`pushscope-loadgen connect-floor`): servers and
//! clients that do no work, sharded over processes, every connection set up
//! and accounted; its 101 is a real upgrade (the load generator's own
//! client accepts it).

use pushscope_tests::{bin_path, heavy_lock, loadgen::pushscope, spawn_first_line};
use std::{process::Command, time::Duration};

#[test]
fn the_floor_sets_up_every_connection_and_reports_each_sides_cpu() {
    let _heavy = heavy_lock();
    let n = 6_000u64;
    let out = Command::new(bin_path("pushscope-loadgen"))
        .args([
            "connect-floor",
            "--connections",
            &n.to_string(),
            "--shards",
            "3",
        ])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    let f: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let num = |k: &str| f[k].as_f64().unwrap_or_else(|| panic!("{k} in {f}"));
    assert_eq!(num("connections"), n as f64, "{f}");
    assert_eq!(num("shards"), 3.0, "{f}");
    assert_eq!(num("failed"), 0.0, "{f}");
    let rate = num("connections_per_s");
    assert!(
        (rate - n as f64 / num("seconds")).abs() < 1.0,
        "rate is connections over seconds: {f}"
    );
    // Each side's CPU is counted in 10 ms ticks per process: 3 shards a
    // side, so each figure is exact to 30 ms / n.
    let tick_us = 3.0 * 10_000.0 / n as f64;
    let (server, client) = (
        num("server_cpu_us_per_connection"),
        num("client_cpu_us_per_connection"),
    );
    // A connection costs both kernels real work (handshake, request,
    // response): neither side's share can be zero, nor above the machine's.
    assert!(server > 0.0 && client > 0.0, "{f}");
    assert!(
        server + client <= num("machine_busy_us_per_connection") + 2.0 * tick_us + 1.0,
        "the two sides cannot take more than the whole machine: {f}"
    );
}

#[test]
fn the_floor_refuses_more_than_one_shard_can_hold() {
    let out = Command::new(bin_path("pushscope-loadgen"))
        .args(["connect-floor", "--connections", "30000", "--shards", "2"])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("use --shards 3 or more"), "{stderr}");
}

/// The load generator's client checks `Sec-WebSocket-Accept`: every
/// subscriber upgrading against a floor server proves the 101 is real.
#[test]
fn the_load_generator_upgrades_against_a_floor_server() {
    let _heavy = heavy_lock();
    let port = pushscope_tests::free_port();
    let mut cmd = Command::new(bin_path("pushscope-loadgen"));
    cmd.args(["connect-floor", "--serve-port", &port.to_string()]);
    let (_server, line) = spawn_first_line(cmd, Duration::from_secs(10)).unwrap();
    assert_eq!(line, "listening");
    let out = tempfile::tempdir().unwrap();
    let run = pushscope(
        &[
            "load",
            "--protocol",
            "generic",
            "--url",
            &format!("ws://127.0.0.1:{port}/sub/{{channel}}"),
            // Nothing is published (rate 0): the URL is never used.
            "--publish-url",
            "http://127.0.0.1:9/pub/{channel}",
            "--rate",
            "0",
            "--stages",
            "300:1s",
            "--connect-rate",
            "3000/s",
            "--grace",
            "0s",
        ],
        Some(out.path()),
        Duration::from_secs(60),
    )
    .unwrap();
    assert_eq!(run.code, Some(0), "stderr:\n{}", run.stderr);
    assert_eq!(
        run.stage_u64(0, "connections", "opened"),
        300,
        "{}",
        run.stage(0)
    );
    assert_eq!(
        run.stage_u64(0, "connections", "failed"),
        0,
        "{}",
        run.stage(0)
    );
}
