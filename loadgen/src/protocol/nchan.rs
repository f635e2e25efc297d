//! NGINX nchan: WebSocket subscriber at a `nchan_subscriber` location, HTTP
//! POST publisher at a `nchan_publisher` location. The client asks for the
//! `ws+meta.nchan` subprotocol, so every frame starts with
//! `id: <message id>\n…\n\n<body>`; a reconnect passes the last id as
//! `last_event_id` (nchan's default `nchan_subscriber_last_message_id`) and
//! nchan replays what followed it while its message buffer still holds it.

pub const SUBPROTOCOL: &str = "ws+meta.nchan";

/// The message id of a `ws+meta.nchan` frame.
pub fn meta_id(text: &str) -> Option<&str> {
    let rest = text.strip_prefix("id: ")?;
    Some(&rest[..rest.find('\n')?])
}

/// `ws://host/sub/{channel}` with the resume point, if any.
pub fn subscribe_url(template: &str, channel: &str, last_id: Option<&str>) -> String {
    let mut url = template.replace("{channel}", channel);
    if let Some(id) = last_id {
        url.push(if url.contains('?') { '&' } else { '?' });
        url.push_str("last_event_id=");
        url.push_str(&percent_encode(id));
    }
    url
}

/// `id` with every byte but unreserved URL characters as `%XX`.
pub fn percent_encode(id: &str) -> String {
    let mut out = String::with_capacity(id.len());
    for b in id.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn meta_frames_and_resume_urls() {
        let f = "id: 1700000000:3\ncontent-type: text/plain\n\npsm1.0.1.1.0.5.0.xx";
        assert_eq!(meta_id(f), Some("1700000000:3"));
        assert_eq!(meta_id("psm1.0.1.1.0.5.0."), None);
        assert_eq!(
            subscribe_url("ws://h:1/sub/{channel}", "ch2", Some("17:[3],0")),
            "ws://h:1/sub/ch2?last_event_id=17%3A%5B3%5D%2C0"
        );
        assert_eq!(
            subscribe_url("ws://h:1/sub/{channel}", "c", None),
            "ws://h:1/sub/c"
        );
    }
}
