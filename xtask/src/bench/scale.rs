//! `cargo xtask bench scale [--connections 100000] [--hold 60] [--connect-rate 20000]
//! [--workers W] [--heartbeat 5] [--warm]`: 100,000 WebSocket subscribers on one host (needs root,
//! nginx and libnginx-mod-nchan):
//! 1. NGINX + nchan with W workers (default: 16,000 connections each, under
//!    the 20,000 per-process fd limit), one `reuseport` listener per worker;
//! 2. `pushscope observe` attached to the NGINX master, as its own process
//!    so its userspace CPU (utime + stime while the connections are held)
//!    and RSS are its own;
//! 3. `pushscope load --protocol nchan` ramps to N subscribers at the
//!    connect rate (sharded over worker processes above 15,000, source
//!    addresses 127.0.0.1-127.0.0.8), holds them `--hold` seconds with
//!    heartbeats every 5 s and a trickle of publishes. With `--warm`, a
//!    first ramp of N (closed again, before the observer attaches) leaves
//!    NGINX's per-connection memory touched: the measured ramp then shows
//!    what a warm server takes, not the VM's first-touch page faults.
//!
//! Reports: upgraded / failed / unexpected disconnects and the ramp's
//! rate; the observer's accepted count across the workers, coverage,
//! ring-buffer drops, its CPU (% of one core) while held and its RSS per
//! tracked connection; the load generator's and NGINX's RSS per
//! connection; kernel TCP memory; listen-queue overflows and drops
//! (`/proc/net/netstat` ListenOverflows / ListenDrops deltas: SYNs lost
//! to a full accept queue). Writes target/bench/scale.json.
//!
//! Then the ramp's floor (`pushscope-loadgen connect-floor`, NGINX
//! stopped): as many connections set up by servers and clients that do no
//! work (a fixed upgrade request, a 101 with its accept key), sharded the
//! same way. It is the most this host's kernel can set up per second on
//! loopback; the ramp's rate is reported as a share of it, and its CPU per
//! connection shows what is left for the server, the load generator and
//! the observer within the target's budget. And the load generator's own
//! ramp: `pushscope load` (same subscribers, heartbeats, sources and
//! connect rate, nothing published) against the floor's servers, so what
//! it takes per connection is seen apart from NGINX's.

use crate::util::{self, bench_dir, Guard};
use anyhow::{bail, Context, Result};
use serde_json::{json, Value};
use std::{
    net::TcpStream,
    path::Path,
    process::{Command, Stdio},
    time::{Duration, Instant},
};

const TARGET_OBSERVER_CPU_PCT: f64 = 5.0;
const TARGET_LOADGEN_BYTES_PER_CONN: f64 = 6.0 * 1024.0;
const TARGET_CONNECT_RATE: f64 = 20_000.0;
const CONNS_PER_WORKER: u64 = 16_000;
const PUBLISHERS: u64 = 2;
/// The subscribers, the publishers' HTTP connections and the load's
/// reachability probe before the stage.
const EXTRA_ACCEPTS: u64 = PUBLISHERS + 1;

/// A process and all its descendants.
fn tree(pid: u32) -> Vec<u32> {
    let mut out = vec![pid];
    let mut i = 0;
    while i < out.len() {
        let p = out[i];
        let children =
            std::fs::read_to_string(format!("/proc/{p}/task/{p}/children")).unwrap_or_default();
        out.extend(
            children
                .split_whitespace()
                .filter_map(|c| c.parse::<u32>().ok()),
        );
        i += 1;
    }
    out
}

fn tree_cpu_ns(pid: u32) -> u64 {
    tree(pid).iter().map(|p| util::cpu_ns(*p)).sum()
}

