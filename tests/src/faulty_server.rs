//! A deliberately faulty push server for load-generator tests: it speaks
//! the reference pusher's protocol v1 (`POST /publish/{channel}` →
//! `{"seq":N,"id":…}`, `GET /ws?channel=C` → one JSON text frame per
//! message) on a real loopback socket, with known faults (`Faults`): server
//! seqs never delivered, delivered twice, delivered after their successor,
//! every push made before the publish is answered, and the first upgrade
//! attempts refused with 503. Faults are by server seq, per channel: with
//! one channel, server seq = the load generator's pseq = its msg_id. It
//! remembers the ids it accepted so a test can hand them to
//! `pushscope verify --server-ids`, and counts upgrade attempts.

use futures_util::{SinkExt, StreamExt};
use std::{
    collections::HashMap,
    net::SocketAddr,
    sync::{Arc, Mutex},
    time::Duration,
};
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::{TcpListener, TcpStream},
    sync::mpsc,
};
use tokio_tungstenite::tungstenite::{
    handshake::server::{ErrorResponse, Request, Response},
    http::StatusCode,
    Message,
};

#[derive(Debug, Clone, Default)]
pub struct Faults {
    /// Server seqs never pushed to any subscriber.
    pub drop_seqs: Vec<u64>,
    /// Server seqs pushed twice to every subscriber.
    pub repeat_seqs: Vec<u64>,
    /// Server seqs held back and pushed right after their successor (a swap).
    pub reorder_seqs: Vec<u64>,
    /// Push to subscribers first, answer the publish this much later.
    pub push_before_answer: Option<Duration>,
    /// Refuse this many upgrade attempts (the first ones) with HTTP 503.
    pub refuse_first_upgrades: u64,
    /// Send a new subscriber every frame the channel ever had first (as
    /// NGINX nchan sends its buffer), then the live ones.
    pub replay_history: bool,
}

#[derive(Default)]
struct Channels {
    seq: HashMap<String, u64>,
    subs: HashMap<String, Vec<mpsc::UnboundedSender<String>>>,
    /// A frame held back by `reorder_seqs`, per channel.
    held: HashMap<String, String>,
    /// Every frame pushed per channel (for `replay_history`).
    history: HashMap<String, Vec<String>>,
    accepted_ids: Vec<String>,
    upgrade_attempts: u64,
}

pub struct FaultyServer {
    pub addr: SocketAddr,
    state: Arc<Mutex<Channels>>,
    shutdown: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl FaultyServer {
    pub fn start(faults: Faults) -> anyhow::Result<FaultyServer> {
        Self::start_on("127.0.0.1:0", faults)
    }

    pub fn start_on(listen: &str, faults: Faults) -> anyhow::Result<FaultyServer> {
        let std_listener = std::net::TcpListener::bind(listen)?;
        std_listener.set_nonblocking(true)?;
        let addr = std_listener.local_addr()?;
        let state = Arc::new(Mutex::new(Channels::default()));
        let (tx, rx) = tokio::sync::oneshot::channel();
        let st = state.clone();
        let faults = Arc::new(faults);
        let thread = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("runtime");
            rt.block_on(async move {
                let listener = TcpListener::from_std(std_listener).expect("listener");
                let accept = async {
                    loop {
                        let Ok((sock, _)) = listener.accept().await else {
                            continue;
                        };
                        tokio::spawn(serve(sock, st.clone(), faults.clone()));
                    }
                };
                tokio::select! {
                    _ = accept => {}
                    _ = rx => {}
                }
            });
        });
        Ok(FaultyServer {
            addr,
            state,
            shutdown: Some(tx),
            thread: Some(thread),
        })
    }

    pub fn ws_url(&self) -> String {
        format!("ws://{}/ws", self.addr)
    }

    /// Every `X-Msg-Id` the server accepted, in order.
    pub fn accepted_ids(&self) -> Vec<String> {
        self.state.lock().unwrap().accepted_ids.clone()
    }

    /// WebSocket upgrade requests received so far (refused ones included).
    pub fn upgrade_attempts(&self) -> u64 {
        self.state.lock().unwrap().upgrade_attempts
    }
}

