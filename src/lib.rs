//! cri-mesos: a CRI v1 runtime whose inside is Apache Mesos's containerizer.

pub mod cgroups;
pub mod containerizer;
pub mod cri;
pub mod fetcher;
pub mod flags;
pub mod http;
pub mod inflight;
pub mod isolators;
pub mod launcher;
pub mod metrics;
pub mod provisioner;
pub mod quote;
pub mod server;
pub mod state;
pub mod stream;