/// The machine's CPU time (ns, all cores) from /proc/stat: (busy, softirq, total).
fn machine_cpu_ns() -> (u64, u64, u64) {
    let text = std::fs::read_to_string("/proc/stat").unwrap_or_default();
    let f: Vec<u64> = text
        .lines()
        .next()
        .unwrap_or_default()
        .split_whitespace()
        .skip(1)
        .filter_map(|v| v.parse().ok())
        .collect();
    let at = |i: usize| f.get(i).copied().unwrap_or(0) * 10_000_000;
    // user nice system idle iowait irq softirq steal
    let total: u64 = (0..8).map(at).sum();
    (total - at(3) - at(4), at(6), total)
}

/// CPU each side spent while the connections ramped up.
#[derive(Clone, Copy)]
struct RampCpu {
    nginx: u64,
    load: u64,
    observer: u64,
    machine: (u64, u64, u64),
}

impl RampCpu {
    fn now(nginx: u32, load: u32, observer: u32) -> RampCpu {
        RampCpu {
            nginx: tree_cpu_ns(nginx),
            load: tree_cpu_ns(load),
            observer: util::cpu_ns(observer),
            machine: machine_cpu_ns(),
        }
    }
}

fn tree_rss_bytes(pid: u32) -> u64 {
    tree(pid)
        .iter()
        .map(|p| util::rss_kib(*p).unwrap_or(0) * 1024)
        .sum()
}

/// ListenOverflows and ListenDrops of /proc/net/netstat.
fn listen_drops() -> (u64, u64) {
    let text = std::fs::read_to_string("/proc/net/netstat").unwrap_or_default();
    let lines: Vec<&str> = text.lines().filter(|l| l.starts_with("TcpExt:")).collect();
    let (Some(names), Some(values)) = (lines.first(), lines.get(1)) else {
        return (0, 0);
    };
    let get = |k: &str| {
        let i = names.split_whitespace().position(|n| n == k)?;
        values.split_whitespace().nth(i)?.parse::<u64>().ok()
    };
    (
        get("ListenOverflows").unwrap_or(0),
        get("ListenDrops").unwrap_or(0),
    )
}

fn tcp_mem_bytes() -> u64 {
    let text = std::fs::read_to_string("/proc/net/sockstat").unwrap_or_default();
    text.lines()
        .find_map(|l| l.strip_prefix("TCP:"))
        .and_then(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            let i = f.iter().position(|x| *x == "mem")?;
            f.get(i + 1)?.parse::<u64>().ok()
        })
        .map_or(0, |pages| pages * 4096)
}

