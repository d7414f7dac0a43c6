//! Mesos's overlay backend: one overlayfs mount per rootfs, the layers as read-only
//! lower dirs (top layer first), a per-rootfs upper and work dir in `scratch`.
//!
//! The store keeps whiteouts in overlayfs's own format (0:0 character devices and
//! `trusted.overlay.opaque`), so the layers stack as they are.

use std::fs;
use std::path::Path;

use nix::mount::MsFlags;

use super::{
    Backend, BackendError, LayerRef, MOUNT_OPTIONS_MAX, check_stackable, create_rootfs_dir, in_dir,
    make_links, make_shared_slave, unmount_and_remove,
};

const NAME: &str = "overlay";

#[derive(Debug)]
pub struct OverlayBackend;

impl OverlayBackend {
    /// Checks, as Mesos does, that the kernel has overlayfs, that we may mount, and that
    /// the store's filesystem can be an overlayfs lower layer (not btrfs, aufs, overlay,
    /// zfs or ecryptfs, and with file types in directory entries).
    pub fn new(store_dir: &Path) -> Result<OverlayBackend, BackendError> {
        let refused = ["btrfs", "aufs", "overlay", "zfs", "ecryptfs"];
        check_stackable(NAME, "overlay", "overlayfs", store_dir, &refused)?;
        if store_dir.is_dir() && !reports_d_type(store_dir) {
            return Err(BackendError::Unavailable {
                backend: NAME,
                reason: format!(
                    "the image store {}'s filesystem does not report file types in directory entries \
                 (d_type; xfs needs ftype=1), which overlayfs needs",
                    store_dir.display()
                ),
            });
        }
        Ok(OverlayBackend)
    }
}

/// Whether directory listings on `dir`'s filesystem carry the file type.
fn reports_d_type(dir: &Path) -> bool {
    let probe = dir.join(format!(".d_type-probe-{}", uuid::Uuid::new_v4().simple()));
    let result = (|| -> std::io::Result<bool> {
        fs::create_dir(&probe)?;
        fs::write(probe.join("f"), b"")?;
        let mut d = nix::dir::Dir::open(
            &probe,
            nix::fcntl::OFlag::O_RDONLY
                | nix::fcntl::OFlag::O_DIRECTORY
                | nix::fcntl::OFlag::O_CLOEXEC,
            nix::sys::stat::Mode::empty(),
        )?;
        for entry in d.iter() {
            let entry = entry?;
            if entry.file_name().to_bytes() == b"f" {
                return Ok(entry.file_type().is_some());
            }
        }
        Ok(false)
    })();
    let _ = fs::remove_dir_all(&probe);
    // A store we cannot probe is judged by the mount itself later.
    result.unwrap_or(true)
}

impl Backend for OverlayBackend {
    fn name(&self) -> &'static str {
        NAME
    }

    fn writable(&self, _rootfs: &Path, scratch: &Path) -> Option<std::path::PathBuf> {
        Some(scratch.join("upper"))
    }

    fn provision(
        &self,
        layers: &[LayerRef],
        rootfs: &Path,
        scratch: &Path,
    ) -> Result<(), BackendError> {
        let rootfs =
            &std::path::absolute(rootfs).map_err(BackendError::io(NAME, "resolving", rootfs))?;
        let scratch =
            &std::path::absolute(scratch).map_err(BackendError::io(NAME, "resolving", scratch))?;
        for dir in ["upper", "work"] {
            let path = scratch.join(dir);
            fs::create_dir_all(&path).map_err(BackendError::io(NAME, "creating", &path))?;
        }
        let lowers = if layers.is_empty() {
            // An image without layers: overlayfs still wants a lower dir.
            let empty = scratch.join("empty");
            fs::create_dir_all(&empty).map_err(BackendError::io(NAME, "creating", &empty))?;
            vec!["empty".to_string()]
        } else {
            make_links(NAME, layers, &scratch.join("l"))?
        };
        let options = format!("lowerdir={},upperdir=upper,workdir=work", lowers.join(":"));
        if options.len() > MOUNT_OPTIONS_MAX {
            return Err(BackendError::Unsupported {
                backend: NAME,
                reason: format!(
                    "{} layers make {} bytes of mount options, over the kernel's limit of {MOUNT_OPTIONS_MAX}",
                    layers.len(),
                    options.len()
                ),
            });
        }
        create_rootfs_dir(NAME, rootfs)?;
        in_dir(scratch, || {
            nix::mount::mount(
                Some("overlay"),
                rootfs,
                Some("overlay"),
                MsFlags::empty(),
                Some(options.as_str()),
            )
        })
        .map_err(|source| BackendError::Io {
            backend: NAME,
            op: if layers.len() > 1 {
                "mounting the layers at"
            } else {
                "mounting the layer at"
            },
            path: rootfs.clone(),
            source,
        })?;
        tracing::debug!(rootfs = %rootfs.display(), layers = layers.len(), "overlay mounted");
        if let Err(e) = make_shared_slave(NAME, rootfs) {
            let _ = nix::mount::umount2(rootfs, nix::mount::MntFlags::MNT_DETACH);
            return Err(e);
        }
        Ok(())
    }

    fn destroy(&self, rootfs: &Path, scratch: &Path) -> Result<(), BackendError> {
        unmount_and_remove(NAME, rootfs)?;
        unmount_and_remove(NAME, scratch)
    }
}
