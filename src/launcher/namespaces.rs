//! Pod namespaces pinned by bind mounts, Mesos's way: no sleeping process holds them.
//!
//! unshare(2) of net, uts and ipc namespaces affects only the calling thread, so a short
//! dedicated thread of the (multi-threaded) daemon makes them, sets the hostname, brings
//! loopback up and bind-mounts its `/proc/thread-self/ns/*` onto files; the thread then
//! ends and the namespaces live on through the mounts.

use std::fs;
use std::io;
use std::path::{Path, PathBuf};

use nix::mount::{MntFlags, MsFlags};
use nix::sched::CloneFlags;

#[derive(Debug, thiserror::Error)]
pub enum NamespaceError {
    #[error("pod namespaces: {step}: {source}")]
    Sys { step: String, source: nix::Error },
    #[error("pod namespaces: {path}: {source}")]
    Io { path: PathBuf, source: io::Error },
    #[error("pod namespaces: the namespace thread died")]
    Thread,
}

/// Pinned namespace files of a pod, one per kind; `None`: the pod uses the host's. Each
/// kind has its own place because their owners differ: the network namespace lives with
/// the `network/cni` state (Mesos's `isolators/network/cni/<id>/ns`), the others in the
/// pod's directory.
#[derive(Debug, Clone, Default)]
pub struct Pinned {
    pub net: Option<PathBuf>,
    pub uts: Option<PathBuf>,
    pub ipc: Option<PathBuf>,
}

/// Makes a namespace for each path of `targets` and pins it there (parent directories are
/// created). On failure nothing stays pinned.
pub fn create(targets: &Pinned, hostname: &str) -> Result<Pinned, NamespaceError> {
    for path in [&targets.net, &targets.uts, &targets.ipc]
        .into_iter()
        .flatten()
    {
        if let Some(dir) = path.parent() {
            fs::create_dir_all(dir).map_err(|source| NamespaceError::Io {
                path: dir.to_path_buf(),
                source,
            })?;
        }
    }
    let targets = targets.clone();
    let hostname = hostname.to_string();
    std::thread::spawn(move || {
        let mut pinned = Pinned::default();
        let result = pin_in_this_thread(&targets, &hostname, &mut pinned);
        if result.is_err() {
            remove(&pinned);
        }
        result.map(|_| pinned)
    })
    .join()
    .map_err(|_| NamespaceError::Thread)?
}

fn pin_in_this_thread(
    targets: &Pinned,
    hostname: &str,
    pinned: &mut Pinned,
) -> Result<(), NamespaceError> {
    let sys = |step: &str| {
        let step = step.to_string();
        move |source| NamespaceError::Sys { step, source }
    };
    let mut flags = CloneFlags::empty();
    if targets.net.is_some() {
        flags |= CloneFlags::CLONE_NEWNET;
    }
    if targets.uts.is_some() {
        flags |= CloneFlags::CLONE_NEWUTS;
    }
    if targets.ipc.is_some() {
        flags |= CloneFlags::CLONE_NEWIPC;
    }
    if flags.is_empty() {
        return Ok(());
    }
    nix::sched::unshare(flags).map_err(sys("unshare"))?;
    if targets.uts.is_some() {
        nix::unistd::sethostname(hostname).map_err(sys("sethostname"))?;
    }
    if targets.net.is_some() {
        loopback_up().map_err(sys("bring lo up"))?;
    }
    for (target, kind, slot) in [
        (&targets.net, "net", &mut pinned.net),
        (&targets.uts, "uts", &mut pinned.uts),
        (&targets.ipc, "ipc", &mut pinned.ipc),
    ] {
        let Some(target) = target else { continue };
        fs::File::create(target).map_err(|source| NamespaceError::Io {
            path: target.clone(),
            source,
        })?;
        let source = format!("/proc/thread-self/ns/{kind}");
        nix::mount::mount(
            Some(source.as_str()),
            target,
            None::<&str>,
            MsFlags::MS_BIND,
            None::<&str>,
        )
        .map_err(sys(&format!("pin {kind} at {}", target.display())))?;
        *slot = Some(target.clone());
    }
    Ok(())
}

/// Unpins namespaces (the kernel frees each once nothing else holds it). Idempotent.
pub fn remove(pinned: &Pinned) {
    for path in [&pinned.net, &pinned.uts, &pinned.ipc]
        .into_iter()
        .flatten()
    {
        unpin(path);
    }
}

/// Unmounts and deletes one pinned namespace file; missing ones are fine.
pub fn unpin(path: &Path) {
    match nix::mount::umount2(path, MntFlags::MNT_DETACH) {
        Ok(()) | Err(nix::Error::ENOENT) | Err(nix::Error::EINVAL) => {}
        Err(e) => tracing::warn!(path = %path.display(), error = %e, "cannot unpin namespace"),
    }
    let _ = fs::remove_file(path);
}

/// Whether `path` still pins a namespace: after an unmount (or a reboot of a persistent
/// dir) only a plain empty file remains, which must not be handed to anyone as a netns.
pub fn is_pinned(path: &Path) -> bool {
    use nix::sys::statfs::{NSFS_MAGIC, statfs};
    statfs(path).is_ok_and(|s| s.filesystem_type() == NSFS_MAGIC)
}

/// Sets IFF_UP on `lo` of the calling thread's network namespace.
fn loopback_up() -> nix::Result<()> {
    use std::os::fd::AsFd;
    let socket = nix::sys::socket::socket(
        nix::sys::socket::AddressFamily::Inet,
        nix::sys::socket::SockType::Datagram,
        nix::sys::socket::SockFlag::SOCK_CLOEXEC,
        None,
    )?;
    crate::sys::loopback_up(socket.as_fd())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    #[ignore = "needs root"]
    fn pins_and_unpins_pod_namespaces() {
        let dir = tempfile::tempdir().unwrap();
        let targets = Pinned {
            net: Some(dir.path().join("cni/pod/ns")),
            uts: Some(dir.path().join("pod/ns/uts")),
            ipc: Some(dir.path().join("pod/ns/ipc")),
        };
        let pinned = create(&targets, "pod-host").unwrap();
        let net = pinned.net.clone().unwrap();
        let st = nix::sys::stat::stat(&net).unwrap();
        let host = nix::sys::stat::stat("/proc/self/ns/net").unwrap();
        assert_ne!(st.st_ino, host.st_ino, "a new net namespace");
        assert!(is_pinned(&net));
        assert!(!is_pinned(dir.path()));
        remove(&pinned);
        assert!(!pinned.uts.unwrap().exists());
        assert!(!net.exists());
    }
}
