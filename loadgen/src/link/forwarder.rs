//! The packet forwarder: one thread per direction reads IP packets from
//! one TUN device, holds each for its drawn delay and writes it to the
//! other device — or drops it (random loss, partition, queue overflow).
//!
//! Timing: a packet's release time is `arrival + N(rtt/2, jitter/√2)`
//! (truncated at 0; after its serialization when a rate is set), never
//! earlier than the previous release of the same flow (5-tuple), so TCP
//! sees no reordering within a connection. The thread sleeps in `ppoll`
//! (timer slack 1 ns) until a little before the next release — "a little"
//! follows the wake-up lateness it measures — and spins the rest. The
//! applied delay (write time − read time) is what the statistics record.

use super::spec::NetworkSpec;
use hdrhistogram::Histogram;
use rand::{rngs::StdRng, Rng, SeedableRng};
use serde::Serialize;
use std::{
    cmp::Reverse,
    collections::{BinaryHeap, HashMap},
    fs::File,
    io::{Read, Write},
    os::fd::AsRawFd,
    sync::{
        atomic::{AtomicBool, AtomicU64, Ordering},
        Arc, Mutex,
    },
};

/// Most packets one direction holds; beyond, arrivals are dropped and
/// counted as `dropped_overflow` (netem's default limit is 1000).
const QUEUE_LIMIT: usize = 100_000;
/// Longest sleep between checks of the stop flag.
const MAX_WAIT_NS: u64 = 50_000_000;
/// Bounds of the spin before a release (ns).
const LEAD_MIN_NS: u64 = 10_000;
const LEAD_MAX_NS: u64 = 200_000;
/// Most a release is started early to make up for the write's own time.
const BIAS_MAX_NS: u64 = 100_000;

/// Counters and applied delays of one direction.
#[derive(Debug, Clone)]
pub struct DirStats {
    /// IPv4 packets read from the source device.
    pub packets: u64,
    pub forwarded: u64,
    /// Dropped by the random loss draw.
    pub dropped_loss: u64,
    /// Dropped because the link was partitioned (on arrival or at release).
    pub dropped_partition: u64,
    /// Dropped because the queue was full.
    pub dropped_overflow: u64,
    /// Non-IPv4 packets (never forwarded).
    pub ignored: u64,
    pub write_errors: u64,
    /// Applied one-way delay, µs (1 µs .. 60 s, 3 significant digits).
    pub delay_us: Histogram<u64>,
    /// How late packets were written after their release time, µs: the
    /// forwarder's own imprecision (scheduling, the write itself).
    pub late_us: Histogram<u64>,
    sum_ns: f64,
    sumsq_ns: f64,
}

impl Default for DirStats {
    fn default() -> Self {
        DirStats {
            packets: 0,
            forwarded: 0,
            dropped_loss: 0,
            dropped_partition: 0,
            dropped_overflow: 0,
            ignored: 0,
            write_errors: 0,
            delay_us: Histogram::new_with_bounds(1, 60_000_000, 3).expect("static bounds"),
            late_us: Histogram::new_with_bounds(1, 60_000_000, 3).expect("static bounds"),
            sum_ns: 0.0,
            sumsq_ns: 0.0,
        }
    }
}

/// One direction's figures as reported.
#[derive(Debug, Clone, Default, PartialEq, Serialize, serde::Deserialize)]
pub struct DirReport {
    pub packets: u64,
    pub forwarded: u64,
    pub dropped_loss: u64,
    pub dropped_partition: u64,
    pub dropped_overflow: u64,
    /// `dropped_loss / packets` (the random loss measured), 0 without packets.
    pub loss_measured: f64,
    /// Applied one-way delay: median, p99, mean and standard deviation (ms).
    pub delay_p50_ms: f64,
    pub delay_p99_ms: f64,
    pub delay_mean_ms: f64,
    pub delay_stdev_ms: f64,
    /// Write time − release time: p50 and p99 (ms), the forwarder's own error.
    pub late_p50_ms: f64,
    pub late_p99_ms: f64,
}

