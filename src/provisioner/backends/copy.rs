//! Mesos's copy backend: every layer copied, in order, into a plain directory, each
//! layer's whiteouts applied first. Works on any filesystem and kernel; costs a full
//! copy of the image per container (on xfs/btrfs the kernel may reflink the data).
//!
//! The copy is done through directory descriptors and never follows a symlink, so a
//! lower layer's symlink (`lib -> usr/lib`) is replaced by an upper layer's directory
//! exactly as overlayfs would hide it, and nothing outside the rootfs is touched.

use std::collections::HashMap;
use std::ffi::CString;
use std::fs::File;
use std::io;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use nix::fcntl::{AtFlags, OFlag, openat, readlinkat};
use nix::sys::stat::{
    FchmodatFlags, FileStat, Mode, SFlag, UtimensatFlags, fchmod, fchmodat, fstat, futimens,
    mkdirat, mknodat, utimensat,
};
use nix::sys::time::TimeSpec;
use nix::unistd::{Gid, Uid, fchown, fchownat, linkat, symlinkat};

use super::{Backend, BackendError, LayerRef, create_rootfs_dir, unmount_and_remove};
use crate::provisioner::fsat::{
    self, XattrTarget, components, dir_flags, file_type, lstat_at, open_dir, open_dir_at,
    remove_all_at,
};
use crate::provisioner::store::extract::{LayerSummary, OVERLAY_XATTR_PREFIX};

const NAME: &str = "copy";

#[derive(Debug)]
pub struct CopyBackend;

impl Backend for CopyBackend {
    fn name(&self) -> &'static str {
        NAME
    }

    /// The copy is the container's to change, image files included.
    fn writable(&self, rootfs: &Path, _scratch: &Path) -> Option<std::path::PathBuf> {
        Some(rootfs.to_path_buf())
    }

    fn provision(
        &self,
        layers: &[LayerRef],
        rootfs: &Path,
        _scratch: &Path,
    ) -> Result<(), BackendError> {
        create_rootfs_dir(NAME, rootfs)?;
        let dst = nix::fcntl::open(rootfs, dir_flags(), Mode::empty())
            .map_err(BackendError::errno(NAME, "opening", rootfs))?;
        let privileged = nix::unistd::geteuid().is_root();
        for layer in layers {
            apply_whiteouts(dst.as_fd(), &layer.summary).map_err(BackendError::io(
                NAME,
                "applying the whiteouts of",
                &layer.rootfs,
            ))?;
            let src = nix::fcntl::open(&layer.rootfs, dir_flags(), Mode::empty())
                .map_err(BackendError::errno(NAME, "opening", &layer.rootfs))?;
            copy_tree(
                src,
                dst.try_clone()
                    .map_err(BackendError::io(NAME, "opening", rootfs))?,
                privileged,
            )
            .map_err(|(rel, source)| BackendError::Io {
                backend: NAME,
                op: "copying",
                path: layer.rootfs.join(rel),
                source,
            })?;
        }
        Ok(())
    }

    fn destroy(&self, rootfs: &Path, scratch: &Path) -> Result<(), BackendError> {
        unmount_and_remove(NAME, rootfs)?;
        unmount_and_remove(NAME, scratch)
    }
}

/// Deletes what `summary` whites out and empties its opaque directories. A path that
/// does not lead to a real directory in the rootfs (missing, or through a symlink) has
/// nothing to delete: the layer's own entry will replace whatever is there.
fn apply_whiteouts(dst: BorrowedFd<'_>, summary: &LayerSummary) -> io::Result<()> {
    for path in &summary.whiteouts {
        let Ok(comps) = components(path.as_os_str().as_bytes()) else {
            continue;
        };
        let Some((last, parents)) = comps.split_last() else {
            continue;
        };
        if let Ok(dir) = open_dir_at(dst, parents, None) {
            remove_all_at(dir.as_fd(), last)?;
        }
    }
    for path in &summary.opaque_dirs {
        let Ok(comps) = components(path.as_os_str().as_bytes()) else {
            continue;
        };
        if let Ok(dir) = open_dir_at(dst, &comps, None) {
            for name in fsat::list_dir(dir.as_fd())? {
                remove_all_at(dir.as_fd(), &name)?;
            }
        }
    }
    Ok(())
}

