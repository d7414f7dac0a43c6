//! Launchers (Mesos's `linux` and `posix`): how a container's processes are started and
//! how all of them are killed. Both hand the fork to the pod's supervisor; `linux` adds
//! namespaces and tracks every process through the container's cgroup.

pub mod namespaces;
pub mod propagation;
pub mod supervisor;
