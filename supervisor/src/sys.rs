//! Thin safe wrappers over the system calls the supervisor needs and `std` does not offer.
//!
//! Every `unsafe` block of the crate lives here (the rest of the crate is `deny(unsafe_code)`).
//! Each wrapper only passes valid pointers (to live Rust buffers or NUL-terminated `CStr`s) to
//! the kernel and converts the `-1/errno` convention into `io::Result`.
#![allow(unsafe_code)]

use std::ffi::{CStr, CString};
use std::io;
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};
use std::path::Path;

fn cvt(r: libc::c_int) -> io::Result<libc::c_int> {
    if r == -1 {
        Err(io::Error::last_os_error())
    } else {
        Ok(r)
    }
}

fn cvt_long(r: libc::c_long) -> io::Result<libc::c_long> {
    if r == -1 {
        Err(io::Error::last_os_error())
    } else {
        Ok(r)
    }
}

/// Path to `CString`; a path with an interior NUL cannot name a file.
pub fn cpath(p: &Path) -> io::Result<CString> {
    use std::os::unix::ffi::OsStrExt;
    CString::new(p.as_os_str().as_bytes()).map_err(|_| io::Error::from_raw_os_error(libc::EINVAL))
}

/// `clone(flags | SIGCHLD)` without a new stack: behaves like `fork(2)` (the supervisor is
/// single-threaded, so the child gets a consistent copy of the whole process) but can also
/// create namespaces (CLONE_NEWNS, CLONE_NEWPID) for the child. Returns `Some(pid)` in the
/// parent and `None` in the child.
pub fn clone_process(flags: libc::c_int) -> io::Result<Option<libc::pid_t>> {
    let flags = (flags | libc::SIGCHLD) as libc::c_ulong;
    // SAFETY: no stack is passed (0), so the child continues on a copy of this stack exactly
    // as with fork(); the remaining pointer arguments (tids, tls) are unused without the
    // corresponding CLONE_* flags.
    let r = unsafe { libc::syscall(libc::SYS_clone, flags, 0usize, 0usize, 0usize, 0usize) };
    match cvt_long(r)? {
        0 => Ok(None),
        pid => Ok(Some(pid as libc::pid_t)),
    }
}

/// `_exit(2)`: leave a forked child without running atexit handlers or flushing buffers that
/// belong to the parent.
pub fn exit_now(code: i32) -> ! {
    // SAFETY: _exit never returns and touches no Rust state.
    unsafe { libc::_exit(code) }
}

/// A pipe with both ends close-on-exec: `(read, write)`.
pub fn pipe() -> io::Result<(OwnedFd, OwnedFd)> {
    let mut fds = [0 as libc::c_int; 2];
    // SAFETY: `fds` is a valid array of two ints for the kernel to fill.
    cvt(unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) })?;
    // SAFETY: pipe2 succeeded, so both fds are fresh and owned by nobody else.
    Ok(unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) })
}

fn fcntl_flag(
    fd: RawFd,
    get: libc::c_int,
    set: libc::c_int,
    flag: libc::c_int,
    on: bool,
) -> io::Result<()> {
    // SAFETY: F_GETFL/F_GETFD and F_SETFL/F_SETFD take and return plain ints.
    unsafe {
        let cur = cvt(libc::fcntl(fd, get))?;
        let new = if on { cur | flag } else { cur & !flag };
        if new != cur {
            cvt(libc::fcntl(fd, set, new))?;
        }
    }
    Ok(())
}

pub fn set_nonblocking(fd: RawFd, on: bool) -> io::Result<()> {
    fcntl_flag(fd, libc::F_GETFL, libc::F_SETFL, libc::O_NONBLOCK, on)
}

pub fn set_cloexec(fd: RawFd, on: bool) -> io::Result<()> {
    fcntl_flag(fd, libc::F_GETFD, libc::F_SETFD, libc::FD_CLOEXEC, on)
}

