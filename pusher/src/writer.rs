//! The writer: one OS thread that assigns seqs, appends records to the
//! channel logs, syncs them per the fsync policy (group commit), and only
//! then commits the messages to the channels (fan-out) and answers the
//! publishers. Keeping seq assignment, disk order and fan-out order in one
//! thread makes "durable before visible" and "seqs never repeat" simple.
//!
//! At start it opens every channel log of the data dir, reports repaired
//! tails on stderr, and loads the retained window into the hub.

use std::{
    collections::HashMap,
    fs,
    path::{Path, PathBuf},
    sync::Arc,
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use bytes::Bytes;
use tokio::sync::{mpsc, oneshot};

use crate::{
    channel::{valid_channel_name, Channel, Hub, Msg},
    config::FsyncPolicy,
    store::{encode_record, ChannelLog},
};

/// Why a publish was not accepted (answered 503).
pub type PublishError = String;

struct PublishReq {
    channel: Arc<Channel>,
    id: Option<String>,
    /// Valid UTF-8 (checked by the HTTP layer).
    data: Bytes,
    reply: oneshot::Sender<Result<Arc<Msg>, PublishError>>,
}

/// Handle to the writer thread.
#[derive(Clone)]
pub struct Writer {
    tx: mpsc::Sender<PublishReq>,
}

/// How the writer persists.
#[derive(Debug, Clone)]
pub struct WriterConfig {
    pub data_dir: Option<PathBuf>,
    pub fsync: FsyncPolicy,
    pub batch_window: Duration,
    /// Fault injection: hold each batch this long before fan-out.
    pub fanout_delay: Duration,
}

struct ChanWriter {
    channel: Arc<Channel>,
    log: Option<ChannelLog>,
    next_seq: u64,
    /// Set after a failed fsync: the file's state is unknown, refuse more.
    broken: Option<String>,
    buf: Vec<u8>,
    batch_first: u64,
    batch: Vec<Arc<Msg>>,
    /// Msg ids of `batch`, for retries that arrive in the same batch.
    batch_ids: HashMap<Arc<str>, Arc<Msg>>,
}

struct State {
    cfg: WriterConfig,
    hub: Arc<Hub>,
    chans: HashMap<Box<str>, ChanWriter>,
    segment_bytes: u64,
    id_prefix: String,
    id_counter: u64,
}

const MAX_BATCH: usize = 8192;

fn channels_dir(data_dir: &Path) -> PathBuf {
    data_dir.join("channels")
}

impl Writer {
    /// Opens the data dir, loads every channel's retained window into `hub`
    /// and starts the writer thread.
    pub fn start(hub: Arc<Hub>, cfg: WriterConfig) -> anyhow::Result<Writer> {
        let segment_bytes = (hub.limits.retain_bytes as u64 / 4).clamp(64 << 10, 64 << 20);
        let nonce = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos() as u64)
            ^ (u64::from(std::process::id()) << 40);
        let mut st = State {
            cfg,
            hub,
            chans: HashMap::new(),
            segment_bytes,
            id_prefix: format!("{nonce:016x}-"),
            id_counter: 0,
        };
        st.load()?;
        let (tx, rx) = mpsc::channel(65_536);
        std::thread::Builder::new()
            .name("pusher-writer".into())
            .spawn(move || st.run(rx))?;
        Ok(Writer { tx })
    }

    /// Publishes one message; resolves once it is durable and fanned out.
    pub async fn publish(
        &self,
        channel: Arc<Channel>,
        id: Option<String>,
        data: Bytes,
    ) -> Result<Arc<Msg>, PublishError> {
        let (reply, rx) = oneshot::channel();
        self.tx
            .send(PublishReq {
                channel,
                id,
                data,
                reply,
            })
            .await
            .map_err(|_| "the writer has stopped".to_string())?;
        rx.await.map_err(|_| "the writer has stopped".to_string())?
    }
}