impl DirStats {
    fn record_delay(&mut self, ns: u64, late_ns: u64) {
        let _ = self.late_us.record((late_ns / 1000).clamp(1, 60_000_000));
        let _ = self.delay_us.record((ns / 1000).clamp(1, 60_000_000));
        let x = ns as f64;
        self.sum_ns += x;
        self.sumsq_ns += x * x;
    }

    pub fn report(&self) -> DirReport {
        let n = self.forwarded as f64;
        let mean = if n > 0.0 { self.sum_ns / n } else { 0.0 };
        let var = if n > 1.0 {
            ((self.sumsq_ns - n * mean * mean) / (n - 1.0)).max(0.0)
        } else {
            0.0
        };
        let q_of = |h: &Histogram<u64>, p: f64| {
            if h.is_empty() {
                0.0
            } else {
                h.value_at_quantile(p) as f64 / 1e3
            }
        };
        let q = |p: f64| q_of(&self.delay_us, p);
        DirReport {
            packets: self.packets,
            forwarded: self.forwarded,
            dropped_loss: self.dropped_loss,
            dropped_partition: self.dropped_partition,
            dropped_overflow: self.dropped_overflow,
            loss_measured: if self.packets > 0 {
                self.dropped_loss as f64 / self.packets as f64
            } else {
                0.0
            },
            delay_p50_ms: q(0.5),
            delay_p99_ms: q(0.99),
            delay_mean_ms: mean / 1e6,
            delay_stdev_ms: var.sqrt() / 1e6,
            late_p50_ms: q_of(&self.late_us, 0.5),
            late_p99_ms: q_of(&self.late_us, 0.99),
        }
    }
}

/// What the forwarder threads and the controls share.
#[derive(Debug, Default)]
pub struct Shared {
    pub partitioned: AtomicBool,
    pub stop: AtomicBool,
    /// While set, packets pass at once, never lost (the link measuring
    /// its own path, see `Link::calibrate`).
    pub passthrough: AtomicBool,
    /// Taken off every drawn delay (ns): half the round trip the host's
    /// own path (TUN wake-ups, the stacks) adds, so TCP sees what was asked.
    pub compensation_ns: AtomicU64,
    /// `[to target, from target]`.
    pub stats: [Mutex<DirStats>; 2],
}

impl Shared {
    pub fn lock(&self, dir: usize) -> std::sync::MutexGuard<'_, DirStats> {
        self.stats[dir].lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// A held packet, ordered by release time then arrival order.
struct Held {
    release: u64,
    seq: u64,
    arrived: u64,
    data: Vec<u8>,
}

impl PartialEq for Held {
    fn eq(&self, o: &Self) -> bool {
        (self.release, self.seq) == (o.release, o.seq)
    }
}
impl Eq for Held {}
impl PartialOrd for Held {
    fn partial_cmp(&self, o: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(o))
    }
}
impl Ord for Held {
    fn cmp(&self, o: &Self) -> std::cmp::Ordering {
        (self.release, self.seq).cmp(&(o.release, o.seq))
    }
}

/// (src, dst, protocol, src port, dst port) of an IPv4 packet; ports 0
/// for other protocols and for fragments after the first.
type FlowKey = (u32, u32, u8, u16, u16);

/// The flow of an IPv4 packet, or `None` if it is not one.
pub fn flow_key(p: &[u8]) -> Option<FlowKey> {
    if p.len() < 20 || p[0] >> 4 != 4 {
        return None;
    }
    let ihl = usize::from(p[0] & 0x0f) * 4;
    let proto = p[9];
    let src = u32::from_be_bytes([p[12], p[13], p[14], p[15]]);
    let dst = u32::from_be_bytes([p[16], p[17], p[18], p[19]]);
    let frag_off = u16::from_be_bytes([p[6], p[7]]) & 0x1fff;
    let ports = if (proto == 6 || proto == 17) && frag_off == 0 && p.len() >= ihl + 4 {
        (
            u16::from_be_bytes([p[ihl], p[ihl + 1]]),
            u16::from_be_bytes([p[ihl + 2], p[ihl + 3]]),
        )
    } else {
        (0, 0)
    };
    Some((src, dst, proto, ports.0, ports.1))
}

