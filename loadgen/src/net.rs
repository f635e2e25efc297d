//! Opening one WebSocket connection and timing its client-side phases:
//! TCP connect (optionally from a chosen source address with
//! `IP_BIND_ADDRESS_NO_PORT`, so the kernel picks the port at connect time
//! and each source address gets its own ~28k ephemeral ports), TLS handshake
//! (rustls) and the WebSocket upgrade. Buffers are kept small so an idle
//! connection costs a few KiB.

use std::{
    net::{Ipv4Addr, SocketAddr},
    os::fd::AsRawFd,
    sync::Arc,
    time::{Duration, Instant},
};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpSocket, TcpStream};

/// A subscriber's connection (see `ws`).
pub type Ws = crate::ws::WsConn;

/// A plain or TLS client stream. The TLS state is boxed: a plain
/// connection then costs 40 bytes here instead of the ~1.1 KB an inline
/// rustls connection takes (tokio-tungstenite's `MaybeTlsStream`), on
/// every one of 10k+ idle connections.
pub enum Io {
    Plain(TcpStream),
    Tls(Box<tokio_rustls::client::TlsStream<TcpStream>>),
    /// A plain or TLS stream sampled for the message path: its bytes (above
    /// TLS) are counted, and its pushed frames' boundaries followed, as
    /// they pass.
    Counted(Box<Counted>),
}

/// A sampled stream: what was written and read (plaintext, above TLS),
/// when, and where each pushed frame ended (never the bytes themselves
/// beyond frame headers).
pub struct Counted {
    /// The plain or TLS stream underneath.
    inner: Io,
    pub port: u16,
    /// Follow WebSocket frames in what is read (subscribers).
    scan_frames: bool,
    pub frames: crate::msgpath::FrameScanner,
    pub writes: Arc<crate::msgpath::WriteCount>,
}

/// What the kernel says about a TCP socket (`TCP_INFO`).
#[derive(Debug, Clone, Copy)]
pub struct TcpInfo {
    /// Smoothed RTT, µs (`tcpi_rtt`).
    pub srtt_us: u32,
    /// Segments retransmitted over the connection's life (`tcpi_total_retrans`).
    pub total_retrans: u32,
}

/// `getsockopt(TCP_INFO)` of a TCP socket.
pub fn tcp_info_of(sock: &impl AsRawFd) -> Option<TcpInfo> {
    // SAFETY: tcp_info is plain data; getsockopt writes at most `len` bytes into it.
    let mut ti: libc::tcp_info = unsafe { std::mem::zeroed() };
    let mut len = std::mem::size_of::<libc::tcp_info>() as libc::socklen_t;
    // SAFETY: a socket fd the caller owns, a buffer of `len` bytes.
    let rc = unsafe {
        libc::getsockopt(
            sock.as_raw_fd(),
            libc::IPPROTO_TCP,
            libc::TCP_INFO,
            (&mut ti as *mut libc::tcp_info).cast(),
            &mut len,
        )
    };
    (rc == 0).then_some(TcpInfo {
        srtt_us: ti.tcpi_rtt,
        total_retrans: ti.tcpi_total_retrans,
    })
}

impl Io {
    fn tcp(&self) -> &TcpStream {
        match self {
            Io::Plain(s) => s,
            Io::Tls(s) => s.get_ref().0,
            Io::Counted(c) => c.inner.tcp(),
        }
    }

    /// `getsockopt(TCP_INFO)` of the underlying socket.
    pub fn tcp_info(&self) -> Option<TcpInfo> {
        tcp_info_of(self.tcp())
    }

    /// The sampled stream's counters, when this stream is sampled.
    pub fn counted(&mut self) -> Option<&mut Counted> {
        match self {
            Io::Counted(c) => Some(c),
            _ => None,
        }
    }

    /// The local address of the TCP connection underneath.
    pub fn local_addr(&self) -> Option<SocketAddr> {
        match self {
            Io::Plain(t) => t.local_addr().ok(),
            Io::Tls(s) => s.get_ref().0.local_addr().ok(),
            Io::Counted(c) => c.inner.local_addr(),
        }
    }
}

impl AsyncRead for Io {
    fn poll_read(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        match self.get_mut() {
            Io::Plain(s) => std::pin::Pin::new(s).poll_read(cx, buf),
            Io::Tls(s) => std::pin::Pin::new(s.as_mut()).poll_read(cx, buf),
            Io::Counted(c) => {
                let before = buf.filled().len();
                let r = std::pin::Pin::new(&mut c.inner).poll_read(cx, buf);
                if c.scan_frames && buf.filled().len() > before {
                    c.frames
                        .feed(&buf.filled()[before..], crate::clock::mono_ns());
                }
                r
            }
        }
    }
}

