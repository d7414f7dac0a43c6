//! cri-mesos: a CRI v1 runtime whose inside is Apache Mesos's containerizer.
//!
//! `unsafe` is confined to [`sys`] and `provisioner::fsat`, the two modules that allow it.

#![deny(unsafe_code)]

pub mod cgroups;
pub mod containerizer;
pub mod cri;
pub mod failpoint;
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
#[allow(unsafe_code)]
pub mod sys;
