//! The daemon's side of a pod supervisor: spawning it and talking to it.
//!
//! The daemon (multi-threaded, tokio) never forks workloads; it spawns one supervisor per
//! pod with a plain spawn and sends it requests over its unix socket, one per connection.

use std::os::fd::{AsRawFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use cri_mesos_supervisor::protocol::{self, Request, Response};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader, Interest};
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

    /// Connects and writes `request` as one line; the reply is the caller's to read.
    async fn send(&self, request: &Request) -> Result<UnixStream, SupervisorError> {
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
        Ok(stream)
    }

    async fn exchange(&self, request: &Request) -> Result<Response, SupervisorError> {
        let unreachable = |source| SupervisorError::Unreachable {
            socket: self.socket.clone(),
            source,
        };
        let stream = self.send(request).await?;
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

/// A running exec stream session ([`Request::ExecStream`]): the process's descriptors
/// and the open connection on which its exit comes. Dropping it (or its connection)
/// makes the supervisor kill the session's processes.
#[derive(Debug)]
pub struct ExecStream {
    pub tty: bool,
    /// The pty master (tty), else stdin's write end, stdout's and stderr's read ends, each
    /// only if asked for, in that order.
    pub fds: Vec<OwnedFd>,
    pub waiter: ExecWaiter,
}

/// The open connection of an exec stream session, on which its exit status comes.
#[derive(Debug)]
pub struct ExecWaiter {
    conn: UnixStream,
    /// Bytes read past the first reply.
    pending: Vec<u8>,
    socket: PathBuf,
}

impl ExecWaiter {
    /// Waits until the process ends: its exit code, or why it never ran.
    pub async fn wait(mut self) -> Result<(i32, Option<String>), SupervisorError> {
        let unreachable = |source| SupervisorError::Unreachable {
            socket: self.socket.clone(),
            source,
        };
        while !self.pending.contains(&b'\n') {
            let mut buf = [0u8; 1024];
            let n = self.conn.read(&mut buf).await.map_err(unreachable)?;
            if n == 0 {
                return Err(SupervisorError::Protocol {
                    socket: self.socket.clone(),
                    reason: "exec session closed without an exit status".into(),
                });
            }
            self.pending.extend_from_slice(&buf[..n]);
        }
        let end = self.pending.iter().position(|&b| b == b'\n').unwrap_or(0);
        match parse_reply(&self.socket, &self.pending[..end])? {
            Response::ExecExited { exit_code, error } => Ok((exit_code, error)),
            Response::Error { message } => Err(SupervisorError::Refused(message)),
            other => Err(SupervisorError::Protocol {
                socket: self.socket.clone(),
                reason: format!("unexpected reply: {other:?}"),
            }),
        }
    }
}

fn parse_reply(socket: &Path, line: &[u8]) -> Result<Response, SupervisorError> {
    serde_json::from_slice(line).map_err(|e| SupervisorError::Protocol {
        socket: socket.to_path_buf(),
        reason: format!("{e}: {}", String::from_utf8_lossy(line).trim()),
    })
}

impl SupervisorClient {
    /// Starts an exec stream session: sends the request, receives the first reply with
    /// its descriptors (SCM_RIGHTS, read without blocking a runtime thread), and keeps
    /// the connection for the exit status.
    pub async fn exec_stream(
        &self,
        request: &Request,
        timeout: Duration,
    ) -> Result<ExecStream, SupervisorError> {
        tokio::time::timeout(timeout, self.open_stream(request))
            .await
            .map_err(|_| SupervisorError::Timeout {
                socket: self.socket.clone(),
                timeout,
            })?
    }

    async fn open_stream(&self, request: &Request) -> Result<ExecStream, SupervisorError> {
        let (reply, fds, conn, pending) = self.open_with_fds(request).await?;
        match reply {
            Response::ExecStarted { tty } => Ok(ExecStream {
                tty,
                fds,
                waiter: ExecWaiter {
                    conn,
                    pending,
                    socket: self.socket.clone(),
                },
            }),
            Response::Error { message } => Err(SupervisorError::Refused(message)),
            other => Err(SupervisorError::Protocol {
                socket: self.socket.clone(),
                reason: format!("unexpected reply: {other:?}"),
            }),
        }
    }

    /// Attaches a streaming session ([`Request::AttachStream`]).
    pub async fn attach_stream(
        &self,
        request: &Request,
        timeout: Duration,
    ) -> Result<AttachStream, SupervisorError> {
        let opened = tokio::time::timeout(timeout, self.open_with_fds(request))
            .await
            .map_err(|_| SupervisorError::Timeout {
                socket: self.socket.clone(),
                timeout,
            })??;
        let (reply, fds, conn, pending) = opened;
        match reply {
            Response::Attached { tty } => Ok(AttachStream {
                tty,
                stdin: fds.into_iter().next(),
                output: AttachOutput {
                    conn,
                    pending,
                    socket: self.socket.clone(),
                },
            }),
            Response::Error { message } => Err(SupervisorError::Refused(message)),
            other => Err(SupervisorError::Protocol {
                socket: self.socket.clone(),
                reason: format!("unexpected reply: {other:?}"),
            }),
        }
    }

    /// Sends `request`, receives the first reply line with the descriptors that came
    /// with it; the connection stays open. Also returns bytes read past that line.
    async fn open_with_fds(
        &self,
        request: &Request,
    ) -> Result<(Response, Vec<OwnedFd>, UnixStream, Vec<u8>), SupervisorError> {
        let unreachable = |source| SupervisorError::Unreachable {
            socket: self.socket.clone(),
            source,
        };
        let conn = self.send(request).await?;
        let mut got = Vec::new();
        let mut fds = Vec::new();
        while !got.contains(&b'\n') {
            let mut buf = [0u8; 4096];
            let (n, more) = conn
                .async_io(Interest::READABLE, || {
                    cri_mesos_supervisor::client::recv_fds(conn.as_raw_fd(), &mut buf)
                })
                .await
                .map_err(unreachable)?;
            fds.extend(more);
            if n == 0 {
                return Err(SupervisorError::Protocol {
                    socket: self.socket.clone(),
                    reason: "connection closed without a reply".into(),
                });
            }
            got.extend_from_slice(&buf[..n]);
        }
        let end = got.iter().position(|&b| b == b'\n').unwrap_or(0);
        let pending = got[end + 1..].to_vec();
        let reply = parse_reply(&self.socket, &got[..end])?;
        Ok((reply, fds, conn, pending))
    }
}

/// A streaming attach ([`Request::AttachStream`]): the container's stdin (or pty
/// master), and its output as the supervisor logs it. Dropping it detaches.
#[derive(Debug)]
pub struct AttachStream {
    pub tty: bool,
    pub stdin: Option<OwnedFd>,
    pub output: AttachOutput,
}

/// The output side of an attach: frames of (stream byte, length, bytes).
#[derive(Debug)]
pub struct AttachOutput {
    conn: UnixStream,
    pending: Vec<u8>,
    socket: PathBuf,
}

impl AttachOutput {
    /// The next chunk of output and its stream ([`protocol::ATTACH_STDOUT`] or
    /// [`protocol::ATTACH_STDERR`]); `None` once the container's output ended (or the
    /// supervisor dropped this client for falling behind).
    pub async fn next(&mut self) -> Result<Option<(u8, Vec<u8>)>, SupervisorError> {
        loop {
            if self.pending.len() >= 5 {
                let len = u32::from_be_bytes([
                    self.pending[1],
                    self.pending[2],
                    self.pending[3],
                    self.pending[4],
                ]) as usize;
                if len > protocol::ATTACH_BUFFER {
                    return Err(SupervisorError::Protocol {
                        socket: self.socket.clone(),
                        reason: format!("attach frame of {len} bytes"),
                    });
                }
                if self.pending.len() >= 5 + len {
                    let tag = self.pending[0];
                    let data = self.pending[5..5 + len].to_vec();
                    self.pending.drain(..5 + len);
                    return Ok(Some((tag, data)));
                }
            }
            let mut buf = [0u8; 16 << 10];
            let n =
                self.conn
                    .read(&mut buf)
                    .await
                    .map_err(|source| SupervisorError::Unreachable {
                        socket: self.socket.clone(),
                        source,
                    })?;
            if n == 0 {
                return Ok(None);
            }
            self.pending.extend_from_slice(&buf[..n]);
        }
    }
}
