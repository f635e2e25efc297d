//! HTTP/1.1 surface of protocol v1 (hyper): `POST /publish/{channel}`,
//! `GET /ws?channel=…[&last_seq=N[&history=H]]` (upgrade to WebSocket), `GET /healthz`,
//! `GET /metrics`. Bad input gets 400/404/405/413/426 with a JSON body
//! `{"error":"…"}` saying what to do.

use std::{convert::Infallible, sync::Arc, time::Duration};

use bytes::Bytes;
use http_body_util::{BodyExt, Full, LengthLimitError, Limited};
use hyper::{
    body::Incoming,
    header::{self, HeaderValue},
    Method, Request, Response, StatusCode,
};
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio_tungstenite::tungstenite::handshake::derive_accept_key;

use crate::{
    channel::{valid_channel_name, Hub},
    config::{MAX_BODY, MAX_MSG_ID},
    writer::Writer,
    ws,
};

/// What every request handler needs.
pub struct AppState {
    pub hub: Arc<Hub>,
    pub writer: Writer,
    pub heartbeat: Duration,
    /// This process's history id, sent as `X-Pusher-History`.
    pub history: HeaderValue,
}

/// Header carrying the history id in the `101` (and `/healthz`).
pub const HISTORY_HEADER: &str = "x-pusher-history";

type Resp = Response<Full<Bytes>>;

/// Longest wait for a publish body.
const BODY_TIMEOUT: Duration = Duration::from_secs(30);

fn json(status: StatusCode, body: String) -> Resp {
    let mut r = Response::new(Full::new(Bytes::from(body)));
    *r.status_mut() = status;
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    r
}

fn error(status: StatusCode, what: &str) -> Resp {
    json(status, serde_json::json!({ "error": what }).to_string())
}

/// Routes one request. `I` is the connection's IO type, needed to take the
/// socket back from hyper after a WebSocket upgrade.
pub async fn handle<I>(req: Request<Incoming>, st: Arc<AppState>) -> Result<Resp, Infallible>
where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let path = req.uri().path().to_string();
    let resp = match (req.method(), path.as_str()) {
        (&Method::GET, "/healthz") => {
            let mut r = Response::new(Full::new(Bytes::from_static(b"ok\n")));
            r.headers_mut()
                .insert(header::CONTENT_TYPE, HeaderValue::from_static("text/plain"));
            r.headers_mut().insert(HISTORY_HEADER, st.history.clone());
            r
        }
        (&Method::GET, "/metrics") => {
            let mut r = Response::new(Full::new(Bytes::from(st.hub.metrics.render())));
            r.headers_mut().insert(
                header::CONTENT_TYPE,
                HeaderValue::from_static("text/plain; version=0.0.4"),
            );
            r
        }
        (&Method::GET, "/ws") => upgrade::<I>(req, &st),
        (m, p) if p.starts_with("/publish/") => {
            if m == Method::POST {
                publish(req, &st, &p["/publish/".len()..]).await
            } else {
                let mut r = error(
                    StatusCode::METHOD_NOT_ALLOWED,
                    "publish with POST /publish/{channel}",
                );
                r.headers_mut()
                    .insert(header::ALLOW, HeaderValue::from_static("POST"));
                r
            }
        }
        (_, "/healthz" | "/metrics" | "/ws") => {
            let mut r = error(StatusCode::METHOD_NOT_ALLOWED, "use GET");
            r.headers_mut()
                .insert(header::ALLOW, HeaderValue::from_static("GET"));
            r
        }
        _ => error(
            StatusCode::NOT_FOUND,
            "unknown path: use POST /publish/{channel}, GET /ws?channel=…, GET /healthz or GET /metrics",
        ),
    };
    st.hub
        .metrics
        .http_responses
        .with_label_values(&[resp.status().as_str()])
        .inc();
    Ok(resp)
}

fn valid_msg_id(id: &str) -> bool {
    !id.is_empty() && id.len() <= MAX_MSG_ID && id.bytes().all(|b| (0x21..0x7f).contains(&b))
}

