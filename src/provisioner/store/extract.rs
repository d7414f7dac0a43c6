//! Unpacking one image layer (a tar stream, plain, gzip'd or zstd'd) into a fresh
//! directory, with whiteouts converted to overlayfs's format.
//!
//! A layer is untrusted input: it must never create, change or delete anything outside
//! `rootfs`. Every name is therefore resolved one component at a time from a descriptor
//! of `rootfs`, each directory opened with `O_NOFOLLOW`, and every final step uses a
//! `*at` call that does not follow a symlink either. No symlink is ever followed, neither
//! one from an earlier entry of the layer nor one in the name itself. The rules:
//! - an absolute name is taken relative to `rootfs`, as docker does (`/etc/passwd` is
//!   `rootfs/etc/passwd`): tools such as old `docker export` produced such names;
//! - a name with a `..` component is rejected (docker only cleans `a/../b`; no real layer
//!   needs it, and refusing is simpler to reason about than confining);
//! - a name that reaches through a symlink (or a non-directory) is rejected: within one
//!   layer such an entry can only be a trick, since a tar of a real tree never has one;
//! - an entry replaces whatever the layer already had at its name, except that a
//!   directory over a directory merges (as docker does); the old entry is removed first,
//!   so a file never writes through a symlink and a symlink can replace a directory;
//! - a hardlink's target must be an earlier non-directory entry of this layer, reached
//!   without symlinks; an absolute target is relative to `rootfs` as above.
//!
//! Whiteouts (`.wh.<name>`, `.wh..wh..opq`) become what overlayfs reads: a 0:0 character
//! device at `<name>`, and `trusted.overlay.opaque=y` on the opaque directory. The
//! [`LayerSummary`] lists them too, so the copy backend (and anyone without overlayfs)
//! can apply them without scanning the tree.

use std::collections::{BTreeSet, HashSet};
use std::ffi::{CStr, CString, OsStr};
use std::fs::File;
use std::io::{self, BufReader, Read};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::rc::Rc;

use nix::errno::Errno;
use nix::fcntl::{OFlag, openat};
use nix::sys::stat::{
    self, FchmodatFlags, FileStat, Mode, SFlag, UtimensatFlags, fchmod, fchmodat, fstatat,
    futimens, mkdirat, mknodat, utimensat,
};
use nix::sys::time::TimeSpec;
use nix::unistd::{Gid, Uid, UnlinkatFlags, fchown, fchownat, linkat, symlinkat, unlinkat};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

/// The xattr overlayfs reads to make a directory hide the lower layers' contents.
pub const OVERLAY_OPAQUE_XATTR: &str = "trusted.overlay.opaque";
/// Prefix of every xattr overlayfs interprets; a layer may not bring its own.
pub const OVERLAY_XATTR_PREFIX: &str = "trusted.overlay.";

const WH_PREFIX: &[u8] = b".wh.";
/// AUFS's own bookkeeping (`.wh..wh.plnk`, `.wh..wh.aufs`): never part of the image.
const WH_META_PREFIX: &[u8] = b".wh..wh.";
const WH_OPAQUE: &[u8] = b".wh..wh..opq";

/// How a layer blob is compressed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Compression {
    None,
    Gzip,
    Zstd,
}

impl Compression {
    /// The compression an OCI or Docker layer media type declares:
    /// `application/vnd.oci.image.layer.v1.tar[+gzip|+zstd]` (and the `nondistributable`
    /// variants), `application/vnd.docker.image.rootfs.diff.tar.gzip` (and `foreign`).
    /// Anything unknown is `None`; [`unpack_layer`] sniffs the stream anyway.
    pub fn from_media_type(media_type: &str) -> Compression {
        let media_type = media_type
            .split(';')
            .next()
            .unwrap_or("")
            .trim()
            .to_ascii_lowercase();
        if media_type.ends_with("+gzip")
            || media_type.ends_with(".gzip")
            || media_type.ends_with(".tar.gz")
            || media_type == "application/gzip"
            || media_type == "application/x-gzip"
        {
            Compression::Gzip
        } else if media_type.ends_with("+zstd")
            || media_type.ends_with(".zstd")
            || media_type == "application/zstd"
        {
            Compression::Zstd
        } else {
            Compression::None
        }
    }

    /// The compression the first bytes of a blob show (gzip `1f 8b`, zstd `28 b5 2f fd`);
    /// `None` for anything else, a tar stream included.
    pub fn sniff(head: &[u8]) -> Compression {
        if head.starts_with(&[0x1f, 0x8b]) {
            Compression::Gzip
        } else if head.starts_with(&[0x28, 0xb5, 0x2f, 0xfd]) {
            Compression::Zstd
        } else {
            Compression::None
        }
    }
}