impl Drop for FaultyServer {
    fn drop(&mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

async fn serve(sock: TcpStream, state: Arc<Mutex<Channels>>, faults: Arc<Faults>) {
    let mut head = [0u8; 4];
    // peek may return fewer bytes than asked: wait (bounded) for all four.
    for _ in 0..100 {
        match sock.peek(&mut head).await {
            Ok(n) if n >= 4 => break,
            Ok(n) if n > 0 => tokio::time::sleep(Duration::from_millis(5)).await,
            _ => return,
        }
    }
    if &head == b"POST" {
        let _ = publish_loop(sock, state, &faults).await;
    } else {
        let _ = subscribe(sock, state, &faults).await;
    }
}

/// HTTP/1.1 keep-alive loop answering `POST /publish/{channel}`.
async fn publish_loop(
    mut sock: TcpStream,
    state: Arc<Mutex<Channels>>,
    faults: &Faults,
) -> anyhow::Result<()> {
    let mut buf = Vec::new();
    loop {
        let end = loop {
            if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                break i + 4;
            }
            let mut chunk = [0u8; 4096];
            let n = sock.read(&mut chunk).await?;
            if n == 0 {
                return Ok(());
            }
            buf.extend_from_slice(&chunk[..n]);
        };
        let head = String::from_utf8_lossy(&buf[..end]).to_string();
        let header = |name: &str| {
            head.lines().find_map(|l| {
                l.split_once(':')
                    .filter(|(k, _)| k.trim().eq_ignore_ascii_case(name))
                    .map(|(_, v)| v.trim().to_string())
            })
        };
        let len: usize = header("content-length")
            .and_then(|v| v.parse().ok())
            .unwrap_or(0);
        while buf.len() < end + len {
            let mut chunk = [0u8; 4096];
            let n = sock.read(&mut chunk).await?;
            if n == 0 {
                return Ok(());
            }
            buf.extend_from_slice(&chunk[..n]);
        }
        let body = String::from_utf8_lossy(&buf[end..end + len]).to_string();
        buf.drain(..end + len);
        let path = head.split_whitespace().nth(1).unwrap_or("/").to_string();
        let channel = path.strip_prefix("/publish/").unwrap_or("").to_string();
        let id = header("x-msg-id").unwrap_or_default();
        let seq = {
            let mut st = state.lock().unwrap();
            let seq = {
                let s = st.seq.entry(channel.clone()).or_default();
                *s += 1;
                *s
            };
            st.accepted_ids.push(id.clone());
            let frame = serde_json::json!({"channel": channel, "seq": seq, "id": id, "data": body})
                .to_string();
            let copies = if faults.drop_seqs.contains(&seq) {
                0
            } else if faults.repeat_seqs.contains(&seq) {
                2
            } else {
                1
            };
            let mut frames = vec![frame; copies];
            if faults.reorder_seqs.contains(&seq) {
                if let Some(f) = frames.pop() {
                    st.held.insert(channel.clone(), f);
                }
            } else if let Some(f) = st.held.remove(&channel) {
                frames.push(f);
            }
            if let Some(subs) = st.subs.get_mut(&channel) {
                subs.retain(|s| frames.iter().all(|f| s.send(f.clone()).is_ok()));
            }
            if faults.replay_history {
                st.history
                    .entry(channel.clone())
                    .or_default()
                    .extend(frames);
            }
            seq
        };
        // The subscribers' frames are queued above: they go out while the
        // publisher still waits for its answer.
        if let Some(d) = faults.push_before_answer {
            tokio::time::sleep(d).await;
        }
        let reply = format!("{{\"seq\":{seq},\"id\":\"{id}\"}}");
        let resp = format!(
            "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n{reply}",
            reply.len()
        );
        sock.write_all(resp.as_bytes()).await?;
    }
}

#[expect(
    clippy::result_large_err,
    reason = "the handshake callback's error type is tungstenite's"
)]
async fn subscribe(
    sock: TcpStream,
    state: Arc<Mutex<Channels>>,
    faults: &Faults,
) -> anyhow::Result<()> {
    let mut channel = String::new();
    let ws = tokio_tungstenite::accept_hdr_async(sock, |req: &Request, resp: Response| {
        let attempt = {
            let mut st = state.lock().unwrap();
            st.upgrade_attempts += 1;
            st.upgrade_attempts
        };
        if attempt <= faults.refuse_first_upgrades {
            let mut refuse = ErrorResponse::new(Some("refused by the faulty server".into()));
            *refuse.status_mut() = StatusCode::SERVICE_UNAVAILABLE;
            return Err(refuse);
        }
        let q = req.uri().query().unwrap_or("");
        channel = q
            .split('&')
            .find_map(|kv| kv.strip_prefix("channel="))
            .unwrap_or("")
            .to_string();
        Ok(resp)
    })
    .await?;
    let (tx, mut rx) = mpsc::unbounded_channel();
    {
        // Under one lock: the history and the live frames neither overlap nor leave a gap.
        let mut st = state.lock().unwrap();
        for f in st.history.get(&channel).into_iter().flatten() {
            let _ = tx.send(f.clone());
        }
        st.subs.entry(channel).or_default().push(tx);
    }
    let (mut sink, mut stream) = ws.split();
    loop {
        tokio::select! {
            frame = rx.recv() => match frame {
                Some(f) => sink.send(Message::text(f)).await?,
                None => return Ok(()),
            },
            msg = stream.next() => match msg {
                Some(Ok(Message::Ping(p))) => sink.send(Message::Pong(p)).await?,
                Some(Ok(Message::Close(_))) | None | Some(Err(_)) => return Ok(()),
                Some(Ok(_)) => {}
            },
        }
    }
}
