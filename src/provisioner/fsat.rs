//! Directory-descriptor (`*at`) helpers that never follow a symlink, and the xattr
//! calls nix does not wrap: what layer extraction and the copy backend share to touch
//! an untrusted tree only through descriptors of directories already checked.
//!
//! The crate's one `unsafe` outside `crate::sys` is here (the `l*xattr`/`fsetxattr`
//! calls, at the end).

use std::ffi::{CStr, CString, OsStr};
use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::PathBuf;

use nix::errno::Errno;
use nix::fcntl::{OFlag, openat};
use nix::sys::stat::{FileStat, Mode, SFlag, fchmod, fstatat, mkdirat};
use nix::unistd::{UnlinkatFlags, unlinkat};

/// Splits a tar name into components: absolute names are relative to the rootfs, `.` and
/// empty components vanish, `..` is refused.
pub(crate) fn components(name: &[u8]) -> Result<Vec<Vec<u8>>, &'static str> {
    let mut out = Vec::new();
    for c in name.split(|b| *b == b'/') {
        match c {
            b"" | b"." => {}
            b".." => return Err("a `..` component could leave the rootfs"),
            c if c.contains(&0) => return Err("NUL byte in the name"),
            c => out.push(c.to_vec()),
        }
    }
    Ok(out)
}

/// The relative path of `comps`, `.` for the root.
pub(crate) fn rel_path(comps: &[Vec<u8>]) -> PathBuf {
    if comps.is_empty() {
        return PathBuf::from(".");
    }
    PathBuf::from(OsStr::from_bytes(&comps.join(&b'/')))
}

pub(crate) fn dir_flags() -> OFlag {
    OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC
}

pub(crate) fn file_type(st: &FileStat) -> SFlag {
    SFlag::from_bits_truncate(st.st_mode & SFlag::S_IFMT.bits())
}

/// Opens directory `name` in `dir` without following a symlink.
pub(crate) fn open_dir(dir: BorrowedFd<'_>, name: &[u8]) -> nix::Result<OwnedFd> {
    openat(dir, name, dir_flags(), Mode::empty())
}

/// `lstat` of `name` in `dir`; `None` when it does not exist.
pub(crate) fn lstat_at(dir: BorrowedFd<'_>, name: &[u8]) -> nix::Result<Option<FileStat>> {
    match fstatat(dir, name, nix::fcntl::AtFlags::AT_SYMLINK_NOFOLLOW) {
        Ok(st) => Ok(Some(st)),
        Err(Errno::ENOENT) => Ok(None),
        Err(e) => Err(e),
    }
}

/// Why [`open_dir_at`] stopped, with the index of the component at fault.
#[derive(Debug)]
pub(crate) enum WalkError {
    Symlink(usize),
    NotDir(usize),
    Missing(usize),
    Io(usize, Errno),
}

/// Opens the directory `root/comps...` one component at a time, never following a
/// symlink. With `created`, missing directories are made (0755, counted there).
pub(crate) fn open_dir_at(
    root: BorrowedFd<'_>,
    comps: &[impl AsRef<[u8]>],
    mut created: Option<&mut u64>,
) -> Result<OwnedFd, WalkError> {
    let mut cur = root
        .try_clone_to_owned()
        .map_err(|e| WalkError::Io(0, errno_of(&e)))?;
    for (i, comp) in comps.iter().enumerate() {
        let comp = comp.as_ref();
        let next = match open_dir(cur.as_fd(), comp) {
            Ok(fd) => fd,
            Err(Errno::ENOENT) if created.is_some() => {
                match mkdirat(&cur, comp, Mode::from_bits_truncate(0o755)) {
                    Ok(()) | Err(Errno::EEXIST) => {}
                    Err(e) => return Err(WalkError::Io(i, e)),
                }
                let fd = open_dir(cur.as_fd(), comp).map_err(|e| WalkError::Io(i, e))?;
                // mkdir obeys the umask; implicit parents get docker's 0755 regardless.
                fchmod(&fd, Mode::from_bits_truncate(0o755)).map_err(|e| WalkError::Io(i, e))?;
                if let Some(n) = created.as_deref_mut() {
                    *n += 1;
                }
                fd
            }
            Err(Errno::ENOENT) => return Err(WalkError::Missing(i)),
            Err(Errno::ELOOP) => return Err(WalkError::Symlink(i)),
            Err(Errno::ENOTDIR) => {
                let is_link = lstat_at(cur.as_fd(), comp)
                    .ok()
                    .flatten()
                    .is_some_and(|st| file_type(&st) == SFlag::S_IFLNK);
                return Err(if is_link {
                    WalkError::Symlink(i)
                } else {
                    WalkError::NotDir(i)
                });
            }
            Err(e) => return Err(WalkError::Io(i, e)),
        };
        cur = next;
    }
    Ok(cur)
}

