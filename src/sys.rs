//! The daemon's system calls that neither std nor nix wraps safely.
//!
//! Every `unsafe` block of the crate lives here or in `provisioner::fsat` (the `*at` and
//! xattr calls of layer extraction and the copy backend); the rest of the crate is
//! `deny(unsafe_code)`. Each function is small and states why its call is sound, so the
//! callers stay safe code.

use std::io;
use std::ops::Deref;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};

use nix::sys::inotify::Inotify;
use tokio::io::Interest;
use tokio::io::unix::AsyncFd;

mod sealed {
    pub trait Sealed {}
}

/// Types that own exactly one descriptor for their whole life and never swap it, which
/// is what tokio's reactor needs of what it polls.
pub trait OwnsFd: AsFd + sealed::Sealed {}

impl sealed::Sealed for OwnedFd {}
impl OwnsFd for OwnedFd {}
impl sealed::Sealed for Inotify {}
impl OwnsFd for Inotify {}

/// An [`OwnsFd`] as tokio's [`AsyncFd`] takes it (`AsRawFd`).
#[derive(Debug)]
pub struct Owned<T>(T);

impl<T: AsFd> AsRawFd for Owned<T> {
    fn as_raw_fd(&self) -> RawFd {
        self.0.as_fd().as_raw_fd()
    }
}

impl<T: AsFd> AsFd for Owned<T> {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.0.as_fd()
    }
}

impl<T> Deref for Owned<T> {
    type Target = T;
    fn deref(&self) -> &T {
        &self.0
    }
}

/// Registers `inner`'s descriptor with the current tokio reactor.
pub fn async_fd<T: OwnsFd>(inner: T, interest: Interest) -> io::Result<AsyncFd<Owned<T>>> {
    // SAFETY: an `OwnsFd` owns its descriptor and keeps the same one until dropped, and
    // the AsyncFd owns it from here on: the number stays open and names the same file for
    // the AsyncFd's whole life, and every `as_raw_fd` returns it.
    unsafe { AsyncFd::register_with_interest(Owned(inner), interest) }.map_err(|e| e.into_parts().1)
}

nix::ioctl_write_ptr_bad!(tiocswinsz, libc::TIOCSWINSZ, libc::winsize);

/// Sets the window size of the pty `fd` (its master side).
pub fn set_winsize(fd: BorrowedFd<'_>, width: u16, height: u16) -> io::Result<()> {
    let ws = libc::winsize {
        ws_row: height,
        ws_col: width,
        ws_xpixel: 0,
        ws_ypixel: 0,
    };
    // SAFETY: TIOCSWINSZ reads one winsize struct through the pointer, which points at
    // `ws` for the duration of the call; `fd` is open for the borrow.
    unsafe { tiocswinsz(fd.as_raw_fd(), &ws) }
        .map(drop)
        .map_err(io::Error::from)
}

/// bpf(2) with a `union bpf_attr` laid out by hand (the fields used are at fixed offsets
/// in every kernel since 4.15); pointers inside it must outlive the call, which the
/// callers' borrows ensure (a bad one only makes the kernel answer EFAULT).
pub fn bpf(cmd: libc::c_long, attr: &mut [u8; 128]) -> io::Result<libc::c_long> {
    // SAFETY: attr is a valid, writable buffer of the size passed.
    let r = unsafe { libc::syscall(libc::SYS_bpf, cmd, attr.as_mut_ptr(), attr.len()) };
    if r < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(r)
    }
}

/// bpf(2) for a command that returns a new descriptor (BPF_PROG_LOAD).
pub fn bpf_new_fd(cmd: libc::c_long, attr: &mut [u8; 128]) -> io::Result<OwnedFd> {
    let fd = bpf(cmd, attr)?;
    let fd = i32::try_from(fd).map_err(|_| io::Error::from_raw_os_error(libc::EOVERFLOW))?;
    // SAFETY: the command returned a new descriptor that nothing else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// A descriptor of process `pid` (pidfd_open(2)), readable once the process ended.
pub fn pidfd_open(pid: i32) -> io::Result<OwnedFd> {
    // SAFETY: pidfd_open takes a pid and flags and returns a new descriptor (or -1); no
    // memory is passed.
    let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid, 0u32) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `fd` was just returned by the kernel and is owned by nothing else.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as RawFd) })
}

/// An anonymous memory file (memfd_create(2)), close-on-exec.
pub fn memfd(name: &std::ffi::CStr) -> io::Result<OwnedFd> {
    // SAFETY: a NUL-terminated name and flags; the returned descriptor is new and ours.
    let fd = unsafe { libc::memfd_create(name.as_ptr(), libc::MFD_CLOEXEC) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `fd` was just opened and is owned by nothing else.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// Sets IFF_UP on the interface `lo` of the calling thread's network namespace, through
/// the datagram socket `socket`.
pub fn loopback_up(socket: BorrowedFd<'_>) -> nix::Result<()> {
    // SAFETY: ifreq is plain old data; zeroed is a valid value. The name fits (3 bytes of
    // IFNAMSIZ). The ioctls only read/write the ifreq we own, on a socket open for the
    // borrow.
    unsafe {
        let mut request: libc::ifreq = std::mem::zeroed();
        for (dst, src) in request.ifr_name.iter_mut().zip(b"lo\0") {
            *dst = *src as libc::c_char;
        }
        if libc::ioctl(socket.as_raw_fd(), libc::SIOCGIFFLAGS, &mut request) < 0 {
            return Err(nix::Error::last());
        }
        request.ifr_ifru.ifru_flags |= libc::IFF_UP as libc::c_short;
        if libc::ioctl(socket.as_raw_fd(), libc::SIOCSIFFLAGS, &request) < 0 {
            return Err(nix::Error::last());
        }
    }
    Ok(())
}
