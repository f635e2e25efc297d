//! TUN devices (`/dev/net/tun`, `IFF_TUN | IFF_NO_PI`: raw IP packets) and
//! their configuration with `ip`. The devices are not persistent: the
//! kernel deletes one, and every route through it, when its fd closes.

use std::{
    fs::{File, OpenOptions},
    io,
    os::{fd::AsRawFd, unix::fs::OpenOptionsExt},
    process::Command,
};

/// `TUNSETIFF` = `_IOW('T', 202, int)` (include/uapi/linux/if_tun.h).
const TUNSETIFF: libc::c_ulong = 0x4004_54ca;
const IFF_TUN: libc::c_short = 0x0001;
const IFF_NO_PI: libc::c_short = 0x1000;

/// `struct ifreq` as TUNSETIFF reads it: name, flags, padding to 40 bytes.
#[repr(C)]
struct IfReq {
    name: [u8; libc::IFNAMSIZ],
    flags: libc::c_short,
    _pad: [u8; 22],
}

/// One TUN device, open non-blocking.
#[derive(Debug)]
pub struct Tun {
    pub file: File,
    pub name: String,
}

impl Tun {
    /// Creates `name` in the calling thread's network namespace.
    pub fn create(name: &str) -> io::Result<Tun> {
        if name.len() >= libc::IFNAMSIZ {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("interface name {name} is too long"),
            ));
        }
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .custom_flags(libc::O_NONBLOCK | libc::O_CLOEXEC)
            .open("/dev/net/tun")?;
        let mut req = IfReq {
            name: [0; libc::IFNAMSIZ],
            flags: IFF_TUN | IFF_NO_PI,
            _pad: [0; 22],
        };
        req.name[..name.len()].copy_from_slice(name.as_bytes());
        // SAFETY: TUNSETIFF reads a struct ifreq; ours has its layout and size.
        if unsafe { libc::ioctl(file.as_raw_fd(), TUNSETIFF, &mut req) } != 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(Tun {
            file,
            name: name.to_string(),
        })
    }

    /// Brings the device up for IPv4 only: IPv6 off (no router
    /// solicitations through the link), loopback addresses allowed
    /// through it (`route_localnet`: the target may listen on 127.0.0.1),
    /// no reverse-path filter, a deep transmit queue.
    pub fn configure(&self) -> io::Result<()> {
        let dev = &self.name;
        sysctl(&format!("net/ipv6/conf/{dev}/disable_ipv6"), "1").ok();
        sysctl(&format!("net/ipv4/conf/{dev}/route_localnet"), "1")?;
        sysctl(&format!("net/ipv4/conf/{dev}/rp_filter"), "0")?;
        ip(&[
            "link",
            "set",
            "dev",
            dev,
            "mtu",
            "1500",
            "txqueuelen",
            "10000",
            "up",
        ])
    }
}

/// Writes a sysctl of the calling thread's network namespace.
pub fn sysctl(key: &str, value: &str) -> io::Result<()> {
    std::fs::write(format!("/proc/sys/{key}"), value)
        .map_err(|e| io::Error::new(e.kind(), format!("sysctl {key}={value}: {e}")))
}

/// Runs `ip ARGS` (in the calling thread's network namespace: the child
/// inherits it); its stderr becomes the error.
pub fn ip(args: &[&str]) -> io::Result<()> {
    let out = Command::new("ip").args(args).output().map_err(|e| {
        io::Error::new(
            e.kind(),
            format!("cannot run `ip` (iproute2 is needed for --network): {e}"),
        )
    })?;
    if out.status.success() {
        Ok(())
    } else {
        Err(io::Error::other(format!(
            "ip {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        )))
    }
}
