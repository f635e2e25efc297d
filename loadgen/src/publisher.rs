//! Open-model publisher: message `i` is due at `t0 + i/rate` whatever the
//! server does (no coordinated omission). The scheduler stamps each message
//! with the run id, its stage and scheduled time (CLOCK_MONOTONIC) and hands
//! it to the HTTP connection its channel is pinned to, so per-channel order
//! is the schedule's order; it is posted with `X-Msg-Id: <run>-<msg_id>`.
//! Failed publishes are retried (same body, same scheduled time) until a
//! deadline; what still failed is reported so it is not counted as lost.

use crate::{
    clock::mono_ns,
    marker::{Marker, Schedule},
    net::{self, Endpoint, Phases},
    oplog::LogWriter,
    protocol::Protocol,
    scenario::Scenario,
};
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use std::{
    collections::BTreeMap,
    sync::{Arc, Mutex},
    time::Duration,
};
use tokio::sync::mpsc;

/// Give up re-publishing a message this long after it was due.
const RETRY_WINDOW: Duration = Duration::from_secs(30);
/// A publish with no answer after this long is retried on a new connection.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);

#[derive(Default)]
struct State {
    stage: u32,
    /// Last pseq stamped per channel.
    last: Vec<u64>,
    /// Last pseq per channel whose publish finished (either way); a
    /// channel's publishes finish in pseq order (one connection, in turn).
    done: Vec<u64>,
    published: Vec<u64>,
    failed: Vec<Vec<(u32, u64)>>,
    errors: BTreeMap<String, u64>,
    in_flight: u64,
    stopped: bool,
}

impl State {
    fn at(v: &mut Vec<u64>, k: u32) -> &mut u64 {
        if v.len() <= k as usize {
            v.resize(k as usize + 1, 0);
        }
        &mut v[k as usize]
    }
}

struct Job {
    marker: Marker,
    body: Bytes,
}

pub struct Publisher {
    state: Arc<Mutex<State>>,
    scheduler: tokio::task::JoinHandle<()>,
    workers: Vec<tokio::task::JoinHandle<()>>,
    log: Option<Arc<Mutex<LogWriter>>>,
}

/// What the publisher did for one stage.
#[derive(Debug, Default, Clone)]
pub struct StagePublish {
    pub published: u64,
    /// Messages of the stage still queued or in flight at its close.
    pub backlog: u64,
    pub failed: Vec<(u32, u64)>,
    pub errors: BTreeMap<String, u64>,
}

impl Publisher {
    pub fn start(
        sc: &Scenario,
        schedule: Schedule,
        log: Option<LogWriter>,
        tracer: Option<Arc<crate::msgpath::Tracer>>,
    ) -> anyhow::Result<Publisher> {
        let ep = net::scenario_endpoint(&sc.publish_url, sc)?;
        let state = Arc::new(Mutex::new(State {
            last: vec![0; sc.channels as usize],
            done: vec![0; sc.channels as usize],
            ..Default::default()
        }));
        let log = log.map(|l| Arc::new(Mutex::new(l)));
        let proto = Arc::new(Protocol::new(sc));
        let mut senders = Vec::new();
        let mut workers = Vec::new();
        for _ in 0..sc.publishers {
            let (tx, rx) = mpsc::unbounded_channel();
            senders.push(tx);
            workers.push(tokio::spawn(worker(
                sc.payload_bytes,
                rx,
                ep.clone(),
                tracer.clone(),
                proto.clone(),
                state.clone(),
                log.clone(),
            )));
        }
        let payload = sc.payload_bytes;
        let st = state.clone();
        let scheduler = tokio::spawn(async move {
            if schedule.rate <= 0.0 {
                return;
            }
            let base_instant = tokio::time::Instant::now();
            let base_ns = mono_ns();
            let mut i: u64 = 0;
            loop {
                let due = schedule.sched_ns(i);
                if due > base_ns {
                    tokio::time::sleep_until(base_instant + Duration::from_nanos(due - base_ns))
                        .await;
                }
                // Everything due by now goes out in one batch.
                let now = mono_ns();
                let mut s = st.lock().unwrap_or_else(|p| p.into_inner());
                if s.stopped {
                    return;
                }
                while schedule.sched_ns(i) <= now.max(due) {
                    let channel = schedule.channel(i);
                    let pseq = schedule.pseq(i);
                    s.last[channel as usize] = pseq;
                    s.in_flight += 1;
                    let marker = Marker {
                        run: schedule.run,
                        channel,
                        pseq,
                        msg_id: i + 1,
                        stage: s.stage,
                        sched_ns: schedule.sched_ns(i),
                        attempt: 0,
                    };
                    let body = Bytes::from(marker.body(payload));
                    let _ = senders[channel as usize % senders.len()].send(Job { marker, body });
                    i += 1;
                }
            }
        });
        Ok(Publisher {
            state,
            scheduler,
            workers,
            log,
        })
    }

