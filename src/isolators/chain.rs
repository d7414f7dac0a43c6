//! The isolator interface (Mesos's `Isolator`) and what its hooks see.
//!
//! Mesos's `prepare` returns a `ContainerLaunchInfo` that the containerizer merges; here
//! each isolator adds to the one launch info being built, in chain order, which is the
//! same merge with less copying.

use std::path::{Path, PathBuf};

use cri_mesos_supervisor::protocol::LaunchInfo;
use k8s_cri::v1 as cri;

use super::IsolatorName;
use crate::cgroups::Cgroup;
use crate::provisioner::store::ImageRecord;

/// Why an isolator refused or failed; the CRI layer maps the kind to a gRPC code.
#[derive(Debug, thiserror::Error)]
pub enum IsolatorError {
    /// The request is wrong (bad mount, missing device): InvalidArgument.
    #[error("{field}: {reason}")]
    InvalidArgument { field: String, reason: String },
    /// The request is right but the host is not ready for it (a bidirectional mount whose
    /// source is not on a shared mount): FailedPrecondition.
    #[error("{field}: {reason}")]
    FailedPrecondition { field: String, reason: String },
    /// A name that does not exist (e.g. run_as_username missing from /etc/passwd): NotFound.
    #[error("{field}: {reason}")]
    NotFound { field: String, reason: String },
    #[error("{isolator}: {path}: {source}")]
    Io {
        isolator: &'static str,
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{isolator}: {reason}")]
    Other {
        isolator: &'static str,
        reason: String,
    },
}

/// A limit a container reached (Mesos's `ContainerLimitation`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Limitation {
    /// CRI-style reason, e.g. `OOMKilled`.
    pub reason: String,
    pub message: String,
}

/// Usage figures, named after Mesos's `ResourceStatistics`; isolators fill what they know.
#[derive(Debug, Clone, Default, PartialEq, serde::Serialize)]
pub struct ResourceStatistics {
    pub timestamp_ns: i64,
    pub cpus_user_time_secs: Option<f64>,
    pub cpus_system_time_secs: Option<f64>,
    pub cpu_usage_ns: Option<u64>,
    pub mem_total_bytes: Option<u64>,
    pub mem_rss_bytes: Option<u64>,
    pub mem_limit_bytes: Option<u64>,
    pub processes: Option<u64>,
}

/// Namespace sharing of a pod, from `NamespaceOption`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum NsMode {
    /// One namespace for the whole pod.
    Pod,
    /// One namespace per container.
    Container,
    /// The host's namespace.
    Node,
}

/// The pod a nested container belongs to: what its top-level container made.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct PodInfo {
    pub id: String,
    pub config: cri::PodSandboxConfig,
    /// `<runtime_dir>/pods/<id>`: `hostname`, `hosts`, `resolv.conf` and `shm/` live here.
    pub dir: PathBuf,
    /// Pinned namespace files (bind mounts of nsfs); `None` means the host's.
    pub net_ns: Option<PathBuf>,
    pub uts_ns: Option<PathBuf>,
    pub ipc_ns: Option<PathBuf>,
    pub pid_mode: NsMode,
    /// The pod's cgroup; containers get a child of it.
    pub cgroup: Cgroup,
}

impl PodInfo {
    pub fn hostname_file(&self) -> PathBuf {
        self.dir.join("hostname")
    }
    pub fn hosts_file(&self) -> PathBuf {
        self.dir.join("hosts")
    }
    pub fn resolv_conf(&self) -> PathBuf {
        self.dir.join("resolv.conf")
    }
    /// The pod's /dev/shm: a tmpfs of its own, or the host's /dev/shm in host IPC mode.
    pub fn shm(&self) -> PathBuf {
        if self.ipc_ns.is_none() {
            PathBuf::from("/dev/shm")
        } else {
            self.dir.join("shm")
        }
    }
}

/// What `prepare` sees of a nested container (Mesos's `ContainerConfig`).
#[derive(Debug)]
pub struct ContainerPrep<'a> {
    pub id: &'a str,
    pub pod: &'a PodInfo,
    pub config: &'a cri::ContainerConfig,
    pub image: &'a ImageRecord,
    /// The provisioned rootfs, mounted on the host.
    pub rootfs: &'a Path,
    /// The container's cgroup (already created).
    pub cgroup: &'a Cgroup,
    /// Every other container the containerizer knows, in any pod: what a container may
    /// refer to (the target of a TARGET pid namespace).
    pub peers: &'a [ContainerPeer],
}

/// Another container, as `prepare` may see it.
#[derive(Debug, Clone)]
pub struct ContainerPeer {
    pub id: String,
    pub pod_id: String,
    /// Host pid of its init; 0 before it is forked.
    pub pid: i32,
    /// Started and not exited (CRI RUNNING).
    pub running: bool,
    pub cgroup: Cgroup,
}

/// One isolator of the chain. Hooks default to doing nothing, as most isolators care
/// about a few of them only.
#[tonic::async_trait]
pub trait Isolator: Send + Sync + std::fmt::Debug {
    fn name(&self) -> IsolatorName;

    /// Rebuilds the isolator's state after a daemon restart from the checkpointed
    /// containers (`known`); containers it holds state for but not in `known` are orphans
    /// the isolator releases.
    async fn recover(&self, _known: &[String]) -> Result<(), IsolatorError> {
        Ok(())
    }

    /// Adds this isolator's part to the container's launch info. Runs serially, in chain
    /// order, before the container is forked.
    async fn prepare(
        &self,
        _container: &ContainerPrep<'_>,
        _launch: &mut LaunchInfo,
    ) -> Result<(), IsolatorError> {
        Ok(())
    }

    /// Attaches the forked, still blocked container (`pid`, a host pid) to the
    /// isolator's mechanism. Runs for all isolators at once.
    async fn isolate(&self, _container_id: &str, _pid: i32) -> Result<(), IsolatorError> {
        Ok(())
    }

    /// Resolves when the container hits a limit this isolator enforces (OOM, disk quota);
    /// the containerizer then destroys it. `None`: this isolator enforces nothing.
    async fn watch(&self, _container_id: &str) -> Option<Limitation> {
        None
    }

    /// Applies new resource requests/limits to a running container.
    async fn update(
        &self,
        _container_id: &str,
        _resources: &cri::LinuxContainerResources,
    ) -> Result<(), IsolatorError> {
        Ok(())
    }

    /// Adds this isolator's figures to the container's statistics.
    async fn usage(
        &self,
        _container_id: &str,
        _statistics: &mut ResourceStatistics,
    ) -> Result<(), IsolatorError> {
        Ok(())
    }

    /// Adds this isolator's part to the container's status (for verbose status).
    async fn status(&self, _container_id: &str) -> Option<serde_json::Value> {
        None
    }

    /// Releases what `prepare`/`isolate` set up. Runs in reverse chain order after the
    /// container's processes are gone; must accept ids it never saw.
    async fn cleanup(&self, _container_id: &str) -> Result<(), IsolatorError> {
        Ok(())
    }
}
