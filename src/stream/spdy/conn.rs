//! A SPDY/3.1 server connection: a reader task that parses frames, answers PINGs,
//! replies to each SYN_STREAM and routes DATA to its stream; a writer task that owns
//! the outgoing header compressor and the socket's write half.
//!
//! Memory is bounded without flow control: outgoing data goes through a bounded channel
//! (a sender that finds it full waits, so a pump stops reading its source fd), incoming
//! data through a small bounded channel per stream (the reader waits, so the peer's TCP
//! window fills).

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use super::frame::{self, FLAG_FIN, Frame};
use super::zlib::{HeaderDecoder, HeaderEncoder, Headers};

/// Frames queued for the writer; a full queue makes senders wait. With data frames of
/// at most [`CHUNK`], a connection holds at most about 512 KiB of output.
const OUT_QUEUE: usize = 16;
/// Data frames queued per incoming stream.
const IN_QUEUE: usize = 16;
/// New streams not yet taken by the handler.
const NEW_STREAMS: usize = 16;
/// Outgoing data frames carry at most this much (one read of a pump).
pub const CHUNK: usize = 32 << 10;

#[derive(Debug)]
enum Out {
    Frame(Frame),
    Reply(u32),
    /// GOAWAY, then shut the write half down.
    Close,
}

/// The peer went away (or the connection was closed).
#[derive(Debug, thiserror::Error)]
#[error("the SPDY connection is closed")]
pub struct Closed;

/// A stream the peer opened (SYN_STREAM), already replied to.
#[derive(Debug)]
pub struct Stream {
    pub id: u32,
    pub headers: Headers,
    /// Incoming data; ends at the peer's FIN or RST_STREAM, or when the connection ends.
    pub rx: mpsc::Receiver<Bytes>,
    pub tx: StreamSender,
}

impl Stream {
    pub fn header(&self, name: &str) -> Option<&str> {
        super::zlib::get(&self.headers, name)
    }
}

/// The sending side of one stream.
#[derive(Debug, Clone)]
pub struct StreamSender {
    id: u32,
    out: mpsc::Sender<Out>,
}

impl StreamSender {
    /// Queues `data` (waiting while the connection's queue is full).
    pub async fn send(&self, data: Bytes) -> Result<(), Closed> {
        let mut data = data;
        while !data.is_empty() {
            let part = data.split_to(data.len().min(frame::MAX_PAYLOAD));
            self.out
                .send(Out::Frame(Frame::Data {
                    stream_id: self.id,
                    flags: 0,
                    data: part,
                }))
                .await
                .map_err(|_| Closed)?;
        }
        Ok(())
    }

    /// Half-closes this stream from our side (an empty DATA frame with FIN).
    pub async fn finish(&self) -> Result<(), Closed> {
        self.out
            .send(Out::Frame(Frame::Data {
                stream_id: self.id,
                flags: FLAG_FIN,
                data: Bytes::new(),
            }))
            .await
            .map_err(|_| Closed)
    }

    /// Ends this stream abnormally (RST_STREAM).
    pub async fn reset(&self, status: u32) -> Result<(), Closed> {
        self.out
            .send(Out::Frame(Frame::RstStream {
                stream_id: self.id,
                status,
            }))
            .await
            .map_err(|_| Closed)
    }
}

/// A served connection: the streams the peer opens, and a token fired when it is gone.
#[derive(Debug)]
pub struct Connection {
    pub streams: mpsc::Receiver<Stream>,
    /// Cancelled when the peer closed or broke the connection, it idled out, or
    /// [`Connection::close`] was called. Handlers end their sessions on it.
    pub closed: CancellationToken,
    out: mpsc::Sender<Out>,
    writer: tokio::task::JoinHandle<()>,
}

impl Connection {
    /// Sends GOAWAY, flushes what is queued and closes the connection.
    pub async fn close(self) {
        let _ = self.out.send(Out::Close).await;
        drop(self.out);
        let _ = self.writer.await;
        self.closed.cancel();
    }
}

