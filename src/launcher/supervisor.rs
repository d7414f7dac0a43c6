//! The daemon's side of a pod supervisor: spawning it and talking to it.
//!
//! The daemon (multi-threaded, tokio) never forks workloads; it spawns one supervisor per
//! pod with a plain spawn and sends it requests over its unix socket, one per connection.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use cri_mesos_supervisor::protocol::{self, Request, Response};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::UnixStream;

#[derive(Debug, thiserror::Error)]
pub enum SupervisorError {
    #[error("cannot start the pod supervisor {bin}: {reason}")]
    Spawn { bin: PathBuf, reason: String },
    #[error("pod supervisor at {socket} is unreachable: {source}")]
    Unreachable {
        socket: PathBuf,
        source: std::io::Error,
    },
    #[error("pod supervisor at {socket}: bad reply: {reason}")]
    Protocol { socket: PathBuf, reason: String },
    #[error("{0}")]
    Refused(String),
    #[error("pod supervisor at {socket} did not answer within {timeout:?}")]
    Timeout { socket: PathBuf, timeout: Duration },
    /// The pod's supervisor was started by a daemon of another protocol version; it would
    /// misread (or drop) what this daemon sends. The pod must be recreated.
    #[error(
        "the supervisor of pod {pod_id} speaks protocol {theirs}, this daemon speaks {ours}: recreate the pod"
    )]
    Version {
        pod_id: String,
        theirs: u32,
        ours: u32,
    },
}

/// How to start supervisors: where the binary is (Mesos's `--launcher_dir`).
#[derive(Debug, Clone)]
pub struct SupervisorBinary(pub PathBuf);

impl SupervisorBinary {
    /// `cri-mesos-supervisor` in `launcher_dir`; refused at start when it is missing, so
    /// that the first RunPodSandbox does not find out.
    pub fn in_dir(launcher_dir: &Path) -> Result<SupervisorBinary, SupervisorError> {
        let bin = launcher_dir.join("cri-mesos-supervisor");
        if !bin.is_file() {
            return Err(SupervisorError::Spawn {
                bin,
                reason: "not found (build it with `cargo build --bin cri-mesos-supervisor`, or set --launcher_dir)".into(),
            });
        }
        Ok(SupervisorBinary(bin))
    }

    /// Starts a supervisor for `pod_id`; returns its host pid once it serves `socket`.
    /// The spawned process forks the real supervisor (so it is not our child), prints its
    /// pid and exits; we reap that first process here.
    pub async fn spawn(
        &self,
        pod_id: &str,
        socket: &Path,
        state_dir: &Path,
        new_pid_ns: bool,
    ) -> Result<i32, SupervisorError> {
        let mut command = tokio::process::Command::new(&self.0);
        command
            .arg("--pod-id")
            .arg(pod_id)
            .arg("--socket")
            .arg(socket)
            .arg("--state-dir")
            .arg(state_dir)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true);
        if new_pid_ns {
            command.arg("--new-pid-ns");
        }
        let spawn_err = |reason: String| SupervisorError::Spawn {
            bin: self.0.clone(),
            reason,
        };
        let output = tokio::time::timeout(Duration::from_secs(30), command.output())
            .await
            .map_err(|_| spawn_err("did not report its pid within 30s".into()))?
            .map_err(|e| spawn_err(e.to_string()))?;
        let stdout = String::from_utf8_lossy(&output.stdout);
        let line = stdout.lines().next().unwrap_or("");
        protocol::parse_spawn_line(line).map_err(|message| {
            let stderr = String::from_utf8_lossy(&output.stderr);
            spawn_err(format!("{message} {}", stderr.trim()).trim().to_string())
        })
    }
}

/// A connection factory for one pod's supervisor.
#[derive(Debug, Clone)]
pub struct SupervisorClient {
    socket: PathBuf,
}

impl SupervisorClient {
    pub fn new(socket: impl Into<PathBuf>) -> Self {
        Self {
            socket: socket.into(),
        }
    }

    pub fn socket(&self) -> &Path {
        &self.socket
    }

    /// Sends one request and waits for its reply (at most `timeout`). `Error` replies
    /// become [`SupervisorError::Refused`].
    pub async fn call(
        &self,
        request: &Request,
        timeout: Duration,
    ) -> Result<Response, SupervisorError> {
        let reply = tokio::time::timeout(timeout, self.exchange(request))
            .await
            .map_err(|_| SupervisorError::Timeout {
                socket: self.socket.clone(),
                timeout,
            })??;
        match reply {
            Response::Error { message } => Err(SupervisorError::Refused(message)),
            other => Ok(other),
        }
    }

    async fn exchange(&self, request: &Request) -> Result<Response, SupervisorError> {
        let unreachable = |source| SupervisorError::Unreachable {
            socket: self.socket.clone(),
            source,
        };
        let mut stream = UnixStream::connect(&self.socket)
            .await
            .map_err(unreachable)?;
        let mut line = serde_json::to_vec(request).map_err(|e| SupervisorError::Protocol {
            socket: self.socket.clone(),
            reason: e.to_string(),
        })?;
        line.push(b'\n');
        stream.write_all(&line).await.map_err(unreachable)?;
        let mut reader = BufReader::new(stream);
        let mut reply = String::new();
        reader.read_line(&mut reply).await.map_err(unreachable)?;
        if reply.is_empty() {
            return Err(SupervisorError::Protocol {
                socket: self.socket.clone(),
                reason: "connection closed without a reply".into(),
            });
        }
        serde_json::from_str(&reply).map_err(|e| SupervisorError::Protocol {
            socket: self.socket.clone(),
            reason: format!("{e}: {}", reply.trim()),
        })
    }
}
