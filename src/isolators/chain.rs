//! The isolator interface (Mesos's `Isolator`) and what its hooks see.
//!
//! Mesos's `prepare` returns a `ContainerLaunchInfo` that the containerizer merges; here
//! each isolator adds to the one launch info being built, in chain order, which is the
//! same merge with less copying.

use std::path::{Path, PathBuf};

use cri_mesos_supervisor::protocol::LaunchInfo;
use k8s_cri::v1 as cri;

use super::IsolatorName;
/// A pod's networks as `network/cni` attached them: IPs for the CRI status, DNS and
/// `/etc/hosts`.
pub use super::network::cni::PodNetwork;
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
    /// A step (a CNI plugin) took longer than allowed: DeadlineExceeded.
    #[error("{isolator}: {reason}")]
    DeadlineExceeded {
        isolator: &'static str,
        reason: String,
    },
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
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Limitation {
    /// CRI-style reason, e.g. `OOMKilled`.
    pub reason: String,
    pub message: String,
}

/// Usage figures, named after Mesos's `ResourceStatistics`; isolators fill what they know
/// (`None`: this host or chain cannot tell).
#[derive(Debug, Clone, Default, PartialEq, serde::Serialize)]
pub struct ResourceStatistics {
    pub timestamp_ns: i64,
    pub cpus_user_time_secs: Option<f64>,
    pub cpus_system_time_secs: Option<f64>,
    /// Cumulative cpu time of every process, ns.
    pub cpu_usage_ns: Option<u64>,
    pub cpus_nr_periods: Option<u64>,
    pub cpus_nr_throttled: Option<u64>,
    pub cpus_throttled_time_secs: Option<f64>,
    /// What the memory cgroup charges now (v1 usage_in_bytes, v2 memory.current).
    pub mem_total_bytes: Option<u64>,
    /// `mem_total_bytes` less the inactive file cache: what kubelet evicts on.
    pub mem_working_set_bytes: Option<u64>,
    pub mem_rss_bytes: Option<u64>,
    pub mem_anon_bytes: Option<u64>,
    pub mem_cache_bytes: Option<u64>,
    pub mem_file_bytes: Option<u64>,
    pub mem_mapped_file_bytes: Option<u64>,
    pub mem_limit_bytes: Option<u64>,
    pub mem_page_faults: Option<u64>,
    pub mem_major_page_faults: Option<u64>,
    pub processes: Option<u64>,
    pub threads: Option<u64>,
    /// `disk/du`: the writable layer and the log (what the quota counts), the writable
    /// layer alone and its inodes, and the container's disk limit.
    pub disk_used_bytes: Option<u64>,
    pub disk_writable_bytes: Option<u64>,
    pub disk_inodes_used: Option<u64>,
    pub disk_limit_bytes: Option<u64>,
    /// When `disk/du` took the figures above (they are from its last round, not now).
    pub disk_measured_ns: Option<i64>,
    /// The pod's network interfaces (pods only), counters as the kernel keeps them.
    pub interfaces: Vec<super::network::cni::stats::InterfaceStats>,
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

/// What a pod's `prepare_pod` sees of a top-level container (RunPodSandbox).
#[derive(Debug)]
pub struct PodPrep<'a> {
    pub id: &'a str,
    pub config: &'a cri::PodSandboxConfig,
    /// `<runtime_dir>/pods/<id>`, where the pod's files and pinned namespaces go.
    pub dir: &'a Path,
}

/// The namespaces a pod's isolators ask for: each is created and pinned at its path
/// before `isolate_pod`; `None` leaves the host's.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PodNamespaces {
    pub net: Option<PathBuf>,
    pub uts: Option<PathBuf>,
    pub ipc: Option<PathBuf>,
}

/// What a pod's `isolate_pod` hooks add to the pod before its files are written.
#[derive(Debug, Default)]
pub struct PodIsolation {
    /// Set by `network/cni` after CNI ADD; `/etc/hosts` and the CRI status need its IPs.
    pub network: Option<PodNetwork>,
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
    /// Where the container's own writes land on the host (`None`: a read-only backend).
    pub writable: Option<&'a Path>,
    /// The container's cgroup (already created).
    pub cgroup: &'a Cgroup,
    /// Every other container the containerizer knows, in any pod: what a container may
    /// refer to (the target of a TARGET pid namespace).
    pub peers: &'a [ContainerPeer],
    /// The container's sandbox, where the fetcher puts its URIs; `None`: it has none.
    pub sandbox: Option<SandboxMount<'a>>,
}

/// A container's sandbox: Mesos's per-container work directory on the host, and where
/// the container sees it (`--sandbox_directory`, `MESOS_SANDBOX`).
#[derive(Debug, Clone, Copy)]
pub struct SandboxMount<'a> {
    pub host: &'a Path,
    pub container: &'a Path,
}