/// Serves SPDY on an upgraded connection. `idle`: with no frame either way for that
/// long, the connection is closed.
pub fn serve<R, W>(reader: R, writer: W, idle: Duration) -> Connection
where
    R: AsyncRead + Unpin + Send + 'static,
    W: AsyncWrite + Unpin + Send + 'static,
{
    let (out_tx, out_rx) = mpsc::channel(OUT_QUEUE);
    let (new_tx, new_rx) = mpsc::channel(NEW_STREAMS);
    let closed = CancellationToken::new();
    let epoch = Instant::now();
    let activity = Arc::new(AtomicU64::new(0));
    let writer = tokio::spawn(write_loop(
        writer,
        out_rx,
        closed.clone(),
        activity.clone(),
        epoch,
    ));
    tokio::spawn(read_loop(
        reader,
        out_tx.clone(),
        new_tx,
        closed.clone(),
        Idle {
            activity,
            epoch,
            limit: idle,
        },
    ));
    Connection {
        streams: new_rx,
        closed,
        out: out_tx,
        writer,
    }
}

struct Idle {
    activity: Arc<AtomicU64>,
    epoch: Instant,
    limit: Duration,
}

impl Idle {
    fn touch(&self) {
        touch(&self.activity, self.epoch);
    }
    fn deadline(&self) -> tokio::time::Instant {
        let last = self.epoch + Duration::from_millis(self.activity.load(Ordering::Relaxed));
        tokio::time::Instant::from_std(last + self.limit)
    }
}

fn touch(activity: &AtomicU64, epoch: Instant) {
    activity.store(epoch.elapsed().as_millis() as u64, Ordering::Relaxed);
}

async fn write_loop<W: AsyncWrite + Unpin>(
    mut w: W,
    mut rx: mpsc::Receiver<Out>,
    closed: CancellationToken,
    activity: Arc<AtomicU64>,
    epoch: Instant,
) {
    let mut enc = HeaderEncoder::new();
    let mut buf = Vec::with_capacity(CHUNK + 64);
    loop {
        let item = tokio::select! {
            biased;
            item = rx.recv() => item,
            _ = closed.cancelled() => None,
        };
        let Some(item) = item else { break };
        buf.clear();
        let close = matches!(item, Out::Close);
        match item {
            Out::Frame(f) => frame::encode(&f, &mut buf),
            Out::Reply(id) => frame::encode(
                &Frame::SynReply {
                    stream_id: id,
                    flags: 0,
                    block: Bytes::from(enc.encode(&[])),
                },
                &mut buf,
            ),
            Out::Close => frame::encode(
                &Frame::GoAway {
                    last_good: 0,
                    status: 0,
                },
                &mut buf,
            ),
        }
        // Anything queued behind goes out in the same write.
        if !close {
            while buf.len() < CHUNK {
                match rx.try_recv() {
                    Ok(Out::Frame(f)) => frame::encode(&f, &mut buf),
                    Ok(Out::Reply(id)) => frame::encode(
                        &Frame::SynReply {
                            stream_id: id,
                            flags: 0,
                            block: Bytes::from(enc.encode(&[])),
                        },
                        &mut buf,
                    ),
                    Ok(Out::Close) => {
                        frame::encode(
                            &Frame::GoAway {
                                last_good: 0,
                                status: 0,
                            },
                            &mut buf,
                        );
                        let _ = w.write_all(&buf).await;
                        let _ = w.shutdown().await;
                        closed.cancel();
                        return;
                    }
                    Err(_) => break,
                }
            }
        }
        if w.write_all(&buf).await.is_err() || w.flush().await.is_err() {
            break;
        }
        touch(&activity, epoch);
        if close {
            break;
        }
    }
    let _ = w.shutdown().await;
    closed.cancel();
}

