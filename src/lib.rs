//! cri-mesos: a CRI v1 runtime whose inside is Apache Mesos's containerizer.

pub mod cri;
pub mod flags;
pub mod isolators;
pub mod provisioner;
pub mod server;
