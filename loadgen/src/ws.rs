//! The subscribers' WebSocket client (RFC 6455), lean on purpose: a
//! subscriber reads into its lane's shared scratch buffer and parses every
//! frame of that read in place, so an idle connection owns no read buffer
//! (only the bytes of a frame a read cut off, kept until the next read),
//! nothing is allocated per frame, and one `recv` returns all the frames
//! queued on the socket. Writes (ACKs, pings, pongs, close) are rare: they
//! are queued as masked frames and written at once.
//!
//! The upgrade is our own request (tungstenite's key) and our own
//! check of the `101` response (status, `Upgrade`, `Connection`,
//! `Sec-WebSocket-Accept`, subprotocol), which keeps the bytes the server
//! sent right after its response (nchan replays history at once).

use crate::net::{ConnectError, Io};
use std::io::ErrorKind;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt, ReadBuf};
use tokio_tungstenite::tungstenite::handshake::{client::generate_key, derive_accept_key};

/// Frames and messages above this are refused ("frame too large").
pub const MAX_MESSAGE: usize = 1 << 20;
/// The longest upgrade response head accepted.
const MAX_HEAD: usize = 16 * 1024;

pub const OP_CONT: u8 = 0x0;
pub const OP_TEXT: u8 = 0x1;
pub const OP_BINARY: u8 = 0x2;
pub const OP_CLOSE: u8 = 0x8;
pub const OP_PING: u8 = 0x9;
pub const OP_PONG: u8 = 0xA;

/// Why the stream is no longer usable; `reason()` is the key an unexpected
/// disconnect is counted under.
#[derive(Debug, PartialEq, Eq)]
pub enum WsError {
    /// RFC 6455 violated by the server (masked, reserved bits or opcode,
    /// bad fragmentation, control frame too long, text not UTF-8).
    Protocol(&'static str),
    /// A frame or message above [`MAX_MESSAGE`].
    TooLarge,
}

impl WsError {
    pub fn reason(&self) -> &'static str {
        match self {
            WsError::Protocol(_) => "protocol error",
            WsError::TooLarge => "frame too large",
        }
    }
}

/// One frame's header, parsed from the start of a buffer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FrameHead {
    pub fin: bool,
    pub opcode: u8,
    /// Header bytes (payload starts here).
    pub header_len: usize,
    pub payload_len: usize,
}

impl FrameHead {
    pub fn total(&self) -> usize {
        self.header_len + self.payload_len
    }
}

/// Parses the frame header at the start of `buf`: `Ok(None)` while the
/// header is incomplete. Checks what a client must refuse of a server.
pub fn parse_head(buf: &[u8]) -> Result<Option<FrameHead>, WsError> {
    let [b0, b1, ..] = *buf else {
        return Ok(None);
    };
    if b0 & 0x70 != 0 {
        return Err(WsError::Protocol("reserved bits set"));
    }
    if b1 & 0x80 != 0 {
        return Err(WsError::Protocol("masked frame from the server"));
    }
    let fin = b0 & 0x80 != 0;
    let opcode = b0 & 0x0f;
    let (header_len, len) = match b1 & 0x7f {
        126 => {
            let Some(b) = buf.get(2..4) else {
                return Ok(None);
            };
            (4, u64::from(u16::from_be_bytes([b[0], b[1]])))
        }
        127 => {
            let Some(b) = buf.get(2..10) else {
                return Ok(None);
            };
            let mut a = [0u8; 8];
            a.copy_from_slice(b);
            (10, u64::from_be_bytes(a))
        }
        n => (2, u64::from(n)),
    };
    match opcode {
        OP_CONT | OP_TEXT | OP_BINARY => {}
        OP_CLOSE | OP_PING | OP_PONG => {
            if !fin || len > 125 {
                return Err(WsError::Protocol("bad control frame"));
            }
        }
        _ => return Err(WsError::Protocol("reserved opcode")),
    }
    if len > MAX_MESSAGE as u64 {
        return Err(WsError::TooLarge);
    }
    Ok(Some(FrameHead {
        fin,
        opcode,
        header_len,
        payload_len: len as usize,
    }))
}

