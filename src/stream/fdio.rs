//! Pipes and pty masters received from the supervisor, driven by the tokio reactor
//! (non-blocking, never a blocking read on a runtime thread).

use std::io;
use std::os::fd::{AsFd, OwnedFd};

use nix::fcntl::{FcntlArg, OFlag, fcntl};
use tokio::io::Interest;
use tokio::io::unix::AsyncFd;

use crate::sys;

/// One descriptor (a pipe end or a pty master); shareable between a reading and a
/// writing task.
#[derive(Debug)]
pub struct FdIo {
    fd: AsyncFd<sys::Owned<OwnedFd>>,
}

impl FdIo {
    /// Makes `fd` non-blocking (it is ours alone: the supervisor closed its copy) and
    /// registers it with the reactor.
    pub fn new(fd: OwnedFd) -> io::Result<FdIo> {
        let flags = fcntl(fd.as_fd(), FcntlArg::F_GETFL).map_err(io::Error::from)?;
        let flags = OFlag::from_bits_truncate(flags) | OFlag::O_NONBLOCK;
        fcntl(fd.as_fd(), FcntlArg::F_SETFL(flags)).map_err(io::Error::from)?;
        Ok(FdIo { fd: register(fd)? })
    }

    /// Reads some bytes; 0 at EOF. A pty master whose slave side is closed by every
    /// process reads EIO: that is its EOF.
    pub async fn read(&self, buf: &mut [u8]) -> io::Result<usize> {
        loop {
            let mut guard = self.fd.readable().await?;
            match guard.try_io(|fd| nix::unistd::read(fd.get_ref(), buf).map_err(io::Error::from)) {
                Ok(Err(e)) if e.raw_os_error() == Some(libc::EIO) => return Ok(0),
                Ok(r) => return r,
                Err(_would_block) => continue,
            }
        }
    }

    pub async fn write_all(&self, mut data: &[u8]) -> io::Result<()> {
        while !data.is_empty() {
            let mut guard = self.fd.writable().await?;
            match guard.try_io(|fd| nix::unistd::write(fd.get_ref(), data).map_err(io::Error::from))
            {
                Ok(Ok(n)) => data = &data[n..],
                Ok(Err(e)) => return Err(e),
                Err(_would_block) => continue,
            }
        }
        Ok(())
    }

    /// Sets the window size of a pty (the master side).
    pub fn set_winsize(&self, width: u16, height: u16) -> io::Result<()> {
        sys::set_winsize(self.fd.get_ref().as_fd(), width, height)
    }
}

fn register(fd: OwnedFd) -> io::Result<AsyncFd<sys::Owned<OwnedFd>>> {
    sys::async_fd(fd, Interest::READABLE | Interest::WRITABLE)
}
