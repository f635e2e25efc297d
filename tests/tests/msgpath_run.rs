//! Where each message's latency goes (`pushscope run`, message path): the
//! legs of every sampled message add up to the e2e latency the gate judges,
//! every sampled delivery is joined exactly by byte offset (reference
//! pusher and NGINX + nchan, which batches frames in writev), and known
//! injected causes land in the right leg: a server-side fan-out delay in
//! `server`, a load-generator stall in `client`, a stopped target before
//! and at the target (never in delivery or client). Needs root (probes).

use pushscope_tests::{
    heavy_lock,
    loadgen::{pushscope, LoadRun},
    nginx,
    pusher::{metric, wait_until_flowing, Pusher},
    skip_unless_root,
};
use serde_json::Value;
use std::{
    path::Path,
    time::{Duration, Instant},
};

fn run(pid: u32, url: &[&str], extra: &[&str], out: &Path) -> LoadRun {
    let pid = pid.to_string();
    let mut args = vec!["run", "--pid", &pid];
    args.extend_from_slice(url);
    args.extend_from_slice(&["--profile", "lenient", "--grace", "1s"]);
    args.extend_from_slice(extra);
    pushscope(&args, Some(out), Duration::from_secs(120)).unwrap()
}

/// One row of message_path.csv.
struct Row {
    stage: usize,
    legs: [u64; 6],
    e2e: u64,
}

fn csv(out: &Path) -> Vec<Row> {
    let text = std::fs::read_to_string(out.join("message_path.csv")).expect("message_path.csv");
    let mut lines = text.lines();
    assert_eq!(
        lines.next(),
        Some("stage,msg_id,subscriber_port,sched_ns,publish_wait_ns,publish_send_ns,publish_net_ns,server_ns,delivery_ns,client_ns,e2e_ns")
    );
    lines
        .map(|l| {
            let v: Vec<u64> = l.split(',').map(|f| f.parse().unwrap()).collect();
            Row {
                stage: v[0] as usize,
                legs: v[4..10].try_into().unwrap(),
                e2e: v[10],
            }
        })
        .collect()
}

fn leg(stage: &Value, group: &str, leg: &str, q: &str) -> f64 {
    stage["message_path"][group][leg][q]
        .as_f64()
        .unwrap_or_else(|| panic!("{group}.{leg}.{q} missing: {:#}", stage["message_path"]))
}

/// Every sampled delivery joined, legs summing to the load generator's own
/// e2e latency to the nanosecond, and that e2e within the stage's histogram.
fn assert_exact(s: &Value, out: &Path, stages: usize, sampled: u64) {
    let rows = csv(out);
    for k in 0..stages {
        let st = &s["stages"][k];
        let mp = &st["message_path"];
        assert_eq!(mp["not_measured"], Value::Null, "{mp:#}");
        assert_eq!(mp["unjoined"], serde_json::json!({}), "stage {k}: {mp:#}");
        assert_eq!(mp["sampled_connections"].as_u64(), Some(sampled), "{mp:#}");
        let n = rows.iter().filter(|r| r.stage == k).count() as u64;
        assert!(n >= 200, "stage {k}: {n} sampled messages");
        assert_eq!(mp["messages"].as_u64(), Some(n));
        let max_ms = st["load"]["latency_ms"]["max"].as_f64().unwrap();
        for r in rows.iter().filter(|r| r.stage == k) {
            assert_eq!(r.legs.iter().sum::<u64>(), r.e2e);
            // HDR keeps 3 significant digits: the histogram max is ≥ e2e·(1 − 0.001).
            assert!(
                r.e2e as f64 / 1e6 <= max_ms * 1.001 + 0.001,
                "{} > {max_ms}",
                r.e2e
            );
        }
    }
}

