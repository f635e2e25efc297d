//! Sharding: one process holds at most `shard_cap` connections (the fd
//! limit is 20,000 here), so bigger runs start worker processes (the same
//! binary re-executed with a hidden flag) that each run a `LocalPool`. The
//! coordinator sends `PoolCmd`s as JSON lines on the worker's stdin and reads
//! `PoolReply`s from its stdout; stage statistics come back with their HDR
//! histograms V2-serialized, so merging is exact.

use crate::pool::{LocalPool, PoolCmd, PoolReply};
use anyhow::Context;
use std::{path::PathBuf, process::Stdio};
use tokio::{
    io::{AsyncBufReadExt, AsyncWriteExt, BufReader},
    process::{Child, ChildStdin, ChildStdout, Command},
};

/// How to start a worker process: program and leading arguments.
#[derive(Debug, Clone)]
pub struct WorkerCommand {
    pub program: PathBuf,
    pub args: Vec<String>,
}

impl WorkerCommand {
    /// `<current exe> load --shard-worker` (the `pushscope` binary).
    pub fn current_exe() -> std::io::Result<WorkerCommand> {
        Ok(WorkerCommand {
            program: std::env::current_exe()?,
            args: vec!["load".into(), "--shard-worker".into()],
        })
    }
}

pub struct RemotePool {
    child: Child,
    stdin: ChildStdin,
    stdout: BufReader<ChildStdout>,
    line: String,
}

impl RemotePool {
    pub async fn spawn(cmd: &WorkerCommand, init: PoolCmd) -> anyhow::Result<RemotePool> {
        let child = Command::new(&cmd.program)
            .args(&cmd.args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .kill_on_drop(true)
            .spawn()
            .with_context(|| format!("starting load worker {}", cmd.program.display()))?;
        let mut child = child;
        let stdin = child.stdin.take().context("worker stdin")?;
        let stdout = BufReader::new(child.stdout.take().context("worker stdout")?);
        let mut pool = RemotePool {
            child,
            stdin,
            stdout,
            line: String::new(),
        };
        match pool.call(init).await? {
            PoolReply::Ok => Ok(pool),
            PoolReply::Err(e) => anyhow::bail!("load worker failed to start: {e}"),
            other => anyhow::bail!("load worker answered {other:?} to init"),
        }
    }

    pub async fn call(&mut self, cmd: PoolCmd) -> anyhow::Result<PoolReply> {
        let mut text = serde_json::to_string(&cmd)?;
        text.push('\n');
        self.stdin
            .write_all(text.as_bytes())
            .await
            .context("load worker stdin closed")?;
        self.stdin.flush().await?;
        self.line.clear();
        let n = self.stdout.read_line(&mut self.line).await?;
        if n == 0 {
            let status = self.child.wait().await.ok();
            anyhow::bail!("load worker exited ({status:?})");
        }
        serde_json::from_str(&self.line).context("load worker reply")
    }

    pub async fn wait(mut self) {
        let _ = tokio::time::timeout(std::time::Duration::from_secs(10), self.child.wait()).await;
    }
}

/// Lifts the soft fd limit to the hard one: each connection is one fd.
pub fn raise_fd_limit() -> u64 {
    use nix::sys::resource::{getrlimit, setrlimit, Resource};
    match getrlimit(Resource::RLIMIT_NOFILE) {
        Ok((soft, hard)) if soft < hard => {
            if setrlimit(Resource::RLIMIT_NOFILE, hard, hard).is_ok() {
                hard
            } else {
                soft
            }
        }
        Ok((soft, _)) => soft,
        Err(_) => 1024,
    }
}

/// Entry point of a worker process: serve pool commands on stdin/stdout.
pub fn worker_main() -> anyhow::Result<()> {
    raise_fd_limit();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()?;
    rt.block_on(async {
        let mut stdin = BufReader::new(tokio::io::stdin());
        let mut stdout = tokio::io::stdout();
        let mut line = String::new();
        let mut pool: Option<LocalPool> = None;
        loop {
            line.clear();
            if stdin.read_line(&mut line).await? == 0 {
                // Coordinator gone: close our connections and leave.
                if let Some(p) = pool.as_mut() {
                    p.stop().await;
                }
                return Ok(());
            }
            let cmd: PoolCmd =
                serde_json::from_str(&line).context("bad command from coordinator")?;
            let stop = matches!(cmd, PoolCmd::Stop);
            let reply = match (cmd, pool.as_mut()) {
                (
                    PoolCmd::Init {
                        scenario,
                        schedule,
                        shard,
                        shards,
                        netns,
                    },
                    None,
                ) => {
                    let mut scenario = *scenario;
                    let joined = match netns {
                        Some(path) => crate::link::NetNs::open(std::path::Path::new(&path))
                            .map(|ns| scenario.netns = Some(std::sync::Arc::new(ns)))
                            .map_err(|e| {
                                format!("cannot join the link's network namespace {path}: {e}")
                            }),
                        None => Ok(()),
                    };
                    match joined.and_then(|()| {
                        LocalPool::new(&scenario, schedule, shard, shards, None, None)
                            .map_err(|e| format!("{e:#}"))
                    }) {
                        Ok(p) => {
                            pool = Some(p);
                            PoolReply::Ok
                        }
                        Err(e) => PoolReply::Err(e),
                    }
                }
                (_, None) => PoolReply::Err("not initialised".into()),
                (cmd, Some(p)) => p.handle(cmd).await,
            };
            let mut text = serde_json::to_string(&reply)?;
            text.push('\n');
            stdout.write_all(text.as_bytes()).await?;
            stdout.flush().await?;
            if stop {
                return Ok(());
            }
        }
    })
}
