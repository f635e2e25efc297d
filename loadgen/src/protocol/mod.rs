//! Protocols spoken with the server under test. Each one says how to
//! subscribe (URL, optional first frame), how to resume, how to read the
//! server seq from a pushed frame, how to ACK and where to publish. The
//! message marker (see `marker`) is found the same way in every protocol.

pub mod pushscope;

use crate::scenario::{ProtocolKind, Scenario};

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
        self.kind == ProtocolKind::Pushscope
    }

    pub fn subscribe_url(&self, channel: &str, resume_from: Option<u64>) -> String {
        match self.kind {
            ProtocolKind::Pushscope => pushscope::subscribe_url(&self.url, channel, resume_from),
            // nchan: `ws://host/sub/{channel}`; generic: any template.
            ProtocolKind::Nchan | ProtocolKind::Generic => self.url.replace("{channel}", channel),
        }
    }

    /// Frame to send right after the upgrade (generic protocol only).
    pub fn subscribe_frame(&self, channel: &str) -> Option<String> {
        match self.kind {
            ProtocolKind::Generic => self
                .subscribe_frame
                .as_ref()
                .map(|t| t.replace("{channel}", channel)),
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

    /// Cumulative ACK frame, when the protocol has one.
    pub fn ack_frame(
        &self,
        channel: &str,
        server_seq: Option<u64>,
        pseq: u64,
        msg_id: u64,
    ) -> Option<String> {
        match self.kind {
            ProtocolKind::Pushscope => server_seq.map(pushscope::ack_frame),
            ProtocolKind::Nchan => None,
            ProtocolKind::Generic => self.ack_frame.as_ref().map(|t| {
                t.replace("{channel}", channel)
                    .replace("{seq}", &server_seq.unwrap_or(pseq).to_string())
                    .replace("{msg_id}", &msg_id.to_string())
            }),
        }
    }

    pub fn publish_url(&self, channel: &str) -> String {
        self.publish_url.replace("{channel}", channel)
    }
}
