//! Heartbeats of the reference pusher: a client that answers pings stays,
//! a client that went silent (raw TCP after the upgrade, never reads or
//! writes) is dropped within 2 intervals plus slack, not before.

use std::time::{Duration, Instant};

use futures_util::StreamExt;
use pushscope_tests::pusher::{metric, raw_upgrade, wait_metric, Pusher};
use tokio_tungstenite::{connect_async, tungstenite::Message};

const INTERVAL_MS: u64 = 300;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn silent_client_is_dropped_within_two_intervals_live_one_stays() {
    let p = Pusher::start(&["--heartbeat-ms", &INTERVAL_MS.to_string()]).unwrap();
    let interval = Duration::from_millis(INTERVAL_MS);

    // A live client: tungstenite answers every ping while we read.
    let (mut live, _) = connect_async(p.ws_url("hb")).await.unwrap();
    let pings = tokio::spawn(async move {
        let mut pings = 0u32;
        let end = tokio::time::Instant::now() + Duration::from_millis(INTERVAL_MS * 6);
        while let Ok(Some(m)) = tokio::time::timeout_at(end, live.next()).await {
            match m {
                Ok(Message::Ping(_)) => pings += 1,
                Ok(other) => panic!("live client got {other:?}"),
                Err(e) => panic!("live client dropped: {e}"),
            }
        }
        (pings, live)
    });

    // A silent client: upgraded, then never reads nor writes.
    let silent = raw_upgrade(p.addr, "/ws?channel=hb").await.unwrap();
    let start = Instant::now();
    assert_eq!(
        wait_metric(p.addr, "pusher_connections", 2.0, Duration::from_secs(1)).await,
        2.0
    );
    let mut dropped_after = None;
    while start.elapsed() < interval * 6 {
        if metric(p.addr, "pusher_heartbeat_timeouts_total")
            .await
            .unwrap()
            >= 1.0
        {
            dropped_after = Some(start.elapsed());
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let dropped_after = dropped_after.expect("silent client never dropped");
    // Not before 2 intervals of silence, and within 2 intervals + slack.
    assert!(
        dropped_after >= interval * 2 - Duration::from_millis(30),
        "dropped too early: {dropped_after:?}"
    );
    assert!(
        dropped_after <= interval * 2 + Duration::from_millis(350),
        "dropped too late: {dropped_after:?}"
    );
    drop(silent);

    let (pings, _live) = pings.await.unwrap();
    assert!(pings >= 4, "live client saw {pings} pings in 6 intervals");
    assert_eq!(
        wait_metric(p.addr, "pusher_connections", 1.0, Duration::from_secs(2)).await,
        1.0
    );
    assert_eq!(
        metric(p.addr, "pusher_heartbeat_timeouts_total")
            .await
            .unwrap(),
        1.0
    );
}
