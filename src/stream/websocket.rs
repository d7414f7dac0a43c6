//! WebSocket transports: exec and attach on the `channel.k8s.io` family (each binary
//! message starts with a channel byte: 0 stdin, 1 stdout, 2 stderr, 3 error, 4 resize;
//! v5 adds 255 + channel to close a channel; the base64 variants send text messages of
//! an ASCII channel digit and base64), and port-forward as SPDY tunnelled in binary
//! messages (`SPDY/3.1+portforward.k8s.io`, what crictl's `--transport websocket`
//! speaks), served by the same SPDY code.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use base64::Engine;
use bytes::Bytes;
use futures_util::{SinkExt, StreamExt};
use hyper::upgrade::Upgraded;
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::protocol::{CloseFrame, Role, WebSocketConfig};
use tokio_util::sync::CancellationToken;

use super::remotecommand::{self, Options};
use super::session::{Outcome, SessionIo};

/// Exec/attach subprotocols; the client's order decides (as kubelet's wsstream).
pub const EXEC_PROTOCOLS: [&str; 5] = [
    "v5.channel.k8s.io",
    "v4.channel.k8s.io",
    "v4.base64.channel.k8s.io",
    "channel.k8s.io",
    "base64.channel.k8s.io",
];
/// Port-forward: SPDY inside WebSocket.
pub const TUNNEL_PROTOCOL: &str = "SPDY/3.1+portforward.k8s.io";

const STDIN: u8 = 0;
const STDOUT: u8 = 1;
const STDERR: u8 = 2;
const ERROR: u8 = 3;
const RESIZE: u8 = 4;
/// v5: `[CLOSE, channel]` closes that channel.
const CLOSE: u8 = 255;

/// Messages larger than this end the connection (memory stays bounded).
const MAX_MESSAGE: usize = 4 << 20;

fn config() -> WebSocketConfig {
    WebSocketConfig::default()
        .max_message_size(Some(MAX_MESSAGE))
        .max_frame_size(Some(MAX_MESSAGE))
}

pub async fn accept(io: Upgraded) -> WebSocketStream<TokioIo<Upgraded>> {
    WebSocketStream::from_raw_socket(TokioIo::new(io), Role::Server, Some(config())).await
}

/// Time of the last message either way, for the idle timeout.
#[derive(Debug, Clone)]
struct Activity {
    epoch: Instant,
    last_ms: Arc<AtomicU64>,
}

impl Activity {
    fn new() -> Activity {
        Activity {
            epoch: Instant::now(),
            last_ms: Arc::default(),
        }
    }
    fn touch(&self) {
        self.last_ms
            .store(self.epoch.elapsed().as_millis() as u64, Ordering::Relaxed);
    }
    fn deadline(&self, idle: Duration) -> tokio::time::Instant {
        let last = self.epoch + Duration::from_millis(self.last_ms.load(Ordering::Relaxed));
        tokio::time::Instant::from_std(last + idle)
    }
}

