//! Applying one tar entry after another to the rootfs: the rules of the module above
//! (no symlink followed, `..` refused, replace-but-merge, hardlinks within the layer),
//! whiteouts, and the metadata of each entry.

use std::collections::{BTreeSet, HashSet};
use std::ffi::CString;
use std::fs::File;
use std::io::{self, Read};
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::path::PathBuf;
use std::rc::Rc;

use nix::errno::Errno;
use nix::fcntl::{OFlag, openat};
use nix::sys::stat::{
    self, FchmodatFlags, Mode, SFlag, UtimensatFlags, fchmod, fchmodat, futimens, mkdirat, mknodat,
    utimensat,
};
use nix::sys::time::TimeSpec;
use nix::unistd::{Gid, Uid, fchown, fchownat, linkat, symlinkat};

use super::{
    ExtractError, LayerSummary, OVERLAY_OPAQUE_XATTR, OVERLAY_XATTR_PREFIX, WH_META_PREFIX,
    WH_OPAQUE, WH_PREFIX,
};
use crate::provisioner::fsat::*;

/// The metadata of one entry, copied out of the header so the data can be read after.
struct Meta {
    mode: u32,
    uid: u32,
    gid: u32,
    mtime: TimeSpec,
    xattrs: Vec<(CString, Vec<u8>)>,
    device: (u32, u32),
    link: Option<Vec<u8>>,
}

pub(super) struct Unpacker {
    root: OwnedFd,
    /// The last parent directory resolved: consecutive entries mostly share one.
    /// Dropped whenever something is removed, since it could be on the cached path.
    cache: Option<(Vec<Vec<u8>>, Rc<OwnedFd>)>,
    privileged: bool,
    whiteouts: BTreeSet<PathBuf>,
    opaque: BTreeSet<PathBuf>,
    /// Directories whose mode and mtime are set last, so writing their children (or a
    /// read-only mode) does not get in the way.
    dirs: Vec<(Vec<Vec<u8>>, u32, TimeSpec)>,
    size_bytes: u64,
    entries: u64,
}

impl Unpacker {
    pub(super) fn new(root: OwnedFd) -> Unpacker {
        Unpacker {
            root,
            cache: None,
            privileged: nix::unistd::geteuid().is_root(),
            whiteouts: BTreeSet::new(),
            opaque: BTreeSet::new(),
            dirs: Vec::new(),
            size_bytes: 0,
            entries: 0,
        }
    }