/// `dup2(src, dst)`; the new descriptor is *not* close-on-exec. If `src == dst` the
/// close-on-exec flag is cleared instead (dup2 would be a no-op).
pub fn dup2(src: RawFd, dst: RawFd) -> io::Result<()> {
    if src == dst {
        return set_cloexec(dst, false);
    }
    // SAFETY: dup2 only manipulates the descriptor table; `dst` is deliberately replaced.
    cvt(unsafe { libc::dup2(src, dst) }).map(drop)
}

/// Closes every descriptor >= 3 except those in `keep` (used in forked children so that they
/// do not hold other containers' pipes).
pub fn close_fds_except(keep: &[RawFd]) {
    let mut keep: Vec<RawFd> = keep.iter().copied().filter(|&f| f >= 3).collect();
    keep.sort_unstable();
    keep.dedup();
    let mut from: u32 = 3;
    for k in keep {
        if (k as u32) > from {
            close_range(from, k as u32 - 1);
        }
        from = k as u32 + 1;
    }
    close_range(from, u32::MAX);
}

fn close_range(first: u32, last: u32) {
    // SAFETY: close_range only closes descriptors; callers in this crate use it in forked
    // children (or at start-up) where no Rust object still refers to the closed fds in a way
    // that would be used afterwards.
    let r = unsafe { libc::syscall(libc::SYS_close_range, first, last, 0u32) };
    if r == -1 {
        // Kernel without close_range: fall back to closing one by one.
        let max = if last == u32::MAX { 4096 } else { last };
        for fd in first..=max {
            // SAFETY: as above.
            unsafe { libc::close(fd as libc::c_int) };
        }
    }
}

pub fn read(fd: RawFd, buf: &mut [u8]) -> io::Result<usize> {
    loop {
        // SAFETY: `buf` is a valid writable buffer of `buf.len()` bytes.
        let r = unsafe { libc::read(fd, buf.as_mut_ptr().cast(), buf.len()) };
        if r >= 0 {
            return Ok(r as usize);
        }
        let e = io::Error::last_os_error();
        if e.kind() != io::ErrorKind::Interrupted {
            return Err(e);
        }
    }
}

pub fn write(fd: RawFd, buf: &[u8]) -> io::Result<usize> {
    loop {
        // SAFETY: `buf` is a valid readable buffer of `buf.len()` bytes.
        let r = unsafe { libc::write(fd, buf.as_ptr().cast(), buf.len()) };
        if r >= 0 {
            return Ok(r as usize);
        }
        let e = io::Error::last_os_error();
        if e.kind() != io::ErrorKind::Interrupted {
            return Err(e);
        }
    }
}

/// Writes all of `buf` (for blocking descriptors: status pipes, regular files).
pub fn write_all(fd: RawFd, mut buf: &[u8]) -> io::Result<()> {
    while !buf.is_empty() {
        match write(fd, buf)? {
            0 => return Err(io::ErrorKind::WriteZero.into()),
            n => buf = &buf[n..],
        }
    }
    Ok(())
}

/// poll(2); EINTR counts as "nothing ready".
pub fn poll(fds: &mut [libc::pollfd], timeout_ms: i32) -> io::Result<usize> {
    // SAFETY: `fds` is a valid array of `fds.len()` pollfd structs.
    let r = unsafe { libc::poll(fds.as_mut_ptr(), fds.len() as libc::nfds_t, timeout_ms) };
    if r == -1 {
        let e = io::Error::last_os_error();
        if e.kind() == io::ErrorKind::Interrupted {
            return Ok(0);
        }
        return Err(e);
    }
    Ok(r as usize)
}

fn sigset(signals: &[libc::c_int]) -> libc::sigset_t {
    // SAFETY: sigemptyset/sigaddset initialise the zeroed set in place.
    unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        for &s in signals {
            libc::sigaddset(&mut set, s);
        }
        set
    }
}

