//! A push server that drops one message and repeats another: the load
//! report must show exactly 1 lost and 1 duplicate, and `pushscope verify`
//! must exit 1 naming both msg_ids.

use pushscope_tests::{
    faulty_server::{Faults, FaultyServer},
    heavy_lock,
    loadgen::pushscope,
};
use std::time::Duration;

#[test]
fn faulty_server_shows_one_lost_one_duplicate_and_verify_names_them() {
    let _heavy = heavy_lock();
    // One channel, so server seq = publisher seq = msg_id.
    let server = FaultyServer::start(Faults {
        drop_seq: Some(20),
        repeat_seq: Some(30),
    })
    .unwrap();
    let out = tempfile::tempdir().unwrap();
    let logs = out.path().join("logs");
    let run = pushscope(
        &[
            "load",
            "--url",
            &server.ws_url(),
            "--stages",
            "1:3s",
            "--channels",
            "1",
            "--rate",
            "20",
            "--grace",
            "1s",
            "--log-dir",
            logs.to_str().unwrap(),
        ],
        Some(out.path()),
        Duration::from_secs(30),
    )
    .unwrap();
    assert_eq!(
        run.code,
        Some(0),
        "a completed load run exits 0 whatever it found:\n{}",
        run.stderr
    );
    let m = |f| run.stage_u64(0, "messages", f);
    assert_eq!(m("lost"), 1, "{}", run.stage(0));
    assert_eq!(m("duplicates"), 1, "{}", run.stage(0));
    assert_eq!(m("received") + m("lost"), m("expected"));
    assert!(m("published") >= 50, "{}", run.stage(0));

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
    assert!(
        v.stdout.contains("lost msg_id=20 subscriber=0"),
        "{}",
        v.stdout
    );
    assert!(
        v.stdout
            .contains("duplicated msg_id=30 subscriber=0 received=2"),
        "{}",
        v.stdout
    );
    assert!(
        v.stdout.contains(
            "(1 lost, 1 duplicated, 0 unexpected, 0 missing on server, 0 unexpected on server)"
        ),
        "{}",
        v.stdout
    );
}