    pub(super) fn apply<R: Read>(
        &mut self,
        entry: &mut tar::Entry<'_, R>,
    ) -> Result<(), ExtractError> {
        let mut kind = entry.header().entry_type();
        if kind.is_pax_global_extensions() {
            return Ok(());
        }
        let name = entry.path_bytes().into_owned();
        if kind == tar::EntryType::Regular && name.ends_with(b"/") {
            // Pre-POSIX tars mark directories only by the trailing slash.
            kind = tar::EntryType::Directory;
        }
        let shown = String::from_utf8_lossy(&name).into_owned();
        let ctx = Ctx { entry: &shown };
        let comps = components(&name).map_err(|reason| ctx.rejected(reason))?;
        let meta = read_meta(entry, &ctx)?;

        let Some((last, parents)) = comps.split_last() else {
            if kind.is_dir() {
                self.directory(&ctx, &[], &meta)?;
                return Ok(());
            }
            return Err(ctx.rejected(format!("names the layer root but is a {kind:?} entry")));
        };
        if parents.iter().any(|c| c.starts_with(WH_META_PREFIX)) {
            tracing::debug!(entry = %shown, "skipping AUFS metadata");
            return Ok(());
        }
        if let Some(c) = parents.iter().find(|c| c.starts_with(WH_PREFIX)) {
            return Err(ctx.rejected(format!("whiteout {:?} used as a directory", lossy(c))));
        }
        if last.as_slice() == WH_OPAQUE {
            return self.opaque_dir(&ctx, parents);
        }
        if last.starts_with(WH_META_PREFIX) {
            tracing::debug!(entry = %shown, "skipping AUFS metadata");
            return Ok(());
        }
        if let Some(hidden) = last.strip_prefix(WH_PREFIX) {
            if hidden.is_empty() || hidden == b"." || hidden == b".." {
                return Err(ctx.rejected("whiteout of an invalid name"));
            }
            return self.whiteout(&ctx, parents, hidden);
        }

        use tar::EntryType as T;
        match kind {
            T::Directory => self.directory(&ctx, &comps, &meta),
            T::Regular | T::Continuous | T::GNUSparse => {
                let parent = self.parent(&ctx, parents)?;
                self.clear(&ctx, &parent, parents, last, false)?;
                let fd = openat(
                    &*parent,
                    last.as_slice(),
                    OFlag::O_WRONLY
                        | OFlag::O_CREAT
                        | OFlag::O_EXCL
                        | OFlag::O_NOFOLLOW
                        | OFlag::O_CLOEXEC,
                    Mode::from_bits_truncate(0o600),
                )
                .map_err(ctx.io("creating the file"))?;
                let mut file = File::from(fd);
                let size =
                    io::copy(entry, &mut file).map_err(|e| ctx.io_err("writing the file", e))?;
                self.chown(&ctx, file.as_fd(), None, &meta)?;
                fchmod(&file, Mode::from_bits_truncate(meta.mode))
                    .map_err(ctx.io("setting the mode"))?;
                set_xattrs(&ctx, XattrTarget::Fd(file.as_fd()), &meta.xattrs)?;
                futimens(&file, &meta.mtime, &meta.mtime).map_err(ctx.io("setting the mtime"))?;
                self.size_bytes += size;
                self.entries += 1;
                self.created(&comps, false);
                Ok(())
            }
            T::Symlink => {
                let target = meta.link.as_deref().filter(|t| !t.is_empty());
                let target = target.ok_or_else(|| ctx.rejected("symlink without a target"))?;
                let parent = self.parent(&ctx, parents)?;
                self.clear(&ctx, &parent, parents, last, false)?;
                symlinkat(target, &*parent, last.as_slice())
                    .map_err(ctx.io("creating the symlink"))?;
                self.finish_node(&ctx, &parent, last, &meta, false)?;
                self.entries += 1;
                self.created(&comps, false);
                Ok(())
            }
            T::Link => self.hardlink(&ctx, &comps, &meta),
            T::Char | T::Block | T::Fifo => {
                if kind == T::Char && meta.device == (0, 0) {
                    // Already overlayfs's whiteout format; record it like a `.wh.` file.
                    return self.whiteout(&ctx, parents, last);
                }
                if kind != T::Fifo && !self.privileged {
                    tracing::debug!(entry = %shown, "not root: skipping a device node");
                    return Ok(());
                }
                let sflag = match kind {
                    T::Char => SFlag::S_IFCHR,
                    T::Block => SFlag::S_IFBLK,
                    _ => SFlag::S_IFIFO,
                };
                let parent = self.parent(&ctx, parents)?;
                self.clear(&ctx, &parent, parents, last, false)?;
                let dev = stat::makedev(meta.device.0.into(), meta.device.1.into());
                mknodat(
                    &*parent,
                    last.as_slice(),
                    sflag,
                    Mode::from_bits_truncate(0o600),
                    dev,
                )
                .map_err(ctx.io("creating the device node"))?;
                self.finish_node(&ctx, &parent, last, &meta, true)?;
                self.entries += 1;
                self.created(&comps, false);
                Ok(())
            }
            other => Err(ctx.rejected(format!("unsupported entry type {other:?}"))),
        }
    }