/// Blocks `signals` and returns a non-blocking, close-on-exec signalfd that reports them.
pub fn signalfd(signals: &[libc::c_int]) -> io::Result<OwnedFd> {
    let set = sigset(signals);
    // SAFETY: `set` is an initialised sigset; no old mask is requested.
    cvt(unsafe { libc::sigprocmask(libc::SIG_BLOCK, &set, std::ptr::null_mut()) })?;
    // SAFETY: -1 asks for a new signalfd; `set` is valid.
    let fd = cvt(unsafe { libc::signalfd(-1, &set, libc::SFD_NONBLOCK | libc::SFD_CLOEXEC) })?;
    // SAFETY: fresh descriptor.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// Reads one pending signal number from a signalfd, `None` when none is pending.
pub fn read_signalfd(fd: RawFd) -> io::Result<Option<u32>> {
    // SAFETY: signalfd_siginfo is plain old data; zeroed is a valid value.
    let mut info: libc::signalfd_siginfo = unsafe { std::mem::zeroed() };
    let size = std::mem::size_of::<libc::signalfd_siginfo>();
    // SAFETY: `info` is a writable buffer of exactly `size` bytes.
    let r = unsafe { libc::read(fd, (&mut info as *mut libc::signalfd_siginfo).cast(), size) };
    if r == -1 {
        let e = io::Error::last_os_error();
        if e.kind() == io::ErrorKind::WouldBlock || e.kind() == io::ErrorKind::Interrupted {
            return Ok(None);
        }
        return Err(e);
    }
    Ok((r as usize == size).then_some(info.ssi_signo))
}

/// Unblocks every signal and resets SIGPIPE (ignored by the supervisor) to its default:
/// both the mask and ignored dispositions survive execve, so a forked child must undo them.
pub fn reset_signals_for_exec() {
    let empty = sigset(&[]);
    // SAFETY: valid sigset; SIG_DFL is a valid disposition for the signals named.
    unsafe {
        libc::sigprocmask(libc::SIG_SETMASK, &empty, std::ptr::null_mut());
        libc::signal(libc::SIGPIPE, libc::SIG_DFL);
        libc::signal(libc::SIGTERM, libc::SIG_DFL);
        libc::signal(libc::SIGCHLD, libc::SIG_DFL);
    }
}

pub fn ignore_sigpipe() {
    // SAFETY: SIG_IGN is a valid disposition for SIGPIPE.
    unsafe { libc::signal(libc::SIGPIPE, libc::SIG_IGN) };
}

/// How a child ended, from waitpid's status word.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Exit {
    Code(i32),
    Signal(i32),
}

impl Exit {
    fn from_status(status: libc::c_int) -> Option<Exit> {
        if libc::WIFEXITED(status) {
            Some(Exit::Code(libc::WEXITSTATUS(status)))
        } else if libc::WIFSIGNALED(status) {
            Some(Exit::Signal(libc::WTERMSIG(status)))
        } else {
            None
        }
    }

    /// Shell convention: 128 + signal for a signal death.
    pub fn code(self) -> i32 {
        match self {
            Exit::Code(c) => c,
            Exit::Signal(s) => 128 + s,
        }
    }
}

/// Reaps one terminated child without blocking (`pid` -1 = any child).
pub fn wait_nohang(pid: libc::pid_t) -> io::Result<Option<(libc::pid_t, Exit)>> {
    loop {
        let mut status = 0;
        // SAFETY: `status` is a valid int to store the wait status in.
        let r = unsafe { libc::waitpid(pid, &mut status, libc::WNOHANG) };
        if r == -1 {
            let e = io::Error::last_os_error();
            if e.kind() == io::ErrorKind::Interrupted {
                continue;
            }
            return Err(e);
        }
        if r == 0 {
            return Ok(None);
        }
        if let Some(exit) = Exit::from_status(status) {
            return Ok(Some((r, exit)));
        }
    }
}

/// Blocking wait for any child (used by the exec helper).
pub fn wait_any() -> io::Result<(libc::pid_t, Exit)> {
    loop {
        let mut status = 0;
        // SAFETY: as in wait_nohang.
        let r = unsafe { libc::waitpid(-1, &mut status, 0) };
        if r == -1 {
            let e = io::Error::last_os_error();
            if e.kind() == io::ErrorKind::Interrupted {
                continue;
            }
            return Err(e);
        }
        if let Some(exit) = Exit::from_status(status) {
            return Ok((r, exit));
        }
    }
}

