//! `kill-restart`: SIGKILL the target and every descendant, keep it down
//! for the fault's `duration`, then run `restart_cmd` (`sh -c`, in its own
//! session, stdout and stderr to `restart-<n>.log` in the run's output
//! directory) and find the new target: the topmost process that listens on
//! the target's port again (bounded by `wait_listen`, default 10 s; a clear
//! error if none). The new PID replaces the target for later faults and is
//! handed to the run's restart hook (the observer re-attaches to it).

use super::{FaultDefaults, FaultEnv, FaultOutcome, Injector, Keys, RestartHook, TargetPid};
use crate::clock::mono_ns;
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use serde::{Deserialize, Serialize};
use std::{path::PathBuf, time::Duration};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Spec {
    /// Shell command that starts the target again.
    pub restart_cmd: String,
    /// Longest wait for the restarted target to listen.
    #[serde(with = "crate::scenario::dur_secs")]
    pub wait_listen: Duration,
}

impl Spec {
    pub fn parse(keys: &mut Keys, defaults: &FaultDefaults) -> Result<Spec, String> {
        let restart_cmd = keys
            .take_str("restart_cmd")?
            .or_else(|| defaults.restart_cmd.clone())
            .filter(|c| !c.trim().is_empty())
            .ok_or_else(|| {
                "needs the command that starts the target again: pass --restart-cmd \"…\" (or restart_cmd in the fault)".to_string()
            })?;
        let wait_listen = keys
            .take_duration("wait_listen")?
            .unwrap_or(Duration::from_secs(10));
        Ok(Spec {
            restart_cmd,
            wait_listen,
        })
    }
}

pub struct KillRestart {
    spec: Spec,
    index: usize,
    target: TargetPid,
    port: u16,
    log: PathBuf,
    hook: Option<RestartHook>,
    before_kill: Option<std::sync::Arc<dyn Fn(u32) + Send + Sync>>,
    killed: Option<u32>,
    killed_at: Option<u64>,
    new_pid: Option<u32>,
    restart_ms: Option<f64>,
    reattached: Option<Result<(), String>>,
    restarted: bool,
    /// PID of the restart command's shell (the server itself when it `exec`s).
    shell: Option<u32>,
}

impl KillRestart {
    pub fn new(spec: Spec, index: usize, env: &FaultEnv) -> Result<KillRestart, String> {
        let port = env.target_port.ok_or_else(|| {
            format!("fault {} (kill-restart): the target's port is not known from --url, so its restart cannot be found", index + 1)
        })?;
        Ok(KillRestart {
            spec,
            index,
            target: env.target.clone(),
            port,
            log: env.out_dir.join(format!("restart-{}.log", index + 1)),
            hook: env.on_restart.clone(),
            before_kill: env.before_kill.clone(),
            killed: None,
            killed_at: None,
            new_pid: None,
            restart_ms: None,
            reattached: None,
            restarted: false,
            shell: None,
        })
    }

    /// Runs the restart command and waits for a new listener on the port.
    fn restart(&mut self) -> Result<(), String> {
        use std::os::unix::process::CommandExt;
        if let Some(dir) = self.log.parent() {
            let _ = std::fs::create_dir_all(dir);
        }
        let log = std::fs::File::create(&self.log)
            .map_err(|e| format!("cannot create {}: {e}", self.log.display()))?;
        let err = log
            .try_clone()
            .map_err(|e| format!("{}: {e}", self.log.display()))?;
        let t = mono_ns();
        // The shell waits for a line on its stdin before it runs the
        // command (then stdin is /dev/null), so the observer follows it
        // (and, through fork, whatever it starts) before the restarted
        // server can accept its first connection. `eval`: a command that
        // `exec`s the server keeps the shell's PID.
        let mut cmd = std::process::Command::new("sh");
        cmd.args([
            "-c",
            "read -r _; exec </dev/null; eval \"$1\"",
            "pushscope-restart",
            &self.spec.restart_cmd,
        ])
        .stdin(std::process::Stdio::piped())
        .stdout(log)
        .stderr(err);
        // Its own session: a Ctrl-C to pushscope's terminal does not reach
        // the restarted server, as it would not have reached the original.
        // SAFETY: setsid is async-signal-safe, called between fork and exec.
        unsafe {
            cmd.pre_exec(|| {
                nix::unistd::setsid()
                    .map(drop)
                    .map_err(std::io::Error::from)
            });
        }
        let mut child = cmd
            .spawn()
            .map_err(|e| format!("cannot run --restart-cmd `{}`: {e}", self.spec.restart_cmd))?;
        let shell = child.id();
        self.shell = Some(shell);
        let mut followed = None;
        if let Some(h) = &self.hook {
            let r = h(shell);
            if r.is_ok() {
                followed = Some(shell);
            }
            self.reattached = Some(r);
        }
        if let Some(mut go) = child.stdin.take() {
            use std::io::Write;
            // The shell goes on (also if this fails: EOF ends its read).
            let _ = go.write_all(b"\n");
        }
        // Reaped in the background: the command may exit at once (it
        // daemonizes) or run as the server itself until the end.
        std::thread::spawn(move || drop(child.wait()));
        self.restarted = true;
        let until = std::time::Instant::now() + self.spec.wait_listen;
        let old = self.killed;
        let (mut looks, mut slowest) = (0u32, Duration::ZERO);
        let pid = loop {
            let scan = super::proc::scan_listeners(self.port);
            looks += 1;
            slowest = slowest.max(scan.took);
            match scan.listener {
                Some(p) if Some(p) != old => break p,
                _ => {}
            }
            if std::time::Instant::now() >= until {
                // What the looks saw: the next failure names its cause.
                return Err(format!(
                    "nothing listened on port {} within {:.1}s of --restart-cmd `{}` (shell PID {shell}, {}; its output: {}); last of {looks} looks (slowest {:.0} ms): {scan}",
                    self.port,
                    self.spec.wait_listen.as_secs_f64(),
                    self.spec.restart_cmd,
                    match super::proc::state(shell) {
                        Some(s) => format!("state {s}"),
                        None => "gone".into(),
                    },
                    self.log.display(),
                    slowest.as_secs_f64() * 1e3,
                ));
            }
            std::thread::sleep(Duration::from_millis(10));
        };
        self.restart_ms = Some(mono_ns().saturating_sub(t) as f64 / 1e6);
        self.new_pid = Some(pid);
        self.target.set(pid);
        // `exec` in the command: the shell is the server, already followed.
        if let (Some(h), true) = (&self.hook, followed != Some(pid)) {
            self.reattached = Some(h(pid));
        }
        Ok(())
    }
}

