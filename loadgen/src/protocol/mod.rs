//! Protocols spoken with the server under test. Each one says how to
//! subscribe (URL, optional first frame), how to resume, how to read the
//! server seq from a pushed frame, how to ACK and where to publish. The
//! message marker (see `marker`) is found the same way in every protocol.

pub mod generic;
pub mod nchan;
pub mod pushscope;

use crate::scenario::{ProtocolKind, Scenario};

/// The last message a subscriber received, from which an ACK is built.
#[derive(Debug, Clone, Copy)]
pub struct AckPoint {
    pub server_seq: Option<u64>,
    pub pseq: u64,
    pub msg_id: u64,
}

/// Where a reconnect resumes: after a server seq (of the server history
/// the last upgrade named, when it named one), or after a message id.
#[derive(Debug, Clone, Copy)]
pub enum Resume<'a> {
    Seq { seq: u64, history: Option<u64> },
    Id(&'a str),
}

impl Resume<'_> {
    /// One whitespace-free token for the receive log's `R` line: the seq,
    /// or the id as the subscribe URL carries it (percent-encoded).
    pub fn log_token(&self) -> String {
        match self {
            Resume::Seq { seq, .. } => seq.to_string(),
            Resume::Id(id) => nchan::percent_encode(id),
        }
    }
}

#[derive(Debug, Clone)]
pub struct Protocol {
    pub kind: ProtocolKind,
    url: String,
    publish_url: String,
    subscribe_frame: Option<String>,
    ack_frame: Option<String>,
}

impl Protocol {
    pub fn new(sc: &Scenario) -> Self {
        Protocol {
            kind: sc.protocol,
            url: sc.url.clone(),
            publish_url: sc.publish_url.clone(),
            subscribe_frame: sc.subscribe_frame.clone(),
            ack_frame: sc.ack_frame.clone(),
        }
    }

    /// Whether a reconnect can resume where the last one stopped.
    pub fn resumes(&self) -> bool {
        matches!(self.kind, ProtocolKind::Pushscope | ProtocolKind::Nchan)
    }

