//! pushscope's reference push server (`pushscope-pusher`): channels with
//! per-channel seqs, an append-only log per channel, WebSocket fan-out with
//! replay from `last_seq`, cumulative ACKs and heartbeats. Protocol v1 is
//! documented in `pusher/PROTOCOL.md`.

pub mod channel;
pub mod config;
pub mod history;
pub mod http;
pub mod metrics;
pub mod server;
pub mod store;
pub mod tls;
pub mod writer;
pub mod ws;

pub use config::{Opts, Settings};

/// Builds the runtime (`--workers`) and runs the server until a signal.
pub fn run(settings: Settings) -> anyhow::Result<()> {
    let rt = if settings.workers == 1 {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?
    } else {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(settings.workers)
            .enable_all()
            .build()?
    };
    rt.block_on(server::run(settings))
}
