//! Namespace isolators (Mesos's `namespaces/*`): which of the pod's namespaces a container
//! shares.

pub mod ipc;
pub mod pid;