    fn directory(&mut self, ctx: &Ctx, comps: &[Vec<u8>], meta: &Meta) -> Result<(), ExtractError> {
        let fd = match comps.split_last() {
            None => Rc::new(
                self.root
                    .try_clone()
                    .map_err(|e| ctx.io_err("opening the rootfs", e))?,
            ),
            Some((last, parents)) => {
                let parent = self.parent(ctx, parents)?;
                if !self.clear(ctx, &parent, parents, last, true)? {
                    mkdirat(&*parent, last.as_slice(), Mode::from_bits_truncate(0o700))
                        .map_err(ctx.io("creating the directory"))?;
                    self.entries += 1;
                }
                Rc::new(open_dir(parent.as_fd(), last).map_err(ctx.io("opening the directory"))?)
            }
        };
        self.chown(ctx, fd.as_fd(), None, meta)?;
        set_xattrs(ctx, XattrTarget::Fd(fd.as_fd()), &meta.xattrs)?;
        self.dirs.push((comps.to_vec(), meta.mode, meta.mtime));
        self.created(comps, true);
        Ok(())
    }

    fn hardlink(&mut self, ctx: &Ctx, comps: &[Vec<u8>], meta: &Meta) -> Result<(), ExtractError> {
        let (last, parents) = comps.split_last().expect("caller checked");
        let target = meta.link.as_deref().unwrap_or_default();
        let shown = lossy(target);
        let tcomps = components(target)
            .map_err(|r| ctx.rejected(format!("hardlink target {shown:?}: {r}")))?;
        let Some((tlast, tparents)) = tcomps.split_last() else {
            return Err(ctx.rejected("hardlink to the layer root"));
        };
        if tcomps == comps {
            return Ok(());
        }
        let tparent = open_dir_at(self.root.as_fd(), tparents, None)
            .map_err(|e| ctx.walk(e, tparents, &format!("hardlink target {shown:?}")))?;
        let tstat =
            lstat_at(tparent.as_fd(), tlast).map_err(ctx.io("inspecting the hardlink target"))?;
        let Some(tstat) = tstat else {
            return Err(ctx.rejected(format!(
                "hardlink target {shown:?} is not an earlier entry of the layer"
            )));
        };
        match file_type(&tstat) {
            SFlag::S_IFDIR => {
                return Err(ctx.rejected(format!("hardlink target {shown:?} is a directory")));
            }
            SFlag::S_IFCHR if tstat.st_rdev == 0 => {
                return Err(ctx.rejected(format!("hardlink target {shown:?} is a whiteout")));
            }
            _ => {}
        }
        let parent = self.parent(ctx, parents)?;
        let existing = lstat_at(parent.as_fd(), last).map_err(ctx.io("inspecting the entry"))?;
        if existing.is_some_and(|e| e.st_dev == tstat.st_dev && e.st_ino == tstat.st_ino) {
            return Ok(());
        }
        self.clear(ctx, &parent, parents, last, false)?;
        linkat(
            &tparent,
            tlast.as_slice(),
            &*parent,
            last.as_slice(),
            nix::fcntl::AtFlags::empty(),
        )
        .map_err(ctx.io("creating the hardlink"))?;
        self.created(comps, false);
        Ok(())
    }

    fn whiteout(
        &mut self,
        ctx: &Ctx,
        parents: &[Vec<u8>],
        hidden: &[u8],
    ) -> Result<(), ExtractError> {
        let parent = self.parent(ctx, parents)?;
        let existing =
            lstat_at(parent.as_fd(), hidden).map_err(ctx.io("inspecting the whiteout"))?;
        let is_whiteout =
            existing.is_some_and(|st| file_type(&st) == SFlag::S_IFCHR && st.st_rdev == 0);
        if !is_whiteout {
            self.clear(ctx, &parent, parents, hidden, false)?;
            match mknodat(
                &*parent,
                hidden,
                SFlag::S_IFCHR,
                Mode::empty(),
                stat::makedev(0, 0),
            ) {
                Ok(()) => self.entries += 1,
                // Without CAP_MKNOD on an old kernel: the summary still records it.
                Err(Errno::EPERM) if !self.privileged => {
                    tracing::debug!(entry = ctx.entry, "not root: whiteout recorded only");
                }
                Err(e) => return Err(ctx.io_err("creating the whiteout", e.into())),
            }
        }
        let mut comps = parents.to_vec();
        comps.push(hidden.to_vec());
        self.whiteouts.insert(rel_path(&comps));
        Ok(())
    }

