//! The templated `generic` protocol (URL templates, ACK frame template,
//! marker found in the frame) against the reference pusher, with the live
//! Prometheus endpoint scraped during the run.

use pushscope_tests::{heavy_lock, loadgen::pushscope, pusher::metric, pusher::Pusher};
use std::{io::Read, io::Write, time::Duration};

fn scrape(addr: &str) -> String {
    let mut s = std::net::TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    s.write_all(b"GET /metrics HTTP/1.1\r\nhost: x\r\n\r\n")
        .unwrap();
    let mut text = String::new();
    let _ = s.read_to_string(&mut text);
    text
}

#[test]
fn generic_templates_with_acks_and_live_metrics() {
    let _heavy = heavy_lock();
    let p = Pusher::start(&[]).unwrap();
    let metrics = format!("127.0.0.1:{}", pushscope_tests::free_port());
    let out = tempfile::tempdir().unwrap();
    let (sub, publ) = (
        format!("ws://{}/ws?channel={{channel}}", p.addr),
        format!("http://{}/publish/{{channel}}", p.addr),
    );
    let (m, o) = (metrics.clone(), out.path().to_path_buf());
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
    std::thread::sleep(Duration::from_millis(2500));
    let text = scrape(&metrics);
    assert!(text.contains("pushscope_load_connections 10\n"), "{text}");
    assert!(
        text.contains("pushscope_load_target_connections 10\n"),
        "{text}"
    );
    let run = run.join().unwrap();
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