/// The delay and loss draws of one direction (separate from the I/O so
/// they can be tested without devices).
pub struct Shaper {
    mean_ns: f64,
    sigma_ns: f64,
    loss: f64,
    /// ns per byte at the link's rate.
    ns_per_byte: Option<f64>,
    link_free: u64,
    /// Taken off the mean of every draw (ns), see `Shared::compensation_ns`.
    pub compensation_ns: f64,
    flows: HashMap<FlowKey, u64>,
    prune_at: usize,
    rng: StdRng,
}

/// What the shaper decided for one packet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fate {
    Lost,
    Release(u64),
}

impl Shaper {
    pub fn new(spec: &NetworkSpec, seed: Option<u64>) -> Shaper {
        Shaper {
            mean_ns: spec.one_way_mean().as_nanos() as f64,
            sigma_ns: spec.one_way_sigma().as_nanos() as f64,
            loss: spec.loss,
            ns_per_byte: spec.rate_bps.map(|r| 8e9 / r as f64),
            link_free: 0,
            compensation_ns: 0.0,
            flows: HashMap::new(),
            prune_at: 4096,
            rng: match seed {
                Some(s) => StdRng::seed_from_u64(s),
                None => StdRng::from_entropy(),
            },
        }
    }

    /// One standard normal draw (Box–Muller).
    fn normal(&mut self) -> f64 {
        let u1: f64 = 1.0 - self.rng.gen::<f64>(); // (0, 1]
        let u2: f64 = self.rng.gen();
        (-2.0 * u1.ln()).sqrt() * (std::f64::consts::TAU * u2).cos()
    }

    /// Decides the fate of a packet of `len` bytes of flow `key` read at `now`.
    pub fn admit(&mut self, key: FlowKey, len: usize, now: u64) -> Fate {
        if self.loss > 0.0 && self.rng.gen::<f64>() < self.loss {
            return Fate::Lost;
        }
        let mut base = now;
        if let Some(npb) = self.ns_per_byte {
            let start = self.link_free.max(now);
            self.link_free = start + (len as f64 * npb) as u64;
            base = self.link_free;
        }
        let mean = (self.mean_ns - self.compensation_ns).max(0.0);
        let d = if self.sigma_ns > 0.0 {
            (mean + self.sigma_ns * self.normal()).max(0.0)
        } else {
            mean
        };
        let mut release = base + d as u64;
        if self.flows.len() >= self.prune_at {
            // Entries already in the past constrain nothing.
            self.flows.retain(|_, r| *r > now);
            self.prune_at = (self.flows.len() * 2).max(4096);
        }
        let last = self.flows.entry(key).or_insert(0);
        release = release.max(*last);
        *last = release;
        Fate::Release(release)
    }
}

/// Timer slack 1 ns, and real-time priority (SCHED_FIFO) where allowed: on
/// a busy machine a normal thread wakes up hundreds of µs late, which
/// would be jitter the link never asked for. The thread never runs long:
/// it spins at most `LEAD_MAX_NS` before a release, then sleeps.
fn set_precise_timing() {
    // SAFETY: prctl(PR_SET_TIMERSLACK) and sched_setscheduler(0, …) only
    // change the calling thread's timer slack and policy.
    unsafe {
        libc::prctl(libc::PR_SET_TIMERSLACK, 1 as libc::c_ulong, 0, 0, 0);
        let param = libc::sched_param { sched_priority: 10 };
        if libc::sched_setscheduler(0, libc::SCHED_FIFO, &param) != 0 {
            log::warn!(
                "the link forwarder runs without real-time priority ({}): its delays jitter more on a busy machine",
                std::io::Error::last_os_error()
            );
        }
    }
}

