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
    fn provision(
        &self,
        layers: &[LayerRef],
        rootfs: &Path,
        scratch: &Path,
    ) -> Result<(), BackendError>;

    /// Unmounts (lazily) and removes `rootfs` and `scratch`. Idempotent: missing
    /// directories and a rootfs that is not mounted are fine.
    fn destroy(&self, rootfs: &Path, scratch: &Path) -> Result<(), BackendError>;

    /// Where the container's own writes land (what `disk/du` measures): overlay's upper
    /// dir, aufs's rw branch, the copy itself; `None` when nothing can be written (bind).
    fn writable(&self, rootfs: &Path, scratch: &Path) -> Option<std::path::PathBuf>;
}

#[derive(Debug, thiserror::Error)]
pub enum BackendError {
    #[error("unknown image provisioner backend {0:?} (known: overlay, aufs, copy, bind)")]
    Unknown(String),
    #[error("{backend} backend: {reason}")]
    Unavailable {
        backend: &'static str,
        reason: String,
    },
    #[error(
        "bind backend: the image has {layers} layers, but the bind backend can only provision single-layer images"
    )]
    BindMultiLayer { layers: usize },
    #[error("{backend} backend: {reason}")]
    Unsupported {
        backend: &'static str,
        reason: String,
    },
    #[error("{backend} backend: {op} {path}: {source}")]
    Io {
        backend: &'static str,
        op: &'static str,
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("{backend} backend: {path} is still mounted after a lazy unmount; not removing it")]
    StillMounted {
        backend: &'static str,
        path: PathBuf,
    },
}

impl BackendError {
    pub(crate) fn io(
        backend: &'static str,
        op: &'static str,
        path: &Path,
    ) -> impl FnOnce(io::Error) -> BackendError {
        let path = path.to_path_buf();
        move |source| BackendError::Io {
            backend,
            op,
            path,
            source,
        }
    }