    fn opaque_dir(&mut self, ctx: &Ctx, comps: &[Vec<u8>]) -> Result<(), ExtractError> {
        let dir = self.parent(ctx, comps)?;
        self.mark_opaque(ctx, dir.as_fd(), comps)
    }

    fn mark_opaque(
        &mut self,
        ctx: &Ctx,
        dir: BorrowedFd<'_>,
        comps: &[Vec<u8>],
    ) -> Result<(), ExtractError> {
        let key = CString::new(OVERLAY_OPAQUE_XATTR).expect("no NUL");
        match fsetxattr(dir, &key, b"y") {
            Ok(()) => {}
            Err(e) if tolerable_xattr_error(&e) => {
                tracing::warn!(entry = ctx.entry, error = %e, "cannot mark the directory opaque for overlayfs; recorded only");
            }
            Err(e) => return Err(ctx.io_err("marking the directory opaque", e)),
        }
        self.opaque.insert(rel_path(comps));
        Ok(())
    }

    /// Bookkeeping after an entry was created at `comps`: a path this layer whited out
    /// and then brought back is no longer a whiteout; a directory brought back that way
    /// must still hide the lower layers' one, so it becomes opaque.
    fn created(&mut self, comps: &[Vec<u8>], is_dir: bool) {
        if self.whiteouts.is_empty() {
            return;
        }
        let rel = rel_path(comps);
        if !(self.whiteouts.remove(&rel) && is_dir) {
            return;
        }
        if let Ok(fd) = open_dir_at(self.root.as_fd(), comps, None) {
            let ctx_entry = rel.to_string_lossy().into_owned();
            let ctx = Ctx { entry: &ctx_entry };
            if let Err(e) = self.mark_opaque(&ctx, fd.as_fd(), comps) {
                tracing::warn!(error = %e, "cannot mark a re-created directory opaque");
            }
        }
    }

    /// Makes room for a new entry `name` in `parent`: removes what is there, except a
    /// directory when `keep_dir` (a directory entry over a directory merges). Returns
    /// whether a directory was kept.
    fn clear(
        &mut self,
        ctx: &Ctx,
        parent: &OwnedFd,
        parents: &[Vec<u8>],
        name: &[u8],
        keep_dir: bool,
    ) -> Result<bool, ExtractError> {
        let Some(st) = lstat_at(parent.as_fd(), name).map_err(ctx.io("inspecting the entry"))?
        else {
            return Ok(false);
        };
        let is_dir = file_type(&st) == SFlag::S_IFDIR;
        if is_dir && keep_dir {
            return Ok(true);
        }
        let freed = remove_all_at(parent.as_fd(), name)
            .map_err(|e| ctx.io_err("replacing the entry", e))?;
        self.entries = self.entries.saturating_sub(freed.inodes);
        self.size_bytes = self.size_bytes.saturating_sub(freed.bytes);
        if is_dir {
            self.cache = None;
            let mut comps = parents.to_vec();
            comps.push(name.to_vec());
            let rel = rel_path(&comps);
            self.whiteouts.retain(|p| p == &rel || !p.starts_with(&rel));
            self.opaque.retain(|p| !p.starts_with(&rel));
        }
        Ok(false)
    }

    /// The directory `comps`, created (0755) where missing, as a tar of a partial tree
    /// may leave parents out.
    fn parent(&mut self, ctx: &Ctx, comps: &[Vec<u8>]) -> Result<Rc<OwnedFd>, ExtractError> {
        if let Some((_, fd)) = self
            .cache
            .as_ref()
            .filter(|(cached, _)| cached.as_slice() == comps)
        {
            return Ok(fd.clone());
        }
        let mut created = 0;
        let fd = open_dir_at(self.root.as_fd(), comps, Some(&mut created))
            .map_err(|e| ctx.walk(e, comps, "parent directory"))?;
        self.entries += created;
        let fd = Rc::new(fd);
        self.cache = Some((comps.to_vec(), fd.clone()));
        Ok(fd)
    }