/// Appends a masked client frame (FIN set) to `out`.
pub fn put_frame(out: &mut Vec<u8>, opcode: u8, payload: &[u8]) {
    out.push(0x80 | opcode);
    let n = payload.len();
    match n {
        0..=125 => out.push(0x80 | n as u8),
        126..=0xffff => {
            out.push(0x80 | 126);
            out.extend_from_slice(&(n as u16).to_be_bytes());
        }
        _ => {
            out.push(0x80 | 127);
            out.extend_from_slice(&(n as u64).to_be_bytes());
        }
    }
    let mask: [u8; 4] = rand::random();
    out.extend_from_slice(&mask);
    out.extend(payload.iter().zip(mask.iter().cycle()).map(|(b, m)| b ^ m));
}

/// What a complete frame was, for the caller.
#[derive(Debug, PartialEq, Eq)]
pub enum Event<'a> {
    /// A whole data message (reassembled if it came in fragments).
    Message {
        text: bool,
        payload: &'a [u8],
    },
    /// A ping (its pong is already queued).
    Ping,
    Pong,
    /// The server's close frame (the close reply is already queued).
    Close,
}

/// A subscriber's WebSocket connection: its stream and its framing state.
pub struct WsConn {
    pub io: Io,
    pub framer: Framer,
}

/// Framing state of one connection, apart from its stream (so a frame's
/// handler can use the stream while the frames are walked).
#[derive(Debug, Default)]
pub struct Framer {
    /// The start of a frame a read cut off (unallocated while idle).
    partial: Vec<u8>,
    /// A data message arriving in fragments: its opcode and bytes so far.
    frag: Option<Box<(u8, Vec<u8>)>>,
    /// Frames waiting to be written (unallocated while idle).
    out: Vec<u8>,
}

impl WsConn {
    /// A connection whose upgrade is done; `leftover` are the bytes read
    /// after the upgrade response.
    pub fn new(io: Io, leftover: Vec<u8>) -> WsConn {
        WsConn {
            io,
            framer: Framer {
                partial: leftover,
                ..Default::default()
            },
        }
    }

    /// Reads once into `buf`: the number of bytes (0 at EOF).
    pub fn poll_read(
        &mut self,
        cx: &mut std::task::Context<'_>,
        buf: &mut [u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        let mut rb = ReadBuf::new(buf);
        match std::pin::Pin::new(&mut self.io).poll_read(cx, &mut rb) {
            std::task::Poll::Ready(Ok(())) => std::task::Poll::Ready(Ok(rb.filled().len())),
            std::task::Poll::Ready(Err(e)) => std::task::Poll::Ready(Err(e)),
            std::task::Poll::Pending => std::task::Poll::Pending,
        }
    }

    /// Writes what is queued.
    pub async fn flush(&mut self) -> std::io::Result<()> {
        let out = &mut self.framer.out;
        if out.is_empty() {
            return Ok(());
        }
        self.io.write_all(out).await?;
        self.io.flush().await?;
        *out = Vec::new();
        Ok(())
    }

    /// Sends a close frame (and whatever was queued before it).
    pub async fn close(&mut self) -> std::io::Result<()> {
        put_frame(&mut self.framer.out, OP_CLOSE, &1000u16.to_be_bytes());
        self.flush().await
    }
}

impl Framer {
    /// Whether frames are queued to be written.
    pub fn has_out(&self) -> bool {
        !self.out.is_empty()
    }

    /// Whether bytes are left over from the upgrade or an earlier read.
    pub fn has_partial(&self) -> bool {
        !self.partial.is_empty()
    }