/// A directory being copied; its own metadata is applied once its children are done,
/// so their creation does not disturb its mtime.
struct Frame {
    src: OwnedFd,
    dst: OwnedFd,
    names: Vec<Vec<u8>>,
    rel: Vec<Vec<u8>>,
    stat: FileStat,
}

type CopyError = (PathBuf, io::Error);

/// Copies the tree under `src` over the tree under `dst`, merging directories and
/// replacing everything else. Iterative, so a deep tree cannot exhaust the stack.
fn copy_tree(src: OwnedFd, dst: OwnedFd, privileged: bool) -> Result<(), CopyError> {
    let root_err = |e: io::Error| (PathBuf::from("."), e);
    let dst_root = dst.try_clone().map_err(root_err)?;
    let stat = fstat(&src).map_err(|e| root_err(e.into()))?;
    let names = fsat::list_dir(src.as_fd()).map_err(|e| root_err(e.into()))?;
    let mut stack = vec![Frame {
        src,
        dst,
        names,
        rel: Vec::new(),
        stat,
    }];
    // Hardlinked files (by source inode) already copied in this layer, as cp -a keeps them.
    let mut links: HashMap<(u64, u64), Vec<Vec<u8>>> = HashMap::new();
    while let Some(top) = stack.last_mut() {
        let Some(name) = top.names.pop() else {
            let done = stack.pop().expect("non-empty");
            let at = fsat::rel_path(&done.rel);
            set_meta(
                Node::Fd(done.dst.as_fd()),
                done.src.as_fd(),
                b".",
                &done.stat,
                privileged,
            )
            .map_err(|e| (at, e))?;
            continue;
        };
        let mut rel = top.rel.clone();
        rel.push(name.clone());
        let err = |e: io::Error| (fsat::rel_path(&rel), e);
        let Some(st) = lstat_at(top.src.as_fd(), &name).map_err(|e| err(e.into()))? else {
            continue;
        };
        let kind = file_type(&st);
        if kind == SFlag::S_IFCHR && st.st_rdev == 0 {
            // A whiteout: already applied through the summary.
            continue;
        }
        let (src_dir, dst_dir) = (top.src.as_fd(), top.dst.as_fd());
        let existing = lstat_at(dst_dir, &name).map_err(|e| err(e.into()))?;
        if kind == SFlag::S_IFDIR {
            if existing.is_none_or(|e| file_type(&e) != SFlag::S_IFDIR) {
                remove_all_at(dst_dir, &name).map_err(err)?;
                mkdirat(dst_dir, name.as_slice(), Mode::from_bits_truncate(0o700))
                    .map_err(|e| err(e.into()))?;
            }
            let src = open_dir(src_dir, &name).map_err(|e| err(e.into()))?;
            let dst = open_dir(dst_dir, &name).map_err(|e| err(e.into()))?;
            let names = fsat::list_dir(src.as_fd()).map_err(|e| err(e.into()))?;
            stack.push(Frame {
                src,
                dst,
                names,
                rel,
                stat: st,
            });
            continue;
        }
        if existing.is_some() {
            remove_all_at(dst_dir, &name).map_err(err)?;
        }
        match kind {
            SFlag::S_IFREG => {
                let key = (st.st_dev, st.st_ino);
                if let Some(first) = links.get(&key).filter(|_| st.st_nlink > 1) {
                    let (last, parents) = first.split_last().expect("non-empty");
                    let dir = open_dir_at(dst_root.as_fd(), parents, None)
                        .map_err(|e| err(io::Error::other(format!("hardlink target: {e:?}"))))?;
                    linkat(
                        &dir,
                        last.as_slice(),
                        dst_dir,
                        name.as_slice(),
                        AtFlags::empty(),
                    )
                    .map_err(|e| err(e.into()))?;
                    continue;
                }
                let mut input = File::from(
                    openat(
                        src_dir,
                        name.as_slice(),
                        OFlag::O_RDONLY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC,
                        Mode::empty(),
                    )
                    .map_err(|e| err(e.into()))?,
                );
                let mut output = File::from(
                    openat(
                        dst_dir,
                        name.as_slice(),
                        OFlag::O_WRONLY
                            | OFlag::O_CREAT
                            | OFlag::O_EXCL
                            | OFlag::O_NOFOLLOW
                            | OFlag::O_CLOEXEC,
                        Mode::from_bits_truncate(0o600),
                    )
                    .map_err(|e| err(e.into()))?,
                );
                io::copy(&mut input, &mut output).map_err(err)?;
                set_meta(Node::Fd(output.as_fd()), src_dir, &name, &st, privileged).map_err(err)?;
                if st.st_nlink > 1 {
                    links.insert(key, rel.clone());
                }
            }
            SFlag::S_IFLNK => {
                let target = readlinkat(src_dir, name.as_slice()).map_err(|e| err(e.into()))?;
                symlinkat(target.as_os_str(), dst_dir, name.as_slice())
                    .map_err(|e| err(e.into()))?;
                set_meta(Node::Link(dst_dir, &name), src_dir, &name, &st, privileged)
                    .map_err(err)?;
            }
            SFlag::S_IFCHR | SFlag::S_IFBLK | SFlag::S_IFIFO | SFlag::S_IFSOCK => {
                if !privileged && matches!(kind, SFlag::S_IFCHR | SFlag::S_IFBLK) {
                    tracing::debug!(path = %fsat::rel_path(&rel).display(), "not root: skipping a device node");
                    continue;
                }
                mknodat(
                    dst_dir,
                    name.as_slice(),
                    kind,
                    Mode::from_bits_truncate(0o600),
                    st.st_rdev,
                )
                .map_err(|e| err(e.into()))?;
                set_meta(
                    Node::Special(dst_dir, &name),
                    src_dir,
                    &name,
                    &st,
                    privileged,
                )
                .map_err(err)?;
            }
            _ => {
                return Err(err(io::Error::other(format!(
                    "unknown file type {:o}",
                    st.st_mode
                ))));
            }
        }
    }
    Ok(())
}

