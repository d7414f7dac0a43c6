//! `namespaces/pid`: whether a container gets a pid namespace of its own.
//!
//! The pod supervisor forks every container, so a container that shares the pod's (or
//! the host's) pid namespace simply stays in the supervisor's: the supervisor already
//! holds the pod's namespace when the pod shares one, and sits in the host's otherwise.
//! A TARGET container (kubelet's ephemeral debug containers) joins the pid namespace of
//! another container of its pod, whatever namespace that one has.

use std::collections::HashMap;
use std::fs::File;
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::sync::{Mutex, MutexGuard};

use cri_mesos_supervisor::protocol::{JoinNs, LaunchInfo, NsKind};
use k8s_cri::v1 as cri;

use crate::isolators::IsolatorName;
use crate::isolators::chain::{ContainerPeer, ContainerPrep, Isolator, IsolatorError, NsMode};

const PID_FIELD: &str = "config.linux.security_context.namespace_options.pid";
const TARGET_FIELD: &str = "config.linux.security_context.namespace_options.target_id";

#[derive(Debug, Default)]
pub struct PidNamespace {
    /// The target pid namespaces of TARGET containers, open from prepare until the
    /// container is forked (isolate) or undone (cleanup).
    pinned: Mutex<HashMap<String, File>>,
}

// No other cleanup: a container's own pid namespace ends with its last process.
#[tonic::async_trait]
impl Isolator for PidNamespace {
    fn name(&self) -> IsolatorName {
        IsolatorName("namespaces/pid")
    }

    async fn prepare(
        &self,
        container: &ContainerPrep<'_>,
        launch: &mut LaunchInfo,
    ) -> Result<(), IsolatorError> {
        let options = container
            .config
            .linux
            .as_ref()
            .and_then(|l| l.security_context.as_ref())
            .and_then(|sc| sc.namespace_options.as_ref());
        // Without namespace options the container is on its own, as kubelet's default
        // (no shareProcessNamespace) is.
        let mode = match options {
            None => cri::NamespaceMode::Container,
            Some(o) => cri::NamespaceMode::try_from(o.pid)
                .map_err(|_| invalid(format!("unknown mode {}", o.pid)))?,
        };
        let pod = container.pod.pid_mode;
        launch.namespaces.new_pid = match mode {
            cri::NamespaceMode::Container => true,
            cri::NamespaceMode::Pod if pod == NsMode::Pod => false,
            cri::NamespaceMode::Pod => {
                return Err(invalid(
                    "POD, but the pod sandbox does not share a pid namespace".into(),
                ));
            }
            // The supervisor of a pod sharing a namespace is inside it: its children cannot
            // get back to the host's.
            cri::NamespaceMode::Node if pod != NsMode::Pod => false,
            cri::NamespaceMode::Node => {
                return Err(invalid(
                    "NODE, but the pod sandbox has a pid namespace of its own".into(),
                ));
            }
            cri::NamespaceMode::Target => {
                let target_id = options.map(|o| o.target_id.as_str()).unwrap_or_default();
                let path = self.pin_target(container, target_id)?;
                launch.namespaces.join.push(JoinNs {
                    kind: NsKind::Pid,
                    path,
                });
                false
            }
        };
        Ok(())
    }

    async fn isolate(&self, container_id: &str, _pid: i32) -> Result<(), IsolatorError> {
        // Forked: the container is in the target's namespace for good.
        self.pinned().remove(container_id);
        Ok(())
    }

    async fn cleanup(&self, container_id: &str) -> Result<(), IsolatorError> {
        self.pinned().remove(container_id);
        Ok(())
    }
}

impl PidNamespace {
    fn pinned(&self) -> MutexGuard<'_, HashMap<String, File>> {
        self.pinned.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Opens the pid namespace of container `target_id` and keeps it open for
    /// `container`, returning a path to that descriptor: `/proc/<pid>/ns/pid` itself would
    /// name the namespace of whichever process has the pid when the supervisor opens it,
    /// and a reused pid could be the host's.
    fn pin_target(
        &self,
        container: &ContainerPrep<'_>,
        target_id: &str,
    ) -> Result<PathBuf, IsolatorError> {
        if target_id.is_empty() {
            return Err(IsolatorError::InvalidArgument {
                field: TARGET_FIELD.into(),
                reason: "must name the target container when pid is TARGET".into(),
            });
        }
        let target =
            find_peer(container.peers, target_id).ok_or_else(|| IsolatorError::NotFound {
                field: TARGET_FIELD.into(),
                reason: format!("container {target_id} not found"),
            })?;
        if target.pod_id != container.pod.id {
            return Err(IsolatorError::InvalidArgument {
                field: TARGET_FIELD.into(),
                reason: format!(
                    "container {} is in pod sandbox {}: the target must be in the same pod sandbox ({})",
                    target.id, target.pod_id, container.pod.id
                ),
            });
        }
        let not_running = |why: &str| IsolatorError::FailedPrecondition {
            field: TARGET_FIELD.into(),
            reason: format!("container {} is not running: {why}", target.id),
        };
        if !target.running || target.pid <= 0 {
            return Err(not_running("it has not started or has exited"));
        }
        let ns = File::open(format!("/proc/{}/ns/pid", target.pid))
            .map_err(|e| not_running(&format!("no process {}: {e}", target.pid)))?;
        // Checked after the open: a pid reused before it belongs to a process outside the
        // target's cgroup.
        if !alive_in(target.pid, target) {
            return Err(not_running(&format!("no live process {}", target.pid)));
        }
        let path = descriptor_path(&ns).map_err(|source| IsolatorError::Io {
            isolator: "namespaces/pid",
            path: PathBuf::from("/proc/self"),
            source,
        })?;
        self.pinned().insert(container.id.to_string(), ns);
        Ok(path)
    }
}

