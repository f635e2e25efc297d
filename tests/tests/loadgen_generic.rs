//! The templated `generic` protocol (URL templates, ACK frame template,
//! marker found in the frame) against the reference pusher, with the live
//! Prometheus endpoint scraped during the run.

use pushscope_tests::{
    heavy_lock,
    loadgen::pushscope,
    poll_until,
    pusher::{metric, metric_in, Pusher},
    scrape_metrics,
};
use std::{net::SocketAddr, time::Duration};

#[test]
fn generic_templates_with_acks_and_live_metrics() {
    let _heavy = heavy_lock();
    let p = Pusher::start(&[]).unwrap();
    let metrics: SocketAddr = ([127, 0, 0, 1], pushscope_tests::free_port()).into();
    let out = tempfile::tempdir().unwrap();
    let (sub, publ) = (
        format!("ws://{}/ws?channel={{channel}}", p.addr),
        format!("http://{}/publish/{{channel}}", p.addr),
    );
    let (m, o) = (metrics.to_string(), out.path().to_path_buf());
    let run = std::thread::spawn(move || {
        pushscope(
            &[
                "load",
                "--protocol",
                "generic",
                "--url",
                &sub,
                "--publish-url",
                &publ,
                "--ack-frame",
                r#"{"ack":{seq}}"#,
                "--stages",
                "10:3s",
                "--channels",
                "2",
                "--rate",
                "200",
                "--grace",
                "1s",
                "--metrics",
                &m,
                "--progress-interval",
                "500ms",
            ],
            Some(&o),
            Duration::from_secs(30),
        )
        .unwrap()
    });
    // The live endpoint shows the stage's 10 connections open while the run
    // holds them (polled: how long the ramp takes is not ours to guess).
    let seen = poll_until(
        "the live metrics to show 10 of 10 connections",
        Duration::from_secs(20),
        || {
            if run.is_finished() {
                return Ok(false);
            }
            let text = scrape_metrics(metrics).map_err(|e| e.to_string())?;
            let open = metric_in(&text, "pushscope_load_connections");
            let target = metric_in(&text, "pushscope_load_target_connections");
            if open == Some(10.0) && target == Some(10.0) {
                Ok(true)
            } else {
                Err(text)
            }
        },
    );
    let run = run.join().unwrap();
    assert!(
        seen,
        "the run ended before its live metrics showed 10 of 10 connections; stderr:\n{}",
        run.stderr
    );
    assert_eq!(run.code, Some(0), "stderr:\n{}", run.stderr);
    let s = run.stage(0);
    assert_eq!(run.stage_u64(0, "messages", "lost"), 0, "{s}");
    assert_eq!(
        run.stage_u64(0, "messages", "received"),
        run.stage_u64(0, "messages", "expected"),
        "{s}"
    );
    assert!(run.stage_u64(0, "messages", "received") > 1000, "{s}");
    assert_eq!(
        run.stage_u64(0, "connections", "unexpected_disconnects"),
        0,
        "{s}"
    );
    // The pusher accepted our templated ACKs (a bad one closes the connection).
    let rt = tokio::runtime::Runtime::new().unwrap();
    assert!(rt.block_on(metric(p.addr, "pusher_acks_total")).unwrap() > 0.0);
    assert_eq!(
        rt.block_on(metric(p.addr, "pusher_malformed_frames_total"))
            .unwrap(),
        0.0
    );
}