impl Injector for KillRestart {
    fn start(&mut self) -> Result<(), String> {
        let pid = self
            .target
            .get()
            .ok_or("no target PID to kill".to_string())?;
        let tree = super::proc::tree(pid);
        if let Some(h) = &self.before_kill {
            h(pid);
        }
        kill(Pid::from_raw(pid as i32), Signal::SIGKILL)
            .map_err(|e| format!("SIGKILL to PID {pid}: {e}"))?;
        self.killed = Some(pid);
        self.killed_at = Some(mono_ns());
        for p in tree.into_iter().skip(1) {
            let _ = kill(Pid::from_raw(p as i32), Signal::SIGKILL);
        }
        // Dead (a zombie until its parent reaps it): its sockets are closed.
        let until = std::time::Instant::now() + Duration::from_secs(5);
        while matches!(super::proc::state(pid), Some(s) if s != 'Z' && s != 'X') {
            if std::time::Instant::now() >= until {
                return Err(format!("PID {pid} still runs 5 s after SIGKILL"));
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        Ok(())
    }

    fn end(&mut self) -> Result<(), String> {
        if self.restarted || self.killed.is_none() {
            return Ok(());
        }
        self.restart()
    }

    fn outcome(&self, out: &mut FaultOutcome) {
        out.new_pid = self.new_pid;
        out.restart_ms = self.restart_ms;
        if let Some(k) = self.killed {
            out.extra.insert("killed_pid".into(), serde_json::json!(k));
        }
        // Also when no listener was found: what to stop afterwards.
        if let Some(sh) = self.shell {
            out.extra
                .insert("restart_shell_pid".into(), serde_json::json!(sh));
        }
        out.extra.insert(
            "restart_log".into(),
            serde_json::json!(self.log.display().to_string()),
        );
        match &self.reattached {
            Some(Ok(())) => out.observer_reattached = Some(true),
            Some(Err(e)) => {
                out.observer_reattached = Some(false);
                out.notes.push(format!(
                    "fault {}: the observer did not follow the restarted target: {e}",
                    self.index + 1
                ));
            }
            None => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kills_restarts_and_finds_the_new_listener() {
        let dir = tempfile::tempdir().unwrap();
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = l.local_addr().unwrap().port();
        drop(l);
        // A "server": python-free, a shell that execs a listener we can find.
        let serve = format!(
            "exec {} -c 'import socket,time;s=socket.socket();s.setsockopt(socket.SOL_SOCKET,socket.SO_REUSEADDR,1);s.bind((\"127.0.0.1\",{port}));s.listen();time.sleep(30)'",
            "python3"
        );
        if std::process::Command::new("python3")
            .arg("-V")
            .output()
            .is_err()
        {
            eprintln!("skipped: no python3 for a throwaway listener");
            return;
        }
        let mut first = std::process::Command::new("sh")
            .args(["-c", &serve])
            .spawn()
            .unwrap();
        let t0 = std::time::Instant::now();
        while super::super::proc::listener(port) != Some(first.id()) {
            assert!(t0.elapsed() < Duration::from_secs(10));
            std::thread::sleep(Duration::from_millis(10));
        }
        let seen = std::sync::Arc::new(std::sync::Mutex::new(None));
        let s2 = seen.clone();
        let env = FaultEnv {
            target: TargetPid::new(Some(first.id())),
            target_port: Some(port),
            out_dir: dir.path().to_path_buf(),
            on_restart: Some(std::sync::Arc::new(move |p| {
                *s2.lock().unwrap() = Some(p);
                Ok(())
            })),
            before_kill: None,
            link: None,
            control: None,
        };
        let spec = Spec {
            restart_cmd: serve.clone(),
            wait_listen: Duration::from_secs(10),
        };
        let mut k = KillRestart::new(spec, 0, &env).unwrap();
        k.start().unwrap();
        let status = first.wait().unwrap();
        assert!(!status.success());
        k.end().unwrap();
        let new = env.target.get().unwrap();
        assert_ne!(new, first.id());
        assert_eq!(*seen.lock().unwrap(), Some(new));
        assert_eq!(super::super::proc::listener(port), Some(new));
        let mut o = FaultOutcome::default();
        k.outcome(&mut o);
        assert_eq!((o.new_pid, o.observer_reattached), (Some(new), Some(true)));
        assert!(o.restart_ms.unwrap() < 10_000.0);
        let _ = kill(Pid::from_raw(new as i32), Signal::SIGKILL);
    }
}