fn start_nginx(dir: &Path, workers: u64, port: u16) -> Result<Guard> {
    let conf = include_str!("../../../tests/fixtures/nchan-load.conf")
        .replace("{{DIR}}", &dir.display().to_string())
        .replace("{{PORT}}", &port.to_string())
        .replace("{{WORKERS}}", &workers.to_string())
        .replace("{{REUSEPORT}}", " reuseport")
        .replace("{{SSL}}", "")
        .replace("{{SSL_CONF}}", "");
    std::fs::create_dir_all(dir)?;
    let path = dir.join("nginx.conf");
    std::fs::write(&path, conf)?;
    let child = Command::new("nginx")
        .arg("-c")
        .arg(&path)
        .arg("-p")
        .arg(dir)
        .stdout(Stdio::null())
        .spawn()
        .context("starting nginx (apt-get install -y nginx libnginx-mod-nchan)")?;
    let guard = Guard(child);
    let deadline = Instant::now() + Duration::from_secs(10);
    while TcpStream::connect(("127.0.0.1", port)).is_err() {
        if Instant::now() > deadline {
            bail!(
                "nginx did not listen on {port}: see {}/error.log",
                dir.display()
            );
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    Ok(guard)
}

/// `pushscope load` of `n` nchan subscribers (8 source addresses, 100
/// channels, 10 msgs/s, 2 publishers) with its output in `out`.
fn load_cmd(port: u16, stages: &str, rate: u64, heartbeat: u64, out: &Path) -> Command {
    let mut cmd = Command::new(util::release_bin("pushscope"));
    cmd.args(["load", "--protocol", "nchan"])
        .args(["--url", &format!("ws://127.0.0.1:{port}/sub/{{channel}}")])
        .args([
            "--publish-url",
            &format!("http://127.0.0.1:{port}/pub/{{channel}}"),
        ])
        .args(["--stages", stages, "--connect-rate", &format!("{rate}/s")])
        .args(["--source-addrs", "127.0.0.1-127.0.0.8"])
        .args(["--channels", "100", "--rate", "10"])
        .args(["--publishers", &PUBLISHERS.to_string(), "--grace", "2s"])
        .args(["--heartbeat", &format!("{heartbeat}s")])
        .arg("--out")
        .arg(out)
        .stdout(Stdio::null())
        .stderr(Stdio::inherit());
    cmd
}

fn num(v: &Value, path: &str) -> f64 {
    v.pointer(path).and_then(Value::as_f64).unwrap_or(f64::NAN)
}

pub fn run(args: &[String]) -> Result<()> {
    let (mut n, mut hold, mut rate, mut workers, mut heartbeat) =
        (100_000u64, 60u64, 20_000u64, 0u64, 5u64);
    let mut warm = false;
    let mut it = args.iter();
    while let Some(k) = it.next() {
        if k == "--warm" {
            warm = true;
            continue;
        }
        let v: u64 = it
            .next()
            .and_then(|v| v.parse().ok())
            .with_context(|| format!("{k} needs a number"))?;
        match k.as_str() {
            "--connections" => n = v,
            "--hold" => hold = v,
            "--connect-rate" => rate = v,
            "--workers" => workers = v,
            "--heartbeat" => heartbeat = v,
            _ => bail!("unknown option {k}: use --connections N, --hold SECONDS, --connect-rate N, --workers W, --heartbeat SECONDS, --warm"),
        }
    }
    if unsafe { libc_geteuid() } != 0 {
        bail!("bench scale attaches the observer: run it as root");
    }
    if workers == 0 {
        workers = n.div_ceil(CONNS_PER_WORKER).max(1);
    }
    util::cargo(&[
        "build",
        "--release",
        "-p",
        "probe-user",
        "-p",
        "loadgen",
        "--bins",
    ])?;
    let dir = bench_dir().join("scale");
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir)?;
    let port = util::free_port()?;
    let nginx = start_nginx(&dir.join("nginx"), workers, port)?;
    let master = nginx.0.id();
    eprintln!("bench scale: nginx + nchan, {workers} workers, port {port}; {n} subscribers, hold {hold} s, heartbeat {heartbeat} s");

    if warm {
        // A first ramp of as many subscribers, closed again: NGINX keeps
        // the memory it touched (glibc does not hand it back), so the
        // measured ramp no longer pays the first touch of NGINX's
        // per-connection memory — slow in a VM (a host page fault each).
        eprintln!("bench scale: warming NGINX with a first ramp of {n}");
        let st = load_cmd(
            port,
            &format!("{n}:1s"),
            rate,
            heartbeat,
            &dir.join("warm-up"),
        )
        .status()
        .context("running the warm-up load")?;
        if !st.success() {
            bail!("the warm-up load failed ({st})");
        }
        std::thread::sleep(Duration::from_secs(3));
    }
    let obs_dir = dir.join("observe");
    let observer = Guard(
        Command::new(util::release_bin("pushscope"))
            .args(["observe", "--pid", &master.to_string(), "--out"])
            .arg(&obs_dir)
            .stdout(Stdio::null())
            .spawn()
            .context("starting pushscope observe")?,
    );
    // Attached once its summary directory exists… the observer prints
    // nothing, so give it a bounded moment and check it is alive.
    std::thread::sleep(Duration::from_secs(3));
    let obs_pid = observer.0.id();
    if !Path::new(&format!("/proc/{obs_pid}")).exists() {
        bail!("pushscope observe exited at attach");
    }

    let (overflows0, drops0) = listen_drops();
    let tcp_mem0 = tcp_mem_bytes();
    let nginx_rss0 = tree_rss_bytes(master);
    let metrics = format!("127.0.0.1:{}", util::free_port()?);
    let load_dir = dir.join("load");
    let stages = format!("{n}:{hold}s");
    let load_started = Instant::now();
    let mut load = Guard(
        load_cmd(port, &stages, rate, heartbeat, &load_dir)
            .args(["--metrics", &metrics])
            .spawn()
            .context("starting pushscope load")?,
    );
    let load_pid = load.0.id();
    let ramp0 = RampCpu::now(master, load_pid, obs_pid);
    // Held: the live endpoint says every subscriber is connected.
    wait_held(&mut load, &metrics, n, "pushscope load")?;
    let held_at = Instant::now();
    // Read while held: the load's shard workers (children) still live.
    let ramp1 = RampCpu::now(master, load_pid, obs_pid);
    // NGINX's memory once every connection is up: what the connections
    // cost; what it gains while they are held (nchan's message buffers) apart.
    let nginx_rss_held = tree_rss_bytes(master);
    // Measure over most of the hold, leaving its first seconds to settle.
    std::thread::sleep(Duration::from_secs(2));
    let (cpu0, t0) = (util::cpu_ns(obs_pid), Instant::now());
    let window = Duration::from_secs(hold.saturating_sub(6).max(5));
    std::thread::sleep(window);
    let observer_cpu_pct =
        (util::cpu_ns(obs_pid) - cpu0) as f64 / t0.elapsed().as_nanos() as f64 * 100.0;
    let observer_rss = util::rss_kib(obs_pid).unwrap_or(0) * 1024;
    let loadgen_rss = tree_rss_bytes(load_pid);
    let nginx_rss = tree_rss_bytes(master);
    let tcp_mem = tcp_mem_bytes();
    let still = util::live_connections(&metrics).unwrap_or(0);
    // The load ends by itself after the hold and grace.
    let status = wait_end(&mut load, Duration::from_secs(hold + 120), "pushscope load")?;
    drop(load);
    let (overflows1, drops1) = listen_drops();
    drop(observer); // SIGINT: writes its summary
    drop(nginx);
    let floor = connect_floor(n)?;
    let load_on_floor = load_on_floor(n, rate, heartbeat, &dir.join("load-on-floor"))?;
    let load_summary: Value = serde_json::from_slice(
        &std::fs::read(load_dir.join("summary.json")).context("reading the load's summary.json")?,
    )?;
    let obs_summary: Value = serde_json::from_slice(
        &std::fs::read(obs_dir.join("summary.json"))
            .context("reading the observer's summary.json")?,
    )?;
    let st = &load_summary["stages"][0];
    let opened = num(st, "/connections/opened");
    let ramp_s = num(st, "/ramp_s");
    let connect_rate = n as f64 / ramp_s;
    let accepted = num(&obs_summary, "/observer/coverage/accepted");
    let tracked_open = num(&obs_summary, "/observe/details/open_connections").max(opened);
    let per = |bytes: u64| bytes as f64 / n as f64;
    // µs of CPU per new connection, each side, over load start → held.
    let us_per_conn = |a: u64, b: u64| b.saturating_sub(a) as f64 / 1e3 / n as f64;
    let ramp_nginx_us = us_per_conn(ramp0.nginx, ramp1.nginx);
    let ramp_load_us = us_per_conn(ramp0.load, ramp1.load);
    let ramp_observer_us = us_per_conn(ramp0.observer, ramp1.observer);
    let machine_total = ramp1.machine.2.saturating_sub(ramp0.machine.2).max(1) as f64;
    let ramp_busy_pct =
        ramp1.machine.0.saturating_sub(ramp0.machine.0) as f64 / machine_total * 100.0;
    let ramp_softirq_pct =
        ramp1.machine.1.saturating_sub(ramp0.machine.1) as f64 / machine_total * 100.0;
    let figures = json!({
        "connections": n,
        "nginx_workers": workers,
        "hold_s": hold,
        "heartbeat_s": heartbeat,
        "nginx_warmed_by_a_first_ramp": warm,
        "load_exit": status.code(),
        "held_at_s": held_at.duration_since(load_started).as_secs_f64(),
        "upgraded": opened,
        "still_connected_at_hold_end": still,
        "failed": num(st, "/connections/failed"),
        "failed_by_reason": st["failed_by_reason"],
        "unexpected_disconnects": num(st, "/connections/unexpected_disconnects"),
        "disconnects_by_reason": st["disconnects_by_reason"],
        "ramp_s": ramp_s,
        "connect_rate_per_s": connect_rate,
        "ramp_cpu_us_per_connection": {
            "nginx": ramp_nginx_us,
            "load_generator": ramp_load_us,
            "observer": ramp_observer_us,
        },
        "ramp_machine_busy_pct": ramp_busy_pct,
        "ramp_machine_softirq_pct": ramp_softirq_pct,
        "lost": num(st, "/messages/lost"),
        "observer_accepted": accepted,
        "observer_coverage_pct": num(&obs_summary, "/observer/coverage/pct"),
        "observer_drops": num(&obs_summary, "/observer/drops"),
        "observer_cpu_pct_of_core_while_held": observer_cpu_pct,
        "observer_rss_bytes": observer_rss,
        "observer_rss_per_connection_bytes": observer_rss as f64 / tracked_open.max(1.0),
        "loadgen_rss_bytes": loadgen_rss,
        "loadgen_rss_per_connection_bytes": per(loadgen_rss),
        "nginx_rss_per_connection_bytes": per(nginx_rss_held.saturating_sub(nginx_rss0)),
        "nginx_rss_growth_while_held_bytes": nginx_rss.saturating_sub(nginx_rss_held),
        "kernel_tcp_mem_per_connection_bytes": per(tcp_mem.saturating_sub(tcp_mem0)),
        "listen_overflows": overflows1 - overflows0,
        "listen_drops": drops1 - drops0,
        "ramp_floor": floor,
        "load_generator_ramp_against_floor_servers": load_on_floor,
    });
    std::fs::write(
        bench_dir().join("scale.json"),
        serde_json::to_vec_pretty(&figures)?,
    )?;
    let ok = |b: bool| if b { "met" } else { "MISSED" };
    println!(
        "\nbench scale: {n} subscribers on NGINX + nchan ({workers} workers, {}), held {hold} s, heartbeat {heartbeat} s",
        if warm { "warmed by a first ramp" } else { "cold" }
    );
    println!("{:<44} {:>14}  target", "figure", "value");
    let row = |name: &str, v: String, target: String| println!("{name:<44} {v:>14}  {target}");
    row(
        "upgraded",
        format!("{opened:.0}"),
        format!("{n} ({})", ok(opened as u64 == n)),
    );
    row(
        "failed",
        format!("{:.0}", num(st, "/connections/failed")),
        "0".into(),
    );
    row(
        "unexpected disconnects (heartbeats lost…)",
        format!("{:.0}", num(st, "/connections/unexpected_disconnects")),
        "0".into(),
    );
    row(
        "ramp (new connections/s)",
        format!("{connect_rate:.0}"),
        format!(
            "≥ {TARGET_CONNECT_RATE:.0} ({})",
            ok(connect_rate >= TARGET_CONNECT_RATE)
        ),
    );
    row(
        "ramp CPU per new connection: nginx / load / observer",
        format!("{ramp_nginx_us:.0} / {ramp_load_us:.0} / {ramp_observer_us:.0} µs"),
        "reported".into(),
    );
    let floor_rate = num(&floor, "/connections_per_s");
    let cores = std::thread::available_parallelism().map_or(1, |c| c.get()) as f64;
    row(
        "ramp floor: kernel alone, no work (conns/s)",
        format!("{floor_rate:.0}"),
        format!("ramp = {:.0} % of it", connect_rate / floor_rate * 100.0),
    );
    row(
        "floor CPU per connection: server / client",
        format!(
            "{:.0} / {:.0} µs",
            num(&floor, "/server_cpu_us_per_connection"),
            num(&floor, "/client_cpu_us_per_connection")
        ),
        format!(
            "{TARGET_CONNECT_RATE:.0}/s on {cores} cores leaves {:.0} µs in all",
            cores * 1e6 / TARGET_CONNECT_RATE
        ),
    );
    row(
        "load generator alone: ramp against floor servers",
        format!("{:.0}", num(&load_on_floor, "/connect_rate_per_s")),
        format!(
            "{:.0} µs per connection",
            num(&load_on_floor, "/load_generator_cpu_us_per_connection")
        ),
    );
    row(
        "machine busy during the ramp (softirq apart)",
        format!("{ramp_busy_pct:.0} % ({ramp_softirq_pct:.0} %)"),
        "reported".into(),
    );
    row(
        "listen overflows / drops",
        format!("{} / {}", overflows1 - overflows0, drops1 - drops0),
        "0".into(),
    );
    row(
        "observer accepted (all workers)",
        format!("{accepted:.0}"),
        format!(
            "{n}..{} ({})",
            n + EXTRA_ACCEPTS,
            ok((n as f64..=(n + EXTRA_ACCEPTS) as f64).contains(&accepted))
        ),
    );
    row(
        "observer coverage %",
        format!("{:.3}", num(&obs_summary, "/observer/coverage/pct")),
        "100".into(),
    );
    row(
        "observer ring drops",
        format!("{:.0}", num(&obs_summary, "/observer/drops")),
        "0".into(),
    );
    row(
        "observer CPU while held (% of a core)",
        format!("{observer_cpu_pct:.2}"),
        format!(
            "≤ {TARGET_OBSERVER_CPU_PCT} ({})",
            ok(observer_cpu_pct <= TARGET_OBSERVER_CPU_PCT)
        ),
    );
    row(
        "observer RSS per tracked connection",
        format!("{:.0} B", observer_rss as f64 / tracked_open.max(1.0)),
        "reported".into(),
    );
    row(
        "loadgen RSS per connection",
        format!("{:.0} B", per(loadgen_rss)),
        format!(
            "≤ {TARGET_LOADGEN_BYTES_PER_CONN:.0} B ({})",
            ok(per(loadgen_rss) <= TARGET_LOADGEN_BYTES_PER_CONN)
        ),
    );
    row(
        "nginx RSS per connection (all up)",
        format!("{:.0} B", per(nginx_rss_held.saturating_sub(nginx_rss0))),
        "reported".into(),
    );
    row(
        "nginx RSS growth while held",
        format!(
            "{:.1} MiB",
            nginx_rss.saturating_sub(nginx_rss_held) as f64 / (1 << 20) as f64
        ),
        "reported".into(),
    );
    row(
        "kernel TCP memory per connection",
        format!("{:.0} B", per(tcp_mem.saturating_sub(tcp_mem0))),
        "reported".into(),
    );
    println!("figures: {}", bench_dir().join("scale.json").display());
    Ok(())
}

/// Waits until a load's live endpoint says `n` connections are up (its
/// ramp takes at most 120 s + 1 s per 1,000); fails if the load exits first.
fn wait_held(load: &mut Guard, metrics: &str, n: u64, what: &str) -> Result<()> {
    let limit = Duration::from_secs(120 + n / 1000);
    let deadline = Instant::now() + limit;
    while util::live_connections(metrics).is_none_or(|c| c < n) {
        if let Some(st) = load.0.try_wait()? {
            bail!("{what} exited ({st}) before holding {n} connections");
        }
        if Instant::now() > deadline {
            bail!("{what}: {n} connections were not held within {limit:?}");
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    Ok(())
}

/// Waits at most `limit` for a load to end by itself; its exit status.
fn wait_end(load: &mut Guard, limit: Duration, what: &str) -> Result<std::process::ExitStatus> {
    let deadline = Instant::now() + limit;
    loop {
        if let Some(st) = load.0.try_wait()? {
            return Ok(st);
        }
        if Instant::now() > deadline {
            bail!("{what} did not end within {limit:?}");
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// `pushscope load` ramping `n` subscribers against the floor's servers
/// (no work on the server side, nothing published): the load generator's
/// own connect rate and CPU per connection on this host.
fn load_on_floor(n: u64, rate: u64, heartbeat: u64, out: &Path) -> Result<Value> {
    eprintln!("bench scale: the load generator alone, {n} subscribers against floor servers");
    let port = util::free_port()?;
    let mut servers = Vec::new();
    for _ in 0..n.div_ceil(14_000).max(1) {
        let mut s = Guard(
            Command::new(util::release_bin("pushscope-loadgen"))
                .args(["connect-floor", "--serve-port", &port.to_string()])
                .stdout(Stdio::piped())
                .spawn()
                .context("starting a floor server")?,
        );
        let mut line = String::new();
        let stdout = s.0.stdout.take().context("floor server stdout")?;
        std::io::BufRead::read_line(&mut std::io::BufReader::new(stdout), &mut line)?;
        if line.trim() != "listening" {
            bail!("a floor server did not start (it said {line:?})");
        }
        servers.push(s);
    }
    let metrics = format!("127.0.0.1:{}", util::free_port()?);
    let mut load = Guard(
        Command::new(util::release_bin("pushscope"))
            .args(["load", "--protocol", "generic"])
            .args(["--url", &format!("ws://127.0.0.1:{port}/sub/{{channel}}")])
            // nothing is published (rate 0): the URL is never used
            .args(["--publish-url", "http://127.0.0.1:9/pub/{channel}"])
            .args(["--stages", &format!("{n}:2s")])
            .args(["--connect-rate", &format!("{rate}/s")])
            .args(["--source-addrs", "127.0.0.1-127.0.0.8"])
            .args(["--channels", "100", "--rate", "0", "--grace", "0s"])
            .args(["--heartbeat", &format!("{heartbeat}s")])
            .args(["--metrics", &metrics])
            .arg("--out")
            .arg(out)
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .context("starting pushscope load against the floor servers")?,
    );
    let pid = load.0.id();
    let servers_cpu = || -> u64 { servers.iter().map(|s| util::cpu_ns(s.0.id())).sum() };
    let (load0, servers0) = (tree_cpu_ns(pid), servers_cpu());
    let what = "pushscope load against the floor servers";
    wait_held(&mut load, &metrics, n, what)?;
    let (load1, servers1) = (tree_cpu_ns(pid), servers_cpu());
    wait_end(&mut load, Duration::from_secs(60), what)?;
    let summary: Value = serde_json::from_slice(
        &std::fs::read(out.join("summary.json")).context("reading the load's summary.json")?,
    )?;
    let st = &summary["stages"][0];
    let per = |a: u64, b: u64| b.saturating_sub(a) as f64 / 1e3 / n as f64;
    Ok(json!({
        "upgraded": num(st, "/connections/opened"),
        "failed": num(st, "/connections/failed"),
        "ramp_s": num(st, "/ramp_s"),
        "connect_rate_per_s": n as f64 / num(st, "/ramp_s"),
        "load_generator_cpu_us_per_connection": per(load0, load1),
        "floor_servers_cpu_us_per_connection": per(servers0, servers1),
    }))
}

/// `pushscope-loadgen connect-floor` of `n` connections: its JSON figures.
fn connect_floor(n: u64) -> Result<Value> {
    eprintln!("bench scale: the ramp's floor, {n} connections with no work on either side");
    let out = Command::new(util::release_bin("pushscope-loadgen"))
        .args(["connect-floor", "--connections", &n.to_string()])
        .stderr(Stdio::inherit())
        .output()
        .context("running pushscope-loadgen connect-floor")?;
    if !out.status.success() {
        bail!("pushscope-loadgen connect-floor failed ({})", out.status);
    }
    serde_json::from_slice(&out.stdout).context("reading connect-floor's figures")
}

extern "C" {
    #[link_name = "geteuid"]
    fn libc_geteuid() -> u32;
}