/// The copy whose metadata is being set.
#[derive(Clone, Copy)]
enum Node<'a> {
    /// An open file or directory.
    Fd(BorrowedFd<'a>),
    /// A symlink, by name in its directory.
    Link(BorrowedFd<'a>, &'a [u8]),
    /// A device node, fifo or socket, by name in its directory.
    Special(BorrowedFd<'a>, &'a [u8]),
}

/// Gives `node` the owner, mode, xattrs and times of `src_name` in `src_dir` (whose
/// stat is `st`). Ownership first, as it clears setuid bits and file capabilities.
/// overlayfs's own xattrs stay behind: the copy is a plain tree.
fn set_meta(
    node: Node<'_>,
    src_dir: BorrowedFd<'_>,
    src_name: &[u8],
    st: &FileStat,
    privileged: bool,
) -> io::Result<()> {
    let (uid, gid) = (
        Some(Uid::from_raw(st.st_uid)),
        Some(Gid::from_raw(st.st_gid)),
    );
    let mode = Mode::from_bits_truncate(st.st_mode & 0o7777);
    match node {
        Node::Fd(fd) => {
            if privileged {
                fchown(fd, uid, gid)?;
            }
            fchmod(fd, mode)?;
        }
        Node::Link(dir, name) | Node::Special(dir, name) => {
            if privileged {
                fchownat(dir, name, uid, gid, AtFlags::AT_SYMLINK_NOFOLLOW)?;
            }
            if matches!(node, Node::Special(..)) {
                fchmodat(dir, name, mode, FchmodatFlags::FollowSymlink)?;
            }
        }
    }
    let target = match node {
        Node::Fd(fd) => XattrTarget::Fd(fd),
        Node::Link(dir, name) | Node::Special(dir, name) => XattrTarget::At(dir, name),
    };
    for (key, value) in fsat::get_xattrs_at(src_dir, src_name)? {
        if key.to_bytes().starts_with(OVERLAY_XATTR_PREFIX.as_bytes()) {
            continue;
        }
        match fsat::set_xattr(target, &key, &value) {
            Ok(()) => {}
            Err(e) if fsat::tolerable_xattr_error(&e) => {
                tracing::warn!(xattr = ?CString::as_c_str(&key), error = %e, "xattr not copied");
            }
            Err(e) => return Err(e),
        }
    }
    let atime = TimeSpec::new(st.st_atime, st.st_atime_nsec);
    let mtime = TimeSpec::new(st.st_mtime, st.st_mtime_nsec);
    match node {
        Node::Fd(fd) => futimens(fd, &atime, &mtime)?,
        Node::Link(dir, name) | Node::Special(dir, name) => {
            utimensat(dir, name, &atime, &mtime, UtimensatFlags::NoFollowSymlink)?
        }
    }
    Ok(())
}
