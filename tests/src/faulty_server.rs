//! A deliberately faulty push server for load-generator tests: it speaks
//! the reference pusher's protocol v1 (`POST /publish/{channel}` →
//! `{"seq":N,"id":…}`, `GET /ws?channel=C` → one JSON text frame per
//! message) on a real loopback socket, but never delivers server seq
//! `drop_seq` and delivers `repeat_seq` twice. It remembers the ids it
//! accepted so a test can hand them to `pushscope verify --server-ids`.

use futures_util::{SinkExt, StreamExt};
use std::{
    collections::HashMap,
    net::SocketAddr,
    sync::{Arc, Mutex},
};
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::{TcpListener, TcpStream},
    sync::mpsc,
};
use tokio_tungstenite::tungstenite::{
    handshake::server::{Request, Response},
    Message,
};

#[derive(Debug, Clone, Copy, Default)]
pub struct Faults {
    /// Server seq never pushed to any subscriber.
    pub drop_seq: Option<u64>,
    /// Server seq pushed twice to every subscriber.
    pub repeat_seq: Option<u64>,
}

#[derive(Default)]
struct Channels {
    seq: HashMap<String, u64>,
    subs: HashMap<String, Vec<mpsc::UnboundedSender<String>>>,
    accepted_ids: Vec<String>,
}

pub struct FaultyServer {
    pub addr: SocketAddr,
    state: Arc<Mutex<Channels>>,
    shutdown: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl FaultyServer {
    pub fn start(faults: Faults) -> anyhow::Result<FaultyServer> {
        let std_listener = std::net::TcpListener::bind("127.0.0.1:0")?;
        std_listener.set_nonblocking(true)?;
        let addr = std_listener.local_addr()?;
        let state = Arc::new(Mutex::new(Channels::default()));
        let (tx, rx) = tokio::sync::oneshot::channel();
        let st = state.clone();
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
                        tokio::spawn(serve(sock, st.clone(), faults));
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

async fn serve(sock: TcpStream, state: Arc<Mutex<Channels>>, faults: Faults) {
    let mut head = [0u8; 4];
    if sock.peek(&mut head).await.unwrap_or(0) < 4 {
        return;
    }
    if &head == b"POST" {
        let _ = publish_loop(sock, state, faults).await;
    } else {
        let _ = subscribe(sock, state).await;
    }
}

/// HTTP/1.1 keep-alive loop answering `POST /publish/{channel}`.
async fn publish_loop(
    mut sock: TcpStream,
    state: Arc<Mutex<Channels>>,
    faults: Faults,
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
            let copies = if faults.drop_seq == Some(seq) {
                0
            } else if faults.repeat_seq == Some(seq) {
                2
            } else {
                1
            };
            if let Some(subs) = st.subs.get_mut(&channel) {
                subs.retain(|s| (0..copies).all(|_| s.send(frame.clone()).is_ok()));
            }
            seq
        };
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
async fn subscribe(sock: TcpStream, state: Arc<Mutex<Channels>>) -> anyhow::Result<()> {
    let mut channel = String::new();
    let ws = tokio_tungstenite::accept_hdr_async(sock, |req: &Request, resp: Response| {
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
    state
        .lock()
        .unwrap()
        .subs
        .entry(channel)
        .or_default()
        .push(tx);
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
