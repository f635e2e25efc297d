//! `pushscope load` against a push server with known faults
//! (`faulty_server`): every injected fault must come out exactly — lost ids
//! named, duplicates, reorders as out of order, refused upgrades as failed
//! attempts by reason — and faults that are not the server's (a push
//! before the publish is answered, history replay, a previous run's
//! messages) must not show as loss, duplicates or latency. One channel, so
//! server seq = publisher seq = msg_id. The last test runs the server as
//! its own process (`faulty_server` binary), as `pushscope run --pid` needs.

use pushscope_tests::{
    bin_path,
    faulty_server::{Faults, FaultyServer},
    heavy_lock,
    loadgen::{pushscope, LoadRun},
    pusher::Pusher,
    spawn_first_line,
};
use std::{path::Path, time::Duration};

/// `pushscope load` at `url` on one channel; `--log-dir` when `logs` is given.
fn load(url: &str, stages: &str, rate: &str, out: &Path, logs: Option<&Path>) -> LoadRun {
    let mut args = vec![
        "load",
        "--url",
        url,
        "--stages",
        stages,
        "--channels",
        "1",
        "--rate",
        rate,
        "--grace",
        "1s",
    ];
    let logs = logs.map(|l| l.to_str().unwrap().to_string());
    if let Some(l) = &logs {
        args.extend(["--log-dir", l]);
    }
    let run = pushscope(&args, Some(out), Duration::from_secs(60)).unwrap();
    assert_eq!(
        run.code,
        Some(0),
        "a completed load run exits 0 whatever it found:\n{}",
        run.stderr
    );
    run
}

#[test]
fn injected_drops_duplicates_and_reorders_are_found_exactly_and_verify_names_them() {
    let _heavy = heavy_lock();
    let server = FaultyServer::start(Faults {
        drop_seqs: vec![20, 25],
        repeat_seqs: vec![30],
        reorder_seqs: vec![40],
        ..Default::default()
    })
    .unwrap();
    let out = tempfile::tempdir().unwrap();
    let logs = out.path().join("logs");
    let run = load(&server.ws_url(), "1:3s", "20", out.path(), Some(&logs));
    let m = |f| run.stage_u64(0, "messages", f);
    assert_eq!(m("lost"), 2, "{}", run.stage(0));
    assert_eq!(m("duplicates"), 1, "{}", run.stage(0));
    // 41 arrives before 40: one message below the highest seen.
    assert_eq!(m("out_of_order"), 1, "{}", run.stage(0));
    assert_eq!(m("received") + m("lost"), m("expected"));
    assert!(m("published") >= 50, "{}", run.stage(0));
    assert_eq!((m("replayed"), m("foreign")), (0, 0), "{}", run.stage(0));

    let ids = out.path().join("server-ids.txt");
    std::fs::write(&ids, server.accepted_ids().join("\n")).unwrap();
    let v = pushscope(
        &[
            "verify",
            "--log-dir",
            logs.to_str().unwrap(),
            "--server-ids",
            ids.to_str().unwrap(),
        ],
        None,
        Duration::from_secs(20),
    )
    .unwrap();
    assert_eq!(v.code, Some(1), "{}\n{}", v.stdout, v.stderr);
    for line in [
        "lost msg_id=20 subscriber=0",
        "lost msg_id=25 subscriber=0",
        "duplicated msg_id=30 subscriber=0 received=2",
        "(2 lost, 1 duplicated, 0 unexpected, 0 missing on server, 0 unexpected on server)",
    ] {
        assert!(v.stdout.contains(line), "{line}:\n{}", v.stdout);
    }
}

#[test]
fn a_push_before_the_publish_answer_is_neither_a_crash_nor_loss_nor_latency() {
    let _heavy = heavy_lock();
    let answer_delay = Duration::from_millis(300);
    let server = FaultyServer::start(Faults {
        push_before_answer: Some(answer_delay),
        ..Default::default()
    })
    .unwrap();
    let out = tempfile::tempdir().unwrap();
    let run = load(&server.ws_url(), "1:3s,1:3s", "2", out.path(), None);
    for k in 0..2 {
        let m = |f| run.stage_u64(k, "messages", f);
        let s = run.stage(k);
        assert_eq!(m("lost"), 0, "{s}");
        assert_eq!(m("duplicates"), 0, "{s}");
        assert!(m("expected") >= 4, "{s}");
        assert_eq!(m("received"), m("expected"), "{s}");
        // Latency runs from the scheduled time to the push, which comes
        // before the publish's answer: it never includes the answer delay.
        let max_ms = s["latency_ms"]["max"].as_f64().unwrap();
        assert!(max_ms < answer_delay.as_millis() as f64, "{s}");
        assert_eq!(s["latency_ms"]["clipped"], 0, "{s}");
    }
}

