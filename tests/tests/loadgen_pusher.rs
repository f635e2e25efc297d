//! `pushscope load` against the reference pusher: staged runs with exact
//! counts, and the exit codes of bad input and an unreachable target.

use pushscope_tests::{heavy_lock, loadgen::pushscope, pusher::Pusher};
use std::time::Duration;

#[test]
fn staged_run_counts_every_message_exactly() {
    let _heavy = heavy_lock();
    let p = Pusher::start(&[]).unwrap();
    let out = tempfile::tempdir().unwrap();
    let url = format!("ws://{}/ws", p.addr);
    let logs = out.path().join("logs");
    // Stage 2 adds nobody, so every subscriber is there for all its messages.
    let run = pushscope(
        &[
            "load",
            "--url",
            &url,
            "--stages",
            "40:2s,80:2s,80:2s",
            "--channels",
            "4",
            "--rate",
            "200",
            "--connect-rate",
            "500/s",
            "--grace",
            "2s",
            "--progress-interval",
            "1s",
            "--log-dir",
            logs.to_str().unwrap(),
        ],
        Some(out.path()),
        Duration::from_secs(60),
    )
    .unwrap();
    assert_eq!(run.code, Some(0), "stderr:\n{}", run.stderr);
    for k in 0..3 {
        let m = |f| run.stage_u64(k, "messages", f);
        assert!(m("published") > 0, "stage {k}: {}", run.stage(k));
        assert_eq!(m("lost"), 0, "stage {k}: {}", run.stage(k));
        assert_eq!(m("duplicates"), 0, "stage {k}: {}", run.stage(k));
        assert_eq!(m("out_of_order"), 0, "stage {k}: {}", run.stage(k));
        assert_eq!(m("received"), m("expected"), "stage {k}: {}", run.stage(k));
        assert_eq!(run.stage_u64(k, "connections", "unexpected_disconnects"), 0);
        assert_eq!(run.stage_u64(k, "connections", "failed"), 0);
        assert!(run.stage(k)["latency_ms"]["p99"].as_f64().unwrap() > 0.0);
    }
    for k in 0..2 {
        // Phases of the connections opened in the stage (stage 2 opens none).
        for phase in ["connect", "upgrade", "first_message"] {
            assert!(
                run.stage(k)["client_phases_ms"][phase]["p50"]
                    .as_f64()
                    .unwrap()
                    > 0.0,
                "{phase}: {}",
                run.stage(k)
            );
        }
    }
    assert!(run.stage(2)["client_phases_ms"]["upgrade"]["p50"].is_null());
    assert_eq!(run.stage_u64(0, "connections", "opened"), 40);
    assert_eq!(run.stage_u64(1, "connections", "opened"), 80);
    assert_eq!(run.stage_u64(1, "connections", "target"), 80);
    // Nobody joined in stage 2: each of its messages reached all 20 subscribers of its channel.
    assert_eq!(
        run.stage_u64(2, "messages", "received"),
        run.stage_u64(2, "messages", "published") * 20,
        "{}",
        run.stage(2)
    );
    // 200 msgs/s for ~2 s per stage, scheduled (open model), not best effort.
    let published: u64 = (0..3)
        .map(|k| run.stage_u64(k, "messages", "published"))
        .sum();
    assert!((1000..=1600).contains(&published), "published {published}");
    assert_eq!(run.stage(2)["connections"]["stability"].as_f64(), Some(1.0));
    // About one message per read at this light load (reads of pings and
    // pongs alone count too, and a stage's reads include the previous
    // stage's last messages).
    let per_read = run.stage(2)["loadgen"]["messages_per_read"].as_f64();
    assert!(
        per_read.is_some_and(|r| (0.5..4.0).contains(&r)),
        "{}",
        run.stage(2)
    );
    // The logs agree, id by id.
    let v = pushscope(
        &["verify", "--log-dir", logs.to_str().unwrap()],
        None,
        Duration::from_secs(20),
    )
    .unwrap();
    assert_eq!(v.code, Some(0), "{}\n{}", v.stdout, v.stderr);
    assert!(v.stdout.contains("verdict: CONSISTENT"), "{}", v.stdout);
    assert!(
        v.stdout.contains(&format!("{published} published")),
        "{}",
        v.stdout
    );
}