impl AsyncWrite for Io {
    fn poll_write(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        match self.get_mut() {
            Io::Plain(s) => std::pin::Pin::new(s).poll_write(cx, buf),
            Io::Tls(s) => std::pin::Pin::new(s.as_mut()).poll_write(cx, buf),
            Io::Counted(c) => {
                // Stamped at the call's start: on loopback the peer can
                // read the bytes before this call returns.
                let start = crate::clock::mono_ns();
                let r = std::pin::Pin::new(&mut c.inner).poll_write(cx, buf);
                if let std::task::Poll::Ready(Ok(n)) = r {
                    if n > 0 {
                        use std::sync::atomic::Ordering::Release;
                        c.writes.bytes.fetch_add(n as u64, Release);
                        c.writes.last_ns.store(start, Release);
                    }
                }
                r
            }
        }
    }

    fn poll_flush(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        match self.get_mut() {
            Io::Plain(s) => std::pin::Pin::new(s).poll_flush(cx),
            Io::Tls(s) => std::pin::Pin::new(s.as_mut()).poll_flush(cx),
            Io::Counted(c) => std::pin::Pin::new(&mut c.inner).poll_flush(cx),
        }
    }

    fn poll_shutdown(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        match self.get_mut() {
            Io::Plain(s) => std::pin::Pin::new(s).poll_shutdown(cx),
            Io::Tls(s) => std::pin::Pin::new(s.as_mut()).poll_shutdown(cx),
            Io::Counted(c) => std::pin::Pin::new(&mut c.inner).poll_shutdown(cx),
        }
    }
}

/// Linux `IP_BIND_ADDRESS_NO_PORT` (include/uapi/linux/in.h).
const IP_BIND_ADDRESS_NO_PORT: libc::c_int = 24;

/// Where and how to connect, resolved once per process.
#[derive(Clone)]
pub struct Endpoint {
    pub addr: SocketAddr,
    pub host: String,
    pub tls: Option<TlsSlot>,
    /// Create sockets in this network namespace (the emulated link's).
    pub netns: Option<Arc<crate::link::NetNs>>,
}

/// The TLS client configuration new connections use. A `cert-rotate`
/// fault swaps it under load ([`TlsSlot::set`]): connections already up
/// keep the configuration they were opened with, every later handshake
/// takes the new one. Read once per connection attempt (an uncontended
/// read lock), never per message.
#[derive(Clone)]
pub struct TlsSlot(Arc<std::sync::RwLock<Arc<rustls::ClientConfig>>>);

impl TlsSlot {
    pub fn new(cfg: Arc<rustls::ClientConfig>) -> TlsSlot {
        TlsSlot(Arc::new(std::sync::RwLock::new(cfg)))
    }

    pub fn get(&self) -> Arc<rustls::ClientConfig> {
        self.0.read().unwrap_or_else(|p| p.into_inner()).clone()
    }

    pub fn set(&self, cfg: Arc<rustls::ClientConfig>) {
        *self.0.write().unwrap_or_else(|p| p.into_inner()) = cfg;
    }
}

/// Client-side phase durations of one successful connection.
#[derive(Debug, Clone, Copy, Default)]
pub struct Phases {
    pub connect: Duration,
    pub tls: Option<Duration>,
    pub upgrade: Duration,
    /// The server's history id from the `101` (reference pusher only).
    pub history: Option<u64>,
}

/// Why a connection attempt failed; `reason()` is the key it is counted under.
#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    #[error("TCP connect to {addr} failed: {source}")]
    Tcp {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("TLS handshake with {host} failed: {source}")]
    Tls {
        host: String,
        source: std::io::Error,
    },
    #[error("WebSocket upgrade refused with HTTP {0}")]
    Http(u16),
    #[error("the server closed or reset the connection during the upgrade: {0}")]
    UpgradeReset(String),
    #[error("WebSocket upgrade failed: {0}")]
    Upgrade(String),
    #[error("connection attempt timed out after {0:?}")]
    Timeout(Duration),
}