#[test]
fn refused_upgrades_are_counted_as_failed_attempts_by_status() {
    let _heavy = heavy_lock();
    let refused = 4;
    let server = FaultyServer::start(Faults {
        refuse_first_upgrades: refused,
        ..Default::default()
    })
    .unwrap();
    let out = tempfile::tempdir().unwrap();
    let run = load(&server.ws_url(), "2:3s", "5", out.path(), None);
    let s = run.stage(0);
    let c = |f| run.stage_u64(0, "connections", f);
    // The run's first test connection takes one refusal before any stage.
    let in_stage = refused - 1;
    assert_eq!(c("failed"), in_stage, "{s}");
    assert_eq!(c("attempts"), 2 + in_stage, "{s}");
    assert_eq!(c("opened"), 2, "{s}");
    assert_eq!(
        s["failed_by_reason"],
        serde_json::json!({ "http_503": in_stage }),
        "{s}"
    );
    assert_eq!(server.upgrade_attempts(), 1 + c("attempts"), "{s}");
    assert_eq!(run.stage_u64(0, "messages", "lost"), 0, "{s}");
}

#[test]
fn history_replay_and_a_previous_runs_messages_are_counted_apart() {
    let _heavy = heavy_lock();
    let server = FaultyServer::start(Faults {
        replay_history: true,
        ..Default::default()
    })
    .unwrap();
    let out1 = tempfile::tempdir().unwrap();
    let first = load(&server.ws_url(), "1:2s", "10", out1.path(), None);
    assert_eq!(
        first.stage_u64(0, "messages", "lost"),
        0,
        "{}",
        first.stage(0)
    );
    let previous = server.accepted_ids().len() as u64;
    assert!(previous >= 15, "{previous}");

    // Second run: each subscriber first gets the whole history. Subscriber 0
    // connects before anything of this run is published (only the first
    // run's frames: foreign); subscriber 1 joins in stage 1 and also gets
    // this run's stage-0 messages again (replay).
    let out2 = tempfile::tempdir().unwrap();
    let run = load(&server.ws_url(), "1:2s,2:2s", "10", out2.path(), None);
    let m = |k, f| run.stage_u64(k, "messages", f);
    for k in 0..2 {
        let s = run.stage(k);
        assert_eq!(m(k, "foreign"), previous, "{s}");
        assert_eq!(m(k, "lost"), 0, "{s}");
        assert_eq!(m(k, "duplicates"), 0, "{s}");
        assert_eq!(m(k, "received"), m(k, "expected"), "{s}");
        // A replayed or foreign frame is seconds old: counted as latency it would show.
        assert!(s["latency_ms"]["max"].as_f64().unwrap() < 1000.0, "{s}");
    }
    assert_eq!(m(0, "replayed"), 0, "{}", run.stage(0));
    let replayed = m(1, "replayed");
    assert!(
        replayed >= m(0, "published") && replayed <= m(0, "published") + m(1, "published"),
        "{}",
        run.stage(1)
    );
}

#[test]
fn a_second_run_against_the_same_reference_pusher_loses_nothing() {
    let _heavy = heavy_lock();
    let pusher = Pusher::start(&[]).unwrap();
    let url = format!("ws://{}/ws", pusher.addr);
    for round in 0..2 {
        let out = tempfile::tempdir().unwrap();
        let run = load(&url, "2:2s", "20", out.path(), None);
        let m = |f| run.stage_u64(0, "messages", f);
        let s = run.stage(0);
        assert!(m("published") >= 30, "round {round}: {s}");
        assert!(m("expected") >= 40, "round {round}: {s}");
        assert_eq!(m("lost"), 0, "round {round}: {s}");
        assert_eq!(m("duplicates"), 0, "round {round}: {s}");
        assert_eq!(m("received"), m("expected"), "round {round}: {s}");
        assert_eq!(m("foreign"), 0, "round {round}: {s}");
    }
}

#[test]
fn the_faulty_server_binary_serves_a_load_run_and_hands_its_ids_to_verify_on_sigterm() {
    let _heavy = heavy_lock();
    let dir = tempfile::tempdir().unwrap();
    let ids = dir.path().join("server-ids.txt");
    let mut cmd = std::process::Command::new(bin_path("faulty_server"));
    cmd.args(["--drop", "7", "--repeat", "9", "--ids-file"])
        .arg(&ids);
    let (mut guard, line) = spawn_first_line(cmd, Duration::from_secs(10)).unwrap();
    let addr = line
        .strip_prefix("listening ")
        .unwrap_or_else(|| panic!("first line `{line}`"));
    let logs = dir.path().join("logs");
    let run = load(
        &format!("ws://{addr}/ws"),
        "1:2s",
        "10",
        dir.path(),
        Some(&logs),
    );
    assert_eq!(run.stage_u64(0, "messages", "lost"), 1, "{}", run.stage(0));
    assert_eq!(
        run.stage_u64(0, "messages", "duplicates"),
        1,
        "{}",
        run.stage(0)
    );
    guard.signal(libc::SIGTERM);
    let status = guard
        .wait_timeout(Duration::from_secs(10))
        .expect("exits on SIGTERM");
    assert!(status.success(), "{status:?}");
    let v = pushscope(
        &[
            "verify",
            "--log-dir",
            logs.to_str().unwrap(),
            "--server-ids",
            ids.to_str().unwrap(),
        ],
        None,
        Duration::from_secs(20),
    )
    .unwrap();
    assert_eq!(v.code, Some(1), "{}\n{}", v.stdout, v.stderr);
    for line in [
        "lost msg_id=7 subscriber=0",
        "duplicated msg_id=9 subscriber=0 received=2",
        "(1 lost, 1 duplicated, 0 unexpected, 0 missing on server, 0 unexpected on server)",
    ] {
        assert!(v.stdout.contains(line), "{line}:\n{}", v.stdout);
    }
}
