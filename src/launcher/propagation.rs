//! The runtime's own directories as shared mounts.
//!
//! Mounts on this kind of host are private by default. Mesos makes its work dir a shared
//! mount so that bidirectional volumes under it propagate; cri-mesos does the same with
//! its work and runtime dirs: each is bind-mounted onto itself (when it is not already a
//! mount point) and marked shared.

use std::path::Path;

use nix::mount::MsFlags;

/// True when `path` is itself a mount point (per /proc/self/mountinfo).
pub fn is_mount_point(path: &Path) -> bool {
    let wanted = path.display().to_string();
    std::fs::read_to_string("/proc/self/mountinfo")
        .map(|text| {
            text.lines()
                .any(|l| l.split(' ').nth(4) == Some(wanted.as_str()))
        })
        .unwrap_or(false)
}

/// Makes `dir` a shared mount (creating the self bind mount first when needed).
pub fn make_shared(dir: &Path) -> nix::Result<()> {
    if !is_mount_point(dir) {
        nix::mount::mount(
            Some(dir),
            dir,
            None::<&str>,
            MsFlags::MS_BIND | MsFlags::MS_REC,
            None::<&str>,
        )?;
    }
    nix::mount::mount(
        None::<&str>,
        dir,
        None::<&str>,
        MsFlags::MS_SHARED | MsFlags::MS_REC,
        None::<&str>,
    )
}
