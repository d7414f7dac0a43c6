//! The streaming HTTP server: `GET|POST /exec/<token>`, `/attach/<token>`,
//! `/portforward/<token>`, each upgraded to SPDY/3.1 (the protocol negotiated with
//! `X-Stream-Protocol-Version`). Tokens come from the Exec, Attach and PortForward RPCs.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::header::{CONNECTION, HeaderValue, UPGRADE};
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;

use super::portforward;
use super::remotecommand::{self, Options};
use super::session;
use super::spdy;
use super::token::{Pending, Tokens, TooManyPending};
use super::websocket;
use crate::containerizer::{ContainerId, Containerizer};

/// Concurrent sessions (upgraded connections); more are refused with 503.
pub const MAX_SESSIONS: usize = 256;

const PROTOCOL_HEADER: &str = "x-stream-protocol-version";

#[derive(Debug, thiserror::Error)]
pub enum StreamServerError {
    #[error("cannot listen on --streaming_address {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("--{flag} {path}: {reason}")]
    Tls {
        flag: &'static str,
        path: std::path::PathBuf,
        reason: String,
    },
}

/// How long a client has for its TLS handshake.
const TLS_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// The streaming server's TLS acceptor from PEM files (a certificate chain, a key).
pub fn load_tls(
    cert: &std::path::Path,
    key: &std::path::Path,
) -> Result<tokio_rustls::TlsAcceptor, StreamServerError> {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};
    let bad = |flag, path: &std::path::Path, reason: String| StreamServerError::Tls {
        flag,
        path: path.to_path_buf(),
        reason,
    };
    let certs = CertificateDer::pem_file_iter(cert)
        .and_then(|it| it.collect::<Result<Vec<_>, _>>())
        .map_err(|e| bad("streaming_tls_cert_file", cert, e.to_string()))?;
    if certs.is_empty() {
        return Err(bad(
            "streaming_tls_cert_file",
            cert,
            "no PEM certificate in it".into(),
        ));
    }
    let private = PrivateKeyDer::from_pem_file(key)
        .map_err(|e| bad("streaming_tls_key_file", key, e.to_string()))?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| bad("streaming_tls_cert_file", cert, e.to_string()))?
        .with_no_client_auth()
        .with_single_cert(certs, private)
        .map_err(|e| bad("streaming_tls_key_file", key, e.to_string()))?;
    // Upgrades are HTTP/1.1 only.
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(tokio_rustls::TlsAcceptor::from(Arc::new(config)))
}

/// The server's state, shared with the RPC layer (which mints tokens).
pub struct StreamServer {
    tokens: Tokens,
    base_url: String,
    addr: SocketAddr,
    containerizer: Arc<dyn Containerizer>,
    idle_timeout: Duration,
    sessions: Arc<Semaphore>,
    tls: Option<tokio_rustls::TlsAcceptor>,
}

impl std::fmt::Debug for StreamServer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StreamServer")
            .field("base_url", &self.base_url)
            .field("idle_timeout", &self.idle_timeout)
            .field("tls", &self.tls.is_some())
            .finish_non_exhaustive()
    }
}

impl StreamServer {
    /// Binds `addr` (port 0 picks one; URLs name the bound port); HTTPS with `tls`.
    pub async fn bind(
        addr: SocketAddr,
        containerizer: Arc<dyn Containerizer>,
        idle_timeout: Duration,
        tls: Option<tokio_rustls::TlsAcceptor>,
    ) -> Result<(Arc<StreamServer>, TcpListener), StreamServerError> {
        let listener = TcpListener::bind(addr)
            .await
            .map_err(|source| StreamServerError::Bind { addr, source })?;
        let bound = listener
            .local_addr()
            .map_err(|source| StreamServerError::Bind { addr, source })?;
        let server = StreamServer {
            tokens: Tokens::default(),
            base_url: format!("{}://{bound}", if tls.is_some() { "https" } else { "http" }),
            addr: bound,
            containerizer,
            idle_timeout,
            sessions: Arc::new(Semaphore::new(MAX_SESSIONS)),
            tls,
        };
        Ok((Arc::new(server), listener))
    }

    /// The bound address (for verbose Status).
    pub fn address(&self) -> SocketAddr {
        self.addr
    }