pub fn kill(pid: libc::pid_t, sig: libc::c_int) -> io::Result<()> {
    // SAFETY: plain syscall on integers.
    cvt(unsafe { libc::kill(pid, sig) }).map(drop)
}

/// Sends `sig` to the process whose `/proc/<pid>` directory is open as `procdir`.
/// `pidfd_send_signal` accepts such a directory fd, which lets the supervisor signal a
/// process it only knows by its host pid even when it lives in a pod pid namespace itself.
pub fn signal_procdir(procdir: BorrowedFd<'_>, sig: libc::c_int) -> io::Result<()> {
    // SAFETY: a NULL siginfo asks the kernel to fill in a kill()-like one.
    let r = unsafe {
        libc::syscall(
            libc::SYS_pidfd_send_signal,
            procdir.as_raw_fd(),
            sig,
            std::ptr::null::<u8>(),
            0u32,
        )
    };
    cvt_long(r).map(drop)
}

pub fn setsid() -> io::Result<()> {
    // SAFETY: plain syscall.
    cvt(unsafe { libc::setsid() }).map(drop)
}

pub fn set_child_subreaper() -> io::Result<()> {
    // SAFETY: PR_SET_CHILD_SUBREAPER takes an integer argument.
    cvt(unsafe { libc::prctl(libc::PR_SET_CHILD_SUBREAPER, 1 as libc::c_ulong, 0, 0, 0) }).map(drop)
}

pub fn set_no_new_privs() -> io::Result<()> {
    // SAFETY: PR_SET_NO_NEW_PRIVS takes integer arguments.
    cvt(unsafe { libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1 as libc::c_ulong, 0, 0, 0) }).map(drop)
}

/// Installs a seccomp-BPF filter on the calling thread (the child is single-threaded), each
/// instruction a `struct sock_filter` in host byte order. Needs `no_new_privs` or
/// CAP_SYS_ADMIN, as the kernel requires.
pub fn seccomp_set_filter(program: &[[u8; 8]], flags: u32) -> io::Result<()> {
    let filter: Vec<libc::sock_filter> = program
        .iter()
        .map(|i| libc::sock_filter {
            code: u16::from_ne_bytes([i[0], i[1]]),
            jt: i[2],
            jf: i[3],
            k: u32::from_ne_bytes([i[4], i[5], i[6], i[7]]),
        })
        .collect();
    let len =
        u16::try_from(filter.len()).map_err(|_| io::Error::from_raw_os_error(libc::EINVAL))?;
    let prog = libc::sock_fprog {
        len,
        filter: filter.as_ptr().cast_mut(),
    };
    // SAFETY: `prog` points at `len` instructions that live until the call returns; the
    // kernel copies the program.
    cvt_long(unsafe {
        libc::syscall(
            libc::SYS_seccomp,
            libc::SECCOMP_SET_MODE_FILTER as libc::c_ulong,
            libc::c_ulong::from(flags),
            &prog as *const libc::sock_fprog,
        )
    })
    .map(drop)
}

pub fn unshare(flags: libc::c_int) -> io::Result<()> {
    // SAFETY: plain syscall; the process is single-threaded.
    cvt(unsafe { libc::unshare(flags) }).map(drop)
}

pub fn setns(fd: RawFd, nstype: libc::c_int) -> io::Result<()> {
    // SAFETY: plain syscall; the process is single-threaded (required for mnt/user setns).
    cvt(unsafe { libc::setns(fd, nstype) }).map(drop)
}

pub fn mount(
    source: Option<&CStr>,
    target: &CStr,
    fstype: Option<&CStr>,
    flags: libc::c_ulong,
    data: Option<&CStr>,
) -> io::Result<()> {
    let p = |s: Option<&CStr>| s.map_or(std::ptr::null(), CStr::as_ptr);
    // SAFETY: all pointers are NULL or valid NUL-terminated strings.
    cvt(unsafe { libc::mount(p(source), target.as_ptr(), p(fstype), flags, p(data).cast()) })
        .map(drop)
}

