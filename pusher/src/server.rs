//! Accept loop: TCP (optionally TLS) connections served by hyper's HTTP/1.1
//! with upgrades; plus start-up (data dir lock, writer, bound address on the
//! first stdout line) and shutdown on SIGINT/SIGTERM.

use std::{
    fs::{File, OpenOptions},
    io::Write,
    os::fd::AsRawFd,
    path::Path,
    sync::Arc,
    time::Duration,
};

use anyhow::{anyhow, Context, Result};
use hyper::{header::HeaderValue, server::conn::http1, service::service_fn};
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::{
    io::{AsyncRead, AsyncWrite},
    net::{TcpListener, TcpSocket},
};
use tokio_rustls::TlsAcceptor;

use crate::{
    channel::{Hub, Limits},
    config::Settings,
    history,
    http::{handle, AppState},
    metrics::Metrics,
    tls,
    writer::{Writer, WriterConfig},
};

/// Holds an exclusive flock on `<data dir>/LOCK`: two pushers on one data
/// dir would interleave their logs.
fn lock_data_dir(dir: &Path) -> Result<File> {
    std::fs::create_dir_all(dir)
        .with_context(|| format!("cannot create the data dir {}", dir.display()))?;
    let path = dir.join("LOCK");
    let f = OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .with_context(|| format!("cannot open {}", path.display()))?;
    // SAFETY: flock on a file descriptor we own.
    if unsafe { libc::flock(f.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } != 0 {
        return Err(anyhow!(
            "the data dir {} is in use by another pushscope-pusher: stop it or pass another --data-dir",
            dir.display()
        ));
    }
    Ok(f)
}

/// Listen backlog: reconnect storms of thousands of clients must not
/// overflow the accept queue (tokio's default is 1024; the kernel caps it
/// at net.core.somaxconn).
const BACKLOG: u32 = 8192;

fn bind(addr: std::net::SocketAddr) -> std::io::Result<TcpListener> {
    let socket = if addr.is_ipv4() {
        TcpSocket::new_v4()?
    } else {
        TcpSocket::new_v6()?
    };
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    socket.listen(BACKLOG)
}

/// Runs the server until SIGINT/SIGTERM.
pub async fn run(settings: Settings) -> Result<()> {
    let opts = &settings.opts;
    let (_lock, history) = match &opts.data_dir {
        Some(d) => {
            let lock = lock_data_dir(d)?;
            (Some(lock), history::load_or_create(d)?)
        }
        None => {
            log::warn!("no --data-dir: messages are kept in memory only and lost on restart");
            (None, history::random()?)
        }
    };
    let tls = match (&opts.tls_cert, &opts.tls_key) {
        (Some(c), Some(k)) => Some(TlsAcceptor::from(tls::server_config(
            c,
            k,
            opts.tls_client_ca.as_deref(),
        )?)),
        _ => None,
    };
    let metrics = Arc::new(Metrics::new());
    metrics.info.with_label_values(&[&history]).set(1);
    let hub = Arc::new(Hub::new(
        metrics.clone(),
        Limits {
            retain_messages: opts.retain_messages,
            retain_bytes: opts.retain_bytes,
            send_queue: opts.send_queue,
            send_queue_bytes: opts.send_queue_bytes,
        },
    ));
    let writer = Writer::start(
        hub.clone(),
        WriterConfig {
            data_dir: opts.data_dir.clone(),
            fsync: opts.fsync,
            batch_window: settings.batch_window,
            fanout_delay: Duration::from_millis(opts.fault_fanout_delay_ms),
        },
    )?;
    let listener =
        bind(opts.listen).with_context(|| format!("cannot listen on {}", opts.listen))?;
    let addr = listener.local_addr()?;
    {
        // The first stdout line is the bound address, alone (tests and
        // xtask pass --listen 127.0.0.1:0 and read it).
        let mut out = std::io::stdout().lock();
        writeln!(out, "{addr}")?;
        out.flush()?;
    }
    log::info!(
        "listening on {}://{addr} (history {history}, fsync {:?}, heartbeat {:?}, {} worker(s))",
        if tls.is_some() { "https" } else { "http" },
        opts.fsync,
        settings.heartbeat,
        settings.workers
    );
    let state = Arc::new(AppState {
        hub,
        writer,
        heartbeat: settings.heartbeat,
        history: HeaderValue::from_str(&history).expect("hex is a valid header value"),
    });
    let hub = state.hub.clone();
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    tokio::select! {
        _ = accept_loop(listener, state, tls, metrics.clone()) => {}
        _ = tokio::signal::ctrl_c() => log::info!("SIGINT: stopping"),
        _ = term.recv() => log::info!("SIGTERM: stopping"),
    }
    // Stop accepting (the listener is dropped), close every WebSocket with
    // 1001 so clients reconnect and resume, give them a moment to go.
    hub.shut_down();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(2);
    while metrics.connections.get() > 0 && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    Ok(())
}

async fn accept_loop(
    listener: TcpListener,
    state: Arc<AppState>,
    tls: Option<TlsAcceptor>,
    metrics: Arc<Metrics>,
) {
    loop {
        let tcp = match listener.accept().await {
            Ok((tcp, _)) => tcp,
            Err(e) => {
                // EMFILE/ENFILE and friends: keep serving existing clients,
                // retry shortly instead of spinning or exiting.
                log::warn!("accept failed: {e}");
                tokio::time::sleep(Duration::from_millis(20)).await;
                continue;
            }
        };
        let _ = tcp.set_nodelay(true);
        let state = state.clone();
        match &tls {
            None => {
                tokio::spawn(serve_http(tcp, state));
            }
            Some(acceptor) => {
                let acceptor = acceptor.clone();
                let metrics = metrics.clone();
                tokio::spawn(async move {
                    match tokio::time::timeout(Duration::from_secs(10), acceptor.accept(tcp)).await
                    {
                        Ok(Ok(stream)) => serve_http(stream, state).await,
                        Ok(Err(e)) => {
                            metrics.tls_handshake_failures.inc();
                            log::debug!("TLS handshake failed: {e}");
                        }
                        Err(_) => {
                            metrics.tls_handshake_failures.inc();
                            log::debug!("TLS handshake timed out");
                        }
                    }
                });
            }
        }
    }
}

async fn serve_http<I>(io: I, state: Arc<AppState>)
where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let svc = service_fn(move |req| handle::<I>(req, state.clone()));
    let conn = http1::Builder::new()
        .timer(TokioTimer::new())
        .header_read_timeout(Duration::from_secs(30))
        .serve_connection(TokioIo::new(io), svc)
        .with_upgrades();
    if let Err(e) = conn.await {
        log::debug!("HTTP connection ended: {e}");
    }
}