    /// A single-use URL for `request`.
    pub fn url_for(&self, request: Pending) -> Result<String, TooManyPending> {
        let route = request.route();
        let token = self.tokens.insert(request)?;
        Ok(format!("{}/{route}/{token}", self.base_url))
    }

    /// Accepts connections until `shutdown` completes. Each connection is served on its
    /// own task; sessions outlive nothing but their connection.
    pub async fn serve(
        self: Arc<Self>,
        listener: TcpListener,
        shutdown: impl std::future::Future<Output = ()>,
    ) {
        tracing::info!(address = %self.addr, "streaming server listening");
        tokio::pin!(shutdown);
        loop {
            let (tcp, peer) = tokio::select! {
                r = listener.accept() => match r {
                    Ok(x) => x,
                    Err(e) => {
                        tracing::warn!(error = %e, "streaming accept failed");
                        tokio::time::sleep(Duration::from_millis(100)).await;
                        continue;
                    }
                },
                _ = &mut shutdown => return,
            };
            let _ = tcp.set_nodelay(true);
            let server = self.clone();
            tokio::spawn(async move {
                let Some(tls) = server.tls.clone() else {
                    return server.serve_http(tcp, peer).await;
                };
                match tokio::time::timeout(TLS_HANDSHAKE_TIMEOUT, tls.accept(tcp)).await {
                    Ok(Ok(stream)) => server.serve_http(stream, peer).await,
                    Ok(Err(e)) => tracing::debug!(%peer, error = %e, "TLS handshake failed"),
                    Err(_) => tracing::debug!(%peer, "TLS handshake timed out"),
                }
            });
        }
    }

    /// HTTP/1.1 on one connection (plain or TLS), upgrades allowed.
    async fn serve_http<IO>(self: Arc<Self>, io: IO, peer: SocketAddr)
    where
        IO: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
    {
        let server = self;
        let service = hyper::service::service_fn(move |req| {
            let server = server.clone();
            async move { Ok::<_, std::convert::Infallible>(server.handle(req)) }
        });
        let conn = hyper::server::conn::http1::Builder::new()
            .serve_connection(TokioIo::new(io), service)
            .with_upgrades();
        if let Err(e) = conn.await {
            tracing::debug!(%peer, error = %e, "streaming connection ended");
        }
    }

    fn handle(self: &Arc<Self>, req: Request<Incoming>) -> Response<Full<Bytes>> {
        if req.method() != hyper::Method::GET && req.method() != hyper::Method::POST {
            return plain(StatusCode::METHOD_NOT_ALLOWED, "GET or POST only");
        }
        let mut parts = req.uri().path().trim_start_matches('/').splitn(2, '/');
        let (route, token) = (parts.next().unwrap_or(""), parts.next().unwrap_or(""));
        if !matches!(route, "exec" | "attach" | "portforward") || token.is_empty() {
            return plain(StatusCode::NOT_FOUND, "404 page not found");
        }
        // Consumed whatever happens next: a token is good for one request only.
        let Some(pending) = self.tokens.consume(token).filter(|p| p.route() == route) else {
            return plain(StatusCode::NOT_FOUND, "404 page not found");
        };
        let upgrade = header(&req, UPGRADE.as_str());
        if upgrade.iter().any(|u| u.eq_ignore_ascii_case("websocket")) {
            return self.upgrade_websocket(req, pending);
        }
        if !upgrade.iter().any(|u| u.eq_ignore_ascii_case("SPDY/3.1")) {
            return plain(
                StatusCode::BAD_REQUEST,
                "unable to upgrade: missing upgrade headers in request (Upgrade: SPDY/3.1)",
            );
        }
        let ours: &[&str] = match pending {
            Pending::PortForward(_) => &[portforward::PROTOCOL],
            _ => &remotecommand::PROTOCOLS,
        };
        let theirs = header(&req, PROTOCOL_HEADER);
        // The server's preference decides, as in kubelet's handshake; a client naming
        // none gets the oldest protocol.
        let protocol = if theirs.is_empty() {
            None
        } else {
            match ours.iter().find(|p| theirs.iter().any(|t| t == *p)) {
                Some(p) => Some(*p),
                None => {
                    return plain(
                        StatusCode::FORBIDDEN,
                        &format!(
                            "unable to upgrade: unable to negotiate protocol: client supports {theirs:?}, server supports {ours:?}"
                        ),
                    );
                }
            }
        };
        let Ok(permit) = self.sessions.clone().try_acquire_owned() else {
            return plain(
                StatusCode::SERVICE_UNAVAILABLE,
                "too many streaming sessions; try again later",
            );
        };
        let server = self.clone();
        let upgrading = hyper::upgrade::on(req);
        tokio::spawn(async move {
            let _permit = permit;
            let io = match upgrading.await {
                Ok(io) => TokioIo::new(io),
                Err(e) => {
                    tracing::debug!(error = %e, "streaming upgrade failed");
                    return;
                }
            };
            let (r, w) = tokio::io::split(io);
            let conn = spdy::conn::serve(r, w, server.idle_timeout);
            server
                .session(conn, pending, protocol.unwrap_or(ours[ours.len() - 1]))
                .await;
        });
        let mut resp = Response::new(Full::new(Bytes::new()));
        *resp.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
        let h = resp.headers_mut();
        h.insert(CONNECTION, HeaderValue::from_static("Upgrade"));
        h.insert(UPGRADE, HeaderValue::from_static("SPDY/3.1"));
        if let Some(p) = protocol {
            h.insert(PROTOCOL_HEADER, HeaderValue::from_static(p));
        }
        resp
    }

