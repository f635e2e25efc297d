//! Starting NGINX + nchan for load-generator tests from the template in
//! `tests/fixtures/nchan-load.conf`: foreground (`daemon off`), loopback
//! high port, pid/log/temp paths in a temp dir; killed and reaped on drop.

use crate::ChildGuard;
use std::{
    net::TcpStream,
    path::Path,
    process::{Command, Stdio},
    time::{Duration, Instant},
};

pub const NCHAN_MODULE: &str = "/usr/lib/nginx/modules/ngx_nchan_module.so";

pub struct Nginx {
    pub guard: ChildGuard,
    pub port: u16,
    pub dir: tempfile::TempDir,
    /// Serving TLS (wss://, https://) with OpenSSL.
    pub tls: bool,
}

/// True when nginx and the nchan module are installed (CI installs them).
pub fn available() -> bool {
    Path::new(NCHAN_MODULE).exists()
        && Command::new("nginx")
            .arg("-v")
            .stderr(Stdio::null())
            .status()
            .is_ok()
}

impl Nginx {
    pub fn start(workers: u32) -> anyhow::Result<Nginx> {
        Nginx::start_with(workers, None, false, "")
    }

    /// For tens of thousands of connections: one listening socket per
    /// worker (`reuseport`), so the kernel spreads connections evenly and
    /// no worker goes past its fd limit.
    pub fn start_scale(workers: u32) -> anyhow::Result<Nginx> {
        Nginx::start_with(workers, None, true, "")
    }

    /// The same server over TLS (OpenSSL) with this certificate and key.
    pub fn start_tls(workers: u32, cert: &str, key: &str) -> anyhow::Result<Nginx> {
        Nginx::start_with(workers, Some((cert, key)), false, "")
    }

    /// TLS with client certificates required (mTLS): a handshake without
    /// a certificate signed by one of the CAs in `client_ca_bundle` (PEM,
    /// one or more CAs) fails.
    pub fn start_mtls(
        workers: u32,
        cert: &str,
        key: &str,
        client_ca_bundle: &str,
    ) -> anyhow::Result<Nginx> {
        let verify = format!(
            "ssl_verify_client on;\n        ssl_client_certificate {client_ca_bundle};\n        ssl_verify_depth 2;"
        );
        Nginx::start_with(workers, Some((cert, key)), false, &verify)
    }

    /// A shell command that makes the running master reload its
    /// configuration and certificates (`nginx -s reload`: new workers,
    /// the old ones finish gracefully).
    pub fn reload_cmd(&self) -> String {
        format!(
            "nginx -c {0}/nginx.conf -p {0} -s reload",
            self.dir.path().display()
        )
    }

    fn start_with(
        workers: u32,
        tls: Option<(&str, &str)>,
        reuseport: bool,
        more_ssl: &str,
    ) -> anyhow::Result<Nginx> {
        let dir = tempfile::tempdir()?;
        let port = crate::free_port();
        let (ssl, ssl_conf) = match tls {
            Some((cert, key)) => (
                " ssl".to_string(),
                format!("ssl_certificate {cert};\n        ssl_certificate_key {key};\n        {more_ssl}"),
            ),
            None => (String::new(), String::new()),
        };
        let conf = include_str!("../fixtures/nchan-load.conf")
            .replace("{{DIR}}", &dir.path().display().to_string())
            .replace("{{PORT}}", &port.to_string())
            .replace("{{WORKERS}}", &workers.to_string())
            .replace("{{SSL}}", &ssl)
            .replace("{{REUSEPORT}}", if reuseport { " reuseport" } else { "" })
            .replace("{{SSL_CONF}}", &ssl_conf);
        let path = dir.path().join("nginx.conf");
        std::fs::write(&path, conf)?;
        let child = Command::new("nginx")
            .arg("-c")
            .arg(&path)
            .arg("-p")
            .arg(dir.path())
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .map_err(|e| {
                anyhow::anyhow!("starting nginx: {e} (install nginx and libnginx-mod-nchan)")
            })?;
        let guard = ChildGuard {
            child,
            name: "nginx".into(),
        };
        let deadline = Instant::now() + Duration::from_secs(10);
        while TcpStream::connect(("127.0.0.1", port)).is_err() {
            anyhow::ensure!(
                Instant::now() < deadline,
                "nginx did not listen on {port}: see {}/error.log",
                dir.path().display()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        Ok(Nginx {
            guard,
            port,
            dir,
            tls: tls.is_some(),
        })
    }

    /// Sends `sig` to the master and every worker (e.g. SIGSTOP to freeze nchan).
    pub fn signal_all(&self, sig: i32) {
        let master = self.guard.pid();
        let children = std::fs::read_to_string(format!("/proc/{master}/task/{master}/children"))
            .unwrap_or_default();
        for pid in children
            .split_whitespace()
            .filter_map(|p| p.parse::<i32>().ok())
        {
            // SAFETY: kill(2) on nginx workers this test started.
            unsafe {
                libc::kill(pid, sig);
            }
        }
        self.guard.signal(sig);
    }

    pub fn sub_url(&self) -> String {
        let scheme = if self.tls { "wss" } else { "ws" };
        format!("{scheme}://127.0.0.1:{}/sub/{{channel}}", self.port)
    }

    pub fn pub_url(&self) -> String {
        let scheme = if self.tls { "https" } else { "http" };
        format!("{scheme}://127.0.0.1:{}/pub/{{channel}}", self.port)
    }
}

impl Drop for Nginx {
    fn drop(&mut self) {
        // SIGQUIT would be graceful; the guard's SIGKILL of the master is not
        // enough for workers, so stop them through the master first.
        self.guard.signal(libc::SIGTERM);
        let _ = self.guard.wait_timeout(Duration::from_secs(5));
    }
}