pub fn umount_detach(target: &CStr) -> io::Result<()> {
    // SAFETY: valid C string.
    cvt(unsafe { libc::umount2(target.as_ptr(), libc::MNT_DETACH) }).map(drop)
}

/// `pivot_root(".", ".")`: the old root ends up stacked on the new one, to be detached next.
pub fn pivot_root_dot() -> io::Result<()> {
    let dot = c".";
    // SAFETY: valid C strings; glibc has no wrapper so the raw syscall is used.
    cvt_long(unsafe { libc::syscall(libc::SYS_pivot_root, dot.as_ptr(), dot.as_ptr()) }).map(drop)
}

/// `openat2(dirfd, name, flags, RESOLVE_NO_SYMLINKS | RESOLVE_BENEATH)`: opens one path
/// below `dirfd` refusing any symlink on the way (ELOOP) and any escape (EXDEV).
pub fn openat_no_symlinks(
    dirfd: BorrowedFd<'_>,
    name: &CStr,
    flags: libc::c_int,
    mode: libc::mode_t,
) -> io::Result<OwnedFd> {
    // The kernel's `struct open_how` (libc's is non-exhaustive, so it is spelled here).
    #[repr(C)]
    struct OpenHow {
        flags: u64,
        mode: u64,
        resolve: u64,
    }
    let how = OpenHow {
        flags: (flags | libc::O_CLOEXEC) as u64,
        mode: if flags & libc::O_CREAT != 0 {
            mode as u64
        } else {
            0
        },
        resolve: libc::RESOLVE_NO_SYMLINKS | libc::RESOLVE_BENEATH,
    };
    // SAFETY: valid descriptor and C string; `how` is a plain struct passed with its size.
    let fd = cvt_long(unsafe {
        libc::syscall(
            libc::SYS_openat2,
            dirfd.as_raw_fd(),
            name.as_ptr(),
            &how as *const OpenHow,
            std::mem::size_of::<OpenHow>(),
        )
    })?;
    // SAFETY: the kernel just returned this descriptor to us; nothing else owns it.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as RawFd) })
}

/// `mkdirat(dirfd, name, mode)`.
pub fn mkdirat(dirfd: BorrowedFd<'_>, name: &CStr, mode: libc::mode_t) -> io::Result<()> {
    // SAFETY: valid descriptor and C string.
    cvt(unsafe { libc::mkdirat(dirfd.as_raw_fd(), name.as_ptr(), mode) }).map(drop)
}

/// `fchdir(fd)`: back into a directory held open across pivot_root.
pub fn fchdir(fd: std::os::fd::RawFd) -> io::Result<()> {
    // SAFETY: plain syscall on a descriptor the caller owns.
    cvt(unsafe { libc::fchdir(fd) }).map(drop)
}

pub fn mknod(path: &CStr, mode: libc::mode_t, major: u64, minor: u64) -> io::Result<()> {
    let dev = libc::makedev(major as u32, minor as u32);
    // SAFETY: valid C string.
    cvt(unsafe { libc::mknod(path.as_ptr(), mode, dev) }).map(drop)
}

/// The per-mount flags (MS_RDONLY, MS_NOSUID, ...) of the mount holding `path`; statvfs's
/// ST_* values equal the MS_* ones for these bits.
pub fn mount_flags_of(path: &CStr) -> io::Result<libc::c_ulong> {
    // SAFETY: statvfs is plain old data; the kernel fills it.
    let mut st: libc::statvfs = unsafe { std::mem::zeroed() };
    // SAFETY: valid C string and out-pointer.
    cvt(unsafe { libc::statvfs(path.as_ptr(), &mut st) })?;
    let keep = libc::MS_RDONLY
        | libc::MS_NOSUID
        | libc::MS_NODEV
        | libc::MS_NOEXEC
        | libc::MS_NOATIME
        | libc::MS_NODIRATIME
        | libc::MS_RELATIME;
    Ok(st.f_flag as libc::c_ulong & keep)
}