impl ConnectError {
    /// A short, stable label for counting failures by kind:
    /// `refused`, `reset`, `timeout`, `http_<status>` (e.g. `http_503`),
    /// `tls: <what rustls said>`, `no_source_port`, `fd_exhausted`,
    /// `tcp: <io error kind>`, `upgrade: <what tungstenite said>`.
    pub fn reason(&self) -> String {
        match self {
            ConnectError::Tcp { source, .. } => io_kind(source),
            ConnectError::Tls { source, .. } => {
                let inner = source
                    .get_ref()
                    .map(|e| e.to_string())
                    .unwrap_or_else(|| io_kind(source));
                format!("tls: {}", inner.chars().take(80).collect::<String>())
            }
            ConnectError::Http(status) => format!("http_{status}"),
            ConnectError::UpgradeReset(_) => "reset".into(),
            ConnectError::Upgrade(m) => {
                format!("upgrade: {}", m.chars().take(60).collect::<String>())
            }
            ConnectError::Timeout(_) => "timeout".into(),
        }
    }
}

fn io_kind(e: &std::io::Error) -> String {
    match e.raw_os_error() {
        Some(libc::ECONNREFUSED) => "refused".into(),
        Some(libc::ECONNRESET) | Some(libc::EPIPE) => "reset".into(),
        Some(libc::EADDRNOTAVAIL) => "no_source_port".into(),
        Some(libc::EMFILE) | Some(libc::ENFILE) => "fd_exhausted".into(),
        Some(libc::ETIMEDOUT) => "timeout".into(),
        _ => format!("tcp: {:?}", e.kind()).to_lowercase(),
    }
}

/// Opens a TCP stream, from `source` when given, with its socket created
/// in `netns` when given (the emulated link's namespace).
pub async fn tcp_connect(
    addr: SocketAddr,
    source: Option<Ipv4Addr>,
    netns: Option<&crate::link::NetNs>,
) -> std::io::Result<TcpStream> {
    let new = || {
        if addr.is_ipv4() {
            TcpSocket::new_v4()
        } else {
            TcpSocket::new_v6()
        }
    };
    let sock = match netns {
        Some(ns) => ns.with_entered(new)??,
        None => new()?,
    };
    if let Some(ip) = source {
        let one: libc::c_int = 1;
        // SAFETY: setsockopt on a socket we own, with a valid int option value.
        let rc = unsafe {
            libc::setsockopt(
                sock.as_raw_fd(),
                libc::IPPROTO_IP,
                IP_BIND_ADDRESS_NO_PORT,
                (&one as *const libc::c_int).cast(),
                std::mem::size_of::<libc::c_int>() as libc::socklen_t,
            )
        };
        if rc != 0 {
            return Err(std::io::Error::last_os_error());
        }
        sock.bind(SocketAddr::new(ip.into(), 0))?;
    }
    let stream = sock.connect(addr).await?;
    stream.set_nodelay(true)?;
    Ok(stream)
}

/// How a new stream is sampled for the message path.
#[derive(Clone, Copy)]
pub struct Sampling<'a> {
    pub tracer: &'a crate::msgpath::Tracer,
    /// Follow pushed WebSocket frames (a subscriber) or not (a publisher).
    pub frames: bool,
}

/// Opens a plain or TLS stream (used by the publisher too). A stream to be
/// sampled is registered with the tracer (its local port) before it sends
/// its first byte, and counted above TLS.
pub async fn open_stream(
    ep: &Endpoint,
    source: Option<Ipv4Addr>,
    phases: &mut Phases,
    sampling: Option<Sampling<'_>>,
) -> Result<Io, ConnectError> {
    let t = Instant::now();
    let tcp = tcp_connect(ep.addr, source, ep.netns.as_deref())
        .await
        .map_err(|source| ConnectError::Tcp {
            addr: ep.addr,
            source,
        })?;
    phases.connect = t.elapsed();
    // A sampled stream is registered before its first byte (the TLS
    // ClientHello or the HTTP request) and counted above TLS.
    let sampled = sampling.and_then(|sm| {
        let port = tcp.local_addr().map(|a| a.port()).unwrap_or(0);
        (port != 0 && sm.tracer.register(port)).then_some((port, sm.frames))
    });
    let counted = |inner: Io| match sampled {
        Some((port, frames)) => Io::Counted(Box::new(Counted {
            inner,
            port,
            scan_frames: frames,
            frames: Default::default(),
            writes: Default::default(),
        })),
        None => inner,
    };
    let Some(cfg) = &ep.tls else {
        return Ok(counted(Io::Plain(tcp)));
    };
    let t = Instant::now();
    let name = rustls::pki_types::ServerName::try_from(ep.host.clone()).map_err(|e| {
        ConnectError::Tls {
            host: ep.host.clone(),
            source: std::io::Error::new(std::io::ErrorKind::InvalidInput, e.to_string()),
        }
    })?;
    let tls = tokio_rustls::TlsConnector::from(cfg.get())
        .connect(name, tcp)
        .await
        .map_err(|source| ConnectError::Tls {
            host: ep.host.clone(),
            source,
        })?;
    phases.tls = Some(t.elapsed());
    Ok(counted(Io::Tls(Box::new(tls))))
}

