//! SPDY/3 header blocks: a count and length-prefixed name/value pairs, zlib-compressed
//! with the SPDY/3 dictionary. Each direction of a connection is ONE zlib stream (the
//! peer's decompressor keeps its window across frames), each block ends with a
//! SYNC_FLUSH so it can be decoded on its own arrival.

use std::sync::OnceLock;

use flate2::{Compress, Compression, Decompress, FlushCompress, FlushDecompress, Status};

/// A decoded header block: lowercase names, values (several values of one name are
/// NUL-separated on the wire and kept joined here).
pub type Headers = Vec<(String, String)>;

/// Decompressed header blocks larger than this end the connection: a peer cannot make
/// the daemon inflate a zlib bomb.
pub const MAX_HEADER_BLOCK: usize = 256 << 10;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum HeaderError {
    #[error("header block does not inflate: {0}")]
    Inflate(String),
    #[error("header block is larger than {MAX_HEADER_BLOCK} bytes")]
    TooLarge,
    #[error("header block is malformed: {0}")]
    Malformed(&'static str),
}

/// The words of the SPDY/3 dictionary (draft 3, section 2.6.10.1), each put on the wire
/// as a 32-bit big-endian length and the word, followed by [`DICTIONARY_TAIL`] as is.
const DICTIONARY_WORDS: &[&str] = &[
    "options",
    "head",
    "post",
    "put",
    "delete",
    "trace",
    "accept",
    "accept-charset",
    "accept-encoding",
    "accept-language",
    "accept-ranges",
    "age",
    "allow",
    "authorization",
    "cache-control",
    "connection",
    "content-base",
    "content-encoding",
    "content-language",
    "content-length",
    "content-location",
    "content-md5",
    "content-range",
    "content-type",
    "date",
    "etag",
    "expect",
    "expires",
    "from",
    "host",
    "if-match",
    "if-modified-since",
    "if-none-match",
    "if-range",
    "if-unmodified-since",
    "last-modified",
    "location",
    "max-forwards",
    "pragma",
    "proxy-authenticate",
    "proxy-authorization",
    "range",
    "referer",
    "retry-after",
    "server",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
    "user-agent",
    "vary",
    "via",
    "warning",
    "www-authenticate",
    "method",
    "get",
    "status",
    "200 OK",
    "version",
    "HTTP/1.1",
    "url",
    "public",
    "set-cookie",
    "keep-alive",
    "origin",
];

const DICTIONARY_TAIL: &str = concat!(
    "100101201202205206300302303304305306307402405406407408409410411412413414415416417",
    "502504505203 Non-Authoritative Information204 No Content301 Moved Permanently",
    "400 Bad Request401 Unauthorized403 Forbidden404 Not Found500 Internal Server Error",
    "501 Not Implemented503 Service UnavailableJan Feb Mar Apr May Jun Jul Aug Sept Oct ",
    "Nov Dec 00:00:00 Mon, Tue, Wed, Thu, Fri, Sat, Sun, GMTchunked,text/html,image/png,",
    "image/jpg,image/gif,application/xml,application/xhtml+xml,text/plain,",
    "text/javascript,publicprivatemax-age=gzip,deflate,sdchcharset=utf-8",
    "charset=iso-8859-1,utf-,*,enq=0.",
);

/// The SPDY/3 zlib dictionary (1423 bytes), built once.
pub fn dictionary() -> &'static [u8] {
    static DICT: OnceLock<Vec<u8>> = OnceLock::new();
    DICT.get_or_init(|| {
        let mut d = Vec::with_capacity(1423);
        for w in DICTIONARY_WORDS {
            d.extend_from_slice(&(w.len() as u32).to_be_bytes());
            d.extend_from_slice(w.as_bytes());
        }
        d.extend_from_slice(DICTIONARY_TAIL.as_bytes());
        d
    })
}