pub fn sethostname(name: &str) -> io::Result<()> {
    // SAFETY: pointer and length describe the string's bytes.
    cvt(unsafe { libc::sethostname(name.as_ptr().cast(), name.len()) }).map(drop)
}

/// `/proc/sys/kernel/cap_last_cap`: the highest capability this kernel knows.
pub fn cap_last_cap() -> u32 {
    std::fs::read_to_string("/proc/sys/kernel/cap_last_cap")
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(40)
}

pub fn setrlimit(resource: u32, soft: u64, hard: u64) -> io::Result<()> {
    let limit = libc::rlimit {
        rlim_cur: soft,
        rlim_max: hard,
    };
    // SAFETY: a valid rlimit struct; an unknown resource is EINVAL.
    cvt(unsafe { libc::setrlimit(resource as _, &limit) }).map(drop)
}

pub fn capbset_drop(cap: u32) -> io::Result<()> {
    // SAFETY: PR_CAPBSET_DROP takes an integer argument.
    cvt(unsafe { libc::prctl(libc::PR_CAPBSET_DROP, cap as libc::c_ulong, 0, 0, 0) }).map(drop)
}

pub fn capbset_read(cap: u32) -> io::Result<bool> {
    // SAFETY: PR_CAPBSET_READ takes an integer argument and returns 0 or 1.
    cvt(unsafe { libc::prctl(libc::PR_CAPBSET_READ, cap as libc::c_ulong, 0, 0, 0) })
        .map(|r| r == 1)
}

/// prctl(PR_SET_KEEPCAPS): the permitted set survives the setuid to a non-root user, so
/// that capset can then give a non-root process what it was configured with.
pub fn set_keepcaps(keep: bool) -> io::Result<()> {
    // SAFETY: PR_SET_KEEPCAPS takes an integer argument.
    cvt(unsafe { libc::prctl(libc::PR_SET_KEEPCAPS, keep as libc::c_ulong, 0, 0, 0) }).map(drop)
}

/// The kernel's capability header and data (version 3: two 32-bit halves per set).
#[repr(C)]
struct CapHeader {
    version: u32,
    pid: libc::c_int,
}
#[repr(C)]
#[derive(Default, Clone, Copy)]
struct CapData {
    effective: u32,
    permitted: u32,
    inheritable: u32,
}
const CAP_V3: u32 = 0x2008_0522;

/// capget(2) of this thread: (effective, permitted, inheritable).
pub fn capget() -> io::Result<(u64, u64, u64)> {
    let mut header = CapHeader {
        version: CAP_V3,
        pid: 0,
    };
    let mut data = [CapData::default(); 2];
    // SAFETY: header and a two-element data array, as version 3 requires.
    cvt_long(unsafe { libc::syscall(libc::SYS_capget, &mut header, data.as_mut_ptr()) })?;
    let join = |f: fn(&CapData) -> u32| u64::from(f(&data[0])) | (u64::from(f(&data[1])) << 32);
    Ok((
        join(|d| d.effective),
        join(|d| d.permitted),
        join(|d| d.inheritable),
    ))
}

/// capset(2) of this thread.
pub fn capset(effective: u64, permitted: u64, inheritable: u64) -> io::Result<()> {
    let header = CapHeader {
        version: CAP_V3,
        pid: 0,
    };
    let half = |v: u64, i: usize| (v >> (32 * i)) as u32;
    let data: [CapData; 2] = std::array::from_fn(|i| CapData {
        effective: half(effective, i),
        permitted: half(permitted, i),
        inheritable: half(inheritable, i),
    });
    // SAFETY: header and a two-element data array, as version 3 requires.
    cvt_long(unsafe { libc::syscall(libc::SYS_capset, &header, data.as_ptr()) }).map(drop)
}

pub fn ambient_raise(cap: u32) -> io::Result<()> {
    // SAFETY: PR_CAP_AMBIENT takes integer arguments.
    cvt(unsafe {
        libc::prctl(
            libc::PR_CAP_AMBIENT,
            libc::PR_CAP_AMBIENT_RAISE as libc::c_ulong,
            cap as libc::c_ulong,
            0,
            0,
        )
    })
    .map(drop)
}