/// By full id or by a unique prefix, as every other container id of the CRI.
fn find_peer<'a>(peers: &'a [ContainerPeer], id: &str) -> Option<&'a ContainerPeer> {
    if let Some(exact) = peers.iter().find(|p| p.id == id) {
        return Some(exact);
    }
    let mut matches = peers.iter().filter(|p| p.id.starts_with(id));
    match (matches.next(), matches.next()) {
        (Some(only), None) => Some(only),
        _ => None,
    }
}

/// Whether `pid` is a live (not zombie) process of the container's cgroup: a zombie's
/// namespace takes no new processes, and a reused pid is not in the cgroup.
fn alive_in(pid: i32, container: &ContainerPeer) -> bool {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let state = stat
        .rsplit_once(')')
        .and_then(|(_, rest)| rest.split_whitespace().next());
    matches!(state, Some(s) if s != "Z" && s != "X") && container.cgroup.pids().contains(&pid)
}

/// `/proc/<daemon pid>/fd/<fd>`: the supervisor shares the daemon's /proc, in which the
/// daemon's pid is what `/proc/self` names (not necessarily `getpid()`).
fn descriptor_path(file: &File) -> std::io::Result<PathBuf> {
    let me = std::fs::read_link("/proc/self")?;
    Ok(Path::new("/proc")
        .join(me)
        .join("fd")
        .join(file.as_raw_fd().to_string()))
}

