//! Test harness for cri-mesos.
//!
//! Everything a test needs to drive the runtime from the outside, the way the kubelet and a
//! real registry would:
//!
//! - [`Registry`]: a throw-away Docker distribution registry (Debian's `docker-registry`) on a
//!   free localhost port, optionally with htpasswd auth, with its access log readable so tests
//!   can assert *what* was fetched (e.g. "the second pull fetched no blobs").
//! - [`layer`], [`image`], [`images`]: deterministic test images built in Rust from
//!   busybox-static, pushed over the registry HTTP API; hand-written (even malicious) layer
//!   tars; `docker save` archives.
//! - [`Daemon`]: the `cri-mesos` binary as a child process in a private temp dir, with CRI
//!   clients over its unix socket, graceful stop, crash (`kill9`) and restart.
//! - Root-only tests are `#[ignore = "needs root"]`, so that a run without root counts
//!   them as ignored instead of passing them; `cargo test -- --include-ignored` as root
//!   runs them (hack/test.sh does).
//!
//! Everything async is meant for `#[tokio::test]`; child processes are `std::process` children
//! so `Drop` can kill and reap them synchronously, even while a test panics.

pub mod daemon;
pub mod image;
pub mod images;
pub mod int80;
pub mod layer;
pub mod pushed;
pub mod registry;

pub use daemon::{
    Daemon, DaemonBuilder, RunOutput, connect_unix, mounts_under, run_once, unmount_under,
};
pub use image::{BuiltImage, BuiltIndex, BuiltLayer, ImageBuilder, ManifestFormat};
pub use images::{Expect, TestImage, TestImages, TestIndex, push_all, push_entries};
pub use layer::{Compression, EntryKind, Layer, TarEntry};
pub use registry::{Credentials, FetchedManifest, Registry, RegistryClient};

use std::process::{Child, Command};
use std::sync::{Mutex, OnceLock, mpsc};

/// True when the test runs with effective uid 0 (needed for namespaces, mounts, cgroups).
pub fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions and cannot fail.
    unsafe { libc::geteuid() == 0 }
}

/// The host architecture in GOARCH spelling, as used in image configs and index platforms.
pub fn host_arch() -> &'static str {
    goarch(std::env::consts::ARCH)
}

/// An architecture that is *not* the host's, for the multi-arch index.
pub fn other_arch() -> &'static str {
    if host_arch() == "amd64" {
        "arm64"
    } else {
        "amd64"
    }
}

fn goarch(rust_arch: &'static str) -> &'static str {
    match rust_arch {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        "x86" => "386",
        "powerpc64" if cfg!(target_endian = "little") => "ppc64le",
        "loongarch64" => "loong64",
        other => other, // arm, riscv64, s390x, mips64 are spelled the same
    }
}

/// `sha256:<hex>` of `data`: the digest form used for blobs, manifests and image ids.
pub fn sha256_digest(data: &[u8]) -> String {
    use sha2::{Digest, Sha256};
    format!("sha256:{:x}", Sha256::digest(data))
}

/// Spawns `cmd` so the child gets SIGKILL when the test process dies, however it dies.
///
/// `Drop` handles the normal and panicking paths; this covers a test binary killed by a timeout
/// or a signal, which would otherwise leave a registry or a root daemon running. The parent-
/// death signal fires when the *thread* that forked exits, not the process, so every spawn goes
/// through one thread that lives as long as the process.
pub(crate) fn spawn_tied(cmd: Command) -> std::io::Result<Child> {
    type Request = (Command, mpsc::Sender<std::io::Result<Child>>);
    static SPAWNER: OnceLock<Mutex<mpsc::Sender<Request>>> = OnceLock::new();
    let spawner = SPAWNER.get_or_init(|| {
        let (tx, rx) = mpsc::channel::<Request>();
        std::thread::Builder::new()
            .name("test-support-spawner".into())
            .spawn(move || {
                for (mut cmd, reply) in rx {
                    use std::os::unix::process::CommandExt;
                    let parent = libc::pid_t::try_from(std::process::id()).unwrap_or(0);
                    // SAFETY: prctl, getppid and _exit are async-signal-safe.
                    unsafe {
                        cmd.pre_exec(move || {
                            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) != 0 {
                                return Err(std::io::Error::last_os_error());
                            }
                            // The parent may have died before prctl took effect.
                            if libc::getppid() != parent {
                                libc::_exit(1);
                            }
                            Ok(())
                        });
                    }
                    let _ = reply.send(cmd.spawn());
                }
            })
            .expect("spawn the test-support spawner thread");
        Mutex::new(tx)
    });
    let (reply_tx, reply_rx) = mpsc::channel();
    spawner
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .send((cmd, reply_tx))
        .map_err(|_| std::io::Error::other("spawner thread is gone"))?;
    reply_rx
        .recv()
        .map_err(|_| std::io::Error::other("spawner thread is gone"))?
}

/// Sends `signal` to a child we spawned (by pid, never by name).
pub(crate) fn signal_child(child: &Child, signal: libc::c_int) {
    if let Ok(pid) = libc::pid_t::try_from(child.id()) {
        // SAFETY: plain kill(2) on our own, not yet reaped, child.
        unsafe {
            libc::kill(pid, signal);
        }
    }
}

/// Kills and reaps a child if it is still running; used by `Drop` impls.
pub(crate) fn kill_and_reap(child: &mut Child) {
    if matches!(child.try_wait(), Ok(None)) {
        let _ = child.kill();
    }
    let _ = child.wait();
}

#[cfg(test)]
mod tests {
    #[test]
    fn arches_are_goarch_and_differ() {
        assert_ne!(crate::host_arch(), crate::other_arch());
        assert!(["amd64", "arm64"].contains(&crate::other_arch()));
    }
}