async fn read_loop<R: AsyncRead + Unpin>(
    mut r: R,
    out: mpsc::Sender<Out>,
    new_streams: mpsc::Sender<Stream>,
    closed: CancellationToken,
    idle: Idle,
) {
    let mut dec = HeaderDecoder::new();
    let mut buf = BytesMut::with_capacity(64 << 10);
    let mut inbound: HashMap<u32, mpsc::Sender<Bytes>> = HashMap::new();
    idle.touch();
    let why = 'conn: loop {
        loop {
            let f = match frame::parse(&mut buf) {
                Ok(Some(f)) => f,
                Ok(None) => break,
                Err(e) => break 'conn format!("{e}"),
            };
            idle.touch();
            match f {
                Frame::SynStream {
                    stream_id,
                    flags,
                    block,
                } => {
                    let headers = match dec.decode(&block) {
                        Ok(h) => h,
                        Err(e) => break 'conn format!("stream {stream_id}: {e}"),
                    };
                    if inbound.contains_key(&stream_id) {
                        let _ = out
                            .send(Out::Frame(Frame::RstStream {
                                stream_id,
                                status: frame::PROTOCOL_ERROR,
                            }))
                            .await;
                        continue;
                    }
                    let (tx, rx) = mpsc::channel(IN_QUEUE);
                    if flags & FLAG_FIN == 0 {
                        inbound.insert(stream_id, tx);
                    }
                    let stream = Stream {
                        id: stream_id,
                        headers,
                        rx,
                        tx: StreamSender {
                            id: stream_id,
                            out: out.clone(),
                        },
                    };
                    if out.send(Out::Reply(stream_id)).await.is_err() {
                        break 'conn "closed".into();
                    }
                    // Never wait for the handler here: it may be busy with a session
                    // whose stdin this loop feeds.
                    if new_streams.try_send(stream).is_err() {
                        // The handler takes no more streams (or not so many).
                        inbound.remove(&stream_id);
                        let _ = out
                            .send(Out::Frame(Frame::RstStream {
                                stream_id,
                                status: frame::REFUSED_STREAM,
                            }))
                            .await;
                    }
                }
                Frame::Headers { block, .. } | Frame::SynReply { block, .. } => {
                    // Decoded only to keep the peer's zlib stream in step.
                    if let Err(e) = dec.decode(&block) {
                        break 'conn e.to_string();
                    }
                }
                Frame::Data {
                    stream_id,
                    flags,
                    data,
                } => {
                    let Some(tx) = inbound.get(&stream_id) else {
                        let _ = out
                            .send(Out::Frame(Frame::RstStream {
                                stream_id,
                                status: frame::INVALID_STREAM,
                            }))
                            .await;
                        continue;
                    };
                    if !data.is_empty() && tx.send(data).await.is_err() {
                        inbound.remove(&stream_id);
                    }
                    if flags & FLAG_FIN != 0 {
                        inbound.remove(&stream_id);
                    }
                }
                Frame::RstStream { stream_id, .. } => {
                    inbound.remove(&stream_id);
                }
                Frame::Ping { id } => {
                    let _ = out.send(Out::Frame(Frame::Ping { id })).await;
                }
                Frame::GoAway { .. } | Frame::Ignored { .. } => {}
            }
        }
        if buf.capacity() - buf.len() < 8 << 10 {
            buf.reserve(64 << 10);
        }
        let n = tokio::select! {
            n = r.read_buf(&mut buf) => n,
            _ = closed.cancelled() => break 'conn "closed".into(),
            _ = tokio::time::sleep_until(idle.deadline()) => {
                if idle.deadline() <= tokio::time::Instant::now() {
                    break 'conn "idle timeout".into();
                }
                continue;
            }
        };
        match n {
            Ok(0) => break "peer closed".into(),
            Ok(_) => {}
            Err(e) => break e.to_string(),
        }
    };
    tracing::debug!(reason = %why, "SPDY connection ends");
    if why != "peer closed" && why != "closed" {
        let _ = out.try_send(Out::Close);
    }
    drop(inbound);
    closed.cancel();
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::stream::spdy::frame::{INVALID_STREAM, PROTOCOL_ERROR};

    struct Peer {
        io: tokio::io::DuplexStream,
        enc: HeaderEncoder,
        dec: HeaderDecoder,
        buf: BytesMut,
    }

    impl Peer {
        async fn send(&mut self, f: Frame) {
            let mut out = Vec::new();
            frame::encode(&f, &mut out);
            self.io.write_all(&out).await.unwrap();
        }
        async fn open(&mut self, id: u32, headers: &[(&str, &str)]) {
            let block = Bytes::from(self.enc.encode(headers));
            self.send(Frame::SynStream {
                stream_id: id,
                flags: 0,
                block,
            })
            .await;
        }
        async fn next(&mut self) -> Option<Frame> {
            loop {
                if let Some(f) = frame::parse(&mut self.buf).unwrap() {
                    if let Frame::SynReply { block, .. } = &f {
                        self.dec.decode(block).unwrap();
                    }
                    return Some(f);
                }
                if self.io.read_buf(&mut self.buf).await.unwrap() == 0 {
                    return None;
                }
            }
        }
    }

    fn pair() -> (Connection, Peer) {
        let (a, b) = tokio::io::duplex(1 << 20);
        let (r, w) = tokio::io::split(a);
        let conn = serve(r, w, Duration::from_secs(3600));
        let peer = Peer {
            io: b,
            enc: HeaderEncoder::new(),
            dec: HeaderDecoder::new(),
            buf: BytesMut::new(),
        };
        (conn, peer)
    }

    #[tokio::test]
    async fn streams_are_replied_data_routed_and_pings_echoed() {
        let (mut conn, mut peer) = pair();
        peer.open(1, &[("streamtype", "stdin")]).await;
        let mut s = conn.streams.recv().await.unwrap();
        assert_eq!((s.id, s.header("streamtype")), (1, Some("stdin")));
        assert!(matches!(
            peer.next().await,
            Some(Frame::SynReply { stream_id: 1, .. })
        ));
        peer.send(Frame::Data {
            stream_id: 1,
            flags: FLAG_FIN,
            data: Bytes::from_static(b"abc"),
        })
        .await;
        assert_eq!(s.rx.recv().await.as_deref(), Some(&b"abc"[..]));
        assert_eq!(s.rx.recv().await, None, "FIN ends the stream");
        peer.send(Frame::Ping { id: 7 }).await;
        assert_eq!(peer.next().await, Some(Frame::Ping { id: 7 }));
        // Output past any 64 KiB window goes out without a WINDOW_UPDATE.
        s.tx.send(Bytes::from(vec![b'x'; 200 << 10])).await.unwrap();
        s.tx.finish().await.unwrap();
        let mut got = 0;
        loop {
            match peer.next().await.unwrap() {
                Frame::Data { data, flags, .. } => {
                    got += data.len();
                    if flags & FLAG_FIN != 0 {
                        break;
                    }
                }
                other => panic!("{other:?}"),
            }
        }
        assert_eq!(got, 200 << 10);
        conn.close().await;
        assert!(matches!(peer.next().await, Some(Frame::GoAway { .. })));
        assert_eq!(peer.next().await, None);
    }

    #[tokio::test]
    async fn data_for_an_unknown_stream_resets_that_stream_only() {
        let (mut conn, mut peer) = pair();
        peer.open(1, &[("streamtype", "stdin")]).await;
        let mut s = conn.streams.recv().await.unwrap();
        peer.next().await.unwrap();
        peer.send(Frame::Data {
            stream_id: 9,
            flags: 0,
            data: Bytes::from_static(b"?"),
        })
        .await;
        assert_eq!(
            peer.next().await,
            Some(Frame::RstStream {
                stream_id: 9,
                status: INVALID_STREAM
            })
        );
        // A second SYN_STREAM for a live id is refused, the first stays.
        peer.open(1, &[("streamtype", "stdout")]).await;
        assert_eq!(
            peer.next().await,
            Some(Frame::RstStream {
                stream_id: 1,
                status: PROTOCOL_ERROR
            })
        );
        peer.send(Frame::Data {
            stream_id: 1,
            flags: 0,
            data: Bytes::from_static(b"ok"),
        })
        .await;
        assert_eq!(s.rx.recv().await.as_deref(), Some(&b"ok"[..]));
        assert!(!conn.closed.is_cancelled());
    }

    #[tokio::test]
    async fn garbage_ends_the_connection_with_goaway() {
        for junk in [
            &[0x80u8, 2, 0, 1, 0, 0, 0, 0][..],
            // A SYN_STREAM whose header block is not zlib.
            &[
                0x80, 3, 0, 1, 0, 0, 0, 14, 0, 0, 0, 1, 0, 0, 0, 0, 0, 0, 1, 2, 3, 4,
            ][..],
        ] {
            let (conn, mut peer) = pair();
            peer.io.write_all(junk).await.unwrap();
            assert!(
                matches!(peer.next().await, Some(Frame::GoAway { .. })),
                "{junk:?}"
            );
            assert_eq!(peer.next().await, None);
            conn.closed.cancelled().await;
        }
    }

    #[tokio::test]
    async fn the_peer_closing_cancels_the_connection() {
        let (mut conn, peer) = pair();
        drop(peer);
        conn.closed.cancelled().await;
        assert!(conn.streams.recv().await.is_none());
    }
}