pub(crate) fn errno_of(e: &io::Error) -> Errno {
    Errno::from_raw(e.raw_os_error().unwrap_or(libc::EIO))
}

/// The names in directory `dir` (without `.` and `..`).
pub(crate) fn list_dir(dir: BorrowedFd<'_>) -> nix::Result<Vec<Vec<u8>>> {
    // A fresh open file description: a dup would share (and advance) the offset.
    let mut d = nix::dir::Dir::openat(
        dir,
        ".",
        OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC,
        Mode::empty(),
    )?;
    let mut names = Vec::new();
    for entry in d.iter() {
        let name = entry?.file_name().to_bytes().to_vec();
        if name != b"." && name != b".." {
            names.push(name);
        }
    }
    Ok(names)
}

/// What [`remove_all_at`] freed.
#[derive(Debug, Default, Clone, Copy)]
pub(crate) struct Freed {
    pub inodes: u64,
    pub bytes: u64,
}

impl Freed {
    fn add(&mut self, st: &FileStat) {
        // A file with other links keeps its inode and data.
        if file_type(st) == SFlag::S_IFDIR || st.st_nlink <= 1 {
            self.inodes += 1;
            if file_type(st) == SFlag::S_IFREG {
                self.bytes += st.st_size as u64;
            }
        }
    }
}

/// Removes `name` in `dir`, and everything below it if it is a directory, without
/// following symlinks. Iterative, so a hostile deep tree cannot exhaust the stack.
pub(crate) fn remove_all_at(dir: BorrowedFd<'_>, name: &[u8]) -> io::Result<Freed> {
    let mut freed = Freed::default();
    let Some(st) = lstat_at(dir, name)? else {
        return Ok(freed);
    };
    if file_type(&st) != SFlag::S_IFDIR {
        unlinkat(dir, name, UnlinkatFlags::NoRemoveDir)?;
        freed.add(&st);
        return Ok(freed);
    }
    freed.add(&st);
    struct Frame {
        fd: OwnedFd,
        names: Vec<Vec<u8>>,
        name: Vec<u8>,
    }
    let fd = open_dir(dir, name)?;
    let names = list_dir(fd.as_fd())?;
    let mut stack = vec![Frame {
        fd,
        names,
        name: name.to_vec(),
    }];
    while let Some(top) = stack.last_mut() {
        if let Some(child) = top.names.pop() {
            let Some(st) = lstat_at(top.fd.as_fd(), &child)? else {
                continue;
            };
            freed.add(&st);
            if file_type(&st) == SFlag::S_IFDIR {
                let fd = open_dir(top.fd.as_fd(), &child)?;
                let names = list_dir(fd.as_fd())?;
                stack.push(Frame {
                    fd,
                    names,
                    name: child,
                });
            } else {
                unlinkat(&top.fd, child.as_slice(), UnlinkatFlags::NoRemoveDir)?;
            }
        } else {
            let done = stack.pop().expect("non-empty");
            let parent = stack.last().map(|f| f.fd.as_fd()).unwrap_or(dir);
            unlinkat(parent, done.name.as_slice(), UnlinkatFlags::RemoveDir)?;
        }
    }
    Ok(freed)
}

/// Where an xattr goes: an open file or directory, or a name in a directory that is not
/// to be followed (symlinks, device nodes).
#[derive(Clone, Copy)]
pub(crate) enum XattrTarget<'a> {
    Fd(BorrowedFd<'a>),
    At(BorrowedFd<'a>, &'a [u8]),
}

/// Errors that mean "this filesystem or this user cannot have that xattr": skipped with
/// a warning, as docker does, rather than failing the pull.
pub(crate) fn tolerable_xattr_error(e: &io::Error) -> bool {
    matches!(e.raw_os_error(), Some(libc::EPERM | libc::ENOTSUP))
}

pub(crate) fn set_xattr(target: XattrTarget<'_>, key: &CStr, value: &[u8]) -> io::Result<()> {
    match target {
        XattrTarget::Fd(fd) => fsetxattr(fd, key, value),
        XattrTarget::At(dir, name) => lsetxattr(&proc_path(dir, name)?, key, value),
    }
}

