//! `cri-mesos-supervisor`: the per-pod process of cri-mesos (see ARCHITECTURE.md §3).
//!
//! One supervisor per pod replaces containerd's shim and the pause container: it is the parent
//! and subreaper of the pod's containers (and PID 1 of the pod's pid namespace when the pod
//! shares one), forks each container on the daemon's request, relays their output into CRI log
//! files, keeps their stdin, and records their exit statuses on disk. It is single-threaded
//! (poll loop, no async runtime) so that it can fork safely, and small.
//!
//! The daemon uses [`protocol`] (the request/reply types) and optionally [`client`] (a
//! blocking client). Everything else is the supervisor binary's own machinery.
#![deny(unsafe_code)]

pub mod b64;
pub mod client;
pub mod protocol;

mod child;
mod crilog;
mod exec;
mod server;
mod sys;

pub use crilog::{civil_from_days, format_timestamp};

/// Runs the supervisor binary (argument parsing, start-up fork, poll loop). Never returns.
#[doc(hidden)]
pub fn main_entry() -> ! {
    server::main_entry()
}