/// What [`unpack_layer`] learnt about a layer; the store keeps it beside the rootfs.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct LayerSummary {
    /// `sha256:<hex>` of the uncompressed tar stream (the image config's diff_id).
    pub diff_id: String,
    /// Paths (relative to the layer root) this layer deletes from the layers below.
    pub whiteouts: Vec<PathBuf>,
    /// Directories (relative; `.` for the root) that hide the lower layers' contents.
    pub opaque_dirs: Vec<PathBuf>,
    /// Bytes of regular file data in the layer.
    pub size_bytes: u64,
    /// Inodes the layer uses (hardlinks share one).
    pub entries: u64,
}

#[derive(Debug, thiserror::Error)]
pub enum ExtractError {
    #[error("layer rootfs {path}: {source}")]
    Rootfs { path: PathBuf, source: io::Error },
    #[error("reading the layer stream: {0}")]
    Stream(#[source] io::Error),
    #[error("tar entry {entry:?} rejected: {reason}")]
    Rejected { entry: String, reason: String },
    #[error("tar entry {entry:?}: {op}: {source}")]
    Io {
        entry: String,
        op: &'static str,
        #[source]
        source: io::Error,
    },
}

/// Unpacks the layer tar in `reader` into `rootfs`, an existing empty directory, and
/// returns its summary. `compression` is what the manifest declares; the stream's magic
/// bytes win when they disagree (registries and `docker save` mislabel layers).
/// Blocking: run it on a blocking thread.
pub fn unpack_layer(
    mut reader: impl Read,
    compression: Compression,
    rootfs: &Path,
) -> Result<LayerSummary, ExtractError> {
    let root =
        nix::fcntl::open(rootfs, dir_flags(), Mode::empty()).map_err(|e| ExtractError::Rootfs {
            path: rootfs.to_path_buf(),
            source: e.into(),
        })?;

    let mut head = [0u8; 4];
    let mut got = 0;
    while got < head.len() {
        match reader.read(&mut head[got..]) {
            Ok(0) => break,
            Ok(n) => got += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(ExtractError::Stream(e)),
        }
    }
    let sniffed = Compression::sniff(&head[..got]);
    if sniffed != compression {
        tracing::debug!(declared = ?compression, found = ?sniffed, "layer compression differs from its media type");
    }
    let input = io::Cursor::new(head[..got].to_vec()).chain(reader);
    let decoded = match sniffed {
        Compression::None => Decoder::Plain(input),
        Compression::Gzip => Decoder::Gzip(Box::new(flate2::read::MultiGzDecoder::new(input))),
        Compression::Zstd => Decoder::Zstd(Box::new(
            zstd::stream::read::Decoder::new(input).map_err(ExtractError::Stream)?,
        )),
    };
    let mut hashed = HashingReader {
        inner: decoded,
        hasher: Sha256::new(),
    };

    let mut unpacker = Unpacker::new(root);
    {
        let mut archive = tar::Archive::new(&mut hashed);
        for entry in archive.entries().map_err(ExtractError::Stream)? {
            let mut entry = entry.map_err(ExtractError::Stream)?;
            unpacker.apply(&mut entry)?;
        }
    }
    // The archive stops at the first zero block; the diff_id covers the whole stream.
    io::copy(&mut hashed, &mut io::sink()).map_err(ExtractError::Stream)?;
    let mut summary = unpacker.finish()?;
    summary.diff_id = format!("sha256:{}", hex::encode(hashed.hasher.finalize()));
    Ok(summary)
}

enum Decoder<R: Read> {
    Plain(R),
    Gzip(Box<flate2::read::MultiGzDecoder<R>>),
    Zstd(Box<zstd::stream::read::Decoder<'static, BufReader<R>>>),
}

impl<R: Read> Read for Decoder<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match self {
            Decoder::Plain(r) => r.read(buf),
            Decoder::Gzip(r) => r.read(buf),
            Decoder::Zstd(r) => r.read(buf),
        }
    }
}

struct HashingReader<R> {
    inner: R,
    hasher: Sha256,
}

impl<R: Read> Read for HashingReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.hasher.update(&buf[..n]);
        Ok(n)
    }
}

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