#[test]
fn unreachable_target_exits_3_with_one_sentence() {
    let port = pushscope_tests::free_port();
    let url = format!("ws://127.0.0.1:{port}/ws");
    let run = pushscope(
        &["load", "--url", &url, "--stages", "1:1s"],
        None,
        Duration::from_secs(20),
    )
    .unwrap();
    assert_eq!(run.code, Some(3), "stderr:\n{}", run.stderr);
    assert!(run.stderr.contains("unreachable"), "{}", run.stderr);
    assert_eq!(
        run.stderr.trim().lines().count(),
        1,
        "one sentence: {}",
        run.stderr
    );
}

#[test]
fn bad_input_exits_2_and_names_the_problem() {
    let run = pushscope(
        &["load", "--url", "ws://127.0.0.1:1/ws", "--stages", "10"],
        None,
        Duration::from_secs(10),
    )
    .unwrap();
    assert_eq!(run.code, Some(2));
    assert!(run.stderr.contains("CONNECTIONS:HOLD"), "{}", run.stderr);
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("s.toml");
    std::fs::write(
        &file,
        "url = \"ws://127.0.0.1:1/ws\"\nconnect_rat = \"10/s\"\n",
    )
    .unwrap();
    let run = pushscope(
        &["load", "--scenario", file.to_str().unwrap()],
        None,
        Duration::from_secs(10),
    )
    .unwrap();
    assert_eq!(run.code, Some(2));
    assert!(run.stderr.contains("connect_rat"), "{}", run.stderr);
    let run = pushscope(&["verify"], None, Duration::from_secs(10)).unwrap();
    assert_eq!(run.code, Some(2));
}

#[test]
fn a_smaller_stage_closes_connections_on_purpose_without_counting_loss() {
    let _heavy = heavy_lock();
    let p = Pusher::start(&[]).unwrap();
    let out = tempfile::tempdir().unwrap();
    // The scenario comes from a TOML file; the flag overrides its rate.
    let scenario = out.path().join("scenario.toml");
    let toml = format!(
        "url = \"ws://{}/ws\"\nstages = [\"60:2s\", \"20:2s\"]\nchannels = 3\nrate = 9999.0\ngrace = \"1s\"\n",
        p.addr
    );
    std::fs::write(&scenario, toml).unwrap();
    let run = pushscope(
        &[
            "load",
            "--scenario",
            scenario.to_str().unwrap(),
            "--rate",
            "150",
        ],
        Some(out.path()),
        Duration::from_secs(30),
    )
    .unwrap();
    assert_eq!(run.code, Some(0), "stderr:\n{}", run.stderr);
    let summary = run.summary.as_ref().unwrap();
    assert_eq!(summary["scenario"]["rate"].as_f64(), Some(150.0));
    assert_eq!(summary["scenario"]["channels"].as_u64(), Some(3));
    let s = run.stage(1);
    assert_eq!(run.stage_u64(1, "connections", "opened"), 20, "{s}");
    assert_eq!(s["intended_disconnects"].as_u64(), Some(40), "{s}");
    assert_eq!(
        run.stage_u64(1, "connections", "unexpected_disconnects"),
        0,
        "{s}"
    );
    for k in 0..2 {
        assert_eq!(run.stage_u64(k, "messages", "lost"), 0, "{}", run.stage(k));
        assert_eq!(
            run.stage_u64(k, "messages", "received"),
            run.stage_u64(k, "messages", "expected")
        );
    }
}