    /// The WebSocket handshake (RFC 6455) on hyper's upgrade; the subprotocol is the
    /// first the client offers that we serve.
    fn upgrade_websocket(
        self: &Arc<Self>,
        req: Request<Incoming>,
        pending: Pending,
    ) -> Response<Full<Bytes>> {
        let Some(key) = req.headers().get("sec-websocket-key").cloned() else {
            return plain(StatusCode::BAD_REQUEST, "missing Sec-WebSocket-Key");
        };
        let ours: &[&str] = match pending {
            Pending::PortForward(_) => &[websocket::TUNNEL_PROTOCOL],
            _ => &websocket::EXEC_PROTOCOLS,
        };
        let offered = header(&req, "sec-websocket-protocol");
        let protocol = match offered.iter().find(|p| ours.contains(&p.as_str())) {
            Some(p) => ours.iter().copied().find(|o| o == p).unwrap_or(ours[0]),
            // No subprotocol: the plain binary channel protocol, for exec and attach.
            None if offered.is_empty() && !matches!(pending, Pending::PortForward(_)) => {
                "channel.k8s.io"
            }
            None => {
                return plain(
                    StatusCode::BAD_REQUEST,
                    &format!(
                        "requested protocol(s) are not supported: {offered:?}; supports {ours:?}"
                    ),
                );
            }
        };
        let Ok(permit) = self.sessions.clone().try_acquire_owned() else {
            return plain(
                StatusCode::SERVICE_UNAVAILABLE,
                "too many streaming sessions; try again later",
            );
        };
        let server = self.clone();
        let upgrading = hyper::upgrade::on(req);
        let named = !offered.is_empty();
        tokio::spawn(async move {
            let _permit = permit;
            let io = match upgrading.await {
                Ok(io) => io,
                Err(e) => {
                    tracing::debug!(error = %e, "websocket upgrade failed");
                    return;
                }
            };
            let ws = websocket::accept(io).await;
            server.websocket_session(ws, pending, protocol).await;
        });
        let mut resp = Response::new(Full::new(Bytes::new()));
        *resp.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
        let h = resp.headers_mut();
        h.insert(CONNECTION, HeaderValue::from_static("Upgrade"));
        h.insert(UPGRADE, HeaderValue::from_static("websocket"));
        let accept = tokio_tungstenite::tungstenite::handshake::derive_accept_key(key.as_bytes());
        if let Ok(v) = HeaderValue::from_str(&accept) {
            h.insert("sec-websocket-accept", v);
        }
        if named {
            h.insert("sec-websocket-protocol", HeaderValue::from_static(protocol));
        }
        resp
    }

