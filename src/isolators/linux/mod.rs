//! Linux isolators (Mesos's `linux/*`): what the kernel grants a container's processes.

pub mod capabilities;