/// Encodes header pairs into an uncompressed SPDY/3 block.
pub fn encode_block(headers: &[(&str, &str)]) -> Vec<u8> {
    let mut out = Vec::new();
    out.extend_from_slice(&(headers.len() as u32).to_be_bytes());
    for (name, value) in headers {
        out.extend_from_slice(&(name.len() as u32).to_be_bytes());
        out.extend_from_slice(name.as_bytes());
        out.extend_from_slice(&(value.len() as u32).to_be_bytes());
        out.extend_from_slice(value.as_bytes());
    }
    out
}

/// Parses an uncompressed block. Names are lowercased (SPDY requires lowercase names;
/// a client sending `StreamType` still means `streamtype`).
pub fn decode_block(mut b: &[u8]) -> Result<Headers, HeaderError> {
    fn take<'a>(b: &mut &'a [u8], n: usize) -> Result<&'a [u8], HeaderError> {
        if b.len() < n {
            return Err(HeaderError::Malformed("truncated"));
        }
        let (head, rest) = b.split_at(n);
        *b = rest;
        Ok(head)
    }
    fn u32_of(b: &mut &[u8]) -> Result<usize, HeaderError> {
        let v = take(b, 4)?;
        Ok(u32::from_be_bytes([v[0], v[1], v[2], v[3]]) as usize)
    }
    let count = u32_of(&mut b)?;
    // Each pair takes at least 8 bytes: a count beyond that is a lie, not an allocation.
    if count > b.len() / 8 {
        return Err(HeaderError::Malformed("pair count exceeds the block"));
    }
    let mut out = Vec::with_capacity(count);
    for _ in 0..count {
        let n = u32_of(&mut b)?;
        let name = take(&mut b, n)?;
        let n = u32_of(&mut b)?;
        let value = take(&mut b, n)?;
        let name = std::str::from_utf8(name).map_err(|_| HeaderError::Malformed("name"))?;
        if name.is_empty() {
            return Err(HeaderError::Malformed("empty name"));
        }
        out.push((
            name.to_ascii_lowercase(),
            String::from_utf8_lossy(value).into_owned(),
        ));
    }
    Ok(out)
}

/// The first value of `name` in `headers`.
pub fn get<'a>(headers: &'a Headers, name: &str) -> Option<&'a str> {
    headers
        .iter()
        .find(|(n, _)| n == name)
        .map(|(_, v)| v.split('\0').next().unwrap_or(""))
}

/// One direction's compressor.
pub struct HeaderEncoder {
    z: Compress,
}

impl std::fmt::Debug for HeaderEncoder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("HeaderEncoder")
    }
}

impl Default for HeaderEncoder {
    fn default() -> Self {
        Self::new()
    }
}

impl HeaderEncoder {
    pub fn new() -> HeaderEncoder {
        let mut z = Compress::new(Compression::best(), true);
        // Before any input: the zlib header then names the dictionary (FDICT), as the
        // peer's `zlib.NewReaderDict` expects.
        z.set_dictionary(dictionary())
            .expect("a fresh compressor takes a dictionary");
        HeaderEncoder { z }
    }

    /// Compresses `headers` into the next block of this direction's stream.
    pub fn encode(&mut self, headers: &[(&str, &str)]) -> Vec<u8> {
        let raw = encode_block(headers);
        let mut out = Vec::with_capacity(raw.len() + 64);
        let mut input = &raw[..];
        loop {
            out.reserve(256);
            let before = self.z.total_in();
            // Compression into a Vec with spare room cannot fail for a valid stream.
            let status = self
                .z
                .compress_vec(input, &mut out, FlushCompress::Sync)
                .unwrap_or(Status::StreamEnd);
            input = &input[(self.z.total_in() - before) as usize..];
            if status == Status::StreamEnd || (input.is_empty() && out.len() < out.capacity()) {
                break;
            }
        }
        out
    }
}

/// One direction's decompressor.
pub struct HeaderDecoder {
    z: Decompress,
}

