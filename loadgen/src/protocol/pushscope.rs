//! The reference pusher's protocol v1 (pusher/PROTOCOL.md): subscribe at
//! `GET /ws?channel=C[&last_seq=N[&history=H]]` (H: the `X-Pusher-History`
//! of the last `101`), frames `{"channel","seq","id","data"}`,
//! cumulative `{"ack":N}`, publish with `POST /publish/{channel}` and an
//! `X-Msg-Id` header.

/// `ws://host:port/anything` → `http://host:port/publish/{channel}`.
pub fn default_publish_url(ws_url: &str) -> Option<String> {
    let (scheme, rest) = if let Some(r) = ws_url.strip_prefix("wss://") {
        ("https", r)
    } else {
        ("http", ws_url.strip_prefix("ws://")?)
    };
    let authority = rest.split(['/', '?']).next().filter(|a| !a.is_empty())?;
    Some(format!("{scheme}://{authority}/publish/{{channel}}"))
}

/// Header of the `101` naming the server's history id (16 hex digits).
pub const HISTORY_HEADER: &str = "x-pusher-history";

/// The history id of an `X-Pusher-History` value: 16 hex digits, else none
/// (the resume then carries no history, as with an older pusher).
pub fn parse_history(v: &str) -> Option<u64> {
    (v.len() == 16 && v.bytes().all(|b| b.is_ascii_hexdigit()))
        .then(|| u64::from_str_radix(v, 16).ok())
        .flatten()
}

/// `ws://host:port[/ws]` plus channel and optional resume point (with the
/// history it counts in, when known).
pub fn subscribe_url(
    base: &str,
    channel: &str,
    last_seq: Option<u64>,
    history: Option<u64>,
) -> String {
    let mut url = if base.contains("{channel}") {
        base.replace("{channel}", channel)
    } else {
        let rest = base.split_once("://").map_or(base, |(_, r)| r);
        let mut u = base.trim_end_matches('/').to_string();
        if !rest.trim_end_matches('/').contains('/') {
            u.push_str("/ws");
        }
        let sep = if u.contains('?') { '&' } else { '?' };
        format!("{u}{sep}channel={channel}")
    };
    if let Some(n) = last_seq {
        url.push_str(&format!("&last_seq={n}"));
        if let Some(h) = history {
            url.push_str(&format!("&history={h:016x}"));
        }
    }
    url
}

/// The server seq of a pushed frame (the marker is found by the caller).
/// Protocol v1 frames are flat JSON objects whose string values escape
/// their quotes, so an unescaped `"seq":` can only be the key: scanning for
/// it is exact and much cheaper than parsing the frame.
pub fn server_seq(text: &str) -> Option<u64> {
    let at = crate::marker::find_bytes(text.as_bytes(), b"\"seq\":")? + 6;
    let digits = text[at..].trim_start();
    let end = digits
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(digits.len());
    digits[..end].parse().ok()
}

pub fn ack_frame(seq: u64) -> String {
    format!("{{\"ack\":{seq}}}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_and_frames() {
        assert_eq!(
            default_publish_url("ws://127.0.0.1:80/ws").unwrap(),
            "http://127.0.0.1:80/publish/{channel}"
        );
        assert_eq!(
            default_publish_url("wss://h:1").unwrap(),
            "https://h:1/publish/{channel}"
        );
        assert_eq!(
            subscribe_url("ws://h:1", "ch0", None, Some(1)),
            "ws://h:1/ws?channel=ch0"
        );
        assert_eq!(
            subscribe_url("ws://h:1/ws", "ch0", Some(5), None),
            "ws://h:1/ws?channel=ch0&last_seq=5"
        );
        assert_eq!(
            subscribe_url("ws://h:1/ws", "ch0", Some(5), Some(0x0123_4567_89ab_cdef)),
            "ws://h:1/ws?channel=ch0&last_seq=5&history=0123456789abcdef"
        );
        assert_eq!(
            parse_history("0123456789abcdef"),
            Some(0x0123_4567_89ab_cdef)
        );
        assert_eq!(
            parse_history("0123456789ABCDEF"),
            Some(0x0123_4567_89ab_cdef)
        );
        assert_eq!(parse_history("0123456789abcde"), None);
        assert_eq!(parse_history("+123456789abcdef"), None);
        assert_eq!(parse_history(""), None);
        assert_eq!(
            subscribe_url("ws://h:1/", "c", None, None),
            "ws://h:1/ws?channel=c"
        );
        let f = r#"{"channel":"ch0","seq":17,"id":"9","data":"psm1.0.1.9.0.5.xx"}"#;
        assert_eq!(server_seq(f), Some(17));
        assert_eq!(server_seq(r#"{"data":"a \"seq\":3","seq": 18}"#), Some(18));
        assert_eq!(server_seq(r#"{"channel":"c"}"#), None);
        assert_eq!(ack_frame(3), r#"{"ack":3}"#);
    }
}
