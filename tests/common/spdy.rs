//! A small SPDY/3.1 client as kubectl's (moby/spdystream) behaves: HTTP/1.1 upgrade,
//! client streams with odd ids, no WINDOW_UPDATE ever sent. Frames and header blocks
//! come from the library's codec (pinned by its own tests to the SPDY/3 dictionary);
//! everything above the frames is written here.
#![allow(dead_code)]

use std::collections::HashMap;

use bytes::{Bytes, BytesMut};
use cri_mesos::stream::spdy::frame::{self, FLAG_FIN, Frame};
use cri_mesos::stream::spdy::zlib::{HeaderDecoder, HeaderEncoder};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;

type BoxRead = Box<dyn AsyncRead + Unpin + Send>;
type BoxWrite = Box<dyn AsyncWrite + Unpin + Send>;

/// A SPDY client over any byte stream (a TCP connection, or a WebSocket tunnel).
pub fn over(r: BoxRead, w: BoxWrite) -> (Writer, Reader) {
    (
        Writer {
            w,
            enc: HeaderEncoder::new(),
            next: 1,
        },
        Reader {
            r,
            dec: HeaderDecoder::new(),
            buf: BytesMut::new(),
        },
    )
}

/// The HTTP answer to an upgrade request: its status and, on 101, the connection.
pub async fn upgrade(
    url: &str,
    protocols: &[&str],
) -> Result<(Writer, Reader, Option<String>), (u16, String)> {
    let rest = url.strip_prefix("http://").expect("http URL");
    let (host, path) = rest.split_at(rest.find('/').unwrap());
    let mut tcp = TcpStream::connect(host).await.expect("connect");
    let mut req = format!(
        "POST {path} HTTP/1.1\r\nHost: {host}\r\nConnection: Upgrade\r\nUpgrade: SPDY/3.1\r\nContent-Length: 0\r\n"
    );
    for p in protocols {
        req.push_str(&format!("X-Stream-Protocol-Version: {p}\r\n"));
    }
    req.push_str("\r\n");
    tcp.write_all(req.as_bytes()).await.unwrap();
    let mut head = Vec::new();
    while !head.ends_with(b"\r\n\r\n") {
        let mut b = [0u8; 1];
        if tcp.read(&mut b).await.unwrap() == 0 {
            break;
        }
        head.push(b[0]);
    }
    let text = String::from_utf8_lossy(&head).to_string();
    let status: u16 = text
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    if status != 101 {
        let mut body = vec![0u8; 4096];
        let n = tcp.read(&mut body).await.unwrap_or(0);
        return Err((status, String::from_utf8_lossy(&body[..n]).to_string()));
    }
    let protocol = text
        .lines()
        .find_map(|l| {
            let (k, v) = l.split_once(':')?;
            k.eq_ignore_ascii_case("x-stream-protocol-version")
                .then(|| v.trim().to_string())
        })
        .filter(|p| !p.is_empty());
    let (r, w) = tcp.into_split();
    let (w, r) = over(Box::new(r), Box::new(w));
    Ok((w, r, protocol))
}

pub struct Writer {
    pub w: BoxWrite,
    enc: HeaderEncoder,
    next: u32,
}

impl Writer {
    /// SYN_STREAM with `headers`; the new stream's id.
    pub async fn open(&mut self, headers: &[(&str, &str)]) -> u32 {
        let id = self.next;
        self.next += 2;
        let block = Bytes::from(self.enc.encode(headers));
        self.frame(&Frame::SynStream {
            stream_id: id,
            flags: 0,
            block,
        })
        .await;
        id
    }

    pub async fn data(&mut self, id: u32, data: &[u8], fin: bool) {
        self.frame(&Frame::Data {
            stream_id: id,
            flags: if fin { FLAG_FIN } else { 0 },
            data: Bytes::copy_from_slice(data),
        })
        .await;
    }

    pub async fn frame(&mut self, f: &Frame) {
        let mut out = Vec::new();
        frame::encode(f, &mut out);
        let _ = self.w.write_all(&out).await;
        let _ = self.w.flush().await;
    }

    pub async fn raw(&mut self, bytes: &[u8]) {
        let _ = self.w.write_all(bytes).await;
        let _ = self.w.flush().await;
    }
}

pub struct Reader {
    pub r: BoxRead,
    dec: HeaderDecoder,
    buf: BytesMut,
}

/// What arrived on a connection until it ended.
#[derive(Debug, Default)]
pub struct Collected {
    pub data: HashMap<u32, Vec<u8>>,
    pub fin: Vec<u32>,
    pub replies: Vec<u32>,
    pub resets: Vec<(u32, u32)>,
    pub goaway: bool,
}

impl Reader {
    /// The next frame; `None` at EOF. Header blocks are decoded (the zlib stream must
    /// stay in step) and dropped.
    pub async fn next(&mut self) -> Option<Frame> {
        loop {
            if let Some(f) = frame::parse(&mut self.buf).expect("server framing") {
                if let Frame::SynReply { block, .. } | Frame::Headers { block, .. } = &f {
                    self.dec.decode(block).expect("server header block");
                }
                return Some(f);
            }
            let n = self.r.read_buf(&mut self.buf).await.ok()?;
            if n == 0 {
                return None;
            }
        }
    }

    /// Reads until `until` says stop (after each frame) or EOF.
    pub async fn collect_until(&mut self, mut until: impl FnMut(&Collected) -> bool) -> Collected {
        let mut c = Collected::default();
        while let Some(f) = self.next().await {
            match f {
                Frame::Data {
                    stream_id,
                    flags,
                    data,
                } => {
                    c.data
                        .entry(stream_id)
                        .or_default()
                        .extend_from_slice(&data);
                    if flags & FLAG_FIN != 0 {
                        c.fin.push(stream_id);
                    }
                }
                Frame::SynReply { stream_id, .. } => c.replies.push(stream_id),
                Frame::RstStream { stream_id, status } => c.resets.push((stream_id, status)),
                Frame::GoAway { .. } => c.goaway = true,
                _ => {}
            }
            if until(&c) {
                break;
            }
        }
        c
    }

    pub async fn collect(&mut self) -> Collected {
        self.collect_until(|_| false).await
    }
}

impl Collected {
    pub fn text(&self, id: u32) -> String {
        String::from_utf8_lossy(self.data.get(&id).map(|v| v.as_slice()).unwrap_or(&[])).into()
    }
}