impl std::fmt::Debug for HeaderDecoder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("HeaderDecoder")
    }
}

impl Default for HeaderDecoder {
    fn default() -> Self {
        Self::new()
    }
}

impl HeaderDecoder {
    pub fn new() -> HeaderDecoder {
        HeaderDecoder {
            z: Decompress::new(true),
        }
    }

    /// Inflates the next block of the peer's stream and parses it. An error leaves the
    /// stream unusable: the connection must end.
    pub fn decode(&mut self, block: &[u8]) -> Result<Headers, HeaderError> {
        let mut out = Vec::with_capacity(block.len() * 4 + 64);
        let mut input = block;
        loop {
            out.reserve(1024);
            let (in_before, out_before) = (self.z.total_in(), self.z.total_out());
            let mut dictionary_set = false;
            match self
                .z
                .decompress_vec(input, &mut out, FlushDecompress::Sync)
            {
                Ok(Status::StreamEnd) => return Err(HeaderError::Inflate("stream ended".into())),
                Ok(_) => {}
                // The first block: zlib read the header naming the dictionary and stops.
                Err(e) if e.needs_dictionary().is_some() => {
                    self.z
                        .set_dictionary(dictionary())
                        .map_err(|e| HeaderError::Inflate(e.to_string()))?;
                    dictionary_set = true;
                }
                Err(e) => return Err(HeaderError::Inflate(e.to_string())),
            }
            let consumed = (self.z.total_in() - in_before) as usize;
            input = &input[consumed..];
            if out.len() > MAX_HEADER_BLOCK {
                return Err(HeaderError::TooLarge);
            }
            if input.is_empty() && out.len() < out.capacity() {
                break;
            }
            if consumed == 0 && self.z.total_out() == out_before && !dictionary_set {
                return Err(HeaderError::Inflate("no progress".into()));
            }
        }
        decode_block(&out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use sha2::Digest;

    /// The dictionary is the one every SPDY/3 peer uses: its length and digest pin it.
    #[test]
    fn dictionary_is_the_spdy3_one() {
        let d = dictionary();
        assert_eq!(d.len(), 1423);
        assert_eq!(
            hex::encode(sha2::Sha256::digest(d)),
            "51d27341373f923f3cd88e1eb7162aeaa3723d7585ff2399201dc06498407f02"
        );
    }

    #[test]
    fn blocks_round_trip_across_one_stream_per_direction() {
        let mut enc = HeaderEncoder::new();
        let mut dec = HeaderDecoder::new();
        for i in 0..5 {
            let port = i.to_string();
            let block = enc.encode(&[("streamtype", "data"), ("port", &port)]);
            let h = dec.decode(&block).unwrap();
            assert_eq!(get(&h, "streamtype"), Some("data"));
            assert_eq!(get(&h, "port"), Some(port.as_str()));
        }
        // The first block names the dictionary (FDICT set in the zlib header).
        let first = HeaderEncoder::new().encode(&[]);
        assert_eq!(first[1] & 0x20, 0x20);
    }

    #[test]
    fn garbage_is_an_error_not_a_panic() {
        let mut dec = HeaderDecoder::new();
        assert!(dec.decode(b"not zlib at all").is_err());
        assert!(decode_block(&[0, 0, 0, 9]).is_err());
        assert!(decode_block(&[0, 0, 0, 1, 0, 0, 0, 4, b'a']).is_err());
        // A raw (uncompressed) block of a huge count is refused before allocating.
        assert!(decode_block(&[0xff, 0xff, 0xff, 0xff, 0, 0]).is_err());
    }

    #[test]
    fn names_are_lowercased_and_multi_values_split() {
        let h = decode_block(&encode_block(&[("StreamType", "error"), ("x", "a\0b")])).unwrap();
        assert_eq!(get(&h, "streamtype"), Some("error"));
        assert_eq!(get(&h, "x"), Some("a"));
    }
}
