//! Crash safety of the reference pusher: kill -9 in the middle of a publish
//! stream, restart on the same data dir: every publish answered 200 is still
//! there with its seq, seqs continue, resume works; a torn tail left by a
//! crash mid-write is truncated and reported, never a reused seq.

use std::{
    collections::BTreeMap,
    sync::{Arc, Mutex},
    time::Duration,
};

use futures_util::StreamExt;
use pushscope_tests::pusher::{metric, parse_pushed, publish, Pushed, Pusher};
use tokio_tungstenite::{connect_async, tungstenite::Message};

/// Every retained message of `channel` from seq 1, in order.
async fn replay_all(p: &Pusher, channel: &str, expect: u64) -> Vec<Pushed> {
    let (mut ws, _) = connect_async(p.ws_resume_url(channel, 0)).await.unwrap();
    let mut got = Vec::new();
    while (got.len() as u64) < expect {
        let m = tokio::time::timeout(Duration::from_secs(5), ws.next())
            .await
            .expect("replay stalled")
            .unwrap()
            .unwrap();
        if let Message::Text(t) = m {
            got.push(parse_pushed(t.as_str()).unwrap());
        }
    }
    got
}

async fn crash_and_recover(fsync: &str) {
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("pusher.stderr");
    let mut p = Pusher::start_in_logged(dir.path(), &["--fsync", fsync], &log).unwrap();
    let acked: Arc<Mutex<BTreeMap<u64, String>>> = Arc::default();
    // 4 concurrent publishers, unbounded in intent, bounded in time by the kill.
    let mut tasks = Vec::new();
    for w in 0..4 {
        let (addr, acked) = (p.addr, acked.clone());
        tasks.push(tokio::spawn(async move {
            for i in 0..100_000u32 {
                let id = format!("w{w}-{i}");
                match publish(
                    addr,
                    "ledger",
                    Some(&id),
                    format!("payload {id}").as_bytes(),
                )
                .await
                {
                    Ok((seq, got)) => {
                        assert_eq!(got, id);
                        acked.lock().unwrap().insert(seq, id);
                    }
                    Err(_) => return, // the server died under us
                }
            }
        }));
    }
    // Let a few hundred publishes through, then kill -9 mid-stream.
    for _ in 0..200 {
        if acked.lock().unwrap().len() >= 300 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    p.guard.kill();
    for t in tasks {
        t.await.unwrap();
    }
    let acked = acked.lock().unwrap().clone();
    assert!(acked.len() >= 300, "only {} publishes acked", acked.len());
    let max_acked = *acked.keys().last().unwrap();

    // Simulate a crash mid-write on top: half a record at the tail.
    let seg_dir = dir.path().join("channels/ledger");
    let mut segs: Vec<_> = std::fs::read_dir(&seg_dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    segs.sort();
    let tail = segs.last().unwrap();
    let before = std::fs::metadata(tail).unwrap().len();
    {
        use std::io::Write;
        let mut f = std::fs::OpenOptions::new().append(true).open(tail).unwrap();
        f.write_all(&[200, 0, 0, 0, 1, 2, 3, 4, 9, 9]).unwrap();
    }

    let p = Pusher::start_in_logged(dir.path(), &["--fsync", fsync], &log).unwrap();
    let stderr = std::fs::read_to_string(&log).unwrap();
    assert!(
        stderr.contains("torn tail") && stderr.contains("truncated 10 bytes"),
        "repair not reported: {stderr}"
    );
    assert_eq!(std::fs::metadata(tail).unwrap().len(), before);
    assert_eq!(
        metric(p.addr, "pusher_log_repairs_total").await.unwrap(),
        1.0
    );

    // The log may hold a few more than acked (written, killed before the
    // answer); it holds every acked one, at its seq, and seqs are 1..=n.
    let (next, _) = publish(p.addr, "ledger", Some("after"), b"after restart")
        .await
        .unwrap();
    assert!(
        next > max_acked,
        "seq {next} reused (max acked {max_acked})"
    );
    let all = replay_all(&p, "ledger", next).await;
    let seqs: Vec<u64> = all.iter().map(|m| m.seq).collect();
    assert_eq!(seqs, (1..=next).collect::<Vec<_>>(), "gap or duplicate");
    let by_seq: BTreeMap<u64, &Pushed> = all.iter().map(|m| (m.seq, m)).collect();
    for (seq, id) in &acked {
        let m = by_seq[seq];
        assert_eq!(&m.id, id, "acked seq {seq} holds another message");
        assert_eq!(m.data, format!("payload {id}"));
    }
    assert_eq!(by_seq[&next].id, "after");
    // The msg id index is rebuilt: retrying an acked publish is idempotent.
    let (seq, id) = acked.iter().next_back().unwrap();
    let again = publish(
        p.addr,
        "ledger",
        Some(id),
        format!("payload {id}").as_bytes(),
    )
    .await;
    assert_eq!(again.unwrap().0, *seq);

    // Resume from the middle works after the restart.
    let from = max_acked / 2;
    let (mut ws, _) = connect_async(p.ws_resume_url("ledger", from))
        .await
        .unwrap();
    let m = tokio::time::timeout(Duration::from_secs(5), ws.next())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!(parse_pushed(m.to_text().unwrap()).unwrap().seq, from + 1);
}

fn run_heavy(fsync: &str) {
    // Both crash tests hammer the disk and the CPU: one at a time.
    let _heavy = pushscope_tests::heavy_lock();
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
        .block_on(crash_and_recover(fsync));
}

#[test]
fn kill_9_mid_stream_fsync_always_keeps_every_acked_publish() {
    run_heavy("always");
}

#[test]
fn kill_9_mid_stream_fsync_batch_keeps_every_acked_publish() {
    run_heavy("batch");
}

/// `never` only promises to survive a crash of the process (page cache).
#[test]
fn kill_9_mid_stream_fsync_never_keeps_every_acked_publish() {
    run_heavy("never");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retention_bounds_the_replay_window_across_restarts() {
    let dir = tempfile::tempdir().unwrap();
    let mut p = Pusher::start_in(dir.path(), &["--retain-messages", "5"]).unwrap();
    for i in 1..=20u64 {
        assert_eq!(
            publish(p.addr, "r", None, format!("{i}").as_bytes())
                .await
                .unwrap()
                .0,
            i
        );
    }
    p.guard.kill();
    let p = Pusher::start_in(dir.path(), &["--retain-messages", "5"]).unwrap();
    let all = replay_all(&p, "r", 5).await;
    let seqs: Vec<u64> = all.iter().map(|m| m.seq).collect();
    assert_eq!(seqs, [16, 17, 18, 19, 20]);
    assert_eq!(all[0].data, "16");
    assert_eq!(publish(p.addr, "r", None, b"21").await.unwrap().0, 21);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn batch_fsync_is_a_group_commit() {
    let p = Pusher::start(&["--fsync", "batch", "--batch-window-ms", "5"]).unwrap();
    let addr = p.addr;
    let tasks: Vec<_> = (0..8)
        .map(|w| {
            tokio::spawn(async move {
                for i in 0..25 {
                    publish(addr, "g", Some(&format!("{w}-{i}")), b"x")
                        .await
                        .unwrap();
                }
            })
        })
        .collect();
    for t in tasks {
        t.await.unwrap();
    }
    let publishes = metric(addr, "pusher_publishes_total").await.unwrap();
    let fsyncs = metric(addr, "pusher_log_fsyncs_total").await.unwrap();
    assert_eq!(publishes, 200.0);
    // 8 publishers in flight share each sync; every answer waited for one.
    assert!(
        (25.0..=100.0).contains(&fsyncs),
        "{fsyncs} fsyncs for 200 publishes"
    );
}

#[test]
fn a_second_pusher_on_the_same_data_dir_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let _first = Pusher::start_in(dir.path(), &[]).unwrap();
    let out = std::process::Command::new(pushscope_tests::bin_path("pushscope-pusher"))
        .args(["--listen", "127.0.0.1:0", "--data-dir"])
        .arg(dir.path())
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(out.stdout.is_empty());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("in use by another pushscope-pusher"), "{err}");
}
