//! What holding the stage's connections cost each side: the load
//! generator's and the target's memory, the kernel's TCP socket memory, the
//! observer's own CPU and map memory — per connection, and per 10k more
//! connections than the previous stage (the marginal cost, without the
//! fixed part every process has).

use crate::target::SockStat;
use serde::{Deserialize, Serialize};
use serde_json::Value;

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct StageScale {
    /// Connections the load generator held at the stage's end.
    pub connections_held: u64,
    /// Resident memory of the load processes at the stage's end (sum; a run
    /// that is not sharded holds its connections in pushscope itself, so
    /// the observer's and profiler's memory is included).
    pub loadgen_rss_bytes: Option<u64>,
    pub loadgen_rss_per_connection_bytes: Option<f64>,
    /// The target's resident memory at the end of the stage's hold (1 Hz sample).
    pub target_rss_bytes: Option<u64>,
    pub target_rss_per_connection_bytes: Option<f64>,
    /// The kernel's TCP socket totals when most TCP sockets were in use
    /// during the stage (the namespace's: both ends of loopback connections).
    pub kernel_tcp: Option<SockStat>,
    /// The observer's ring reader + /proc sampler, % of one core.
    pub observer_cpu_pct: Option<f64>,
    /// Kernel memory of the observer's maps.
    pub observer_bpf_map_bytes: Option<u64>,
    /// Growth from the previous stage per 10k more connections held
    /// (absent for the first stage or when the count did not grow).
    pub per_10k_more: Option<Per10k>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Per10k {
    pub loadgen_rss_bytes: Option<f64>,
    pub target_rss_bytes: Option<f64>,
    pub kernel_tcp_mem_bytes: Option<f64>,
}

fn per(total: Option<u64>, n: u64) -> Option<f64> {
    total.filter(|_| n > 0).map(|t| t as f64 / n as f64)
}

/// One stage's scale figures from its load report, observer report (the
/// summary.json shapes), the target's RSS at hold end and the kernel's TCP
/// totals at the stage's peak.
pub fn stage_scale(
    load: &Value,
    observer: Option<&Value>,
    target_rss: Option<f64>,
    kernel_tcp: Option<SockStat>,
) -> StageScale {
    let held = load
        .pointer("/connections/opened")
        .and_then(Value::as_u64)
        .unwrap_or(0);
    let loadgen_rss = load
        .pointer("/loadgen/rss_bytes")
        .and_then(Value::as_array)
        .filter(|a| !a.is_empty())
        .map(|a| a.iter().filter_map(Value::as_u64).sum::<u64>());
    let target_rss = target_rss.map(|b| b as u64);
    StageScale {
        connections_held: held,
        loadgen_rss_bytes: loadgen_rss,
        loadgen_rss_per_connection_bytes: per(loadgen_rss, held),
        target_rss_bytes: target_rss,
        target_rss_per_connection_bytes: per(target_rss, held),
        kernel_tcp,
        observer_cpu_pct: observer
            .and_then(|o| o.pointer("/details/self_cpu_pct"))
            .and_then(Value::as_f64),
        observer_bpf_map_bytes: observer
            .and_then(|o| o.pointer("/details/bpf_map_bytes"))
            .and_then(Value::as_u64)
            .filter(|b| *b > 0),
        per_10k_more: None,
    }
}

/// Fills `per_10k_more` of each stage from the one before it.
pub fn fill_marginals(stages: &mut [&mut StageScale]) {
    for i in 1..stages.len() {
        let (before, after) = stages.split_at_mut(i);
        let (prev, cur) = (&*before[i - 1], &mut *after[0]);
        let more = cur.connections_held.saturating_sub(prev.connections_held);
        if more == 0 {
            continue;
        }
        let per_10k = |a: Option<u64>, b: Option<u64>| -> Option<f64> {
            let (a, b) = (a?, b?);
            Some((b as f64 - a as f64) / more as f64 * 10_000.0)
        };
        cur.per_10k_more = Some(Per10k {
            loadgen_rss_bytes: per_10k(prev.loadgen_rss_bytes, cur.loadgen_rss_bytes),
            target_rss_bytes: per_10k(prev.target_rss_bytes, cur.target_rss_bytes),
            kernel_tcp_mem_bytes: per_10k(
                prev.kernel_tcp.map(|k| k.tcp_mem_bytes),
                cur.kernel_tcp.map(|k| k.tcp_mem_bytes),
            ),
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn per_connection_and_marginal_figures() {
        let load = |held: u64, rss: &[u64]| json!({"connections": {"opened": held}, "loadgen": {"rss_bytes": rss}});
        let obs = json!({"details": {"self_cpu_pct": 1.5, "bpf_map_bytes": 4096}});
        let tcp = |mem| {
            Some(SockStat {
                tcp_inuse: 1,
                tcp_mem_bytes: mem,
            })
        };
        let mut a = stage_scale(
            &load(1000, &[8_000_000, 2_000_000]),
            Some(&obs),
            Some(50e6),
            tcp(1_000_000),
        );
        let mut b = stage_scale(
            &load(3000, &[20_000_000, 6_000_000]),
            None,
            Some(70e6),
            tcp(3_000_000),
        );
        assert_eq!(a.loadgen_rss_bytes, Some(10_000_000));
        assert_eq!(a.loadgen_rss_per_connection_bytes, Some(10_000.0));
        assert_eq!(a.target_rss_per_connection_bytes, Some(50_000.0));
        assert_eq!(
            (a.observer_cpu_pct, a.observer_bpf_map_bytes),
            (Some(1.5), Some(4096))
        );
        assert_eq!(b.observer_cpu_pct, None);
        fill_marginals(&mut [&mut a, &mut b]);
        assert_eq!(a.per_10k_more, None);
        let m = b.per_10k_more.unwrap();
        // 16 MB more for 2,000 more connections = 80 MB per 10k.
        assert_eq!(m.loadgen_rss_bytes, Some(80_000_000.0));
        assert_eq!(m.target_rss_bytes, Some(100_000_000.0));
        assert_eq!(m.kernel_tcp_mem_bytes, Some(10_000_000.0));
        // No connections: no per-connection figure, never a division by zero.
        let z = stage_scale(&load(0, &[1]), None, Some(1.0), None);
        assert_eq!(
            (
                z.loadgen_rss_per_connection_bytes,
                z.target_rss_per_connection_bytes
            ),
            (None, None)
        );
    }
}