    /// WebSocket subprotocol to ask for.
    pub fn subprotocol(&self) -> Option<&'static str> {
        (self.kind == ProtocolKind::Nchan).then_some(nchan::SUBPROTOCOL)
    }

    pub fn subscribe_url(&self, channel: &str, resume: Option<Resume<'_>>) -> String {
        match (self.kind, resume) {
            (ProtocolKind::Pushscope, r) => {
                let (seq, history) = match r {
                    Some(Resume::Seq { seq, history }) => (Some(seq), history),
                    _ => (None, None),
                };
                pushscope::subscribe_url(&self.url, channel, seq, history)
            }
            (ProtocolKind::Nchan, Some(Resume::Id(id))) => {
                nchan::subscribe_url(&self.url, channel, Some(id))
            }
            // nchan: `ws://host/sub/{channel}`; generic: any template.
            _ => self.url.replace("{channel}", channel),
        }
    }

    /// Server-side message id of a frame, for protocols that resume by id.
    pub fn message_id<'t>(&self, text: &'t str) -> Option<&'t str> {
        match self.kind {
            ProtocolKind::Nchan => nchan::meta_id(text),
            _ => None,
        }
    }

    /// Frame to send right after the upgrade (generic protocol only).
    pub fn subscribe_frame(&self, channel: &str) -> Option<String> {
        match self.kind {
            ProtocolKind::Generic => self
                .subscribe_frame
                .as_ref()
                .map(|t| generic::fill(t, channel, 0, 0)),
            _ => None,
        }
    }

    /// Server seq carried by a pushed frame, when the protocol has one.
    pub fn server_seq(&self, text: &str) -> Option<u64> {
        match self.kind {
            ProtocolKind::Pushscope => pushscope::server_seq(text),
            _ => None,
        }
    }

    /// Whether this protocol sends cumulative ACKs.
    pub fn acks(&self) -> bool {
        match self.kind {
            ProtocolKind::Pushscope => true,
            ProtocolKind::Nchan => false,
            ProtocolKind::Generic => self.ack_frame.is_some(),
        }
    }

    /// Cumulative ACK frame up to `at`, and the seq it acknowledges.
    pub fn ack_frame(&self, channel: &str, at: AckPoint) -> Option<(String, u64)> {
        let seq = at.server_seq.unwrap_or(at.pseq);
        match self.kind {
            ProtocolKind::Pushscope => at.server_seq.map(|s| (pushscope::ack_frame(s), s)),
            ProtocolKind::Nchan => None,
            ProtocolKind::Generic => self
                .ack_frame
                .as_ref()
                .map(|t| (generic::fill(t, channel, seq, at.msg_id), seq)),
        }
    }

    pub fn publish_url(&self, channel: &str) -> String {
        self.publish_url.replace("{channel}", channel)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::scenario::{Overrides, ScenarioFile};

    fn proto(kind: ProtocolKind, url: &str, publish: Option<&str>, ack: Option<&str>) -> Protocol {
        let o = Overrides {
            url: Some(url.into()),
            protocol: Some(kind),
            publish_url: publish.map(Into::into),
            ack_frame: ack.map(Into::into),
            subscribe_frame: Some(r#"{"subscribe":"{channel}"}"#.into()),
            ..Default::default()
        };
        Protocol::new(&Scenario::build(ScenarioFile::default(), o).unwrap())
    }

    fn seq(seq: u64, history: Option<u64>) -> Resume<'static> {
        Resume::Seq { seq, history }
    }

    #[test]
    fn templates_resume_and_acks_per_protocol() {
        let g = proto(
            ProtocolKind::Generic,
            "ws://h:1/s?c={channel}",
            Some("http://h:1/p/{channel}"),
            Some(r#"{"ack":{seq},"id":{msg_id},"c":"{channel}"}"#),
        );
        assert_eq!(
            g.subscribe_url("ch1", Some(seq(9, None))),
            "ws://h:1/s?c=ch1"
        );
        assert_eq!(g.subscribe_frame("ch1").unwrap(), r#"{"subscribe":"ch1"}"#);
        let at = |server_seq| AckPoint {
            server_seq,
            pseq: 4,
            msg_id: 40,
        };
        assert_eq!(
            g.ack_frame("ch1", at(None)).unwrap().0,
            r#"{"ack":4,"id":40,"c":"ch1"}"#
        );
        assert!(g.acks());
        assert_eq!(g.publish_url("ch1"), "http://h:1/p/ch1");
        assert!(!g.resumes() && g.subprotocol().is_none());

        let p = proto(ProtocolKind::Pushscope, "ws://h:1/ws", None, None);
        assert_eq!(
            p.subscribe_url("c", Some(seq(9, None))),
            "ws://h:1/ws?channel=c&last_seq=9"
        );
        assert_eq!(
            p.subscribe_url("c", Some(seq(9, Some(0xab)))),
            "ws://h:1/ws?channel=c&last_seq=9&history=00000000000000ab"
        );
        // The receive log's `R` token: one field whatever the id holds.
        assert_eq!(seq(9, Some(1)).log_token(), "9");
        assert_eq!(Resume::Id("17:[3] 0").log_token(), "17%3A%5B3%5D%200");
        assert_eq!(
            p.ack_frame("c", at(Some(12))).unwrap(),
            (r#"{"ack":12}"#.to_string(), 12)
        );
        assert!(p.subscribe_frame("c").is_none());

        let n = proto(
            ProtocolKind::Nchan,
            "ws://h:1/sub/{channel}",
            Some("http://h:1/pub/{channel}"),
            None,
        );
        assert_eq!(
            n.subscribe_url("c", Some(Resume::Id("5:0"))),
            "ws://h:1/sub/c?last_event_id=5%3A0"
        );
        assert_eq!(n.subprotocol(), Some("ws+meta.nchan"));
        assert!(n.ack_frame("c", at(None)).is_none() && !n.acks());
    }

    proptest::proptest! {
        #[test]
        fn arbitrary_frames_never_panic_any_protocol(frame in "\\PC{0,80}", bytes in proptest::collection::vec(proptest::num::u8::ANY, 0..80), id in "\\PC{0,20}", seq: u64) {
            let lossy = String::from_utf8_lossy(&bytes).into_owned();
            let protos = [
                proto(ProtocolKind::Pushscope, "ws://h:1/ws", None, None),
                proto(ProtocolKind::Nchan, "ws://h:1/sub/{channel}", Some("http://h:1/pub/{channel}"), None),
                proto(ProtocolKind::Generic, "ws://h:1/s/{channel}", Some("http://h:1/p/{channel}"), Some("{seq}:{msg_id}:{channel}")),
            ];
            for p in &protos {
                for text in [&frame, &lossy, &format!("id: {frame}"), &format!("{{\"seq\":{frame}")] {
                    let server_seq = p.server_seq(text);
                    let _ = p.message_id(text);
                    let _ = p.ack_frame(&frame, AckPoint { server_seq, pseq: seq, msg_id: seq });
                }
                let _ = p.subscribe_url(&frame, Some(Resume::Id(&id)));
                let _ = p.subscribe_url(&frame, Some(Resume::Seq { seq, history: Some(seq) }));
                let _ = p.subscribe_frame(&frame);
            }
            // What nchan is sent back is exactly the id, percent-encoded.
            let url = nchan::subscribe_url("ws://h/sub/{channel}", "c", Some(&id));
            proptest::prop_assert!(url.is_ascii());
        }

        #[test]
        fn pushscope_seq_is_read_back(seq: u64, data in "[a-z0-9 .]{0,30}") {
            let f = format!("{{\"channel\":\"c\",\"seq\":{seq},\"id\":\"1-2\",\"data\":\"{data}\"}}");
            proptest::prop_assert_eq!(pushscope::server_seq(&f), Some(seq));
        }
    }
}
