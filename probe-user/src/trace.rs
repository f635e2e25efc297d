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
    // The base lets other tracks (sampled messages) join this timeline.
    json!({ "traceEvents": ev, "displayTimeUnit": "ms", "otherData": {"base_mono_ns": base} })
}

/// Adds sampled messages to a trace document as Perfetto flows: one track
/// per subscriber connection, a slice per leg (publish, server, delivery,
/// client), and a flow arrow from the target's read of the publish to its
/// write of the frame to the client's read, on the connections' timeline.
pub fn add_messages(doc: &mut Value, legs: &[crate::msgpath::Legs]) {
    let base = doc
        .pointer("/otherData/base_mono_ns")
        .and_then(Value::as_u64)
        .filter(|b| *b > 0)
        .or_else(|| legs.iter().map(|l| l.sched_ns).min())
        .unwrap_or(0);
    let Some(ev) = doc.get_mut("traceEvents").and_then(Value::as_array_mut) else {
        return;
    };
    const PID: u32 = 0x6d73; // "ms": a process of its own for message tracks
    ev.push(json!({"name": "process_name", "ph": "M", "pid": PID, "args": {"name": "sampled messages"}}));
    let mut named = std::collections::HashSet::new();
    let us = |t: u64| t.saturating_sub(base) as f64 / 1000.0;
    for l in legs {
        let tid = l.sub_port as usize;
        if named.insert(tid) {
            ev.push(
                json!({"name": "thread_name", "ph": "M", "pid": PID, "tid": tid,
                "args": {"name": format!("subscriber port {}", l.sub_port)}}),
            );
        }
        let [sched, _began, written, read, sent, got, acc] = l.stamps();
        for (name, a, b) in [
            ("publish", sched, read),
            ("server", read, sent),
            ("delivery", sent, got),
            ("client", got, acc),
        ] {
            ev.push(x(
                name,
                a,
                b,
                PID,
                tid,
                base,
                json!({"msg_id": l.msg_id, "publisher_wrote_at_us": us(written)}),
            ));
        }
        for (ph, t) in [("s", read), ("t", sent), ("f", got)] {
            ev.push(
                json!({"name": "message", "cat": "msgpath", "ph": ph, "id": l.msg_id,
                "pid": PID, "tid": tid, "ts": us(t), "bp": "e"}),
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::phases::Span;

    #[test]
    fn sampled_messages_are_slices_and_flows_on_the_same_timeline() {
        let mut d = document(&[], &[], 0);
        d["otherData"]["base_mono_ns"] = json!(1_000_000);
        let l = crate::msgpath::Legs {
            msg_id: 9,
            sub_port: 5000,
            sched_ns: 2_000_000,
            publish_wait: 500,
            publish_send: 500,
            publish_net: 1_000,
            server: 5_000_000,
            delivery: 100_000,
            client: 10_000,
            e2e: 5_112_000,
        };
        add_messages(&mut d, &[l]);
        let ev = d["traceEvents"].as_array().unwrap();
        let server = ev.iter().find(|e| e["name"] == "server").unwrap();
        assert_eq!(server["ts"], 1002.0);
        assert_eq!(server["dur"], 5000.0);
        let flows: Vec<_> = ev.iter().filter(|e| e["cat"] == "msgpath").collect();
        assert_eq!(flows.len(), 3);
        assert!(flows.iter().all(|f| f["id"] == 9));
    }

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
        assert_eq!(d["otherData"]["base_mono_ns"], 1_000);
        assert_eq!(ev[2]["name"], "accept_wait");
        assert_eq!(ev[2]["ts"], 0.0);
        assert_eq!(ev[2]["dur"], 2.0);
        assert_eq!(ev[3]["dur"], 2.0);
    }
}
