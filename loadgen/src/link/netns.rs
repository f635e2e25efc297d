//! A network namespace held only by a file descriptor: created by
//! `unshare(CLONE_NEWNET)` on a short-lived thread (the process itself never
//! leaves the host namespace) and never bind-mounted, so it vanishes with
//! the last fd, i.e. at the latest when the process dies, however it dies.
//! Sockets join it by being *created* on a thread that is in it
//! ([`NetNs::enter`]); a socket stays in the namespace it was created in.

use std::{
    fs::File,
    io,
    os::fd::{AsFd, AsRawFd, OwnedFd},
    path::Path,
};

/// A handle on a network namespace (an open `nsfs` file).
#[derive(Debug)]
pub struct NetNs {
    fd: OwnedFd,
    ino: u64,
}

impl NetNs {
    /// A new, empty network namespace (only a `lo`, down).
    pub fn new_isolated() -> io::Result<NetNs> {
        std::thread::Builder::new()
            .name("pushscope-netns".into())
            .spawn(|| -> io::Result<NetNs> {
                // SAFETY: unshare only changes this thread's namespaces; the
                // thread ends right after, holding nothing.
                if unsafe { libc::unshare(libc::CLONE_NEWNET) } != 0 {
                    return Err(io::Error::last_os_error());
                }
                NetNs::open(Path::new("/proc/thread-self/ns/net"))
            })?
            .join()
            .map_err(|_| io::Error::other("netns thread panicked"))?
    }

    /// The namespace of the calling thread.
    pub fn current() -> io::Result<NetNs> {
        NetNs::open(Path::new("/proc/thread-self/ns/net"))
    }

    /// A namespace by path (`/proc/<pid>/fd/<fd>`, `/proc/<pid>/task/<tid>/ns/net`).
    pub fn open(path: &Path) -> io::Result<NetNs> {
        use std::os::unix::fs::MetadataExt;
        let f = File::open(path)?;
        let ino = f.metadata()?.ino();
        Ok(NetNs { fd: f.into(), ino })
    }

    /// A path another process (a shard worker) can open to join this
    /// namespace while this process lives: `/proc/<pid>/fd/<fd>`.
    pub fn proc_path(&self) -> String {
        format!("/proc/{}/fd/{}", std::process::id(), self.fd.as_raw_fd())
    }

    /// Inode of the namespace: equal inodes, same namespace.
    pub fn inode(&self) -> u64 {
        self.ino
    }

    /// Moves the calling thread into this namespace (for good).
    pub fn enter(&self) -> io::Result<()> {
        // SAFETY: setns on an nsfs fd we own; only this thread's network
        // namespace changes.
        if unsafe { libc::setns(self.fd.as_fd().as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    }

    /// Runs `f` with the calling thread in this namespace, then moves it
    /// back: a socket created in `f` lives in this namespace. Used on
    /// shared runtime threads, which must stay in the host namespace
    /// otherwise (a process spawned from one would inherit the link's).
    pub fn with_entered<T>(&self, f: impl FnOnce() -> T) -> io::Result<T> {
        let home = NetNs::current()?;
        if home.ino == self.ino {
            return Ok(f());
        }
        self.enter()?;
        let out = f();
        // Cannot fail for a namespace we were just in; if it did, this
        // thread would stay in the link's namespace: say so loudly.
        home.enter().map_err(|e| {
            io::Error::other(format!("cannot return to the host network namespace: {e}"))
        })?;
        Ok(out)
    }

    /// Runs `f` on a new thread inside this namespace (configuration:
    /// processes spawned there, e.g. `ip`, inherit the namespace).
    pub fn run_in<T: Send>(&self, f: impl FnOnce() -> io::Result<T> + Send) -> io::Result<T> {
        std::thread::scope(|s| {
            s.spawn(|| {
                self.enter()?;
                f()
            })
            .join()
            .map_err(|_| io::Error::other("netns thread panicked"))?
        })
    }
}
