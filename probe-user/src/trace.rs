//! trace.json: Chrome/Perfetto trace events of a sample of connections (the
//! first ones observed) plus the slowest by setup time. One track per
//! connection; each phase is a complete ("X") event.

use crate::lifecycle::ConnRecord;
use serde_json::{json, Value};

fn x(name: &str, start: u64, end: u64, pid: u32, tid: usize, base: u64, args: Value) -> Value {
    json!({
        "name": name, "ph": "X", "pid": pid, "tid": tid,
        "ts": start.saturating_sub(base) as f64 / 1000.0,
        "dur": end.saturating_sub(start) as f64 / 1000.0,
        "args": args,
    })
}

/// Builds the trace document; `end_ns` closes spans of open connections.
pub fn document(first: &[ConnRecord], slowest: &[ConnRecord], end_ns: u64) -> Value {
    let mut seen = std::collections::HashSet::new();
    let all: Vec<(&ConnRecord, &str)> = first
        .iter()
        .map(|c| (c, "sample"))
        .chain(slowest.iter().map(|c| (c, "slowest")))
        .filter(|(c, _)| seen.insert((c.sk, c.accepted)))
        .collect();
    let base = all
        .iter()
        .filter_map(|(c, _)| c.established.or(c.accepted))
        .min()
        .unwrap_or(0);
    let mut ev = Vec::new();
    for (tid, (c, why)) in all.iter().enumerate() {
        let pid = c.tgid;
        ev.push(
            json!({"name": "thread_name", "ph": "M", "pid": pid, "tid": tid,
            "args": {"name": format!("{why} conn fd {} sk {:#x}", c.fd, c.sk)}}),
        );
        let start = c.established.or(c.accepted).unwrap_or(base);
        let end = c.closed.unwrap_or(end_ns);
        ev.push(x(
            "connection",
            start,
            end,
            pid,
            tid,
            base,
            json!({
                "closer": c.closer, "bytes_in": c.bytes_in, "bytes_out": c.bytes_out,
                "max_send_queue": c.max_send_queue, "srtt_us": c.srtt_us,
                "retransmits": c.retransmits, "tls": c.tls, "still_open": c.closed.is_none(),
            }),
        ));
        if let (Some(e), Some(a)) = (c.established, c.accepted) {
            ev.push(x("accept_wait", e, a.max(e), pid, tid, base, json!({})));
        }
        for (name, span) in [
            ("tls_handshake", c.tls_handshake),
            ("tls_handshake_exact", c.tls_exact),
            ("ws_upgrade", c.ws_upgrade),
            ("first_push", c.first_push),
        ] {
            if let Some(s) = span {
                ev.push(x(name, s.start, s.end, pid, tid, base, json!({})));
            }
        }
    }
    json!({ "traceEvents": ev, "displayTimeUnit": "ms" })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::phases::Span;

    #[test]
    fn one_track_per_connection_with_phases() {
        let c = ConnRecord {
            sk: 1,
            tgid: 10,
            fd: 4,
            established: Some(1_000),
            accepted: Some(3_000),
            closed: Some(50_000),
            tls: None,
            tls_handshake: None,
            tls_exact: None,
            ws_upgrade: Some(Span {
                start: 4_000,
                end: 6_000,
            }),
            first_push: None,
            closer: None,
            bytes_in: 0,
            bytes_out: 0,
            max_send_queue: 0,
            srtt_us: 0,
            retransmits: 0,
        };
        let two = [c.clone(), c];
        let d = document(&two[..1], &two[1..], 60_000);
        let ev = d["traceEvents"].as_array().unwrap();
        // metadata + connection + accept_wait + ws_upgrade, deduplicated.
        assert_eq!(ev.len(), 4);
        assert_eq!(ev[2]["name"], "accept_wait");
        assert_eq!(ev[2]["ts"], 0.0);
        assert_eq!(ev[2]["dur"], 2.0);
        assert_eq!(ev[3]["dur"], 2.0);
    }
}
