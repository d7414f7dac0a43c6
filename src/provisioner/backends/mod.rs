//! Rootfs backends, as Mesos's provisioner has them: each turns an image's ordered
//! layers (already extracted by the store, whiteouts in overlayfs format) into one
//! container rootfs, and removes it again.
//!
//! | backend | how | when |
//! |---|---|---|
//! | overlay | overlayfs mount, per-rootfs upper/work dirs | default when the kernel and the store's filesystem allow it |
//! | aufs | aufs mount | kernels with aufs but no overlayfs |
//! | copy | a full copy of every layer, whiteouts applied | always works; slow, uses disk |
//! | bind | read-only bind mount of the only layer | single-layer images, never picked automatically |

pub mod aufs;
pub mod bind;
pub mod copy;
pub mod overlay;

use std::fs;
use std::io;
use std::path::{Path, PathBuf};

use nix::mount::{MntFlags, MsFlags};

use super::store::extract::LayerSummary;

pub use self::aufs::AufsBackend;
pub use self::bind::BindBackend;
pub use self::copy::CopyBackend;
pub use self::overlay::OverlayBackend;

/// One layer of the image being provisioned.
#[derive(Debug, Clone)]
pub struct LayerRef {
    /// The layer's extracted tree (`layers/<id>/rootfs` in the store).
    pub rootfs: PathBuf,
    pub summary: LayerSummary,
}

pub trait Backend: Send + Sync {
    fn name(&self) -> &'static str;

    /// Makes `rootfs` (which must not exist yet) from `layers`, bottom layer first.
    /// `scratch` is this rootfs's own directory for the backend's bookkeeping (overlay's
    /// upper and work dirs). Blocking: run it on a blocking thread.
    fn provision(&self, layers: &[LayerRef], rootfs: &Path, scratch: &Path) -> Result<(), BackendError>;

    /// Unmounts (lazily) and removes `rootfs` and `scratch`. Idempotent: missing
    /// directories and a rootfs that is not mounted are fine.
    fn destroy(&self, rootfs: &Path, scratch: &Path) -> Result<(), BackendError>;
}