    pub(crate) fn errno(
        backend: &'static str,
        op: &'static str,
        path: &Path,
    ) -> impl FnOnce(nix::Error) -> BackendError {
        let path = path.to_path_buf();
        move |e| BackendError::Io {
            backend,
            op,
            path,
            source: e.into(),
        }
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
    Ok(list
        .lines()
        .any(|l| l.split_whitespace().last() == Some(fs)))
}

// statfs(2) magic numbers of the filesystems Mesos refuses to stack on.
const BTRFS_MAGIC: u64 = 0x9123_683e;
const AUFS_MAGIC: u64 = 0x6175_6673;
const OVERLAY_MAGIC: u64 = 0x794c_7630;
const ZFS_MAGIC: u64 = 0x2fc1_2fc1;
const ECRYPTFS_MAGIC: u64 = 0xf15f;

/// The name of `path`'s filesystem when it is one in `refused` (by statfs magic).
/// A store dir that does not exist yet is judged by its nearest existing ancestor.
pub(crate) fn refused_store_fs(
    path: &Path,
    refused: &[&'static str],
) -> io::Result<Option<&'static str>> {
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

/// Mesos's checks for a stacking backend: the kernel has `kernel_fs`, we may mount, and
/// the store is not on a filesystem in `refused` (which `label` cannot stack on).
pub(crate) fn check_stackable(
    backend: &'static str,
    kernel_fs: &str,
    label: &str,
    store_dir: &Path,
    refused: &[&'static str],
) -> Result<(), BackendError> {
    let unavailable = |reason: String| BackendError::Unavailable { backend, reason };
    match kernel_has(kernel_fs) {
        Ok(true) => {}
        Ok(false) => {
            return Err(unavailable(format!(
                "the kernel has no {kernel_fs} filesystem (not in /proc/filesystems)"
            )));
        }
        Err(e) => return Err(unavailable(format!("reading /proc/filesystems: {e}"))),
    }
    require_root(backend)?;
    match refused_store_fs(store_dir, refused) {
        Ok(None) => Ok(()),
        Ok(Some(fs)) => Err(unavailable(format!(
            "the image store {} is on {fs}, which {label} cannot stack",
            store_dir.display()
        ))),
        Err(e) => Err(unavailable(format!("statfs {}: {e}", store_dir.display()))),
    }
}

pub(crate) fn require_root(backend: &'static str) -> Result<(), BackendError> {
    if nix::unistd::geteuid().is_root() {
        Ok(())
    } else {
        Err(BackendError::Unavailable {
            backend,
            reason: "mounting needs root privileges".into(),
        })
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
        nix::mount::mount(None::<&str>, target, None::<&str>, flags, None::<&str>).map_err(
            BackendError::errno(backend, "changing the propagation of", target),
        )?;
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
        let mounts = mounts_under(&canonical).map_err(BackendError::io(
            backend,
            "reading mounts for",
            path,
        ))?;
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
        return Err(BackendError::StillMounted {
            backend,
            path: path.to_path_buf(),
        });
    }
    crate::provisioner::store::remove_tree(path)
        .map_err(BackendError::io(backend, "removing", path))
}

/// Mount points at or below `path` (canonical), in /proc/self/mountinfo order.
pub(crate) fn mounts_under(path: &Path) -> io::Result<Vec<PathBuf>> {
    Ok(cri_mesos_supervisor::mountinfo::read()?
        .into_iter()
        .map(|m| m.mount_point)
        .filter(|mount| mount.starts_with(path))
        .collect())
}

/// Runs `f` on a short-lived thread whose working directory is `dir`, private to that
/// thread (`unshare(CLONE_FS)`), so mount options can name layers by short relative
/// paths without changing the working directory of the daemon's other threads. The
/// kernel caps mount options at one page, which 100+ absolute layer paths overflow.
pub(crate) fn in_dir<T: Send>(
    dir: &Path,
    f: impl FnOnce() -> nix::Result<T> + Send,
) -> io::Result<T> {
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
pub(crate) fn make_links(
    backend: &'static str,
    layers: &[LayerRef],
    links: &Path,
) -> Result<Vec<String>, BackendError> {
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
        let target = std::path::absolute(&layer.rootfs).map_err(BackendError::io(
            backend,
            "resolving",
            &layer.rootfs,
        ))?;
        std::os::unix::fs::symlink(&target, &link)
            .map_err(BackendError::io(backend, "creating", &link))?;
        let dir = links.file_name().unwrap_or_default().to_string_lossy();
        names.push(format!("{dir}/{i}"));
    }
    Ok(names)
}

/// The kernel's limit on mount option data (one page, with its NUL).
pub(crate) const MOUNT_OPTIONS_MAX: usize = 4095;

#[cfg(test)]
mod tests {
    use std::fs;
    use std::os::fd::AsFd;
    use std::os::unix::fs::{FileTypeExt, MetadataExt};

    use super::*;
    use crate::provisioner::store::extract::testtar::Tar;
    use crate::provisioner::store::extract::{self, Compression};

    fn layer_from_tar(dir: &Path, tar: &[u8]) -> LayerRef {
        let rootfs = dir.join("rootfs");
        fs::create_dir_all(&rootfs).unwrap();
        let summary = extract::unpack_layer(tar, Compression::None, &rootfs).unwrap();
        LayerRef { rootfs, summary }
    }

    /// Three layers: a base, one that deletes and hides, one that adds and replaces.
    fn three_layers(base: &Path) -> Vec<LayerRef> {
        let l1 = Tar::new()
            .dir("etc", 0o755)
            .file("etc/a", 0o644, b"a1")
            .file("etc/b", 0o644, b"b1")
            .dir("opq", 0o755)
            .file("opq/x", 0o644, b"x1")
            .file("opq/y", 0o644, b"y1")
            .dir("data", 0o755)
            .file("data/keep", 0o644, b"k1")
            .dir("bin", 0o755)
            .file("bin/tool", 0o755, b"tool1")
            .dir("usr/lib", 0o755)
            .file("usr/lib/libc.so", 0o755, b"libc")
            .symlink("lib", "usr/lib")
            .finish();
        let l2 = Tar::new()
            .dir("etc", 0o755)
            .file("etc/.wh.a", 0o644, b"")
            .dir("opq", 0o750)
            .file("opq/.wh..wh..opq", 0o644, b"")
            .file("opq/z", 0o644, b"z2")
            .file("bin/tool", 0o700, b"tool2")
            .finish();
        let l3 = Tar::new()
            .file("bin/su", 0o4755, b"su3")
            .hardlink("bin/su2", "bin/su")
            .file("etc/c", 0o600, b"c3")
            .dir("lib", 0o755)
            .file("lib/own", 0o644, b"own3")
            .file(".wh.data", 0o644, b"")
            .finish();
        [l1, l2, l3]
            .iter()
            .enumerate()
            .map(|(i, tar)| layer_from_tar(&base.join(format!("layers/{i}")), tar))
            .collect()
    }

    fn assert_merged(rootfs: &Path) {
        let read = |p: &str| fs::read_to_string(rootfs.join(p)).unwrap();
        let meta = |p: &str| fs::symlink_metadata(rootfs.join(p)).unwrap();
        let gone = |p: &str| {
            assert!(
                fs::symlink_metadata(rootfs.join(p)).is_err(),
                "{p} should be gone"
            )
        };
        gone("etc/a");
        assert_eq!(read("etc/b"), "b1");
        assert_eq!(read("etc/c"), "c3");
        assert_eq!(meta("etc/c").mode() & 0o7777, 0o600);
        let mut opq: Vec<_> = fs::read_dir(rootfs.join("opq"))
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        opq.sort();
        assert_eq!(opq, ["z"], "the opaque dir hides the lower files");
        assert_eq!(meta("opq").mode() & 0o7777, 0o750);
        gone("data");
        assert_eq!(read("bin/tool"), "tool2");
        assert_eq!(meta("bin/tool").mode() & 0o7777, 0o700);
        assert_eq!(read("bin/su"), "su3");
        assert_eq!(meta("bin/su").mode() & 0o7777, 0o4755);
        assert_eq!(read("bin/su2"), "su3");
        assert!(
            meta("lib").is_dir(),
            "the upper dir hides the lower symlink"
        );
        assert_eq!(read("lib/own"), "own3");
        gone("lib/libc.so");
        assert_eq!(read("usr/lib/libc.so"), "libc");
        let mut todo = vec![rootfs.to_path_buf()];
        while let Some(dir) = todo.pop() {
            for e in fs::read_dir(&dir).unwrap() {
                let e = e.unwrap();
                let name = e.file_name().into_string().unwrap();
                assert!(!name.starts_with(".wh."), "{name}");
                let m = e.metadata().unwrap();
                assert!(
                    !(m.file_type().is_char_device() && m.rdev() == 0),
                    "whiteout visible: {name}"
                );
                if m.is_dir() {
                    todo.push(e.path());
                }
            }
        }
    }

    fn mounted(path: &Path) -> bool {
        let path = fs::canonicalize(path).unwrap_or_else(|_| path.to_path_buf());
        !mounts_under(&path).unwrap().is_empty()
    }

    #[test]
    #[ignore = "needs root"]
    fn overlay_stacks_three_layers() {
        let tmp = tempfile::tempdir().unwrap();
        let layers = three_layers(tmp.path());
        let backend = create(Some("overlay"), tmp.path()).unwrap();
        assert_eq!(backend.name(), "overlay");
        let (rootfs, scratch) = (tmp.path().join("c/rootfs"), tmp.path().join("c/scratch"));
        backend.provision(&layers, &rootfs, &scratch).unwrap();
        assert!(mounted(&rootfs));
        assert_merged(&rootfs);
        // Writable, and writes land in scratch, not in the layers.
        fs::write(rootfs.join("etc/b"), b"changed").unwrap();
        fs::remove_file(rootfs.join("bin/tool")).unwrap();
        assert_eq!(fs::read(layers[0].rootfs.join("etc/b")).unwrap(), b"b1");
        assert_eq!(fs::read(scratch.join("upper/etc/b")).unwrap(), b"changed");

        let canonical = fs::canonicalize(&rootfs).unwrap();
        backend.destroy(&rootfs, &scratch).unwrap();
        assert!(
            mounts_under(&canonical).unwrap().is_empty(),
            "still mounted"
        );
        assert!(!rootfs.exists() && !scratch.exists());
        assert_eq!(
            fs::read(layers[1].rootfs.join("bin/tool")).unwrap(),
            b"tool2"
        );
        backend.destroy(&rootfs, &scratch).unwrap();
    }

    #[test]
    fn copy_stacks_three_layers() {
        let tmp = tempfile::tempdir().unwrap();
        let layers = three_layers(tmp.path());
        let backend = create(Some("copy"), tmp.path()).unwrap();
        let (rootfs, scratch) = (tmp.path().join("c/rootfs"), tmp.path().join("c/scratch"));
        backend.provision(&layers, &rootfs, &scratch).unwrap();
        assert_merged(&rootfs);
        let meta = |p: &str| fs::symlink_metadata(rootfs.join(p)).unwrap();
        assert_eq!(
            meta("bin/su").ino(),
            meta("bin/su2").ino(),
            "hardlinks within a layer stay links"
        );
        assert_eq!(meta("etc/b").mtime() as u64, extract::testtar::MTIME);
        assert_eq!(
            meta("opq").mtime() as u64,
            extract::testtar::MTIME,
            "dir mtimes survive"
        );
        let opq_xattrs = crate::provisioner::fsat::get_xattrs_at(
            nix::fcntl::open(
                &rootfs,
                crate::provisioner::fsat::dir_flags(),
                nix::sys::stat::Mode::empty(),
            )
            .unwrap()
            .as_fd(),
            b"opq",
        )
        .unwrap();
        assert!(
            opq_xattrs.is_empty(),
            "overlay xattrs are not copied: {opq_xattrs:?}"
        );
        assert!(
            fs::symlink_metadata(layers[0].rootfs.join("lib"))
                .unwrap()
                .file_type()
                .is_symlink()
        );
        backend.destroy(&rootfs, &scratch).unwrap();
        assert!(!rootfs.exists());
        backend.destroy(&rootfs, &scratch).unwrap();
    }

    #[test]
    fn copy_never_writes_through_lower_symlinks() {
        let tmp = tempfile::tempdir().unwrap();
        let outside = tmp.path().join("outside");
        fs::create_dir(&outside).unwrap();
        fs::write(outside.join("victim"), b"safe").unwrap();
        let l1 = Tar::new().symlink("d", outside.to_str().unwrap()).finish();
        let l2 = Tar::new()
            .dir("d", 0o755)
            .file("d/victim", 0o644, b"pwned")
            .file("d/.wh.x", 0o644, b"")
            .finish();
        let layers = vec![
            layer_from_tar(&tmp.path().join("l1"), &l1),
            layer_from_tar(&tmp.path().join("l2"), &l2),
        ];
        let rootfs = tmp.path().join("rootfs");
        CopyBackend
            .provision(&layers, &rootfs, &tmp.path().join("scratch"))
            .unwrap();
        assert_eq!(fs::read(outside.join("victim")).unwrap(), b"safe");
        assert!(fs::symlink_metadata(rootfs.join("d")).unwrap().is_dir());
        assert_eq!(fs::read(rootfs.join("d/victim")).unwrap(), b"pwned");
    }

    #[test]
    #[ignore = "needs root"]
    fn bind_mounts_one_layer_read_only() {
        let tmp = tempfile::tempdir().unwrap();
        let layer = layer_from_tar(
            &tmp.path().join("l"),
            &Tar::new().file("hello", 0o644, b"hi").finish(),
        );
        let backend = create(Some("bind"), tmp.path()).unwrap();
        let (rootfs, scratch) = (tmp.path().join("c/rootfs"), tmp.path().join("c/scratch"));
        backend
            .provision(std::slice::from_ref(&layer), &rootfs, &scratch)
            .unwrap();
        assert_eq!(fs::read(rootfs.join("hello")).unwrap(), b"hi");
        let err = fs::write(rootfs.join("new"), b"x").unwrap_err();
        assert_eq!(err.raw_os_error(), Some(libc::EROFS), "{err}");
        let canonical = fs::canonicalize(&rootfs).unwrap();
        backend.destroy(&rootfs, &scratch).unwrap();
        assert!(mounts_under(&canonical).unwrap().is_empty());
        assert!(!rootfs.exists());
        assert_eq!(
            fs::read(layer.rootfs.join("hello")).unwrap(),
            b"hi",
            "the layer survives destroy"
        );
        backend.destroy(&rootfs, &scratch).unwrap();
    }

    #[test]
    fn bind_refuses_multi_layer_images() {
        let tmp = tempfile::tempdir().unwrap();
        let layers = three_layers(tmp.path());
        let err = BindBackend
            .provision(&layers, &tmp.path().join("r"), &tmp.path().join("s"))
            .unwrap_err();
        assert!(
            matches!(err, BackendError::BindMultiLayer { layers: 3 }),
            "{err:?}"
        );
        assert!(err.to_string().contains("3 layers"), "{err}");
        assert!(!tmp.path().join("r").exists());
    }

    #[test]
    #[ignore = "needs root"]
    fn overlay_mounts_120_layers() {
        let tmp = tempfile::tempdir().unwrap();
        // A long path, as the real store has, to show the options stay short.
        let store = tmp.path().join("x".repeat(100)).join("store/docker/layers");
        let layers: Vec<LayerRef> = (0..120)
            .map(|i| {
                let rootfs = store.join(format!("{i:064x}")).join("rootfs");
                fs::create_dir_all(&rootfs).unwrap();
                fs::write(rootfs.join(format!("f{i}")), i.to_string()).unwrap();
                fs::write(rootfs.join("top"), i.to_string()).unwrap();
                LayerRef {
                    rootfs,
                    summary: Default::default(),
                }
            })
            .collect();
        let base = tmp
            .path()
            .join("y".repeat(100))
            .join("provisioner/containers/c/backends/overlay");
        let (rootfs, scratch) = (base.join("rootfses/r"), base.join("scratch/r"));
        let backend = OverlayBackend::new(&store).unwrap();
        backend.provision(&layers, &rootfs, &scratch).unwrap();
        for i in [0, 57, 119] {
            assert_eq!(
                fs::read_to_string(rootfs.join(format!("f{i}"))).unwrap(),
                i.to_string()
            );
        }
        assert_eq!(
            fs::read_to_string(rootfs.join("top")).unwrap(),
            "119",
            "the last layer is on top"
        );
        let canonical = fs::canonicalize(&rootfs).unwrap();
        backend.destroy(&rootfs, &scratch).unwrap();
        assert!(mounts_under(&canonical).unwrap().is_empty());
        assert!(!rootfs.exists() && !scratch.exists());
    }

    #[test]
    #[ignore = "needs root"]
    fn overlay_handles_repeated_and_no_layers() {
        let tmp = tempfile::tempdir().unwrap();
        let a = layer_from_tar(
            &tmp.path().join("a"),
            &Tar::new().file("f", 0o644, b"a").finish(),
        );
        let b = layer_from_tar(
            &tmp.path().join("b"),
            &Tar::new().file("f", 0o644, b"b").finish(),
        );
        let backend = OverlayBackend::new(tmp.path()).unwrap();
        let (rootfs, scratch) = (tmp.path().join("r"), tmp.path().join("s"));
        backend
            .provision(&[a.clone(), b, a], &rootfs, &scratch)
            .unwrap();
        assert_eq!(fs::read(rootfs.join("f")).unwrap(), b"a");
        backend.destroy(&rootfs, &scratch).unwrap();
        backend.provision(&[], &rootfs, &scratch).unwrap();
        assert_eq!(fs::read_dir(&rootfs).unwrap().count(), 0);
        backend.destroy(&rootfs, &scratch).unwrap();
        assert!(!rootfs.exists());
    }

    #[test]
    fn create_picks_and_validates() {
        let tmp = tempfile::tempdir().unwrap();
        let err = create(Some("nope"), tmp.path()).err().unwrap();
        assert!(err.to_string().contains("\"nope\""), "{err}");
        if !kernel_has("aufs").unwrap() {
            let err = create(Some("aufs"), tmp.path()).err().unwrap();
            assert_eq!(
                err.to_string(),
                "aufs backend: the kernel has no aufs filesystem (not in /proc/filesystems)"
            );
        }
        assert_eq!(create(Some("copy"), tmp.path()).unwrap().name(), "copy");
        // Without root no mounting backend is usable; the default as root has its own test.
        if !nix::unistd::geteuid().is_root() {
            assert_eq!(create(None, tmp.path()).unwrap().name(), "copy");
        }
    }

    #[test]
    #[ignore = "needs root"]
    fn create_prefers_overlay_unless_the_store_is_on_overlay() {
        let tmp = tempfile::tempdir().unwrap();
        if kernel_has("overlay").unwrap() {
            assert_eq!(create(None, tmp.path()).unwrap().name(), "overlay");
            // A store on overlayfs itself (say, a daemon in a container) cannot be stacked.
            let layer = layer_from_tar(
                &tmp.path().join("l"),
                &Tar::new().file("f", 0o644, b"").finish(),
            );
            let (rootfs, scratch) = (tmp.path().join("r"), tmp.path().join("s"));
            OverlayBackend::new(tmp.path())
                .unwrap()
                .provision(&[layer], &rootfs, &scratch)
                .unwrap();
            let err = OverlayBackend::new(&rootfs.join("store")).err().unwrap();
            assert!(err.to_string().contains("is on overlay"), "{err}");
            let fallback = if kernel_has("aufs").unwrap() {
                "aufs"
            } else {
                "copy"
            };
            assert_eq!(create(None, &rootfs).unwrap().name(), fallback);
            OverlayBackend.destroy(&rootfs, &scratch).unwrap();
        }
    }

    fn destroy_of_nothing_is_ok(backends: &[&str]) {
        let tmp = tempfile::tempdir().unwrap();
        for backend in backends {
            let b = create(Some(backend), tmp.path()).unwrap();
            b.destroy(&tmp.path().join("missing/r"), &tmp.path().join("missing/s"))
                .unwrap();
        }
    }

    #[test]
    fn destroy_refuses_nothing_when_absent() {
        destroy_of_nothing_is_ok(&["copy"]);
    }

    #[test]
    #[ignore = "needs root"]
    fn destroy_refuses_nothing_when_absent_for_overlay_and_bind() {
        destroy_of_nothing_is_ok(&["overlay", "bind"]);
    }
}
