//! The containerizer: Mesos's launch pipeline (provisioner → isolators → launcher →
//! fetcher → exec) behind the CRI lifecycle. A pod sandbox is a top-level container, each
//! CRI container a nested one whose parent is the sandbox.

pub mod events;
mod exits;
pub mod mesos;
pub mod records;

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use crate::cgroups::CgroupError;
use crate::isolators::chain::IsolatorError;
use crate::launcher::namespaces::NamespaceError;
use crate::launcher::supervisor::SupervisorError;
use crate::provisioner::ProvisionError;
use crate::state::CheckpointError;

/// Mesos's container states (containerizer.hpp), in launch order.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum MesosState {
    Provisioning,
    Preparing,
    Isolating,
    Fetching,
    Running,
    Destroying,
}

/// A Mesos ContainerID: a pod sandbox has no parent, a CRI container has its sandbox.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct ContainerId {
    pub value: String,
    pub parent: Option<String>,
}

/// Errors of the containerizer; each kind maps to one gRPC code in the CRI layer.
#[derive(Debug, thiserror::Error)]
pub enum ContainerizerError {
    #[error("{field}: {reason}")]
    InvalidArgument { field: String, reason: String },
    #[error("{what} {id} not found")]
    NotFound { what: &'static str, id: String },
    #[error("{0}")]
    AlreadyExists(String),
    #[error("{0}")]
    FailedPrecondition(String),
    #[error("{0}")]
    DeadlineExceeded(String),
    #[error(transparent)]
    Isolator(#[from] IsolatorError),
    #[error(transparent)]
    Provision(#[from] ProvisionError),
    #[error(transparent)]
    Supervisor(#[from] SupervisorError),
    #[error(transparent)]
    Cgroup(#[from] CgroupError),
    #[error(transparent)]
    Namespace(#[from] NamespaceError),
    #[error(transparent)]
    Checkpoint(#[from] CheckpointError),
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{0}")]
    Internal(String),
    /// One error handed to every waiter of a shared creation.
    #[error("{0}")]
    Shared(std::sync::Arc<ContainerizerError>),
}

impl ContainerizerError {
    /// The error behind any sharing wrapper, for mapping its kind.
    pub fn root(&self) -> &ContainerizerError {
        match self {
            ContainerizerError::Shared(inner) => inner.root(),
            other => other,
        }
    }

    pub fn io(path: impl Into<PathBuf>) -> impl FnOnce(std::io::Error) -> ContainerizerError {
        let path = path.into();
        move |source| ContainerizerError::Io { path, source }
    }
}

pub type Result<T, E = ContainerizerError> = std::result::Result<T, E>;

/// Mesos's `Containerizer::create`: the containerizer the flags ask for. There is one kind
/// yet, `mesos`; a second one would make this a composing containerizer choosing by the
/// pod's runtime handler. The caller runs [`Containerizer::recover`] before serving.
pub fn create(
    flags: std::sync::Arc<crate::flags::Flags>,
    provisioner: std::sync::Arc<crate::provisioner::Provisioner>,
) -> Result<std::sync::Arc<dyn Containerizer>> {
    Ok(mesos::MesosContainerizer::new(flags, provisioner)?)
}

/// Nanoseconds since the epoch, as the CRI reports times.
pub fn now_ns() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as i64)
        .unwrap_or_default()
}

/// A fresh 64-hex id, the shape containerd and CRI-O use (crictl shortens it).
pub fn new_id() -> String {
    format!(
        "{}{}",
        uuid::Uuid::new_v4().simple(),
        uuid::Uuid::new_v4().simple()
    )
}

/// What to launch: a top-level container (a pod sandbox) or a nested one inside a sandbox.
#[derive(Debug, Clone)]
pub enum LaunchConfig {
    Sandbox {
        config: k8s_cri::v1::PodSandboxConfig,
        runtime_handler: String,
    },
    Nested {
        sandbox_id: String,
        config: k8s_cri::v1::ContainerConfig,
    },
}

/// Mesos's containerizer interface, and the only way into a containerizer: the CRI layer
/// holds an `Arc<dyn Containerizer>`, so a composing containerizer (one per RuntimeClass
/// handler, as Mesos's `Containerizer::create` builds from `--containerizers`) fits in.
///
/// The CRI splits Mesos's `launch` at the pipe the forked container waits on: `launch` of
/// a nested container stops there (CREATED) and `start` does the rest (isolate, fetch,
/// release: RUNNING).
///
/// Ids may be unique prefixes (crictl shows shortened ids); `stop` and `destroy` of an
/// unknown id succeed, as the CRI wants them idempotent.
#[tonic::async_trait]
pub trait Containerizer: Send + Sync + std::fmt::Debug {
    // ---- lifecycle ----

    /// Rebuilds state after a restart: the checkpointed pods and containers, then each
    /// isolator with the known containers. Running workloads are left alone.
    async fn recover(&self) -> Result<()>;
    /// RunPodSandbox (a top-level container) or CreateContainer (a nested one, up to
    /// the blocked fork). Idempotent by name for an identical config.
    async fn launch(self: std::sync::Arc<Self>, config: LaunchConfig) -> Result<ContainerId>;
    /// StartContainer: isolate, fetch, release the pipe.
    async fn start(&self, id: &ContainerId) -> Result<()>;
    /// StopContainer (the stop signal, `grace`, then the kill of the whole cgroup) or
    /// StopPodSandbox (every container killed, the supervisor and namespaces released).
    async fn stop(&self, id: &ContainerId, grace: std::time::Duration) -> Result<()>;
    /// Kills (after `grace`) and releases everything the container holds; nested
    /// containers of a sandbox go first.
    async fn destroy(&self, id: &ContainerId, grace: std::time::Duration) -> Result<()>;
    /// UpdateContainerResources: the request's set fields over what is in force, live
    /// and in the checkpoint, or nothing changed.
    async fn update(
        &self,
        id: &ContainerId,
        resources: &k8s_cri::v1::LinuxContainerResources,
    ) -> Result<()>;
    /// The exit status of a nested container once it ended (`None` while it runs), with
    /// whether the OOM killer ended it.
    async fn wait(
        &self,
        id: &ContainerId,
    ) -> Result<Option<cri_mesos_supervisor::protocol::ExitRecord>>;

    // ---- what is known ----

    /// Every pod sandbox (top-level container).
    fn pods(&self) -> Vec<records::PodRecord>;
    /// Every CRI container (nested container).
    fn containers(&self) -> Vec<records::ContainerRecord>;
    fn pod(&self, id: &str) -> Result<records::PodRecord>;
    fn container(&self, id: &str) -> Result<records::ContainerRecord>;
    /// Verbose status: Mesos state, pids, rootfs, backend, isolators.
    async fn status(&self, id: &ContainerId) -> Result<serde_json::Value>;

    // ---- exec and logs ----

    /// ExecSync: `cmd` in the container's namespaces and cgroup, `timeout` seconds at
    /// most (0: none).
    async fn exec_sync(
        &self,
        id: &ContainerId,
        cmd: Vec<String>,
        timeout: i64,
    ) -> Result<cri_mesos_supervisor::protocol::ExecResult>;
    /// Exec: a streaming session of `cmd` in the container (same security as ExecSync);
    /// `want`: stdin, stdout, stderr. Dropping the result kills the session.
    async fn exec_stream(
        &self,
        id: &ContainerId,
        cmd: Vec<String>,
        tty: bool,
        want: [bool; 3],
    ) -> Result<crate::launcher::supervisor::ExecStream>;
    /// Attach: the container's live output, and its stdin when `stdin` (a tty's master
    /// always). Dropping the result detaches.
    async fn attach_stream(
        &self,
        id: &ContainerId,
        stdin: bool,
    ) -> Result<crate::launcher::supervisor::AttachStream>;
    /// ReopenContainerLog.
    async fn reopen_log(&self, id: &ContainerId) -> Result<()>;

    /// Lifecycle transitions as they happen (GetContainerEvents); not replayed.
    fn events(&self) -> tokio::sync::broadcast::Receiver<events::Lifecycle>;

    // ---- stats ----

    async fn usage(&self, id: &ContainerId) -> Result<crate::isolators::chain::ResourceStatistics>;

    // ---- the node's pod network ----

    /// Whether pods can get a network (`Err` says why not), for the NetworkReady condition.
    fn network_ready(&self) -> std::result::Result<(), String>;
    /// The node's pod CIDR as kubelet pushed it (UpdateRuntimeConfig).
    fn pod_cidr(&self) -> Option<String>;
    /// Sets it and checkpoints it before returning: kubelet does not send it again after
    /// a runtime restart.
    async fn set_pod_cidr(&self, cidr: Option<String>) -> Result<()>;

    /// The isolators' node-wide figures, by isolator name (verbose runtime status).
    fn isolator_status(&self) -> serde_json::Map<String, serde_json::Value>;

    /// Bytes and inodes of every container's writable layer, from the chain's disk
    /// isolator's last measures; `None` without one.
    fn writable_usage(&self) -> Option<(u64, u64)>;

    /// What the last recovery set aside or destroyed (verbose runtime status).
    fn recovery_status(&self) -> serde_json::Value {
        serde_json::Value::Null
    }
}
