//! Mesos's bind backend: the image's only layer, bind-mounted read-only as the rootfs.
//! No copy and no upper dir, so no IO; but the rootfs is read-only, shared by every
//! container of the image, and multi-layer images are refused.
//!
//! A base layer with whiteouts (meaningless at the bottom) would show them as 0:0
//! character devices; the devices cgroup keeps them unusable.

use std::path::Path;

use nix::mount::MsFlags;

use super::{
    Backend, BackendError, LayerRef, create_rootfs_dir, make_shared_slave, require_root,
    unmount_and_remove,
};

const NAME: &str = "bind";

#[derive(Debug)]
pub struct BindBackend;

impl BindBackend {
    pub fn new() -> Result<BindBackend, BackendError> {
        require_root(NAME)?;
        Ok(BindBackend)
    }
}

impl Backend for BindBackend {
    fn name(&self) -> &'static str {
        NAME
    }

    /// Read-only: the container writes nothing of its own.
    fn writable(&self, _rootfs: &Path, _scratch: &Path) -> Option<std::path::PathBuf> {
        None
    }

    fn provision(
        &self,
        layers: &[LayerRef],
        rootfs: &Path,
        _scratch: &Path,
    ) -> Result<(), BackendError> {
        let [layer] = layers else {
            return Err(BackendError::BindMultiLayer {
                layers: layers.len(),
            });
        };
        create_rootfs_dir(NAME, rootfs)?;
        nix::mount::mount(
            Some(&layer.rootfs),
            rootfs,
            None::<&str>,
            MsFlags::MS_BIND,
            None::<&str>,
        )
        .map_err(BackendError::errno(
            NAME,
            "bind-mounting the layer at",
            rootfs,
        ))?;
        // A bind mount takes MS_RDONLY only on a remount.
        let readonly = nix::mount::mount(
            None::<&str>,
            rootfs,
            None::<&str>,
            MsFlags::MS_REMOUNT | MsFlags::MS_BIND | MsFlags::MS_RDONLY,
            None::<&str>,
        )
        .map_err(BackendError::errno(NAME, "making read-only", rootfs))
        .and_then(|()| make_shared_slave(NAME, rootfs));
        if let Err(e) = readonly {
            // Never leave the store's layer writable through a half-made rootfs.
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