impl State {
    fn load(&mut self) -> anyhow::Result<()> {
        let Some(data_dir) = self.cfg.data_dir.clone() else {
            return Ok(());
        };
        let dir = channels_dir(&data_dir);
        if !dir.exists() {
            fs::create_dir_all(&dir)
                .map_err(|e| anyhow::anyhow!("cannot create {}: {e}", dir.display()))?;
            // Make the new directory entry itself durable.
            fs::File::open(&data_dir)
                .and_then(|d| d.sync_all())
                .map_err(|e| anyhow::anyhow!("cannot sync {}: {e}", data_dir.display()))?;
        }
        let mut names: Vec<String> = fs::read_dir(&dir)
            .map_err(|e| anyhow::anyhow!("cannot list {}: {e}", dir.display()))?
            .filter_map(|e| e.ok()?.file_name().into_string().ok())
            .filter(|n| valid_channel_name(n))
            .collect();
        names.sort();
        for name in names {
            let (log, report) = ChannelLog::open(&dir.join(&name), self.segment_bytes)?;
            for r in &report.repairs {
                eprintln!("pushscope-pusher: channel `{name}`: {r}");
                self.hub.metrics.log_repairs.inc();
            }
            let channel = self.hub.channel(&name);
            let limits = self.hub.limits;
            // Keep only what retention allows, oldest first out.
            let mut window = std::collections::VecDeque::new();
            let mut bytes = 0usize;
            for r in report.records {
                let data = String::from_utf8_lossy(&r.data);
                let msg = Arc::new(Msg::new(&name, r.seq, &r.id, &data));
                bytes += msg.size;
                window.push_back(msg);
                while window.len() > limits.retain_messages
                    || (bytes > limits.retain_bytes && window.len() > 1)
                {
                    bytes -= window.pop_front().expect("non-empty").size;
                }
            }
            let window: Vec<_> = window.into();
            channel.commit(&window);
            log::info!(
                "channel `{name}`: {} retained messages loaded, next seq {}",
                window.len(),
                log.next_seq
            );
            self.chans.insert(
                name.into(),
                ChanWriter {
                    channel,
                    next_seq: log.next_seq,
                    log: Some(log),
                    broken: None,
                    buf: Vec::new(),
                    batch_first: 0,
                    batch: Vec::new(),
                    batch_ids: HashMap::new(),
                },
            );
        }
        Ok(())
    }

    fn chan_writer(&mut self, channel: &Arc<Channel>) -> &mut ChanWriter {
        let name = &channel.name;
        if !self.chans.contains_key(name) {
            let (log, broken) = match &self.cfg.data_dir {
                Some(d) => {
                    match ChannelLog::open(&channels_dir(d).join(&**name), self.segment_bytes) {
                        Ok((log, _)) => (Some(log), None),
                        Err(e) => (None, Some(format!("cannot open the channel log: {e}"))),
                    }
                }
                None => (None, None),
            };
            let next_seq = log
                .as_ref()
                .map_or(channel.last_seq() + 1, |l: &ChannelLog| l.next_seq);
            self.chans.insert(
                name.clone(),
                ChanWriter {
                    channel: channel.clone(),
                    log,
                    next_seq,
                    broken,
                    buf: Vec::new(),
                    batch_first: 0,
                    batch: Vec::new(),
                    batch_ids: HashMap::new(),
                },
            );
        }
        self.chans.get_mut(name).expect("inserted")
    }

    fn run(mut self, mut rx: mpsc::Receiver<PublishReq>) {
        let mut batch: Vec<PublishReq> = Vec::new();
        let mut outcome: Vec<(PublishReq, Option<Arc<Msg>>, bool)> = Vec::new();
        let mut dirty: Vec<Box<str>> = Vec::new();
        while let Some(first) = rx.blocking_recv() {
            if self.cfg.fsync == FsyncPolicy::Batch && !self.cfg.batch_window.is_zero() {
                std::thread::sleep(self.cfg.batch_window);
            }
            batch.push(first);
            while batch.len() < MAX_BATCH {
                match rx.try_recv() {
                    Ok(r) => batch.push(r),
                    Err(_) => break,
                }
            }
            if !self.cfg.fanout_delay.is_zero() {
                std::thread::sleep(self.cfg.fanout_delay);
            }
            self.process(&mut batch, &mut outcome, &mut dirty);
        }
    }