/// What recovery knows of a checkpointed container, for an isolator to rebuild its state.
#[derive(Debug)]
pub struct RecoveredContainer<'a> {
    pub id: &'a str,
    pub pod: &'a PodInfo,
    pub config: &'a cri::ContainerConfig,
    /// Where its writes land on the host, as at its creation (`None`: read-only).
    pub writable: Option<PathBuf>,
    pub log: Option<&'a Path>,
    /// Started and not exited: it runs on after the restart.
    pub running: bool,
}

/// What `update` sees of a container (UpdateContainerResources).
#[derive(Debug)]
pub struct ContainerUpdate<'a> {
    pub id: &'a str,
    pub cgroup: &'a Cgroup,
    /// The resources to be in force: the request's set fields over what was in force
    /// (the CRI's 0 and "" mean "unchanged" here, as they mean "unset" at create).
    pub resources: &'a cri::LinuxContainerResources,
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
    /// containers (`known`, as Mesos hands isolators their `ContainerState`s); containers
    /// it holds state for but not in `known` are orphans the isolator releases.
    async fn recover(&self, _known: &[RecoveredContainer<'_>]) -> Result<(), IsolatorError> {
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

    /// Applies new resource requests/limits to a running container: all of them or, on
    /// an error, none.
    async fn update(&self, _container: &ContainerUpdate<'_>) -> Result<(), IsolatorError> {
        Ok(())
    }

    /// Adds this isolator's figures to the container's statistics (`cgroup`: its cgroup).
    async fn usage(
        &self,
        _container_id: &str,
        _cgroup: &Cgroup,
        _statistics: &mut ResourceStatistics,
    ) -> Result<(), IsolatorError> {
        Ok(())
    }

    /// Adds this isolator's figures to a pod's statistics (the pod cgroup's, its network).
    async fn usage_pod(
        &self,
        _pod: &PodInfo,
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

    // ---- top-level containers (pod sandboxes) ----
    //
    // RunPodSandbox: every `prepare_pod` in chain order (which namespaces to create and
    // pin) → the containerizer creates and pins them → every `isolate_pod` in chain order
    // (`network/cni`: CNI ADD) → pod files (`/etc/hosts` needs the IP) → the supervisor.
    // Stop, or a failed launch: every `cleanup_pod` in reverse order.

    /// Asks for the namespaces this isolator needs the pod to have.
    async fn prepare_pod(
        &self,
        _pod: &PodPrep<'_>,
        _namespaces: &mut PodNamespaces,
    ) -> Result<(), IsolatorError> {
        Ok(())
    }

    /// Sets the pod up inside its pinned namespaces (`pod.net_ns`...), before its files
    /// are written and its supervisor is spawned.
    async fn isolate_pod(
        &self,
        _pod: &PodInfo,
        _isolation: &mut PodIsolation,
    ) -> Result<(), IsolatorError> {
        Ok(())
    }

    /// Releases what `prepare_pod`/`isolate_pod` set up, after the pod's processes are
    /// gone and while the pinned namespaces still exist; an isolator that pinned a
    /// namespace itself unpins it here. Must accept pods it never saw, and pods whose
    /// launch stopped anywhere. An error keeps the pod for a retry of the stop.
    async fn cleanup_pod(&self, _pod: &PodInfo) -> Result<(), IsolatorError> {
        Ok(())
    }

    /// This isolator's node-wide figures for the runtime's verbose status (e.g. how many
    /// seccomp programs were compiled); `None`: it keeps none.
    fn node_status(&self) -> Option<serde_json::Value> {
        None
    }

    /// What every container's writable layer holds in all, bytes and inodes, as this
    /// isolator last measured it (ImageFsInfo's container filesystem). `None`: this
    /// isolator does not measure disks.
    fn writable_usage(&self) -> Option<(u64, u64)> {
        None
    }

    /// Keys this isolator adds to a pod's verbose status.
    async fn pod_status(
        &self,
        _pod: &PodInfo,
        _ready: bool,
        _network: Option<&PodNetwork>,
    ) -> Option<serde_json::Map<String, serde_json::Value>> {
        None
    }

    // ---- the node ----

    /// Whether pods can get a network (`Err` says why not); `None`: this isolator gives
    /// pods no network.
    fn network_readiness(&self) -> Option<Result<(), String>> {
        None
    }

    /// The node's pod CIDR as kubelet pushed it (UpdateRuntimeConfig), for isolators
    /// that allocate pod addresses from it.
    fn set_pod_cidr(&self, _cidr: Option<&str>) {}

    /// The pod CIDR this isolator allocates from, if it keeps one.
    fn pod_cidr(&self) -> Option<String> {
        None
    }
}
