//! The one clock of every stamp used for latency and accounting:
//! CLOCK_MONOTONIC, the clock of the kernel's `bpf_ktime_get_ns`. It is
//! system-wide, so worker processes and the eBPF probes agree with the
//! publisher, and an NTP step of the wall clock cannot corrupt a stage.
//! Wall-clock (unix) times exist only for display, derived from one
//! [`Anchor`] taken at the start of a run.

/// CLOCK_MONOTONIC in nanoseconds.
pub fn mono_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes into the timespec we pass; CLOCK_MONOTONIC always exists on Linux.
    unsafe {
        libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts);
    }
    (ts.tv_sec as u64)
        .saturating_mul(1_000_000_000)
        .saturating_add(ts.tv_nsec as u64)
}

/// Wall clock in unix nanoseconds (display only).
pub fn unix_ns() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0)
}

/// A monotonic instant paired with the wall clock at the same moment:
/// converts monotonic stamps to unix time for reports, so a wall-clock
/// step during the run moves no duration.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Anchor {
    pub mono_ns: u64,
    pub unix_ns: u64,
}

impl Anchor {
    pub fn now() -> Anchor {
        Anchor {
            mono_ns: mono_ns(),
            unix_ns: unix_ns(),
        }
    }

    /// The unix time of a monotonic stamp (display only).
    pub fn unix_of(&self, mono: u64) -> u64 {
        if mono >= self.mono_ns {
            self.unix_ns.saturating_add(mono - self.mono_ns)
        } else {
            self.unix_ns.saturating_sub(self.mono_ns - mono)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn monotonic_matches_std_instant_and_anchor_converts() {
        let a = mono_ns();
        std::thread::sleep(std::time::Duration::from_millis(5));
        let b = mono_ns();
        assert!(b - a >= 5_000_000, "{a} {b}");
        let an = Anchor {
            mono_ns: 1_000,
            unix_ns: 1_700_000_000_000_000_000,
        };
        assert_eq!(an.unix_of(1_500), 1_700_000_000_000_000_500);
        assert_eq!(an.unix_of(500), 1_699_999_999_999_999_500);
    }
}