    fn chown(
        &self,
        ctx: &Ctx,
        fd: BorrowedFd<'_>,
        name: Option<&[u8]>,
        meta: &Meta,
    ) -> Result<(), ExtractError> {
        if !self.privileged {
            return Ok(());
        }
        let (uid, gid) = (Some(Uid::from_raw(meta.uid)), Some(Gid::from_raw(meta.gid)));
        match name {
            None => fchown(fd, uid, gid),
            Some(name) => fchownat(fd, name, uid, gid, nix::fcntl::AtFlags::AT_SYMLINK_NOFOLLOW),
        }
        .map_err(ctx.io("setting the owner"))
    }

    /// Owner, mode (not for symlinks), xattrs and times of a non-directory, non-file node.
    fn finish_node(
        &self,
        ctx: &Ctx,
        parent: &OwnedFd,
        name: &[u8],
        meta: &Meta,
        set_mode: bool,
    ) -> Result<(), ExtractError> {
        self.chown(ctx, parent.as_fd(), Some(name), meta)?;
        if set_mode {
            // The node was just made by us and is not a symlink, so following is moot;
            // the kernel has no fchmodat(AT_SYMLINK_NOFOLLOW) for non-symlinks anyway.
            fchmodat(
                parent,
                name,
                Mode::from_bits_truncate(meta.mode),
                FchmodatFlags::FollowSymlink,
            )
            .map_err(ctx.io("setting the mode"))?;
        }
        set_xattrs(ctx, XattrTarget::At(parent.as_fd(), name), &meta.xattrs)?;
        utimensat(
            parent,
            name,
            &meta.mtime,
            &meta.mtime,
            UtimensatFlags::NoFollowSymlink,
        )
        .map_err(ctx.io("setting the mtime"))?;
        Ok(())
    }

    pub(super) fn finish(self) -> Result<LayerSummary, ExtractError> {
        let mut seen = HashSet::new();
        // Reversed: a later entry for the same directory wins, and children come first.
        for (comps, mode, mtime) in self.dirs.iter().rev() {
            if !seen.insert(comps) {
                continue;
            }
            // Replaced by a later entry: nothing to finish.
            let Ok(fd) = open_dir_at(self.root.as_fd(), comps, None) else {
                continue;
            };
            let shown = rel_path(comps).to_string_lossy().into_owned();
            let ctx = Ctx { entry: &shown };
            fchmod(&fd, Mode::from_bits_truncate(*mode)).map_err(ctx.io("setting the mode"))?;
            futimens(&fd, mtime, mtime).map_err(ctx.io("setting the mtime"))?;
        }
        Ok(LayerSummary {
            diff_id: String::new(),
            whiteouts: self.whiteouts.into_iter().collect(),
            opaque_dirs: self.opaque.into_iter().collect(),
            size_bytes: self.size_bytes,
            entries: self.entries,
        })
    }
}

/// Error context: the entry being applied.
struct Ctx<'a> {
    entry: &'a str,
}

impl Ctx<'_> {
    fn rejected(&self, reason: impl Into<String>) -> ExtractError {
        ExtractError::Rejected {
            entry: self.entry.to_string(),
            reason: reason.into(),
        }
    }

    fn io_err(&self, op: &'static str, source: io::Error) -> ExtractError {
        ExtractError::Io {
            entry: self.entry.to_string(),
            op,
            source,
        }
    }

    fn io(&self, op: &'static str) -> impl FnOnce(Errno) -> ExtractError + '_ {
        move |e| self.io_err(op, e.into())
    }

    fn walk(&self, e: WalkError, comps: &[Vec<u8>], what: &str) -> ExtractError {
        let at = |depth: usize| rel_path(&comps[..(depth + 1).min(comps.len())]);
        match e {
            WalkError::Symlink(d) => self.rejected(format!(
                "{what}: {} is a symlink, which extraction never follows",
                at(d).display()
            )),
            WalkError::NotDir(d) => {
                self.rejected(format!("{what}: {} is not a directory", at(d).display()))
            }
            WalkError::Missing(d) => {
                self.rejected(format!("{what}: {} does not exist", at(d).display()))
            }
            WalkError::Io(d, errno) => ExtractError::Io {
                entry: format!("{} (at {})", self.entry, at(d).display()),
                op: "opening a parent directory",
                source: errno.into(),
            },
        }
    }
}

