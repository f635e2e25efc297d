//! Slow consumers of the reference pusher: a subscriber that never reads is
//! cut off when its bounded send queue overflows, counted in /metrics, the
//! server's RSS stays bounded, a reading subscriber on the same channel gets
//! everything, and the cut-off one can resume with last_seq.

use std::time::Duration;

use futures_util::StreamExt;
use pushscope_tests::pusher::{metric, parse_pushed, publish, raw_upgrade, wait_metric, Pusher};
use tokio_tungstenite::{connect_async, tungstenite::Message};

const MSGS: u64 = 1200;
const SIZE: usize = 60 * 1024;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn never_reading_client_is_cut_off_and_memory_stays_bounded() {
    let p = Pusher::start(&[
        "--fsync",
        "never",
        "--send-queue",
        "64",
        "--retain-bytes",
        "4194304",
        "--heartbeat-ms",
        "60000",
    ])
    .unwrap();
    let addr = p.addr;
    let baseline = p.rss_kib();

    let _stalled = raw_upgrade(addr, "/ws?channel=big").await.unwrap();
    let (mut reader, _) = connect_async(p.ws_url("big")).await.unwrap();
    let reading = tokio::spawn(async move {
        let mut next = 1u64;
        while next <= MSGS {
            let m = tokio::time::timeout(Duration::from_secs(20), reader.next())
                .await
                .expect("reader stalled")
                .unwrap()
                .unwrap();
            if let Message::Text(t) = m {
                let m = parse_pushed(t.as_str()).unwrap();
                assert_eq!(m.seq, next);
                assert_eq!(m.data.len(), SIZE);
                next += 1;
            }
        }
        reader
    });

    // ~70 MB through the server; unbounded queues would keep it all.
    let body = vec![b'z'; SIZE];
    let mut peak = baseline;
    let mut dropped_at = None;
    for i in 1..=MSGS {
        publish(addr, "big", None, &body).await.unwrap();
        if i % 50 == 0 {
            peak = peak.max(p.rss_kib());
            if dropped_at.is_none()
                && metric(addr, "pusher_slow_consumer_drops_total")
                    .await
                    .unwrap()
                    >= 1.0
            {
                dropped_at = Some(i);
            }
        }
    }
    let _reader = reading.await.unwrap();
    peak = peak.max(p.rss_kib());
    let dropped_at = dropped_at.expect("the stalled client was never cut off");
    assert_eq!(
        metric(addr, "pusher_slow_consumer_drops_total")
            .await
            .unwrap(),
        1.0
    );
    assert_eq!(
        wait_metric(addr, "pusher_connections", 1.0, Duration::from_secs(2)).await,
        1.0
    );
    // Kernel socket buffers absorb a few MB, then 64 queued messages: the
    // cut-off happens long before the end of the stream.
    assert!(
        dropped_at < MSGS / 2,
        "cut off only after {dropped_at} messages"
    );
    let growth_mib = (peak.saturating_sub(baseline)) / 1024;
    eprintln!(
        "RSS baseline {baseline} KiB, peak {peak} KiB, slow consumer cut at message {dropped_at}"
    );
    assert!(
        growth_mib < 32,
        "RSS grew by {growth_mib} MiB while {} MiB were published",
        (MSGS as usize * SIZE) >> 20
    );

    // It can resume: retention (4 MiB) holds the newest ~68 messages.
    let (mut ws, _) = connect_async(p.ws_resume_url("big", 0)).await.unwrap();
    let first = loop {
        match tokio::time::timeout(Duration::from_secs(5), ws.next())
            .await
            .unwrap()
            .unwrap()
            .unwrap()
        {
            Message::Text(t) => break parse_pushed(t.as_str()).unwrap().seq,
            _ => continue,
        }
    };
    let retained = MSGS - first + 1;
    assert!((60..=70).contains(&retained), "retained {retained}");
}
