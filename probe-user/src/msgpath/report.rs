//! A stage's message path: quantiles of every leg over the sampled
//! messages and over the tail (messages at or above the stage's e2e p99),
//! folded stacks for the latency flame graphs, and what was sampled.

use super::join::{Joined, Legs, Unjoined};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// Quantiles of one leg, in milliseconds.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct LegStats {
    pub count: u64,
    pub p50: f64,
    pub p90: f64,
    pub p99: f64,
    pub max: f64,
}

/// Leg names in path order; `publish` is `publish_wait + publish_send +
/// publish_net`.
pub const LEGS: [&str; 8] = [
    "publish",
    "publish_wait",
    "publish_send",
    "publish_net",
    "server",
    "delivery",
    "client",
    "e2e",
];

fn leg_value(l: &Legs, name: &str) -> u64 {
    match name {
        "publish" => l.publish(),
        "publish_wait" => l.publish_wait,
        "publish_send" => l.publish_send,
        "publish_net" => l.publish_net,
        "server" => l.server,
        "delivery" => l.delivery,
        "client" => l.client,
        _ => l.total(),
    }
}

/// `summary.json` → `stages[].message_path`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct MessagePath {
    /// Why the legs could not be measured at all (then every leg is empty).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub not_measured: Option<String>,
    /// Subscriber connections whose every message was sampled.
    pub sampled_connections: u64,
    /// Sampled deliveries joined into legs.
    pub messages: u64,
    /// Sampled deliveries that could not be joined exactly, by reason.
    pub unjoined: BTreeMap<Unjoined, u64>,
    /// Joined deliveries read by the client before the target's send call
    /// returned (same-host overlap: their delivery leg is 0).
    #[serde(default)]
    pub overlapped: u64,
    /// The e2e latency (ms) at or above which a message is in the tail.
    pub tail_from_ms: Option<f64>,
    /// Per leg over all joined messages (null: no message).
    pub legs: BTreeMap<String, Option<LegStats>>,
    /// Per leg over the tail (null: no message).
    pub tail: BTreeMap<String, Option<LegStats>>,
    /// The joined messages' legs at the message whose e2e is the median
    /// and the p99 of the sample (for stacked bars).
    pub p50_message: Option<BTreeMap<String, f64>>,
    pub p99_message: Option<BTreeMap<String, f64>>,
}

fn stats(mut v: Vec<u64>) -> Option<LegStats> {
    if v.is_empty() {
        return None;
    }
    v.sort_unstable();
    let q = |p: f64| {
        // Nearest rank: the smallest value with at least p of the values at or below it.
        let rank = ((p * v.len() as f64).ceil() as usize).clamp(1, v.len());
        v[rank - 1] as f64 / 1e6
    };
    Some(LegStats {
        count: v.len() as u64,
        p50: q(0.5),
        p90: q(0.9),
        p99: q(0.99),
        max: *v.last().unwrap_or(&0) as f64 / 1e6,
    })
}

fn per_leg(legs: &[&Legs]) -> BTreeMap<String, Option<LegStats>> {
    LEGS.iter()
        .map(|name| {
            let v = legs.iter().map(|l| leg_value(l, name)).collect();
            (name.to_string(), stats(v))
        })
        .collect()
}

fn message_bar(l: &Legs) -> BTreeMap<String, f64> {
    LEGS.iter()
        .map(|n| (n.to_string(), leg_value(l, n) as f64 / 1e6))
        .collect()
}

impl MessagePath {
    /// Figures of one stage. `stage_p99_ms` is the stage's e2e p99 over all
    /// messages (what the gate judges); without it the sample's own p99
    /// marks the tail.
    pub fn from_joined(j: &Joined, sampled_connections: u64, stage_p99_ms: Option<f64>) -> Self {
        let all: Vec<&Legs> = j.legs.iter().collect();
        let mut by_e2e: Vec<&Legs> = all.clone();
        by_e2e.sort_by_key(|l| l.total());
        let nth = |p: f64| -> Option<&Legs> {
            let n = by_e2e.len();
            (n > 0).then(|| by_e2e[((p * n as f64).ceil() as usize).clamp(1, n) - 1])
        };
        let tail_from_ms = stage_p99_ms.or_else(|| nth(0.99).map(|l| l.total() as f64 / 1e6));
        let tail: Vec<&Legs> = match tail_from_ms {
            Some(t) => all
                .iter()
                .copied()
                .filter(|l| l.total() as f64 / 1e6 >= t)
                .collect(),
            None => Vec::new(),
        };
        MessagePath {
            not_measured: None,
            sampled_connections,
            messages: all.len() as u64,
            unjoined: j.unjoined.clone(),
            overlapped: j.overlapped,
            tail_from_ms,
            legs: per_leg(&all),
            tail: per_leg(&tail),
            p50_message: nth(0.5).map(message_bar),
            p99_message: nth(0.99).map(message_bar),
        }
    }

    pub fn not_measured(reason: impl Into<String>) -> Self {
        MessagePath {
            not_measured: Some(reason.into()),
            ..Default::default()
        }
    }
}