#[derive(Debug, thiserror::Error)]
pub enum BackendError {
    #[error("unknown image provisioner backend {0:?} (known: overlay, aufs, copy, bind)")]
    Unknown(String),
    #[error("{backend} backend: {reason}")]
    Unavailable { backend: &'static str, reason: String },
    #[error(
        "bind backend: the image has {layers} layers, but the bind backend can only provision single-layer images"
    )]
    BindMultiLayer { layers: usize },
    #[error("{backend} backend: {reason}")]
    Unsupported { backend: &'static str, reason: String },
    #[error("{backend} backend: {op} {path}: {source}")]
    Io {
        backend: &'static str,
        op: &'static str,
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("{backend} backend: {path} is still mounted after a lazy unmount; not removing it")]
    StillMounted { backend: &'static str, path: PathBuf },
}

impl BackendError {
    pub(crate) fn io(backend: &'static str, op: &'static str, path: &Path) -> impl FnOnce(io::Error) -> BackendError {
        let path = path.to_path_buf();
        move |source| BackendError::Io { backend, op, path, source }
    }

    pub(crate) fn errno(backend: &'static str, op: &'static str, path: &Path) -> impl FnOnce(nix::Error) -> BackendError {
        let path = path.to_path_buf();
        move |e| BackendError::Io { backend, op, path, source: e.into() }
    }
}

/// Makes the backend `name`, or picks one as Mesos does: overlay, else aufs, else copy
/// (bind is never picked: it only serves single-layer images). `store_dir` is the layer
/// store, whose filesystem decides what overlay and aufs can stack.
pub fn create(name: Option<&str>, store_dir: &Path) -> Result<Box<dyn Backend>, BackendError> {
    match name {
        Some("overlay") => Ok(Box::new(OverlayBackend::new(store_dir)?)),
        Some("aufs") => Ok(Box::new(AufsBackend::new(store_dir)?)),
        Some("copy") => Ok(Box::new(CopyBackend)),
        Some("bind") => Ok(Box::new(BindBackend::new()?)),
        Some(other) => Err(BackendError::Unknown(other.to_string())),
        None => {
            match OverlayBackend::new(store_dir) {
                Ok(b) => return Ok(Box::new(b)),
                Err(e) => tracing::info!(reason = %e, "overlay backend not usable"),
            }
            match AufsBackend::new(store_dir) {
                Ok(b) => return Ok(Box::new(b)),
                Err(e) => tracing::debug!(reason = %e, "aufs backend not usable"),
            }
            Ok(Box::new(CopyBackend))
        }
    }
}

/// Whether the running kernel knows filesystem `fs` (a line of /proc/filesystems).
pub(crate) fn kernel_has(fs: &str) -> io::Result<bool> {
    let list = fs::read_to_string("/proc/filesystems")?;
    Ok(list.lines().any(|l| l.split_whitespace().last() == Some(fs)))
}

// statfs(2) magic numbers of the filesystems Mesos refuses to stack on.
const BTRFS_MAGIC: u64 = 0x9123_683e;
const AUFS_MAGIC: u64 = 0x6175_6673;
const OVERLAY_MAGIC: u64 = 0x794c_7630;
const ZFS_MAGIC: u64 = 0x2fc1_2fc1;
const ECRYPTFS_MAGIC: u64 = 0xf15f;

/// The name of `path`'s filesystem when it is one in `refused` (by statfs magic).
/// A store dir that does not exist yet is judged by its nearest existing ancestor.
pub(crate) fn refused_store_fs(path: &Path, refused: &[&'static str]) -> io::Result<Option<&'static str>> {
    let mut probe = path;
    while !probe.exists() {
        match probe.parent() {
            Some(parent) => probe = parent,
            None => break,
        }
    }
    let st = nix::sys::statfs::statfs(probe)?;
    let magic = (st.filesystem_type().0 as u64) & 0xffff_ffff;
    let name = match magic {
        BTRFS_MAGIC => "btrfs",
        AUFS_MAGIC => "aufs",
        OVERLAY_MAGIC => "overlay",
        ZFS_MAGIC => "zfs",
        ECRYPTFS_MAGIC => "ecryptfs",
        _ => return Ok(None),
    };
    Ok(refused.contains(&name).then_some(name))
}

pub(crate) fn require_root(backend: &'static str) -> Result<(), BackendError> {
    if nix::unistd::geteuid().is_root() {
        Ok(())
    } else {
        Err(BackendError::Unavailable { backend, reason: "mounting needs root privileges".into() })
    }
}

/// Creates `rootfs`, which must be new: a leftover would mean two containers share one.
pub(crate) fn create_rootfs_dir(backend: &'static str, rootfs: &Path) -> Result<(), BackendError> {
    if let Some(parent) = rootfs.parent() {
        fs::create_dir_all(parent).map_err(BackendError::io(backend, "creating", parent))?;
    }
    fs::create_dir(rootfs).map_err(BackendError::io(backend, "creating", rootfs))
}

/// Makes a fresh mount at `target` shared+slave, as Mesos does: mounts made later under
/// the rootfs in the host namespace (volumes) reach the container's namespace, while the
/// rootfs mount itself stays out of the peers of its parent mount.
pub(crate) fn make_shared_slave(backend: &'static str, target: &Path) -> Result<(), BackendError> {
    for flags in [MsFlags::MS_SLAVE, MsFlags::MS_SHARED] {
        nix::mount::mount(None::<&str>, target, None::<&str>, flags, None::<&str>)
            .map_err(BackendError::errno(backend, "changing the propagation of", target))?;
    }
    Ok(())
}

/// Lazily unmounts everything at or below `path`, then removes `path`. Refuses to
/// remove anything while a mount is left, so a layer or volume is never deleted
/// through a mount point.
pub(crate) fn unmount_and_remove(backend: &'static str, path: &Path) -> Result<(), BackendError> {
    let canonical = match fs::canonicalize(path) {
        Ok(p) => p,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(BackendError::io(backend, "resolving", path)(e)),
    };
    for _ in 0..8 {
        let mounts = mounts_under(&canonical).map_err(BackendError::io(backend, "reading mounts for", path))?;
        if mounts.is_empty() {
            break;
        }
        // Newest first: later mounts sit on top of earlier ones.
        for mount in mounts.iter().rev() {
            match nix::mount::umount2(mount, MntFlags::MNT_DETACH) {
                Ok(()) | Err(nix::errno::Errno::EINVAL | nix::errno::Errno::ENOENT) => {}
                Err(e) => return Err(BackendError::errno(backend, "unmounting", mount)(e)),
            }
        }
    }
    if !mounts_under(&canonical)
        .map_err(BackendError::io(backend, "reading mounts for", path))?
        .is_empty()
    {
        return Err(BackendError::StillMounted { backend, path: path.to_path_buf() });
    }
    crate::provisioner::store::remove_tree(path).map_err(BackendError::io(backend, "removing", path))
}

/// Mount points at or below `path` (canonical), in /proc/self/mountinfo order.
pub(crate) fn mounts_under(path: &Path) -> io::Result<Vec<PathBuf>> {
    let info = fs::read_to_string("/proc/self/mountinfo")?;
    Ok(info
        .lines()
        .filter_map(|line| line.split(' ').nth(4))
        .map(|field| PathBuf::from(unescape_mountinfo(field)))
        .filter(|mount| mount.starts_with(path))
        .collect())
}

/// Undoes mountinfo's octal escapes (`\040` for a space, and so on).
fn unescape_mountinfo(field: &str) -> String {
    let bytes = field.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'\\' && i + 3 < bytes.len() && bytes[i + 1..i + 4].iter().all(|b| (b'0'..=b'7').contains(b)) {
            let v = (bytes[i + 1] - b'0') * 64 + (bytes[i + 2] - b'0') * 8 + (bytes[i + 3] - b'0');
            out.push(v);
            i += 4;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    use std::os::unix::ffi::OsStringExt;
    std::ffi::OsString::from_vec(out).to_string_lossy().into_owned()
}

/// Runs `f` on a short-lived thread whose working directory is `dir`, private to that
/// thread (`unshare(CLONE_FS)`), so mount options can name layers by short relative
/// paths without changing the working directory of the daemon's other threads. The
/// kernel caps mount options at one page, which 100+ absolute layer paths overflow.
pub(crate) fn in_dir<T: Send>(dir: &Path, f: impl FnOnce() -> nix::Result<T> + Send) -> io::Result<T> {
    std::thread::scope(|s| {
        s.spawn(|| {
            nix::sched::unshare(nix::sched::CloneFlags::CLONE_FS)?;
            nix::unistd::chdir(dir)?;
            f().map_err(io::Error::from)
        })
        .join()
        .unwrap_or_else(|_| Err(io::Error::other("mount thread panicked")))
    })
}

/// Creates `links/<i>` → layer `i`'s rootfs for every layer, Mesos's trick to keep
/// mount options short. Returns the relative names, top layer first (the order both
/// overlayfs's `lowerdir` and aufs's `br` want). A layer listed twice keeps only its
/// topmost place: overlayfs refuses a repeated lowerdir, and the lower copy is hidden by
/// the upper one anyway (same content, same whiteouts).
pub(crate) fn make_links(backend: &'static str, layers: &[LayerRef], links: &Path) -> Result<Vec<String>, BackendError> {
    fs::create_dir_all(links).map_err(BackendError::io(backend, "creating", links))?;
    let mut seen = std::collections::HashSet::new();
    let mut names = Vec::new();
    for (i, layer) in layers.iter().enumerate().rev() {
        if !seen.insert(&layer.rootfs) {
            continue;
        }
        let link = links.join(i.to_string());
        match fs::remove_file(&link) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(BackendError::io(backend, "replacing", &link)(e)),
        }
        let target = std::path::absolute(&layer.rootfs).map_err(BackendError::io(backend, "resolving", &layer.rootfs))?;
        std::os::unix::fs::symlink(&target, &link).map_err(BackendError::io(backend, "creating", &link))?;
        let dir = links.file_name().unwrap_or_default().to_string_lossy();
        names.push(format!("{dir}/{i}"));
    }
    Ok(names)
}

/// The kernel's limit on mount option data (one page, with its NUL).
pub(crate) const MOUNT_OPTIONS_MAX: usize = 4095;