/// Exec or attach over a WebSocket: `run` is the session, given the channels.
pub async fn serve_remote_command<F, Fut>(
    ws: WebSocketStream<TokioIo<Upgraded>>,
    protocol: &str,
    opts: Options,
    idle: Duration,
    run: F,
) where
    F: FnOnce(SessionIo, CancellationToken) -> Fut,
    Fut: std::future::Future<Output = Option<Outcome>>,
{
    let base64 = protocol.contains("base64");
    let v5 = protocol == "v5.channel.k8s.io";
    let (mut sink, mut source) = ws.split();
    let (out_tx, mut out_rx) = mpsc::channel::<Message>(64);
    let closed = CancellationToken::new();
    let activity = Activity::new();
    activity.touch();

    let writer = {
        let (closed, activity) = (closed.clone(), activity.clone());
        tokio::spawn(async move {
            while let Some(m) = out_rx.recv().await {
                let is_close = matches!(m, Message::Close(_));
                if sink.send(m).await.is_err() {
                    break;
                }
                activity.touch();
                if is_close {
                    break;
                }
            }
            let _ = sink.close().await;
            closed.cancel();
        })
    };

    let (stdin_tx, stdin_rx) = mpsc::channel::<Bytes>(16);
    let (resize_tx, resize_rx) = mpsc::channel::<Bytes>(4);
    {
        let (closed, activity) = (closed.clone(), activity.clone());
        let mut stdin_tx = opts.stdin.then_some(stdin_tx);
        let mut resize_tx = opts.tty.then_some(resize_tx);
        tokio::spawn(async move {
            loop {
                let msg = tokio::select! {
                    m = source.next() => m,
                    _ = closed.cancelled() => break,
                    _ = tokio::time::sleep_until(activity.deadline(idle)) => {
                        if activity.deadline(idle) <= tokio::time::Instant::now() {
                            break;
                        }
                        continue;
                    }
                };
                let Some(Ok(msg)) = msg else { break };
                activity.touch();
                let (channel, data) = match msg {
                    Message::Binary(b) if !b.is_empty() => (b[0], b.slice(1..)),
                    Message::Text(t) if !base64 || t.is_empty() => continue,
                    Message::Text(t) => {
                        let t = t.as_bytes();
                        let Some(channel) = t[0].checked_sub(b'0') else {
                            continue;
                        };
                        let Ok(data) = base64::engine::general_purpose::STANDARD.decode(&t[1..])
                        else {
                            continue;
                        };
                        (channel, Bytes::from(data))
                    }
                    Message::Close(_) => break,
                    _ => continue,
                };
                match channel {
                    STDIN => {
                        if let Some(tx) = &stdin_tx
                            && !data.is_empty()
                            && tx.send(data).await.is_err()
                        {
                            stdin_tx = None;
                        }
                    }
                    RESIZE => {
                        if let Some(tx) = &resize_tx
                            && tx.send(data).await.is_err()
                        {
                            resize_tx = None;
                        }
                    }
                    CLOSE if v5 => match data.first() {
                        Some(&STDIN) => stdin_tx = None,
                        Some(&RESIZE) => resize_tx = None,
                        _ => {}
                    },
                    _ => {}
                }
            }
            closed.cancel();
        });
    }

    let mut io = SessionIo::default();
    let mut tasks = Vec::new();
    if opts.stdin {
        io.stdin = Some(stdin_rx);
    }
    if opts.tty {
        io.resize = Some(resize_rx);
    }
    for (want, channel, slot) in [
        (opts.stdout, STDOUT, &mut io.stdout),
        (opts.stderr, STDERR, &mut io.stderr),
    ] {
        if want {
            let (tx, task) = forward(channel, base64, out_tx.clone());
            *slot = Some(tx);
            tasks.push(task);
        }
    }
    // kubelet tells the client the session is up with an empty message on the lowest
    // writable channel.
    let first = if opts.stdout {
        STDOUT
    } else if opts.stderr {
        STDERR
    } else {
        ERROR
    };
    let _ = out_tx.send(encode(first, &[], base64)).await;

    let outcome = run(io, closed.clone()).await;
    for t in tasks {
        let _ = t.await;
    }
    if let Some(outcome) = outcome
        && let Some(msg) = remotecommand::status_message(protocol, &outcome)
    {
        let _ = out_tx.send(encode(ERROR, &msg, base64)).await;
    }
    let _ = out_tx.send(normal_close()).await;
    drop(out_tx);
    let _ = writer.await;
}

/// A close frame with status 1000: clients (gorilla/websocket) read a close without a
/// status (1005) as an error.
fn normal_close() -> Message {
    Message::Close(Some(CloseFrame {
        code: CloseCode::Normal,
        reason: "".into(),
    }))
}

fn encode(channel: u8, data: &[u8], base64: bool) -> Message {
    if base64 {
        let mut t = String::with_capacity(1 + data.len() * 4 / 3 + 4);
        t.push((b'0' + channel) as char);
        base64::engine::general_purpose::STANDARD.encode_string(data, &mut t);
        Message::text(t)
    } else {
        let mut b = Vec::with_capacity(1 + data.len());
        b.push(channel);
        b.extend_from_slice(data);
        Message::binary(b)
    }
}

/// Session output on `channel`: each chunk becomes one message.
fn forward(
    channel: u8,
    base64: bool,
    out: mpsc::Sender<Message>,
) -> (mpsc::Sender<Bytes>, JoinHandle<()>) {
    let (tx, mut rx) = mpsc::channel::<Bytes>(4);
    let task = tokio::spawn(async move {
        while let Some(b) = rx.recv().await {
            if out.send(encode(channel, &b, base64)).await.is_err() {
                return;
            }
        }
    });
    (tx, task)
}

/// The byte stream inside a tunnelling WebSocket (each binary message's payload, in
/// order; each write one message), as a duplex pipe the SPDY code serves.
pub fn tunnel(ws: WebSocketStream<TokioIo<Upgraded>>) -> tokio::io::DuplexStream {
    let (ours, theirs) = tokio::io::duplex(64 << 10);
    let (mut sink, mut source) = ws.split();
    let (mut rd, mut wr) = tokio::io::split(ours);
    tokio::spawn(async move {
        while let Some(Ok(msg)) = source.next().await {
            match msg {
                Message::Binary(b) if wr.write_all(&b).await.is_err() => break,
                Message::Close(_) => break,
                _ => {}
            }
        }
        let _ = wr.shutdown().await;
    });
    tokio::spawn(async move {
        let mut buf = vec![0u8; 32 << 10];
        loop {
            match rd.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    if sink.send(Message::binary(buf[..n].to_vec())).await.is_err() {
                        return;
                    }
                }
            }
        }
        let _ = sink.send(normal_close()).await;
        let _ = sink.close().await;
    });
    theirs
}
