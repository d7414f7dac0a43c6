//! Pod sysctls: which ones a pod may set and writing them inside the pod's namespaces.
//!
//! There is no pause container whose spec would carry them: the pod's namespaces are
//! pinned files, so a short thread enters them and writes `/proc/sys` once, before any
//! container starts. `/proc/sys/net` and the IPC entries resolve against the *writing
//! thread's* namespaces, which is what makes the host's procfs serve the pod's values.

use std::fs::File;
use std::io::Write;
use std::path::{Path, PathBuf};

use nix::sched::CloneFlags;

/// The namespace a sysctl belongs to (only these two are namespaced and reachable from a
/// pod: kubelet's and runc's lists).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SysctlNs {
    Net,
    Ipc,
}

/// One pod sysctl, its name in dot form and its path under `/proc/sys`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Sysctl {
    pub name: String,
    pub path: String,
    pub value: String,
    pub ns: SysctlNs,
}

#[derive(Debug, thiserror::Error)]
pub enum SysctlError {
    #[error("{name}: {reason}")]
    Refused { name: String, reason: String },
    #[error("{name}: writing {value:?} to /proc/sys/{path}: {source}")]
    Write {
        name: String,
        path: String,
        value: String,
        source: std::io::Error,
    },
    #[error("entering the pod's {kind} namespace {path}: {source}")]
    Enter {
        kind: &'static str,
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("the sysctl thread died")]
    Thread,
}

impl SysctlError {
    /// The sysctl the error is about, when it is about one.
    pub fn sysctl(&self) -> Option<&str> {
        match self {
            SysctlError::Refused { name, .. } | SysctlError::Write { name, .. } => Some(name),
            _ => None,
        }
    }
}

/// Kubernetes' rule (and runc's): a name whose first separator is `/` uses `/` between
/// components and `.` inside them (`net/ipv4/conf/eth0.100/forwarding`); the dot form
/// swaps the two, so `.` separates and `/` stands for a literal dot.
fn dot_form(name: &str) -> String {
    match name.find(['.', '/']) {
        Some(i) if name.as_bytes()[i] == b'/' => name
            .chars()
            .map(|c| match c {
                '.' => '/',
                '/' => '.',
                c => c,
            })
            .collect(),
        _ => name.to_string(),
    }
}

/// Classifies a pod sysctl: `Refused` names what is wrong (not namespaced, empty parts,
/// a path that would leave `/proc/sys`).
pub fn parse(name: &str, value: &str) -> Result<Sysctl, SysctlError> {
    let refused = |reason: &str| SysctlError::Refused {
        name: name.to_string(),
        reason: reason.to_string(),
    };
    let dotted = dot_form(name);
    let parts: Vec<&str> = dotted.split('.').collect();
    if parts
        .iter()
        .any(|p| p.is_empty() || *p == ".." || p.contains('\0'))
    {
        return Err(refused("is not a sysctl name"));
    }
    let ipc = matches!(
        parts.as_slice(),
        ["kernel", k] if k.starts_with("shm") || k.starts_with("msg") || *k == "sem"
    ) || matches!(parts.as_slice(), ["fs", "mqueue", _]);
    let ns = match parts[0] {
        "net" if parts.len() > 1 => SysctlNs::Net,
        _ if ipc => SysctlNs::Ipc,
        _ => {
            return Err(refused(
                "is not a namespaced sysctl a pod may set (net.*, kernel.shm*, kernel.msg*, kernel.sem, fs.mqueue.*)",
            ));
        }
    };
    // A literal dot inside a component ("eth0/100" in dot form) is a dot in the path.
    let path = parts
        .iter()
        .map(|p| p.replace('/', "."))
        .collect::<Vec<_>>()
        .join("/");
    if path.split('/').any(|p| p == "..") {
        return Err(refused("is not a sysctl name"));
    }
    Ok(Sysctl {
        name: dotted,
        path,
        value: value.to_string(),
        ns,
    })
}