    async fn websocket_session(
        &self,
        ws: tokio_tungstenite::WebSocketStream<TokioIo<hyper::upgrade::Upgraded>>,
        pending: Pending,
        protocol: &'static str,
    ) {
        let (opts, container_id, cmd) = match pending {
            Pending::PortForward(req) => {
                let (r, w) = tokio::io::split(websocket::tunnel(ws));
                let conn = spdy::conn::serve(r, w, self.idle_timeout);
                return self.port_forward(conn, req).await;
            }
            Pending::Exec(req) => (
                Options {
                    stdin: req.stdin,
                    stdout: req.stdout,
                    stderr: req.stderr,
                    tty: req.tty,
                },
                req.container_id,
                Some(req.cmd),
            ),
            Pending::Attach(req) => (
                Options {
                    stdin: req.stdin,
                    stdout: req.stdout,
                    stderr: req.stderr,
                    tty: req.tty,
                },
                req.container_id,
                None,
            ),
        };
        let id = self.container_id(&container_id);
        let containerizer = self.containerizer.clone();
        websocket::serve_remote_command(
            ws,
            protocol,
            opts,
            self.idle_timeout,
            |io, closed| async move {
                let id = match id {
                    Ok(id) => id,
                    Err(e) => return Some(session::Outcome::Failed(e)),
                };
                match cmd {
                    Some(cmd) => {
                        session::run_exec(containerizer, id, cmd, opts.tty, io, closed).await
                    }
                    None => session::run_attach(containerizer, id, io, closed).await,
                }
            },
        )
        .await;
    }

    fn container_id(&self, id: &str) -> Result<ContainerId, String> {
        self.containerizer
            .container(id)
            .map(|c| ContainerId {
                value: c.id,
                parent: Some(c.pod_id),
            })
            .map_err(|e| e.to_string())
    }

    async fn port_forward(
        &self,
        conn: spdy::conn::Connection,
        req: k8s_cri::v1::PortForwardRequest,
    ) {
        let net_ns = match self.containerizer.pod(&req.pod_sandbox_id) {
            Ok(p) => p.info.net_ns,
            Err(_) => {
                conn.close().await;
                return;
            }
        };
        let target = portforward::Target {
            pod_id: req.pod_sandbox_id,
            net_ns,
            ports: req.port,
        };
        portforward::serve(conn, target).await;
    }

    async fn session(&self, conn: spdy::conn::Connection, pending: Pending, protocol: &str) {
        match pending {
            Pending::Exec(req) => {
                let opts = Options {
                    stdin: req.stdin,
                    stdout: req.stdout,
                    stderr: req.stderr,
                    tty: req.tty,
                };
                self.remote_command(conn, protocol, &req.container_id, opts, Some(req.cmd))
                    .await;
            }
            Pending::Attach(req) => {
                let opts = Options {
                    stdin: req.stdin,
                    stdout: req.stdout,
                    stderr: req.stderr,
                    tty: req.tty,
                };
                self.remote_command(conn, protocol, &req.container_id, opts, None)
                    .await;
            }
            Pending::PortForward(req) => self.port_forward(conn, req).await,
        }
    }
}

impl StreamServer {
    /// Exec (`cmd`) or attach (`None`) over SPDY: the client's streams, the session,
    /// then the status on the error stream.
    async fn remote_command(
        &self,
        mut conn: spdy::conn::Connection,
        protocol: &str,
        container_id: &str,
        opts: Options,
        cmd: Option<Vec<String>>,
    ) {
        let Some(streams) = remotecommand::wait_for_streams(&mut conn, protocol, opts).await else {
            conn.close().await;
            return;
        };
        let (io, tasks, error) = remotecommand::wire(streams, opts);
        let id = match self.container_id(container_id) {
            Ok(id) => id,
            Err(e) => {
                drop(io);
                let outcome = Some(session::Outcome::Failed(e));
                remotecommand::finish(conn, protocol, outcome, tasks, error).await;
                return;
            }
        };
        let closed = conn.closed.clone();
        let containerizer = self.containerizer.clone();
        let outcome = match cmd {
            Some(cmd) => session::run_exec(containerizer, id, cmd, opts.tty, io, closed).await,
            None => session::run_attach(containerizer, id, io, closed).await,
        };
        remotecommand::finish(conn, protocol, outcome, tasks, error).await;
    }
}

/// Every value of header `name`, comma lists split.
fn header(req: &Request<Incoming>, name: &str) -> Vec<String> {
    req.headers()
        .get_all(name)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(|v| v.trim().to_string())
        .filter(|v| !v.is_empty())
        .collect()
}

fn plain(status: StatusCode, text: &str) -> Response<Full<Bytes>> {
    let mut resp = Response::new(Full::new(Bytes::from(format!("{text}\n"))));
    *resp.status_mut() = status;
    resp.headers_mut().insert(
        hyper::header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    resp
}