fn read_meta<R: Read>(entry: &mut tar::Entry<'_, R>, ctx: &Ctx) -> Result<Meta, ExtractError> {
    let bad = |field: &str, e: io::Error| ctx.rejected(format!("bad {field} field: {e}"));
    let header = entry.header();
    let mode = header.mode().map_err(|e| bad("mode", e))? & 0o7777;
    let uid = header.uid().map_err(|e| bad("uid", e))?;
    let gid = header.gid().map_err(|e| bad("gid", e))?;
    let uid = u32::try_from(uid).map_err(|_| ctx.rejected(format!("uid {uid} out of range")))?;
    let gid = u32::try_from(gid).map_err(|_| ctx.rejected(format!("gid {gid} out of range")))?;
    let mut mtime = TimeSpec::new(header.mtime().map_err(|e| bad("mtime", e))? as i64, 0);
    let device = match header.entry_type() {
        tar::EntryType::Char | tar::EntryType::Block => (
            header
                .device_major()
                .map_err(|e| bad("devmajor", e))?
                .unwrap_or(0),
            header
                .device_minor()
                .map_err(|e| bad("devminor", e))?
                .unwrap_or(0),
        ),
        _ => (0, 0),
    };
    let link = entry.link_name_bytes().map(|l| l.into_owned());
    let mut xattrs = Vec::new();
    if let Some(pax) = entry.pax_extensions().map_err(ExtractError::Stream)? {
        for ext in pax {
            let ext = ext.map_err(ExtractError::Stream)?;
            let Ok(key) = ext.key() else { continue };
            if key == "mtime" {
                if let Some(t) = ext.value().ok().and_then(parse_pax_time) {
                    mtime = t;
                }
            } else if let Some(name) = key.strip_prefix("SCHILY.xattr.") {
                if name.starts_with(OVERLAY_XATTR_PREFIX) {
                    // Only we decide what overlayfs sees (opaque, redirects, metacopy).
                    tracing::debug!(
                        entry = ctx.entry,
                        xattr = name,
                        "dropping an overlayfs xattr from the layer"
                    );
                    continue;
                }
                let name = CString::new(name).map_err(|_| ctx.rejected("NUL in an xattr name"))?;
                xattrs.push((name, ext.value_bytes().to_vec()));
            }
        }
    }
    Ok(Meta {
        mode,
        uid,
        gid,
        mtime,
        xattrs,
        device,
        link,
    })
}

/// A PAX time: decimal seconds with an optional fraction.
pub(super) fn parse_pax_time(value: &str) -> Option<TimeSpec> {
    let (secs, frac) = value.split_once('.').unwrap_or((value, ""));
    let secs: i64 = secs.parse().ok()?;
    let digits: String = frac.chars().take(9).collect();
    if !digits.chars().all(|c| c.is_ascii_digit()) {
        return None;
    }
    let nanos = if digits.is_empty() {
        0
    } else {
        format!("{digits:0<9}").parse::<i64>().ok()?
    };
    // "-1.5" is 1.5 s before the epoch: (-2 s, +0.5 s).
    Some(if value.starts_with('-') && nanos > 0 {
        TimeSpec::new(secs - 1, 1_000_000_000 - nanos)
    } else {
        TimeSpec::new(secs, nanos)
    })
}

fn lossy(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

fn set_xattrs(
    ctx: &Ctx,
    target: XattrTarget<'_>,
    xattrs: &[(CString, Vec<u8>)],
) -> Result<(), ExtractError> {
    for (key, value) in xattrs {
        match set_xattr(target, key, value) {
            Ok(()) => {}
            Err(e) if tolerable_xattr_error(&e) => {
                tracing::warn!(entry = ctx.entry, xattr = ?key, error = %e, "xattr not kept");
            }
            Err(e) => return Err(ctx.io_err("setting an xattr", e)),
        }
    }
    Ok(())
}
