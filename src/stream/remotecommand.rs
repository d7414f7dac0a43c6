//! Exec and attach over SPDY (`v4.channel.k8s.io` and older): the client opens an
//! `error` stream and one stream per standard stream it wants (`stdin`, `stdout`,
//! `stderr`, and `resize` with a tty on v3+), each named by its `streamtype` header.
//! On v4 the error stream carries a JSON `Status` with the exit code at the end; on
//! older versions only a failure's message.

use std::time::Duration;

use bytes::Bytes;
use serde_json::json;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

use super::session::{Outcome, SessionIo};
use super::spdy::conn::{Connection, Stream, StreamSender};
use super::spdy::frame;

/// Exec/attach subprotocols, best first (the server's order decides, as kubelet's).
pub const PROTOCOLS: [&str; 4] = [
    "v4.channel.k8s.io",
    "v3.channel.k8s.io",
    "v2.channel.k8s.io",
    "channel.k8s.io",
];

/// kubelet's stream creation timeout: a client has this long to open its streams.
pub const STREAM_CREATION_TIMEOUT: Duration = Duration::from_secs(30);

/// Which streams the RPC asked for.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Options {
    pub stdin: bool,
    pub stdout: bool,
    pub stderr: bool,
    pub tty: bool,
}

/// The streams a client opened for one session.
#[derive(Debug, Default)]
pub struct Streams {
    pub error: Option<Stream>,
    pub stdin: Option<Stream>,
    pub stdout: Option<Stream>,
    pub stderr: Option<Stream>,
    pub resize: Option<Stream>,
}

/// Waits until the client opened every stream `opts` implies (resize counts on v3+ with
/// a tty, as kubelet counts it). `None` on timeout or when the client left.
pub async fn wait_for_streams(
    conn: &mut Connection,
    protocol: &str,
    opts: Options,
) -> Option<Streams> {
    let resize_counts = opts.tty && protocol != "v2.channel.k8s.io" && protocol != "channel.k8s.io";
    let expected = 1
        + usize::from(opts.stdin)
        + usize::from(opts.stdout)
        + usize::from(opts.stderr)
        + usize::from(resize_counts);
    let mut got = Streams::default();
    let mut received = 0;
    let deadline = tokio::time::sleep(STREAM_CREATION_TIMEOUT);
    tokio::pin!(deadline);
    while received < expected {
        let stream = tokio::select! {
            s = conn.streams.recv() => s?,
            _ = &mut deadline => {
                tracing::debug!("timed out waiting for the client to create streams");
                return None;
            }
        };
        let slot = match stream.header("streamtype") {
            Some("error") => &mut got.error,
            Some("stdin") => &mut got.stdin,
            Some("stdout") => &mut got.stdout,
            Some("stderr") => &mut got.stderr,
            Some("resize") => &mut got.resize,
            other => {
                tracing::debug!(streamtype = ?other, "unexpected stream refused");
                let _ = stream.tx.reset(frame::REFUSED_STREAM).await;
                continue;
            }
        };
        if slot.is_some() {
            let _ = stream.tx.reset(frame::PROTOCOL_ERROR).await;
            continue;
        }
        *slot = Some(stream);
        received += 1;
    }
    Some(got)
}

/// Feeds a stream from a channel; its end (all senders gone) half-closes the stream.
pub fn forward(tx: StreamSender) -> (mpsc::Sender<Bytes>, JoinHandle<()>) {
    let (s, mut r) = mpsc::channel::<Bytes>(4);
    let task = tokio::spawn(async move {
        while let Some(b) = r.recv().await {
            if tx.send(b).await.is_err() {
                return;
            }
        }
        let _ = tx.finish().await;
    });
    (s, task)
}

/// Wires the opened streams to a session's channels. Returns the session's side, the
/// forwarding tasks to wait for, and the error stream.
pub fn wire(
    streams: Streams,
    opts: Options,
) -> (SessionIo, Vec<JoinHandle<()>>, Option<StreamSender>) {
    let mut io = SessionIo::default();
    let mut tasks = Vec::new();
    if opts.stdin {
        io.stdin = streams.stdin.map(|s| s.rx);
    }
    for (want, stream, slot) in [
        (opts.stdout, streams.stdout, &mut io.stdout),
        (opts.stderr, streams.stderr, &mut io.stderr),
    ] {
        if let (true, Some(s)) = (want, stream) {
            let (tx, task) = forward(s.tx);
            *slot = Some(tx);
            tasks.push(task);
        }
    }
    if opts.tty {
        io.resize = streams.resize.map(|s| s.rx);
    }
    (io, tasks, streams.error.map(|s| s.tx))
}

/// What goes on the error stream at the end, in `protocol`'s form (`None`: nothing).
pub fn status_message(protocol: &str, outcome: &Outcome) -> Option<Vec<u8>> {
    let v4 = protocol.starts_with("v4.") || protocol.starts_with("v5.");
    let status = match outcome {
        Outcome::Exited(0) => json!({"metadata": {}, "status": "Success"}),
        Outcome::Exited(code) => json!({
            "metadata": {},
            "status": "Failure",
            "message": format!("command terminated with non-zero exit code: exit status {code}"),
            "reason": "NonZeroExitCode",
            "details": {"causes": [{"reason": "ExitCode", "message": code.to_string()}]},
        }),
        Outcome::Failed(message) => json!({
            "metadata": {},
            "status": "Failure",
            "message": format!("Internal error occurred: error executing command in container: {message}"),
            "reason": "InternalError",
            "details": {"causes": [{"message": format!("error executing command in container: {message}")}]},
            "code": 500,
        }),
    };
    if v4 {
        return serde_json::to_vec(&status).ok();
    }
    // Older protocols carry only a failure's text.
    match outcome {
        Outcome::Exited(0) => None,
        _ => status["message"].as_str().map(|m| m.as_bytes().to_vec()),
    }
}

/// The end of a session: the status on the error stream, every stream half-closed,
/// GOAWAY and the connection closed.
pub async fn finish(
    conn: Connection,
    protocol: &str,
    outcome: Option<Outcome>,
    tasks: Vec<JoinHandle<()>>,
    error: Option<StreamSender>,
) {
    for t in tasks {
        let _ = t.await;
    }
    if let (Some(outcome), Some(error)) = (outcome, error) {
        if let Some(msg) = status_message(protocol, &outcome) {
            let _ = error.send(Bytes::from(msg)).await;
        }
        let _ = error.finish().await;
    }
    conn.close().await;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn v4_status_carries_the_exit_code() {
        let m = status_message("v4.channel.k8s.io", &Outcome::Exited(3)).unwrap();
        let v: serde_json::Value = serde_json::from_slice(&m).unwrap();
        assert_eq!(v["status"], "Failure");
        assert_eq!(v["reason"], "NonZeroExitCode");
        assert_eq!(v["details"]["causes"][0]["reason"], "ExitCode");
        assert_eq!(v["details"]["causes"][0]["message"], "3");
        let ok = status_message("v4.channel.k8s.io", &Outcome::Exited(0)).unwrap();
        assert!(String::from_utf8(ok).unwrap().contains("\"Success\""));
    }

    #[test]
    fn older_protocols_only_report_failures() {
        assert_eq!(
            status_message("v3.channel.k8s.io", &Outcome::Exited(0)),
            None
        );
        let m = status_message("v2.channel.k8s.io", &Outcome::Failed("boom".into())).unwrap();
        assert!(String::from_utf8(m).unwrap().contains("boom"));
    }
}