#[test]
fn sharded_run_merges_worker_counts_and_logs_exactly() {
    let _heavy = heavy_lock();
    let p = Pusher::start(&[]).unwrap();
    let out = tempfile::tempdir().unwrap();
    let logs = out.path().join("logs");
    let url = format!("ws://{}/ws", p.addr);
    // 60 connections with at most 25 per process: 3 worker processes.
    let run = pushscope(
        &[
            "load",
            "--url",
            &url,
            "--stages",
            "60:2s",
            "--shard-cap",
            "25",
            "--channels",
            "3",
            "--rate",
            "150",
            "--grace",
            "1s",
            "--log-dir",
            logs.to_str().unwrap(),
        ],
        Some(out.path()),
        Duration::from_secs(30),
    )
    .unwrap();
    assert_eq!(run.code, Some(0), "stderr:\n{}", run.stderr);
    let s = run.stage(0);
    assert_eq!(
        s["loadgen"]["cpu_pct"].as_array().unwrap().len(),
        4,
        "coordinator + 3 workers: {s}"
    );
    assert_eq!(run.stage_u64(0, "connections", "opened"), 60, "{s}");
    assert_eq!(run.stage_u64(0, "messages", "lost"), 0, "{s}");
    assert_eq!(run.stage_u64(0, "messages", "duplicates"), 0, "{s}");
    assert_eq!(
        run.stage_u64(0, "messages", "received"),
        run.stage_u64(0, "messages", "expected"),
        "{s}"
    );
    for shard in 0..3 {
        assert!(
            logs.join(format!("recv-{shard}-0.log")).exists(),
            "shard {shard} wrote its log"
        );
    }
    let v = pushscope(
        &["verify", "--log-dir", logs.to_str().unwrap()],
        None,
        Duration::from_secs(20),
    )
    .unwrap();
    assert_eq!(v.code, Some(0), "{}\n{}", v.stdout, v.stderr);
    assert!(v.stdout.contains(", 60 subscribers,"), "{}", v.stdout);
    // verify recomputes the expected deliveries from the logs alone.
    let expected = format!(
        "{} expected deliveries",
        run.stage_u64(0, "messages", "expected")
    );
    assert!(v.stdout.contains(&expected), "{expected}: {}", v.stdout);
    assert!(v.stdout.contains("verdict: CONSISTENT"), "{}", v.stdout);
}

/// The bench's floor (`--floor`): subscribers count the frames they
/// receive and judge nothing, over the same connections and server.
#[test]
fn the_floor_counts_every_frame_and_judges_nothing() {
    let _heavy = heavy_lock();
    let p = Pusher::start(&[]).unwrap();
    let out = tempfile::tempdir().unwrap();
    let url = format!("ws://{}/ws", p.addr);
    let run = pushscope(
        &[
            "load",
            "--floor",
            "--url",
            &url,
            "--stages",
            "20:1s,20:2s",
            "--channels",
            "1",
            "--rate",
            "100",
            "--connect-rate",
            "1000/s",
            "--grace",
            "1s",
        ],
        Some(out.path()),
        Duration::from_secs(60),
    )
    .unwrap();
    assert_eq!(run.code, Some(0), "stderr:\n{}", run.stderr);
    let m = |k, f| run.stage_u64(k, "messages", f);
    let published = m(0, "published") + m(1, "published");
    let received = m(0, "received") + m(1, "received");
    // All 20 subscribers of the one channel were there for stage 1's
    // messages; a few of stage 0's went out before the last one connected.
    assert!(
        received >= m(1, "published") * 20 && received <= published * 20,
        "received {received} of {published} x 20: {}",
        run.stage(1)
    );
    assert!(
        received > published * 20 * 9 / 10,
        "received {received} of {published} x 20"
    );
    for k in 0..2 {
        assert_eq!(m(k, "expected"), 0, "the floor expects nothing");
        assert_eq!(m(k, "lost"), 0);
        assert_eq!(run.stage_u64(k, "connections", "unexpected_disconnects"), 0);
    }
    assert!(
        run.stage(1)["latency_ms"]["p99"].is_null(),
        "no latency without accounting: {}",
        run.stage(1)
    );
}