/// Waits until `fd` is readable or `timeout_ns` passed; true if readable.
fn wait_readable(fd: &File, timeout_ns: u64) -> bool {
    let mut pfd = libc::pollfd {
        fd: fd.as_raw_fd(),
        events: libc::POLLIN,
        revents: 0,
    };
    let ts = libc::timespec {
        tv_sec: (timeout_ns / 1_000_000_000) as libc::time_t,
        tv_nsec: (timeout_ns % 1_000_000_000) as libc::c_long,
    };
    // SAFETY: one valid pollfd, a valid timespec, no signal mask.
    let rc = unsafe { libc::ppoll(&mut pfd, 1, &ts, std::ptr::null()) };
    rc > 0 && pfd.revents & libc::POLLIN != 0
}

/// The loop of one direction: `input` → hold → `output`, until `shared.stop`.
pub fn run_direction(
    dir: usize,
    mut input: File,
    mut output: File,
    spec: NetworkSpec,
    shared: Arc<Shared>,
) {
    use crate::clock::mono_ns;
    set_precise_timing();
    let mut shaper = Shaper::new(&spec, None);
    let mut heap: BinaryHeap<Reverse<Held>> = BinaryHeap::new();
    let mut buf = vec![0u8; 65_536];
    let mut seq: u64 = 0;
    // How early to wake before a release, following measured lateness.
    let mut lead: u64 = 50_000;
    // Typical time from a release instant to the packet being in the
    // stack (the write itself): started that much earlier.
    let mut bias: u64 = 0;
    while !shared.stop.load(Ordering::Relaxed) {
        // Release everything due within the lead, spinning to its time.
        let mut now = mono_ns();
        while let Some(Reverse(top)) = heap.peek() {
            let at = top.release.saturating_sub(bias);
            if at > now + lead {
                break;
            }
            while mono_ns() < at {
                std::hint::spin_loop();
            }
            let Reverse(h) = heap.pop().expect("peeked");
            let part = shared.partitioned.load(Ordering::Relaxed);
            let written = !part && output.write(&h.data).is_ok();
            now = mono_ns();
            let late = now.saturating_sub(h.release);
            let early = h.release.saturating_sub(now);
            // EWMA (1/16) of the signed error, bounded.
            bias = if late > 0 {
                (bias * 15 + (bias + late).min(BIAS_MAX_NS)) / 16
            } else {
                (bias * 15 + bias.saturating_sub(early)) / 16
            };
            let mut st = shared.lock(dir);
            if part {
                st.dropped_partition += 1;
            } else if written {
                st.forwarded += 1;
                st.record_delay(now - h.arrived, late);
            } else {
                st.write_errors += 1;
            }
        }
        let wait = heap
            .peek()
            .map_or(MAX_WAIT_NS, |Reverse(t)| {
                t.release.saturating_sub(bias).saturating_sub(now + lead)
            })
            .min(MAX_WAIT_NS);
        let intended = now + wait;
        let readable = wait_readable(&input, wait);
        if !readable && wait > 0 {
            let late = mono_ns().saturating_sub(intended).min(1_000_000);
            // EWMA (1/8) of the lateness, plus a margin.
            let target = (late + 10_000).clamp(LEAD_MIN_NS, LEAD_MAX_NS);
            lead = (lead * 7 + target) / 8;
        }
        if !readable {
            continue;
        }
        // Read what is there (bounded, so releases stay on time).
        for _ in 0..256 {
            let n = match input.read(&mut buf) {
                Ok(n) if n > 0 => n,
                _ => break,
            };
            let arrived = mono_ns();
            let pkt = &buf[..n];
            let Some(key) = flow_key(pkt) else {
                shared.lock(dir).ignored += 1;
                continue;
            };
            let mut st = shared.lock(dir);
            st.packets += 1;
            if shared.partitioned.load(Ordering::Relaxed) {
                st.dropped_partition += 1;
                continue;
            }
            let fate = if shared.passthrough.load(Ordering::Relaxed) {
                Fate::Release(arrived)
            } else {
                shaper.compensation_ns = shared.compensation_ns.load(Ordering::Relaxed) as f64;
                shaper.admit(key, n, arrived)
            };
            match fate {
                Fate::Lost => st.dropped_loss += 1,
                Fate::Release(_) if heap.len() >= QUEUE_LIMIT => st.dropped_overflow += 1,
                Fate::Release(release) => {
                    seq += 1;
                    heap.push(Reverse(Held {
                        release,
                        seq,
                        arrived,
                        data: pkt.to_vec(),
                    }));
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn spec(rtt_us: u64, jitter_us: u64, loss: f64) -> NetworkSpec {
        NetworkSpec {
            rtt: Duration::from_micros(rtt_us),
            jitter: Duration::from_micros(jitter_us),
            loss,
            rate_bps: None,
        }
    }

    #[test]
    fn flow_key_reads_tcp_ports_and_rejects_non_ipv4() {
        let mut p = [0u8; 40];
        p[0] = 0x45;
        p[9] = 6;
        p[12..16].copy_from_slice(&[10, 0, 0, 1]);
        p[16..20].copy_from_slice(&[127, 0, 0, 1]);
        p[20..22].copy_from_slice(&40000u16.to_be_bytes());
        p[22..24].copy_from_slice(&8080u16.to_be_bytes());
        let k = flow_key(&p).unwrap();
        assert_eq!((k.2, k.3, k.4), (6, 40000, 8080));
        p[0] = 0x60;
        assert_eq!(flow_key(&p), None);
        assert_eq!(flow_key(&p[..10]), None);
    }

    #[test]
    fn delays_have_the_asked_mean_and_sigma_per_direction() {
        let s = spec(2000, 300, 0.0);
        let mut sh = Shaper::new(&s, Some(7));
        let n = 200_000u64;
        let (mut sum, mut sumsq) = (0.0, 0.0);
        for i in 0..n {
            // A new flow each time: no order clamping.
            let Fate::Release(r) = sh.admit((i as u32, 0, 6, 0, 0), 100, 1_000_000_000) else {
                panic!("no loss asked")
            };
            let d = (r - 1_000_000_000) as f64;
            sum += d;
            sumsq += d * d;
        }
        let mean = sum / n as f64;
        let sd = (sumsq / n as f64 - mean * mean).sqrt();
        assert!((mean - 1e6).abs() < 2e3, "mean {mean}");
        assert!((sd - 212_132.0).abs() < 3e3, "sd {sd}");
    }

    proptest::proptest! {
        /// Within a flow, releases never go backwards; loss stays within
        /// the binomial bounds.
        #[test]
        fn order_is_kept_per_flow(seed in 0u64..1000, gaps in proptest::collection::vec(0u64..400_000, 1..300)) {
            let s = spec(2000, 1500, 0.1);
            let mut sh = Shaper::new(&s, Some(seed));
            let mut t = 1_000_000u64;
            let mut last = [0u64; 3];
            let mut lost = 0;
            for (i, g) in gaps.iter().enumerate() {
                t += g;
                let f = i % 3;
                match sh.admit((f as u32, 9, 6, 1, 2), 100, t) {
                    Fate::Lost => lost += 1,
                    Fate::Release(r) => {
                        proptest::prop_assert!(r >= last[f]);
                        proptest::prop_assert!(r >= t);
                        last[f] = r;
                    }
                }
            }
            proptest::prop_assert!(lost <= gaps.len());
        }

        #[test]
        fn rate_serializes_packets(n in 1usize..200, len in 40usize..1500) {
            // 8 Mbit/s: 1 µs per byte; no delay.
            let s = NetworkSpec { rate_bps: Some(8_000_000), ..spec(0, 0, 0.0) };
            let mut sh = Shaper::new(&s, Some(1));
            let mut last = 0;
            for i in 0..n {
                let Fate::Release(r) = sh.admit((i as u32, 0, 17, 0, 0), len, 0) else { panic!() };
                proptest::prop_assert_eq!(r, ((i + 1) * len * 1000) as u64);
                last = r;
            }
            proptest::prop_assert_eq!(last, (n * len * 1000) as u64);
        }
    }
}