    /// Assigns seqs, writes, syncs, commits and answers one batch.
    fn process(
        &mut self,
        batch: &mut Vec<PublishReq>,
        outcome: &mut Vec<(PublishReq, Option<Arc<Msg>>, bool)>,
        dirty: &mut Vec<Box<str>>,
    ) {
        let fsync = self.cfg.fsync;
        for req in batch.drain(..) {
            let id = match &req.id {
                Some(id) => id.clone(),
                None => {
                    self.id_counter += 1;
                    format!("{}{}", self.id_prefix, self.id_counter)
                }
            };
            let cw = self.chan_writer(&req.channel);
            if cw.broken.is_some() {
                outcome.push((req, None, false));
                continue;
            }
            if req.id.is_some() {
                // Idempotent retry: same msg id as a retained message (or
                // one earlier in this batch) → the original, nothing new.
                let dup = match cw.batch_ids.get(id.as_str()) {
                    Some(m) => Some(m.clone()),
                    None => cw.channel.find_id(&id),
                };
                if let Some(m) = dup {
                    self.hub.metrics.duplicate_publishes.inc();
                    outcome.push((req, Some(m), false));
                    continue;
                }
            }
            let seq = cw.next_seq;
            cw.next_seq += 1;
            if cw.batch.is_empty() {
                cw.batch_first = seq;
                dirty.push(cw.channel.name.clone());
            }
            let data = std::str::from_utf8(&req.data).expect("checked UTF-8");
            if cw.log.is_some() {
                encode_record(&mut cw.buf, seq, &id, req.data.as_ref());
            }
            let msg = Arc::new(Msg::new(&cw.channel.name, seq, &id, data));
            if req.id.is_some() {
                cw.batch_ids.insert(msg.id.clone(), msg.clone());
            }
            cw.batch.push(msg.clone());
            outcome.push((req, Some(msg), true));
        }
        let mut failed: HashMap<Box<str>, String> = HashMap::new();
        for name in dirty.iter() {
            let cw = self.chans.get_mut(name).expect("dirty channel");
            cw.batch_ids.clear();
            let last = cw.batch.last().map_or(0, |m| m.seq);
            if let Some(log) = cw.log.as_mut() {
                let res = log.append(&cw.buf, cw.batch_first, last).and_then(|()| {
                    if fsync == FsyncPolicy::Never {
                        Ok(())
                    } else {
                        self.hub.metrics.fsyncs.inc();
                        log.sync().inspect_err(|_| {
                            // The page cache state after a failed fsync is
                            // unknown: stop using this log (fsyncgate).
                            cw.broken = Some("a previous fsync failed".into());
                        })
                    }
                });
                cw.buf.clear();
                if let Err(e) = res {
                    if cw.broken.is_none() {
                        // Nothing of the batch is in the file: its seqs were
                        // never visible, so they may be assigned again.
                        cw.next_seq = cw.batch_first;
                    }
                    eprintln!("pushscope-pusher: channel `{name}`: {e}");
                    failed.insert(name.clone(), e.to_string());
                    cw.batch.clear();
                    continue;
                }
            }
            cw.channel.commit(&cw.batch);
            cw.batch.clear();
            let first_kept = cw.channel.first_retained_seq();
            if let Some(log) = cw.log.as_mut() {
                log.retain_from(first_kept);
            }
        }
        dirty.clear();
        for (req, msg, new) in outcome.drain(..) {
            let res = match msg {
                Some(m) if !failed.contains_key(&req.channel.name) => {
                    if new {
                        self.hub.metrics.publishes.inc();
                    }
                    Ok(m)
                }
                _ => Err(match failed.get(&req.channel.name) {
                    Some(e) => format!("the channel log could not be written: {e}"),
                    None => format!(
                        "the channel log is unusable ({}): restart the pusher",
                        self.chans[&req.channel.name]
                            .broken
                            .as_deref()
                            .unwrap_or("unknown")
                    ),
                }),
            };
            let _ = req.reply.send(res);
        }
    }
}