/// A path naming `name` in `dir` through /proc: the directory is reached through its
/// descriptor (no lookup of ours to race), and the `l*xattr` calls do not follow `name`.
fn proc_path(dir: BorrowedFd<'_>, name: &[u8]) -> io::Result<CString> {
    let mut path = format!("/proc/self/fd/{}/", dir.as_raw_fd()).into_bytes();
    path.extend_from_slice(name);
    CString::new(path).map_err(|_| io::Error::from_raw_os_error(libc::EINVAL))
}

/// The xattrs of `name` in `dir` (not following it), as (key, value) pairs.
pub(crate) fn get_xattrs_at(
    dir: BorrowedFd<'_>,
    name: &[u8],
) -> io::Result<Vec<(CString, Vec<u8>)>> {
    let path = proc_path(dir, name)?;
    let list = match llistxattr(&path) {
        Ok(list) => list,
        Err(e) if e.raw_os_error() == Some(libc::ENOTSUP) => return Ok(Vec::new()),
        Err(e) => return Err(e),
    };
    let mut out = Vec::new();
    for key in list.split(|b| *b == 0).filter(|k| !k.is_empty()) {
        let key = CString::new(key).expect("split at NUL");
        match lgetxattr(&path, &key) {
            Ok(value) => out.push((key, value)),
            // Removed meanwhile, or not readable by us: nothing to copy.
            Err(e)
                if matches!(
                    e.raw_os_error(),
                    Some(libc::ENODATA | libc::EPERM | libc::EACCES)
                ) => {}
            Err(e) => return Err(e),
        }
    }
    Ok(out)
}

// The only unsafe code of the provisioner: the xattr syscalls, which nix does not wrap. Each passes
// NUL-terminated strings and a buffer with its true length; the kernel writes at most
// that many bytes.

pub(crate) fn fsetxattr(fd: BorrowedFd<'_>, key: &CStr, value: &[u8]) -> io::Result<()> {
    // SAFETY: valid fd, NUL-terminated key, value pointer/length from one slice.
    let rc = unsafe {
        libc::fsetxattr(
            fd.as_raw_fd(),
            key.as_ptr(),
            value.as_ptr().cast(),
            value.len(),
            0,
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

fn lsetxattr(path: &CStr, key: &CStr, value: &[u8]) -> io::Result<()> {
    // SAFETY: NUL-terminated path and key, value pointer/length from one slice.
    let rc = unsafe {
        libc::lsetxattr(
            path.as_ptr(),
            key.as_ptr(),
            value.as_ptr().cast(),
            value.len(),
            0,
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

fn llistxattr(path: &CStr) -> io::Result<Vec<u8>> {
    loop {
        // SAFETY: a null buffer of size 0 asks for the needed size only.
        let size = unsafe { libc::llistxattr(path.as_ptr(), std::ptr::null_mut(), 0) };
        if size < 0 {
            return Err(io::Error::last_os_error());
        }
        let mut buf = vec![0u8; size as usize];
        // SAFETY: the buffer is `buf.len()` bytes long.
        let got = unsafe { libc::llistxattr(path.as_ptr(), buf.as_mut_ptr().cast(), buf.len()) };
        if got >= 0 {
            buf.truncate(got as usize);
            return Ok(buf);
        }
        let err = io::Error::last_os_error();
        if err.raw_os_error() != Some(libc::ERANGE) {
            return Err(err);
        }
        // The list grew between the two calls: ask again.
    }
}

fn lgetxattr(path: &CStr, key: &CStr) -> io::Result<Vec<u8>> {
    loop {
        // SAFETY: a null buffer of size 0 asks for the needed size only.
        let size = unsafe { libc::lgetxattr(path.as_ptr(), key.as_ptr(), std::ptr::null_mut(), 0) };
        if size < 0 {
            return Err(io::Error::last_os_error());
        }
        let mut buf = vec![0u8; size as usize];
        // SAFETY: the buffer is `buf.len()` bytes long.
        let got = unsafe {
            libc::lgetxattr(
                path.as_ptr(),
                key.as_ptr(),
                buf.as_mut_ptr().cast(),
                buf.len(),
            )
        };
        if got >= 0 {
            buf.truncate(got as usize);
            return Ok(buf);
        }
        let err = io::Error::last_os_error();
        if err.raw_os_error() != Some(libc::ERANGE) {
            return Err(err);
        }
    }
}
