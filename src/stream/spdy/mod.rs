//! SPDY/3.1, as far as Kubernetes streaming uses it (moby/spdystream's dialect): no
//! flow control, no server push, zlib header blocks with the SPDY/3 dictionary.

pub mod conn;
pub mod frame;
pub mod zlib;