/// setgroups + setgid + setuid, in that order (groups and gid need root).
pub fn set_identity(uid: u32, gid: u32, groups: &[u32]) -> io::Result<()> {
    // SAFETY: the slice is a valid array of gid_t (u32) values.
    cvt(unsafe { libc::setgroups(groups.len(), groups.as_ptr()) })?;
    // SAFETY: plain syscalls; single-threaded, so glibc's setxid broadcast is trivial.
    cvt(unsafe { libc::setgid(gid) })?;
    // SAFETY: as above.
    cvt(unsafe { libc::setuid(uid) }).map(drop)
}

pub fn umask(mask: u32) {
    // SAFETY: plain syscall.
    unsafe { libc::umask(mask as libc::mode_t) };
}

/// A new pseudo-terminal: `(master, slave)`, both close-on-exec.
pub fn openpty() -> io::Result<(OwnedFd, OwnedFd)> {
    let (mut m, mut s) = (0, 0);
    // SAFETY: out-pointers are valid; name/termios/winsize are optional and NULL.
    cvt(unsafe {
        libc::openpty(
            &mut m,
            &mut s,
            std::ptr::null_mut(),
            std::ptr::null(),
            std::ptr::null(),
        )
    })?;
    // SAFETY: fresh descriptors owned by nobody else.
    let (m, s) = unsafe { (OwnedFd::from_raw_fd(m), OwnedFd::from_raw_fd(s)) };
    set_cloexec(m.as_raw_fd(), true)?;
    set_cloexec(s.as_raw_fd(), true)?;
    Ok((m, s))
}

/// Makes the terminal `fd` the controlling terminal of the calling session leader.
pub fn set_controlling_tty(fd: RawFd) -> io::Result<()> {
    // SAFETY: TIOCSCTTY takes an integer argument.
    cvt(unsafe { libc::ioctl(fd, libc::TIOCSCTTY, 0) }).map(drop)
}

pub fn set_winsize(fd: RawFd, rows: u16, cols: u16) -> io::Result<()> {
    let ws = libc::winsize {
        ws_row: rows,
        ws_col: cols,
        ws_xpixel: 0,
        ws_ypixel: 0,
    };
    // SAFETY: TIOCSWINSZ reads a winsize struct from the valid pointer.
    cvt(unsafe { libc::ioctl(fd, libc::TIOCSWINSZ, &ws) }).map(drop)
}

/// execve(2); only returns on failure.
pub fn execve(path: &CStr, argv: &[CString], envp: &[CString]) -> io::Error {
    let mut a: Vec<*const libc::c_char> = argv.iter().map(|s| s.as_ptr()).collect();
    a.push(std::ptr::null());
    let mut e: Vec<*const libc::c_char> = envp.iter().map(|s| s.as_ptr()).collect();
    e.push(std::ptr::null());
    // SAFETY: NULL-terminated arrays of pointers to NUL-terminated strings that outlive the call.
    unsafe { libc::execve(path.as_ptr(), a.as_ptr(), e.as_ptr()) };
    io::Error::last_os_error()
}

/// access(path, X_OK).
pub fn is_executable(path: &CStr) -> io::Result<()> {
    // SAFETY: valid C string.
    cvt(unsafe { libc::access(path.as_ptr(), libc::X_OK) }).map(drop)
}

/// At most this many descriptors go with one message.
pub const MAX_FDS: usize = 4;

