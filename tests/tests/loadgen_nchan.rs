//! `pushscope load --protocol nchan` against real NGINX + nchan (started
//! from tests/fixtures/nchan-load.conf): a staged run with latency and
//! exact counts, and 20,000 connections sharded over worker processes
//! (nchan's two workers hold 10k each: one process stays under the fd limit).

use pushscope_tests::{
    heavy_lock, loadgen::pushscope, nginx, poll_until, pusher::metric_in, scrape_metrics,
};
use std::{net::SocketAddr, time::Duration};

fn skip() -> bool {
    if nginx::available() {
        return false;
    }
    eprintln!(
        "skipped: nginx with {} is not installed (apt-get install nginx libnginx-mod-nchan)",
        nginx::NCHAN_MODULE
    );
    true
}

#[test]
fn nchan_staged_run_reports_latency_and_exact_counts() {
    if skip() {
        return;
    }
    let _heavy = heavy_lock();
    let ng = nginx::Nginx::start(2).unwrap();
    let out = tempfile::tempdir().unwrap();
    let run = pushscope(
        &[
            "load",
            "--protocol",
            "nchan",
            "--url",
            &ng.sub_url(),
            "--publish-url",
            &ng.pub_url(),
            "--stages",
            "50:2s,100:2s,100:2s",
            "--channels",
            "5",
            "--rate",
            "300",
            "--grace",
            "1s",
        ],
        Some(out.path()),
        Duration::from_secs(60),
    )
    .unwrap();
    assert_eq!(run.code, Some(0), "stderr:\n{}", run.stderr);
    for k in 0..3 {
        let m = |f| run.stage_u64(k, "messages", f);
        let s = run.stage(k);
        assert!(m("published") >= 400, "{s}");
        assert_eq!(m("lost"), 0, "{s}");
        assert_eq!(m("duplicates"), 0, "{s}");
        assert_eq!(m("out_of_order"), 0, "{s}");
        assert_eq!(m("received"), m("expected"), "{s}");
        let p50 = s["latency_ms"]["p50"].as_f64().unwrap();
        let p99 = s["latency_ms"]["p99"].as_f64().unwrap();
        assert!(p50 > 0.0 && p50 <= p99 && p99 < 1000.0, "{s}");
    }
    assert_eq!(run.stage_u64(1, "connections", "opened"), 100);
    // Stage 2 adds nobody: every message reached the 20 subscribers of its channel.
    assert_eq!(
        run.stage_u64(2, "messages", "received"),
        run.stage_u64(2, "messages", "published") * 20
    );
}

#[test]
fn twenty_thousand_connections_sharded_over_worker_processes() {
    if skip() {
        return;
    }
    let _heavy = heavy_lock();
    let ng = nginx::Nginx::start(2).unwrap();
    let out = tempfile::tempdir().unwrap();
    let run = pushscope(
        &[
            "load",
            "--protocol",
            "nchan",
            "--url",
            &ng.sub_url(),
            "--publish-url",
            &ng.pub_url(),
            "--stages",
            "20000:3s",
            "--connect-rate",
            "5000/s",
            "--channels",
            "20",
            "--rate",
            "10",
            "--grace",
            "2s",
            "--shard-cap",
            "15000",
            "--source-addrs",
            "127.0.0.1-127.0.0.4",
        ],
        Some(out.path()),
        Duration::from_secs(120),
    )
    .unwrap();
    assert_eq!(run.code, Some(0), "stderr:\n{}", run.stderr);
    let s = run.stage(0);
    let c = |f| run.stage_u64(0, "connections", f);
    assert_eq!(c("target"), 20_000, "{s}");
    assert_eq!(c("opened"), 20_000, "{s}");
    assert_eq!(c("failed"), 0, "{s}");
    assert_eq!(c("unexpected_disconnects"), 0, "{s}");
    let m = |f| run.stage_u64(0, "messages", f);
    assert!(m("published") >= 30, "{s}");
    assert_eq!(m("lost"), 0, "{s}");
    assert_eq!(m("duplicates"), 0, "{s}");
    assert_eq!(m("received"), m("expected"), "{s}");
    // Every message of the hold reaches ~1000 subscribers of its channel.
    assert!(m("received") >= 20_000, "{s}");
    // The coordinator and two worker shards each reported their CPU.
    assert_eq!(s["loadgen"]["cpu_pct"].as_array().unwrap().len(), 3, "{s}");
    assert!(s["client_phases_ms"]["upgrade"]["p99"].as_f64().unwrap() > 0.0);
}

