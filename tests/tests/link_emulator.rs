//! The built-in link emulator (`loadgen::link`) on its own, as root: real
//! namespace, real TUN devices, real TCP and UDP through the forwarder to
//! a server on the host's 127.0.0.1.
//!
//! - TCP connect RTT over `rtt=2ms,jitter=0.3ms` (500 connects), as the
//!   kernel sampled each handshake (TCP_INFO): median 2 ms ± 10 %,
//!   standard deviation 0.3 ms ± 30 %.
//! - `loss=1%` over 100,000 UDP datagrams: the loss counted by the
//!   forwarder is inside the binomial 99 % interval, and the host received
//!   exactly what the forwarder let through.
//! - Partition: nothing passes while partitioned, everything after.
//! - Nothing is left behind: devices and routes vanish with the link.

use loadgen::link::{Link, NetworkSpec};
use pushscope_tests::{heavy_lock, link_host_devices, poll_until, skip_unless_root};
use std::{
    net::{SocketAddr, TcpListener, TcpStream, UdpSocket},
    time::{Duration, Instant},
};

fn host_routes() -> String {
    let out = std::process::Command::new("ip")
        .args(["route", "show"])
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout).to_string()
}

/// Accepts and drops connections until the listener is closed.
fn acceptor(l: TcpListener) {
    std::thread::spawn(move || {
        for s in l.incoming() {
            drop(s);
        }
    });
}

fn median_sd(v: &mut [f64]) -> (f64, f64) {
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    let med = v[v.len() / 2];
    let mean = v.iter().sum::<f64>() / v.len() as f64;
    let var = v.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / (v.len() - 1) as f64;
    (med, var.sqrt())
}

