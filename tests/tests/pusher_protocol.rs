//! Protocol v1 of the reference pusher, driven by an independent client
//! (tokio-tungstenite + raw HTTP/1.1): ordered push, ACK, resume with
//! `last_seq` (exactly the missing messages), the replay/live race, and bad
//! input that must never crash the server.

use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use pushscope_tests::pusher::{
    http, metric, parse_pushed, publish, raw_upgrade, wait_metric, Pushed, Pusher,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_tungstenite::{
    connect_async,
    tungstenite::{protocol::frame::coding::CloseCode, Message},
    MaybeTlsStream, WebSocketStream,
};

type Ws = WebSocketStream<MaybeTlsStream<tokio::net::TcpStream>>;

async fn connect(url: &str) -> Ws {
    let (ws, resp) = connect_async(url).await.expect("ws connect");
    assert_eq!(resp.status().as_u16(), 101);
    ws
}

/// Next message frame within 5 s (pings are answered by tungstenite).
async fn next_pushed(ws: &mut Ws) -> Pushed {
    loop {
        let m = tokio::time::timeout(Duration::from_secs(5), ws.next())
            .await
            .expect("a frame within 5 s")
            .expect("stream open")
            .expect("frame ok");
        match m {
            Message::Text(t) => return parse_pushed(t.as_str()).expect("protocol frame"),
            Message::Ping(_) | Message::Pong(_) => continue,
            other => panic!("unexpected frame {other:?}"),
        }
    }
}

/// Asserts that nothing but control frames arrives for `d`.
async fn assert_quiet(ws: &mut Ws, d: Duration) {
    let deadline = tokio::time::Instant::now() + d;
    while let Ok(m) = tokio::time::timeout_at(deadline, ws.next()).await {
        match m {
            Some(Ok(Message::Ping(_) | Message::Pong(_))) => continue,
            other => panic!("expected no message, got {other:?}"),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn publish_receive_ack_disconnect_resume_exactly_missing() {
    let p = Pusher::start(&[]).unwrap();
    let mut ws = connect(&p.ws_url("orders")).await;
    for i in 1..=20u64 {
        let (seq, id) = publish(
            p.addr,
            "orders",
            Some(&format!("m{i}")),
            format!("body {i} \"é\"").as_bytes(),
        )
        .await
        .unwrap();
        assert_eq!((seq, id.as_str()), (i, format!("m{i}").as_str()));
    }
    for i in 1..=20u64 {
        let m = next_pushed(&mut ws).await;
        assert_eq!(
            m,
            Pushed {
                channel: "orders".into(),
                seq: i,
                id: format!("m{i}"),
                data: format!("body {i} \"é\""),
            }
        );
    }
    ws.send(Message::text(r#"{"ack":20}"#)).await.unwrap();
    // Ask for a pong so we know the ACK was read before disconnecting.
    ws.send(Message::Ping(b"p".to_vec().into())).await.unwrap();
    loop {
        match tokio::time::timeout(Duration::from_secs(5), ws.next())
            .await
            .unwrap()
        {
            Some(Ok(Message::Pong(p))) => {
                assert_eq!(&p[..], b"p");
                break;
            }
            Some(Ok(Message::Ping(_))) => continue,
            other => panic!("expected pong, got {other:?}"),
        }
    }
    ws.close(None).await.unwrap();
    drop(ws);

    // Published while the client was away; a generated id when none is given.
    for i in 21..=30u64 {
        let id = (i % 2 == 0).then(|| format!("m{i}"));
        let (seq, got_id) = publish(
            p.addr,
            "orders",
            id.as_deref(),
            format!("body {i}").as_bytes(),
        )
        .await
        .unwrap();
        assert_eq!(seq, i);
        assert!(!got_id.is_empty());
    }
    let mut ws = connect(&p.ws_resume_url("orders", 20)).await;
    for i in 21..=30u64 {
        let m = next_pushed(&mut ws).await;
        assert_eq!((m.seq, m.data.as_str()), (i, format!("body {i}").as_str()));
    }
    publish(p.addr, "orders", Some("live"), b"live one")
        .await
        .unwrap();
    let m = next_pushed(&mut ws).await;
    assert_eq!((m.seq, m.id.as_str()), (31, "live"));
    assert_quiet(&mut ws, Duration::from_millis(300)).await;

    assert_eq!(metric(p.addr, "pusher_acks_total").await.unwrap(), 1.0);
    assert_eq!(metric(p.addr, "pusher_replays_total").await.unwrap(), 10.0);
    assert_eq!(metric(p.addr, "pusher_resumes_total").await.unwrap(), 1.0);
    assert_eq!(
        metric(p.addr, "pusher_publishes_total").await.unwrap(),
        31.0
    );
    assert_eq!(
        metric(p.addr, "pusher_deliveries_total").await.unwrap(),
        31.0
    );
    assert_eq!(
        metric(p.addr, "pusher_push_queue_length{channel=\"orders\"}")
            .await
            .unwrap(),
        0.0
    );
    // A subscriber without last_seq gets only new messages; channels are separate.
    let mut fresh = connect(&p.ws_url("orders")).await;
    let mut other = connect(&p.ws_url("other")).await;
    // No wait: a subscription is live from the moment the 101 is sent.
    publish(p.addr, "other", None, b"x").await.unwrap();
    publish(p.addr, "orders", None, b"y").await.unwrap();
    assert_eq!(next_pushed(&mut fresh).await.seq, 32);
    let o = next_pushed(&mut other).await;
    assert_eq!((o.channel.as_str(), o.seq), ("other", 1));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resume_during_a_publish_stream_has_no_gap_and_no_duplicate() {
    // Single-threaded runtime (as in the bench): same guarantees.
    let p = Pusher::start(&["--fsync", "never", "--workers", "1"]).unwrap();
    let addr = p.addr;
    const N: u64 = 400;
    let publisher = tokio::spawn(async move {
        for i in 1..=N {
            publish(addr, "race", None, format!("{i}").as_bytes())
                .await
                .unwrap();
        }
    });
    // Join mid-stream at several resume points while messages keep coming.
    let mut clients = Vec::new();
    for k in 0..4 {
        tokio::time::sleep(Duration::from_millis(40)).await;
        let from = metric(addr, "pusher_publishes_total").await.unwrap() as u64;
        let from = from.saturating_sub(k * 7);
        clients.push((from, connect(&p.ws_resume_url("race", from)).await));
    }
    publisher.await.unwrap();
    for (from, mut ws) in clients {
        for expect in from + 1..=N {
            let m = next_pushed(&mut ws).await;
            assert_eq!(m.seq, expect, "client resuming after {from}");
            assert_eq!(m.data, expect.to_string());
        }
        assert_quiet(&mut ws, Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_http_input_gets_the_right_status_and_never_crashes() {
    let p = Pusher::start(&[]).unwrap();
    let a = p.addr;
    assert_eq!(http(a, "GET", "/nope", &[], b"").await.unwrap().status, 404);
    assert_eq!(
        http(a, "GET", "/publishx", &[], b"").await.unwrap().status,
        404
    );
    assert_eq!(
        http(a, "POST", "/publish/bad%2Fname", &[], b"x")
            .await
            .unwrap()
            .status,
        400
    );
    assert_eq!(
        http(a, "POST", "/publish/", &[], b"x")
            .await
            .unwrap()
            .status,
        400
    );
    assert_eq!(
        http(a, "POST", "/publish/..", &[], b"x")
            .await
            .unwrap()
            .status,
        400
    );
    assert_eq!(
        http(a, "GET", "/publish/c", &[], b"").await.unwrap().status,
        405
    );
    let big = vec![b'a'; 64 * 1024 + 1];
    assert_eq!(
        http(a, "POST", "/publish/c", &[], &big)
            .await
            .unwrap()
            .status,
        413
    );
    let max = vec![b'a'; 64 * 1024];
    assert_eq!(
        http(a, "POST", "/publish/c", &[], &max)
            .await
            .unwrap()
            .status,
        200
    );
    let r = http(a, "POST", "/publish/c", &[], &[0xff, 0xfe])
        .await
        .unwrap();
    assert_eq!(r.status, 400);
    assert!(r.body.contains("UTF-8"), "{}", r.body);
    let r = http(a, "POST", "/publish/c", &[("X-Msg-Id", "has space")], b"x")
        .await
        .unwrap();
    assert_eq!(r.status, 400);
    // /ws without an upgrade, without or with a bad channel, bad last_seq.
    assert_eq!(
        http(a, "GET", "/ws?channel=c", &[], b"")
            .await
            .unwrap()
            .status,
        426
    );
    let up = [
        ("Upgrade", "websocket"),
        ("Connection", "Upgrade"),
        ("Sec-WebSocket-Key", "dGhlIHNhbXBsZSBub25jZQ=="),
        ("Sec-WebSocket-Version", "13"),
    ];
    assert_eq!(http(a, "GET", "/ws", &up, b"").await.unwrap().status, 400);
    assert_eq!(
        http(a, "GET", "/ws?channel=a/b", &up, b"")
            .await
            .unwrap()
            .status,
        400
    );
    assert_eq!(
        http(a, "GET", "/ws?channel=c&last_seq=x", &up, b"")
            .await
            .unwrap()
            .status,
        400
    );
    // Raw garbage instead of HTTP.
    let mut s = tokio::net::TcpStream::connect(a).await.unwrap();
    s.write_all(b"\x16\x03\x01garbage\r\n\r\n").await.unwrap();
    let mut buf = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut buf)).await;
    assert!(String::from_utf8_lossy(&buf).starts_with("HTTP/1.1 400") || buf.is_empty());
    // Still alive and serving.
    assert_eq!(
        http(a, "GET", "/healthz", &[], b"").await.unwrap().status,
        200
    );
    assert_eq!(publish(a, "c", None, b"after").await.unwrap().0, 2);
    assert_eq!(
        metric(a, "pusher_http_responses_total{code=\"413\"}")
            .await
            .unwrap(),
        1.0
    );
}

/// Sends one client frame and expects the server to close with `code`.
async fn expect_close_after(p: &Pusher, frame: Message, code: CloseCode) {
    let mut ws = connect(&p.ws_url("c")).await;
    ws.send(frame).await.unwrap();
    loop {
        match tokio::time::timeout(Duration::from_secs(5), ws.next())
            .await
            .unwrap()
        {
            Some(Ok(Message::Close(Some(f)))) => {
                assert_eq!(f.code, code, "reason {}", f.reason);
                return;
            }
            Some(Ok(Message::Ping(_) | Message::Pong(_))) => continue,
            other => panic!("expected close {code:?}, got {other:?}"),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_client_frames_close_with_a_code_and_are_counted() {
    let p = Pusher::start(&[]).unwrap();
    expect_close_after(&p, Message::binary(vec![1, 2, 3]), CloseCode::Unsupported).await;
    expect_close_after(&p, Message::text("hello"), CloseCode::Invalid).await;
    expect_close_after(&p, Message::text(r#"{"ack":"x"}"#), CloseCode::Invalid).await;
    expect_close_after(&p, Message::text(r#"{"ack":5}"#), CloseCode::Policy).await;
    expect_close_after(&p, Message::text("x".repeat(8000)), CloseCode::Size).await;
    // Bytes that are not a WebSocket frame at all (reserved opcode 0x3).
    let mut raw = raw_upgrade(p.addr, "/ws?channel=c").await.unwrap();
    raw.write_all(&[0x83, 0x80, 0, 0, 0, 0]).await.unwrap();
    let mut buf = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(5), raw.read_to_end(&mut buf)).await;
    // A close frame (0x88) with code 1002 (protocol error).
    assert!(buf.len() >= 4 && buf[0] == 0x88, "{buf:?}");
    assert_eq!(u16::from_be_bytes([buf[2], buf[3]]), 1002);
    assert_eq!(
        metric(p.addr, "pusher_malformed_frames_total")
            .await
            .unwrap(),
        6.0
    );
    // Valid ACKs are still fine afterwards, and the server is healthy.
    let mut ws = connect(&p.ws_url("c")).await;
    publish(p.addr, "c", None, b"x").await.unwrap();
    assert_eq!(next_pushed(&mut ws).await.seq, 1);
    ws.send(Message::text(r#"{"ack":1}"#)).await.unwrap();
    ws.send(Message::text(r#"{"ack":0}"#)).await.unwrap();
    let acks = wait_metric(p.addr, "pusher_acks_total", 2.0, Duration::from_secs(2)).await;
    assert_eq!(acks, 2.0);
    // Vanishing without a close frame is a disconnect, not malformed input.
    drop(connect(&p.ws_url("c")).await);
    let conns = wait_metric(p.addr, "pusher_connections", 1.0, Duration::from_secs(2)).await;
    assert_eq!(conns, 1.0);
    assert_eq!(
        metric(p.addr, "pusher_connections_total").await.unwrap(),
        8.0
    );
    assert_eq!(
        metric(p.addr, "pusher_malformed_frames_total")
            .await
            .unwrap(),
        6.0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retried_publish_with_the_same_msg_id_is_not_pushed_twice() {
    let p = Pusher::start(&[]).unwrap();
    let mut ws = connect(&p.ws_url("pay")).await;
    assert_eq!(
        publish(p.addr, "pay", Some("tx-1"), b"100 EUR")
            .await
            .unwrap()
            .0,
        1
    );
    // A retry (e.g. after a timeout) answers the original seq.
    assert_eq!(
        publish(p.addr, "pay", Some("tx-1"), b"100 EUR")
            .await
            .unwrap()
            .0,
        1
    );
    // Concurrent retries of one id: one seq for all.
    let addr = p.addr;
    let tasks: Vec<_> = (0..8)
        .map(|_| tokio::spawn(async move { publish(addr, "pay", Some("tx-2"), b"5 EUR").await }))
        .collect();
    for t in tasks {
        assert_eq!(t.await.unwrap().unwrap().0, 2);
    }
    // The same id on another channel is another message.
    assert_eq!(
        publish(p.addr, "other", Some("tx-1"), b"x")
            .await
            .unwrap()
            .0,
        1
    );
    assert_eq!(
        publish(p.addr, "pay", Some("tx-3"), b"1 EUR")
            .await
            .unwrap()
            .0,
        3
    );
    for seq in 1..=3 {
        assert_eq!(next_pushed(&mut ws).await.seq, seq);
    }
    assert_quiet(&mut ws, Duration::from_millis(200)).await;
    assert_eq!(
        metric(p.addr, "pusher_duplicate_publishes_total")
            .await
            .unwrap(),
        8.0
    );
    assert_eq!(metric(p.addr, "pusher_publishes_total").await.unwrap(), 4.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_closes_subscribers_with_going_away_and_exits_0() {
    let mut p = Pusher::start(&[]).unwrap();
    let mut a = connect(&p.ws_url("t")).await;
    let mut b = connect(&p.ws_resume_url("t", 0)).await;
    publish(p.addr, "t", None, b"x").await.unwrap();
    assert_eq!(next_pushed(&mut a).await.seq, 1);
    assert_eq!(next_pushed(&mut b).await.seq, 1);
    p.guard.signal(libc::SIGTERM);
    for ws in [&mut a, &mut b] {
        loop {
            match tokio::time::timeout(Duration::from_secs(5), ws.next())
                .await
                .unwrap()
            {
                Some(Ok(Message::Close(Some(f)))) => {
                    assert_eq!(f.code, CloseCode::Away);
                    break;
                }
                Some(Ok(Message::Ping(_) | Message::Pong(_))) => continue,
                other => panic!("expected close 1001, got {other:?}"),
            }
        }
    }
    let status = p
        .guard
        .wait_timeout(Duration::from_secs(5))
        .expect("exited");
    assert_eq!(status.code(), Some(0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn long_replay_in_chunks_meets_live_messages_without_gap() {
    let p = Pusher::start(&["--fsync", "never"]).unwrap();
    let addr = p.addr;
    for i in 1..=1000u64 {
        publish(addr, "long", None, format!("{i}").as_bytes())
            .await
            .unwrap();
    }
    let mut ws = connect(&p.ws_resume_url("long", 0)).await;
    let live = tokio::spawn(async move {
        for i in 1001..=1200u64 {
            publish(addr, "long", None, format!("{i}").as_bytes())
                .await
                .unwrap();
        }
    });
    for expect in 1..=1200u64 {
        let m = next_pushed(&mut ws).await;
        assert_eq!((m.seq, m.data), (expect, expect.to_string()));
    }
    live.await.unwrap();
    assert_quiet(&mut ws, Duration::from_millis(100)).await;
    assert_eq!(metric(addr, "pusher_replays_total").await.unwrap(), 1000.0);
}

/// Upgrades to `url`; returns the socket and the 101's `X-Pusher-History`.
async fn connect_history(url: &str) -> (Ws, String) {
    let (ws, resp) = connect_async(url).await.expect("ws connect");
    assert_eq!(resp.status().as_u16(), 101);
    let h = resp
        .headers()
        .get("x-pusher-history")
        .expect("the 101 names the pusher's history")
        .to_str()
        .unwrap()
        .to_string();
    assert!(
        h.len() == 16
            && h.bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b)),
        "history id {h:?}: 16 lowercase hex digits"
    );
    (ws, h)
}

/// The seqs of the next `n` message frames.
async fn seqs(ws: &mut Ws, n: usize) -> Vec<u64> {
    let mut v = Vec::with_capacity(n);
    for _ in 0..n {
        v.push(next_pushed(ws).await.seq);
    }
    v
}

/// With `--data-dir` the history id survives a restart (seqs continue, a
/// resume naming it is `last_seq` alone); in memory every start is a new
/// history, and a resume naming the old one replays everything retained
/// instead of skipping the new history's seqs 1..=last_seq.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn history_id_names_the_numbering_a_resume_counts_in() {
    // Persistent: same id after a restart, on /healthz and in pusher_info.
    let dir = tempfile::tempdir().unwrap();
    let mut p = Pusher::start_in(dir.path(), &[]).unwrap();
    let (_ws, h1) = connect_history(&p.ws_url("c")).await;
    for i in 1..=3 {
        publish(p.addr, "c", Some(&format!("d{i}")), b"x")
            .await
            .unwrap();
    }
    p.guard.kill();
    let p = Pusher::start_in(dir.path(), &[]).unwrap();
    let (mut ws, h2) = connect_history(&format!("{}&last_seq=2&history={h1}", p.ws_url("c"))).await;
    assert_eq!(h2, h1, "a data dir keeps its history across restarts");
    assert_eq!(
        std::fs::read_to_string(dir.path().join("HISTORY")).unwrap(),
        format!("{h1}\n")
    );
    assert_eq!(
        seqs(&mut ws, 1).await,
        [3],
        "matching history: last_seq alone"
    );
    assert_quiet(&mut ws, Duration::from_millis(200)).await;
    assert_eq!(
        metric(p.addr, &format!("pusher_info{{history=\"{h1}\"}}"))
            .await
            .unwrap(),
        1.0
    );
    assert_eq!(
        metric(p.addr, "pusher_history_mismatches_total")
            .await
            .unwrap(),
        0.0
    );
    let mut s = tokio::net::TcpStream::connect(p.addr).await.unwrap();
    s.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        .await
        .unwrap();
    let mut head = String::new();
    s.read_to_string(&mut head).await.unwrap();
    assert!(
        head.to_ascii_lowercase()
            .contains(&format!("x-pusher-history: {h1}\r\n")),
        "{head}"
    );

    // In memory: a new history each start.
    let mut m = Pusher::start_in_memory(&[]).unwrap();
    let (_ws, old) = connect_history(&m.ws_url("c")).await;
    m.guard.kill();
    let m = Pusher::start_in_memory(&[]).unwrap();
    let (_ws, new) = connect_history(&m.ws_url("c")).await;
    assert_ne!(old, new, "an in-memory restart is a new history");
    assert_ne!(new, h1);
    for i in 1..=5 {
        publish(m.addr, "c", Some(&format!("n{i}")), b"x")
            .await
            .unwrap();
    }
    let resume = |last_seq: u64, history: Option<&str>| {
        let mut u = format!("{}&last_seq={last_seq}", m.ws_url("c"));
        if let Some(h) = history {
            u.push_str(&format!("&history={h}"));
        }
        u
    };
    // The old history's last_seq 3: everything retained, then live.
    let (mut ws, h) = connect_history(&resume(3, Some(&old))).await;
    assert_eq!(h, new);
    assert_eq!(seqs(&mut ws, 5).await, [1, 2, 3, 4, 5]);
    assert_eq!(
        metric(m.addr, "pusher_history_mismatches_total")
            .await
            .unwrap(),
        1.0
    );
    publish(m.addr, "c", Some("n6"), b"x").await.unwrap();
    assert_eq!(seqs(&mut ws, 1).await, [6]);
    assert_quiet(&mut ws, Duration::from_millis(200)).await;
    // This history's last_seq 3: exactly as last_seq alone, which is also
    // what a client that names no history gets (backward compatible).
    for history in [Some(new.as_str()), None] {
        let (mut ws, _) = connect_history(&resume(3, history)).await;
        assert_eq!(seqs(&mut ws, 3).await, [4, 5, 6], "{history:?}");
        assert_quiet(&mut ws, Duration::from_millis(200)).await;
    }
    assert_eq!(
        metric(m.addr, "pusher_history_mismatches_total")
            .await
            .unwrap(),
        1.0
    );
    assert_eq!(metric(m.addr, "pusher_resumes_total").await.unwrap(), 3.0);
    // A malformed history is a 400, like a bad last_seq.
    let up = [
        ("Upgrade", "websocket"),
        ("Connection", "Upgrade"),
        ("Sec-WebSocket-Key", "dGhlIHNhbXBsZSBub25jZQ=="),
        ("Sec-WebSocket-Version", "13"),
    ];
    for bad in [
        "",
        "zz",
        "0123456789ABCDEF",
        "0123456789abcde",
        "0123456789abcdef0",
    ] {
        let r = http(
            m.addr,
            "GET",
            &format!("/ws?channel=c&last_seq=1&history={bad}"),
            &up,
            b"",
        )
        .await
        .unwrap();
        assert_eq!(r.status, 400, "history={bad:?}");
        assert!(r.body.contains("bad history"), "{}", r.body);
    }
}