/// Folded stacks weighted by µs (inferno's input): `e2e;publish;queue`,
/// `e2e;publish;network`, `e2e;server`, `e2e;delivery`, `e2e;client`,
/// each under `prefix` (e.g. the stage's name).
pub fn folded<'a>(prefix: &str, legs: impl IntoIterator<Item = &'a Legs>) -> Vec<String> {
    let mut sums: BTreeMap<&str, u64> = BTreeMap::new();
    for l in legs {
        for (stack, ns) in [
            ("e2e;publish;wait", l.publish_wait),
            ("e2e;publish;send", l.publish_send),
            ("e2e;publish;network", l.publish_net),
            ("e2e;server", l.server),
            ("e2e;delivery", l.delivery),
            ("e2e;client", l.client),
        ] {
            *sums.entry(stack).or_default() += ns;
        }
    }
    sums.into_iter()
        .filter(|(_, ns)| *ns >= 1_000)
        .map(|(stack, ns)| format!("{prefix};{stack} {}", ns / 1_000))
        .collect()
}

/// message_path.csv: every joined message, leg by leg (ns), with the load
/// generator's own e2e beside the legs' sum.
pub fn write_csv(path: &std::path::Path, stages: &[(usize, &[Legs])]) -> std::io::Result<()> {
    use std::io::Write;
    let mut w = std::io::BufWriter::new(std::fs::File::create(path)?);
    writeln!(
        w,
        "stage,msg_id,subscriber_port,sched_ns,publish_wait_ns,publish_send_ns,publish_net_ns,server_ns,delivery_ns,client_ns,e2e_ns"
    )?;
    for (stage, legs) in stages {
        for l in legs.iter() {
            writeln!(
                w,
                "{stage},{},{},{},{},{},{},{},{},{},{}",
                l.msg_id,
                l.sub_port,
                l.sched_ns,
                l.publish_wait,
                l.publish_send,
                l.publish_net,
                l.server,
                l.delivery,
                l.client,
                l.e2e
            )?;
        }
    }
    w.flush()
}

/// Writes `<name>.folded` and `<name>.svg` (inferno) into `dir`.
pub fn write_flame(
    dir: &std::path::Path,
    name: &str,
    title: &str,
    lines: &[String],
) -> std::io::Result<()> {
    use std::io::BufWriter;
    std::fs::write(dir.join(format!("{name}.folded")), lines.join("\n") + "\n")?;
    let mut opts = inferno::flamegraph::Options::default();
    opts.title = title.to_string();
    opts.count_name = "µs".to_string();
    let svg = BufWriter::new(std::fs::File::create(dir.join(format!("{name}.svg")))?);
    let input: Vec<&str> = if lines.is_empty() {
        // inferno refuses empty input; an explicit empty graph says "no data".
        vec!["no_sampled_messages 1"]
    } else {
        lines.iter().map(String::as_str).collect()
    };
    inferno::flamegraph::from_lines(&mut opts, input, svg).map_err(std::io::Error::other)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn legs(server_ms: u64, n: u64) -> Vec<Legs> {
        (0..n)
            .map(|i| Legs {
                msg_id: i,
                sub_port: 1,
                sched_ns: i,
                publish_wait: 60_000,
                publish_send: 40_000,
                publish_net: 50_000,
                server: server_ms * 1_000_000,
                delivery: 200_000,
                client: 10_000,
                e2e: 160_000 + server_ms * 1_000_000 + 200_000,
            })
            .collect()
    }

    #[test]
    fn tail_holds_the_slow_messages_and_names_their_leg() {
        // 990 fast messages (server 1 ms), 10 slow ones (server 500 ms).
        let mut all = legs(1, 990);
        all.extend(legs(500, 10));
        let j = Joined {
            legs: all,
            unjoined: BTreeMap::from([(Unjoined::OutOfOrder, 2)]),
            overlapped: 3,
        };
        let mp = MessagePath::from_joined(&j, 64, Some(400.0));
        assert_eq!(mp.messages, 1000);
        let leg = |m: &BTreeMap<String, Option<LegStats>>, n: &str| m[n].unwrap();
        assert_eq!(leg(&mp.legs, "server").p50, 1.0);
        assert_eq!(leg(&mp.legs, "server").max, 500.0);
        assert_eq!(leg(&mp.tail, "server").count, 10);
        assert_eq!(leg(&mp.tail, "server").p50, 500.0);
        assert_eq!(leg(&mp.tail, "delivery").p50, 0.2);
        assert_eq!(leg(&mp.legs, "publish").p50, 0.15);
        assert_eq!(mp.unjoined[&Unjoined::OutOfOrder], 2);
        assert_eq!(mp.overlapped, 3);
        let p99 = mp.p99_message.clone().unwrap();
        assert_eq!(p99["server"], 1.0, "the 990th of 1000 is still fast");
        let json = serde_json::to_value(&mp).unwrap();
        assert_eq!(json["unjoined"]["out_of_order"], 2);
    }

    #[test]
    fn folded_stacks_weigh_legs_in_microseconds() {
        let f = folded("stage 1", &legs(2, 3));
        assert!(f.contains(&"stage 1;e2e;server 6000".to_string()), "{f:?}");
        assert!(f.contains(&"stage 1;e2e;publish;wait 180".to_string()));
        assert!(f.contains(&"stage 1;e2e;publish;send 120".to_string()));
        assert!(f.contains(&"stage 1;e2e;client 30".to_string()));
    }

    #[test]
    fn empty_sample_has_empty_legs() {
        let mp = MessagePath::from_joined(&Joined::default(), 0, None);
        assert_eq!(mp.messages, 0);
        assert_eq!(mp.legs["server"], None);
        assert!(mp.p50_message.is_none());
    }
}