/// sendmsg of `buf` with `fds` (at most [`MAX_FDS`]) attached as SCM_RIGHTS. Returns the
/// bytes sent.
pub fn send_with_fds(sock: RawFd, buf: &[u8], fds: &[RawFd]) -> io::Result<usize> {
    if fds.is_empty() || fds.len() > MAX_FDS {
        return Err(io::Error::from(io::ErrorKind::InvalidInput));
    }
    let bytes = std::mem::size_of_val(fds) as u32;
    // SAFETY: the msghdr points at `iov` (one valid buffer) and at `cmsg_buf`, which is large
    // and aligned enough (u64 array) for one cmsghdr carrying MAX_FDS ints; CMSG_* compute
    // offsets inside it and the fds are copied into its data area.
    unsafe {
        let mut iov = libc::iovec {
            iov_base: buf.as_ptr() as *mut libc::c_void,
            iov_len: buf.len(),
        };
        let space = libc::CMSG_SPACE(bytes) as usize;
        let mut cmsg_buf = [0u64; 8];
        let mut msg: libc::msghdr = std::mem::zeroed();
        msg.msg_iov = &mut iov;
        msg.msg_iovlen = 1;
        msg.msg_control = cmsg_buf.as_mut_ptr().cast();
        msg.msg_controllen = space as _;
        let cmsg = libc::CMSG_FIRSTHDR(&msg);
        (*cmsg).cmsg_level = libc::SOL_SOCKET;
        (*cmsg).cmsg_type = libc::SCM_RIGHTS;
        (*cmsg).cmsg_len = libc::CMSG_LEN(bytes) as _;
        let data = libc::CMSG_DATA(cmsg).cast::<libc::c_int>();
        for (i, fd) in fds.iter().enumerate() {
            std::ptr::write_unaligned(data.add(i), *fd);
        }
        let r = libc::sendmsg(sock, &msg, libc::MSG_NOSIGNAL);
        if r < 0 {
            Err(io::Error::last_os_error())
        } else {
            Ok(r as usize)
        }
    }
}

/// recvmsg into `buf`, returning the bytes read and the descriptors passed with
/// SCM_RIGHTS (in the order sent).
pub fn recv_with_fds(sock: RawFd, buf: &mut [u8]) -> io::Result<(usize, Vec<OwnedFd>)> {
    // SAFETY: as in send_with_fds; each received fd is fresh and becomes owned here;
    // MSG_CMSG_CLOEXEC marks them close-on-exec. The count comes from cmsg_len.
    unsafe {
        let mut iov = libc::iovec {
            iov_base: buf.as_mut_ptr().cast(),
            iov_len: buf.len(),
        };
        let mut cmsg_buf = [0u64; 8];
        let mut msg: libc::msghdr = std::mem::zeroed();
        msg.msg_iov = &mut iov;
        msg.msg_iovlen = 1;
        msg.msg_control = cmsg_buf.as_mut_ptr().cast();
        msg.msg_controllen = std::mem::size_of_val(&cmsg_buf) as _;
        let r = libc::recvmsg(sock, &mut msg, libc::MSG_CMSG_CLOEXEC);
        if r < 0 {
            return Err(io::Error::last_os_error());
        }
        let mut fds = Vec::new();
        let mut cmsg = libc::CMSG_FIRSTHDR(&msg);
        while !cmsg.is_null() {
            if (*cmsg).cmsg_level == libc::SOL_SOCKET && (*cmsg).cmsg_type == libc::SCM_RIGHTS {
                let data = libc::CMSG_DATA(cmsg).cast::<libc::c_int>();
                let header = data as usize - cmsg as usize;
                let n = ((*cmsg).cmsg_len as usize - header) / std::mem::size_of::<libc::c_int>();
                for i in 0..n {
                    fds.push(OwnedFd::from_raw_fd(std::ptr::read_unaligned(data.add(i))));
                }
            }
            cmsg = libc::CMSG_NXTHDR(&msg, cmsg);
        }
        Ok((r as usize, fds))
    }
}

/// recvmsg into `buf`, returning the bytes read and a descriptor passed with SCM_RIGHTS.
pub fn recv_with_fd(sock: RawFd, buf: &mut [u8]) -> io::Result<(usize, Option<OwnedFd>)> {
    let (n, fds) = recv_with_fds(sock, buf)?;
    Ok((n, fds.into_iter().next()))
}

/// Opens `/dev/null` read-write (close-on-exec).
pub fn open_devnull() -> io::Result<OwnedFd> {
    Ok(std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/null")?
        .into())
}