    /// Starts stamping messages with `next` and returns, per channel, the
    /// last pseq stamped with an earlier stage.
    pub fn switch_stage(&self, next: u32) -> Vec<u64> {
        let mut s = self.state.lock().unwrap_or_else(|p| p.into_inner());
        s.stage = next;
        s.last.clone()
    }

    /// Stops scheduling (in-flight publishes continue).
    pub fn stop_scheduling(&self) -> Vec<u64> {
        let mut s = self.state.lock().unwrap_or_else(|p| p.into_inner());
        s.stopped = true;
        s.last.clone()
    }

    /// Caps a stage's stamped per-channel seqs at what has been published
    /// so far: messages still queued at close are judged with the next
    /// stage. Returns the capped seqs and how many were still queued.
    pub fn judged_his(&self, stamped: &[u64]) -> (Vec<u64>, u64) {
        let s = self.state.lock().unwrap_or_else(|p| p.into_inner());
        let his: Vec<u64> = stamped
            .iter()
            .zip(&s.done)
            .map(|(a, d)| (*a).min(*d))
            .collect();
        let backlog = stamped.iter().zip(&his).map(|(a, h)| a - h).sum();
        (his, backlog)
    }

    pub fn in_flight(&self) -> u64 {
        self.state
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .in_flight
    }

    pub fn stage_result(&self, k: u32) -> StagePublish {
        let mut s = self.state.lock().unwrap_or_else(|p| p.into_inner());
        let published = *State::at(&mut s.published, k);
        let failed = s.failed.get(k as usize).cloned().unwrap_or_default();
        let errors = std::mem::take(&mut s.errors);
        StagePublish {
            published,
            backlog: 0,
            failed,
            errors,
        }
    }

    pub async fn shutdown(self, wait: Duration) {
        self.stop_scheduling();
        let deadline = tokio::time::Instant::now() + wait;
        while self.in_flight() > 0 && tokio::time::Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        self.scheduler.abort();
        for w in self.workers {
            w.abort();
        }
        if let Some(l) = &self.log {
            l.lock().unwrap_or_else(|p| p.into_inner()).flush();
        }
    }
}

type Sender = hyper::client::conn::http1::SendRequest<Full<Bytes>>;

/// A sampled publisher connection: its local port and its write counter.
type Sampled = Option<(u16, Arc<crate::msgpath::WriteCount>)>;

async fn connect(
    ep: &Endpoint,
    tracer: Option<&crate::msgpath::Tracer>,
) -> Result<(Sender, Sampled), String> {
    let mut ph = Phases::default();
    let sampling = tracer.map(|tracer| net::Sampling {
        tracer,
        frames: false,
    });
    let mut stream = net::open_stream(ep, None, &mut ph, sampling)
        .await
        .map_err(|e| e.reason())?;
    let sampled = stream.counted().map(|c| (c.port, c.writes.clone()));
    let io = hyper_util::rt::TokioIo::new(stream);
    let (sender, conn) = hyper::client::conn::http1::handshake(io)
        .await
        .map_err(|e| format!("http: {e}"))?;
    tokio::spawn(async move {
        let _ = conn.await;
    });
    Ok((sender, sampled))
}

