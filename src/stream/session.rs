//! The protocol-independent side of exec (and attach) sessions: the process's
//! descriptors pumped to and from channels that a transport (SPDY streams, WebSocket
//! channels) feeds and drains.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use serde::Deserialize;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use super::fdio::FdIo;
use crate::containerizer::{ContainerId, Containerizer, ContainerizerError};

/// How much one read of a process's output takes.
const CHUNK: usize = 32 << 10;
/// After the process exits, output still buffered in its pipes is read for this long
/// at most (a background process holding them open must not hold the session).
const DRAIN_GRACE: Duration = Duration::from_secs(2);

/// The client's side of a session, as channels. A closed sender (`None` received on
/// the other end) is the end of that stream.
#[derive(Debug, Default)]
pub struct SessionIo {
    pub stdin: Option<mpsc::Receiver<Bytes>>,
    pub stdout: Option<mpsc::Sender<Bytes>>,
    pub stderr: Option<mpsc::Sender<Bytes>>,
    /// JSON `{"Width":W,"Height":H}` objects, one after another.
    pub resize: Option<mpsc::Receiver<Bytes>>,
}

/// How an exec ended, for the error stream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    Exited(i32),
    /// It could not run (or the runtime failed): the message for the client.
    Failed(String),
}

/// Why a session could not start, as the RPC layer would map it.
#[derive(Debug, thiserror::Error)]
pub enum SessionError {
    #[error(transparent)]
    Containerizer(#[from] ContainerizerError),
    #[error("exec session: {0}")]
    Io(#[from] std::io::Error),
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "PascalCase")]
struct TerminalSize {
    width: u16,
    height: u16,
}

/// Runs `cmd` in container `id` with `io` until it ends; `None` if the client went away
/// first (`closed`), in which case the session's processes are killed (the supervisor
/// does that when the session is dropped).
pub async fn run_exec(
    containerizer: Arc<dyn Containerizer>,
    id: ContainerId,
    cmd: Vec<String>,
    tty: bool,
    io: SessionIo,
    closed: CancellationToken,
) -> Option<Outcome> {
    let want = [
        io.stdin.is_some(),
        io.stdout.is_some(),
        io.stderr.is_some() && !tty,
    ];
    let session = match containerizer.exec_stream(&id, cmd, tty, want).await {
        Ok(s) => s,
        Err(e) => return Some(Outcome::Failed(e.to_string())),
    };
    let (fds, waiter) = (session.fds, session.waiter);
    let SessionIo {
        stdin,
        stdout,
        stderr,
        resize,
    } = io;
    let mut pumps = tokio::task::JoinSet::new();
    let result: Result<(), std::io::Error> = (|| {
        let mut fds = fds.into_iter();
        if tty {
            let master = Arc::new(FdIo::new(fds.next().ok_or_else(missing)?)?);
            if let Some(rx) = stdin {
                pumps.spawn(pump_in(rx, master.clone(), false));
            }
            if let Some(tx) = stdout {
                pumps.spawn(pump_out(master.clone(), tx));
            }
            if let Some(rx) = resize {
                tokio::spawn(pump_resize(rx, master));
            }
        } else {
            if let Some(rx) = stdin {
                let fd = Arc::new(FdIo::new(fds.next().ok_or_else(missing)?)?);
                tokio::spawn(pump_in(rx, fd, true));
            }
            for tx in [stdout, stderr].into_iter().flatten() {
                let fd = Arc::new(FdIo::new(fds.next().ok_or_else(missing)?)?);
                pumps.spawn(pump_out(fd, tx));
            }
        }
        Ok(())
    })();
    if let Err(e) = result {
        // Dropping the waiter closes the session's connection: the supervisor kills it.
        return Some(Outcome::Failed(format!("exec session: {e}")));
    }
    let exit = tokio::select! {
        r = waiter.wait() => r,
        _ = closed.cancelled() => {
            pumps.abort_all();
            return None;
        }
    };
    // Output the process wrote before exiting is still in its pipes.
    let drained = async { while pumps.join_next().await.is_some() {} };
    tokio::select! {
        _ = drained => {}
        _ = tokio::time::sleep(DRAIN_GRACE) => pumps.abort_all(),
        _ = closed.cancelled() => return None,
    }
    Some(match exit {
        Ok((_, Some(error))) => Outcome::Failed(error),
        Ok((code, None)) => Outcome::Exited(code),
        Err(e) => Outcome::Failed(e.to_string()),
    })
}

fn missing() -> std::io::Error {
    std::io::Error::other("the supervisor sent fewer descriptors than asked for")
}

/// Process output -> client, until EOF. The channel being full stops the reading, so a
/// slow client slows the process instead of filling memory.
async fn pump_out(fd: Arc<FdIo>, tx: mpsc::Sender<Bytes>) {
    let mut buf = vec![0u8; CHUNK];
    loop {
        match fd.read(&mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(n) => {
                if tx.send(Bytes::copy_from_slice(&buf[..n])).await.is_err() {
                    break;
                }
            }
        }
    }
}

/// Client -> process stdin. At the client's end of stdin a pipe is closed (the process
/// sees EOF); a pty stays open, it is also the output.
async fn pump_in(mut rx: mpsc::Receiver<Bytes>, fd: Arc<FdIo>, close_at_end: bool) {
    while let Some(data) = rx.recv().await {
        if fd.write_all(&data).await.is_err() {
            break;
        }
    }
    if close_at_end {
        drop(fd);
    }
}

/// Resize messages -> the pty. Garbage ends the resize stream only.
async fn pump_resize(mut rx: mpsc::Receiver<Bytes>, master: Arc<FdIo>) {
    let mut buf = Vec::new();
    while let Some(data) = rx.recv().await {
        buf.extend_from_slice(&data);
        let mut used = 0;
        let mut stream = serde_json::Deserializer::from_slice(&buf).into_iter::<TerminalSize>();
        loop {
            match stream.next() {
                Some(Ok(size)) => {
                    used = stream.byte_offset();
                    let _ = master.set_winsize(size.width, size.height);
                }
                Some(Err(e)) if e.is_eof() => break,
                Some(Err(_)) => return,
                None => {
                    used = buf.len();
                    break;
                }
            }
        }
        buf.drain(..used);
        if buf.len() > 4096 {
            return;
        }
    }
}

/// Attaches `io` to container `id` until its output ends (`Exited(0)`: Success on the
/// error stream) or the client leaves (`None`). The client's end of stdin closes the
/// container's stdin only for `stdin_once` containers (the supervisor gave its copy
/// away then).
pub async fn run_attach(
    containerizer: Arc<dyn Containerizer>,
    id: ContainerId,
    io: SessionIo,
    closed: CancellationToken,
) -> Option<Outcome> {
    let SessionIo {
        stdin,
        stdout,
        stderr,
        resize,
    } = io;
    let attached = match containerizer.attach_stream(&id, stdin.is_some()).await {
        Ok(a) => a,
        Err(e) => return Some(Outcome::Failed(e.to_string())),
    };
    let tty = attached.tty;
    let mut output = attached.output;
    let mut side = tokio::task::JoinSet::new();
    if let Some(fd) = attached.stdin {
        let fd = match FdIo::new(fd) {
            Ok(fd) => Arc::new(fd),
            Err(e) => return Some(Outcome::Failed(format!("attach: {e}"))),
        };
        if let Some(rx) = stdin {
            side.spawn(pump_in(rx, fd.clone(), !tty));
        }
        if let (true, Some(rx)) = (tty, resize) {
            side.spawn(pump_resize(rx, fd));
        }
    }
    let pump = async {
        loop {
            let (tag, data) = match output.next().await {
                Ok(Some(x)) => x,
                Ok(None) => return Outcome::Exited(0),
                Err(e) => return Outcome::Failed(e.to_string()),
            };
            let to = if tag == cri_mesos_supervisor::protocol::ATTACH_STDERR && !tty {
                stderr.as_ref()
            } else {
                stdout.as_ref()
            };
            // A stream the client did not ask for is dropped; the client being slow
            // makes this wait, and the supervisor drops us if we fall too far behind.
            if let Some(tx) = to {
                let _ = tx.send(Bytes::from(data)).await;
            }
        }
    };
    let outcome = tokio::select! {
        o = pump => Some(o),
        _ = closed.cancelled() => None,
    };
    side.abort_all();
    outcome
}
