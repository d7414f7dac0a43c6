//! Mesos's aufs backend, for kernels with aufs but without overlayfs (pre-3.18,
//! Ubuntu 14.04). Mainline kernels have no aufs, so on most hosts this backend only
//! explains why it cannot be used.
//!
//! The store keeps whiteouts in overlayfs's format, which aufs does not read, so images
//! with whiteouts above the bottom layer are refused rather than shown wrongly.

use std::fs;
use std::path::Path;

use nix::mount::MsFlags;

use super::{
    Backend, BackendError, LayerRef, MOUNT_OPTIONS_MAX, check_stackable, create_rootfs_dir, in_dir,
    make_links, make_shared_slave, unmount_and_remove,
};

const NAME: &str = "aufs";

#[derive(Debug)]
pub struct AufsBackend;

impl AufsBackend {
    pub fn new(store_dir: &Path) -> Result<AufsBackend, BackendError> {
        check_stackable(
            NAME,
            "aufs",
            "aufs",
            store_dir,
            &["btrfs", "aufs", "ecryptfs"],
        )?;
        Ok(AufsBackend)
    }
}

impl Backend for AufsBackend {
    fn name(&self) -> &'static str {
        NAME
    }

    fn writable(&self, _rootfs: &Path, scratch: &Path) -> Option<std::path::PathBuf> {
        Some(scratch.join("workdir"))
    }

    fn provision(
        &self,
        layers: &[LayerRef],
        rootfs: &Path,
        scratch: &Path,
    ) -> Result<(), BackendError> {
        if let Some(layer) = layers
            .iter()
            .skip(1)
            .find(|l| !l.summary.whiteouts.is_empty() || !l.summary.opaque_dirs.is_empty())
        {
            return Err(BackendError::Unsupported {
                backend: NAME,
                reason: format!(
                    "layer {} deletes files of lower layers, and its whiteouts are stored in overlayfs's \
                     format, which aufs cannot read; use the overlay or copy backend",
                    layer.rootfs.display()
                ),
            });
        }
        let rootfs =
            &std::path::absolute(rootfs).map_err(BackendError::io(NAME, "resolving", rootfs))?;
        let scratch =
            &std::path::absolute(scratch).map_err(BackendError::io(NAME, "resolving", scratch))?;
        let workdir = scratch.join("workdir");
        fs::create_dir_all(&workdir).map_err(BackendError::io(NAME, "creating", &workdir))?;
        let lowers = make_links(NAME, layers, &scratch.join("l"))?;
        let mut options = String::from("dirs=workdir=rw");
        for lower in &lowers {
            options.push_str(&format!(":{lower}=ro+wh"));
        }
        if options.len() > MOUNT_OPTIONS_MAX {
            return Err(BackendError::Unsupported {
                backend: NAME,
                reason: format!(
                    "{} layers make mount options longer than the kernel allows",
                    layers.len()
                ),
            });
        }
        create_rootfs_dir(NAME, rootfs)?;
        in_dir(scratch, || {
            nix::mount::mount(
                Some("none"),
                rootfs,
                Some("aufs"),
                MsFlags::empty(),
                Some(options.as_str()),
            )
        })
        .map_err(|source| BackendError::Io {
            backend: NAME,
            op: "mounting the layers at",
            path: rootfs.clone(),
            source,
        })?;
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
