//! Port forwarding over SPDY (`portforward.k8s.io`): for each forwarded connection the
//! client opens a `data` and an `error` stream with the same `port` and `requestid`;
//! the server connects to `127.0.0.1:<port>` inside the pod's network namespace and
//! copies both ways. A connection that fails reports on its error stream; the others
//! go on.

use std::collections::HashMap;
use std::net::{Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::time::Duration;

use bytes::Bytes;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_util::sync::CancellationToken;

use super::spdy::conn::{Connection, Stream};
use super::spdy::frame;

pub const PROTOCOL: &str = "portforward.k8s.io";

const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// Where to connect: the pod's pinned network namespace, or the host's (`None`).
#[derive(Debug, Clone)]
pub struct Target {
    pub pod_id: String,
    pub net_ns: Option<PathBuf>,
    /// The ports the RPC named; empty allows any.
    pub ports: Vec<i32>,
}

#[derive(Default)]
struct Pair {
    data: Option<Stream>,
    error: Option<Stream>,
}

/// Serves every forwarded connection of one client until it closes the connection.
pub async fn serve(mut conn: Connection, target: Target) {
    let mut pairs: HashMap<String, Pair> = HashMap::new();
    loop {
        let stream = tokio::select! {
            s = conn.streams.recv() => s,
            _ = conn.closed.cancelled() => None,
        };
        let Some(stream) = stream else { break };
        let kind = stream.header("streamtype").unwrap_or("").to_string();
        // Clients that predate `requestid`: a pair's streams have consecutive odd ids,
        // error first (kubelet's best-effort rule).
        let request = match stream.header("requestid") {
            Some(r) if !r.is_empty() => r.to_string(),
            _ if kind == "data" => stream.id.saturating_sub(2).to_string(),
            _ => stream.id.to_string(),
        };
        let pair = pairs.entry(request.clone()).or_default();
        let slot = match kind.as_str() {
            "data" => &mut pair.data,
            "error" => &mut pair.error,
            _ => {
                let _ = stream.tx.reset(frame::REFUSED_STREAM).await;
                continue;
            }
        };
        if slot.is_some() {
            let _ = stream.tx.reset(frame::PROTOCOL_ERROR).await;
            continue;
        }
        *slot = Some(stream);
        if pair.data.is_some() && pair.error.is_some() {
            let Pair { data, error } = pairs.remove(&request).unwrap_or_default();
            if let (Some(data), Some(error)) = (data, error) {
                tokio::spawn(forward(data, error, target.clone(), conn.closed.clone()));
            }
        }
    }
    conn.close().await;
}

/// One forwarded connection, until both directions are done or the client's
/// connection ends (`closed`), whichever is first: the pod's side may never close.
async fn forward(data: Stream, error: Stream, target: Target, closed: CancellationToken) {
    let port = data.header("port").unwrap_or("").to_string();
    let result = match port.parse::<u16>() {
        Ok(p) if p > 0 => {
            if !target.ports.is_empty() && !target.ports.contains(&i32::from(p)) {
                Err(format!("port {p} was not named in the PortForward request"))
            } else {
                connect(&target, p).await.map_err(|e| {
                    format!(
                        "error forwarding port {p} to pod {}: failed to connect to 127.0.0.1:{p} inside the pod's network: {e}",
                        target.pod_id
                    )
                })
            }
        }
        _ => Err(format!("invalid port {port:?} in the data stream")),
    };
    let tcp = match result {
        Ok(tcp) => tcp,
        Err(message) => {
            let _ = error.tx.send(Bytes::from(message)).await;
            let _ = error.tx.finish().await;
            let _ = data.tx.finish().await;
            return;
        }
    };
    let (mut rd, mut wr) = tcp.into_split();
    let Stream { mut rx, tx, .. } = data;
    let inbound = async move {
        while let Some(b) = rx.recv().await {
            if wr.write_all(&b).await.is_err() {
                break;
            }
        }
        let _ = wr.shutdown().await;
    };
    let outbound = async {
        let mut buf = vec![0u8; super::spdy::conn::CHUNK];
        loop {
            match rd.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    if tx.send(Bytes::copy_from_slice(&buf[..n])).await.is_err() {
                        break;
                    }
                }
            }
        }
        let _ = tx.finish().await;
    };
    tokio::select! {
        _ = async { tokio::join!(inbound, outbound) } => {}
        _ = closed.cancelled() => return,
    }
    let _ = error.tx.finish().await;
}

/// Connects to 127.0.0.1:`port` in the target's network namespace. setns changes the
/// calling thread's namespace, so it runs on a thread of its own that ends right
/// after (never a runtime or blocking-pool thread, which would stay in the pod's
/// network); the socket keeps the namespace it was made in.
async fn connect(target: &Target, port: u16) -> std::io::Result<TcpStream> {
    let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
    let Some(ns) = target.net_ns.clone() else {
        return tokio::time::timeout(CONNECT_TIMEOUT, TcpStream::connect(addr))
            .await
            .map_err(|_| std::io::Error::from(std::io::ErrorKind::TimedOut))?;
    };
    let (tx, rx) = tokio::sync::oneshot::channel();
    std::thread::Builder::new()
        .name("portforward-setns".into())
        .spawn(move || {
            let result = (|| -> std::io::Result<std::net::TcpStream> {
                let file = std::fs::File::open(&ns)?;
                nix::sched::setns(&file, nix::sched::CloneFlags::CLONE_NEWNET)
                    .map_err(std::io::Error::from)?;
                let s = std::net::TcpStream::connect_timeout(&addr, CONNECT_TIMEOUT)?;
                s.set_nonblocking(true)?;
                Ok(s)
            })();
            let _ = tx.send(result);
        })?;
    let std = rx
        .await
        .map_err(|_| std::io::Error::other("the connecting thread died"))??;
    TcpStream::from_std(std)
}
