//! Scale in CI (issue #12): `pushscope run` holds 40,000 WebSocket
//! subscribers on NGINX + nchan (4 workers, one `reuseport` listener each,
//! so each worker stays under the 20,000 per-process fd limit), the load
//! sharded over worker processes and four loopback source addresses, the
//! observer attached to the master: every accepted connection counted
//! and tracked across the workers, no ring-buffer drop, messages delivered
//! with no loss, and the scale figures of the stage measured. The 100k run
//! is `cargo xtask bench scale`, not a test.

use pushscope_tests::{heavy_lock, loadgen::pushscope, nginx, skip_unless_root};
use std::time::Duration;

const CONNECTIONS: u64 = 40_000;
const PUBLISHERS: u64 = 2;

#[test]
fn run_holds_40k_nchan_subscribers_observed_exactly_needs_root() {
    if skip_unless_root("run_holds_40k_nchan_subscribers_observed_exactly_needs_root") {
        return;
    }
    if !nginx::available() {
        eprintln!(
            "skipped: nginx with {} is not installed",
            nginx::NCHAN_MODULE
        );
        return;
    }
    let _heavy = heavy_lock();
    let ng = nginx::Nginx::start_scale(4).unwrap();
    let out = tempfile::tempdir().unwrap();
    let pid = ng.guard.pid().to_string();
    let stages = format!("{CONNECTIONS}:10s");
    let publishers = PUBLISHERS.to_string();
    let run = pushscope(
        &[
            "run",
            "--pid",
            &pid,
            "--protocol",
            "nchan",
            "--url",
            &ng.sub_url(),
            "--publish-url",
            &ng.pub_url(),
            "--stages",
            &stages,
            "--connect-rate",
            "2000/s",
            "--source-addrs",
            "127.0.0.1-127.0.0.4",
            "--channels",
            "40",
            "--rate",
            "2",
            "--publishers",
            &publishers,
            "--grace",
            "5s",
            "--profile",
            "lenient",
            "--no-profile",
        ],
        Some(out.path()),
        Duration::from_secs(240),
    )
    .unwrap();
    let summary = run.summary.as_ref().unwrap_or_else(|| {
        panic!(
            "no summary\nstdout:\n{}\nstderr:\n{}",
            run.stdout, run.stderr
        )
    });
    let stage = &summary["stages"][0];
    let load = &stage["load"];
    let obs = &stage["observer"];
    let ctx = format!(
        "stdout:\n{}\nstderr:\n{}\nconnections: {:#}\nfailed: {:#}\nmessages: {:#}\nobserver: {:#}",
        run.stdout,
        run.stderr,
        load["connections"],
        load["failed_by_reason"],
        load["messages"],
        obs["coverage"]
    );
    let n = |v: &serde_json::Value| v.as_u64().unwrap_or_else(|| panic!("{v} {ctx}"));
    // The load side: every subscriber upgraded on the first try and stayed.
    assert_eq!(n(&load["connections"]["opened"]), CONNECTIONS, "{ctx}");
    assert_eq!(n(&load["connections"]["failed"]), 0, "{ctx}");
    assert_eq!(
        n(&load["connections"]["unexpected_disconnects"]),
        0,
        "{ctx}"
    );
    assert_eq!(n(&load["new_connections"]), CONNECTIONS, "{ctx}");
    assert_eq!(n(&load["messages"]["lost"]), 0, "{ctx}");
    assert!(n(&load["messages"]["received"]) > 0, "{ctx}");
    // The observer, attached to the master, saw every connection the
    // workers accepted (the subscribers, the publishers' HTTP connections
    // and the load's reachability probe), tracked them all, dropped nothing.
    let accepted = n(&obs["coverage"]["accepted"]);
    assert!(
        (CONNECTIONS..=CONNECTIONS + PUBLISHERS + 1).contains(&accepted),
        "accepted {accepted}: {ctx}"
    );
    assert_eq!(n(&obs["coverage"]["tracked"]), accepted, "{ctx}");
    assert_eq!(stage["figures"]["observer_coverage_pct"], 100.0, "{ctx}");
    assert_eq!(stage["figures"]["probe_drops"], 0, "{ctx}");
    assert_eq!(
        n(&obs["phases_ms"]["ws_upgrade"]["count"]),
        CONNECTIONS,
        "{ctx}"
    );
    // The connections were spread over the four workers.
    assert!(n(&obs["fd"]["open_peak"]) < 19_000, "{ctx}");
    // What holding them cost, measured.
    let sc = &stage["scale"];
    assert_eq!(n(&sc["connections_held"]), CONNECTIONS, "{sc:#}");
    assert!(
        n(&sc["kernel_tcp"]["tcp_inuse"]) >= 2 * CONNECTIONS,
        "{sc:#}"
    );
    let loadgen_per_conn = sc["loadgen_rss_per_connection_bytes"].as_f64().unwrap();
    let target_per_conn = sc["target_rss_per_connection_bytes"].as_f64().unwrap();
    eprintln!(
        "per connection: loadgen {loadgen_per_conn:.0} B, nginx {target_per_conn:.0} B; observer CPU {} % of a core",
        sc["observer_cpu_pct"]
    );
    assert!((1_000.0..100_000.0).contains(&loadgen_per_conn), "{sc:#}");
    assert!((100.0..100_000.0).contains(&target_per_conn), "{sc:#}");
    assert!(sc["observer_cpu_pct"].as_f64().unwrap() < 50.0, "{sc:#}");
}
