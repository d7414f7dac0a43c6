//! Arbitrary bytes as what a client sends on an upgraded connection: every frame the
//! parser takes must come out without a panic, and header blocks of SYN_STREAM and
//! HEADERS go through the connection's one decompressor, as the server reads them.
#![no_main]

#[allow(dead_code)]
#[path = "../../src/stream/spdy/frame.rs"]
mod frame;
#[allow(dead_code)]
#[path = "../../src/stream/spdy/zlib.rs"]
mod zlib;

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let mut buf = bytes::BytesMut::from(data);
    let mut dec = zlib::HeaderDecoder::new();
    while let Ok(Some(f)) = frame::parse(&mut buf) {
        match &f {
            frame::Frame::SynStream { block, .. }
            | frame::Frame::SynReply { block, .. }
            | frame::Frame::Headers { block, .. } => {
                if dec.decode(block).is_err() {
                    return;
                }
            }
            _ => {}
        }
        // What parses, encodes back to a frame that parses the same.
        let mut out = Vec::new();
        frame::encode(&f, &mut out);
        if !matches!(f, frame::Frame::Ignored { .. }) {
            let mut again = bytes::BytesMut::from(&out[..]);
            assert_eq!(frame::parse(&mut again).unwrap(), Some(f));
        }
    }
});