struct Unpacker {
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
    fn new(root: OwnedFd) -> Unpacker {
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

    fn apply<R: Read>(&mut self, entry: &mut tar::Entry<'_, R>) -> Result<(), ExtractError> {
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

    fn finish(self) -> Result<LayerSummary, ExtractError> {
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
fn parse_pax_time(value: &str) -> Option<TimeSpec> {
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

fn lossy(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
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

fn errno_of(e: &io::Error) -> Errno {
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

// The only unsafe code here: the xattr syscalls, which nix does not wrap. Each passes
// NUL-terminated strings and a buffer with its true length; the kernel writes at most
// that many bytes.

fn fsetxattr(fd: BorrowedFd<'_>, key: &CStr, value: &[u8]) -> io::Result<()> {
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

/// A tar writer for tests that writes raw ustar headers, so it can produce the names
/// and links that well-behaved builders refuse (`..`, absolute paths, tricks).
#[cfg(test)]
pub(crate) mod testtar {
    pub const MTIME: u64 = 1_600_000_000;

    #[derive(Default)]
    pub struct Tar {
        pub bytes: Vec<u8>,
    }

    fn octal(field: &mut [u8], value: u64) {
        let s = format!("{:0width$o}\0", value, width = field.len() - 1);
        field.copy_from_slice(s.as_bytes());
    }

    impl Tar {
        pub fn new() -> Tar {
            Tar::default()
        }

        /// One raw entry: header fields as given, then `data` padded to a block.
        #[allow(clippy::too_many_arguments)]
        pub fn raw(
            &mut self,
            name: &str,
            kind: u8,
            mode: u32,
            (uid, gid): (u32, u32),
            mtime: u64,
            link: &str,
            dev: (u32, u32),
            data: &[u8],
        ) -> &mut Tar {
            assert!(
                name.len() <= 100 && link.len() <= 100,
                "use pax() for long names"
            );
            let mut h = [0u8; 512];
            h[..name.len()].copy_from_slice(name.as_bytes());
            octal(&mut h[100..108], mode.into());
            octal(&mut h[108..116], uid.into());
            octal(&mut h[116..124], gid.into());
            octal(&mut h[124..136], data.len() as u64);
            octal(&mut h[136..148], mtime);
            h[156] = kind;
            h[157..157 + link.len()].copy_from_slice(link.as_bytes());
            h[257..263].copy_from_slice(b"ustar\0");
            h[263..265].copy_from_slice(b"00");
            h[265..269].copy_from_slice(b"root");
            h[297..301].copy_from_slice(b"root");
            octal(&mut h[329..337], dev.0.into());
            octal(&mut h[337..345], dev.1.into());
            h[148..156].copy_from_slice(b"        ");
            let sum: u32 = h.iter().map(|b| u32::from(*b)).sum();
            let s = format!("{sum:06o}\0 ");
            h[148..156].copy_from_slice(s.as_bytes());
            self.bytes.extend_from_slice(&h);
            self.bytes.extend_from_slice(data);
            let pad = (512 - data.len() % 512) % 512;
            self.bytes.extend(std::iter::repeat_n(0u8, pad));
            self
        }

        pub fn dir(&mut self, name: &str, mode: u32) -> &mut Tar {
            self.raw(name, b'5', mode, (0, 0), MTIME, "", (0, 0), b"")
        }

        pub fn file(&mut self, name: &str, mode: u32, data: &[u8]) -> &mut Tar {
            self.raw(name, b'0', mode, (0, 0), MTIME, "", (0, 0), data)
        }

        pub fn symlink(&mut self, name: &str, target: &str) -> &mut Tar {
            self.raw(name, b'2', 0o777, (0, 0), MTIME, target, (0, 0), b"")
        }

        pub fn hardlink(&mut self, name: &str, target: &str) -> &mut Tar {
            self.raw(name, b'1', 0o644, (0, 0), MTIME, target, (0, 0), b"")
        }

        /// A PAX extended header for the next entry.
        pub fn pax(&mut self, records: &[(&str, &[u8])]) -> &mut Tar {
            let mut body = Vec::new();
            for (key, value) in records {
                let rest = key.len() + value.len() + 3;
                let mut len = rest + rest.to_string().len();
                if len.to_string().len() + rest != len {
                    len += 1;
                }
                body.extend_from_slice(format!("{len} {key}=").as_bytes());
                body.extend_from_slice(value);
                body.push(b'\n');
            }
            self.raw("PaxHeader", b'x', 0o644, (0, 0), MTIME, "", (0, 0), &body)
        }

        pub fn finish(&mut self) -> Vec<u8> {
            let mut out = std::mem::take(&mut self.bytes);
            out.extend(std::iter::repeat_n(0u8, 1024));
            out
        }
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;
    use std::fs;
    use std::os::unix::fs::{FileTypeExt, MetadataExt, PermissionsExt};

    use super::testtar::{MTIME, Tar};
    use super::*;

    fn root() -> bool {
        nix::unistd::geteuid().is_root()
    }

    /// A sandbox: `rootfs/` to extract into, and `outside/`, a sentinel tree that no
    /// layer may touch.
    struct Sandbox {
        _tmp: tempfile::TempDir,
        rootfs: PathBuf,
        outside: PathBuf,
        before: BTreeMap<PathBuf, (u32, u64, u64, Vec<u8>)>,
    }

    impl Sandbox {
        fn new() -> Sandbox {
            let tmp = tempfile::tempdir().unwrap();
            let rootfs = tmp.path().join("rootfs");
            let outside = tmp.path().join("outside");
            fs::create_dir(&rootfs).unwrap();
            fs::create_dir_all(outside.join("etc")).unwrap();
            fs::write(outside.join("etc/passwd"), b"root:x:0:0\n").unwrap();
            fs::write(outside.join("secret"), b"s3cret").unwrap();
            let mut sandbox = Sandbox {
                _tmp: tmp,
                rootfs,
                outside,
                before: BTreeMap::new(),
            };
            sandbox.before = sandbox.snapshot();
            sandbox
        }

        fn snapshot(&self) -> BTreeMap<PathBuf, (u32, u64, u64, Vec<u8>)> {
            let mut out = BTreeMap::new();
            let mut todo = vec![self.outside.clone()];
            while let Some(dir) = todo.pop() {
                for e in fs::read_dir(&dir).unwrap() {
                    let p = e.unwrap().path();
                    let m = fs::symlink_metadata(&p).unwrap();
                    let data = if m.is_file() {
                        fs::read(&p).unwrap()
                    } else {
                        Vec::new()
                    };
                    if m.is_dir() {
                        todo.push(p.clone());
                    }
                    out.insert(p, (m.mode(), m.nlink(), m.mtime() as u64, data));
                }
            }
            out
        }

        fn unpack(&self, tar: &[u8]) -> Result<LayerSummary, ExtractError> {
            unpack_layer(tar, Compression::None, &self.rootfs)
        }

        fn assert_outside_untouched(&self) {
            assert_eq!(
                self.snapshot(),
                self.before,
                "the sentinel tree outside the rootfs changed"
            );
        }

        fn outside_str(&self) -> String {
            self.outside.to_str().unwrap().to_string()
        }
    }

    fn assert_rejected(result: Result<LayerSummary, ExtractError>, entry: &str) {
        match result {
            Err(ExtractError::Rejected { entry: e, reason }) => {
                assert_eq!(e, entry, "rejected the wrong entry ({reason})");
                let msg = ExtractError::Rejected { entry: e, reason }.to_string();
                assert!(msg.contains(entry), "{msg}");
            }
            other => panic!("expected {entry:?} to be rejected, got {other:?}"),
        }
    }

    #[test]
    fn dotdot_is_rejected() {
        let s = Sandbox::new();
        let tar = Tar::new().file("../outside/escape", 0o644, b"x").finish();
        assert_rejected(s.unpack(&tar), "../outside/escape");
        let tar = Tar::new()
            .dir("a", 0o755)
            .file("a/../../outside/escape2", 0o644, b"x")
            .finish();
        assert_rejected(s.unpack(&tar), "a/../../outside/escape2");
        s.assert_outside_untouched();
    }

    #[test]
    fn absolute_paths_are_confined() {
        let s = Sandbox::new();
        let abs = format!("{}/pwned", s.outside_str());
        let tar = Tar::new()
            .file("/abs/path", 0o644, b"abs")
            .file(&abs, 0o644, b"x")
            .finish();
        s.unpack(&tar).unwrap();
        assert_eq!(fs::read(s.rootfs.join("abs/path")).unwrap(), b"abs");
        assert!(s.rootfs.join(abs.trim_start_matches('/')).is_file());
        s.assert_outside_untouched();
    }

    #[test]
    fn files_through_a_symlinked_dir_are_rejected() {
        let s = Sandbox::new();
        let tar = Tar::new()
            .symlink("evil", &s.outside_str())
            .file("evil/passwd", 0o644, b"pwned")
            .finish();
        assert_rejected(s.unpack(&tar), "evil/passwd");
        s.assert_outside_untouched();

        // A relative symlink climbing out, then a directory entry through it.
        let s = Sandbox::new();
        let tar = Tar::new()
            .symlink("up", "../outside")
            .dir("up/etc/newdir", 0o755)
            .finish();
        assert_rejected(s.unpack(&tar), "up/etc/newdir");
        s.assert_outside_untouched();
    }

    #[test]
    fn symlink_to_root_then_entries_through_it_are_rejected() {
        let s = Sandbox::new();
        let through = format!("x{}/etc/passwd", s.outside_str());
        let tar = Tar::new()
            .symlink("x", "/")
            .file(&through, 0o644, b"pwned")
            .finish();
        assert_rejected(s.unpack(&tar), &through);
        s.assert_outside_untouched();
        // Hardlinks, whiteouts and opaque markers through it fail the same way.
        for name in [
            format!("x{}/h", s.outside_str()),
            format!("x{}/.wh.secret", s.outside_str()),
        ] {
            let s = Sandbox::new();
            let tar = Tar::new()
                .file("f", 0o644, b"f")
                .symlink("x", "/")
                .hardlink_or_whiteout(&name)
                .finish();
            assert_rejected(s.unpack(&tar), &name);
            s.assert_outside_untouched();
        }
    }

    impl Tar {
        fn hardlink_or_whiteout(&mut self, name: &str) -> &mut Tar {
            if name.contains(".wh.") {
                self.file(name, 0o644, b"")
            } else {
                self.hardlink(name, "f")
            }
        }
    }

    #[test]
    fn hardlinks_out_of_the_rootfs_are_rejected() {
        let s = Sandbox::new();
        let tar = Tar::new().hardlink("pw", "../../etc/passwd").finish();
        assert_rejected(s.unpack(&tar), "pw");
        let tar = Tar::new().hardlink("pw", "../outside/secret").finish();
        assert_rejected(s.unpack(&tar), "pw");
        // An absolute target is the rootfs's, which has no such file.
        let abs = format!("{}/secret", s.outside_str());
        let tar = Tar::new().hardlink("pw", &abs).finish();
        assert_rejected(s.unpack(&tar), "pw");
        s.assert_outside_untouched();
    }

    #[test]
    fn hardlinks_through_a_symlink_are_rejected() {
        let s = Sandbox::new();
        let tar = Tar::new()
            .symlink("sl", &s.outside_str())
            .hardlink("h", "sl/secret")
            .finish();
        assert_rejected(s.unpack(&tar), "h");
        let tar = Tar::new()
            .symlink("sl2", &s.outside_str())
            .hardlink("h2", "sl2")
            .finish();
        // A hardlink to the symlink itself is fine: it is a second name of the link.
        s.unpack(&tar).unwrap();
        assert!(
            fs::symlink_metadata(s.rootfs.join("h2"))
                .unwrap()
                .file_type()
                .is_symlink()
        );
        s.assert_outside_untouched();
    }

    #[test]
    fn symlink_replaced_by_a_dir_is_confined() {
        let s = Sandbox::new();
        let tar = Tar::new()
            .symlink("d", &s.outside_str())
            .dir("d", 0o755)
            .file("d/f", 0o644, b"inside")
            .finish();
        s.unpack(&tar).unwrap();
        assert!(fs::symlink_metadata(s.rootfs.join("d")).unwrap().is_dir());
        assert_eq!(fs::read(s.rootfs.join("d/f")).unwrap(), b"inside");
        s.assert_outside_untouched();
    }

    #[test]
    fn dir_replaced_by_a_symlink_is_not_followed() {
        let s = Sandbox::new();
        let tar = Tar::new()
            .dir("e", 0o755)
            .file("e/f", 0o644, b"x")
            .symlink("e", &s.outside_str())
            .file("e/secret", 0o644, b"pwned")
            .finish();
        assert_rejected(s.unpack(&tar), "e/secret");
        assert!(
            fs::symlink_metadata(s.rootfs.join("e"))
                .unwrap()
                .file_type()
                .is_symlink()
        );
        s.assert_outside_untouched();
    }

    #[test]
    fn file_over_a_symlink_replaces_the_symlink() {
        let s = Sandbox::new();
        let target = format!("{}/secret", s.outside_str());
        let tar = Tar::new()
            .symlink("s", &target)
            .file("s", 0o600, b"mine")
            .finish();
        s.unpack(&tar).unwrap();
        let m = fs::symlink_metadata(s.rootfs.join("s")).unwrap();
        assert!(m.is_file());
        assert_eq!(fs::read(s.rootfs.join("s")).unwrap(), b"mine");
        s.assert_outside_untouched();
    }

    /// Every kind of entry with its metadata; device nodes only with `devices` (mknod
    /// needs root, and without it they are skipped).
    fn metadata_layer(devices: bool) -> Vec<u8> {
        let mut tar = Tar::new();
        tar.raw("bin/", b'5', 0o755, (0, 0), MTIME + 1, "", (0, 0), b"")
            .raw(
                "bin/su",
                b'0',
                0o4755,
                (0, 0),
                MTIME + 2,
                "",
                (0, 0),
                b"#!su",
            )
            .raw("tmp/", b'5', 0o1777, (0, 0), MTIME + 3, "", (0, 0), b"")
            .raw(
                "home/u/",
                b'5',
                0o2750,
                (1234, 5678),
                MTIME + 4,
                "",
                (0, 0),
                b"",
            )
            .raw(
                "home/u/file",
                b'0',
                0o640,
                (1234, 5678),
                MTIME + 5,
                "",
                (0, 0),
                b"data",
            )
            .raw("ro/", b'5', 0o555, (0, 0), MTIME + 6, "", (0, 0), b"")
            .raw(
                "ro/inner",
                b'0',
                0o444,
                (0, 0),
                MTIME + 7,
                "",
                (0, 0),
                b"ro",
            )
            .raw(
                "bin/sh",
                b'2',
                0o777,
                (1234, 5678),
                MTIME + 8,
                "su",
                (0, 0),
                b"",
            )
            .raw(
                "bin/su2",
                b'1',
                0o4755,
                (0, 0),
                MTIME + 9,
                "bin/su",
                (0, 0),
                b"",
            )
            .pax(&[
                ("SCHILY.xattr.user.test", b"hello"),
                ("mtime", b"1600000010.5"),
            ])
            .raw("x", b'0', 0o600, (0, 0), MTIME, "", (0, 0), b"xattr")
            .pax(&[("SCHILY.xattr.trusted.overlay.redirect", b"/etc")])
            .raw("y", b'0', 0o600, (0, 0), MTIME, "", (0, 0), b"");
        if devices {
            tar.raw("dev/null", b'3', 0o666, (0, 0), MTIME, "", (1, 3), b"")
                .raw("dev/sda", b'4', 0o660, (0, 6), MTIME, "", (8, 0), b"");
        }
        tar.raw("fifo", b'6', 0o620, (0, 0), MTIME + 11, "", (0, 0), b"");
        tar.finish()
    }

    #[test]
    fn metadata_is_preserved() {
        let s = Sandbox::new();
        let summary = s.unpack(&metadata_layer(root())).unwrap();

        let meta = |p: &str| fs::symlink_metadata(s.rootfs.join(p)).unwrap();
        assert_eq!(meta("bin").mode() & 0o7777, 0o755);
        assert_eq!(
            meta("bin").mtime() as u64,
            MTIME + 1,
            "dir mtime survives its children"
        );
        assert_eq!(meta("bin/su").mode() & 0o7777, 0o4755);
        assert_eq!(meta("bin/su").mtime() as u64, MTIME + 2);
        assert_eq!(meta("tmp").mode() & 0o7777, 0o1777);
        assert_eq!(meta("home/u").mode() & 0o7777, 0o2750);
        assert_eq!(meta("home/u").mtime() as u64, MTIME + 4);
        assert_eq!(meta("ro").mode() & 0o7777, 0o555);
        assert_eq!(meta("ro").mtime() as u64, MTIME + 6);
        assert_eq!(fs::read(s.rootfs.join("ro/inner")).unwrap(), b"ro");
        assert!(meta("bin/sh").file_type().is_symlink());
        assert_eq!(
            fs::read_link(s.rootfs.join("bin/sh")).unwrap(),
            Path::new("su")
        );
        assert_eq!(
            meta("bin/sh").mtime() as u64,
            MTIME + 8,
            "symlink mtime (lutimes)"
        );
        assert_eq!(meta("bin/su2").ino(), meta("bin/su").ino(), "hardlink");
        assert_eq!(meta("x").mtime(), 1_600_000_010);
        assert_eq!(meta("x").mtime_nsec(), 500_000_000);
        assert_eq!(meta("fifo").mode() & 0o7777, 0o620);
        assert!(meta("fifo").file_type().is_fifo());
        let xattrs = get_xattrs_at(open_dir_for(&s.rootfs).as_fd(), b"x").unwrap();
        assert_eq!(
            xattrs,
            vec![(CString::new("user.test").unwrap(), b"hello".to_vec())]
        );
        let xattrs = get_xattrs_at(open_dir_for(&s.rootfs).as_fd(), b"y").unwrap();
        assert!(
            xattrs.is_empty(),
            "a layer's own overlay xattrs are dropped: {xattrs:?}"
        );
        assert_eq!(summary.size_bytes, 4 + 4 + 2 + 5);
        assert!(summary.whiteouts.is_empty() && summary.opaque_dirs.is_empty());
        // 5 files, 5 dirs (bin tmp home home/u ro), symlink, fifo, not the hardlink; as root
        // also dev/ and its two nodes.
        let expected = 5 + 5 + 1 + 1 + if root() { 3 } else { 0 };
        assert_eq!(summary.entries, expected);
    }

    #[test]
    #[ignore = "needs root"]
    fn owners_and_device_nodes_are_preserved() {
        let s = Sandbox::new();
        s.unpack(&metadata_layer(true)).unwrap();
        let meta = |p: &str| fs::symlink_metadata(s.rootfs.join(p)).unwrap();
        assert_eq!((meta("home/u").uid(), meta("home/u").gid()), (1234, 5678));
        assert_eq!(
            (meta("home/u/file").uid(), meta("home/u/file").gid()),
            (1234, 5678)
        );
        assert_eq!(
            (meta("bin/sh").uid(), meta("bin/sh").gid()),
            (1234, 5678),
            "lchown"
        );
        assert!(meta("dev/null").file_type().is_char_device());
        assert_eq!(meta("dev/null").rdev(), stat::makedev(1, 3));
        assert_eq!(meta("dev/null").mode() & 0o7777, 0o666);
        assert!(meta("dev/sda").file_type().is_block_device());
        assert_eq!(meta("dev/sda").gid(), 6);
    }

    fn open_dir_for(path: &Path) -> OwnedFd {
        nix::fcntl::open(path, dir_flags(), Mode::empty()).unwrap()
    }

    fn whiteout_layer() -> Vec<u8> {
        Tar::new()
            .dir("etc", 0o755)
            .file("etc/.wh.passwd", 0o644, b"")
            .dir("var/lib", 0o755)
            .file("var/lib/.wh..wh..opq", 0o644, b"")
            .file("var/lib/new", 0o644, b"n")
            .file(".wh.gone", 0o644, b"")
            .file(".wh..wh.plnk/123.456", 0o644, b"aufs hardlink store")
            .file(".wh..wh.aufs", 0o644, b"")
            .finish()
    }

    #[test]
    fn whiteouts_are_converted_and_recorded() {
        let s = Sandbox::new();
        let summary = s.unpack(&whiteout_layer()).unwrap();
        assert_eq!(
            summary.whiteouts,
            vec![PathBuf::from("etc/passwd"), PathBuf::from("gone")]
        );
        assert_eq!(summary.opaque_dirs, vec![PathBuf::from("var/lib")]);
        let names: Vec<_> = fs::read_dir(&s.rootfs)
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert!(
            names
                .iter()
                .all(|n| !n.to_string_lossy().starts_with(".wh.")),
            "{names:?}"
        );
        assert!(!s.rootfs.join("etc/.wh.passwd").exists());
        assert_eq!(fs::read(s.rootfs.join("var/lib/new")).unwrap(), b"n");
        let json = serde_json::to_string(&summary).unwrap();
        assert_eq!(
            serde_json::from_str::<LayerSummary>(&json).unwrap(),
            summary
        );
    }

    #[test]
    #[ignore = "needs root"]
    fn whiteouts_become_overlay_whiteouts_and_opaque_xattrs() {
        let s = Sandbox::new();
        s.unpack(&whiteout_layer()).unwrap();
        let wh = fs::symlink_metadata(s.rootfs.join("etc/passwd")).unwrap();
        assert!(wh.file_type().is_char_device());
        assert_eq!(wh.rdev(), 0);
        assert!(
            fs::symlink_metadata(s.rootfs.join("gone"))
                .unwrap()
                .file_type()
                .is_char_device()
        );
        let x = get_xattrs_at(open_dir_for(&s.rootfs).as_fd(), b"var/lib").unwrap();
        assert_eq!(
            x,
            vec![(CString::new(OVERLAY_OPAQUE_XATTR).unwrap(), b"y".to_vec())]
        );
    }

    #[test]
    fn whiteout_then_recreated_dir_becomes_opaque() {
        let s = Sandbox::new();
        let tar = Tar::new()
            .file(".wh.data", 0o644, b"")
            .dir("data", 0o755)
            .file("data/new", 0o644, b"n")
            .file(".wh.file", 0o644, b"")
            .file("file", 0o644, b"f")
            .finish();
        let summary = s.unpack(&tar).unwrap();
        assert!(summary.whiteouts.is_empty(), "{summary:?}");
        assert_eq!(summary.opaque_dirs, vec![PathBuf::from("data")]);
        assert!(
            fs::symlink_metadata(s.rootfs.join("file"))
                .unwrap()
                .is_file()
        );
    }

    #[test]
    fn bad_whiteouts_are_rejected() {
        let s = Sandbox::new();
        assert_rejected(
            s.unpack(&Tar::new().file(".wh...", 0o644, b"").finish()),
            ".wh...",
        );
        assert_rejected(
            s.unpack(&Tar::new().file(".wh.x/y", 0o644, b"").finish()),
            ".wh.x/y",
        );
    }

    fn sample() -> Vec<u8> {
        Tar::new()
            .dir("./", 0o755)
            .dir("./a", 0o700)
            .file("./a/b", 0o644, &vec![7u8; 100_000])
            .symlink("./c", "a/b")
            .finish()
    }

    #[test]
    fn compressions_and_diff_id() {
        use std::io::Write;
        let tar = sample();
        let diff_id = format!("sha256:{}", hex::encode(Sha256::digest(&tar)));
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        gz.write_all(&tar).unwrap();
        let gz = gz.finish().unwrap();
        let zst = zstd::encode_all(&tar[..], 3).unwrap();
        for (blob, declared) in [
            (&tar, Compression::None),
            (&gz, Compression::Gzip),
            (&zst, Compression::Zstd),
            // Mislabelled: the magic bytes win.
            (&gz, Compression::None),
            (&zst, Compression::Gzip),
            (&tar, Compression::Zstd),
        ] {
            let s = Sandbox::new();
            let summary = unpack_layer(&blob[..], declared, &s.rootfs).unwrap();
            assert_eq!(summary.diff_id, diff_id, "{declared:?}");
            assert_eq!(fs::read(s.rootfs.join("a/b")).unwrap().len(), 100_000);
            assert_eq!(
                fs::metadata(s.rootfs.join("a"))
                    .unwrap()
                    .permissions()
                    .mode()
                    & 0o777,
                0o700
            );
            assert_eq!(summary.size_bytes, 100_000);
        }
    }

    #[test]
    fn diff_id_covers_trailing_padding() {
        let mut tar = sample();
        tar.extend(std::iter::repeat_n(0u8, 10240 - tar.len() % 10240));
        let s = Sandbox::new();
        let summary = s.unpack(&tar).unwrap();
        assert_eq!(
            summary.diff_id,
            format!("sha256:{}", hex::encode(Sha256::digest(&tar)))
        );
    }

    #[test]
    fn corrupt_streams_fail() {
        let s = Sandbox::new();
        let mut tar = sample();
        tar[148] ^= 1; // header checksum
        assert!(matches!(s.unpack(&tar), Err(ExtractError::Stream(_))));
        let s = Sandbox::new();
        let gz = [0x1f, 0x8b, 8, 0, 0, 0];
        assert!(matches!(
            unpack_layer(&gz[..], Compression::Gzip, &s.rootfs),
            Err(ExtractError::Stream(_))
        ));
    }

    #[test]
    fn media_types() {
        use Compression::*;
        for (mt, c) in [
            ("application/vnd.oci.image.layer.v1.tar", None),
            ("application/vnd.oci.image.layer.v1.tar+gzip", Gzip),
            ("application/vnd.oci.image.layer.v1.tar+zstd", Zstd),
            (
                "application/vnd.oci.image.layer.nondistributable.v1.tar+gzip",
                Gzip,
            ),
            ("application/vnd.docker.image.rootfs.diff.tar.gzip", Gzip),
            (
                "application/vnd.docker.image.rootfs.foreign.diff.tar.gzip",
                Gzip,
            ),
            ("application/x-tar", None),
            ("", None),
        ] {
            assert_eq!(Compression::from_media_type(mt), c, "{mt}");
        }
        assert_eq!(Compression::sniff(&[0x1f, 0x8b, 8]), Gzip);
        assert_eq!(Compression::sniff(&[0x28, 0xb5, 0x2f, 0xfd]), Zstd);
        assert_eq!(Compression::sniff(b"etc/"), None);
    }

    #[test]
    fn pax_times() {
        assert_eq!(parse_pax_time("12"), Some(TimeSpec::new(12, 0)));
        assert_eq!(
            parse_pax_time("12.25"),
            Some(TimeSpec::new(12, 250_000_000))
        );
        assert_eq!(parse_pax_time("-1.5"), Some(TimeSpec::new(-2, 500_000_000)));
        assert_eq!(parse_pax_time("x"), Option::None);
    }

    #[test]
    fn replaced_entries_update_accounting() {
        let s = Sandbox::new();
        let tar = Tar::new()
            .dir("d", 0o755)
            .file("d/a", 0o644, b"aaaa")
            .file("d/b", 0o644, b"bb")
            .file("d", 0o644, b"now a file")
            .finish();
        let summary = s.unpack(&tar).unwrap();
        assert_eq!(summary.entries, 1);
        assert_eq!(summary.size_bytes, 10);
    }
}
