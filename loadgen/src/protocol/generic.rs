//! The templated `generic` protocol for servers pushscope does not know:
//! `--url` and `--publish-url` are templates with `{channel}`; an optional
//! `--subscribe-frame` is sent right after the upgrade; an optional
//! `--ack-frame` is sent as the cumulative ACK with `{seq}` (the server seq
//! when the frame carries one, else the publisher's per-channel seq),
//! `{msg_id}` and `{channel}` filled in. The message marker is found
//! anywhere in the pushed frame, whatever envelope the server adds.

/// Fills a template's placeholders.
pub fn fill(template: &str, channel: &str, seq: u64, msg_id: u64) -> String {
    let mut out = template.replace("{channel}", channel);
    if out.contains("{seq}") {
        out = out.replace("{seq}", &seq.to_string());
    }
    if out.contains("{msg_id}") {
        out = out.replace("{msg_id}", &msg_id.to_string());
    }
    out
}