fn invalid(reason: String) -> IsolatorError {
    IsolatorError::InvalidArgument {
        field: PID_FIELD.into(),
        reason,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cgroups::Cgroup;
    use crate::isolators::registry::test_support::Fixture;

    fn with_pid(f: &mut Fixture, mode: cri::NamespaceMode) {
        with_target(f, mode, "");
    }

    fn with_target(f: &mut Fixture, mode: cri::NamespaceMode, target_id: &str) {
        f.security_context().namespace_options = Some(cri::NamespaceOption {
            pid: mode as i32,
            target_id: target_id.into(),
            ..Default::default()
        });
    }

    /// This test process as a running container of pod `pod_id`, its cgroup a directory
    /// whose `cgroup.procs` lists it.
    fn peer_of_this_process(f: &Fixture, id: &str, pod_id: &str) -> ContainerPeer {
        let pid: i32 = std::fs::read_link("/proc/self")
            .unwrap()
            .to_str()
            .unwrap()
            .parse()
            .unwrap();
        let dir = f.dir.path().join("cgroups").join(id);
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("cgroup.procs"), format!("{pid}\n")).unwrap();
        ContainerPeer {
            id: id.into(),
            pod_id: pod_id.into(),
            pid,
            running: true,
            cgroup: Cgroup {
                relative: PathBuf::from(id),
                dirs: vec![dir],
            },
        }
    }

    fn same_file(a: &Path, b: &Path) -> bool {
        use std::os::unix::fs::MetadataExt;
        let (a, b) = (std::fs::metadata(a).unwrap(), std::fs::metadata(b).unwrap());
        (a.dev(), a.ino()) == (b.dev(), b.ino())
    }

    #[tokio::test]
    async fn modes() {
        let mut f = Fixture::new();
        let pid = PidNamespace::default();
        assert!(
            f.prepare(&pid).await.unwrap().namespaces.new_pid,
            "default: own namespace"
        );

        with_pid(&mut f, cri::NamespaceMode::Container);
        assert!(f.prepare(&pid).await.unwrap().namespaces.new_pid);

        f.pod.pid_mode = NsMode::Pod;
        with_pid(&mut f, cri::NamespaceMode::Pod);
        let launch = f.prepare(&pid).await.unwrap();
        assert!(!launch.namespaces.new_pid);
        assert!(launch.namespaces.join.is_empty());

        f.pod.pid_mode = NsMode::Node;
        with_pid(&mut f, cri::NamespaceMode::Node);
        assert!(!f.prepare(&pid).await.unwrap().namespaces.new_pid);
    }

    #[tokio::test]
    async fn inconsistent_modes_are_invalid() {
        let mut f = Fixture::new();
        for (pod, mode, reason) in [
            (NsMode::Container, cri::NamespaceMode::Pod, "POD, but"),
            (NsMode::Pod, cri::NamespaceMode::Node, "NODE, but"),
        ] {
            f.pod.pid_mode = pod;
            with_pid(&mut f, mode);
            let err = f.prepare(&PidNamespace::default()).await.unwrap_err();
            assert!(
                err.to_string()
                    .starts_with(&format!("{PID_FIELD}: {reason}")),
                "{err}"
            );
        }
    }

    #[tokio::test]
    async fn target_joins_the_target_namespace_through_a_pinned_descriptor() {
        let mut f = Fixture::new();
        let target = peer_of_this_process(&f, "abcdef0123", "pod1");
        f.peers = vec![target];
        let pid = PidNamespace::default();
        // By full id, and by a unique prefix as crictl shows ids.
        for id in ["abcdef0123", "abc"] {
            with_target(&mut f, cri::NamespaceMode::Target, id);
            let launch = f.prepare(&pid).await.unwrap();
            assert!(!launch.namespaces.new_pid);
            let [join] = &launch.namespaces.join[..] else {
                panic!("one namespace to join: {:?}", launch.namespaces.join);
            };
            assert_eq!(join.kind, NsKind::Pid);
            assert!(
                join.path.starts_with("/proc") && join.path.parent().unwrap().ends_with("fd"),
                "{}",
                join.path.display()
            );
            assert!(same_file(&join.path, Path::new("/proc/self/ns/pid")));
            // Released once forked: the descriptor is closed.
            pid.isolate("c1", 1).await.unwrap();
            assert!(pid.pinned().is_empty());
        }
        // An undone launch releases it too.
        f.prepare(&pid).await.unwrap();
        pid.cleanup("c1").await.unwrap();
        assert!(pid.pinned().is_empty());
    }

    #[tokio::test]
    async fn target_errors_name_the_field_and_keep_nothing() {
        let mut f = Fixture::new();
        let running = peer_of_this_process(&f, "aaaa-running", "pod1");
        let other_pod = ContainerPeer {
            id: "bbbb-other-pod".into(),
            pod_id: "pod2".into(),
            ..running.clone()
        };
        let created = ContainerPeer {
            id: "cccc-created".into(),
            running: false,
            ..running.clone()
        };
        // A pid that is gone: a child that was reaped.
        let mut child = std::process::Command::new("true").spawn().unwrap();
        child.wait().unwrap();
        let dead = ContainerPeer {
            id: "dddd-dead".into(),
            pid: child.id() as i32,
            ..running.clone()
        };
        // A live process, but not one of the target's cgroup.
        let stranger = ContainerPeer {
            id: "eeee-stranger".into(),
            cgroup: Cgroup {
                relative: "elsewhere".into(),
                dirs: Vec::new(),
            },
            ..running.clone()
        };
        f.peers = vec![running, other_pod, created, dead, stranger];
        let pid = PidNamespace::default();
        for (target, kind, reason) in [
            ("", "invalid", "must name the target container"),
            ("ffff", "not found", "container ffff not found"),
            (
                "bbbb-other-pod",
                "invalid",
                "container bbbb-other-pod is in pod sandbox pod2: the target must be in the same pod sandbox",
            ),
            (
                "cccc-created",
                "precondition",
                "container cccc-created is not running",
            ),
            (
                "dddd-dead",
                "precondition",
                "container dddd-dead is not running",
            ),
            (
                "eeee-stranger",
                "precondition",
                "container eeee-stranger is not running",
            ),
        ] {
            with_target(&mut f, cri::NamespaceMode::Target, target);
            let err = f.prepare(&pid).await.unwrap_err();
            let matches_kind = match kind {
                "invalid" => matches!(err, IsolatorError::InvalidArgument { .. }),
                "not found" => matches!(err, IsolatorError::NotFound { .. }),
                _ => matches!(err, IsolatorError::FailedPrecondition { .. }),
            };
            assert!(matches_kind, "{target:?}: {kind}: {err:?}");
            assert!(
                err.to_string()
                    .starts_with(&format!("{TARGET_FIELD}: {reason}")),
                "{err}"
            );
            assert!(pid.pinned().is_empty());
        }
        // A prefix of several containers names none of them.
        f.peers.push(ContainerPeer {
            id: "aaaa-twin".into(),
            ..f.peers[0].clone()
        });
        with_target(&mut f, cri::NamespaceMode::Target, "aaaa");
        let err = f.prepare(&pid).await.unwrap_err();
        assert!(matches!(err, IsolatorError::NotFound { .. }), "{err:?}");
    }
}