/// Opens a WebSocket to `url`, timing every phase, within `timeout`.
pub async fn open_ws(
    ep: &Endpoint,
    url: &str,
    subprotocol: Option<&str>,
    source: Option<Ipv4Addr>,
    timeout: Duration,
    tracer: Option<&crate::msgpath::Tracer>,
) -> Result<(Ws, Phases), ConnectError> {
    let (req, key) = crate::ws::request(url, subprotocol)?;
    let fut = async {
        let mut phases = Phases::default();
        let sampling = tracer.map(|tracer| Sampling {
            tracer,
            frames: true,
        });
        let mut stream = open_stream(ep, source, &mut phases, sampling).await?;
        let t = Instant::now();
        let (leftover, history) = crate::ws::upgrade(&mut stream, &req, &key, subprotocol).await?;
        phases.upgrade = t.elapsed();
        phases.history = history;
        Ok((crate::ws::WsConn::new(stream, leftover), phases))
    };
    tokio::time::timeout(timeout, fut)
        .await
        .unwrap_or(Err(ConnectError::Timeout(timeout)))
}

/// Resolves `ws(s)://host:port/…` or `http(s)://…` to an endpoint.
pub fn endpoint(url: &str, tls: Option<Arc<rustls::ClientConfig>>) -> std::io::Result<Endpoint> {
    use std::net::ToSocketAddrs;
    let (scheme, rest) = url.split_once("://").unwrap_or(("ws", url));
    let authority = rest.split(['/', '?']).next().unwrap_or("");
    let secure = matches!(scheme, "wss" | "https");
    let default_port = if secure { 443 } else { 80 };
    let (host, port) = match authority.rsplit_once(':') {
        Some((h, p)) if !h.ends_with(']') || authority.starts_with('[') => (
            h.trim_matches(['[', ']']).to_string(),
            p.parse().map_err(|_| {
                std::io::Error::new(
                    std::io::ErrorKind::InvalidInput,
                    format!("bad port in {url}"),
                )
            })?,
        ),
        _ => (authority.trim_matches(['[', ']']).to_string(), default_port),
    };
    let addr = (host.as_str(), port)
        .to_socket_addrs()?
        .next()
        .ok_or_else(|| {
            std::io::Error::new(
                std::io::ErrorKind::NotFound,
                format!("{host} has no address"),
            )
        })?;
    Ok(Endpoint {
        addr,
        host,
        tls: if secure { tls.map(TlsSlot::new) } else { None },
        netns: None,
    })
}

/// The endpoint of a scenario URL (subscribe or publish), with the
/// scenario's TLS settings (CA, client certificate) for wss:// and https://.
pub fn scenario_endpoint(url: &str, sc: &crate::scenario::Scenario) -> anyhow::Result<Endpoint> {
    let tls = if url.starts_with("wss://") || url.starts_with("https://") {
        Some(crate::tls::client_config(
            sc.ca_cert.as_deref(),
            sc.client_cert.as_deref(),
            sc.client_key.as_deref(),
        )?)
    } else {
        None
    };
    let mut ep = endpoint(url, tls).map_err(|e| anyhow::anyhow!("cannot resolve {url}: {e}"))?;
    ep.netns = sc.netns.clone();
    Ok(ep)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn failure_reasons_are_short_stable_keys() {
        let tcp = |errno| ConnectError::Tcp {
            addr: SocketAddr::from(([127, 0, 0, 1], 1)),
            source: std::io::Error::from_raw_os_error(errno),
        };
        assert_eq!(tcp(libc::ECONNREFUSED).reason(), "refused");
        assert_eq!(tcp(libc::ECONNRESET).reason(), "reset");
        assert_eq!(tcp(libc::EMFILE).reason(), "fd_exhausted");
        assert_eq!(tcp(libc::EADDRNOTAVAIL).reason(), "no_source_port");
        assert_eq!(ConnectError::Http(503).reason(), "http_503");
        assert_eq!(
            ConnectError::Timeout(Duration::from_secs(1)).reason(),
            "timeout"
        );
        assert_eq!(ConnectError::UpgradeReset("eof".into()).reason(), "reset");
    }
}
