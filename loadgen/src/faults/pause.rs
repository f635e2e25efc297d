//! `pause`: a stop-the-world pause of the target. SIGSTOP to the target
//! and every descendant (its workers) for the fault's duration, then
//! SIGCONT. The target is never left stopped by pushscope: `end` and
//! `Drop` continue it, and while a pause is in effect a SIGINT / SIGTERM /
//! SIGHUP handler continues every stopped process before letting the
//! signal end pushscope as it would have (only a SIGKILL of pushscope
//! itself can leave the target stopped).

use super::{FaultOutcome, Injector, TargetPid};
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use std::sync::atomic::{AtomicI32, AtomicUsize, Ordering};

pub struct Pause {
    target: TargetPid,
    /// Processes this pause stopped (to continue exactly those).
    stopped: Vec<u32>,
    /// How many it stopped (`stopped` is emptied when they are continued).
    count: usize,
}

impl Pause {
    pub fn new(target: TargetPid) -> Pause {
        Pause {
            target,
            stopped: Vec::new(),
            count: 0,
        }
    }
}

impl Injector for Pause {
    fn start(&mut self) -> Result<(), String> {
        let pid = self
            .target
            .get()
            .ok_or("no target PID to pause".to_string())?;
        install_handlers();
        // Parents first: a stopped master cannot start a new worker
        // behind our back while its children are being stopped.
        for p in super::proc::tree(pid) {
            // Registered before the signal: an interrupt between the two
            // continues a process that was never stopped (harmless).
            register(p);
            match kill(Pid::from_raw(p as i32), Signal::SIGSTOP) {
                Ok(()) => {
                    self.stopped.push(p);
                    self.count += 1;
                }
                Err(e) if p == pid => {
                    unregister(p);
                    return Err(format!("SIGSTOP to PID {p}: {e}"));
                }
                // A worker that exited meanwhile.
                Err(_) => unregister(p),
            }
        }
        Ok(())
    }

    fn end(&mut self) -> Result<(), String> {
        let mut first_err = None;
        for p in self.stopped.drain(..) {
            if let Err(e) = kill(Pid::from_raw(p as i32), Signal::SIGCONT) {
                // ESRCH: it died meanwhile; anything else is worth saying.
                if e != nix::errno::Errno::ESRCH && first_err.is_none() {
                    first_err = Some(format!("SIGCONT to PID {p}: {e}"));
                }
            }
            unregister(p);
        }
        first_err.map_or(Ok(()), Err)
    }

    fn outcome(&self, out: &mut FaultOutcome) {
        out.extra
            .insert("processes_stopped".into(), serde_json::json!(self.count));
    }
}

impl Drop for Pause {
    fn drop(&mut self) {
        let _ = self.end();
    }
}

/// Stopped PIDs, readable from a signal handler (0 = free slot).
const SLOTS: usize = 256;
static STOPPED: [AtomicI32; SLOTS] = [const { AtomicI32::new(0) }; SLOTS];

fn register(pid: u32) {
    for s in &STOPPED {
        if s.compare_exchange(0, pid as i32, Ordering::SeqCst, Ordering::SeqCst)
            .is_ok()
        {
            return;
        }
    }
    log::warn!("pause: more than {SLOTS} stopped processes; PID {pid} is not continued on Ctrl-C");
}

fn unregister(pid: u32) {
    for s in &STOPPED {
        let _ = s.compare_exchange(pid as i32, 0, Ordering::SeqCst, Ordering::SeqCst);
    }
}

/// Previous dispositions (`sa_sigaction` values) of the handled signals.
static PREV: [AtomicUsize; 3] = [const { AtomicUsize::new(0) }; 3];
const SIGNALS: [libc::c_int; 3] = [libc::SIGINT, libc::SIGTERM, libc::SIGHUP];
static INSTALLED: std::sync::Once = std::sync::Once::new();

extern "C" fn on_signal(sig: libc::c_int) {
    // Only async-signal-safe calls: kill, sigaction, raise.
    for s in &STOPPED {
        let pid = s.load(Ordering::SeqCst);
        if pid > 0 {
            // SAFETY: kill(2) is async-signal-safe.
            unsafe {
                libc::kill(pid, libc::SIGCONT);
            }
        }
    }
    let k = SIGNALS.iter().position(|s| *s == sig).unwrap_or(0);
    let prev = PREV[k].load(Ordering::SeqCst);
    // SAFETY: sigaction and raise are async-signal-safe; the previous
    // disposition is restored, then the signal is delivered again to it
    // (default: the process ends as it would have without pushscope's
    // handler).
    unsafe {
        let mut sa: libc::sigaction = std::mem::zeroed();
        sa.sa_sigaction = prev;
        libc::sigemptyset(&mut sa.sa_mask);
        libc::sigaction(sig, &sa, std::ptr::null_mut());
        libc::raise(sig);
    }
}

/// Installs the continue-on-interrupt handler once per process, keeping
/// the previous dispositions to hand the signal on.
fn install_handlers() {
    INSTALLED.call_once(|| {
        for (k, sig) in SIGNALS.iter().enumerate() {
            // SAFETY: installing a handler that only calls async-signal-safe functions.
            unsafe {
                let mut sa: libc::sigaction = std::mem::zeroed();
                sa.sa_sigaction = on_signal as *const () as usize;
                libc::sigemptyset(&mut sa.sa_mask);
                let mut old: libc::sigaction = std::mem::zeroed();
                libc::sigaction(*sig, &sa, &mut old);
                PREV[k].store(old.sa_sigaction, Ordering::SeqCst);
            }
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stops_the_tree_and_continues_it_on_end_and_drop() {
        // sh with a child: the whole tree is stopped.
        let mut sh = std::process::Command::new("sh")
            .args(["-c", "sleep 30 & wait"])
            .spawn()
            .unwrap();
        let t0 = std::time::Instant::now();
        let tree = loop {
            let t = super::super::proc::tree(sh.id());
            if t.len() >= 2 || t0.elapsed() > std::time::Duration::from_secs(5) {
                break t;
            }
            std::thread::sleep(std::time::Duration::from_millis(10));
        };
        assert_eq!(tree.len(), 2, "{tree:?}");
        let mut p = Pause::new(TargetPid::new(Some(sh.id())));
        p.start().unwrap();
        // 'T' stopped; 'S' stands for "not stopped" (running or sleeping).
        let wait_state = |pid: u32, want: char| {
            let t0 = std::time::Instant::now();
            let is = |s: Option<char>| {
                if want == 'T' {
                    s == Some('T')
                } else {
                    s != Some('T')
                }
            };
            while !is(super::super::proc::state(pid)) {
                assert!(
                    t0.elapsed() < std::time::Duration::from_secs(5),
                    "{pid} never {want}"
                );
                std::thread::sleep(std::time::Duration::from_millis(5));
            }
        };
        for &pid in &tree {
            wait_state(pid, 'T');
        }
        assert!(STOPPED
            .iter()
            .any(|s| s.load(Ordering::SeqCst) == tree[1] as i32));
        p.end().unwrap();
        for &pid in &tree {
            wait_state(pid, 'S');
        }
        assert!(!STOPPED
            .iter()
            .any(|s| s.load(Ordering::SeqCst) == tree[1] as i32));
        // Dropped while in effect: continued too.
        let mut p = Pause::new(TargetPid::new(Some(sh.id())));
        p.start().unwrap();
        wait_state(tree[1], 'T');
        drop(p);
        wait_state(tree[1], 'S');
        let _ = kill(Pid::from_raw(tree[1] as i32), Signal::SIGKILL);
        let _ = sh.kill();
        let _ = sh.wait();
    }
}