/// Posts one message; Ok(server seq if the reply has one), Err((retryable, reason)).
async fn post(
    sender: &mut Sender,
    ep: &Endpoint,
    path: &str,
    job: &Job,
) -> Result<Option<u64>, (bool, String)> {
    let req = hyper::Request::post(path)
        .header("host", ep.host.as_str())
        .header("content-type", "text/plain")
        .header("x-msg-id", job.marker.wire_id())
        .body(Full::new(job.body.clone()))
        .map_err(|e| (false, format!("request: {e}")))?;
    let exchange = async {
        sender
            .ready()
            .await
            .map_err(|e| (true, format!("http: {e}")))?;
        let resp = sender
            .send_request(req)
            .await
            .map_err(|e| (true, format!("http: {e}")))?;
        let status = resp.status();
        let body = resp
            .into_body()
            .collect()
            .await
            .map_err(|e| (true, format!("http body: {e}")))?;
        Ok((status, body.to_bytes()))
    };
    let (status, body) = tokio::time::timeout(REQUEST_TIMEOUT, exchange)
        .await
        .unwrap_or(Err((true, "http: timeout".to_string())))?;
    if status.is_success() {
        #[derive(serde::Deserialize)]
        struct Reply {
            seq: u64,
        }
        return Ok(serde_json::from_slice::<Reply>(&body).ok().map(|r| r.seq));
    }
    // 5xx and 429 may pass on retry; other 4xx will not.
    let retry = status.is_server_error() || status.as_u16() == 429;
    Err((retry, format!("http {}", status.as_u16())))
}

async fn worker(
    payload: usize,
    mut rx: mpsc::UnboundedReceiver<Job>,
    ep: Endpoint,
    tracer: Option<Arc<crate::msgpath::Tracer>>,
    proto: Arc<Protocol>,
    state: Arc<Mutex<State>>,
    log: Option<Arc<Mutex<LogWriter>>>,
) {
    let mut sender: Option<(Sender, Sampled)> = None;
    while let Some(job) = rx.recv().await {
        let url = proto.publish_url(&format!("ch{}", job.marker.channel));
        let path = url
            .split_once("://")
            .and_then(|(_, r)| r.find('/').map(|i| r[i..].to_string()))
            .unwrap_or("/".into());
        let give_up = job.marker.sched_ns + RETRY_WINDOW.as_nanos() as u64;
        let mut attempt = 0u32;
        let mut job = job;
        let mut began = 0;
        let outcome = loop {
            let res = match sender.as_mut() {
                Some((s, _)) => {
                    began = mono_ns();
                    post(s, &ep, &path, &job).await
                }
                None => match connect(&ep, tracer.as_deref()).await {
                    Ok(s) => {
                        sender = Some(s);
                        continue;
                    }
                    Err(reason) => Err((true, reason)),
                },
            };
            match res {
                Ok(seq) => {
                    // The whole request was written before its answer came:
                    // the counter now ends at its last byte.
                    if let (Some(t), Some((_, Some((port, wc))))) = (&tracer, &sender) {
                        use std::sync::atomic::Ordering::Acquire;
                        t.published(crate::msgpath::PublishMark {
                            msg_id: job.marker.msg_id,
                            attempt: job.marker.attempt,
                            port: *port,
                            began_ns: began,
                            end_offset: wc.bytes.load(Acquire),
                            written_ns: wc.last_ns.load(Acquire),
                        });
                    }
                    break Ok(seq);
                }
                Err((retry, reason)) => {
                    sender = None;
                    let mut s = state.lock().unwrap_or_else(|p| p.into_inner());
                    *s.errors.entry(reason).or_default() += 1;
                    if !retry || mono_ns() > give_up || s.stopped && attempt > 20 {
                        break Err(());
                    }
                }
            }
            tokio::time::sleep(crate::client::backoff(attempt.min(4))).await;
            attempt += 1;
            job.marker.attempt = attempt;
            job.body = Bytes::from(job.marker.body(payload));
        };
        let mut s = state.lock().unwrap_or_else(|p| p.into_inner());
        s.in_flight -= 1;
        s.done[job.marker.channel as usize] = job.marker.pseq;
        let k = job.marker.stage;
        match outcome {
            Ok(server_seq) => {
                *State::at(&mut s.published, k) += 1;
                drop(s);
                if let Some(l) = &log {
                    let m = job.marker;
                    l.lock()
                        .unwrap_or_else(|p| p.into_inner())
                        .published(m.msg_id, m.channel, m.pseq, m.sched_ns, server_seq);
                }
            }
            Err(()) => {
                if s.failed.len() <= k as usize {
                    s.failed.resize(k as usize + 1, Vec::new());
                }
                s.failed[k as usize].push((job.marker.channel, job.marker.pseq));
            }
        }
    }
}
