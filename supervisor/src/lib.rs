//! `cri-mesos-supervisor`: the per-pod process of cri-mesos (see ARCHITECTURE.md §3).
//!
//! One supervisor per pod replaces containerd's shim and the pause container: it is the parent
//! and subreaper of the pod's containers (and PID 1 of the pod's pid namespace when the pod
//! shares one), forks each container on the daemon's request, relays their output into CRI log
//! files and to attached clients, keeps their stdin, forks exec sessions (handing the daemon
//! their pipes or pty), and records their exit statuses on disk. It is single-threaded
//! (poll loop, no async runtime) so that it can fork safely, and small.
//!
//! The daemon uses [`protocol`] (the request/reply types) and optionally [`client`] (a
//! blocking client). Everything else is the supervisor binary's own machinery.
//!
//! # Spawning
//! `cri-mesos-supervisor --pod-id ID --socket PATH --state-dir DIR [--new-pid-ns] [--ready-fd N]`
//! is spawned plainly (no `pre_exec`). The spawned process calls `setsid`, (with `--new-pid-ns`
//! unshares a pid namespace), forks the supervisor, waits until it serves its socket, prints
//! one line on stdout (or on fd N with `--ready-fd N`) and exits: `pid <host pid>` with status
//! 0, or `error: <message>` with status 1 (2 for bad arguments). Parse it with
//! [`protocol::parse_spawn_line`]; the daemon must reap that process (`wait`). The supervisor
//! itself is not the daemon's child, holds none of its pipes, and survives its death.
//!
//! # Files
//! `<socket>` (mode 0600, removed at shutdown), `<state-dir>/supervisor.pid` (host pid,
//! written atomically), `<state-dir>/supervisor.log` (short diagnostics, rotated once at
//! 64 KiB), each container's CRI log (`log_path`) and exit file (`exit_file`,
//! [`protocol::ExitRecord`] JSON).
//!
//! # Signals
//! SIGTERM/SIGINT: like [`protocol::Request::Shutdown`] (SIGKILL every container, record the
//! exits, exit). SIGHUP and SIGPIPE are ignored.
#![deny(unsafe_code)]

pub mod b64;
pub mod client;
pub mod mountinfo;
pub mod protocol;

mod child;
mod creds;
mod crilog;
pub use crilog::open_beneath;
mod exec;
mod server;
mod sys;

pub use crilog::{civil_from_days, format_timestamp};

/// Runs the supervisor binary (argument parsing, start-up fork, poll loop). Never returns.
#[doc(hidden)]
pub fn main_entry() -> ! {
    server::main_entry()
}