    /// Hands every complete frame in what was kept plus `data` (one read)
    /// to `on`, in order, and keeps the incomplete rest. `on` sees each
    /// frame's event and this connection (to queue frames); it stops the
    /// walk by returning `Err`. Pings get their pong and a close its reply
    /// queued before `on` sees them.
    pub fn frames<E>(
        &mut self,
        data: &[u8],
        mut on: impl FnMut(&mut Framer, Event<'_>) -> Result<(), E>,
    ) -> Result<(), FramesError<E>> {
        if self.partial.is_empty() {
            let used = self.walk(data, &mut on)?;
            if used < data.len() {
                self.partial = data[used..].to_vec();
            }
        } else {
            let mut buf = std::mem::take(&mut self.partial);
            buf.extend_from_slice(data);
            let used = self.walk(&buf, &mut on)?;
            if used < buf.len() {
                buf.drain(..used);
                self.partial = buf;
            }
        }
        Ok(())
    }

    /// Walks complete frames of `buf`; returns the bytes used.
    fn walk<E>(
        &mut self,
        buf: &[u8],
        on: &mut impl FnMut(&mut Framer, Event<'_>) -> Result<(), E>,
    ) -> Result<usize, FramesError<E>> {
        let mut at = 0;
        loop {
            let Some(h) = parse_head(&buf[at..]).map_err(FramesError::Ws)? else {
                return Ok(at);
            };
            if buf.len() - at < h.total() {
                return Ok(at);
            }
            let payload = &buf[at + h.header_len..at + h.total()];
            at += h.total();
            match h.opcode {
                OP_PING => {
                    put_frame(&mut self.out, OP_PONG, payload);
                    on(self, Event::Ping).map_err(FramesError::Stop)?;
                }
                OP_PONG => on(self, Event::Pong).map_err(FramesError::Stop)?,
                OP_CLOSE => {
                    // Echo the status code (RFC 6455 5.5.1).
                    put_frame(&mut self.out, OP_CLOSE, payload.get(..2).unwrap_or(&[]));
                    on(self, Event::Close).map_err(FramesError::Stop)?;
                }
                OP_CONT => {
                    let Some(mut f) = self.frag.take() else {
                        return Err(FramesError::Ws(WsError::Protocol(
                            "continuation without a message",
                        )));
                    };
                    if f.1.len() + payload.len() > MAX_MESSAGE {
                        return Err(FramesError::Ws(WsError::TooLarge));
                    }
                    f.1.extend_from_slice(payload);
                    if h.fin {
                        let text = f.0 == OP_TEXT;
                        on(
                            self,
                            Event::Message {
                                text,
                                payload: &f.1,
                            },
                        )
                        .map_err(FramesError::Stop)?;
                    } else {
                        self.frag = Some(f);
                    }
                }
                op => {
                    if self.frag.is_some() {
                        return Err(FramesError::Ws(WsError::Protocol(
                            "new message inside a fragmented one",
                        )));
                    }
                    if h.fin {
                        on(
                            self,
                            Event::Message {
                                text: op == OP_TEXT,
                                payload,
                            },
                        )
                        .map_err(FramesError::Stop)?;
                    } else {
                        self.frag = Some(Box::new((op, payload.to_vec())));
                    }
                }
            }
        }
    }

    /// Queues a text frame.
    pub fn queue_text(&mut self, text: &str) {
        put_frame(&mut self.out, OP_TEXT, text.as_bytes());
    }

    pub fn queue_ping(&mut self) {
        put_frame(&mut self.out, OP_PING, &[]);
    }
}

/// Why [`WsConn::frames`] stopped early.
#[derive(Debug)]
pub enum FramesError<E> {
    Ws(WsError),
    /// The caller's callback stopped the walk.
    Stop(E),
}

/// The upgrade request for `url` (`ws(s)://authority/path?query`) and
/// the key it carries. Written directly: tungstenite's `generate_request`
/// first builds an `http::Request` and its header map, which was a sixth
/// of the load generator's own CPU per new connection in a 100k ramp.
pub fn request(url: &str, subprotocol: Option<&str>) -> Result<(Vec<u8>, String), ConnectError> {
    let bad = |what: &str| ConnectError::Upgrade(format!("{what} in {url}"));
    let (scheme, rest) = url.split_once("://").ok_or_else(|| bad("no scheme"))?;
    if !matches!(scheme, "ws" | "wss" | "http" | "https") {
        return Err(bad("not a ws:// or wss:// URL"));
    }
    let at = rest.find(['/', '?']).unwrap_or(rest.len());
    let (authority, target) = rest.split_at(at);
    // A user:password@ part is not sent (tungstenite does not either).
    let host = authority.rsplit('@').next().unwrap_or(authority);
    let printable = |v: &str| v.bytes().all(|b| b > 0x20 && b != 0x7f);
    if host.is_empty() || !printable(host) || !printable(target) {
        return Err(bad("no host, or a space or control byte"));
    }
    let key = generate_key();
    let mut r = Vec::with_capacity(160 + url.len());
    let path = match target.as_bytes().first() {
        Some(b'/') => target,
        _ => "/",
    };
    for part in [
        "GET ",
        path,
        if target.starts_with('?') { target } else { "" },
        " HTTP/1.1\r\nHost: ",
        host,
        "\r\nConnection: Upgrade\r\nUpgrade: websocket\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: ",
        &key,
        "\r\n",
    ] {
        r.extend_from_slice(part.as_bytes());
    }
    if let Some(p) = subprotocol {
        if !p.bytes().all(|b| b >= 0x20 && b != 0x7f) {
            return Err(ConnectError::Upgrade(format!(
                "subprotocol {p:?} has a control byte"
            )));
        }
        for part in ["Sec-WebSocket-Protocol: ", p, "\r\n"] {
            r.extend_from_slice(part.as_bytes());
        }
    }
    r.extend_from_slice(b"\r\n");
    Ok((r, key))
}

/// The WebSocket upgrade on an open stream: sends `request` (from
/// [`request`], carrying `key`), checks the `101` response; returns the
/// bytes read after it and the server's history id (the reference
/// pusher's `X-Pusher-History`), if it sent one.
pub async fn upgrade(
    io: &mut Io,
    request: &[u8],
    key: &str,
    subprotocol: Option<&str>,
) -> Result<(Vec<u8>, Option<u64>), ConnectError> {
    io.write_all(request).await.map_err(io_error)?;
    io.flush().await.map_err(io_error)?;
    let mut buf: Vec<u8> = Vec::with_capacity(1024);
    loop {
        if buf.len() >= MAX_HEAD {
            return Err(ConnectError::Upgrade(format!(
                "the upgrade response head is longer than {MAX_HEAD} bytes"
            )));
        }
        buf.reserve(1024);
        if io.read_buf(&mut buf).await.map_err(io_error)? == 0 {
            return Err(ConnectError::UpgradeReset(
                "the server closed the connection before its upgrade response".into(),
            ));
        }
        let mut headers = [httparse::EMPTY_HEADER; 64];
        let mut resp = httparse::Response::new(&mut headers);
        let head_len = match resp.parse(&buf) {
            Ok(httparse::Status::Partial) => continue,
            Ok(httparse::Status::Complete(n)) => n,
            Err(e) => return Err(ConnectError::Upgrade(format!("bad upgrade response: {e}"))),
        };
        let history = check_response(&resp, key, subprotocol)?;
        return Ok((buf.split_off(head_len), history));
    }
}

/// Checks a `101`; returns the history id it carries, if any.
fn check_response(
    resp: &httparse::Response<'_, '_>,
    key: &str,
    subprotocol: Option<&str>,
) -> Result<Option<u64>, ConnectError> {
    let status = resp.code.unwrap_or(0);
    if status != 101 {
        return Err(ConnectError::Http(status));
    }
    let header = |name: &str| {
        resp.headers
            .iter()
            .find(|h| h.name.eq_ignore_ascii_case(name))
            .map(|h| String::from_utf8_lossy(h.value).trim().to_string())
    };
    let bad = |what: &str| Err(ConnectError::Upgrade(what.to_string()));
    if !header("upgrade").is_some_and(|v| v.eq_ignore_ascii_case("websocket")) {
        return bad("no \"Upgrade: websocket\" header in the 101 response");
    }
    if !header("connection").is_some_and(|v| {
        v.split(',')
            .any(|t| t.trim().eq_ignore_ascii_case("upgrade"))
    }) {
        return bad("no \"Connection: Upgrade\" header in the 101 response");
    }
    if header("sec-websocket-accept").as_deref() != Some(derive_accept_key(key.as_bytes()).as_str())
    {
        return bad("Sec-WebSocket-Accept does not match the key sent");
    }
    let history = header(crate::protocol::pushscope::HISTORY_HEADER)
        .and_then(|v| crate::protocol::pushscope::parse_history(&v));
    match (subprotocol, header("sec-websocket-protocol")) {
        (None, None) => Ok(history),
        (Some(p), Some(got)) if got == p => Ok(history),
        (Some(p), _) => bad(&format!("the server did not accept subprotocol {p}")),
        (None, Some(got)) => bad(&format!(
            "the server chose subprotocol {got}, never asked for"
        )),
    }
}

/// An I/O error during the upgrade: a reset or EOF is `UpgradeReset`.
fn io_error(e: std::io::Error) -> ConnectError {
    match e.raw_os_error() {
        Some(libc::ECONNRESET) | Some(libc::EPIPE) => ConnectError::UpgradeReset(e.to_string()),
        _ if e.kind() == ErrorKind::UnexpectedEof => ConnectError::UpgradeReset(e.to_string()),
        _ => ConnectError::Upgrade(e.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A server frame (unmasked).
    fn server_frame(fin: bool, opcode: u8, payload: &[u8]) -> Vec<u8> {
        let mut f = vec![(u8::from(fin) << 7) | opcode];
        match payload.len() {
            n @ 0..=125 => f.push(n as u8),
            n @ 126..=0xffff => {
                f.push(126);
                f.extend_from_slice(&(n as u16).to_be_bytes());
            }
            n => {
                f.push(127);
                f.extend_from_slice(&(n as u64).to_be_bytes());
            }
        }
        f.extend_from_slice(payload);
        f
    }

    fn conn() -> Framer {
        Framer::default()
    }

    #[derive(Debug, PartialEq)]
    enum Got {
        Msg(bool, Vec<u8>),
        Ping,
        Pong,
        Close,
    }

    fn feed(c: &mut Framer, data: &[u8], got: &mut Vec<Got>) -> Result<(), WsError> {
        c.frames(data, |_, ev| {
            got.push(match ev {
                Event::Message { text, payload } => Got::Msg(text, payload.to_vec()),
                Event::Ping => Got::Ping,
                Event::Pong => Got::Pong,
                Event::Close => Got::Close,
            });
            Ok::<(), ()>(())
        })
        .map_err(|e| match e {
            FramesError::Ws(w) => w,
            FramesError::Stop(()) => unreachable!(),
        })
    }

    #[test]
    fn frames_split_anywhere_come_out_whole_and_in_order() {
        let big = vec![b'y'; 70_000];
        let mut stream = Vec::new();
        stream.extend(server_frame(true, OP_TEXT, b"hello"));
        stream.extend(server_frame(true, OP_PING, b"p"));
        stream.extend(server_frame(false, OP_TEXT, b"frag"));
        stream.extend(server_frame(true, OP_PONG, b""));
        stream.extend(server_frame(true, OP_CONT, b"ment"));
        stream.extend(server_frame(true, OP_BINARY, &[0xff; 300]));
        stream.extend(server_frame(true, OP_TEXT, &big));
        stream.extend(server_frame(true, OP_CLOSE, &[0x03, 0xe8, b'x']));
        let want = vec![
            Got::Msg(true, b"hello".to_vec()),
            Got::Ping,
            Got::Pong,
            Got::Msg(true, b"fragment".to_vec()),
            Got::Msg(false, vec![0xff; 300]),
            Got::Msg(true, big.clone()),
            Got::Close,
        ];
        for chunk in [1, 2, 3, 7, 64, 1000, 65536, stream.len()] {
            let mut c = conn();
            let mut got = Vec::new();
            for part in stream.chunks(chunk) {
                feed(&mut c, part, &mut got).unwrap();
            }
            assert_eq!(got, want, "read size {chunk}");
            assert!(!c.has_partial(), "nothing kept after the last frame");
            // A pong for the ping (masked, payload "p") and the close reply (code 1000 echoed).
            assert_eq!(c.out.len(), (2 + 4 + 1) + (2 + 4 + 2));
            assert_eq!(c.out[0], 0x80 | OP_PONG);
            let m = &c.out[9..13];
            assert_eq!([c.out[13] ^ m[0], c.out[14] ^ m[1]], [0x03, 0xe8]);
        }
    }

    #[test]
    fn what_a_client_must_refuse() {
        let mut c = conn();
        let mut got = Vec::new();
        assert_eq!(
            feed(&mut c, &[0x81, 0x85, 1, 2, 3, 4, 0], &mut got),
            Err(WsError::Protocol("masked frame from the server"))
        );
        assert_eq!(
            feed(&mut conn(), &[0xc1, 0x00], &mut got),
            Err(WsError::Protocol("reserved bits set"))
        );
        assert_eq!(
            feed(&mut conn(), &[0x83, 0x00], &mut got),
            Err(WsError::Protocol("reserved opcode"))
        );
        assert_eq!(
            feed(&mut conn(), &[0x80, 0x00], &mut got),
            Err(WsError::Protocol("continuation without a message"))
        );
        assert_eq!(
            feed(&mut conn(), &server_frame(false, OP_PING, b""), &mut got),
            Err(WsError::Protocol("bad control frame"))
        );
        let mut too_big = vec![0x81, 127];
        too_big.extend_from_slice(&((MAX_MESSAGE as u64) + 1).to_be_bytes());
        assert_eq!(
            feed(&mut conn(), &too_big, &mut got).unwrap_err().reason(),
            "frame too large"
        );
        assert!(got.is_empty());
    }

    #[test]
    fn client_frames_are_masked_and_unmask_back() {
        for n in [0usize, 5, 125, 126, 300, 70_000] {
            let payload: Vec<u8> = (0..n).map(|i| i as u8).collect();
            let mut out = Vec::new();
            put_frame(&mut out, OP_TEXT, &payload);
            assert_eq!(out[0], 0x81);
            assert!(out[1] & 0x80 != 0, "masked");
            let (hl, len) = match out[1] & 0x7f {
                126 => (4, u16::from_be_bytes([out[2], out[3]]) as usize),
                127 => (
                    10,
                    u64::from_be_bytes(out[2..10].try_into().unwrap()) as usize,
                ),
                l => (2, l as usize),
            };
            assert_eq!(len, n);
            let mask = &out[hl..hl + 4];
            let back: Vec<u8> = out[hl + 4..]
                .iter()
                .enumerate()
                .map(|(i, b)| b ^ mask[i % 4])
                .collect();
            assert_eq!(back, payload);
        }
    }

    /// A one-shot server: reads the upgrade request, answers with
    /// `respond(key)` (bytes), then closes.
    async fn upgrade_against(
        respond: impl Fn(&str) -> Vec<u8> + Send + 'static,
        subprotocol: Option<&str>,
    ) -> Result<(Vec<u8>, Option<u64>), ConnectError> {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        let server = tokio::spawn(async move {
            let (mut s, _) = l.accept().await.unwrap();
            let mut req = Vec::new();
            while !req.ends_with(b"\r\n\r\n") {
                let mut b = [0u8; 1];
                if s.read(&mut b).await.unwrap() == 0 {
                    return;
                }
                req.push(b[0]);
            }
            let req = String::from_utf8(req).unwrap();
            let key = req
                .lines()
                .find_map(|l| l.strip_prefix("Sec-WebSocket-Key: "))
                .unwrap()
                .trim()
                .to_string();
            s.write_all(&respond(&key)).await.unwrap();
        });
        let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
        let mut io = Io::Plain(tcp);
        let (req, key) = request(&format!("ws://{addr}/ws?channel=c"), subprotocol).unwrap();
        let r = upgrade(&mut io, &req, &key, subprotocol).await;
        server.await.unwrap();
        r
    }

    /// The request as a server parses it: target, Host, the upgrade
    /// headers, a fresh 16-byte key, the subprotocol when asked.
    #[test]
    fn the_upgrade_request_is_what_a_server_expects() {
        for (url, target, host) in [
            (
                "ws://127.0.0.1:8080/sub/x?y=1",
                "/sub/x?y=1",
                "127.0.0.1:8080",
            ),
            ("wss://h.example?c=2", "/?c=2", "h.example"),
            ("ws://u:p@h", "/", "h"),
            ("ws://[::1]:9/ws", "/ws", "[::1]:9"),
        ] {
            let (bytes, key) = request(url, Some("v1.push")).unwrap();
            let mut headers = [httparse::EMPTY_HEADER; 16];
            let mut req = httparse::Request::new(&mut headers);
            assert_eq!(
                req.parse(&bytes).unwrap(),
                httparse::Status::Complete(bytes.len()),
                "{url}"
            );
            assert_eq!(
                (req.method, req.path, req.version),
                (Some("GET"), Some(target), Some(1))
            );
            let h = |n: &str| {
                let v = req.headers.iter().find(|h| h.name.eq_ignore_ascii_case(n));
                std::str::from_utf8(v.unwrap_or_else(|| panic!("{n} in {url}")).value).unwrap()
            };
            assert_eq!(h("host"), host);
            assert_eq!(h("upgrade"), "websocket");
            assert_eq!(h("connection"), "Upgrade");
            assert_eq!(h("sec-websocket-version"), "13");
            assert_eq!(h("sec-websocket-key"), key);
            assert_eq!(key.len(), 24, "16 bytes in base64");
            assert_eq!(h("sec-websocket-protocol"), "v1.push");
        }
        let (a, b) = (
            request("ws://h/", None).unwrap(),
            request("ws://h/", None).unwrap(),
        );
        assert_ne!(a.1, b.1, "a new key each time");
        assert!(!String::from_utf8(a.0).unwrap().contains("Protocol"));
        for bad in [
            "ws:///x",
            "ws://h/a b",
            "h/x",
            "ftp://h/",
            "ws://h/\r\nX: 1",
        ] {
            assert!(request(bad, None).is_err(), "{bad}");
        }
        assert!(request("ws://h/", Some("a\r\nX: 1")).is_err());
    }

    fn accept(key: &str, extra: &str) -> String {
        format!(
            "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: {}\r\n{extra}\r\n",
            derive_accept_key(key.as_bytes())
        )
    }

    #[tokio::test]
    async fn upgrade_keeps_the_frames_sent_with_the_response() {
        let first = server_frame(true, OP_TEXT, b"history");
        let f = first.clone();
        let (left, history) = upgrade_against(
            move |key| {
                let mut r = accept(key, "").into_bytes();
                r.extend_from_slice(&f);
                r
            },
            None,
        )
        .await
        .unwrap();
        assert_eq!((left, history), (first, None));
        let (left, history) = upgrade_against(
            |key| accept(key, "Sec-WebSocket-Protocol: ws+meta.nchan\r\n").into_bytes(),
            Some("ws+meta.nchan"),
        )
        .await
        .unwrap();
        assert!(left.is_empty() && history.is_none());
    }

    /// The reference pusher's history id comes back from the 101; a
    /// malformed one is no history (the resume carries none).
    #[tokio::test]
    async fn upgrade_returns_the_history_id() {
        let (_, history) = upgrade_against(
            |key| accept(key, "X-Pusher-History: 00ff00ff00ff00ff\r\n").into_bytes(),
            None,
        )
        .await
        .unwrap();
        assert_eq!(history, Some(0x00ff_00ff_00ff_00ff));
        let (_, history) = upgrade_against(
            |key| accept(key, "x-pusher-history: zz\r\n").into_bytes(),
            None,
        )
        .await
        .unwrap();
        assert_eq!(history, None);
    }

    #[tokio::test]
    async fn upgrade_failures_are_counted_by_kind() {
        let reason = |r: Result<(Vec<u8>, Option<u64>), ConnectError>| r.unwrap_err().reason();
        assert_eq!(
            reason(
                upgrade_against(
                    |_| b"HTTP/1.1 503 Busy\r\ncontent-length: 0\r\n\r\n".to_vec(),
                    None
                )
                .await
            ),
            "http_503"
        );
        assert_eq!(reason(upgrade_against(|_| Vec::new(), None).await), "reset");
        assert_eq!(
            reason(upgrade_against(|_| accept("another key", "").into_bytes(), None).await),
            "upgrade: Sec-WebSocket-Accept does not match the key sent"
        );
        assert_eq!(
            reason(
                upgrade_against(|key| accept(key, "").into_bytes(), Some("ws+meta.nchan")).await
            ),
            "upgrade: the server did not accept subprotocol ws+meta.nchan"
        );
        assert_eq!(
            reason(
                upgrade_against(
                    |key| accept(key, "").replace("websocket", "h2c").into_bytes(),
                    None
                )
                .await
            ),
            "upgrade: no \"Upgrade: websocket\" header in the 101 response"
        );
    }
}
