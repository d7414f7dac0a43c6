//! Volume isolators (Mesos's `volume/*`): the CRI's mounts.

pub mod host_path;