#[test]
fn legs_add_up_to_e2e_and_join_exactly_on_the_reference_pusher_needs_root() {
    if skip_unless_root("legs_add_up_to_e2e_and_join_exactly_on_the_reference_pusher_needs_root") {
        return;
    }
    let _heavy = heavy_lock();
    let p = Pusher::start(&[]).unwrap();
    let out = tempfile::tempdir().unwrap();
    let url = format!("ws://{}/ws", p.addr);
    let port = pushscope_tests::free_port();
    let metrics: std::net::SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    // Live: stage 1's leg p99s appear on the metrics endpoint once it is judged.
    let live = std::thread::spawn(move || {
        let rt = tokio::runtime::Runtime::new().unwrap();
        let deadline = Instant::now() + Duration::from_secs(30);
        while Instant::now() < deadline {
            let name = r#"pushscope_message_leg_p99_ms{leg="server",stage="1"}"#;
            if let Ok(v) = rt.block_on(metric(metrics, name)) {
                return Some(v);
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        None
    });
    let m = metrics.to_string();
    let r = run(
        p.pid(),
        &["--url", &url, "--observer-metrics", &m],
        &[
            "--stages",
            "40:3s,80:3s",
            "--rate",
            "100",
            "--channels",
            "4",
            "--trace-sample",
            "32",
        ],
        out.path(),
    );
    assert_eq!(r.code, Some(0), "{}\n{}", r.stdout, r.stderr);
    let s = r.summary.as_ref().unwrap();
    assert_exact(s, out.path(), 2, 32);
    let live = live
        .join()
        .unwrap()
        .expect("live leg p99 on the metrics endpoint");
    assert!(live > 0.0 && live < 1000.0, "{live}");
    for f in [
        "latency.folded",
        "latency.svg",
        "latency-tail.folded",
        "latency-tail.svg",
    ] {
        assert!(out.path().join(f).exists(), "{f}");
    }
    let folded = std::fs::read_to_string(out.path().join("latency.folded")).unwrap();
    assert!(
        folded.contains("stage 1 (40 conns);e2e;server "),
        "{folded}"
    );
    // Sampled messages are flows on trace.json's timeline.
    let trace: Value =
        serde_json::from_str(&std::fs::read_to_string(out.path().join("trace.json")).unwrap())
            .unwrap();
    let flows = trace["traceEvents"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["cat"] == "msgpath")
        .count();
    assert!(flows >= 3 * 100, "{flows} flow events");
}

#[test]
fn legs_join_exactly_on_nginx_nchan_needs_root() {
    if skip_unless_root("legs_join_exactly_on_nginx_nchan_needs_root") || !nginx::available() {
        return;
    }
    let _heavy = heavy_lock();
    let ng = nginx::Nginx::start(2).unwrap();
    let out = tempfile::tempdir().unwrap();
    let (sub, publ) = (ng.sub_url(), ng.pub_url());
    let r = run(
        ng.guard.pid(),
        &["--protocol", "nchan", "--url", &sub, "--publish-url", &publ],
        &[
            "--stages",
            "60:3s",
            "--rate",
            "200",
            "--channels",
            "3",
            "--trace-sample",
            "24",
        ],
        out.path(),
    );
    let s = r.summary.as_ref().expect("summary.json");
    assert_eq!(
        s["stages"][0]["load"]["messages"]["lost"], 0,
        "{}",
        r.stderr
    );
    assert_exact(s, out.path(), 1, 24);
}

#[test]
fn an_injected_fanout_delay_lands_in_the_server_leg_needs_root() {
    if skip_unless_root("an_injected_fanout_delay_lands_in_the_server_leg_needs_root") {
        return;
    }
    let _heavy = heavy_lock();
    const N: f64 = 40.0;
    let p = Pusher::start(&["--fault-fanout-delay-ms", "40"]).unwrap();
    let out = tempfile::tempdir().unwrap();
    let url = format!("ws://{}/ws", p.addr);
    // 40 msgs/s over 4 channel connections: each answers within ~45 ms,
    // so the publisher never queues behind the delay.
    let r = run(
        p.pid(),
        &["--url", &url],
        &[
            "--stages",
            "40:4s",
            "--rate",
            "40",
            "--channels",
            "4",
            "--publishers",
            "4",
        ],
        out.path(),
    );
    let st = &r.summary.as_ref().unwrap()["stages"][0];
    assert!(
        leg(st, "legs", "server", "p50") >= N,
        "{:#}",
        st["message_path"]
    );
    for other in ["publish", "delivery", "client"] {
        assert!(
            leg(st, "legs", other, "p50") < N / 4.0,
            "{other}: {:#}",
            st["message_path"]
        );
    }
}

#[test]
fn a_load_generator_stall_lands_in_the_client_leg_needs_root() {
    if skip_unless_root("a_load_generator_stall_lands_in_the_client_leg_needs_root") {
        return;
    }
    let _heavy = heavy_lock();
    let p = Pusher::start(&[]).unwrap();
    let out = tempfile::tempdir().unwrap();
    let url = format!("ws://{}/ws", p.addr);
    // The lane thread blocks 150 ms before accounting every 400th frame.
    std::env::set_var("PUSHSCOPE_FAULT_CLIENT_STALL", "150ms/400");
    let r = run(
        p.pid(),
        &["--url", &url],
        &[
            "--stages",
            "40:4s",
            "--rate",
            "100",
            "--channels",
            "4",
            "--trace-sample",
            "40",
        ],
        out.path(),
    );
    std::env::remove_var("PUSHSCOPE_FAULT_CLIENT_STALL");
    let st = &r.summary.as_ref().unwrap()["stages"][0];
    assert!(
        leg(st, "legs", "client", "max") >= 150.0,
        "{:#}",
        st["message_path"]
    );
    assert!(
        leg(st, "legs", "server", "max") < 150.0,
        "{:#}",
        st["message_path"]
    );
    assert!(
        leg(st, "legs", "publish_net", "max") < 150.0,
        "{:#}",
        st["message_path"]
    );
}

#[test]
fn a_stopped_target_shows_before_and_at_the_target_not_after_needs_root() {
    if skip_unless_root("a_stopped_target_shows_before_and_at_the_target_not_after_needs_root") {
        return;
    }
    let _heavy = heavy_lock();
    let p = Pusher::start(&[]).unwrap();
    let out = tempfile::tempdir().unwrap();
    let url = format!("ws://{}/ws", p.addr);
    let (pid, addr) = (p.pid(), p.addr);
    let pauser = std::thread::spawn(move || {
        // Stop the target for 1 s once messages flow to every subscriber.
        wait_until_flowing(addr, 40, 2000.0, Duration::from_secs(30), || false);
        // SAFETY: kill(2) on the pusher child this test started.
        unsafe { libc::kill(pid as i32, libc::SIGSTOP) };
        std::thread::sleep(Duration::from_secs(1)); // the injected pause
        unsafe { libc::kill(pid as i32, libc::SIGCONT) };
    });
    let r = run(
        p.pid(),
        &["--url", &url],
        &[
            "--stages",
            "40:8s",
            "--rate",
            "100",
            "--channels",
            "4",
            "--trace-sample",
            "40",
        ],
        out.path(),
    );
    pauser.join().unwrap();
    let st = &r.summary.as_ref().unwrap()["stages"][0];
    let mp = &st["message_path"];
    assert_eq!(mp["unjoined"], serde_json::json!({}), "{mp:#}");
    // The tail (≥ the stage's p99) is made of the pause. While stopped the
    // target reads no publish (publish_net: the request waits unread; the
    // publishes after it wait behind it: publish_wait) and writes no frame
    // (server): per message, those legs hold the pause; nothing of it is
    // the load generator's sending, delivery or client time.
    let tail_from = mp["tail_from_ms"].as_f64().unwrap();
    assert!(tail_from >= 500.0, "{mp:#}");
    let tail: Vec<Row> = csv(out.path())
        .into_iter()
        .filter(|r| r.e2e as f64 / 1e6 >= tail_from)
        .collect();
    assert!(!tail.is_empty());
    for r in &tail {
        let [wait, send, net, server, delivery, client] = r.legs;
        assert!(
            (wait + net + server) as f64 >= 0.9 * r.e2e as f64,
            "{:?} of {}",
            r.legs,
            r.e2e
        );
        assert!(send + delivery + client < 100_000_000, "{:?}", r.legs);
    }
}

#[test]
fn legs_join_exactly_over_tls_through_openssl_plaintext_on_nginx_needs_root() {
    if skip_unless_root("legs_join_exactly_over_tls_through_openssl_plaintext_on_nginx_needs_root")
        || !nginx::available()
    {
        return;
    }
    let _heavy = heavy_lock();
    let dir = tempfile::tempdir().unwrap();
    let ca = pushscope_tests::tls::Ca::new("pushscope test CA");
    let (cert, key) = ca.leaf(true).write(dir.path(), "nginx");
    let ca_pem = ca.write(dir.path(), "ca");
    let ng = nginx::Nginx::start_tls(2, &cert, &key).unwrap();
    let out = tempfile::tempdir().unwrap();
    let (sub, publ) = (ng.sub_url(), ng.pub_url());
    assert!(sub.starts_with("wss://") && publ.starts_with("https://"));
    let r = run(
        ng.guard.pid(),
        &[
            "--protocol",
            "nchan",
            "--url",
            &sub,
            "--publish-url",
            &publ,
            "--ca-cert",
            &ca_pem,
        ],
        &[
            "--stages",
            "30:3s",
            "--rate",
            "150",
            "--channels",
            "3",
            "--trace-sample",
            "12",
        ],
        out.path(),
    );
    let s = r.summary.as_ref().expect("summary.json");
    assert_eq!(
        s["stages"][0]["load"]["messages"]["lost"], 0,
        "{}",
        r.stderr
    );
    // Over TLS the socket offsets are ciphertext's: the legs come from
    // OpenSSL's SSL_read/SSL_write plaintext, joined exactly.
    assert_exact(s, out.path(), 1, 12);
}

#[test]
fn over_tls_without_openssl_the_message_path_is_not_measured_and_says_why_needs_root() {
    if skip_unless_root(
        "over_tls_without_openssl_the_message_path_is_not_measured_and_says_why_needs_root",
    ) {
        return;
    }
    let _heavy = heavy_lock();
    let dir = tempfile::tempdir().unwrap();
    let ca = pushscope_tests::tls::Ca::new("pushscope test CA");
    let (cert, key) = ca.leaf(true).write(dir.path(), "pusher");
    let ca_pem = ca.write(dir.path(), "ca");
    // The reference pusher speaks TLS with rustls: nothing to uprobe.
    let p = Pusher::start(&["--tls-cert", &cert, "--tls-key", &key]).unwrap();
    let out = tempfile::tempdir().unwrap();
    let url = format!("wss://127.0.0.1:{}/ws", p.addr.port());
    let r = run(
        p.pid(),
        &["--url", &url, "--ca-cert", &ca_pem],
        &["--stages", "10:2s", "--rate", "50", "--channels", "2"],
        out.path(),
    );
    let s = r.summary.as_ref().expect("summary.json");
    assert_eq!(
        s["stages"][0]["load"]["messages"]["lost"], 0,
        "{}",
        r.stderr
    );
    let why = s["stages"][0]["message_path"]["not_measured"]
        .as_str()
        .unwrap_or_else(|| panic!("{:#}", s["stages"][0]["message_path"]));
    assert!(
        why.starts_with("TLS: the target maps no OpenSSL libssl"),
        "{why}"
    );
    assert!(!out.path().join("message_path.csv").exists());
}
