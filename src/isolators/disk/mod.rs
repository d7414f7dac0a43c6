//! Mesos's disk isolators: `disk/du` (alias `posix/disk`) measures each container's
//! disk use and, with `--enforce_container_disk_quota`, enforces a limit.

pub mod du;