#[test]
fn nchan_subscribers_resume_by_message_id_after_a_freeze() {
    if skip() {
        return;
    }
    let _heavy = heavy_lock();
    let ng = nginx::Nginx::start(2).unwrap();
    let out = tempfile::tempdir().unwrap();
    let metrics: SocketAddr = ([127, 0, 0, 1], pushscope_tests::free_port()).into();
    let (sub, publ, o) = (ng.sub_url(), ng.pub_url(), out.path().to_path_buf());
    let m = metrics.to_string();
    let run = std::thread::spawn(move || {
        pushscope(
            &[
                "load",
                "--protocol",
                "nchan",
                "--url",
                &sub,
                "--publish-url",
                &publ,
                "--stages",
                "20:6s",
                "--channels",
                "2",
                "--rate",
                "100",
                "--heartbeat",
                "500ms",
                "--grace",
                "2s",
                "--metrics",
                &m,
                "--progress-interval",
                "200ms",
            ],
            Some(&o),
            Duration::from_secs(60),
        )
        .unwrap()
    });
    // Freeze only once all 20 subscribers are connected and messages flow
    // to every one of them (each has a message id to resume from): the
    // received count grew by 100 since all were connected, i.e. about ten
    // messages over both channels, each reaching its channel's 10 subscribers.
    let mut received_at_full: Option<f64> = None;
    let flowing = poll_until(
        "20 of 20 nchan subscribers connected and receiving (live metrics)",
        Duration::from_secs(20),
        || {
            if run.is_finished() {
                return Ok(false);
            }
            let text = scrape_metrics(metrics).map_err(|e| e.to_string())?;
            let open = metric_in(&text, "pushscope_load_connections");
            let received = metric_in(&text, "pushscope_load_received_total");
            match (received, received_at_full) {
                (Some(r), Some(base)) if open == Some(20.0) && r >= base + 100.0 => Ok(true),
                (Some(r), None) if open == Some(20.0) => {
                    received_at_full = Some(r);
                    Err(text)
                }
                _ => Err(text),
            }
        },
    );
    if !flowing {
        let run = run.join().unwrap();
        panic!(
            "the run ended before 20 subscribers were connected and receiving; stderr:\n{}",
            run.stderr
        );
    }
    ng.signal_all(libc::SIGSTOP);
    // The injected freeze (not a wait for anything): NGINX stays stopped
    // for 2.5 s, well past the 500 ms heartbeat's detection.
    std::thread::sleep(Duration::from_millis(2500));
    ng.signal_all(libc::SIGCONT);
    let run = run.join().unwrap();
    assert_eq!(run.code, Some(0), "stderr:\n{}", run.stderr);
    let s = run.stage(0);
    // Every subscriber noticed the freeze, came back with last_event_id and
    // got what was published meanwhile (without resume, ~1 per subscriber is lost).
    assert_eq!(
        run.stage_u64(0, "connections", "unexpected_disconnects"),
        20,
        "{s}"
    );
    assert_eq!(
        s["disconnects_by_reason"]["heartbeat lost"].as_u64(),
        Some(20),
        "{s}"
    );
    assert_eq!(run.stage_u64(0, "connections", "reconnects"), 20, "{s}");
    assert_eq!(run.stage_u64(0, "messages", "lost"), 0, "{s}");
    assert_eq!(run.stage_u64(0, "messages", "duplicates"), 0, "{s}");
    assert_eq!(
        run.stage_u64(0, "messages", "received"),
        run.stage_u64(0, "messages", "expected"),
        "{s}"
    );
}
