//! A tiny blocking client (std only) for the supervisor socket: used by the tests, usable by
//! the daemon from `spawn_blocking`.

use crate::protocol::{Request, Response};
use std::io::{self, BufRead, BufReader, Write};
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::Duration;

fn connect(socket: &Path, req: &Request, timeout: Option<Duration>) -> io::Result<UnixStream> {
    let mut s = UnixStream::connect(socket)?;
    s.set_read_timeout(timeout)?;
    s.set_write_timeout(timeout)?;
    let mut line = serde_json::to_vec(req).map_err(io::Error::other)?;
    line.push(b'\n');
    s.write_all(&line)?;
    Ok(s)
}

fn parse(line: &[u8]) -> io::Result<Response> {
    if line.is_empty() {
        return Err(io::Error::new(
            io::ErrorKind::UnexpectedEof,
            "supervisor closed the connection",
        ));
    }
    serde_json::from_slice(line).map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))
}

/// Sends one request and waits (at most `timeout` per read/write, `None` = forever) for the reply.
pub fn call(socket: &Path, req: &Request, timeout: Option<Duration>) -> io::Result<Response> {
    let s = connect(socket, req, timeout)?;
    let mut line = Vec::new();
    BufReader::new(s).read_until(b'\n', &mut line)?;
    parse(&line)
}

/// Like [`call`], also returning a descriptor passed with the reply ([`Request::Attach`]).
pub fn call_with_fd(
    socket: &Path,
    req: &Request,
    timeout: Option<Duration>,
) -> io::Result<(Response, Option<OwnedFd>)> {
    let s = connect(socket, req, timeout)?;
    let mut line = Vec::new();
    let mut fd = None;
    let mut buf = [0u8; 4096];
    loop {
        let (n, got) = crate::sys::recv_with_fd(s.as_raw_fd(), &mut buf)?;
        if got.is_some() {
            fd = got;
        }
        line.extend_from_slice(&buf[..n]);
        if n == 0 || line.ends_with(b"\n") {
            break;
        }
    }
    Ok((parse(&line)?, fd))
}

/// recvmsg on a (possibly non-blocking) socket: the bytes read and the descriptors that
/// came with them, for clients that do their own I/O (the daemon's async client).
pub fn recv_fds(sock: std::os::fd::RawFd, buf: &mut [u8]) -> io::Result<(usize, Vec<OwnedFd>)> {
    crate::sys::recv_with_fds(sock, buf)
}