async fn publish(req: Request<Incoming>, st: &AppState, channel: &str) -> Resp {
    if !valid_channel_name(channel) {
        return error(
            StatusCode::BAD_REQUEST,
            "bad channel name: use 1-64 characters of A-Z a-z 0-9 _ - . (not starting with .)",
        );
    }
    let declared = req
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok()?.parse::<u64>().ok());
    if declared.is_some_and(|n| n > MAX_BODY as u64) {
        return error(
            StatusCode::PAYLOAD_TOO_LARGE,
            "message body larger than 65536 bytes",
        );
    }
    let id = match req.headers().get("x-msg-id") {
        None => None,
        Some(v) => match v.to_str() {
            Ok(s) if valid_msg_id(s) => Some(s.to_string()),
            _ => {
                return error(
                    StatusCode::BAD_REQUEST,
                    "bad X-Msg-Id: use 1-128 visible ASCII characters",
                )
            }
        },
    };
    // A body trickling in forever would pin the connection: bound its time.
    let collect = Limited::new(req.into_body(), MAX_BODY).collect();
    let Ok(collected) = tokio::time::timeout(BODY_TIMEOUT, collect).await else {
        return error(
            StatusCode::REQUEST_TIMEOUT,
            "the message body did not arrive within 30 s",
        );
    };
    let body = match collected {
        Ok(b) => b.to_bytes(),
        Err(e) if e.downcast_ref::<LengthLimitError>().is_some() => {
            return error(
                StatusCode::PAYLOAD_TOO_LARGE,
                "message body larger than 65536 bytes",
            )
        }
        Err(e) => return error(StatusCode::BAD_REQUEST, &format!("reading the body: {e}")),
    };
    if std::str::from_utf8(&body).is_err() {
        return error(
            StatusCode::BAD_REQUEST,
            "message body is not UTF-8: send text (e.g. JSON or base64)",
        );
    }
    let channel = st.hub.channel(channel);
    match st.writer.publish(channel, id, body).await {
        Ok(msg) => {
            #[derive(serde::Serialize)]
            struct Published<'a> {
                seq: u64,
                id: &'a str,
            }
            let body = serde_json::to_string(&Published {
                seq: msg.seq,
                id: &msg.id,
            })
            .expect("serializable");
            json(StatusCode::OK, body)
        }
        Err(e) => error(StatusCode::SERVICE_UNAVAILABLE, &e),
    }
}

/// A subscribe request's query: `channel`, `last_seq`, `history`.
#[derive(Debug, PartialEq, Eq)]
struct WsQuery {
    channel: String,
    last_seq: Option<u64>,
    history: Option<String>,
}

/// Parses `channel`, `last_seq` and `history` from the query string.
fn ws_query(query: Option<&str>) -> Result<WsQuery, &'static str> {
    let mut channel = None;
    let mut last_seq = None;
    let mut history = None;
    for pair in query.unwrap_or("").split('&').filter(|p| !p.is_empty()) {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        match k {
            "channel" => channel = Some(v.to_string()),
            "last_seq" => {
                last_seq = Some(
                    v.parse::<u64>()
                        .map_err(|_| "bad last_seq: use a non-negative integer")?,
                )
            }
            "history" => {
                if !crate::history::valid(v) {
                    return Err("bad history: use the 16 lowercase hex digits of the X-Pusher-History header of an earlier 101");
                }
                history = Some(v.to_string());
            }
            _ => {}
        }
    }
    let channel =
        channel.ok_or("missing channel: use /ws?channel=NAME[&last_seq=N[&history=H]]")?;
    if !valid_channel_name(&channel) {
        return Err(
            "bad channel name: use 1-64 characters of A-Z a-z 0-9 _ - . (not starting with .)",
        );
    }
    Ok(WsQuery {
        channel,
        last_seq,
        history,
    })
}

fn header_has(req: &Request<Incoming>, name: header::HeaderName, token: &str) -> bool {
    req.headers().get_all(name).iter().any(|v| {
        v.to_str()
            .is_ok_and(|s| s.split(',').any(|t| t.trim().eq_ignore_ascii_case(token)))
    })
}