#[test]
fn link_connect_rtt_median_and_jitter_as_asked_root() {
    if skip_unless_root("link_connect_rtt_median_and_jitter_as_asked_root") {
        return;
    }
    let _heavy = heavy_lock();
    // No loss here: a lost SYN costs a 1 s retransmit, not link jitter.
    let spec = NetworkSpec::parse("rtt=2ms,jitter=0.3ms,loss=0%").unwrap();
    let link = Link::start(spec).expect("link");
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = l.local_addr().unwrap();
    acceptor(l);
    let ns = link.netns();
    let (mut rtts, mut kernel): (Vec<f64>, Vec<f64>) = ns
        .run_in(move || {
            // The measuring client runs at real-time priority like the
            // forwarder: on 2 busy cores a normal thread wakes up late by
            // up to milliseconds, which is the scheduler's jitter, not the link's.
            // SAFETY: changes only this thread's scheduling policy.
            unsafe {
                let p = libc::sched_param { sched_priority: 5 };
                libc::sched_setscheduler(0, libc::SCHED_FIFO, &p);
            }
            let (mut v, mut k) = (Vec::new(), Vec::new());
            // Warm-up (ARP-free TUN, but first-use costs remain).
            for _ in 0..5 {
                TcpStream::connect_timeout(&addr, Duration::from_secs(5))?;
            }
            for _ in 0..500 {
                let t = Instant::now();
                let s = TcpStream::connect_timeout(&addr, Duration::from_secs(5))?;
                v.push(t.elapsed().as_secs_f64() * 1e3);
                // The kernel's own sample of the handshake (SYN → SYN-ACK).
                let info = loadgen::net::tcp_info_of(&s).expect("TCP_INFO");
                k.push(f64::from(info.srtt_us) / 1e3);
                drop(s);
            }
            Ok((v, k))
        })
        .expect("connects from the namespace to 127.0.0.1 on the host");
    let (med, sd) = median_sd(&mut rtts);
    let (kmed, ksd) = median_sd(&mut kernel);
    eprintln!("kernel handshake RTT: median {kmed:.3} ms, stdev {ksd:.3} ms");
    let n = rtts.len();
    eprintln!(
        "connect RTT quantiles (ms): p1 {:.3} p10 {:.3} p90 {:.3} p99 {:.3} max {:.3}",
        rtts[n / 100],
        rtts[n / 10],
        rtts[n * 9 / 10],
        rtts[n * 99 / 100],
        rtts[n - 1]
    );
    let r = link.report();
    eprintln!(
        "connect RTT over the link: median {med:.3} ms, stdev {sd:.3} ms (asked 2 ms ± 0.3 ms); forwarder applied rtt {:.3} ms jitter {:.3} ms, {} / {} packets",
        r.applied_rtt_mean_ms, r.applied_jitter_ms, r.to_target.forwarded, r.from_target.forwarded
    );
    eprintln!(
        "to target: {:?}\nfrom target: {:?}",
        r.to_target, r.from_target
    );
    // The host's own path was measured at start and taken off the drawn
    // delays (see loadgen::link::PathCalibration).
    let path = r.path.expect("a link that adds delay calibrates its path");
    eprintln!("host path: {path:?}");
    assert_eq!(path.samples, loadgen::link::CALIBRATION_CONNECTS);
    assert!(
        path.base_rtt_ms > 0.0 && path.compensated_ms <= 2.0,
        "{path:?}"
    );
    // TCP's connect RTT as TCP itself measured it (the handshake's RTT
    // sample, TCP_INFO): the wall time around connect() adds this
    // thread's own wake-up, 0.05–0.1 ms here and 0.3 ms on a CI host
    // (2.35 ms with the forwarder at 1.01 ms each way) — printed, not the link.
    assert!(
        (1.8..=2.2).contains(&kmed),
        "median TCP handshake RTT {kmed:.3} ms (kernel), asked 2 ms ± 10 %; around connect() {med:.3} ms"
    );
    // σ of the link from the interquartile range (σ = IQR / 1.349 for a
    // normal distribution): the raw standard deviation also carries the
    // host's tail (on 2 busy cores the kernel defers packet processing to
    // ksoftirqd, a normal-priority thread, for milliseconds at times),
    // which is printed above but is not the link's jitter.
    let sigma = (kernel[n * 3 / 4] - kernel[n / 4]) / 1.349;
    let sigma_wall = (rtts[n * 3 / 4] - rtts[n / 4]) / 1.349;
    eprintln!("handshake RTT σ from the IQR: {sigma:.3} ms (around connect(): {sigma_wall:.3} ms)");
    assert!(
        (0.21..=0.39).contains(&sigma),
        "handshake RTT σ {sigma:.3} ms (IQR), asked 0.3 ms ± 30 %; raw stdev {ksd:.3} ms"
    );
    assert!(
        r.to_target.forwarded >= 1010 && r.from_target.forwarded >= 505,
        "{r:?}"
    );
    assert_eq!(r.to_target.dropped_loss + r.from_target.dropped_loss, 0);
}