/// Writes each sysctl inside the pod's pinned `net` / `ipc` namespace, on a thread of its
/// own (setns(2) of these kinds affects only the calling thread, which then ends). A
/// sysctl whose namespace the pod does not have is refused, never written on the host.
pub fn write(
    net: Option<&Path>,
    ipc: Option<&Path>,
    sysctls: &[Sysctl],
) -> Result<(), SysctlError> {
    for s in sysctls {
        let missing = match s.ns {
            SysctlNs::Net if net.is_none() => Some("the pod uses the host's network namespace"),
            SysctlNs::Ipc if ipc.is_none() => Some("the pod uses the host's IPC namespace"),
            _ => None,
        };
        if let Some(reason) = missing {
            return Err(SysctlError::Refused {
                name: s.name.clone(),
                reason: reason.to_string(),
            });
        }
    }
    if sysctls.is_empty() {
        return Ok(());
    }
    let (net, ipc) = (net.map(Path::to_path_buf), ipc.map(Path::to_path_buf));
    let sysctls = sysctls.to_vec();
    std::thread::spawn(move || -> Result<(), SysctlError> {
        for (kind, path, flag, wanted) in [
            ("net", &net, CloneFlags::CLONE_NEWNET, SysctlNs::Net),
            ("ipc", &ipc, CloneFlags::CLONE_NEWIPC, SysctlNs::Ipc),
        ] {
            let Some(path) = path else { continue };
            if !sysctls.iter().any(|s| s.ns == wanted) {
                continue;
            }
            let enter = |source| SysctlError::Enter {
                kind,
                path: path.clone(),
                source,
            };
            let file = File::open(path).map_err(enter)?;
            nix::sched::setns(&file, flag).map_err(|e| enter(e.into()))?;
        }
        for s in &sysctls {
            let write_err = |source| SysctlError::Write {
                name: s.name.clone(),
                path: s.path.clone(),
                value: s.value.clone(),
                source,
            };
            let full = Path::new("/proc/sys").join(&s.path);
            let mut file = std::fs::OpenOptions::new()
                .write(true)
                .open(&full)
                .map_err(write_err)?;
            file.write_all(s.value.as_bytes()).map_err(write_err)?;
        }
        Ok(())
    })
    .join()
    .map_err(|_| SysctlError::Thread)?
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ns_of(name: &str) -> Result<SysctlNs, String> {
        parse(name, "1").map(|s| s.ns).map_err(|e| e.to_string())
    }

    #[test]
    fn namespaced_sysctls_are_classified() {
        assert_eq!(ns_of("kernel.shm_rmid_forced"), Ok(SysctlNs::Ipc));
        assert_eq!(ns_of("kernel.shmmax"), Ok(SysctlNs::Ipc));
        assert_eq!(ns_of("kernel.msgmax"), Ok(SysctlNs::Ipc));
        assert_eq!(ns_of("kernel.sem"), Ok(SysctlNs::Ipc));
        assert_eq!(ns_of("fs.mqueue.msg_max"), Ok(SysctlNs::Ipc));
        assert_eq!(ns_of("net.ipv4.ip_local_port_range"), Ok(SysctlNs::Net));
        for refused in [
            "kernel.pid_max",
            "vm.overcommit_memory",
            "fs.file-max",
            "kernel.semx.y",
            "net",
            "net..ipv4",
            "",
            "fs.mqueue",
        ] {
            let err = ns_of(refused).unwrap_err();
            assert!(err.starts_with(refused), "{refused}: {err}");
        }
    }

    #[test]
    fn slash_form_swaps_separators() {
        let s = parse("net/ipv4/conf/eth0.100/forwarding", "1").unwrap();
        assert_eq!(s.name, "net.ipv4.conf.eth0/100.forwarding");
        assert_eq!(s.path, "net/ipv4/conf/eth0.100/forwarding");
        let s = parse("net.ipv4.conf.eth0/100.forwarding", "1").unwrap();
        assert_eq!(s.path, "net/ipv4/conf/eth0.100/forwarding");
        let s = parse("kernel/shm_rmid_forced", "1").unwrap();
        assert_eq!(
            (s.name.as_str(), s.path.as_str()),
            ("kernel.shm_rmid_forced", "kernel/shm_rmid_forced")
        );
        // "/.." in dot form is a component "..": never a path out of /proc/sys.
        assert!(parse("net.ipv4./..", "1").is_err());
        assert!(parse("net/../../etc", "1").is_err());
    }

    #[test]
    fn a_sysctl_without_its_namespace_is_refused_not_written_on_the_host() {
        let s = parse("net.ipv4.ip_forward", "0").unwrap();
        let err = write(None, Some(Path::new("/nonexistent")), &[s]).unwrap_err();
        assert_eq!(err.sysctl(), Some("net.ipv4.ip_forward"));
        assert!(
            err.to_string().contains("host's network namespace"),
            "{err}"
        );
        let s = parse("kernel.msgmax", "1").unwrap();
        let err = write(Some(Path::new("/nonexistent")), None, &[s]).unwrap_err();
        assert!(err.to_string().contains("host's IPC namespace"), "{err}");
    }
}