fn upgrade<I>(mut req: Request<Incoming>, st: &Arc<AppState>) -> Resp
where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let WsQuery {
        channel,
        mut last_seq,
        history,
    } = match ws_query(req.uri().query()) {
        Ok(q) => q,
        Err(e) => return error(StatusCode::BAD_REQUEST, e),
    };
    if !header_has(&req, header::UPGRADE, "websocket")
        || !header_has(&req, header::CONNECTION, "upgrade")
    {
        let mut r = error(
            StatusCode::UPGRADE_REQUIRED,
            "GET /ws needs a WebSocket upgrade (Connection: Upgrade, Upgrade: websocket)",
        );
        r.headers_mut()
            .insert(header::UPGRADE, HeaderValue::from_static("websocket"));
        return r;
    }
    if req
        .headers()
        .get(header::SEC_WEBSOCKET_VERSION)
        .is_none_or(|v| v.as_bytes() != b"13")
    {
        return error(
            StatusCode::BAD_REQUEST,
            "unsupported Sec-WebSocket-Version: use 13",
        );
    }
    let Some(key) = req.headers().get(header::SEC_WEBSOCKET_KEY) else {
        return error(StatusCode::BAD_REQUEST, "missing Sec-WebSocket-Key");
    };
    let accept = derive_accept_key(key.as_bytes());
    // A last_seq of another history (e.g. an in-memory pusher before its
    // restart) numbers other messages: replay everything retained instead.
    if last_seq.is_some() && history.is_some_and(|h| h.as_bytes() != st.history.as_bytes()) {
        last_seq = Some(0);
        st.hub.metrics.history_mismatches.inc();
    }
    let on_upgrade = hyper::upgrade::on(&mut req);
    let channel = st.hub.channel(&channel);
    // Subscribe before the 101 is sent: every message committed after the
    // client sees the 101 is delivered, even without last_seq.
    let subscription = channel.subscribe(st.hub.next_subscriber_id(), last_seq);
    let metrics = st.hub.metrics.clone();
    let hub = st.hub.clone();
    let heartbeat = st.heartbeat;
    tokio::spawn(async move {
        let upgraded = match on_upgrade.await {
            Ok(u) => u,
            Err(e) => {
                log::debug!("upgrade failed: {e}");
                let unsent = subscription.replay.remaining();
                channel.unsubscribe(&subscription.sub, unsent);
                drop(subscription);
                hub.release(channel);
                return;
            }
        };
        // Take the socket back from hyper: no extra boxing per read/write.
        match upgraded.downcast::<TokioIo<I>>() {
            Ok(parts) => {
                ws::serve(
                    parts.io.into_inner(),
                    parts.read_buf.to_vec(),
                    hub,
                    channel,
                    subscription,
                    last_seq,
                    heartbeat,
                    metrics,
                )
                .await
            }
            Err(up) => {
                ws::serve(
                    TokioIo::new(up),
                    Vec::new(),
                    hub,
                    channel,
                    subscription,
                    last_seq,
                    heartbeat,
                    metrics,
                )
                .await
            }
        }
    });
    let mut r = Response::new(Full::new(Bytes::new()));
    *r.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
    let h = r.headers_mut();
    h.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
    h.insert(header::CONNECTION, HeaderValue::from_static("Upgrade"));
    h.insert(
        header::SEC_WEBSOCKET_ACCEPT,
        HeaderValue::from_str(&accept).expect("base64 is a valid header"),
    );
    h.insert(HISTORY_HEADER, st.history.clone());
    r
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn query_parsing() {
        let q = |channel: &str, last_seq, history: Option<&str>| {
            Ok(WsQuery {
                channel: channel.into(),
                last_seq,
                history: history.map(Into::into),
            })
        };
        assert_eq!(ws_query(Some("channel=a")), q("a", None, None));
        assert_eq!(
            ws_query(Some("last_seq=7&channel=b&x=1")),
            q("b", Some(7), None)
        );
        assert_eq!(
            ws_query(Some("channel=b&last_seq=7&history=00112233445566ff")),
            q("b", Some(7), Some("00112233445566ff"))
        );
        assert!(ws_query(Some("channel=a&last_seq=1&history=xyz")).is_err());
        assert!(ws_query(Some("channel=a&last_seq=1&history=")).is_err());
        assert!(ws_query(Some("channel=a&last_seq=-1")).is_err());
        assert!(ws_query(Some("channel=a/b")).is_err());
        assert!(ws_query(None).is_err());
    }

    #[test]
    fn msg_ids() {
        assert!(valid_msg_id("abc-123_X"));
        assert!(!valid_msg_id(""));
        assert!(!valid_msg_id("a b"));
        assert!(!valid_msg_id(&"x".repeat(129)));
    }
}
