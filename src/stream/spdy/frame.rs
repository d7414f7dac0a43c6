//! SPDY/3.1 frames: parsing from a byte buffer (incrementally: a partial frame is "not
//! yet") and encoding. Header blocks stay compressed here; [`super::zlib`] handles them.

use bytes::{Buf, Bytes, BytesMut};

pub const VERSION: u16 = 3;
pub const FLAG_FIN: u8 = 0x01;

pub const SYN_STREAM: u16 = 1;
pub const SYN_REPLY: u16 = 2;
pub const RST_STREAM: u16 = 3;
pub const SETTINGS: u16 = 4;
pub const PING: u16 = 6;
pub const GOAWAY: u16 = 7;
pub const HEADERS: u16 = 8;
pub const WINDOW_UPDATE: u16 = 9;

/// RST_STREAM status codes used here.
pub const PROTOCOL_ERROR: u32 = 1;
pub const INVALID_STREAM: u32 = 2;
pub const REFUSED_STREAM: u32 = 3;
pub const CANCEL: u32 = 5;

/// The largest frame payload SPDY can express (24-bit length).
pub const MAX_PAYLOAD: usize = (1 << 24) - 1;

/// One frame.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Frame {
    SynStream {
        stream_id: u32,
        flags: u8,
        /// The compressed header block.
        block: Bytes,
    },
    SynReply {
        stream_id: u32,
        flags: u8,
        block: Bytes,
    },
    RstStream {
        stream_id: u32,
        status: u32,
    },
    Ping {
        id: u32,
    },
    GoAway {
        last_good: u32,
        status: u32,
    },
    Headers {
        stream_id: u32,
        flags: u8,
        block: Bytes,
    },
    Data {
        stream_id: u32,
        flags: u8,
        data: Bytes,
    },
    /// SETTINGS, WINDOW_UPDATE and unknown control types: parsed for their length, then
    /// ignored (no flow control: the Go clients never send WINDOW_UPDATE, so a server
    /// waiting for window would hang after 64 KiB).
    Ignored {
        kind: u16,
    },
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum FrameError {
    #[error("unsupported SPDY version {0}")]
    Version(u16),
    #[error("control frame {kind} is too short ({len} bytes)")]
    Short { kind: u16, len: usize },
    #[error("stream id 0 in a {0} frame")]
    ZeroStream(&'static str),
}

fn be32(b: &[u8]) -> u32 {
    u32::from_be_bytes([b[0], b[1], b[2], b[3]])
}

/// Takes one complete frame off the front of `buf`; `Ok(None)` when more bytes are
/// needed. An error means the framing itself is broken: the connection must end.
pub fn parse(buf: &mut BytesMut) -> Result<Option<Frame>, FrameError> {
    if buf.len() < 8 {
        return Ok(None);
    }
    let len = (be32(&buf[4..8]) & 0x00ff_ffff) as usize;
    if buf.len() < 8 + len {
        return Ok(None);
    }
    let head = buf.split_to(8);
    let payload = buf.split_to(len).freeze();
    let flags = head[4];
    if head[0] & 0x80 == 0 {
        let stream_id = be32(&head[0..4]) & 0x7fff_ffff;
        if stream_id == 0 {
            return Err(FrameError::ZeroStream("DATA"));
        }
        return Ok(Some(Frame::Data {
            stream_id,
            flags,
            data: payload,
        }));
    }
    let version = u16::from_be_bytes([head[0], head[1]]) & 0x7fff;
    let kind = u16::from_be_bytes([head[2], head[3]]);
    if version != VERSION {
        return Err(FrameError::Version(version));
    }
    let need = match kind {
        SYN_STREAM => 10,
        SYN_REPLY | HEADERS | PING => 4,
        RST_STREAM | GOAWAY | WINDOW_UPDATE => 8,
        _ => 0,
    };
    if payload.len() < need {
        return Err(FrameError::Short { kind, len });
    }
    // Frames without a stream id (SETTINGS, unknown kinds) may be shorter than one.
    let id = if payload.len() >= 4 {
        be32(&payload) & 0x7fff_ffff
    } else {
        0
    };
    let mut p = payload.clone();
    Ok(Some(match kind {
        SYN_STREAM => {
            p.advance(10);
            if id == 0 {
                return Err(FrameError::ZeroStream("SYN_STREAM"));
            }
            Frame::SynStream {
                stream_id: id,
                flags,
                block: p,
            }
        }
        SYN_REPLY | HEADERS => {
            p.advance(4);
            if kind == SYN_REPLY {
                Frame::SynReply {
                    stream_id: id,
                    flags,
                    block: p,
                }
            } else {
                Frame::Headers {
                    stream_id: id,
                    flags,
                    block: p,
                }
            }
        }
        RST_STREAM => Frame::RstStream {
            stream_id: id,
            status: be32(&payload[4..]),
        },
        PING => Frame::Ping { id: be32(&payload) },
        GOAWAY => Frame::GoAway {
            last_good: id,
            status: be32(&payload[4..]),
        },
        other => Frame::Ignored { kind: other },
    }))
}

fn control(out: &mut Vec<u8>, kind: u16, flags: u8, payload_len: usize) {
    out.extend_from_slice(&(0x8000 | VERSION).to_be_bytes());
    out.extend_from_slice(&kind.to_be_bytes());
    out.extend_from_slice(&((flags as u32) << 24 | payload_len as u32).to_be_bytes());
}

/// Appends the encoding of `frame` to `out`. Data longer than [`MAX_PAYLOAD`] must be
/// split by the caller.
pub fn encode(frame: &Frame, out: &mut Vec<u8>) {
    match frame {
        Frame::SynStream {
            stream_id,
            flags,
            block,
        } => {
            control(out, SYN_STREAM, *flags, 10 + block.len());
            out.extend_from_slice(&stream_id.to_be_bytes());
            out.extend_from_slice(&0u32.to_be_bytes());
            out.extend_from_slice(&[0, 0]);
            out.extend_from_slice(block);
        }
        Frame::SynReply {
            stream_id,
            flags,
            block,
        }
        | Frame::Headers {
            stream_id,
            flags,
            block,
        } => {
            let kind = if matches!(frame, Frame::SynReply { .. }) {
                SYN_REPLY
            } else {
                HEADERS
            };
            control(out, kind, *flags, 4 + block.len());
            out.extend_from_slice(&stream_id.to_be_bytes());
            out.extend_from_slice(block);
        }
        Frame::RstStream { stream_id, status } => {
            control(out, RST_STREAM, 0, 8);
            out.extend_from_slice(&stream_id.to_be_bytes());
            out.extend_from_slice(&status.to_be_bytes());
        }
        Frame::Ping { id } => {
            control(out, PING, 0, 4);
            out.extend_from_slice(&id.to_be_bytes());
        }
        Frame::GoAway { last_good, status } => {
            control(out, GOAWAY, 0, 8);
            out.extend_from_slice(&last_good.to_be_bytes());
            out.extend_from_slice(&status.to_be_bytes());
        }
        Frame::Data {
            stream_id,
            flags,
            data,
        } => {
            debug_assert!(data.len() <= MAX_PAYLOAD);
            out.extend_from_slice(&(stream_id & 0x7fff_ffff).to_be_bytes());
            out.extend_from_slice(&((*flags as u32) << 24 | data.len() as u32).to_be_bytes());
            out.extend_from_slice(data);
        }
        Frame::Ignored { .. } => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn buf(b: &[u8]) -> BytesMut {
        BytesMut::from(b)
    }

    #[test]
    fn syn_stream_built_by_hand() {
        // Control bit + version 3, type 1, flags 0, length 14; stream 1, assoc 0,
        // priority/slot, then 4 bytes of (compressed) block.
        let mut b = buf(&[
            0x80, 0x03, 0x00, 0x01, 0x00, 0x00, 0x00, 0x0e, 0, 0, 0, 1, 0, 0, 0, 0, 0x60, 0, b'a',
            b'b', b'c', b'd',
        ]);
        let f = parse(&mut b).unwrap().unwrap();
        assert_eq!(
            f,
            Frame::SynStream {
                stream_id: 1,
                flags: 0,
                block: Bytes::from_static(b"abcd")
            }
        );
        assert!(b.is_empty());
    }

    #[test]
    fn data_frames_and_partial_input() {
        let mut b = buf(&[0, 0, 0, 3, 0x01, 0, 0, 2, b'h']);
        assert_eq!(parse(&mut b).unwrap(), None, "one byte is missing");
        b.extend_from_slice(b"i");
        assert_eq!(
            parse(&mut b).unwrap().unwrap(),
            Frame::Data {
                stream_id: 3,
                flags: FLAG_FIN,
                data: Bytes::from_static(b"hi")
            }
        );
    }

    #[test]
    fn settings_and_window_update_are_ignored() {
        let mut b = buf(&[
            0x80, 3, 0, 4, 0, 0, 0, 12, 0, 0, 0, 1, 0, 0, 0, 7, 0, 1, 0, 0, //
            0x80, 3, 0, 9, 0, 0, 0, 8, 0, 0, 0, 1, 0, 0, 0x10, 0,
        ]);
        assert_eq!(
            parse(&mut b).unwrap().unwrap(),
            Frame::Ignored { kind: SETTINGS }
        );
        assert_eq!(
            parse(&mut b).unwrap().unwrap(),
            Frame::Ignored {
                kind: WINDOW_UPDATE
            }
        );
    }

    /// Found by the fuzzer: an empty control frame of a kind without a stream id.
    #[test]
    fn empty_settings_and_unknown_frames_parse() {
        let mut b = buf(&[0x80, 3, 0, 4, 0, 0, 0, 0, 0x80, 3, 0, 0x2d, 0, 0, 0, 0]);
        assert_eq!(parse(&mut b), Ok(Some(Frame::Ignored { kind: SETTINGS })));
        assert_eq!(parse(&mut b), Ok(Some(Frame::Ignored { kind: 0x2d })));
        assert!(b.is_empty());
    }

    #[test]
    fn broken_framing_is_an_error() {
        assert_eq!(
            parse(&mut buf(&[0x80, 2, 0, 1, 0, 0, 0, 0])),
            Err(FrameError::Version(2))
        );
        assert!(matches!(
            parse(&mut buf(&[0x80, 3, 0, 3, 0, 0, 0, 2, 0, 0])),
            Err(FrameError::Short { .. })
        ));
        assert_eq!(
            parse(&mut buf(&[0, 0, 0, 0, 0, 0, 0, 0])),
            Err(FrameError::ZeroStream("DATA"))
        );
    }

    #[test]
    fn encode_parse_round_trip() {
        for f in [
            Frame::SynReply {
                stream_id: 5,
                flags: 0,
                block: Bytes::from_static(b"xyz"),
            },
            Frame::RstStream {
                stream_id: 7,
                status: CANCEL,
            },
            Frame::Ping { id: 9 },
            Frame::GoAway {
                last_good: 3,
                status: 0,
            },
            Frame::Data {
                stream_id: 1,
                flags: FLAG_FIN,
                data: Bytes::from_static(b"payload"),
            },
            Frame::SynStream {
                stream_id: 11,
                flags: FLAG_FIN,
                block: Bytes::from_static(b"q"),
            },
        ] {
            let mut out = Vec::new();
            encode(&f, &mut out);
            let mut b = BytesMut::from(&out[..]);
            assert_eq!(parse(&mut b).unwrap().unwrap(), f);
            assert!(b.is_empty());
        }
    }
}