#[test]
fn link_loss_inside_the_binomial_interval_root() {
    if skip_unless_root("link_loss_inside_the_binomial_interval_root") {
        return;
    }
    let _heavy = heavy_lock();
    let spec = NetworkSpec::parse("rtt=0ms,loss=1%").unwrap();
    let link = Link::start(spec).expect("link");
    let ctl = link.control();
    let rx = UdpSocket::bind("127.0.0.1:0").unwrap();
    rx.set_read_timeout(Some(Duration::from_millis(200)))
        .unwrap();
    let to: SocketAddr = rx.local_addr().unwrap();
    {
        use std::os::fd::AsRawFd;
        let big: libc::c_int = 64 << 20;
        // SAFETY: setsockopt on our socket with an int value.
        unsafe {
            libc::setsockopt(
                rx.as_raw_fd(),
                libc::SOL_SOCKET,
                libc::SO_RCVBUFFORCE,
                (&big as *const libc::c_int).cast(),
                std::mem::size_of::<libc::c_int>() as libc::socklen_t,
            );
        }
    }
    let n: u64 = 100_000;
    let got = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
    let got_rx = got.clone();
    let counter = std::thread::spawn(move || {
        let got = got_rx;
        let mut buf = [0u8; 64];
        let mut idle = 0;
        while idle < 10 {
            match rx.recv(&mut buf) {
                Ok(_) => {
                    got.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    idle = 0
                }
                Err(_) => idle += 1,
            }
        }
    });
    let sender_ctl = ctl.clone();
    let got_tx = got.clone();
    link.netns()
        .run_in(move || {
            let tx = UdpSocket::bind("0.0.0.0:0")?;
            // Paced in batches so no queue before the forwarder overflows.
            for batch in 0..(n / 500) {
                for _ in 0..500 {
                    tx.send_to(b"pushscope-link-loss", to)?;
                }
                let want = (batch + 1) * 500;
                // ... and the receiver to drain it (its buffer is small).
                poll_until("the batch to pass", Duration::from_secs(20), || {
                    let d = &sender_ctl.directions()[0];
                    let r = got_tx.load(std::sync::atomic::Ordering::Relaxed);
                    if d.packets >= want && r + d.dropped_loss >= want {
                        Ok(())
                    } else {
                        Err(format!("{d:?}, received {r} of {want}"))
                    }
                });
            }
            Ok(())
        })
        .unwrap();
    counter.join().unwrap();
    let got = got.load(std::sync::atomic::Ordering::Relaxed);
    let d = &ctl.directions()[0];
    // Binomial(n, 0.01): 99 % two-sided interval n·p ± 2.576·√(n·p·(1−p)).
    let (mean, sd) = (n as f64 * 0.01, (n as f64 * 0.01 * 0.99).sqrt());
    let (lo, hi) = (
        (mean - 2.576 * sd).floor() as u64,
        (mean + 2.576 * sd).ceil() as u64,
    );
    eprintln!(
        "loss=1% over {} packets: dropped {} (99 % interval {lo}..={hi}), forwarded {}, host received {got}",
        d.packets, d.dropped_loss, d.forwarded
    );
    assert_eq!(d.packets, n, "every datagram reached the forwarder");
    assert!(
        (lo..=hi).contains(&d.dropped_loss),
        "{} dropped of {n}, 99 % interval {lo}..={hi}",
        d.dropped_loss
    );
    assert_eq!(d.forwarded + d.dropped_loss, n);
    assert_eq!(
        got, d.forwarded,
        "the host received exactly what was forwarded"
    );
}

#[test]
fn link_partition_drops_everything_both_ways_then_heals_root() {
    if skip_unless_root("link_partition_drops_everything_both_ways_then_heals_root") {
        return;
    }
    let _heavy = heavy_lock();
    let link = Link::transparent().expect("link");
    let ctl = link.control();
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = l.local_addr().unwrap();
    acceptor(l);
    ctl.set_partitioned(true);
    let during = link
        .netns()
        .run_in(move || Ok(TcpStream::connect_timeout(&addr, Duration::from_millis(500)).is_ok()))
        .unwrap();
    assert!(!during, "a connect passed a partitioned link");
    let [to, _] = ctl.directions();
    assert!(to.dropped_partition >= 1 && to.forwarded == 0, "{to:?}");
    ctl.set_partitioned(false);
    let after = link
        .netns()
        .run_in(move || Ok(TcpStream::connect_timeout(&addr, Duration::from_secs(3)).is_ok()))
        .unwrap();
    assert!(after, "the link did not heal");
    // The counters follow the write that let the connect return.
    let [to, from] = poll_until("the forwarder's counters", Duration::from_secs(5), || {
        let d = ctl.directions();
        if d[0].forwarded >= 1 && d[1].forwarded >= 1 {
            Ok(d)
        } else {
            Err(format!("{d:?}"))
        }
    });
    assert_eq!(to.dropped_loss + from.dropped_loss, 0, "{to:?} {from:?}");
}

#[test]
fn link_leaves_no_device_and_no_route_root() {
    if skip_unless_root("link_leaves_no_device_and_no_route_root") {
        return;
    }
    let _heavy = heavy_lock();
    let pid = std::process::id();
    let link = Link::start(NetworkSpec::parse("financial-backbone").unwrap()).expect("link");
    let addr = link.client_addr.to_string();
    assert_eq!(link_host_devices(pid), vec![link.host_dev.clone()]);
    assert!(host_routes().contains(&addr), "{}", host_routes());
    drop(link);
    assert!(
        link_host_devices(pid).is_empty(),
        "left: {:?}",
        link_host_devices(pid)
    );
    assert!(
        !host_routes().contains(&addr),
        "route left: {}",
        host_routes()
    );
}
