//! WebSocket clients as client-go's: the channel protocols of exec and attach, and
//! SPDY tunnelled in binary messages for port-forward.
#![allow(dead_code)]

use futures_util::{SinkExt, StreamExt};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::http::HeaderValue;

pub type Ws = WebSocketStream<TcpStream>;

/// Connects to `url` (http://) offering `protocols`: the socket and the chosen one, or
/// the HTTP status of a refusal.
pub async fn connect(url: &str, protocols: &str) -> Result<(Ws, Option<String>), u16> {
    let ws_url = url.replacen("http://", "ws://", 1);
    let host = ws_url
        .trim_start_matches("ws://")
        .split('/')
        .next()
        .unwrap()
        .to_string();
    let tcp = TcpStream::connect(&host).await.expect("connect");
    let mut req = ws_url.into_client_request().unwrap();
    if !protocols.is_empty() {
        req.headers_mut().insert(
            "Sec-WebSocket-Protocol",
            HeaderValue::from_str(protocols).unwrap(),
        );
    }
    match tokio_tungstenite::client_async(req, tcp).await {
        Ok((ws, resp)) => {
            let chosen = resp
                .headers()
                .get("sec-websocket-protocol")
                .and_then(|v| v.to_str().ok())
                .map(str::to_string);
            Ok((ws, chosen))
        }
        Err(tokio_tungstenite::tungstenite::Error::Http(resp)) => Err(resp.status().as_u16()),
        Err(e) => panic!("websocket handshake: {e}"),
    }
}

/// Sends `data` on `channel` (binary protocols).
pub async fn send(ws: &mut Ws, channel: u8, data: &[u8]) {
    let mut m = vec![channel];
    m.extend_from_slice(data);
    ws.send(Message::binary(m)).await.unwrap();
}

/// Everything received per channel until the server closes: (channel, bytes) in
/// order, decoded from base64 text messages when `base64`.
pub async fn collect(ws: &mut Ws, base64: bool) -> Vec<(u8, Vec<u8>)> {
    use base64::Engine;
    let mut got = Vec::new();
    while let Some(Ok(msg)) = ws.next().await {
        match msg {
            Message::Binary(b) if !b.is_empty() => got.push((b[0], b[1..].to_vec())),
            Message::Text(t) if base64 && !t.is_empty() => {
                let t = t.as_bytes();
                let data = base64::engine::general_purpose::STANDARD
                    .decode(&t[1..])
                    .unwrap();
                got.push((t[0] - b'0', data));
            }
            Message::Close(_) => break,
            _ => {}
        }
    }
    got
}

/// The bytes of one channel in `got`.
pub fn channel(got: &[(u8, Vec<u8>)], ch: u8) -> Vec<u8> {
    got.iter()
        .filter(|(c, _)| *c == ch)
        .flat_map(|(_, d)| d.clone())
        .collect()
}

/// A SPDY client inside a WebSocket (`SPDY/3.1+portforward.k8s.io`), as client-go's
/// tunnelling dialer: every write one binary message, reads the messages' bytes.
pub async fn spdy_tunnel(url: &str) -> (super::spdy::Writer, super::spdy::Reader) {
    let (ws, chosen) = connect(url, "SPDY/3.1+portforward.k8s.io")
        .await
        .expect("tunnel accepted");
    assert_eq!(chosen.as_deref(), Some("SPDY/3.1+portforward.k8s.io"));
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
        let _ = sink.close().await;
    });
    let (r, w) = tokio::io::split(theirs);
    super::spdy::over(Box::new(r), Box::new(w))
}
